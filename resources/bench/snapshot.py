#!/usr/bin/env python3
"""Snapshot and restore: Keel's paused-mode snapshot of a 2 GiB probe guest whose RAM is
mostly non-zero, against fio on the same file system, and QEMU's migration to a file of the
same guest, in one run.

Each round times these parts, every file in the same directory, each part after a sync, a
drop of the page cache (drop_caches 3) and a wait for the directory's disk to be idle (0.5 s
with no request in flight or completing: deleting 2 GiB on a file system mounted with
`discard` keeps it busy for a while):
  - Keel snapshot: boot the probe with `memwalk` over most of its RAM (a random pointer chain:
    every 64-byte line non-zero) then `counter` (runs on), wait for the counter's lines, then
    `PUT /api/v1/vm.snapshot` with `"mode":"paused"`; its answer gives file_bytes, ram_bytes,
    zero_bytes, paused_ms, took_ms. Then, on the same guest, a `"mode":"live"` snapshot: its
    pause and throughput where keel has live mode, else the refusal, printed.
  - Keel live snapshot of a guest dirtying RAM: a new guest, `memwalk` as above, then
    `dirty:mbps=100,size=256m` (one u64 written into each 4 KiB page of a 256 MiB buffer,
    cycling, paced to 100 MB/s of distinct pages; a line a second with the rate achieved). Once
    the buffer has been written through (its 4th line), `"mode":"live"`: its throughput
    (ram_bytes / took_ms) against the same round's fio write, its pause, and the time the
    write-fault handler took per guest fault (wp_fault_p50_us / p99_us, with wp_faults and
    wp_throttled). The rate the guest achieved while the request was in flight is read from its
    lines. Twice: on keel's default backing (4 KiB pages + THP where the host has it), and on
    2 MiB hugetlb pages (`--memory size=...,hugepages=on`) when the host's pool could be grown
    for the run (/proc/sys/vm/nr_hugepages, restored at the end; skipped with the reason
    printed otherwise, or with --no-hugepages).
  - fio write: sequential write of the snapshot's size to a new file, bs=1M, iodepth=8,
    direct=1, io_uring, end_fsync=1 (Keel fdatasyncs its file too): the throughput reference.
  - QEMU (KVM) on the same guest and command line: `stop`, `migrate` to `file:` (its stream
    format, max-bandwidth lifted), polled with query-migrate until completed, then fdatasync
    of the file (timed too: Keel's file is on disk when it answers); the same with QEMU's
    file-oriented format (mapped-ram + multifd, 2 channels, + direct-io); in round 1 only,
    QEMU as shipped (max-bandwidth 128 MiB/s).
  - Keel restore: a new keel, `PUT /api/v1/vm.restore` of the snapshot (timed to its 204, the
    VM then Paused; keel's log gives the RAM part), then vm.resume and a counter line (it runs
    on).
  - fio read: sequential read of the snapshot file, bs=10M, iodepth=1, direct=1: the restore
    reference (file size / fio's read throughput). Last, for context, the same read as Keel's
    restore issues it: buffered pread, 16 MiB at a time (fio psync, direct=0).
  - Context for the restore: this host is itself a VM whose memory its host backs lazily
    (virtio-balloon free page reporting), so memory not touched lately costs seconds per GiB
    to fault in. The script times a plain process faulting in guest RAM + 256 MiB of fresh
    anonymous THP memory, frees it, and restores again at once (into memory just freed).
Odd rounds (1, 3, ...) run Keel snapshot, Keel dirty (default backing, then hugetlb), fio
write, QEMU, Keel restore, fio read; even rounds run the writers in reverse order (QEMU, fio
write, Keel dirty hugetlb, Keel dirty default, Keel snapshot) and fio read before Keel
restore, so that neither side always goes first: on this host the first read of a freshly
written file is several times slower than the next one, page cache dropped or not.

Figures are medians with their spread (min-max); ratios are per round (the runs of a round
ran back to back) and then the median. A benchmark, not a test: missed goals are printed,
never fatal; the exit code is non-zero only when something could not run. Needs root (to drop
the page cache and grow the hugetlb pool), fio, and qemu-system-x86_64 for the comparison.
Standard library only.
"""
import argparse
import json
import mmap
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20
COUNTER = "probe.cmd=counter:to=1152921504606846976,every=4194304"
# Issue 16's goals.
GOAL_WRITE_VS_FIO = 0.9      # snapshot throughput / fio sequential write, guest idle, at least
GOAL_WRITE_DIRTY = 0.75      # same while the guest dirties 100 MB/s (live mode), at least
GOAL_PAUSE_HUGE_MS = 5       # guest pause with THP or hugetlb RAM (live mode), at most
GOAL_PAUSE_4K_MS = 50        # guest pause with 4 KiB pages (live mode), at most
GOAL_RESTORE_VS_FIO = 1.1    # restore time / (file size / fio sequential read), at most
NOT_LIVE = "not measured: live mode not built yet"
DIRTY_MBPS = 100             # the dirtying guest's rate, MB/s (10^6 bytes) of distinct pages
HUGE_PAGE_KIB = 2048
# Hugetlb pages beyond guest RAM: keel's 64 MiB staging pool takes 2 MiB pages from the pool too
# when guest RAM is hugetlb, plus a margin.
HUGE_EXTRA_PAGES = 64


class BenchError(Exception):
    """Something that makes the run fail (as opposed to a missed goal)."""


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keel", default=os.path.join(REPO, "target/release/keel"))
    p.add_argument("--probe-dir", default=os.path.join(REPO, "build/probe"))
    p.add_argument("--qemu", default="qemu-system-x86_64")
    p.add_argument("--fio", default="fio")
    p.add_argument("--dir", default=os.path.join(REPO, "build/bench-snapshot"),
                   help="where every file goes (default build/bench-snapshot, on the "
                   "repository's disk); created if missing, its files removed after each run")
    p.add_argument("--rounds", type=int, default=5, help="rounds, at least 3 (5)")
    p.add_argument("--memory-mib", type=int, default=2048, help="guest RAM in MiB (2048)")
    p.add_argument("--walk-mib", type=int,
                   help="memwalk buffer in MiB (default: guest RAM - 128; it must fit below "
                   "3 GiB)")
    p.add_argument("--dirty-mib", type=int, default=256,
                   help="the dirtying guest's buffer in MiB (256; it cycles through it at "
                   f"{DIRTY_MBPS} MB/s)")
    p.add_argument("--no-hugepages", action="store_true",
                   help="skip the dirtying guest on 2 MiB hugetlb pages")
    p.add_argument("--no-qemu", action="store_true", help="skip the QEMU comparison")
    p.add_argument("--no-qemu-shipped", action="store_true",
                   help="skip the one run of QEMU with its default max-bandwidth (128 MiB/s)")
    p.add_argument("--json", action="store_true", help="also print every run as one JSON line")
    a = p.parse_args()
    if a.rounds < 3:
        p.error("--rounds must be at least 3")
    if a.walk_mib is None:
        a.walk_mib = a.memory_mib - 128
    if not 1 <= a.walk_mib <= min(a.memory_mib - 16, 3000):
        p.error("--walk-mib must fit in guest RAM and below 3 GiB")
    if not 1 <= a.dirty_mib <= a.walk_mib:
        p.error("--dirty-mib must be 1..--walk-mib")
    a.dir = os.path.abspath(a.dir)
    return a


# ---------------------------------------------------------------------------------------------
# Host helpers


# /sys/class/block/NAME/stat of the directory's device, once known (settle() waits on it).
DISK_STAT = None


def disk_counters():
    with open(DISK_STAT) as f:
        v = [int(x) for x in f.read().split()]
    return v[8], (v[0], v[4], v[11] if len(v) > 11 else 0)  # in flight; reads, writes, discards


def settle(timeout=60):
    """Waits until the disk has had no request in flight or completing for 0.5 s (deleting a
    2 GiB file on a file system mounted with `discard` sends discards for a while); returns the
    seconds waited."""
    if DISK_STAT is None:
        return 0.0
    t0 = time.monotonic()
    last, quiet_since = None, time.monotonic()
    while time.monotonic() - t0 < timeout:
        inflight, done = disk_counters()
        if inflight or done != last:
            last, quiet_since = done, time.monotonic()
        elif time.monotonic() - quiet_since >= 0.5:
            break
        time.sleep(0.05)
    return time.monotonic() - t0


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3")
    settle()


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        text = (out.stdout or out.stderr).strip()
        return text.splitlines()[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def mount_of(path):
    """(mount point, fs type, source) of the file system holding path."""
    path = os.path.realpath(path)
    best = ("/", "?", "?")
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4].replace("\\040", " ")
            sep = fields.index("-")
            fstype, source = fields[sep + 1], fields[sep + 2]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, fstype, source)
    return best


def mount_options(mount):
    opts = "?"
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == mount:
                opts = fields[3]
    return opts


def odirect_ok(directory):
    """Whether the file system takes an aligned O_DIRECT write."""
    path = os.path.join(directory, ".odirect-check")
    buf = mmap.mmap(-1, 4096)
    try:
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_DIRECT, 0o600)
        try:
            os.write(fd, buf)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False
    finally:
        buf.close()
        try:
            os.unlink(path)
        except OSError:
            pass


def thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            m = re.search(r"\[(\w+)\]", f.read())
            return m.group(1) if m else "?"
    except OSError:
        return "absent"


def anon_huge_mib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("AnonHugePages:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def meminfo_kib(field):
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


class HugePool:
    """The host's default hugetlb pool grown by enough 2 MiB pages for one guest for the run
    (as root, through /proc/sys/vm/nr_hugepages), and set back to its size at the end."""
    PATH = "/proc/sys/vm/nr_hugepages"

    def __init__(self, memory_mib):
        self.need = memory_mib * 1024 // HUGE_PAGE_KIB + HUGE_EXTRA_PAGES
        self.old = None
        self.reason = None

    def grow(self):
        """True if `need` free pages are there; else False with `reason` set."""
        size = meminfo_kib("Hugepagesize")
        if size != HUGE_PAGE_KIB:
            self.reason = f"the default hugetlb page size is {size} KiB, not 2 MiB"
            return False
        try:
            with open(self.PATH) as f:
                self.old = int(f.read())
            free = meminfo_kib("HugePages_Free") or 0
            if free < self.need:
                with open(self.PATH, "w") as f:
                    f.write(str(self.old + self.need - free))
        except OSError as e:
            self.reason = f"cannot grow the pool through {self.PATH}: {e}"
            self.restore()
            return False
        free = meminfo_kib("HugePages_Free") or 0
        if free < self.need:
            self.reason = (f"the 2 MiB pool could not be grown to {self.need} free pages (got "
                           f"{free}: host memory too fragmented or short)")
            self.restore()
            return False
        return True

    def restore(self):
        if self.old is None:
            return
        try:
            with open(self.PATH, "w") as f:
                f.write(str(self.old))
        except OSError as e:
            print(f"bench-snapshot: could not set {self.PATH} back to {self.old}: {e}",
                  file=sys.stderr)
        self.old = None


def touch_memory(mib):
    """Seconds to fault in `mib` MiB of fresh anonymous memory (MADV_HUGEPAGE, as Keel's guest
    RAM), one write per 4 KiB; the memory is freed again on return."""
    size = mib * MIB
    m = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        m.madvise(mmap.MADV_HUGEPAGE)
        t0 = time.monotonic()
        for off in range(0, size, 4096):
            m[off] = 1
        return time.monotonic() - t0
    finally:
        m.close()


def remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def wait_for_file(path, pattern, proc, timeout, what):
    """Waits until `pattern` (a regex) matches the contents of `path`; returns the match."""
    deadline = time.monotonic() + timeout
    rx = re.compile(pattern)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited ({proc.returncode}) before {pattern!r} appeared "
                             f"in {os.path.basename(path)}")
        try:
            with open(path, errors="replace") as f:
                m = rx.search(f.read())
            if m:
                return m
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise BenchError(f"{what}: no {pattern!r} within {timeout} s in {os.path.basename(path)}: "
                     f"...{tail(path, 300)}")


def wait_for_path(path, proc, timeout, what):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            raise BenchError(f"{what} exited ({proc.returncode}) before creating {path}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: no {path} within {timeout} s")
        time.sleep(0.02)


def stop(proc, timeout=30):
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def tail(path, n=600):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:].strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# Keel through its API socket (raw HTTP/1.1, one request per connection)


def api(sock, method, path, body=None, timeout=300):
    """(status, parsed JSON body or None)."""
    payload = json.dumps(body).encode() if body is not None else b""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock)
        s.sendall(f"{method} /api/v1/{path} HTTP/1.1\r\nHost: localhost\r\n"
                  f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                  "Connection: close\r\n\r\n".encode() + payload)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    text = rest.decode(errors="replace").strip()
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


def guest_cmdline(a):
    return f"probe.cmd=memwalk:size={a.walk_mib}m,iters=1 {COUNTER}"


def keel_snapshot(a, tmp, snap):
    sock = os.path.join(tmp, "keel.sock")
    out, err = os.path.join(tmp, "keel.out"), os.path.join(tmp, "keel.err")
    cmd = [a.keel, "--api-socket", sock, "--kernel", os.path.join(a.probe_dir, "probe.elf"),
           "--memory", f"size={a.memory_mib}M", "--serial", "tty", "--log-level", "info",
           "--cmdline", guest_cmdline(a)]
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    try:
        wait_for_file(out, r'"cmd":"counter","value"', proc, 180, "keel")
        backing = wait_for_file(err, r"memory \[[^\n]*\): ([^,\n]*)", proc, 5, "keel").group(1)
        huge = anon_huge_mib(proc.pid)
        drop_caches()
        t0 = time.monotonic()
        status, body = api(sock, "PUT", "vm.snapshot",
                           {"destination_url": f"file://{snap}", "mode": "paused"})
        wall = time.monotonic() - t0
        if status != 200:
            raise BenchError(f"vm.snapshot answered {status}: {body}")
        live = keel_live_snapshot(sock, snap + ".live")
        try:
            api(sock, "PUT", "vmm.shutdown")
        except OSError:
            pass  # keel already gone (reported by the live attempt)
        stop(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    r = dict(body)
    r.update(wall_s=wall, backing=backing, anon_huge_mib=huge, live=live)
    return r


def keel_live_snapshot(sock, path):
    """A live-mode snapshot of the same guest, right after the paused one: its answer, or why
    there is none (live mode is being built)."""
    remove(path)
    drop_caches()
    try:
        status, body = api(sock, "PUT", "vm.snapshot",
                           {"destination_url": f"file://{path}", "mode": "live"}, timeout=120)
    except (OSError, ValueError, IndexError) as e:
        return {"ok": False, "error": f"no answer ({e})"}
    finally:
        remove(path)
    if status != 200:
        why = body[-1] if isinstance(body, list) and body else body
        return {"ok": False, "error": f"vm.snapshot mode=live answered {status}: {why}"}
    return dict(body, ok=True)


DIRTY_LINE = re.compile(r'\{"cmd":"dirty",[^\n]*"second":(\d+),"pages":(\d+),'
                        r'"achieved_mbps":([\d.]+)\}')


def dirty_lines(path):
    with open(path, errors="replace") as f:
        return [(int(m.group(1)), int(m.group(2)), float(m.group(3)))
            for m in DIRTY_LINE.finditer(f.read())]


def keel_dirty_snapshot(a, tmp, path, hugepages):
    """A live snapshot of a new guest that dirties DIRTY_MBPS MB/s (after memwalk, so that its
    RAM is mostly non-zero as the other guest's): the answer, the backing, and the rate the
    guest achieved in the per-second lines printed while the request was in flight and in the
    one after (the second that ended the snapshot)."""
    sock = os.path.join(tmp, "dirty.sock")
    out, err = os.path.join(tmp, "dirty.out"), os.path.join(tmp, "dirty.err")
    remove(sock)
    memory = f"size={a.memory_mib}M" + (",hugepages=on" if hugepages else "")
    cmdline = (f"probe.cmd=memwalk:size={a.walk_mib}m,iters=1 "
               f"probe.cmd=dirty:mbps={DIRTY_MBPS},size={a.dirty_mib}m")
    cmd = [a.keel, "--api-socket", sock, "--kernel", os.path.join(a.probe_dir, "probe.elf"),
           "--memory", memory, "--serial", "tty", "--log-level", "info", "--cmdline", cmdline]
    # The buffer written through once (`alloc` zeroed it), plus a second.
    warm = -(-a.dirty_mib * MIB // (DIRTY_MBPS * 1_000_000)) + 1
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    try:
        wait_for_file(out, r'"cmd":"dirty",[^\n]*"second":%d,' % warm, proc, 180, "keel")
        backing = wait_for_file(err, r"memory \[[^\n]*\): ([^,\n]*)", proc, 5, "keel").group(1)
        huge = anon_huge_mib(proc.pid)
        before = len(dirty_lines(out))
        live = keel_live_snapshot(sock, path)
        during = len(dirty_lines(out))
        if live.get("ok"):
            # The line of the second in which the snapshot ended.
            wait_for_file(out, r'"cmd":"dirty",[^\n]*"second":%d,' % (during + 1), proc, 10,
                          "keel")
        lines = dirty_lines(out)
        try:
            api(sock, "PUT", "vmm.shutdown")
        except OSError:
            pass
        stop(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    steady = [x[2] for x in lines[:before]]
    snap = [x[2] for x in lines[before:during + 1]]
    return dict(live, backing=backing, anon_huge_mib=huge, hugepages=hugepages,
                guest_mbps_before=statistics.median(steady) if steady else None,
                guest_mbps_during=min(snap) if snap else None)


def keel_restore(a, tmp, snap, before=None):
    sock = os.path.join(tmp, "restore.sock")
    out, err = os.path.join(tmp, "restore.out"), os.path.join(tmp, "restore.err")
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([a.keel, "--api-socket", sock, "--log-level", "info"],
                                stdout=o, stderr=e, stdin=subprocess.DEVNULL)
    try:
        wait_for_path(sock, proc, 30, "keel")
        drop_caches()
        extra = before() if before else None
        t0 = time.monotonic()
        status, body = api(sock, "PUT", "vm.restore", {"source_url": f"file://{snap}"})
        wall = time.monotonic() - t0
        if status != 204:
            raise BenchError(f"vm.restore answered {status}: {body}")
        m = wait_for_file(err, r"restored (\d+)(?: bytes)? of guest RAM from \S+ in ([\d.]+) s",
                          proc, 10, "keel")
        status, body = api(sock, "PUT", "vm.resume")
        if status != 204:
            raise BenchError(f"vm.resume after restore answered {status}: {body}")
        wait_for_file(out, r'"cmd":"counter","value"', proc, 30, "restored keel")
        api(sock, "PUT", "vmm.shutdown")
        stop(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return {"wall_s": wall, "ram_bytes": int(m.group(1)), "ram_s": float(m.group(2)),
            "before": extra}


# ---------------------------------------------------------------------------------------------
# fio


def fio(a, args, what):
    cmd = [a.fio, "--output-format=json", "--name=snapref"] + args
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise BenchError(f"fio {what} failed: {(p.stderr or p.stdout).strip()[-400:]}")
    job = json.loads(p.stdout[p.stdout.index("{"):])["jobs"][0]
    side = job["write" if what == "write" else "read"]
    if side["io_bytes"] <= 0 or side["runtime"] <= 0:
        raise BenchError(f"fio {what} did nothing: {side}")
    return {"bytes": side["io_bytes"], "s": side["runtime"] / 1000,
            "mib_s": side["io_bytes"] / MIB / (side["runtime"] / 1000)}


def fio_write(a, size):
    path = os.path.join(a.dir, "fio-write.bin")
    remove(path)
    drop_caches()
    try:
        # A new file, as the snapshot's; blocks allocated as it is written (no fallocate), and
        # fio's runtime includes the end_fsync.
        return fio(a, [f"--filename={path}", "--rw=write", "--ioengine=io_uring", "--direct=1",
                       "--bs=1M", "--iodepth=8",
                       f"--size={size // MIB * MIB}", "--fallocate=none", "--end_fsync=1"],
                   "write")
    finally:
        remove(path)


def fio_read(a, path):
    drop_caches()
    return fio(a, [f"--filename={path}", "--rw=read", "--ioengine=io_uring", "--direct=1",
                   "--bs=10M", "--iodepth=1", "--readonly"], "read")


def fio_read_buffered(a, path):
    """What Keel's restore does: pread through the page cache, 16 MiB at a time."""
    drop_caches()
    return fio(a, [f"--filename={path}", "--rw=read", "--ioengine=psync", "--direct=0",
                   "--bs=16M", "--readonly"], "read")


# ---------------------------------------------------------------------------------------------
# QEMU through QMP


class Qmp:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(300)
        self.sock.connect(path)
        self.f = self.sock.makefile("rw")
        self.f.readline()  # greeting
        self.cmd("qmp_capabilities")

    def cmd(self, name, args=None):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise BenchError(f"QMP closed during {name}")
            r = json.loads(line)
            if "event" in r:
                continue
            if "error" in r:
                raise BenchError(f"QMP {name}: {r['error'].get('desc')}")
            return r.get("return")

    def close(self):
        self.sock.close()


QEMU_VARIANTS = {
    "stream": "stream format, max-bandwidth lifted",
    "mapped-ram": "mapped-ram + multifd (2 channels) + direct-io",
    "shipped": "as shipped: stream format, max-bandwidth 128 MiB/s",
}


def qemu_snapshot(a, tmp, variant):
    qmp_path, serial = os.path.join(tmp, "qemu.qmp"), os.path.join(tmp, "qemu.out")
    err = os.path.join(tmp, "qemu.err")
    target = os.path.join(a.dir, "qemu.mig")
    remove(target)
    for p in (qmp_path, serial):
        remove(p)
    cmd = [a.qemu, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
           "-machine", "q35,accel=kvm", "-cpu", "host,-arch-capabilities",
           "-m", str(a.memory_mib), "-kernel", os.path.join(a.probe_dir, "probe.bzimage"),
           "-append", "console=ttyS0 " + guest_cmdline(a), "-serial", f"file:{serial}",
           "-qmp", f"unix:{qmp_path},server=on,wait=off"]
    with open(err, "w") as e:
        proc = subprocess.Popen(cmd, stdout=e, stderr=e, stdin=subprocess.DEVNULL)
    qmp = None
    try:
        wait_for_file(serial, r'"cmd":"counter","value"', proc, 180, "qemu")
        qmp = Qmp(qmp_path)
        if variant != "shipped":
            qmp.cmd("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        if variant == "mapped-ram":
            qmp.cmd("migrate-set-capabilities", {"capabilities": [
                {"capability": "mapped-ram", "state": True},
                {"capability": "multifd", "state": True}]})
            qmp.cmd("migrate-set-parameters", {"direct-io": True, "multifd-channels": 2})
        qmp.cmd("stop")
        drop_caches()
        t0 = time.monotonic()
        qmp.cmd("migrate", {"uri": f"file:{target}"})
        while True:
            info = qmp.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.005)
        t1 = time.monotonic()
        if info["status"] != "completed":
            raise BenchError(f"QEMU migrate ({variant}): {info.get('status')} "
                             f"{info.get('error-desc', '')}")
        fd = os.open(target, os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        t2 = time.monotonic()
        st = os.stat(target)
        qmp.cmd("quit")
        stop(proc)
    except BaseException:
        proc.kill()
        proc.wait()
        if qmp is None and proc.returncode not in (None, 0, -9):
            print(f"qemu: {tail(err)}", file=sys.stderr)
        raise
    finally:
        if qmp is not None:
            qmp.close()
        remove(target)
    ram = info.get("ram", {})
    return {"completed_s": t1 - t0, "wall_s": t2 - t0, "total_time_ms": info.get("total-time"),
            "file_bytes": st.st_size, "allocated_bytes": st.st_blocks * 512,
            "normal_pages": ram.get("normal"), "zero_pages": ram.get("duplicate")}


# ---------------------------------------------------------------------------------------------
# The rounds


def dirty_summary(x):
    if not x.get("ok"):
        return f"failed ({x.get('error')})"
    return (f"{x['took_ms'] / 1000:.2f} s, pause {x['paused_ms']:.1f} ms, faults "
            f"{x['wp_faults']} p50/p99 {x['wp_fault_p50_us']:.1f}/{x['wp_fault_p99_us']:.1f} us")


def measure(a, tmp):
    """Every round; odd rounds run the writers and the first two readers in reverse order."""
    runs = []
    snap = os.path.join(a.dir, "keel.snap")
    variants = [] if a.no_qemu else ["stream", "mapped-ram"]
    size = None
    for r in range(a.rounds):
        run = {"order": "keel first" if r % 2 == 0 else "references first"}
        qemu = variants + (["shipped"] if r == 0 and not a.no_qemu and
                           not a.no_qemu_shipped else [])

        def qemu_runs(names):
            for v in names:
                run[f"qemu_{v}"] = qemu_snapshot(a, tmp, v)

        dirty_variants = [False] + ([True] if a.huge_ok else [])

        def dirty_runs(variants):
            for huge in variants:
                run["dirty_huge" if huge else "dirty"] = keel_dirty_snapshot(
                    a, tmp, snap + ".live", huge)

        remove(snap)
        try:
            if r % 2 == 0:
                run["keel"] = keel_snapshot(a, tmp, snap)
                size = run["keel"]["file_bytes"]
                dirty_runs(dirty_variants)
                run["fio_write"] = fio_write(a, size)
                qemu_runs(qemu)
                run["restore"] = keel_restore(a, tmp, snap)
                run["fio_read"] = fio_read(a, snap)
            else:
                qemu_runs(qemu[::-1])
                run["fio_write"] = fio_write(a, size)  # the size of the last round's file
                dirty_runs(dirty_variants[::-1])
                run["keel"] = keel_snapshot(a, tmp, snap)
                run["fio_read"] = fio_read(a, snap)
                run["restore"] = keel_restore(a, tmp, snap)
            run["file_bytes"] = os.path.getsize(snap)
            run["fio_read_buffered"] = fio_read_buffered(a, snap)
            # This host is a VM whose RAM its own host backs lazily (virtio-balloon free page
            # reporting): memory not touched lately costs seconds per GiB to fault in again.
            # Time that for a plain process, then restore at once into the memory it freed.
            # (After the page cache drop and the disk's settling: the restore follows at once.)
            run["restore_warm"] = keel_restore(a, tmp, snap,
                                               lambda: touch_memory(a.memory_mib + 256))
            run["touch_s"] = run["restore_warm"]["before"]
        finally:
            remove(snap)
        k = run["keel"]
        q = ", ".join(f"qemu {v} {run[f'qemu_{v}']['wall_s']:.2f} s" for v in variants)
        d = ", ".join(f"keel live dirty {name} {dirty_summary(run.get(key))}"
                      for key, name in (("dirty", "default"), ("dirty_huge", "hugetlb"))
                      if key in run)
        print(f"  round {r + 1}/{a.rounds} ({run['order']}): keel snapshot "
              f"{k['took_ms'] / 1000:.2f} s, fio write {run['fio_write']['s']:.2f} s, keel restore "
              f"{run['restore']['wall_s']:.2f} s, fio read {run['fio_read']['s']:.2f} s (buffered "
              f"{run['fio_read_buffered']['s']:.2f} s), memory touch {run['touch_s']:.2f} s, keel "
              f"restore after it {run['restore_warm']['wall_s']:.2f} s, {d}, {q}",
              file=sys.stderr, flush=True)
        runs.append(run)
    return runs


# ---------------------------------------------------------------------------------------------
# Report


def med_span(values, digits=2, unit=""):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m, lo, hi = statistics.median(values), min(values), max(values)
    if len(values) == 1:
        return f"{m:,.{digits}f}{unit} (1 run)"
    return f"{m:,.{digits}f}{unit} ({lo:,.{digits}f}-{hi:,.{digits}f})"


def verdict(values, goal, higher):
    values = [v for v in values if v is not None]
    if not values:
        return ""
    m = statistics.median(values)
    return "met" if (m >= goal if higher else m <= goal) else "MISSED"


def dirty_report(a, runs):
    """The rows of the dirtying guest's live snapshots, per backing: throughput against fio
    write of the same round, pause, write faults (three lists, for three places in the table)."""
    rows, pauses, faults = [], [], []
    what = f"guest dirtying {DIRTY_MBPS} MB/s"
    for key, name in (("dirty", "default backing"), ("dirty_huge", "hugetlb")):
        xs = [(r[key], r) for r in runs if key in r]
        ok = [(x, r) for x, r in xs if x.get("ok")]
        if not ok:
            if key == "dirty_huge" and not a.huge_ok:
                why = f"not measured: {a.huge_reason}"
            else:
                errors = sorted({x.get("error", "?") for x, _ in xs}) or ["no run"]
                why = f"not measured: {'; '.join(errors)}"
            rows.append((f"Snapshot throughput, live mode, {what} ({name})", why, "", "",
                         f">= {GOAL_WRITE_DIRTY}", ""))
            faults.append((f"Guest write-fault p50 / p99 during the live snapshot, {what} "
                           f"({name})", why, "", "", "", ""))
            continue
        backing = ok[0][0]["backing"]
        mib_s = [x["ram_bytes"] / MIB / (x["took_ms"] / 1000) for x, _ in ok]
        ratio = [x["ram_bytes"] / MIB / (x["took_ms"] / 1000) / r["fio_write"]["mib_s"]
                 for x, r in ok]
        before = [x["guest_mbps_before"] for x, _ in ok]
        during = [x["guest_mbps_during"] for x, _ in ok]
        huge_note = ""
        if key == "dirty":
            ah = [x["anon_huge_mib"] for x, _ in ok if x["anon_huge_mib"] is not None]
            huge_note = f", AnonHugePages {med_span(ah, 0, ' MiB')}" if ah else ""
        rows.append((f"Snapshot throughput, live mode, {what} ({backing}; ram_bytes / took_ms)",
                     med_span(mib_s, 0, " MiB/s"), "fio write, same round", med_span(ratio),
                     f">= {GOAL_WRITE_DIRTY}",
                     f"{verdict(ratio, GOAL_WRITE_DIRTY, True)}; {len(ok)} of {len(xs)} "
                     f"answered{huge_note}; the guest's rate before "
                     f"{med_span(before, 1, ' MB/s')}, its slowest second while the request "
                     f"was in flight {med_span(during, 1, ' MB/s')}"))
        huge_backed = "THP" in backing or "huge" in backing
        goal = GOAL_PAUSE_HUGE_MS if huge_backed else GOAL_PAUSE_4K_MS
        lp = [x["paused_ms"] for x, _ in ok]
        pauses.append((f"Guest pause, live mode, {what} ({backing}; paused_ms)",
                     med_span(lp, 1, " ms"), "", "",
                     f"<= {GOAL_PAUSE_HUGE_MS} ms THP/hugetlb, <= {GOAL_PAUSE_4K_MS} ms 4 KiB",
                     f"{verdict(lp, goal, False)} (against {goal} ms)"))
        p50 = [x["wp_fault_p50_us"] for x, _ in ok]
        p99 = [x["wp_fault_p99_us"] for x, _ in ok]
        nf = [x["wp_faults"] for x, _ in ok]
        nt = [x["wp_throttled"] for x, _ in ok]
        faults.append((f"Guest write-fault p50 / p99 during the live snapshot, {what} "
                       f"({backing}; handler time per fault, fault read to guest woken)",
                       f"p50 {med_span(p50, 1, ' us')} / p99 {med_span(p99, 1, ' us')}",
                       "", "", "none set",
                       f"faults {med_span(nf, 0)}, throttled {med_span(nt, 0)}"))
    return rows, pauses, faults


def report(a, runs, facts):
    n = len(runs)
    print(f"bench-snapshot: {facts['versions']}")
    settled = ("sync, drop_caches and a wait for the disk to be idle (0.5 s with no request "
               "in flight or completing)" if DISK_STAT else "sync and drop_caches")
    print(f"  dir {facts['dir']}: {facts['fstype']} on {facts['source']} (mounted at "
          f"{facts['mount']}, {facts['options']}); before each timed part: {settled}")
    print(f"  O_DIRECT {facts['odirect']}: Keel writes guest RAM with it "
          "(8 x 1 MiB on io_uring) and so do the fio runs; Keel's restore reads through the "
          "page cache (one read at a time, up to 16 MiB)")
    k0 = runs[0]["keel"]
    huge = [r["keel"]["anon_huge_mib"] for r in runs if r["keel"]["anon_huge_mib"] is not None]
    print(f"  guest: probe, 1 vCPU, {a.memory_mib} MiB ({k0['backing']}; host THP "
          f"{facts['thp']}, keel's AnonHugePages at snapshot {med_span(huge, 0, ' MiB')}); "
          f"memwalk over {a.walk_mib} MiB, then counter (runs on); paused-mode snapshots")
    huge = ("and on 2 MiB hugetlb pages (pool grown for the run)" if a.huge_ok
            else f"(no hugetlb run: {a.huge_reason})")
    print(f"  dirtying guests: new ones, memwalk as above then dirty:mbps={DIRTY_MBPS},"
          f"size={a.dirty_mib}m, live snapshot after its buffer was written through; on the "
          f"default backing {huge}")
    qemu = "" if a.no_qemu else ", qemu stream, qemu mapped-ram (as shipped: round 1 only)"
    print(f"  {n} rounds: odd ones keel snapshot, keel dirtying guests, fio write{qemu}, keel "
          "restore, fio read; even ones the writers reversed and fio read before keel restore; "
          "then fio's buffered read, the memory touch and the second restore; medians (min-max); "
          "ratios per round")
    print()

    def by_order(values, digits=2):
        """The ratio's median over the rounds where Keel went first, and where fio did."""
        parts = []
        for order, name in (("keel first", "Keel first"), ("references first", "fio first")):
            v = [x for x, r in zip(values, runs) if r["order"] == order and x is not None]
            if v:
                parts.append(f"{name} {med_span(v, digits)}")
        return "; ".join(parts)

    def col(key, field, scale=1.0):
        return [r[key][field] * scale if r.get(key) and r[key].get(field) is not None else None
                for r in runs]

    keel_mib_s = [r["keel"]["ram_bytes"] / MIB / (r["keel"]["took_ms"] / 1000) for r in runs]
    fio_w = col("fio_write", "mib_s")
    w_ratio = [k / f for k, f in zip(keel_mib_s, fio_w)]
    paused = col("keel", "paused_ms")
    fio_read_s = [r["file_bytes"] / MIB / r["fio_read"]["mib_s"] for r in runs]
    restore = col("restore", "wall_s")
    restore_ram = col("restore", "ram_s")
    r_ratio = [x / y for x, y in zip(restore, fio_read_s)]
    rr_ratio = [x / y for x, y in zip(restore_ram, fio_read_s)]

    rows = []
    rows.append(("Snapshot throughput, guest idle (paused mode; ram_bytes / took_ms)",
                 med_span(keel_mib_s, 0, " MiB/s"),
                 f"fio write {med_span(fio_w, 0, ' MiB/s')}", med_span(w_ratio),
                 f">= {GOAL_WRITE_VS_FIO}",
                 f"{verdict(w_ratio, GOAL_WRITE_VS_FIO, True)}; {by_order(w_ratio)}"))
    live = [r["keel"]["live"] for r in runs]
    live_ok = [x for x in live if x.get("ok")]
    if live_ok:
        live_mib_s = [x["ram_bytes"] / MIB / (x["took_ms"] / 1000) for x, r in zip(live, runs)
                      if x.get("ok")]
        live_ratio = [x["ram_bytes"] / MIB / (x["took_ms"] / 1000) / r["fio_write"]["mib_s"]
                      for x, r in zip(live, runs) if x.get("ok")]
        rows.append(("Snapshot throughput, live mode, guest idle (counter only)",
                     med_span(live_mib_s, 0, " MiB/s"), "fio write, same round",
                     med_span(live_ratio), f">= {GOAL_WRITE_VS_FIO}",
                     f"{verdict(live_ratio, GOAL_WRITE_VS_FIO, True)}; {len(live_ok)} of {n} "
                     "live snapshots answered"))
        live_note = ""
    else:
        errors = sorted({x.get("error", "?") for x in live})
        live_note = f"live mode not available here: {'; '.join(errors)}"
    dirty_rows, pause_rows, fault_rows = dirty_report(a, runs)
    rows.extend(dirty_rows)
    rows.append(("Guest pause, paused mode (paused_ms: the whole snapshot)",
                 med_span(paused, 0, " ms"), "", "",
                 f"live mode: <= {GOAL_PAUSE_HUGE_MS} ms THP/hugetlb, <= {GOAL_PAUSE_4K_MS} ms "
                 "4 KiB", "n/a (paused mode)"))
    huge_backed = "THP" in k0["backing"] or "huge" in k0["backing"]
    pause_goal = GOAL_PAUSE_HUGE_MS if huge_backed else GOAL_PAUSE_4K_MS
    if live_ok:
        lp = [x["paused_ms"] for x in live_ok]
        rows.append(("Guest pause, live mode, guest idle (paused_ms)", med_span(lp, 1, " ms"),
                     "", "",
                     f"<= {GOAL_PAUSE_HUGE_MS} ms THP/hugetlb, <= {GOAL_PAUSE_4K_MS} ms 4 KiB",
                     f"{verdict(lp, pause_goal, False)} (against {pause_goal} ms: "
                     f"{k0['backing']})"))
    else:
        rows.append(("Guest pause, live mode", NOT_LIVE, "", "",
                     f"<= {GOAL_PAUSE_HUGE_MS} ms THP/hugetlb, <= {GOAL_PAUSE_4K_MS} ms 4 KiB",
                     live_note))
    rows.extend(pause_rows)
    rows.extend(fault_rows)
    rows.append(("Restore, vm.restore to its 204 (VM Paused)", med_span(restore, 2, " s"),
                 f"file / fio read {med_span(fio_read_s, 2, ' s')} "
                 f"({med_span(col('fio_read', 'mib_s'), 0, ' MiB/s')})", med_span(r_ratio),
                 f"<= {GOAL_RESTORE_VS_FIO}",
                 f"{verdict(r_ratio, GOAL_RESTORE_VS_FIO, False)}; {by_order(r_ratio)}"))
    rows.append(("Restore, guest RAM part (keel's log)", med_span(restore_ram, 2, " s"),
                 "same", med_span(rr_ratio), f"<= {GOAL_RESTORE_VS_FIO}",
                 f"{verdict(rr_ratio, GOAL_RESTORE_VS_FIO, False)}; {by_order(rr_ratio)}"))
    warm = col("restore_warm", "wall_s")
    w2_ratio = [x / y for x, y in zip(warm, fio_read_s)]
    rows.append(("Restore right after a plain process faulted in and freed "
                 f"{a.memory_mib + 256} MiB (context: is first touch of host memory the cost?)",
                 med_span(warm, 2, " s"), "same", med_span(w2_ratio),
                 f"<= {GOAL_RESTORE_VS_FIO}", verdict(w2_ratio, GOAL_RESTORE_VS_FIO, False)))
    rows.append((f"First touch of {a.memory_mib + 256} MiB fresh anonymous THP memory by a "
                 "plain process (this host's cost, no I/O; context)",
                 "", med_span([r["touch_s"] for r in runs], 2, " s"), "", "", ""))
    buf_s = [r["file_bytes"] / MIB / r["fio_read_buffered"]["mib_s"] for r in runs]
    b_ratio = [x / y for x, y in zip(restore, buf_s)]
    rows.append(("Restore against a buffered read as Keel issues it (context, no goal; "
                 "always the file's third read)",
                 med_span(restore, 2, " s"),
                 f"fio psync bs=16M buffered {med_span(buf_s, 2, ' s')} "
                 f"({med_span(col('fio_read_buffered', 'mib_s'), 0, ' MiB/s')})",
                 med_span(b_ratio), "", ""))
    fb = [r["keel"]["file_bytes"] for r in runs]
    rb = [r["keel"]["ram_bytes"] for r in runs]
    zb = [r["keel"]["zero_bytes"] for r in runs]
    over = [f - b for f, b in zip(fb, rb)]
    rows.append(("Snapshot file / non-zero guest RAM (file_bytes / ram_bytes)",
                 f"{statistics.median(fb) / MIB:,.1f} MiB",
                 f"{statistics.median(rb) / MIB:,.1f} MiB non-zero RAM",
                 f"{statistics.median(fb) / statistics.median(rb):.4f}",
                 f"overhead {statistics.median(over) / 1024:,.0f} KiB; "
                 f"{statistics.median(zb) / MIB:,.0f} MiB of zero chunks skipped", ""))
    if not a.no_qemu:
        keel_wall = col("keel", "wall_s")
        for v in ("stream", "mapped-ram", "shipped"):
            q = col(f"qemu_{v}", "wall_s")
            if all(x is None for x in q):
                continue
            ratio = [k / x for k, x in zip(keel_wall, q) if x is not None]
            qt = col(f"qemu_{v}", "total_time_ms", 1 / 1000)
            qf = [x for x in col(f"qemu_{v}", "file_bytes") if x is not None]
            qa = [x for x in col(f"qemu_{v}", "allocated_bytes") if x is not None]
            rows.append((f"Snapshot time, Keel / QEMU {QEMU_VARIANTS[v]} (stop, migrate to "
                         "file:, until query-migrate says completed, then fdatasync)",
                         f"{med_span(keel_wall, 2, ' s')} (vm.snapshot request)",
                         f"QEMU {med_span(q, 2, ' s')}", med_span(ratio), "none (side by side)",
                         f"QEMU's total-time {med_span(qt, 2, ' s')}; its file "
                         f"{statistics.median(qf) / MIB:,.1f} MiB "
                         f"({statistics.median(qa) / MIB:,.1f} MiB allocated)"))
    print("| figure | Keel | reference | ratio | goal | verdict, notes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if a.json:
        print(json.dumps({"facts": facts, "runs": runs}, separators=(",", ":")))


def check(a):
    if os.geteuid() != 0:
        raise BenchError("needs root: the page cache is dropped before each timed part")
    for path, hint in ((a.keel, "make keel"),
                       (os.path.join(a.probe_dir, "probe.elf"), "make probe")):
        if not os.path.exists(path):
            raise BenchError(f"{path} not found ({hint})")
    if shutil.which(a.fio) is None:
        raise BenchError(f"{a.fio} not found: the references are fio runs (apt-get install fio)")
    if not a.no_qemu:
        if shutil.which(a.qemu) is None:
            raise BenchError(f"{a.qemu} not found (install qemu-system-x86, or --no-qemu)")
        if not os.path.exists(os.path.join(a.probe_dir, "probe.bzimage")):
            raise BenchError(f"no probe.bzimage in {a.probe_dir} (make probe)")
    free = shutil.disk_usage(a.dir).free
    need = 3 * a.memory_mib * MIB
    if free < need:
        raise BenchError(f"{a.dir} has {free / MIB:.0f} MiB free, needs {need / MIB:.0f}")


def main():
    a = parse_args()
    created = not os.path.exists(a.dir)
    os.makedirs(a.dir, exist_ok=True)
    pool = HugePool(a.memory_mib)
    try:
        check(a)
        mount, fstype, source = mount_of(a.dir)
        global DISK_STAT
        stat = f"/sys/class/block/{os.path.basename(source)}/stat"
        DISK_STAT = stat if source.startswith("/dev/") and os.path.exists(stat) else None
        commit = first_line(["git", "-C", REPO, "describe", "--always", "--dirty"])
        facts = {
            "versions": f"keel {commit}; {first_line([a.qemu, '--version']) if not a.no_qemu else 'no qemu'}; "
                        f"{first_line([a.fio, '--version'])}; host Linux {os.uname().release}, "
                        f"{os.cpu_count()} CPUs",
            "dir": os.path.relpath(a.dir, REPO) if a.dir.startswith(REPO + "/") else a.dir,
            "mount": mount, "fstype": fstype, "source": source,
            "options": mount_options(mount),
            "odirect": "accepted" if odirect_ok(a.dir) else "REFUSED (buffered)",
            "thp": thp_mode(),
        }
        a.huge_ok, a.huge_reason = False, "--no-hugepages"
        if not a.no_hugepages:
            a.huge_ok = pool.grow()
            a.huge_reason = pool.reason
            if not a.huge_ok:
                print(f"bench-snapshot: no hugetlb round: {a.huge_reason}", file=sys.stderr)
        print(f"bench-snapshot: {a.rounds} rounds in {a.dir} ({fstype}), "
              f"{a.memory_mib} MiB guests", file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="keel-snapbench-") as tmp:
            # One keel binary for the whole run, even if target/release/keel is rebuilt meanwhile.
            a.keel = shutil.copy2(a.keel, os.path.join(tmp, "keel"))
            runs = measure(a, tmp)
        report(a, runs, facts)
    finally:
        pool.restore()
        for name in ("keel.snap", "keel.snap.live", "fio-write.bin", "qemu.mig"):
            remove(os.path.join(a.dir, name))
        if created:
            shutil.rmtree(a.dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        sys.exit(f"bench-snapshot: error: {e}")
    except KeyboardInterrupt:
        sys.exit("bench-snapshot: interrupted")
