//! Running the same guest and job under `qemu-system-x86_64`, configured the way a storage
//! benchmark of QEMU is usually set up: one iothread per virtio-blk disk, `aio=io_uring`,
//! `cache=none`, raw images; the config disk read-only after the data disks, as in Keel.
//! KVM's counters over fio's run come from QMP `query-stats` at the same console markers
//! Keel's are taken at.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vmm::stats::threads::{is_io_uring_worker, task_times};

use super::console_tail::ConsoleTail;
use super::counter_window::WindowTracker;
use super::keel_run::{GuestEnd, GuestRun};
use super::qmp_stats::Qmp;

/// How often the console is read while QEMU runs.
const POLL: Duration = Duration::from_millis(50);
/// Longest wait for QEMU's QMP socket to accept (a hang guard, not a timing margin).
const QMP_CONNECT_LIMIT: Duration = Duration::from_secs(300);

/// QEMU's accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QemuAccel {
    /// KVM (`-cpu host,-arch-capabilities`): the comparison that means something.
    Kvm,
    /// TCG (`-cpu max`): binary translation, for hosts where KVM cannot run the guest.
    Tcg,
}

impl QemuAccel {
    /// Parses `kvm` or `tcg`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(QemuAccel::Kvm),
            "tcg" => Ok(QemuAccel::Tcg),
            _ => Err(format!("unknown accelerator '{s}': expected kvm or tcg")),
        }
    }

    /// The name QEMU uses.
    pub fn name(self) -> &'static str {
        match self {
            QemuAccel::Kvm => "kvm",
            QemuAccel::Tcg => "tcg",
        }
    }

    /// The `-cpu` model. With KVM, the host's CPU without IA32_ARCH_CAPABILITIES (MSR 0x10a):
    /// QEMU offers that MSR whenever KVM lists it as a feature MSR, and aborts at vCPU setup
    /// ("failed to set MSR 0x10a", a `kvm_buf_set_msrs` assertion) on hosts whose KVM cannot
    /// set it for a vCPU (PVM on AMD hosts). Where KVM does offer it, QEMU's guest loses the
    /// host's vulnerability report and may enable more mitigations: some CPU time per kernel
    /// entry, not extra exits, which is what the comparison counts.
    pub fn cpu_model(self) -> &'static str {
        match self {
            QemuAccel::Kvm => "host,-arch-capabilities",
            QemuAccel::Tcg => "max",
        }
    }
}

/// What QEMU runs.
#[derive(Debug, Clone)]
pub struct QemuGuest {
    /// The QEMU binary.
    pub binary: PathBuf,
    /// Accelerator.
    pub accel: QemuAccel,
    /// vCPUs.
    pub vcpus: u32,
    /// RAM in MiB.
    pub memory_mib: u64,
    /// Kernel (bzImage or PVH ELF).
    pub kernel: PathBuf,
    /// Initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Data disks, then the config disk.
    pub data_disks: Vec<PathBuf>,
    /// Virtqueues of each data disk.
    pub queues: u16,
    /// The config disk.
    pub config_disk: PathBuf,
}

/// Starting QEMU failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuRunError {
    /// The binary would not start.
    #[error("cannot start {binary}")]
    Spawn {
        /// The binary.
        binary: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A path QEMU's option syntax cannot carry.
    #[error("path {0} contains a comma, which QEMU's -drive syntax cannot take")]
    Comma(String),
}

fn drive_path(path: &Path) -> Result<String, QemuRunError> {
    let s = path.display().to_string();
    if s.contains(',') {
        return Err(QemuRunError::Comma(s));
    }
    Ok(s)
}

impl QemuGuest {
    /// QEMU's arguments, console to `console`, QMP on the socket `qmp`.
    pub fn args(&self, console: &Path, qmp: &Path) -> Result<Vec<String>, QemuRunError> {
        let mut a: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-name",
            "keel-bench,debug-threads=on",
            "-machine",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(format!("pc,accel={}", self.accel.name()));
        a.push("-cpu".into());
        a.push(self.accel.cpu_model().into());
        a.extend([
            "-smp".into(),
            self.vcpus.to_string(),
            "-m".into(),
            format!("{}M", self.memory_mib),
            "-serial".into(),
            format!("file:{}", drive_path(console)?),
            // Not `-qmp unix:PATH,...`, whose first field is parsed as options when the path
            // holds an `=`.
            "-chardev".into(),
            format!("socket,id=qmp,path={},server=on,wait=off", drive_path(qmp)?),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
        ]);
        if let Some(initramfs) = &self.initramfs {
            a.push("-initrd".into());
            a.push(initramfs.display().to_string());
        }
        for (i, disk) in self.data_disks.iter().enumerate() {
            a.push("-object".into());
            a.push(format!("iothread,id=iot{i}"));
            a.push("-drive".into());
            a.push(format!(
                "file={},if=none,id=d{i},format=raw,cache=none,aio=io_uring",
                drive_path(disk)?
            ));
            a.push("-device".into());
            a.push(format!(
                "virtio-blk-pci,drive=d{i},iothread=iot{i},num-queues={}",
                self.queues
            ));
        }
        a.push("-drive".into());
        a.push(format!(
            "file={},if=none,id=cfg,format=raw,readonly=on,cache=none,aio=io_uring",
            drive_path(&self.config_disk)?
        ));
        a.push("-device".into());
        a.push("virtio-blk-pci,drive=cfg".into());
        Ok(a)
    }

    /// Runs QEMU until it exits (at most `timeout`, or until `interrupt`).
    pub fn run(
        &self,
        console_path: &Path,
        echo: bool,
        timeout: Duration,
        interrupt: &AtomicBool,
    ) -> Result<GuestRun, QemuRunError> {
        let _ = std::fs::remove_file(console_path);
        let qmp_path = console_path.with_extension("qmp");
        let _ = std::fs::remove_file(&qmp_path);
        let args = self.args(console_path, &qmp_path)?;
        log::info!("running {} {}", self.binary.display(), args.join(" "));
        let spawn_error = |source| QemuRunError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        };
        // QEMU's stderr goes to a file: a pipe read only at the end could fill and block it.
        let stderr_path = console_path.with_extension("qemu-stderr");
        let stderr = std::fs::File::create(&stderr_path).map_err(spawn_error)?;
        let mut child: Child = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(spawn_error)?;
        let started = Instant::now();
        let mut tail = ConsoleTail::new(console_path, echo);
        // QEMU creates the socket early in its start-up, but a start-up under emulation (the
        // nested rig) takes seconds: wait as long as QEMU may take to start at all.
        let alive = || matches!(child.try_wait(), Ok(None));
        let mut qmp = match Qmp::connect(&qmp_path, started + QMP_CONNECT_LIMIT, alive) {
            Ok(q) => Some(q),
            Err(e) => {
                log::warn!("no KVM counters from qemu: {e}");
                None
            }
        };
        let mut window = WindowTracker::default();
        let end = loop {
            std::thread::sleep(POLL);
            for marker in tail.poll() {
                let stats = qmp.as_mut().map(Qmp::vcpu_stats);
                if let Some(Err(e)) = &stats {
                    log::warn!("no KVM counters from qemu: {e}");
                    qmp = None;
                }
                let mut counters = stats.and_then(Result::ok).unwrap_or_default();
                counters.extend(thread_cpu(child.id()));
                window.on_marker(marker, Some(counters));
            }
            match child.try_wait() {
                Ok(Some(status)) if status.success() => break GuestEnd::PowerOff,
                Ok(Some(status)) => {
                    let err = std::fs::read(&stderr_path).unwrap_or_default();
                    let err = String::from_utf8_lossy(&err[..err.len().min(4096)]);
                    break GuestEnd::Failed(format!("qemu exited with {status}: {}", err.trim()));
                }
                Ok(None) => {}
                Err(e) => break GuestEnd::Failed(format!("cannot wait for qemu: {e}")),
            }
            let stop = if interrupt.load(Ordering::Acquire) {
                Some(GuestEnd::Interrupted)
            } else if let Some(msg) = internal_error(&stderr_path) {
                // QEMU pauses the guest and keeps running: nothing more will happen.
                Some(GuestEnd::Failed(msg))
            } else if started.elapsed() > timeout {
                Some(GuestEnd::TimedOut)
            } else {
                None
            };
            if let Some(end) = stop {
                let _ = child.kill();
                let _ = child.wait();
                break end;
            }
        };
        Ok(GuestRun::finish(tail, end, window.into_window(), started))
    }
}

/// CPU time of QEMU's vCPU threads (`CPU n/KVM`) and I/O path (`IO <iothread>` threads and
/// io_uring workers), as the flattened counters `cpu_ns.vcpus` and `cpu_ns.iothreads`; thread
/// names need `-name ...,debug-threads=on`.
fn thread_cpu(pid: u32) -> [(String, u64); 2] {
    let (mut vcpus, mut io) = (0, 0);
    for t in task_times(Path::new(&format!("/proc/{pid}"))) {
        if t.name.starts_with("CPU ") {
            vcpus += t.on_cpu_ns;
        } else if t.name.starts_with("IO ") || is_io_uring_worker(&t.name) {
            io += t.on_cpu_ns;
        }
    }
    [
        ("cpu_ns.vcpus".to_string(), vcpus),
        ("cpu_ns.iothreads".to_string(), io),
    ]
}

/// The gist of a "KVM internal error" QEMU reported on stderr (it then pauses the guest and
/// waits), once its register dump is complete: the error, RIP and the code bytes.
fn internal_error(stderr_path: &Path) -> Option<String> {
    let text = std::fs::read(stderr_path).ok()?;
    let text = String::from_utf8_lossy(&text[..text.len().min(64 * 1024)]);
    if !text.contains("KVM internal error") || !text.contains("Code=") {
        return None;
    }
    let wanted = |l: &&str| {
        l.starts_with("KVM internal error")
            || l.starts_with("emulation failure")
            || l.starts_with("RIP=")
            || l.starts_with("Code=")
    };
    let gist: Vec<&str> = text.lines().map(str::trim).filter(wanted).collect();
    Some(format!("qemu: {}", gist.join("; ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> QemuGuest {
        QemuGuest {
            binary: "qemu-system-x86_64".into(),
            accel: QemuAccel::Kvm,
            vcpus: 2,
            memory_mib: 1024,
            kernel: "/k/vmlinuz".into(),
            initramfs: Some("/k/initramfs.cpio".into()),
            cmdline: "console=ttyS0 quiet".into(),
            data_disks: vec!["/d/a.img".into(), "/d/b.img".into()],
            queues: 1,
            config_disk: "/d/cfg.img".into(),
        }
    }

    #[test]
    fn command_line_has_iothreads_io_uring_and_cache_none() {
        let args = guest()
            .args(Path::new("/d/console"), Path::new("/d/qmp"))
            .unwrap()
            .join(" ");
        for want in [
            "-machine pc,accel=kvm -cpu host,-arch-capabilities -smp 2 -m 1024M",
            "-serial file:/d/console -chardev socket,id=qmp,path=/d/qmp,server=on,wait=off \
             -mon chardev=qmp,mode=control",
            "-kernel /k/vmlinuz -append console=ttyS0 quiet -initrd /k/initramfs.cpio",
            "-object iothread,id=iot0 -drive file=/d/a.img,if=none,id=d0,format=raw,\
             cache=none,aio=io_uring -device virtio-blk-pci,drive=d0,iothread=iot0",
            "-object iothread,id=iot1",
            "file=/d/cfg.img,if=none,id=cfg,format=raw,readonly=on",
        ] {
            assert!(args.contains(want), "{want} not in {args}");
        }
        // The config disk comes after the data disks, as /dev/vdc.
        assert!(args.find("id=cfg").unwrap() > args.find("id=d1").unwrap());
    }

    #[test]
    fn commas_in_paths_are_refused() {
        let mut g = guest();
        g.data_disks[0] = "/d/a,b.img".into();
        assert!(matches!(
            g.args(Path::new("/c"), Path::new("/q")),
            Err(QemuRunError::Comma(_))
        ));
        assert_eq!(QemuAccel::parse("tcg"), Ok(QemuAccel::Tcg));
        assert!(QemuAccel::parse("hvf").is_err());
    }

    #[test]
    fn internal_errors_are_summarized_once_complete() {
        let path = std::env::temp_dir().join(format!("keel-qemu-stderr-{}", std::process::id()));
        std::fs::write(
            &path,
            "KVM internal error. Suberror: 1\nextra data[0]: 0x1\n",
        )
        .unwrap();
        assert_eq!(internal_error(&path), None, "register dump not there yet");
        std::fs::write(
            &path,
            "KVM internal error. Suberror: 1\nextra data[0]: 0x1\nemulation failure\n\
             RAX=0 RBX=0\nRIP=ffffffffb1117850 RFL=00000006 CPL=0\nCode=48 89 f0 <f0> 48 0f c7\n",
        )
        .unwrap();
        assert_eq!(
            internal_error(&path).unwrap(),
            "qemu: KVM internal error. Suberror: 1; emulation failure; \
             RIP=ffffffffb1117850 RFL=00000006 CPL=0; Code=48 89 f0 <f0> 48 0f c7"
        );
        std::fs::write(&path, "qemu-system-x86_64: warning: x\n").unwrap();
        assert_eq!(internal_error(&path), None);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_binary_is_a_spawn_error() {
        let mut g = guest();
        g.binary = "/nonexistent/qemu".into();
        let stop = AtomicBool::new(false);
        let path = std::env::temp_dir().join("keel-qemu-missing-console");
        assert!(matches!(
            g.run(&path, false, Duration::from_secs(1), &stop),
            Err(QemuRunError::Spawn { .. })
        ));
    }
}
