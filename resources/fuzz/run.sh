#!/usr/bin/env bash
# make fuzz: runs each fuzz target (fuzz/fuzz_targets/) with cargo-fuzz on the stable toolchain
# (libFuzzer, no sanitizer: `-s none`) for SECONDS, growing fuzz/corpus/<target>/, then minimizes
# the corpus; prints one line per target: executions, corpus size, crashes (inputs in
# fuzz/artifacts/<target>/). Exit 1 if any target crashed.
#
# Usage: resources/fuzz/run.sh SECONDS TARGET...
set -uo pipefail
seconds=$1
shift
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked || exit 1
cd "$(dirname "${BASH_SOURCE[0]}")/../../fuzz" || exit 1
failed=0
for t in "$@"; do
    mkdir -p "corpus/$t"
    log=$(mktemp)
    cargo fuzz run -s none -O "$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
    cargo fuzz cmin -s none -O "$t" >/dev/null 2>&1
    echo "fuzz $t: ${execs:-?} execs in ${seconds} s, corpus $(ls "corpus/$t" | wc -l) inputs, crashes $crashes (exit $rc)"
    if [[ $rc -ne 0 || $crashes -ne 0 ]]; then
        failed=1
        tail -n 30 "$log"
    fi
    rm -f "$log"
done
exit $failed
