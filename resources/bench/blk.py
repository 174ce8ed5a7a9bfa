#!/usr/bin/env python3
"""Keel storage benchmark: one backing file, one queue depth, four views of the same workload
(default 4K randread, QD32, O_DIRECT), printed as raw figures and as ratios against a
reference measured in the same run.

  (a) raw io_uring on the host (keel-blkbench raw): the reference;
  (b) Keel's virtio-blk device driven from the host without a vCPU (keel-blkbench device):
      the dataplane's own ceiling;
  (c) the probe guest's `blk` command through Keel (--disk ...,cache=none), poll=1;
  (d) KVM exits and Keel userspace exits per completed I/O in steady state (keel --stats),
      from two guest runs of different length so that boot and setup cancel out;
  and the same probe guest under QEMU (virtio-blk-pci on an iothread, aio=io_uring) when
  qemu-system-x86_64 is installed.

(a) and (b) alternate over a few rounds and report medians, because other work on the host
moves the figures. A benchmark, not a test: missed targets are reported, never fatal; the
exit code is non-zero only when something could not run (missing keel-blkbench, I/O errors).
Standard library only.
"""
import argparse
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time

TARGET_DEVICE_VS_RAW = 0.95  # (b)/(a) at least
TARGET_EXITS_PER_IO = 0.05   # KVM and userspace exits per I/O, poll=1, at most
TARGET_VS_QEMU = 1.5         # Keel guest IOPS / QEMU guest IOPS, at least

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHUNK = 4 << 20


class BenchError(Exception):
    """Something that makes the run fail (as opposed to a skipped part or a missed target)."""


def parse_size(s):
    m = re.fullmatch(r"(\d+)([kKmMgG]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"'{s}' is not a size (e.g. 4k, 1G)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keel", default=os.path.join(REPO, "target/release/keel"),
                   help="keel binary (default: target/release/keel)")
    p.add_argument("--blkbench", help="keel-blkbench binary (default: next to --keel)")
    p.add_argument("--probe-dir", default=os.path.join(REPO, "build/probe"),
                   help="directory with probe.elf and probe.bzimage (default: build/probe)")
    p.add_argument("--file", help="backing file; created with --size if missing and then kept "
                   "(default: a temporary file under build/, on the repository's filesystem, deleted "
                   "afterwards)")
    p.add_argument("--size", type=parse_size, default=1 << 30, help="size of a created file (1G)")
    p.add_argument("--fill", choices=["random", "pattern"], default="random",
                   help="content of a created file: random bytes, or the probe's verify pattern "
                   "(every u64 of sector S holds S)")
    p.add_argument("--verify", action="store_true",
                   help="have the guests check the data they read (needs --fill pattern)")
    p.add_argument("--seconds", type=float, default=10.0,
                   help="time per measured part: (a), (b), the long guest run, QEMU (10)")
    p.add_argument("--rounds", type=int, default=3,
                   help="(a) and (b) alternate this many times, --seconds split among them (3)")
    p.add_argument("--bs", type=parse_size, default=4096, help="request size (4k)")
    p.add_argument("--iodepth", type=int, default=32, help="requests in flight (32)")
    p.add_argument("--rw", choices=["randread", "randwrite", "read", "write"], default="randread")
    p.add_argument("--qemu", default="qemu-system-x86_64", help="QEMU binary")
    p.add_argument("--no-qemu", action="store_true", help="skip the QEMU comparison")
    p.add_argument("--json", action="store_true", help="also print all figures as one JSON line")
    a = p.parse_args()
    if a.bs <= 0 or a.bs % 512:
        p.error("--bs must be a positive multiple of 512")
    if a.size <= 0 or a.size % 4096:
        p.error("--size must be a positive multiple of 4k")
    if a.iodepth < 1 or a.seconds <= 0 or a.rounds < 1:
        p.error("--iodepth, --seconds and --rounds must be positive")
    if a.verify and a.fill != "pattern":
        p.error("--verify needs --fill pattern")
    if a.blkbench is None:
        a.blkbench = os.path.join(os.path.dirname(os.path.abspath(a.keel)), "keel-blkbench")
    return a


# ---------------------------------------------------------------------------------------------
# Backing file


def create_file(path, size, fill):
    """Writes `size` bytes of `fill` data, syncs them and drops them from the page cache."""
    t0 = time.time()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        done = 0
        while done < size:
            n = min(CHUNK, size - done)
            if fill == "random":
                buf = os.urandom(n)
            else:
                s0 = done // 512
                buf = b"".join(struct.pack("<Q", s) * 64 for s in range(s0, s0 + n // 512))
            os.write(fd, buf)
            done += n
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return time.time() - t0


# ---------------------------------------------------------------------------------------------
# (a) and (b): keel-blkbench


def blkbench(a, mode, path, seconds):
    cmd = [a.blkbench, mode, "--file", path, "--rw", a.rw, "--bs", str(a.bs),
           "--iodepth", str(a.iodepth), "--seconds", f"{seconds:.3f}", "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        raise BenchError(f"keel-blkbench {mode} did not finish within {seconds + 60:.0f} s")
    if p.returncode != 0:
        msg = (p.stderr.strip() or p.stdout.strip()).splitlines()
        raise BenchError(f"keel-blkbench {mode} failed: {msg[-1] if msg else p.returncode}")
    try:
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise BenchError(f"keel-blkbench {mode} printed no JSON line: {p.stdout!r}")


def median_run(runs):
    """The run with the median IOPS (a real run, so its latencies belong to it)."""
    ordered = sorted(runs, key=lambda r: r["iops"])
    return ordered[(len(ordered) - 1) // 2]


# ---------------------------------------------------------------------------------------------
# (c), (d) and QEMU: the probe guest


def blk_arg(a, stop):
    args = f"disk=0,rw={a.rw},bs={a.bs},iodepth={a.iodepth},{stop},poll=1"
    if a.verify:
        args += ",verify=1"
    return "probe.cmd=blk:" + args


def probe_blk_support():
    """Whether the probe documents `blk`, and whether it accepts runtime=S."""
    try:
        with open(os.path.join(REPO, "resources/probe/README.md")) as f:
            text = f.read()
    except OSError:
        return False, False
    return "`blk" in text, "runtime" in text


def parse_guest(stdout):
    """The blk JSON line and the done line from the serial output."""
    blk, done = None, None
    for line in stdout.splitlines():
        i = line.find("{")
        if i < 0:
            continue
        try:
            obj = json.loads(line[i:].strip())
        except ValueError:
            continue
        if obj.get("cmd") == "blk":
            blk = obj
        elif "done" in obj:
            done = obj
    return blk, done


def guest_failure(blk, done, stderr, rc):
    if done and not done.get("done"):
        return f"probe error: {done.get('error')}"
    if blk is None:
        tail = [l for l in stderr.strip().splitlines() if l.strip()]
        return f"no blk result (exit {rc}{': ' + tail[-1] if tail else ''})"
    if blk.get("errors"):
        return f"{blk['errors']} requests failed"
    if blk.get("verify_errors"):
        return f"{blk['verify_errors']} sectors failed verification"
    return None


def run_keel_guest(a, path, stop, timeout):
    kernel = os.path.join(a.probe_dir, "probe.elf")
    cmd = [a.keel, "--kernel", kernel, "--memory", "size=512M", "--cmdline", blk_arg(a, stop),
           "--disk", f"path={path},cache=none", "--serial", "tty", "--stats"]
    try:
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, None, f"keel did not finish within {timeout:.0f} s"
    out = p.stdout.decode(errors="replace")
    err = p.stderr.decode(errors="replace")
    blk, done = parse_guest(out)
    failure = guest_failure(blk, done, err, p.returncode)
    m = re.search(r"^keel-stats: (\{.*\})\s*$", err, re.M)
    stats = None
    if m:
        try:
            stats = json.loads(m.group(1))
        except ValueError:
            stats = None
    return blk, stats, failure


def exit_counts(stats):
    """Sums over vCPUs: KVM's counters by name and Keel's userspace exits."""
    kvm, user = {}, 0
    for v in stats.get("vcpus", []):
        for k, n in v.get("kvm", {}).items():
            if isinstance(n, int):
                kvm[k] = kvm.get(k, 0) + n
        user += v.get("userspace", {}).get("total", 0)
    return kvm, user


def run_qemu(a, path, stop, timeout):
    """Returns (blk, accel note, failure)."""
    bz = os.path.join(a.probe_dir, "probe.bzimage")
    notes = []
    for accel in ("kvm", "tcg"):
        cmd = [a.qemu, "-accel", accel, "-kernel", bz,
               "-object", "iothread,id=io0",
               "-drive", f"file={path},if=none,id=d0,format=raw,cache=none,aio=io_uring",
               "-device", "virtio-blk-pci,drive=d0,iothread=io0,disable-legacy=on",
               "-nographic", "-no-reboot", "-m", "512M",
               "-append", "console=ttyS0 " + blk_arg(a, stop)]
        try:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
            out = p.stdout.decode(errors="replace")
            err = p.stderr.decode(errors="replace")
            blk, done = parse_guest(out)
            failure = guest_failure(blk, done, err, p.returncode)
        except subprocess.TimeoutExpired:
            blk, failure = None, f"no result within {timeout:.0f} s"
        if failure is None:
            return blk, " ".join(notes + [accel]), None
        notes.append(f"{accel} failed ({failure});")
    return None, None, " ".join(notes)


# ---------------------------------------------------------------------------------------------
# Report


def fmt_us(ns):
    return f"{ns / 1000:.1f}" if isinstance(ns, (int, float)) else "-"


def verdict(value, target, higher_is_better):
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def measure_host(a, path, errors):
    """(a) and (b), alternating; every run of each."""
    raw_runs, dev_runs = [], []
    per = a.seconds / a.rounds
    for _ in range(a.rounds):
        for mode, runs in (("raw", raw_runs), ("device", dev_runs)):
            try:
                runs.append(blkbench(a, mode, path, per))
            except BenchError as e:
                errors.append(str(e))
    return raw_runs, dev_runs


def guest_prerequisites(a):
    """(reason to skip the guest parts or None, probe takes runtime=S, keel has --stats)."""
    has_blk, has_runtime = probe_blk_support()
    if not os.access(a.keel, os.X_OK):
        return f"no keel binary at {a.keel} (make keel)", False, False
    if not os.path.exists(os.path.join(a.probe_dir, "probe.elf")):
        return f"no probe.elf in {a.probe_dir} (make probe)", False, False
    if not has_blk:
        return "the probe has no blk command yet", False, False
    help_text = subprocess.run([a.keel, "--help"], capture_output=True, text=True).stdout
    if "--disk" not in help_text:
        return "keel has no --disk option yet", False, False
    return None, has_runtime, "--stats" in help_text


def guest_stops(a, has_runtime):
    """Stop conditions of the short and the long guest run."""
    long_s = max(2, round(a.seconds))
    if has_runtime:
        return [f"runtime={max(1, long_s // 4)}", f"runtime={long_s}"], long_s
    return ["ios=20000", "ios=60000"], long_s


def measure_guest(a, path, has_runtime, has_stats, errors):
    """(c) and (d): returns (long run's blk result, note, exits per I/O, note)."""
    stops, long_s = guest_stops(a, has_runtime)
    runs = []
    for stop in stops:
        blk, stats, failure = run_keel_guest(a, path, stop, timeout=long_s + 120)
        if failure:
            errors.append(f"guest run through keel ({stop}): {failure}")
            return None, f"(c) failed: {failure}", None, "(d) skipped: no guest result"
        runs.append((blk, stats))
    (blk1, stats1), (blk2, stats2) = runs
    if not has_stats:
        return blk2, None, None, "(d) skipped: keel has no --stats yet"
    if stats1 is None or stats2 is None:
        return blk2, None, None, "(d) skipped: no keel-stats line on stderr"
    dios = blk2["ios"] - blk1["ios"]
    if dios <= 0:
        return blk2, None, None, "(d) inconclusive: the longer run completed fewer I/Os"
    (k1, u1), (k2, u2) = exit_counts(stats1), exit_counts(stats2)
    names = ("exits", "io_exits", "mmio_exits", "halt_exits", "irq_exits", "irq_window_exits",
             "request_irq_exits", "signal_exits")
    d = {"ios_delta": dios, "user_per_io": (u2 - u1) / dios,
         "kvm_per_io": {k: (k2.get(k, 0) - k1.get(k, 0)) / dios for k in names if k in k2}}
    return blk2, None, d, None


def measure_qemu(a, path, skip, has_runtime):
    """The probe guest under QEMU: (blk result with "accel", note)."""
    if a.no_qemu:
        return None, "qemu skipped: --no-qemu"
    if shutil.which(a.qemu) is None:
        return None, f"qemu skipped: {a.qemu} is not installed"
    if skip:
        return None, f"qemu skipped: {skip}"
    if not os.path.exists(os.path.join(a.probe_dir, "probe.bzimage")):
        return None, f"qemu skipped: no probe.bzimage in {a.probe_dir}"
    stops, long_s = guest_stops(a, has_runtime)
    blk, accel, failure = run_qemu(a, path, stops[1], timeout=long_s + 120)
    if failure:
        return None, f"qemu failed: {failure}"
    return dict(blk, accel=accel), f"accel {accel}"


def print_report(a, raw_runs, dev_runs, guest, guest_note, d, d_note, qemu, qemu_note):
    raw = median_run(raw_runs) if raw_runs else None
    dev = median_run(dev_runs) if dev_runs else None
    print()
    print(f"  {'':<36}{'IOPS':>9}{'p50 us':>9}{'p99 us':>9}  notes")

    def row(label, r, note):
        if r is None:
            print(f"  {label:<36}{'-':>9}{'-':>9}{'-':>9}  {note}")
        else:
            lat = r.get("lat_ns", {})
            print(f"  {label:<36}{r['iops']:>9.0f}{fmt_us(lat.get('p50')):>9}"
                  f"{fmt_us(lat.get('p99')):>9}  {note}")

    def spread(runs):
        return "/".join(f"{r['iops'] / 1000:.1f}k" for r in runs)

    def per_io(r):
        ios = max(r["ios"], 1)
        return f"kicks/IO {r['kicks'] / ios:.4f}, irqs/IO {r['interrupts'] / ios:.4f}"

    row("(a) raw io_uring, host", raw,
        f"median of {len(raw_runs)} x {a.seconds / a.rounds:.1f} s ({spread(raw_runs)})"
        if raw else "failed")
    row("(b) keel device, no vCPU", dev,
        f"median ({spread(dev_runs)}); {per_io(dev)}, "
        f"iothread CPU {dev['iothread_cpu_pct']:.0f}%" if dev else "failed")
    row("(c) probe guest via keel, poll=1", guest,
        f"{guest['ios']} I/Os; {per_io(guest)}" if guest else guest_note)
    row("    probe guest via qemu, iothread", qemu,
        f"{qemu_note}; {per_io(qemu)}" if qemu else qemu_note)

    print()
    print(f"  {'ratio / figure':<44}{'value':>9}  {'target':<9}")

    def fig(label, value, target=None, higher=True, fmt="{:.3f}"):
        v = fmt.format(value) if value is not None else "-"
        if target is None:
            print(f"  {label:<44}{v:>9}")
            return
        t = (">= " if higher else "<= ") + f"{target:g}"
        noise = "  (negative: below the noise)" if value is not None and value < 0 else ""
        print(f"  {label:<44}{v:>9}  {t:<9} {verdict(value, target, higher)}{noise}")

    def ratio(x, y):
        return x["iops"] / y["iops"] if x and y and y["iops"] else None

    fig("(b)/(a) device vs raw", ratio(dev, raw), TARGET_DEVICE_VS_RAW)
    fig("(c)/(a) guest vs raw", ratio(guest, raw))
    if d:
        fig("(d) KVM exits per I/O (steady state)", d["kvm_per_io"].get("exits"),
            TARGET_EXITS_PER_IO, higher=False, fmt="{:.4f}")
        fig("(d) userspace exits per I/O (steady state)", d["user_per_io"],
            TARGET_EXITS_PER_IO, higher=False, fmt="{:.4f}")
        parts = {k: v for k, v in d["kvm_per_io"].items() if k != "exits" and abs(v) >= 5e-5}
        rest = d["kvm_per_io"].get("exits", 0) - sum(parts.values())
        detail = ", ".join(f"{k} {v:.4f}" for k, v in parts.items())
        print(f"      KVM exits per I/O by reason: {detail or 'none named'}, other {rest:.4f} "
              f"(over {d['ios_delta']} I/Os)")
    else:
        print(f"  {d_note}")
    fig("keel/qemu guest IOPS", ratio(guest, qemu), TARGET_VS_QEMU)
    print("  (PVM host: every guest kick/MMIO exit costs tens of us, so guest figures are low.)")


def main():
    a = parse_args()
    if not os.access(a.blkbench, os.X_OK):
        raise BenchError(f"{a.blkbench} not found; build it with "
                         "`cargo build --release -p keel-bench --bin keel-blkbench` (make bench does)")
    errors = []
    tmpdir = None
    path = a.file
    try:
        if path is None:
            # build/ is ignored by git and on the repository's filesystem.
            base = os.path.join(REPO, "build")
            os.makedirs(base, exist_ok=True)
            tmpdir = tempfile.mkdtemp(prefix="blkbench-", dir=base)
            path = os.path.join(tmpdir, "disk.img")
        if not os.path.exists(path):
            secs = create_file(path, a.size, a.fill)
            origin = f"created: {a.fill} data, {secs:.1f} s"
        else:
            origin = "existing"
        size = os.path.getsize(path)
        print(f"blk bench: {a.rw} bs={a.bs} iodepth={a.iodepth} O_DIRECT, "
              f"{size / (1 << 30):.2f} GiB file {path} ({origin})")
        print(f"  host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"{a.seconds:g} s per measured part")
        sys.stdout.flush()

        raw_runs, dev_runs = measure_host(a, path, errors)
        skip, has_runtime, has_stats = guest_prerequisites(a)
        if skip:
            guest, guest_note, d, d_note = None, f"(c) skipped: {skip}", None, f"(d) skipped: {skip}"
        else:
            guest, guest_note, d, d_note = measure_guest(a, path, has_runtime, has_stats, errors)
        qemu, qemu_note = measure_qemu(a, path, skip, has_runtime)
    finally:
        if tmpdir:
            shutil.rmtree(tmpdir, ignore_errors=True)

    print_report(a, raw_runs, dev_runs, guest, guest_note, d, d_note, qemu, qemu_note)
    if a.json:
        results = {"rw": a.rw, "bs": a.bs, "iodepth": a.iodepth, "raw": raw_runs,
                   "device": dev_runs, "guest": guest, "exits": d, "qemu": qemu}
        print(json.dumps(results, separators=(",", ":")))
    for e in errors:
        print(f"blk bench: error: {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"blk bench: error: {e}")
    except KeyboardInterrupt:
        sys.exit("blk bench: interrupted")
