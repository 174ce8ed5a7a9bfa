#!/usr/bin/env python3
"""Keel beside its peers where the VMM is the bottleneck: the probe guest's `blk` job (the
same job, guest and file for every VMM) through Keel and through QEMU (virtio-blk-pci on an
iothread, aio=io_uring, cache=none), beside raw io_uring on the host on that file.

Cells: backends (a file on tmpfs, a file on disk) x 4K randread/randwrite x QD 1/32/128 x
1 or 2 virtqueues. Each round runs every cell once, raw then Keel then QEMU, so the VMMs
alternate (A B A B ...) and slow phases of the host hit both; at least 5 rounds. For every
cell: IOPS (median and spread), p99 latency, KVM exits per I/O, Keel's kicks and interrupts
per I/O, and the CPU time per I/O of each VMM's vCPU threads and of its I/O path (I/O threads
and io_uring workers), all over the guest's timed window (`keel bench fio`).

A benchmark, not a test: missed targets are printed, never fatal; the exit code is non-zero
only when something could not run. Standard library only.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BACKENDS = {"tmpfs": "/dev/shm/keel-bench-peers", "disk": os.path.join(REPO, "build/bench-peers")}
# Issue 18's targets, for the cells they name.
TARGET_VS_RAW = {"tmpfs": 0.9, "disk": 0.95}
TARGET_VS_QEMU = 2.0
TARGET_IO_CPU_VS_QEMU = 0.5


class BenchError(Exception):
    """Something that makes the run fail (as opposed to a missed target)."""


def csv(kind):
    def parse(text):
        items = [kind(x) for x in text.split(",") if x]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items
    return parse


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keel", default=os.path.join(REPO, "target/release/keel"))
    p.add_argument("--blkbench", help="keel-blkbench binary (default: next to --keel)")
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--backends", type=csv(str), default=["tmpfs", "disk"],
                   help="tmpfs, disk, or DIR=PATH entries (default tmpfs,disk)")
    p.add_argument("--rw", type=csv(str), default=["randread", "randwrite"])
    p.add_argument("--qd", type=csv(int), default=[1, 32, 128])
    p.add_argument("--queues", type=csv(int), default=[1, 2])
    p.add_argument("--runs", type=int, default=5, help="rounds, at least 5 (5)")
    p.add_argument("--seconds", type=int, default=3, help="timed window per run (3)")
    p.add_argument("--size", default="1G", help="file size (1G)")
    p.add_argument("--keel-poll-us", type=int, default=32,
                   help="Keel's disk poll_us (32, as QEMU's iothreads poll up to 32 us by default; "
                   "0: no polling)")
    p.add_argument("--keel-disk-options", default="",
                   help="more of Keel's --disk options, e.g. iothread=shared (every queue on "
                   "one I/O thread)")
    p.add_argument("--interrupts", action="store_true",
                   help="the guest takes completion interrupts (default: it polls the used "
                   "ring, fio's hipri, as the figures of resources/bench/blk.py)")
    p.add_argument("--json", action="store_true", help="also print every run as one JSON line")
    p.add_argument("--keep-files", action="store_true",
                   help="keep the backend files (reused, not rewritten, by the next run)")
    a = p.parse_args()
    if a.runs < 5:
        p.error("--runs must be at least 5: this host's noise needs medians of 5")
    if a.blkbench is None:
        a.blkbench = os.path.join(os.path.dirname(os.path.abspath(a.keel)), "keel-blkbench")
    a.backends = [backend_dir(b, p) for b in a.backends]
    return a


def backend_dir(text, p):
    if "=" in text:
        name, path = text.split("=", 1)
        return name, path
    if text not in BACKENDS:
        p.error(f"unknown backend '{text}': tmpfs, disk or NAME=DIR")
    return text, BACKENDS[text]


def job_file(tmp, rw, qd, a):
    path = os.path.join(tmp, f"{rw}-qd{qd}.fio")
    hipri = "" if a.interrupts else "hipri=1\n"
    with open(path, "w") as f:
        f.write(f"[global]\nioengine=io_uring\ndirect=1\nrw={rw}\nbs=4k\niodepth={qd}\n"
                f"{hipri}time_based=1\nruntime={a.seconds}\n[vda]\nfilename=/dev/vda\n")
    return path


def run_raw(a, path, rw, qd):
    cmd = [a.blkbench, "raw", "--file", path, "--rw", rw, "--bs", "4096", "--iodepth", str(qd),
           "--seconds", str(a.seconds), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds + 120)
    if p.returncode != 0:
        raise BenchError(f"keel-blkbench raw failed: {(p.stderr or p.stdout).strip()[-300:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def run_vmms(a, backend_path, job, queues):
    cmd = [a.keel, "bench", "fio", "--guest", "probe", "--job", job, "--compare", "qemu",
           "--qemu", a.qemu, "--dir", backend_path, "--keep-disks", "--fill", "reuse",
           "--disk-size", a.size, "--cpus", "boot=1", "--memory", "size=512M",
           "--disk-options", ",".join(o for o in [f"queues={queues}", f"poll_us={a.keel_poll_us}",
                                                  a.keel_disk_options] if o),
           "--timeout", str(a.seconds + 300)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.seconds * 2 + 900)
    line = next((l for l in p.stdout.splitlines() if l.startswith("keel-bench-fio: ")), None)
    if line is None:
        raise BenchError(f"keel bench fio printed no result: {(p.stderr or p.stdout)[-400:]}")
    report = json.loads(line[len("keel-bench-fio: "):])
    for side in ("keel", "qemu"):
        if not report.get(side, {}).get("ok"):
            raise BenchError(f"{side} run failed: {report.get(side, {}).get('problem')}")
    return report


def side_figures(side, rw):
    d = side["read" if rw.endswith("read") else "write"]
    return {"iops": d["iops"], "p99_us": d["p99_ns"] / 1000, "mean_us": d["lat_mean_ns"] / 1000,
            "backend_us": side.get("backend_latency_us"),
            "exits": side.get("exits_per_io_kvm"), "kicks": side.get("kicks_per_io"),
            "irqs": side.get("interrupts_per_io"),
            "vcpu_cpu_us": side.get("vcpu_cpu_us_per_io"),
            "io_cpu_us": side.get("io_cpu_us_per_io")}


def measure(a, tmp):
    """Every cell, round by round; returns {cell: [run, ...]}."""
    cells = [(b, rw, qd, q) for b in a.backends for rw in a.rw for qd in a.qd for q in a.queues]
    runs = {c: [] for c in cells}
    for (name, path) in a.backends:
        os.makedirs(path, exist_ok=True)
    for r in range(a.runs):
        for cell in cells:
            (name, path), rw, qd, queues = cell
            # The VMM run first: it creates the file (random data) the raw run then reads.
            report = run_vmms(a, path, job_file(tmp, rw, qd, a), queues)
            raw = run_raw(a, os.path.join(path, "fio-disk0.img"), rw, qd)
            run = {"raw": {"iops": raw["iops"], "p99_us": raw["lat_ns"]["p99"] / 1000,
                           "mean_us": raw["lat_ns"]["mean"] / 1000},
                   "keel": side_figures(report["keel"], rw),
                   "qemu": side_figures(report["qemu"], rw)}
            runs[cell].append(run)
            print(f"  round {r + 1}/{a.runs} {name} {rw} qd{qd} q{queues}: raw "
                  f"{run['raw']['iops']:.0f}, keel {run['keel']['iops']:.0f}, qemu "
                  f"{run['qemu']['iops']:.0f} IOPS", file=sys.stderr, flush=True)
    return runs


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values):
    values = [v for v in values if v is not None]
    return (min(values), max(values)) if values else (None, None)


def fmt(v, digits=0):
    return "-" if v is None else f"{v:,.{digits}f}"


def ratio_stats(runs, num, den, field="iops"):
    """Median and spread of the per-round ratio (each round's runs ran back to back)."""
    values = [r[num][field] / r[den][field] for r in runs
              if r[num][field] is not None and r[den][field]]
    return med(values), spread(values)


def verdict(value, target, higher=True):
    if value is None:
        return ""
    ok = value >= target if higher else value <= target
    return "met" if ok else "MISSED"


def print_cell(cell, runs):
    (name, _), rw, qd, queues = cell
    print(f"\n{name}, 4K {rw}, QD{qd}, {queues} queue(s): {len(runs)} rounds, medians (min-max)")
    print(f"  {'':<26}{'raw io_uring':>26}{'keel':>26}{'qemu':>26}")

    def row(label, field, digits, sides=("raw", "keel", "qemu")):
        cells = []
        for side in ("raw", "keel", "qemu"):
            if side not in sides:
                cells.append(f"{'':>26}")
                continue
            vals = [r[side].get(field) for r in runs]
            lo, hi = spread(vals)
            text = f"{fmt(med(vals), digits)} ({fmt(lo, digits)}-{fmt(hi, digits)})"
            cells.append(f"{text:>26}")
        print(f"  {label:<26}{''.join(cells)}")

    row("IOPS", "iops", 0)
    row("p99 latency us", "p99_us", 0)
    row("mean latency us", "mean_us", 0)
    # Keel's share of its mean: the backend's (I/O thread pop to completion); the rest is the
    # trip through the rings, the notifications and the guest.
    row("  in keel's backend", "backend_us", 0, ("keel",))
    vmms = ("keel", "qemu")
    row("KVM exits per I/O", "exits", 3, vmms)
    row("kicks per I/O", "kicks", 3, ("keel",))
    row("interrupts per I/O", "irqs", 3, ("keel",))
    row("vCPU CPU us per I/O", "vcpu_cpu_us", 2, vmms)
    row("I/O-path CPU us per I/O", "io_cpu_us", 2, vmms)


def print_ratios(cell, runs):
    (name, _), rw, qd, _ = cell
    named = rw == "randread" and qd == 32
    vs_raw, (lo1, hi1) = ratio_stats(runs, "keel", "raw")
    vs_qemu, (lo2, hi2) = ratio_stats(runs, "keel", "qemu")
    io_cpu, (lo3, hi3) = ratio_stats(runs, "keel", "qemu", "io_cpu_us")
    p99 = med([r["keel"]["p99_us"] / r["qemu"]["p99_us"] for r in runs if r["qemu"]["p99_us"]])
    lines = [
        ("keel / raw IOPS", vs_raw, lo1, hi1, TARGET_VS_RAW.get(name) if named else None, True),
        ("keel / qemu IOPS", vs_qemu, lo2, hi2,
         TARGET_VS_QEMU if named and name == "tmpfs" else None, True),
        ("keel / qemu I/O-path CPU per I/O", io_cpu, lo3, hi3,
         TARGET_IO_CPU_VS_QEMU if named and name == "tmpfs" else None, False),
        ("keel / qemu p99 latency", p99, None, None, 1.0 if named and name == "disk" else None,
         False),
    ]
    for label, value, lo, hi, target, higher in lines:
        span = f" ({fmt(lo, 2)}-{fmt(hi, 2)})" if lo is not None else ""
        goal = ""
        if target is not None:
            goal = f"   target {'>=' if higher else '<='} {target:g}: {verdict(value, target, higher)}"
        print(f"  {label:<34}{fmt(value, 2):>6}{span}{goal}")


def versions(a):
    def first_line(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
            return out.splitlines()[0] if out else "?"
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    commit = first_line(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return (f"keel {commit}; {first_line([a.qemu, '--version'])}; "
            f"host {os.uname().release}, {os.cpu_count()} CPUs")


def main():
    a = parse_args()
    for tool in (a.keel, a.blkbench):
        if not os.access(tool, os.X_OK):
            raise BenchError(f"{tool} not found (make bench-peers builds it)")
    if shutil.which(a.qemu) is None:
        raise BenchError(f"{a.qemu} is not installed: the comparison needs QEMU")
    print(f"bench-peers: {versions(a)}")
    mode = "completion interrupts" if a.interrupts else "polled completions"
    print(f"  keel poll_us={a.keel_poll_us}, one I/O thread per queue (its default); qemu: one "
          "iothread per disk, its default polling (adaptive, up to 32 us)")
    print(f"  probe guest, 1 vCPU, 512 MiB, {mode}; {a.size} file per backend "
          f"({', '.join(f'{n} {p}' for n, p in a.backends)}); {a.seconds} s windows, "
          f"{a.runs} rounds", flush=True)
    created = [p for _, p in a.backends if not os.path.exists(p)]
    try:
        with tempfile.TemporaryDirectory(prefix="keel-peers-") as tmp:
            runs = measure(a, tmp)
    finally:
        # The files (1 GiB on tmpfs is RAM) go; directories only if this run made them.
        for _, path in ([] if a.keep_files else a.backends):
            for f in ("fio-disk0.img", "fio-config.img"):
                try:
                    os.unlink(os.path.join(path, f))
                except OSError:
                    pass
        for path in ([] if a.keep_files else created):
            shutil.rmtree(path, ignore_errors=True)
    for cell, cell_runs in runs.items():
        print_cell(cell, cell_runs)
        print_ratios(cell, cell_runs)
    if a.json:
        out = [{"backend": c[0][0], "rw": c[1], "qd": c[2], "queues": c[3], "runs": r}
               for c, r in runs.items()]
        print(json.dumps(out, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"bench-peers: error: {e}")
    except KeyboardInterrupt:
        sys.exit("bench-peers: interrupted")
