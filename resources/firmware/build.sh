#!/usr/bin/env bash
# Builds edk2's Cloud Hypervisor firmware (OvmfPkg/CloudHv/CloudHvX64.dsc, X64, GCC5, RELEASE)
# from Debian's `edk2` source package, nothing from outside Debian's archive:
#   OUTDIR/CLOUDHV.fd      a 4 MiB PVH ELF (ELF64 header, EM_386, a XEN_ELFNOTE_PHYS32_ENTRY note,
#                          loaded at 1 MiB, entry 0x4fffd0) with the UEFI Shell; checked with
#                          readelf before it is kept
#   OUTDIR/CLOUDHV.stamp   edk2 source version + sha256 of this script; while it matches and
#                          CLOUDHV.fd exists, nothing is done (a cache hit takes well under 1 s)
#   OUTDIR/src/            the source package (apt-get source edk2), fetched once; remove it to
#                          pick up a newer Debian edk2
#   OUTDIR/build.log       BaseTools and edk2 build output (its tail is printed on failure)
#   OUTDIR/apt.log         apt-get output (likewise)
# Needs a `deb-src` entry for the host's Debian release: when `apt-cache showsrc edk2` finds
# none, it adds /etc/apt/sources.list.d/keel-deb-src.sources (bookworm... main, Debian's keyring)
# and runs apt-get update. Installs the build dependencies that are missing (nasm,
# acpica-tools, uuid-dev, python3, python3-distutils or python3-setuptools, gcc, g++, make,
# dpkg-dev, binutils). Both need root; without root it names what to do. Debian's patch
# "Disable-the-Shell-when-SecureBoot-is-enabled" makes the Shell need SecureBootVariableLib,
# which CloudHvX64.dsc only provides with SECURE_BOOT_ENABLE: the script reverses that patch
# (the Shell is then as upstream's); if it ever stops reversing cleanly, it builds with
# -D SECURE_BOOT_ENABLE=TRUE instead and says so.
#
# Usage: resources/firmware/build.sh OUTDIR
set -euo pipefail

die() { echo "firmware/build.sh: error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }
if [[ $# -ne 1 || -z "$1" || "$1" == -* ]]; then
    echo "usage: $0 OUTDIR" >&2
    echo "  builds OUTDIR/CLOUDHV.fd (edk2 CloudHvX64, from Debian's edk2 source package)" >&2
    exit 2
fi

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
mkdir -p "$1" || die "cannot create '$1'"
OUT=$(cd "$1" && pwd)
FD=$OUT/CLOUDHV.fd
STAMP=$OUT/CLOUDHV.stamp
SRC=$OUT/src
BUILD_LOG=$OUT/build.log
APT_LOG=$OUT/apt.log
SRC_LIST=/etc/apt/sources.list.d/keel-deb-src.sources
DSC=OvmfPkg/CloudHv/CloudHvX64.dsc
SHELL_PATCH=debian/patches/Disable-the-Shell-when-SecureBoot-is-enabled.patch
FD_SIZE=$((4 * 1024 * 1024))
LOAD_ADDR=0x100000
ENTRY=0x4fffd0
export DEBIAN_FRONTEND=noninteractive

for tool in sha256sum flock; do
    command -v "$tool" >/dev/null || die "missing '$tool' (apt-get install coreutils util-linux)"
done
exec 9>"$OUT/.lock"
flock -n 9 || die "another firmware build holds $OUT/.lock"

# fail_with_log LOG MESSAGE: the message, the log's tail, exit.
fail_with_log() {
    echo "firmware/build.sh: error: $2 (log: $1); its last lines:" >&2
    tail -n 40 "$1" >&2 || true
    exit 1
}

# src_tree: the unpacked source tree in SRC (empty if there is none).
src_tree() {
    local d
    for d in "$SRC"/edk2-*/; do
        [[ -f "$d/edksetup.sh" && -d "$d/debian" ]] && { echo "${d%/}"; return 0; }
    done
    return 0
}

# src_version: the version of the cached source package (empty if there is none).
src_version() {
    local dsc
    for dsc in "$SRC"/edk2_*.dsc; do
        [[ -f $dsc ]] && { sed -n 's/^Version: *//p' "$dsc" | head -n 1; return 0; }
    done
    return 0
}

stamp_text() { echo "edk2 $1 build.sh $(sha256sum "$SCRIPT" | cut -d' ' -f1)"; }

# check_fd FILE: readelf's view of FILE is the CloudHv PVH ELF; otherwise one line and exit.
check_fd() {
    local f=$1 size hdr notes vaddr paddr pvh
    size=$(stat -c %s "$f")
    [[ $size -eq $FD_SIZE ]] || die "$f is $size bytes, not 4 MiB"
    hdr=$(readelf -h "$f" 2>&1) || die "$f is not an ELF file: $(echo "$hdr" | head -n 1)"
    grep -q 'Machine: *Intel 80386' <<<"$hdr" || die "$f is not EM_386"
    grep -qi "Entry point address: *$ENTRY\$" <<<"$hdr" ||
        die "$f: entry point is $(sed -n 's/.*Entry point address: *//p' <<<"$hdr"), not $ENTRY"
    # The first LOAD segment: virtual and physical address 1 MiB.
    read -r _ _ vaddr paddr _ < <(readelf -lW "$f" | grep -m 1 '^ *LOAD ') ||
        die "$f has no LOAD segment"
    [[ $((vaddr)) -eq $((LOAD_ADDR)) && $((paddr)) -eq $((LOAD_ADDR)) ]] ||
        die "$f is loaded at $vaddr (physical $paddr), not at $LOAD_ADDR (1 MiB)"
    # The PVH entry: a "Xen" note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY), its descriptor the
    # 32-bit entry in little-endian bytes ("description data: d0 ff 4f 00").
    notes=$(readelf -nW "$f")
    pvh=$(awk '$1 == "Xen" && /\(0x00000012\)|PHYS32_ENTRY/ { found = 1 }
        found && /description data:/ { sub(/.*description data: */, ""); print; exit }' <<<"$notes" |
        tr -d ' \t')
    [[ $pvh =~ ^[0-9a-f]{8}$ ]] ||
        die "$f has no PVH note (Xen note type 18, XEN_ELFNOTE_PHYS32_ENTRY, 4 bytes)"
    pvh=0x${pvh:6:2}${pvh:4:2}${pvh:2:2}${pvh:0:2}
    [[ $((pvh)) -eq $((ENTRY)) ]] || die "$f: the PVH note's entry is $pvh, not $ENTRY"
    echo "$pvh"
}

# describe FILE: one line of readelf facts.
describe() {
    local pvh class
    pvh=$(check_fd "$1") || return 1
    class=$(readelf -h "$1" | sed -n 's/^ *Class: *//p')
    echo "$(basename "$1"): $(($(stat -c %s "$1") / 1024)) KiB $class EM_386, loaded at $LOAD_ADDR," \
        "entry $ENTRY, PVH entry (XEN_ELFNOTE_PHYS32_ENTRY) $pvh"
}

# Cache hit: the firmware and a stamp for the cached source and this script.
version=$(src_version)
if [[ -f $FD && -f $STAMP && -n $version && "$(cat "$STAMP")" == "$(stamp_text "$version")" ]]; then
    facts=$(describe "$FD") || die "cached $FD fails the checks above (remove it to rebuild)"
    log "firmware: cached, $facts"
    exit 0
fi
rm -f "$STAMP"

# --- Debian's package index with edk2's source, and the build dependencies ----------------
have_src_index() {
    [[ -n $(apt-cache showsrc edk2 2>/dev/null | sed -n 's/^Version: //p' | head -n 1 || true) ]]
}
APT_UPDATED=
apt_update() {
    log "refreshing the package lists (apt-get update)"
    apt-get update -q -o DPkg::Lock::Timeout=600 >>"$APT_LOG" 2>&1 || fail_with_log "$APT_LOG" "apt-get update failed"
    APT_UPDATED=1
}
rm -f "$APT_LOG" # written (appended) only when apt runs
if [[ -z $(src_tree) ]] && ! have_src_index; then
    codename=$(. /etc/os-release && [[ ${ID:-} == debian ]] && echo "${VERSION_CODENAME:-}" || true)
    [[ -n $codename ]] ||
        die "no deb-src entry finds edk2 and this is not Debian (/etc/os-release): add a deb-src entry for your release"
    [[ $EUID -eq 0 ]] ||
        die "no deb-src entry finds edk2: run this once as root (it adds $SRC_LIST for '$codename main')"
    if [[ ! -f $SRC_LIST ]]; then
        log "adding $SRC_LIST (deb-src $codename main)"
        cat >"$SRC_LIST" <<EOF || die "cannot write $SRC_LIST"
# Added by Keel's resources/firmware/build.sh: Debian's source packages (apt-get source edk2).
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    fi
    apt_update
    have_src_index || die "apt-cache showsrc edk2 finds nothing, even with $SRC_LIST (see $APT_LOG)"
fi

installed() { [[ $(dpkg-query -W -f='${db:Status-Abbrev}' "$1" 2>/dev/null) == ii* ]]; }
has_candidate() {
    local c
    c=$(apt-cache policy "$1" 2>/dev/null | sed -n 's/^ *Candidate: *//p')
    [[ -n $c && $c != "(none)" ]]
}
# Python's distutils: its own package up to bookworm, gone from Python 3.12 (setuptools has it).
if installed python3-distutils || has_candidate python3-distutils; then
    PY_DISTUTILS=python3-distutils
else
    PY_DISTUTILS=python3-setuptools
fi
missing=()
for pkg in nasm acpica-tools uuid-dev python3 "$PY_DISTUTILS" gcc g++ make dpkg-dev binutils \
    patch xz-utils; do
    installed "$pkg" || missing+=("$pkg")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ $EUID -eq 0 ]] || die "missing packages, as root: apt-get install ${missing[*]}"
    log "installing ${missing[*]} (waits up to 10 minutes for another apt/dpkg to finish)"
    if ! apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}" >>"$APT_LOG" 2>&1; then
        # Stale package lists name versions the mirror no longer has: refresh once.
        [[ -z $APT_UPDATED ]] || fail_with_log "$APT_LOG" "apt-get install ${missing[*]} failed"
        apt_update
        apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "${missing[@]}" >>"$APT_LOG" 2>&1 ||
            fail_with_log "$APT_LOG" "apt-get install ${missing[*]} failed"
    fi
fi

# --- The source package, fetched once into OUTDIR/src -------------------------------------
if [[ -z $(src_tree) || -z $(src_version) ]]; then
    rm -rf "$SRC"
    tmp=$(mktemp -d "$OUT/.src.XXXXXX")
    chmod 755 "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    log "fetching Debian's edk2 source package (apt-get source edk2, about 17 MB)"
    if ! (cd "$tmp" && apt-get source -q -o APT::Sandbox::User=root edk2) >>"$APT_LOG" 2>&1; then
        [[ -z $APT_UPDATED && $EUID -eq 0 ]] || fail_with_log "$APT_LOG" "apt-get source edk2 failed"
        apt_update
        rm -rf "${tmp:?}"/*
        (cd "$tmp" && apt-get source -q -o APT::Sandbox::User=root edk2) >>"$APT_LOG" 2>&1 ||
            fail_with_log "$APT_LOG" "apt-get source edk2 failed"
    fi
    mv "$tmp" "$SRC"
    trap - EXIT
fi
TREE=$(src_tree)
version=$(src_version)
[[ -n $TREE && -n $version ]] || die "$SRC holds no unpacked edk2 source package (remove it and retry)"
[[ -f $TREE/$DSC ]] || die "edk2 $version has no $DSC"

# --- The Shell without Debian's SecureBoot check ------------------------------------------
DEFINES=()
if [[ ! -f $TREE/$SHELL_PATCH ]]; then
    log "edk2 $version: no $(basename "$SHELL_PATCH"), building as it is"
elif patch -d "$TREE" -p1 -R -s -f --dry-run <"$TREE/$SHELL_PATCH" >/dev/null 2>&1; then
    log "edk2 $version: reversing $(basename "$SHELL_PATCH")"
    patch -d "$TREE" -p1 -R -s -f <"$TREE/$SHELL_PATCH" >/dev/null ||
        die "reversing $SHELL_PATCH failed halfway (remove $SRC and retry)"
elif patch -d "$TREE" -p1 -s -f --dry-run <"$TREE/$SHELL_PATCH" >/dev/null 2>&1; then
    log "edk2 $version: $(basename "$SHELL_PATCH") already reversed"
else
    log "edk2 $version: $(basename "$SHELL_PATCH") does not reverse cleanly;" \
        "building with -D SECURE_BOOT_ENABLE=TRUE (the Shell then needs Secure Boot off or setup mode)"
    DEFINES=(-D SECURE_BOOT_ENABLE=TRUE)
fi

# --- BaseTools, then the firmware ---------------------------------------------------------
JOBS=$(nproc 2>/dev/null || echo 2)
start=$SECONDS
log "building BaseTools and $DSC (edk2 $version, $JOBS jobs, a few minutes; log: $BUILD_LOG)"
: >"$BUILD_LOG"
# (errexit does not hold left of ||: each step is chained with &&.)
(
    cd "$TREE" &&
        unset WORKSPACE EDK_TOOLS_PATH PACKAGES_PATH CONF_PATH PYTHON3_ENABLE &&
        # Debian's python3 (with distutils), not whichever python3 comes first in PATH.
        export PYTHON_COMMAND=/usr/bin/python3 &&
        make -C BaseTools -j "$JOBS" &&
        # edksetup.sh reads unset variables and would take this script's arguments.
        set +u -- &&
        . ./edksetup.sh &&
        build -p "$DSC" -a X64 -t GCC5 -b RELEASE -n "$JOBS" "${DEFINES[@]}"
) >>"$BUILD_LOG" 2>&1 </dev/null || fail_with_log "$BUILD_LOG" "the edk2 build failed"
FV_DIR=$TREE/Build/CloudHvX64/RELEASE_GCC5/FV
built=$FV_DIR/CLOUDHV.fd
[[ -f $built ]] || fail_with_log "$BUILD_LOG" "the edk2 build made no $built"
# The UEFI Shell (ShellPkg/Application/Shell, FILE_GUID 7C04A583-...) in the DXE volume.
grep -qi '/7C04A583-9E3E-4f1c-AD65-E05268D0B4D1Shell/' "$FV_DIR/DXEFV.inf" ||
    die "the firmware lacks the UEFI Shell (no Shell FFS in $FV_DIR/DXEFV.inf)"
check_fd "$built" >/dev/null
cp "$built" "$FD.tmp"
mv "$FD.tmp" "$FD"
stamp_text "$version" >"$STAMP"
facts=$(describe "$FD")
log "firmware: built in $((SECONDS - start)) s, $facts"
