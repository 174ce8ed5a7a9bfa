#!/usr/bin/env bash
# Builds the Keel Linux fio guest from Debian bookworm packages only:
#   OUTDIR/vmlinuz          Debian cloud kernel bzImage (linux-image-cloud-amd64)
#   OUTDIR/vmlinux          the uncompressed ELF64 kernel extracted from that bzImage
#   OUTDIR/initramfs.cpio   newc cpio: busybox-static, fio + its shared libraries, virtio
#                           modules, resources/fio/*.fio and ./jobs/*.fio (in /fio), ./init,
#                           ./steps.sh (/tests/steps.sh) and keel-guest-tool (built here from
#                           ./keel-guest-tool.c with the host's gcc, static) (also .cpio.gz)
#   OUTDIR/kernel-version, OUTDIR/manifest.txt
# Downloaded .debs are cached in OUTDIR/debs, so a rebuild is offline. See README.md.
#
# Usage: resources/guest-linux/build.sh OUTDIR
set -euo pipefail
shopt -s nullglob

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "==> $*" >&2; }
if [[ $# -ne 1 || -z "$1" || "$1" == -* ]]; then
    echo "usage: $0 OUTDIR" >&2
    echo "  builds vmlinuz, vmlinux, initramfs.cpio, kernel-version and manifest.txt in OUTDIR" >&2
    exit 2
fi

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/rootfs.sh
source "$HERE/../lib/rootfs.sh"
JOBS_DIR=$(cd "$HERE/../fio" && pwd)         # benchmark jobs (keel bench fio)
TEST_JOBS_DIR=$HERE/jobs                     # guest-suite jobs (keel.test=fio:NAME)
mkdir -p "$1/debs"
OUT=$(cd "$1" && pwd)
DEBS=$OUT/debs
for tool in apt-get apt-cache dpkg-deb readelf depmod modinfo cpio gzip grep gcc; do
    command -v "$tool" >/dev/null || die "missing '$tool' (apt-get install cpio kmod binutils gzip lz4)"
done
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
PKGS=$WORK/pkgs     # PKGS/<package>/: each extracted library package
ROOT=$WORK/root     # staging root of the initramfs
mkdir -p "$PKGS" "$ROOT"
declare -A EXTRACTED=() SOPATH=() SEEN_SO=() OWNER=()
MANIFEST_PKGS=()

# cached_deb PKG: path of the cached .deb of PKG, downloading it first if needed.
cached_deb() {
    local pkg=$1 debs
    debs=("$DEBS/${pkg}_"*.deb)
    if [[ ${#debs[@]} -eq 0 ]]; then
        log "downloading $pkg"
        if ! (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null); then
            # Stale package lists name versions the mirror no longer has: refresh once (root).
            [[ $EUID -eq 0 && -z ${APT_REFRESHED:-} ]] || return 1
            APT_REFRESHED=1
            log "refreshing the package lists (apt-get update)"
            apt-get update -qq >&2 || return 1
            (cd "$DEBS" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >/dev/null) || return 1
        fi
        debs=("$DEBS/${pkg}_"*.deb)
        [[ ${#debs[@]} -gt 0 ]] || return 1
    fi
    printf '%s\n' "${debs[@]}" | sort -V | tail -n 1
}
deb_of() { cached_deb "$1" || die "cannot download package '$1' (try: apt-get update)"; }

# deb_depends DEB: first alternative of each Pre-Depends/Depends entry, names only.
deb_depends() {
    { dpkg-deb -f "$1" Pre-Depends; dpkg-deb -f "$1" Depends; } | tr ',' '\n' |
        sed -e 's/|.*//' -e 's/(.*)//' -e 's/:.*//' -e 's/[[:space:]]//g' | grep -v '^$' || true
}

# unpack PKG: extract the package into PKGS/PKG (once).
unpack() { [[ -d "$PKGS/$1" ]] || dpkg-deb -x "$(deb_of "$1")" "$PKGS/$1"; }

# extract PKG: unpack it, record it in the manifest and index its shared objects by name.
extract() {
    local pkg=$1 f
    [[ -n ${EXTRACTED[$pkg]:-} ]] && return 0
    unpack "$pkg"
    EXTRACTED[$pkg]=1
    MANIFEST_PKGS+=("$pkg $(dpkg-deb -f "$(deb_of "$pkg")" Version)")
    while IFS= read -r f; do
        # prefer the standard library directories if a name appears twice
        if [[ -z ${SOPATH[${f##*/}]:-} || $f == ./lib/* || $f == ./usr/lib/x86_64-linux-gnu/* ]]; then
            SOPATH[${f##*/}]=${f#./}; OWNER[${f##*/}]=$pkg
        fi
    done < <(cd "$PKGS/$pkg" && find . \( -type f -o -type l \) -name '*.so*' -path '*lib*' | sort -r)
}

# resolve ROOTDIR PATH: follow symlinks of ROOTDIR/PATH without leaving ROOTDIR.
resolve() {
    local root=$1 p=$2 t n=0
    while [[ -L "$root/$p" ]]; do
        t=$(readlink "$root/$p")
        if [[ $t == /* ]]; then p=${t#/}; else p=$(dirname "$p")/$t; fi
        ((++n < 40)) || die "symlink loop at $root/$2"
    done
    [[ -f "$root/$p" ]] || die "dangling symlink $root/$2"
    echo "$p"
}

# provides PKG SONAME: does the package contain a library file named SONAME?
provides() { unpack "$1" && [[ -n $(find "$PKGS/$1" -name "$2" -path '*lib*' -print -quit) ]]; }

# find_soname SONAME PKG: make SONAME available, searching the Depends of PKG (which needs
# it), then the package that holds it on the (bookworm) host.
find_soname() {
    local so=$1 pkg=$2 dep hostpkg
    [[ -n ${SOPATH[$so]:-} ]] && return 0
    for dep in $(deb_depends "$(deb_of "$pkg")"); do
        [[ -n ${EXTRACTED[$dep]:-} ]] && continue
        cached_deb "$dep" >/dev/null || continue      # e.g. a virtual package
        if provides "$dep" "$so"; then extract "$dep"; return 0; fi
    done
    hostpkg=$(dpkg -S "/$so" 2>/dev/null | head -n 1 | cut -d: -f1) || true
    [[ -n $hostpkg ]] || die "no package provides $so (needed by $pkg)"
    log "$so: not in the Depends of $pkg, using host package $hostpkg"
    extract "$hostpkg"
    [[ -n ${SOPATH[$so]:-} ]] || die "$hostpkg does not contain $so"
}

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'; }

# --- fio and the transitive closure of its DT_NEEDED --------------------------------
log "resolving fio's shared libraries"
extract fio
install -D -m 0755 "$PKGS/fio/usr/bin/fio" "$ROOT/usr/bin/fio"
queue=("fio:usr/bin/fio")
while [[ ${#queue[@]} -gt 0 ]]; do
    item=${queue[0]}; queue=("${queue[@]:1}")
    pkg=${item%%:*}; path=$(resolve "$PKGS/$pkg" "${item#*:}")
    for so in $(needed "$PKGS/$pkg/$path"); do
        [[ -n ${SEEN_SO[$so]:-} ]] && continue
        SEEN_SO[$so]=1
        find_soname "$so" "$pkg"
        owner=${OWNER[$so]}; rel=${SOPATH[$so]}
        real=$(resolve "$PKGS/$owner" "$rel")
        install -D -m 0755 "$PKGS/$owner/$real" "$ROOT/$rel"
        queue+=("$owner:$real")
    done
done
interp=$(readelf -l "$PKGS/fio/usr/bin/fio" | sed -n 's/.*interpreter: \(.*\)\]/\1/p')
[[ -n ${EXTRACTED[libc6]:-} ]] || extract libc6
install -D -m 0755 "$PKGS/libc6/$(resolve "$PKGS/libc6" "${interp#/}")" "$ROOT/$interp"

# --- busybox ------------------------------------------------------------------------
log "installing busybox"
install_busybox "$(deb_of busybox-static)" "$ROOT" "$WORK"
MANIFEST_PKGS+=("busybox-static $(dpkg-deb -f "$(deb_of busybox-static)" Version)")

# --- kernel -------------------------------------------------------------------------
log "extracting the kernel"
meta=$(deb_of linux-image-cloud-amd64)
kpkg=$(deb_depends "$meta" | grep '^linux-image-' | head -n 1)
[[ -n $kpkg ]] || die "linux-image-cloud-amd64 does not depend on a linux-image-* package"
MANIFEST_PKGS+=("linux-image-cloud-amd64 $(dpkg-deb -f "$meta" Version)")
KDEB=$(deb_of "$kpkg")
MANIFEST_PKGS+=("$kpkg $(dpkg-deb -f "$KDEB" Version)")
KROOT=$WORK/kernel
dpkg-deb -x "$KDEB" "$KROOT"
kdirs=("$KROOT"/lib/modules/*)
[[ ${#kdirs[@]} -eq 1 ]] || die "expected one module directory in $kpkg"
KVER=${kdirs[0]##*/}
[[ -f "$KROOT/boot/vmlinuz-$KVER" ]] || die "no /boot/vmlinuz-$KVER in $kpkg"
cp "$KROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"

# Find the compressed payload by magic (like the kernel's scripts/extract-vmlinux), try to
# decompress it, and keep the first result that is an ELF64 file.
is_elf64() { readelf -h "$1" 2>/dev/null | grep -q 'Class:[[:space:]]*ELF64'; }
vmlinux_how=
for spec in "02214c18:lz4 -dc" "28b52ffd:zstd -dcq" "1f8b08:gzip -dc" "fd377a585a00:xz -dc" \
        "5d000000:xz -dc --format=lzma" "425a68:bzip2 -dc" "894c5a:lzop -dc"; do
    magic=${spec%%:*}; cmd=${spec#*:}
    for off in $(LC_ALL=C grep -obUaP "$(sed 's/../\\x&/g' <<<"$magic")" "$WORK/vmlinuz" | cut -d: -f1); do
        command -v "${cmd%% *}" >/dev/null || die "need '${cmd%% *}' to decompress this kernel"
        tail -c "+$((off + 1))" "$WORK/vmlinuz" | $cmd >"$WORK/vmlinux" 2>/dev/null || true
        if is_elf64 "$WORK/vmlinux"; then vmlinux_how="${cmd%% *} payload at offset $off"; break 2; fi
    done
done
[[ -n $vmlinux_how ]] || die "could not extract an ELF64 vmlinux from vmlinuz-$KVER"
pvh_entry=$(readelf -n "$WORK/vmlinux" | grep -A1 -E 'Xen.*(0x00000012|PHYS32_ENTRY)' |
    sed -n 's/.*description data: \(.*\)/\1/p' | awk '{ for (i = NF; i > 0; i--) printf "%s", $i }') || true
if [[ -n $pvh_entry ]]; then pvh="yes (XEN_ELFNOTE_PHYS32_ENTRY = $(printf '0x%x' "$((16#$pvh_entry))"))"; else pvh=no; fi
log "vmlinux: ELF64 ($vmlinux_how), PVH note: $pvh"

# --- modules: virtio_pci, virtio_blk and their dependencies, in load order ------------
log "collecting modules"
depmod -b "$KROOT" "$KVER"
MODDIR=lib/modules/$KVER
copy_modules "$KROOT" "$KVER" "$ROOT" etc/modules-order virtio_pci virtio_blk
cp "$KROOT/$MODDIR"/modules.{builtin,builtin.modinfo,order} "$ROOT/$MODDIR/"
depmod -b "$ROOT" "$KVER"     # lets busybox modprobe work too

# --- the rest of the tree, check, archive ------------------------------------------
mkdir -p "$ROOT"/{dev,proc,sys,tmp,run,root,fio}
chmod 1777 "$ROOT/tmp"
[[ $EUID -eq 0 ]] && mknod -m 600 "$ROOT/dev/console" c 5 1
install -m 0755 "$HERE/init" "$ROOT/init"
install -D -m 0644 "$HERE/steps.sh" "$ROOT/tests/steps.sh"
cp "$JOBS_DIR"/*.fio "$ROOT/fio/"
for job in "$TEST_JOBS_DIR"/*.fio; do
    [[ ! -e "$ROOT/fio/${job##*/}" ]] || die "job ${job##*/} is in both resources/fio and $TEST_JOBS_DIR"
    cp "$job" "$ROOT/fio/"
done
log "building keel-guest-tool"
gcc -O2 -Wall -Wextra -Werror -static -s -o "$ROOT/usr/bin/keel-guest-tool" "$HERE/keel-guest-tool.c" ||
    die "gcc could not build keel-guest-tool (needs gcc and libc6-dev)"
"$ROOT/usr/bin/keel-guest-tool" clock 1000 >/dev/null || die "keel-guest-tool does not run"
echo "$KVER" >"$ROOT/etc/kernel-version"

if [[ $EUID -eq 0 ]]; then
    fio_version=$(chroot "$ROOT" /usr/bin/fio --version) || die "chroot $ROOT /usr/bin/fio --version failed"
else
    log "not root: checking fio through the loader instead of chroot"
    fio_version=$("$ROOT$interp" --library-path "$ROOT/lib/x86_64-linux-gnu:$ROOT/usr/lib/x86_64-linux-gnu" \
        "$ROOT/usr/bin/fio" --version) || die "fio does not run from the staging root"
fi
[[ $fio_version == fio-* ]] || die "unexpected fio --version output: $fio_version"
log "initramfs fio runs: $fio_version"

log "writing the initramfs"
find "$ROOT" -exec touch -h -d "@${SOURCE_DATE_EPOCH:-0}" {} +   # byte-identical rebuilds
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) \
    >"$WORK/initramfs.cpio"
if [[ -f "$OUT/initramfs.cpio.gz" ]] && cmp -s "$WORK/initramfs.cpio" "$OUT/initramfs.cpio"; then
    cp -p "$OUT/initramfs.cpio.gz" "$WORK/initramfs.cpio.gz"      # unchanged: skip the slow gzip
else
    gzip -6 -n -c "$WORK/initramfs.cpio" >"$WORK/initramfs.cpio.gz"
fi
echo "$KVER" >"$WORK/kernel-version"
{
    echo "# Keel Linux fio guest, built by resources/guest-linux/build.sh"
    echo "kernel-release: $KVER"
    echo "vmlinux: ELF64, from the $vmlinux_how of vmlinuz"
    echo "vmlinux-pvh-note: $pvh"
    echo "fio: $fio_version"
    echo "modules (load order): ${KMOD_LOADED[*]}"
    echo "initramfs.cpio: $(stat -c %s "$WORK/initramfs.cpio") bytes"
    echo
    echo "## packages"
    printf '%s\n' "${MANIFEST_PKGS[@]}" | sort -u
    echo
    echo "## initramfs files"
    (cd "$ROOT" && { find . ! -type d ! -type l -printf '%M %10s %P\n'; find . -type l -printf '%M %10s %P -> %l\n'; } |
        LC_ALL=C sort -k3)
} >"$WORK/manifest.txt"
for f in vmlinuz vmlinux initramfs.cpio initramfs.cpio.gz kernel-version manifest.txt; do
    mv -f "$WORK/$f" "$OUT/$f"
done
log "done: $OUT ($KVER, initramfs $(du -h "$OUT/initramfs.cpio" | cut -f1))"
