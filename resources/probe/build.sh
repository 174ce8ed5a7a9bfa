#!/usr/bin/env bash
# Builds the probe guest into OUTDIR: probe.elf (64-bit entry), probe-pvh.elf (with the Xen
# PVH note) and probe.bzimage (Linux boot protocol). Usage: build.sh OUTDIR
# PROBE_TARGET_DIR (optional): cargo's target directory instead of resources/probe/target, so
# that a second checkout or build does not share (and race on) the default one.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 OUTDIR" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$1"
out="$(cd "$1" && pwd)"
target="$here/target"
if [[ -n "${PROBE_TARGET_DIR:-}" ]]; then
    mkdir -p "$PROBE_TARGET_DIR"
    target="$(cd "$PROBE_TARGET_DIR" && pwd)"
fi

# Flags from the environment would replace the ones in .cargo/config.toml.
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS CARGO_BUILD_RUSTFLAGS CARGO_BUILD_TARGET CARGO_TARGET_DIR

cd "$here"
CARGO_TARGET_DIR="$target" cargo build --release --offline --locked --quiet
elf="$target/release/probe"

# CPUID at CPL3 is not intercepted on some PVM hosts (it returns the host's values), so every
# cpuid outside the CPL0 code must be io::cpuid's `hlt; cpuid`, which the #GP handler runs at
# CPL0 (see src/io.rs). The CPL0 ones: gp_cpuid (that handler) and ap_entry64 (AP start-up).
bare="$(objdump -d --no-show-raw-insn "$elf" | awk '
    /^[0-9a-f]+ <.*>:$/ { sym = $2 }
    /\tcpuid/ && prev !~ /\thlt/ && sym != "<gp_cpuid>:" && sym != "<ap_entry64>:" { print sym, $1 }
    { prev = $0 }')"
if [[ -n "$bare" ]]; then
    echo "$0: cpuid not through io::cpuid (would run at CPL3): $bare" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cc -c -x assembler -o "$tmp/setup16.o" tools/setup16.s
objcopy -O binary -j .text "$tmp/setup16.o" "$tmp/setup16.bin"

python3 tools/mkimage.py "$elf" "$tmp/setup16.bin" "$out"
