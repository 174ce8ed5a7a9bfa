//! What keel's API boot cycles leave behind: a boot that cannot start every vCPU thread (a
//! pids cgroup limit) leaves none running, create/boot/delete cycles release threads,
//! descriptors and the disk image's lock, and boots with a terminal console share one stdin
//! reader. The client is `common::api`'s.

mod common;

use std::path::{Path, PathBuf};

use common::api::*;
use common::{thread_status, wait_for_file, wait_until, BOOT_LINE, HANG_GUARD};
use serde_json::Value;

/// A pids cgroup (v1 `pids` hierarchy or v2) holding one process, removed on drop; `None`
/// where this host has no writable pids controller.
struct PidsCgroup(PathBuf);

impl PidsCgroup {
    fn holding(pid: u32) -> Option<PidsCgroup> {
        let root = ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
            .into_iter()
            .map(PathBuf::from)
            .find(|r| {
                r.join("cgroup.procs").exists()
                    && (r.ends_with("pids") || {
                        std::fs::read_to_string(r.join("cgroup.controllers"))
                            .is_ok_and(|c| c.contains("pids"))
                    })
            })?;
        let dir = root.join(format!("keel-test-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let group = PidsCgroup(dir);
        std::fs::write(group.0.join("cgroup.procs"), pid.to_string()).ok()?;
        group.0.join("pids.max").exists().then_some(group)
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.0.join(file))
            .unwrap()
            .trim()
            .to_string()
    }

    fn set_max(&self, max: &str) {
        std::fs::write(self.0.join("pids.max"), max).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        // Empty once keel has exited; rmdir fails harmlessly if not.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Names of `pid`'s threads whose name starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> Vec<String> {
    thread_status(&format!("/proc/{pid}"), "Name")
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| name.starts_with(prefix))
        .collect()
}

/// Names of `pid`'s threads that run a vCPU.
fn vcpu_threads(pid: u32) -> Vec<String> {
    threads_named(pid, "keel-vcpu")
}

/// Waits until none of keel's API connection threads is left and every other thread keel
/// started has named itself. A new thread bears its creator's name (the serve loop's, the
/// main thread's) until it first runs and sets its own, so a thread started for an earlier
/// connection may still look like the main thread, and a vCPU thread started before vm.boot's
/// answer may not show its name yet. Each thread leaves `/proc` as the kernel reaps it (and
/// its pids charge goes with it); a thread whose name can no longer be read is ending and
/// still counts. A hang guard, not a margin: every connection thread ends once its answer is
/// out, and every thread names itself as it starts.
fn wait_for_threads_settled(pid: u32, what: &str) {
    let main = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    let main = main.trim();
    wait_until(what, HANG_GUARD, || {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let busy = tasks.map(|t| t.unwrap()).any(|t| {
            if t.file_name().to_str() == Some(&pid.to_string()) {
                return false;
            }
            std::fs::read_to_string(t.path().join("comm"))
                .map_or(true, |n| n.trim() == main || n.starts_with("keel-api-conn"))
        });
        (!busy).then_some(())
    });
}

#[test]
fn a_boot_that_cannot_start_every_vcpu_leaves_none_running() {
    let keel = Keel::start("partial-boot", &[]);
    let pid = keel.process.pid();
    let Some(group) = PidsCgroup::holding(pid) else {
        eprintln!("SKIPPED: no writable pids cgroup here to limit keel's threads");
        return assert_exits_cleanly(keel);
    };
    let (body, serial) = probe_body("partial-boot", &common::busy_until_stopped());
    let mut create: Value = serde_json::from_str(&body).unwrap();
    create["cpus"]["boot_vcpus"] = 4.into();
    assert_eq!(
        keel.call("PUT", "vm.create", Some(&create.to_string()))
            .status,
        204
    );
    // Room for two more threads: the connection's that reads vm.boot, then vCPU 0; vCPU 1
    // cannot start. Not more: a running vCPU may make the host start threads of its own in
    // keel's process, charged to its pids group, while the serve loop still starts vCPUs
    // (KVM's kvm-nx-lpage-recovery, at a VM's first KVM_RUN), so which vCPU would find the
    // group full past the first would depend on the scheduler. With the group full once vCPU 0
    // is started, such a thread cannot start before the error either. The threads that
    // answered earlier requests must be gone first, or their places would free up later.
    wait_for_threads_settled(pid, "vm.create's connection thread gone");
    let now: u32 = group.read("pids.current").parse().unwrap();
    group.set_max(&(now + 2).to_string());
    let answer = keel.put("vm.boot");
    assert_eq!(answer.status, 500, "{answer:?}");
    let message = answer.error(500);
    assert!(message.contains("keel-vcpu1"), "{message}");
    // The started vCPU was stopped and joined before the answer; its task leaves /proc as
    // the kernel reaps it (a hang guard, not a margin: unfixed, it runs forever).
    wait_until("no vCPU thread left", HANG_GUARD, || {
        vcpu_threads(pid).is_empty().then_some(())
    });
    assert_eq!(keel.state(), "Shutdown");

    // With room again, the same VM boots (rebuilt from its config) and runs.
    group.set_max("max");
    assert_eq!(keel.put("vm.boot").status, 204);
    wait_for_file(&serial, BOOT_LINE, HANG_GUARD);
    // vCPU 0 prints the boot line; the others may not have run (and named themselves) yet.
    wait_for_threads_settled(pid, "every vCPU thread named");
    assert_eq!(vcpu_threads(pid).len(), 4);
    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
}

/// Number of entries in `/proc/PID/DIR` (open descriptors, threads).
fn proc_entries(pid: u32, dir: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{dir}"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Whether some open file description holds a lock on `path` that an exclusive one would
/// conflict with (F_OFD_GETLK, which takes nothing).
fn image_locked(path: &Path) -> bool {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: an all-zero flock is valid: whole file (start 0, len 0), pid 0 as OFD locks need.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_GETLK on a descriptor `file` owns, with a valid flock it may rewrite.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::F_OFD_GETLK,
            &mut lock,
        )
    };
    assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    lock.l_type != libc::F_UNLCK as libc::c_short
}

#[test]
fn create_boot_delete_cycles_release_threads_descriptors_and_the_image_lock() {
    const CYCLES: usize = 5;
    const BLK_LINE: &str = "{\"cmd\":\"blk\"";
    let keel = Keel::start("cycles", &[]);
    let pid = keel.process.pid();
    let image = temp_path("cycles.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(4 << 20))
        .unwrap();
    let cmdline = format!(
        "probe.cmd=boot probe.cmd=blk:disk=0,rw=randwrite,bs=4k,iodepth=8,ios=200 {}",
        common::RUNS_UNTIL_STOPPED
    );
    let (body, serial) = probe_body("cycles", &cmdline);
    let mut create: Value = serde_json::from_str(&body).unwrap();
    create["cpus"]["boot_vcpus"] = 2.into();
    create["disks"] = serde_json::json!([{"path": image}]);
    let create = create.to_string();
    // Each API connection has a thread (and its socket) until its answer is out: counted
    // once none is left, not even one that has yet to run (the one that read the connection
    // `Keel::start` made to see keel listen may not have run yet even though vmm.ping's has).
    wait_for_threads_settled(pid, "earlier connection threads gone");
    let baseline = (proc_entries(pid, "task"), proc_entries(pid, "fd"));
    for cycle in 1..=CYCLES {
        assert_eq!(keel.call("PUT", "vm.create", Some(&create)).status, 204);
        assert!(
            image_locked(&image),
            "cycle {cycle}: the created VM locks its image"
        );
        assert_eq!(keel.put("vm.boot").status, 204);
        // The guest wrote its disk (the I/O thread ran) once its blk line is out.
        wait_until("the guest's blk line", HANG_GUARD, || {
            let text = std::fs::read(&serial).unwrap_or_default();
            (common::lines_with(&text, BLK_LINE) == cycle).then_some(())
        });
        assert_eq!(keel.put("vm.shutdown").status, 204);
        assert_eq!(keel.put("vm.delete").status, 204);
        assert!(
            !image_locked(&image),
            "cycle {cycle}: delete releases the lock"
        );
        // Threads leave /proc as the kernel reaps them (a hang guard, not a margin).
        let left = wait_until("threads and descriptors back to before", HANG_GUARD, || {
            let now = (proc_entries(pid, "task"), proc_entries(pid, "fd"));
            (now == baseline).then_some(now)
        });
        assert_eq!(left, baseline, "cycle {cycle}");
    }
    let text = std::fs::read_to_string(&serial).unwrap();
    assert!(!text.contains("\"error\""), "{text}");
    assert_exits_cleanly(keel);
    let _ = std::fs::remove_file(serial);
    let _ = std::fs::remove_file(image);
}

/// Keel's stdin has one reader however many VMs with a terminal console boot in turn: each
/// boot hands the input over to the new VM's COM1 instead of starting another reader.
#[test]
fn boots_with_a_terminal_console_share_one_stdin_reader() {
    let socket = temp_path("stdin.sock");
    // keel's stdin a pipe that stays open (the child keeps its end), as a terminal would.
    let child = std::process::Command::new(common::keel_bin())
        .args(["--api-socket", socket.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keel");
    let keel = Keel::serving(socket, child);
    let pid = keel.process.pid();
    let (body, _) = probe_body("stdin", &common::busy_until_stopped());
    let mut create: Value = serde_json::from_str(&body).unwrap();
    create["serial"] = serde_json::json!({"mode": "Tty"});
    let create = create.to_string();
    for _ in 0..3 {
        assert_eq!(keel.call("PUT", "vm.create", Some(&create)).status, 204);
        assert_eq!(keel.put("vm.boot").status, 204);
        assert_eq!(keel.put("vm.shutdown").status, 204);
        assert_eq!(keel.put("vm.delete").status, 204);
    }
    wait_for_threads_settled(pid, "every thread named");
    assert_eq!(threads_named(pid, "keel-stdin").len(), 1);
    assert_exits_cleanly(keel);
}
