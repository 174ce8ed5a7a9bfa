#!/usr/bin/env bash
# Builds the firmware scenarios' files for the Linux guest suite (rig/src/scenarios/
# firmware.rs) into OUTDIR: the firmware itself, and GPT disk images whose one partition is an
# EFI system partition (FAT) with a startup.nsh that the firmware's UEFI Shell runs at boot:
#   OUTDIR/CLOUDHV.fd     the firmware (make firmware)
#   OUTDIR/linux.img      the Linux guest's EFI-stub kernel (\vmlinuz.efi) and initramfs
#                         (\initrd.gz); startup.nsh boots it with the command line in
#                         OUTDIR/linux.cmdline (the guest's steps: report, fio on /dev/vda)
#   OUTDIR/poweroff.img   startup.nsh: `reset -s` (the firmware powers off)
#   OUTDIR/reset.img      startup.nsh: `reset` (the firmware resets the machine)
# Only Debian tools: sgdisk (gdisk), mkfs.fat (dosfstools), mcopy (mtools).
#
# Usage: resources/firmware/rig-disks.sh OUTDIR FIRMWARE GUEST_DIR
set -euo pipefail

die() { echo "rig-disks.sh: error: $*" >&2; exit 1; }
[[ $# -eq 3 ]] || { echo "usage: $0 OUTDIR FIRMWARE GUEST_DIR" >&2; exit 2; }
OUT=$1 FIRMWARE=$2 GUEST_DIR=$3
for tool in sgdisk mkfs.fat mcopy; do
    command -v "$tool" >/dev/null || die "missing '$tool' (apt-get install gdisk dosfstools mtools)"
done
KERNEL=$GUEST_DIR/vmlinuz INITRD=$GUEST_DIR/initramfs.cpio.gz
for f in "$FIRMWARE" "$KERNEL" "$INITRD"; do [[ -f $f ]] || die "missing $f (make firmware guest-linux)"; done
# The EFI stub is what the Shell runs: a bzImage without it is no PE image.
[[ $(head -c 2 "$KERNEL") == MZ ]] || die "$KERNEL has no EFI stub (no MZ header)"
# The guest's init (resources/guest-linux) reports its CPUs and memory, its virtio interrupts,
# runs a verified fio job on /dev/vda (the scenario's blank data disk, which the firmware also
# saw), and powers off.
CMDLINE="console=ttyS0 panic=-1 keel.test=info;irqs;fio:verify1 keel.end=poweroff"

mkdir -p "$OUT"
WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# esp_image NAME SCRIPT [SOURCE:NAME_ON_ESP...]: OUT/NAME, a GPT image with an ESP holding
# startup.nsh (SCRIPT's lines, CRLF-terminated) and the files.
esp_image() {
    local name=$1 script=$2 img=$WORK/$1 bytes=0 spec
    shift 2
    printf '%s\r\n' "$script" >"$WORK/startup.nsh"
    for spec in "$@"; do bytes=$((bytes + $(stat -c %s "${spec%%:*}"))); done
    # The files plus 8 MiB of slack, in whole MiB; 1 MiB before and after the partition for
    # the primary and backup GPT.
    local part_mib=$((bytes / 1048576 + 8)) first=2048
    local last=$(((part_mib + 1) * 2048 - 1))
    truncate -s "$((part_mib + 2))M" "$img"
    { sgdisk -o "$img" && sgdisk -n "1:$first:$last" -t 1:EF00 -c 1:"EFI system partition" "$img"; } \
        >/dev/null || die "sgdisk could not partition $name"
    mkfs.fat -n KEELESP --offset "$first" "$img" $((part_mib * 1024)) >/dev/null 2>&1 ||
        die "mkfs.fat failed on $name"
    local fat="$img@@$((first * 512))"
    mcopy -i "$fat" "$WORK/startup.nsh" ::/startup.nsh
    for spec in "$@"; do mcopy -i "$fat" "${spec%%:*}" "::/${spec#*:}"; done
    mv -f "$img" "$OUT/$name"
}

esp_image linux.img $'fs0:\r\n\\vmlinuz.efi initrd=\\initrd.gz '"$CMDLINE" \
    "$KERNEL:vmlinuz.efi" "$INITRD:initrd.gz"
esp_image poweroff.img 'reset -s'
esp_image reset.img 'reset'
printf '%s\n' "$CMDLINE" >"$OUT/linux.cmdline"
cp -f "$FIRMWARE" "$OUT/CLOUDHV.fd"
echo "==> firmware disks: $OUT" >&2
