#!/usr/bin/env python3
"""Keel start cost: time from exec to the first KVM_RUN with 1 GiB of guest RAM, and the
VMM's peak resident memory, over repeated runs. A benchmark, not a test: it prints figures
as ratios against the goals (10 ms, 5 MiB) measured in the same run."""
import os, re, statistics, struct, subprocess, sys, tempfile, time

GOAL_START_MS = 10.0
GOAL_RSS_MIB = 5.0
RUNS = 20


def tiny_kernel(path):
    """ELF64 at 1 MiB: write ACPI S5 to port 0x604, hlt."""
    code = bytes.fromhex("66ba040666b8003466eff4ebfd")
    entry = 0x100000
    ehdr = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, entry, entry, len(code), len(code), 0x1000)
    img = ehdr + phdr
    img += bytes(0x1000 - len(img)) + code
    with open(path, "wb") as f:
        f.write(img)


def one_run(keel, kernel, memory):
    t0 = time.time()
    proc = subprocess.run([keel, "--kernel", kernel, "--memory", memory, "--serial", "off",
                           "--log-level", "debug"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        sys.exit(f"keel failed: {proc.stderr}")
    m = re.search(r"first KVM_RUN at unix time ([0-9.]+)", proc.stderr)
    if not m:
        sys.exit("no 'first KVM_RUN' line in keel's debug log")
    r = re.search(r"peak RSS (\d+) kB", proc.stderr)
    if not r:
        sys.exit("no 'peak RSS' line in keel's debug log")
    rss_kib = int(r.group(1))
    return (float(m.group(1)) - t0) * 1000.0, rss_kib


def main():
    keel = sys.argv[1] if len(sys.argv) > 1 else "target/release/keel"
    with tempfile.TemporaryDirectory() as tmp:
        kernel = os.path.join(tmp, "poweroff.elf")
        tiny_kernel(kernel)
        # Default memory (THP advised: the tiny guest's first touch costs a 2 MiB page), and
        # 4 KiB pages only, which shows the VMM's own footprint.
        for label, memory in (("THP (default)", "size=1G"), ("4 KiB pages", "size=1G,thp=off")):
            starts, rss = [], []
            for _ in range(RUNS):
                ms, kib = one_run(keel, kernel, memory)
                starts.append(ms)
                rss.append(kib)
            report(label, starts, rss)


def report(label, starts, rss):
    start = statistics.median(starts)
    peak_mib = max(rss) / 1024.0
    print(f"startup [{label}]: exec -> first KVM_RUN, 1 GiB guest, median of {RUNS}: {start:.2f} ms "
          f"(goal {GOAL_START_MS:.0f} ms, ratio {start / GOAL_START_MS:.2f})")
    print(f"startup [{label}]: peak RSS of keel (VmHWM, incl. the guest pages a tiny guest touches): "
          f"{peak_mib:.2f} MiB (goal {GOAL_RSS_MIB:.0f} MiB, ratio {peak_mib / GOAL_RSS_MIB:.2f})")


if __name__ == "__main__":
    main()
