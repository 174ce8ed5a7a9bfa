#!/usr/bin/env bash
# Builds the nested rig's host QEMU (L0): Debian's qemu source package of the same version as
# the installed qemu-system-x86, with this project's cr8-bql.patch, as one binary
# OUT_DIR/bin/qemu-system-x86_64 (x86_64-softmmu, TCG only, no optional features: what
# `keel-rig l1` starts needs a serial on stdio, a unix-socket monitor, -kernel/-initrd and a
# raw virtio-blk disk). Debian's 10.0 aborts once a guest of L1 runs UEFI firmware
# ("tcg_handle_interrupt: assertion failed: (bql_locked())"); cr8-bql.patch says why.
#
# The binary keeps Debian's paths (--prefix=/usr, not relocatable, Debian's firmware path), so
# it loads the installed package's ROMs and firmware from /usr/share/qemu and
# /usr/share/seabios, which match its version. It links only glib and zlib.
#
# What it needs and does, as root:
#   - a deb-src entry for the archive suite the installed version came from; if apt has no
#     source for that version it adds /etc/apt/sources.list.d/keel-deb-src-qemu.sources
#   - installs only the missing build dependencies: gcc, libc6-dev, pkgconf, patch, xz-utils,
#     python3-venv, ninja-build, libglib2.0-dev, zlib1g-dev, a meson as new as the source's
#     meson.build asks for (QEMU 10.0: 1.5; bookworm has 1.0, so then the one of the suite the
#     installed QEMU came from, bookworm-backports), and dpkg-dev for Debian's source format
#   - `apt-get source qemu=VERSION` into OUT_DIR/src; when the archive serves the version's
#     upstream tarball but not its .dsc and Debian tarball (a partial mirror), it builds that
#     upstream tarball (checked against apt's sha256) without Debian's patches, and says so
#   - the two changes of Debian's packaging that a build of the "+ds" tarball needs
#     (debian/patches/disable-pycotap.patch, skip-unpack-edk2-blobs.patch), then cr8-bql.patch
#   - configure, `ninja -j2` (JOBS), install -> OUT_DIR/bin/qemu-system-x86_64, and a check
#     that the binary starts a pc machine (so it found its BIOS)
# Cached: nothing is done when OUT_DIR/bin/qemu-system-x86_64 exists and OUT_DIR/stamp matches
# (the installed qemu-system-x86 version, and the sha256 of cr8-bql.patch and this script).
# Everything goes to OUT_DIR/build.log; on a failure its tail is printed, then one line.
#
# Usage: resources/rig/qemu/build.sh OUT_DIR
set -euo pipefail

[[ $# -eq 1 ]] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PATCH=$HERE/cr8-bql.patch
SELF=$HERE/$(basename "${BASH_SOURCE[0]}")
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
LOG=$OUT/build.log
BIN=$OUT/bin/qemu-system-x86_64
STAMP=$OUT/stamp
JOBS=${JOBS:-2}
DEB_SRC_FILE=/etc/apt/sources.list.d/keel-deb-src-qemu.sources
export DEBIAN_FRONTEND=noninteractive

log() { echo "==> rig-qemu: $*" >&2; }
die() {
    if [[ -s $LOG ]]; then
        echo "---- last lines of $LOG ----" >&2
        tail -n 25 "$LOG" >&2
        echo "----" >&2
    fi
    echo "rig/qemu/build.sh: error: $*" >&2
    exit 1
}
# step WHAT CMD...: runs CMD with its output in the log; on failure, the tail and one line.
step() {
    local what=$1
    shift
    echo "== $what: $*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || die "$what failed (log: $LOG)"
}
# apt_retry CMD...: CMD again while another apt or dpkg holds the lock (up to 10 minutes).
apt_retry() {
    local i out
    [[ $EUID -eq 0 ]] || { echo "apt-get needs root"; return 1; }
    for i in $(seq 120); do
        if out=$("$@" -o DPkg::Lock::Timeout=600 2>&1); then
            printf '%s\n' "$out"
            return 0
        fi
        printf '%s\n' "$out"
        grep -qE 'Could not get lock|Unable to lock' <<<"$out" || return 1
        echo "(apt lock held by another process; retrying in 5 s)"
        sleep 5
    done
    return 1
}
# (No `grep -q` or awk `exit` after a pipe: with pipefail, the writer's SIGPIPE fails it.)
installed() { [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]; }

command -v dpkg-query >/dev/null || die "not a Debian system (no dpkg-query)"
installed qemu-system-x86 ||
    die "qemu-system-x86 is not installed (.ci/run installs it; on bookworm from bookworm-backports)"
BIN_VERSION=$(dpkg-query -W -f='${Version}' qemu-system-x86)
# The source version: a binNMU's binary version has a +bN the source lacks.
VERSION=$(dpkg-query -W -f='${source:Version}' qemu-system-x86)
UPSTREAM=${VERSION#*:}
UPSTREAM=${UPSTREAM%-*}
stamp_text() {
    printf 'qemu-system-x86 %s (source qemu %s)\ncr8-bql.patch %s\nbuild.sh %s\n' \
        "$BIN_VERSION" "$VERSION" "$(sha256sum <"$PATCH" | cut -d' ' -f1)" \
        "$(sha256sum <"$SELF" | cut -d' ' -f1)"
}
if [[ -x $BIN && -f $STAMP ]] && [[ "$(cat "$STAMP")" == "$(stamp_text)" ]]; then
    log "up to date: $BIN (qemu $VERSION + cr8-bql.patch)"
    exit 0
fi

started=$SECONDS
: >"$LOG"
rm -f "$STAMP"
log "building qemu $VERSION + cr8-bql.patch (log: $LOG)"

# The archive suite (URI, suite, component) the installed binary version came from.
origin=$(apt-cache madison qemu-system-x86 |
    awk -F' [|] ' -v v="$BIN_VERSION" '!done && $2 == v && $3 ~ / Packages$/ { print $3; done = 1 }')
has_source() { apt-cache showsrc qemu 2>/dev/null | grep -xF "Version: $VERSION" >/dev/null; }
if ! has_source; then
    [[ -n $origin ]] || die "no archive in apt's sources offers qemu-system-x86 $BIN_VERSION, so none to take its source from"
    read -r uri dist _ <<<"$origin"
    suite=${dist%%/*} component=${dist#*/}
    [[ $dist == */* ]] || component=main
    [[ $EUID -eq 0 ]] || die "needs root to add $DEB_SRC_FILE (a deb-src for $suite)"
    log "adding deb-src for $uri $suite $component ($DEB_SRC_FILE)"
    {
        echo "# Added by keel's resources/rig/qemu/build.sh: the source of qemu $VERSION."
        echo "Types: deb-src"
        echo "URIs: $uri"
        echo "Suites: $suite"
        echo "Components: $component"
        if [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]]; then
            echo "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg"
        fi
    } >"$DEB_SRC_FILE"
    step "apt-get update" apt_retry apt-get update
    has_source || die "apt still has no source for qemu $VERSION after adding $DEB_SRC_FILE"
fi

# The source: Debian's package if the archive serves all of it, else its upstream tarball.
SRC=$OUT/src
mkdir -p "$SRC"
dsc=$SRC/qemu_${VERSION#*:}.dsc
# The upstream tarball's sha256 and name, from the index paragraph of this version.
orig=$(apt-cache showsrc qemu | awk -v v="$VERSION" '/^$/ { p = 0 } $0 == "Version: " v { p = 1 }
    /^[^ ]/ { f = 0 } /^Checksums-Sha256:/ { f = 1; next }
    !done && p && f && $3 ~ /\.orig\.tar\./ { print $1, $3; done = 1 }')
[[ -n $orig ]] || die "apt lists no upstream tarball for qemu $VERSION"
read -r orig_sha orig_name <<<"$orig"
if [[ ! -f $dsc ]]; then
    log "apt-get source qemu=$VERSION"
    echo "== apt-get source --download-only qemu=$VERSION" >>"$LOG"
    (cd "$SRC" && apt-get source --download-only -q "qemu=$VERSION") >>"$LOG" 2>&1 ||
        echo "(apt-get source failed; see above)" >>"$LOG"
fi
WORK=$OUT/work
rm -rf "$WORK"
mkdir -p "$WORK"
if [[ -f $dsc ]]; then
    command -v dpkg-source >/dev/null || step "install dpkg-dev" apt_retry apt-get install -y -q --no-install-recommends dpkg-dev
    step "dpkg-source -x (Debian's source with its patches)" dpkg-source -x "$dsc" "$WORK/qemu"
    from="Debian's source package $VERSION"
elif [[ -f $SRC/$orig_name ]]; then
    [[ "$(sha256sum <"$SRC/$orig_name" | cut -d' ' -f1)" == "$orig_sha" ]] ||
        die "$SRC/$orig_name does not match the sha256 apt lists for it; remove it and rerun"
    log "warning: the archive serves $orig_name but not qemu $VERSION's .dsc and Debian tarball:" \
        "building upstream $UPSTREAM from that tarball, without Debian's patches"
    mkdir -p "$WORK/qemu"
    step "unpack $orig_name" tar -xf "$SRC/$orig_name" -C "$WORK/qemu" --strip-components=1
    from="$orig_name (upstream $UPSTREAM; Debian's .dsc was not available)"
else
    die "apt-get source qemu=$VERSION downloaded nothing usable (log: $LOG)"
fi
TREE=$WORK/qemu

# Build dependencies: only the missing ones.
need=()
for p in gcc libc6-dev pkgconf patch xz-utils python3-venv ninja-build libglib2.0-dev zlib1g-dev; do
    installed "$p" || need+=("$p")
done
meson_min=$(sed -n "s/^project('qemu'.*meson_version: *'>= *\([0-9.]*\)'.*/\1/p" "$TREE/meson.build")
[[ -n $meson_min ]] || die "cannot read the meson version $TREE/meson.build asks for"
meson_ok() { dpkg --compare-versions "$1" ge "$meson_min"; }
if ! { installed meson && meson_ok "$(dpkg-query -W -f='${Version}' meson)"; }; then
    cand=$(apt-cache policy meson | awk '/Candidate:/ { print $2 }')
    if [[ $cand != "(none)" && -n $cand ]] && meson_ok "$cand"; then
        need+=(meson)
    elif [[ -n $origin ]]; then
        # The suite the installed QEMU came from (bookworm-backports) has a new enough one.
        read -r _ dist _ <<<"$origin"
        need+=("meson/${dist%%/*}")
    else
        die "QEMU $UPSTREAM needs meson >= $meson_min; apt offers $cand"
    fi
fi
if [[ ${#need[@]} -gt 0 ]]; then
    log "installing build dependencies: ${need[*]}"
    step "apt-get install" apt_retry apt-get install -y -q --no-install-recommends "${need[@]}"
fi
meson_ok "$(dpkg-query -W -f='${Version}' meson)" ||
    die "meson $(dpkg-query -W -f='${Version}' meson) is installed; QEMU $UPSTREAM needs >= $meson_min"

# Debian's packaging changes that building the "+ds" tarball needs (each a no-op when
# Debian's patches are applied already): pycotap is only for the functional tests and is not
# packaged; the edk2 blobs are stripped from the tarball.
sed -i 's/^pycotap = /#&/' "$TREE/pythondeps.toml"
sed -i 's/^if unpack_edk2_blobs$/if unpack_edk2_blobs and false/' "$TREE/pc-bios/meson.build"
step "apply cr8-bql.patch (does it still fit $UPSTREAM's target/i386/tcg/system/misc_helper.c?)" \
    patch -d "$TREE" -p1 -N --no-backup-if-mismatch -i "$PATCH"

CONFIGURE=(
    --python=/usr/bin/python3 # Debian's, whose dist-packages hold meson
    --target-list=x86_64-softmmu
    --without-default-features --enable-system --enable-tcg
    --disable-download --disable-docs --disable-debug-info --disable-install-blobs
    --prefix=/usr --disable-relocatable
    --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu
    "--with-pkgversion=Debian $VERSION, keel cr8-bql.patch"
)
mkdir -p "$TREE/build"
log "configure ${CONFIGURE[*]}"
(cd "$TREE/build" && step "configure" ../configure "${CONFIGURE[@]}")
log "ninja -j$JOBS qemu-system-x86_64 (2 to 5 minutes on 2 CPUs)"
step "build" ninja -C "$TREE/build" -j"$JOBS" qemu-system-x86_64
step "install" install -D -m 0755 "$TREE/build/qemu-system-x86_64" "$BIN"

# It must find its BIOS and option ROMs (from the installed package): a pc machine that
# starts, stopped (-S), stays up until timeout ends it; a missing ROM ends it at once.
echo "== check: $BIN starts a pc machine" >>"$LOG"
rc=0
timeout 3 "$BIN" -accel tcg -machine pc -cpu max -nodefaults -display none -monitor none \
    -serial none -S >>"$LOG" 2>&1 || rc=$?
[[ $rc -eq 124 ]] || die "$BIN did not start a pc machine (exit $rc; does it find bios-256k.bin?)"
"$BIN" --version >>"$LOG"
rm -rf "$WORK"
stamp_text >"$STAMP"
log "done in $((SECONDS - started)) s: $BIN ($("$BIN" --version | head -n 1)), from $from"
