#!/usr/bin/env bash
# Builds the probe guest into OUTDIR: probe.elf (64-bit entry), probe-pvh.elf (with the Xen
# PVH note) and probe.bzimage (Linux boot protocol). Usage: build.sh OUTDIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"

# Flags from the environment would replace the ones in .cargo/config.toml.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET CARGO_TARGET_DIR

cd "$here"
cargo build --release --offline --locked --quiet
elf="$here/target/release/probe"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cc -c -x assembler -o "$tmp/setup16.o" tools/setup16.s
objcopy -O binary -j .text "$tmp/setup16.o" "$tmp/setup16.bin"

python3 tools/mkimage.py "$elf" "$tmp/setup16.bin" "$out"
