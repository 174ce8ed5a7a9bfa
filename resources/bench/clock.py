#!/usr/bin/env python3
"""Clock storm: the probe guest reads a clock many times from CPL3 through (a) the ACPI PM timer
port, (b) kvmclock, (c) the Hyper-V reference TSC page (where the host can offer it), and Keel's
counters say how many VM exits that cost. Two runs per source that differ only in the number of
reads are differenced, so boot and output exits cancel. A benchmark, not a test: it prints exits
per 1000 reads against the targets (about 1000 for the PM timer, at most 1 for the others)."""
import argparse, json, os, subprocess, sys

SOURCES = [
    ("pmtimer", "boot=1", 2000, 12000, "about 1000"),
    ("kvmclock", "boot=1", 100000, 5000000, "<= 1"),
    ("hvtsc", "boot=1,hyperv=[relaxed,vpindex,time]", 100000, 5000000, "<= 1"),
]


def run(keel, probe, cpus, source, reads):
    cmd = [keel, "--kernel", probe, "--cpus", cpus, "--stats", "--cmdline",
           f"probe.cmd=boot probe.cmd=clock:source={source},reads={reads}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        return None, p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "keel failed"
    report = next((json.loads(l) for l in p.stdout.splitlines()
                   if l.startswith("{") and '"clock"' in l), None)
    if not report or not report.get("ok"):
        return None, (report or {}).get("error", "no clock report")
    stats = next(json.loads(l.split(": ", 1)[1]) for l in p.stderr.splitlines()
                 if l.startswith("keel-stats: "))
    v = stats["vcpus"][0]
    return (v["kvm"].get("exits", 0), v["userspace"]["total"], report["ns_per_read"]), None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keel", default="target/release/keel")
    ap.add_argument("--probe-dir", default="build/probe")
    a = ap.parse_args()
    probe = os.path.join(a.probe_dir, "probe.elf")
    print("clock storm: exits per 1000 guest clock reads (KVM exits / Keel userspace exits), "
          "two runs differenced")
    for source, cpus, few, many, target in SOURCES:
        lo, err = run(a.keel, probe, cpus, source, few)
        hi, err2 = (None, None) if err else run(a.keel, probe, cpus, source, many)
        if err or err2:
            print(f"clock storm: {source:>8}: not measured here: {err or err2}")
            continue
        per = 1000.0 / (many - few)
        kvm = (hi[0] - lo[0]) * per
        user = (hi[1] - lo[1]) * per
        print(f"clock storm: {source:>8}: {kvm:9.3f} KVM / {user:9.3f} userspace exits per 1000 reads, "
              f"{hi[2]:.0f} ns per read (target {target})")


if __name__ == "__main__":
    main()
