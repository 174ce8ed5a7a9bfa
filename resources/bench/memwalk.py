#!/usr/bin/env python3
"""Guest memory backing: the probe guest's CPL3 random-access loop (`memwalk`) over a large
buffer, with guest RAM on 4 KiB host pages (THP off), on THP, and on 2 MiB hugetlb pages, in
one run. A benchmark, not a test: it prints ns per access and the ratios against 4 KiB.

Needs root to reserve the huge pages (it gives them back at the end)."""
import argparse, json, os, subprocess, sys

POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def run(keel, probe, memory, size, iters):
    cmd = [keel, "--kernel", probe, "--memory", memory, "--serial", "tty",
           "--cmdline", f"probe.cmd=memwalk:size={size},iters={iters}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"keel failed ({memory}): {p.stderr.strip()}")
    for line in p.stdout.splitlines():
        if line.startswith("{") and '"memwalk"' in line:
            return json.loads(line)
    sys.exit(f"no memwalk report ({memory}):\n{p.stdout}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default="target/release/keel")
    ap.add_argument("--probe-dir", default="build/probe")
    ap.add_argument("--memory", default="1G")
    ap.add_argument("--size", default="768M", help="buffer the guest walks")
    ap.add_argument("--iters", default="20000000")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    probe = os.path.join(a.probe_dir, "probe.elf")
    mem_mib = int(a.memory.rstrip("G")) * 1024 if a.memory.endswith("G") else int(a.memory.rstrip("M"))
    pages = mem_mib // 2
    with open(POOL) as f:
        before = int(f.read())
    try:
        with open(POOL, "w") as f:
            f.write(str(before + pages))
    except OSError as e:
        sys.exit(f"memwalk: cannot reserve {pages} huge pages in {POOL}: {e} (run as root)")
    try:
        configs = [
            ("4K", f"size={a.memory},thp=off,prefault=on"),
            ("THP", f"size={a.memory},thp=on,prefault=on"),
            ("2M", f"size={a.memory},hugepages=on,prefault=on"),
        ]
        best = {}
        for _ in range(a.rounds):
            for name, memory in configs:
                r = run(a.keel, probe, memory, a.size, a.iters)
                ns = r["ns_per_access"]
                best[name] = min(best.get(name, ns), ns)
    finally:
        with open(POOL, "w") as f:
            f.write(str(before))
    base = best["4K"]
    print(f"memwalk: {a.size} buffer, {a.iters} dependent random loads at CPL3, best of {a.rounds}")
    for name, _ in configs:
        ns = best[name]
        print(f"memwalk: guest RAM on {name:>3} host pages: {ns:7.2f} ns/access "
              f"(4K/{name} speedup {base / ns:.2f})")


if __name__ == "__main__":
    main()
