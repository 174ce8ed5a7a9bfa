#!/usr/bin/env bash
# Builds the nested test rig's L1: a Debian cloud kernel VM, run by QEMU's TCG with `-cpu max`
# (which offers AMD SVM), whose kvm_amd module gives an ordinary KVM on hosts that have none
# (PVM hosts). Everything comes from Debian packages and this project's own build:
#   OUTDIR/vmlinuz            the L1 kernel (the same Debian cloud kernel as the Linux guest)
#   OUTDIR/initramfs.cpio.gz  L1's first stage: busybox, virtio modules, an init that mounts
#                             the payload disk and switches to it
#   OUTDIR/payload.img        ext4 root of L1 (sparse, SIZE): busybox, kvm modules, keel,
#                             keel-rig, qemu-system-x86_64 with its libraries and firmware,
#                             the Linux guest (GUEST_DIR), the fio jobs; its free space holds
#                             the scenarios' disk images (O_DIRECT works on ext4)
#   OUTDIR/manifest.txt       what went in
# With FIRMWARE_DIR set (resources/firmware/rig-disks.sh's output), its files go in /firmware.
# With PROBE_DIR set, the probe guest's images go in /probe; with PROBE_TESTS set (a directory
# of compiled test binaries from tests/), each goes in /usr/libexec/keel-tests with its
# libraries.
# The kernel and busybox .debs come from GUEST_DIR/debs (make guest-linux downloads them).
#
# Usage: resources/rig/build.sh OUTDIR KEEL_BIN KEEL_RIG_BIN GUEST_DIR [QEMU_BIN]
set -euo pipefail
shopt -s nullglob

die() { echo "rig/build.sh: error: $*" >&2; exit 1; }
log() { echo "==> rig: $*" >&2; }
[[ $# -ge 4 ]] || { echo "usage: $0 OUTDIR KEEL_BIN KEEL_RIG_BIN GUEST_DIR [QEMU_BIN]" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=../lib/rootfs.sh
source "$HERE/../lib/rootfs.sh"
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
KEEL_BIN=$2 RIG_BIN=$3 GUEST_DIR=$4 QEMU_BIN=${5:-$(command -v qemu-system-x86_64 || true)}
PAYLOAD_SIZE=${RIG_PAYLOAD_SIZE:-8G}
for f in "$KEEL_BIN" "$RIG_BIN" "$GUEST_DIR/vmlinuz" "$GUEST_DIR/vmlinux" "$GUEST_DIR/initramfs.cpio.gz"; do
    [[ -f $f ]] || die "missing $f (make keel rig-bin guest-linux)"
done
[[ -n $QEMU_BIN && -x $QEMU_BIN ]] || die "qemu-system-x86_64 not found (apt-get install qemu-system-x86)"
for tool in dpkg-deb depmod modinfo cpio gzip mke2fs ldd; do
    command -v "$tool" >/dev/null || die "missing '$tool' (apt-get install cpio kmod e2fsprogs)"
done
kdebs=("$GUEST_DIR"/debs/linux-image-[0-9]*-cloud-amd64_*.deb)
bdebs=("$GUEST_DIR"/debs/busybox-static_*.deb)
[[ ${#kdebs[@]} -ge 1 && ${#bdebs[@]} -ge 1 ]] || die "no kernel or busybox .deb in $GUEST_DIR/debs (make guest-linux)"
KDEB=$(printf '%s\n' "${kdebs[@]}" | sort -V | tail -n 1)
BDEB=$(printf '%s\n' "${bdebs[@]}" | sort -V | tail -n 1)

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
KROOT=$WORK/kernel STAGE1=$WORK/stage1 ROOT=$WORK/root
mkdir -p "$KROOT" "$STAGE1" "$ROOT"
dpkg-deb -x "$KDEB" "$KROOT"
kdirs=("$KROOT"/lib/modules/*)
[[ ${#kdirs[@]} -eq 1 ]] || die "expected one module directory in $KDEB"
KVER=${kdirs[0]##*/}
depmod -b "$KROOT" "$KVER"

# install_program DESTROOT PATH [NAME]: the program as /usr/bin/NAME plus its shared
# libraries (ldd's closure, at their host paths, symlinks resolved).
install_program() {
    local dest=$1 bin=$2 name=${3:-${2##*/}} lib
    install -D -m 0755 "$bin" "$dest/usr/bin/$name"
    while read -r lib; do
        [[ -e "$dest$lib" ]] || install -D -m 0755 "$(readlink -f "$lib")" "$dest$lib"
    done < <(ldd "$bin" | grep -oE '(/[^ ]+)' | grep -v '^/usr/bin' || true)
}

log "stage 1: busybox, virtio modules, init"
install_busybox "$BDEB" "$STAGE1" "$WORK/stage1-scratch"
copy_modules "$KROOT" "$KVER" "$STAGE1" etc/modules-order virtio_pci virtio_blk
mkdir -p "$STAGE1"/{dev,proc,sys,newroot}
[[ $EUID -eq 0 ]] && mknod -m 600 "$STAGE1/dev/console" c 5 1
install -m 0755 "$HERE/init-stage1" "$STAGE1/init"
(cd "$STAGE1" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
    gzip -1 -n >"$WORK/initramfs.cpio.gz"

log "payload root: busybox, kvm modules, keel, keel-rig, QEMU, the Linux guest"
install_busybox "$BDEB" "$ROOT" "$WORK/root-scratch"
copy_modules "$KROOT" "$KVER" "$ROOT" etc/rig-modules kvm_amd
install_program "$ROOT" "$KEEL_BIN" keel
install_program "$ROOT" "$RIG_BIN" keel-rig
install_program "$ROOT" "$QEMU_BIN" qemu-system-x86_64
for d in /usr/share/qemu /usr/share/seabios; do
    [[ -d $d ]] && mkdir -p "$ROOT$d" && cp -rL "$d/." "$ROOT$d/" 2>/dev/null || true
done
mkdir -p "$ROOT"/{dev,proc,sys,tmp,run,root,work,guest,fio,etc}
cp "$GUEST_DIR"/{vmlinuz,vmlinux,initramfs.cpio.gz,kernel-version} "$ROOT/guest/"
cp "$HERE"/../fio/*.fio "$ROOT/fio/"
if [[ -n ${PROBE_DIR:-} ]]; then
    mkdir -p "$ROOT/probe"
    cp "$PROBE_DIR"/{probe.elf,probe-pvh.elf,probe.bzimage} "$ROOT/probe/"
fi
if [[ -n ${FIRMWARE_DIR:-} ]]; then
    mkdir -p "$ROOT/firmware"
    cp "$FIRMWARE_DIR"/{CLOUDHV.fd,linux.img,linux.cmdline,poweroff.img,reset.img} "$ROOT/firmware/"
fi
if [[ -n ${PROBE_TESTS:-} ]]; then
    for t in "$PROBE_TESTS"/*; do
        install_program "$ROOT" "$t" "$(basename "$t")"
        mkdir -p "$ROOT/usr/libexec/keel-tests"
        mv "$ROOT/usr/bin/$(basename "$t")" "$ROOT/usr/libexec/keel-tests/"
    done
fi
install -m 0755 "$HERE/init-l1" "$ROOT/init-l1"
echo "root:x:0:0:root:/root:/bin/sh" >"$ROOT/etc/passwd"

log "payload.img: ext4, $PAYLOAD_SIZE (sparse)"
rm -f "$WORK/payload.img"
mke2fs -q -t ext4 -L keel-rig -E root_owner=0:0 -d "$ROOT" "$WORK/payload.img" "$PAYLOAD_SIZE" >/dev/null ||
    die "mke2fs of the payload failed"
{
    echo "# Keel nested test rig (L1), built by resources/rig/build.sh"
    echo "kernel: $KVER ($(basename "$KDEB"))"
    echo "busybox: $(basename "$BDEB")"
    echo "qemu: $("$QEMU_BIN" --version | head -n 1)"
    echo "stage-1 modules: $(tr '\n' ' ' <"$STAGE1/etc/modules-order")"
    echo "payload modules: $(tr '\n' ' ' <"$ROOT/etc/rig-modules")"
    echo "payload: $(du -sh "$ROOT" | cut -f1) in an ext4 image of $PAYLOAD_SIZE"
} >"$WORK/manifest.txt"
cp "$GUEST_DIR/vmlinuz" "$WORK/vmlinuz"
for f in vmlinuz initramfs.cpio.gz payload.img manifest.txt; do mv -f "$WORK/$f" "$OUT/$f"; done
log "done: $OUT"
