//! `--disk path=FILE[,readonly=on][,cache=none|writeback][,queues=N][,queue_size=N]
//! [,iothread=NAME|cpus:LIST|NAME:cpus:LIST][,numa_node=N][,serial=ID][,id=NAME][,poll_us=N]
//! [,engine=auto|io_uring|sync][,iothread_sched=auto|normal|batch]`: one virtio-blk disk per
//! option, repeatable.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

use devices::virtio::block::EngineChoice;

use super::{get, parse_group, strip_brackets, ConfigError, Toggle};
use crate::placement::{CpuSet, IoThreadSched};

/// Most disks one VM can have (PCI bus 0 slots left after the host bridge).
pub const MAX_DISKS: usize = 31;
/// Most request queues per disk.
pub const MAX_QUEUES: u16 = 16;
/// Largest queue size offered.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Longest serial `GET_ID` can return.
const MAX_SERIAL: usize = 20;
/// Longest poll window after an event, in microseconds.
pub const MAX_POLL_US: u16 = 1000;

/// How the backing file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// `O_DIRECT`: bypass the host page cache (what benchmarks want).
    #[default]
    None,
    /// Through the host page cache; a guest FLUSH makes data durable.
    Writeback,
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file or host block device.
    pub path: PathBuf,
    /// Refuse guest writes (and open the file read-only).
    pub readonly: bool,
    /// Host caching.
    pub cache: CacheMode,
    /// Request queues (each served by its own I/O thread unless `iothread` is set); default
    /// ([`DiskConfig::queue_count`]) one per vCPU, up to [`MAX_QUEUES`], as QEMU's virtio-blk.
    pub queues: Option<u16>,
    /// Size of each queue.
    pub queue_size: u16,
    /// Name of the I/O thread serving every queue of this disk; disks naming the same
    /// thread share it. Default: one thread per queue, named after the disk.
    pub iothread: Option<String>,
    /// Host CPUs for this disk's I/O threads (`iothread=cpus:LIST`); default: the CPUs of the
    /// host node behind the disk's guest node (or of the nodes its pinned vCPUs run on), less
    /// the pinned vCPUs' CPUs where that leaves some, narrowed to those taking the backing
    /// device's completion interrupts that no earlier disk uses, where that leaves some
    /// (`placement::irq`).
    pub iothread_cpus: Option<CpuSet>,
    /// Guest NUMA node the disk is near (default 0); its I/O threads follow that node.
    pub numa_node: Option<u32>,
    /// `GET_ID` serial (at most 20 bytes).
    pub serial: Option<String>,
    /// Name used in logs, thread names and counters; default `diskN`.
    pub id: Option<String>,
    /// Lock the image against other users (shared if read-only, exclusive if writable), as
    /// QEMU does; `lock=off` opts out.
    pub lock: bool,
    /// The longest (microseconds) the I/O thread keeps looking at its queues after each event
    /// before it sleeps (the window adapts up to this): requests published meanwhile need no
    /// kick. 0: no polling. Default [`DEFAULT_POLL_US`], as QEMU's iothreads.
    pub poll_us: u16,
    /// Which I/O engine serves the disk: by default the synchronous one for a file in memory
    /// (tmpfs, ramfs), where io_uring would hand every request to a worker thread, io_uring
    /// otherwise.
    pub engine: EngineChoice,
    /// Whether the disk's new I/O threads may preempt a running vCPU when they wake (`normal`)
    /// or wait for a free CPU (`batch`, `SCHED_BATCH`); by default `batch` when the disk's
    /// threads and the vCPUs that may run beside them outnumber the host CPUs they may use.
    pub iothread_sched: IoThreadSched,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            path: PathBuf::new(),
            readonly: false,
            cache: CacheMode::None,
            queues: None,
            queue_size: 256,
            iothread: None,
            iothread_cpus: None,
            numa_node: None,
            serial: None,
            id: None,
            lock: true,
            poll_us: DEFAULT_POLL_US,
            engine: EngineChoice::Auto,
            iothread_sched: IoThreadSched::Auto,
        }
    }
}

/// The default `poll_us`: QEMU's iothreads poll up to 32 us by default too.
pub const DEFAULT_POLL_US: u16 = 32;

/// Why a value is refused; the same words for `--disk` and for a JSON `disks[]` entry.
pub(super) const QUEUES: &str = "expected 1 to 16";
pub(super) const QUEUE_SIZE: &str = "expected a power of two from 4 to 1024";
pub(super) const POLL_US: &str = "expected 0 to 1000 (microseconds)";
const SERIAL: &str = "expected at most 20 printable ASCII characters";
const NAME: &str = "expected 1-15 characters from A-Z a-z 0-9 - _ .";
const ENGINE: &str = "expected auto, io_uring or sync";
const IOTHREAD_SCHED: &str = "expected auto, normal or batch";
const IOTHREAD_CPUS: &str = "expected cpus:LIST such as cpus:2-3 or cpus:[2,4]";

fn invalid(key: &'static str, value: &str, reason: &'static str) -> ConfigError {
    ConfigError::InvalidValue {
        option: "disk",
        key,
        value: value.to_string(),
        reason,
    }
}

/// A name usable in thread names and logs: 1-15 ASCII letters, digits, '-', '_' or '.'.
fn check_name(key: &'static str, value: &str) -> Result<(), ConfigError> {
    let ok = (1..=15).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(key, value, NAME))
    }
}

/// `key=on|off` of a `--disk` group, if given.
fn on_off(pairs: &[(&str, &str)], key: &'static str) -> Result<Option<bool>, ConfigError> {
    let Some(v) = get(pairs, key) else {
        return Ok(None);
    };
    match Toggle::parse("disk", key, v)? {
        Toggle::On => Ok(Some(true)),
        Toggle::Off => Ok(Some(false)),
        Toggle::Auto => Err(invalid(key, v, "expected on or off")),
    }
}

/// A count given as text (`--disk`) or as a JSON number, narrowed to `u16`; its range is
/// checked by [`DiskConfig::check_values`].
pub(crate) fn narrow(
    key: &'static str,
    value: u64,
    reason: &'static str,
) -> Result<u16, ConfigError> {
    u16::try_from(value).map_err(|_| invalid(key, &value.to_string(), reason))
}

fn count(key: &'static str, text: &str, reason: &'static str) -> Result<u16, ConfigError> {
    let n = text
        .parse::<u64>()
        .map_err(|_| invalid(key, text, reason))?;
    narrow(key, n, reason)
}

impl CacheMode {
    /// `none` or `writeback`.
    pub(crate) fn parse(value: &str) -> Result<Self, ConfigError> {
        match value {
            "none" => Ok(CacheMode::None),
            "writeback" => Ok(CacheMode::Writeback),
            _ => Err(invalid("cache", value, "expected none or writeback")),
        }
    }
}

/// An `engine` value: `auto`, `io_uring` or `sync`.
pub(crate) fn parse_engine(value: &str) -> Result<EngineChoice, ConfigError> {
    match value {
        "auto" => Ok(EngineChoice::Auto),
        "io_uring" => Ok(EngineChoice::IoUring),
        "sync" => Ok(EngineChoice::Sync),
        _ => Err(invalid("engine", value, ENGINE)),
    }
}

/// The `engine` value that [`parse_engine`] reads back as `engine`.
pub(crate) fn engine_text(engine: EngineChoice) -> &'static str {
    match engine {
        EngineChoice::Auto => "auto",
        EngineChoice::IoUring => "io_uring",
        EngineChoice::Sync => "sync",
    }
}

/// An `iothread_sched` value: `auto`, `normal` or `batch`.
pub(crate) fn parse_iothread_sched(value: &str) -> Result<IoThreadSched, ConfigError> {
    match value {
        "auto" => Ok(IoThreadSched::Auto),
        "normal" => Ok(IoThreadSched::Normal),
        "batch" => Ok(IoThreadSched::Batch),
        _ => Err(invalid("iothread_sched", value, IOTHREAD_SCHED)),
    }
}

/// The `iothread_sched` value that [`parse_iothread_sched`] reads back.
pub(crate) fn iothread_sched_text(sched: IoThreadSched) -> &'static str {
    match sched {
        IoThreadSched::Auto => "auto",
        IoThreadSched::Normal => "normal",
        IoThreadSched::Batch => "batch",
    }
}

/// An `iothread` value: `NAME`, `cpus:LIST` or `NAME:cpus:LIST`, the list with or without
/// brackets (the command line needs them around a list with commas, JSON does not).
pub(crate) fn parse_iothread(value: &str) -> Result<(Option<String>, Option<CpuSet>), ConfigError> {
    let (name, cpus) = match value.split_once("cpus:") {
        Some((name, cpus)) => (name.strip_suffix(':').unwrap_or(name), Some(cpus)),
        None => (value, None),
    };
    let set = match cpus {
        Some(cpus) => Some(
            CpuSet::parse(strip_brackets(cpus))
                .ok()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| invalid("iothread", value, IOTHREAD_CPUS))?,
        ),
        None => None,
    };
    let name = if !name.is_empty() || cpus.is_none() {
        check_name("iothread", name)?;
        Some(name.to_string())
    } else {
        None
    };
    Ok((name, set))
}

impl DiskConfig {
    const KEYS: &'static [&'static str] = &[
        "path",
        "readonly",
        "cache",
        "queues",
        "num_queues",
        "queue_size",
        "iothread",
        "numa_node",
        "serial",
        "id",
        "lock",
        "poll_us",
        "engine",
        "iothread_sched",
    ];

    /// The disk's request queues in a VM of `vcpus` vCPUs: those given, else one per vCPU up to
    /// [`MAX_QUEUES`]. With a queue per vCPU, Linux's blk-mq submits on the vCPU's own queue
    /// and its interrupt (one MSI-X vector per queue, each routed to its queue's CPUs) comes
    /// back to the submitting vCPU, which need not wake another. Measured in the rig (Debian
    /// 6.1 guest, 2 vCPUs, fio 4K randread QD64, one job, 3 s): 11.3-14.4K IOPS and 0.12-0.18
    /// KVM exits per I/O with two queues, 6.7-8.0K and 0.24-0.27 with one.
    pub fn queue_count(&self, vcpus: u32) -> u16 {
        self.queues.unwrap_or_else(|| {
            u16::try_from(vcpus)
                .unwrap_or(MAX_QUEUES)
                .clamp(1, MAX_QUEUES)
        })
    }

    /// Parses one `--disk` group, then checks its values ([`DiskConfig::check_values`]).
    pub fn parse(input: &str) -> Result<Self, ConfigError> {
        let pairs = parse_group("disk", input, Self::KEYS)?;
        let mut cfg = DiskConfig::default();
        let path = get(&pairs, "path").ok_or(ConfigError::MissingKey {
            option: "disk",
            key: "path",
        })?;
        cfg.path = PathBuf::from(path);
        if let Some(on) = on_off(&pairs, "readonly")? {
            cfg.readonly = on;
        }
        if let Some(on) = on_off(&pairs, "lock")? {
            cfg.lock = on;
        }
        if let Some(v) = get(&pairs, "cache") {
            cfg.cache = CacheMode::parse(v)?;
        }
        if get(&pairs, "queues").is_some() && get(&pairs, "num_queues").is_some() {
            return Err(ConfigError::DuplicateKey {
                option: "disk",
                key: "queues".into(),
            });
        }
        if let Some(v) = get(&pairs, "queues").or_else(|| get(&pairs, "num_queues")) {
            cfg.queues = Some(count("queues", v, QUEUES)?);
        }
        if let Some(v) = get(&pairs, "queue_size") {
            cfg.queue_size = count("queue_size", v, QUEUE_SIZE)?;
        }
        if let Some(v) = get(&pairs, "poll_us") {
            cfg.poll_us = count("poll_us", v, POLL_US)?;
        }
        if let Some(v) = get(&pairs, "engine") {
            cfg.engine = parse_engine(v)?;
        }
        if let Some(v) = get(&pairs, "iothread_sched") {
            cfg.iothread_sched = parse_iothread_sched(v)?;
        }
        if let Some(v) = get(&pairs, "iothread") {
            (cfg.iothread, cfg.iothread_cpus) = parse_iothread(v)?;
        }
        if let Some(v) = get(&pairs, "numa_node") {
            cfg.numa_node = Some(
                v.parse()
                    .map_err(|_| invalid("numa_node", v, "expected a guest node number"))?,
            );
        }
        cfg.serial = get(&pairs, "serial").map(str::to_string);
        cfg.id = get(&pairs, "id").map(str::to_string);
        cfg.check_values()?;
        Ok(cfg)
    }

    /// Checks the values that need no file: a path is given, queue count and size are in
    /// range, the serial fits `GET_ID`, names fit thread names. The `--disk` parser and the
    /// JSON form both end here.
    pub fn check_values(&self) -> Result<(), ConfigError> {
        if self.path.as_os_str().is_empty() {
            return Err(invalid("path", "", "expected a file or block device"));
        }
        if let Some(n) = self.queues.filter(|n| !(1..=MAX_QUEUES).contains(n)) {
            return Err(invalid("queues", &n.to_string(), QUEUES));
        }
        let size = self.queue_size;
        if !((4..=MAX_QUEUE_SIZE).contains(&size) && size.is_power_of_two()) {
            return Err(invalid("queue_size", &size.to_string(), QUEUE_SIZE));
        }
        if self.poll_us > MAX_POLL_US {
            return Err(invalid("poll_us", &self.poll_us.to_string(), POLL_US));
        }
        if let Some(v) = &self.serial {
            if v.len() > MAX_SERIAL || !v.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(invalid("serial", v, SERIAL));
            }
        }
        if let Some(v) = &self.id {
            check_name("id", v)?;
        }
        if let Some(v) = &self.iothread {
            check_name("iothread", v)?;
        }
        Ok(())
    }

    /// The disk's name: its `id`, or `disk{index}`.
    pub fn name(&self, index: usize) -> String {
        self.id.clone().unwrap_or_else(|| format!("disk{index}"))
    }

    /// Checks that the backing file exists and can be used.
    fn check_file(&self) -> Result<(), ConfigError> {
        let bad = |reason: String| ConfigError::BadFile {
            option: "disk",
            path: self.path.display().to_string(),
            reason,
        };
        let meta = std::fs::metadata(&self.path).map_err(|e| bad(e.to_string()))?;
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err(bad("not a regular file or block device".into()));
        }
        if kind.is_file() && meta.len() < 512 {
            return Err(bad(format!(
                "{} bytes is smaller than one 512-byte sector",
                meta.len()
            )));
        }
        Ok(())
    }
}

/// Checks every disk and that no two share a name or a writable backing file.
pub(super) fn validate_all(disks: &[DiskConfig]) -> Result<(), ConfigError> {
    if disks.len() > MAX_DISKS {
        return Err(ConfigError::Disks(format!(
            "{} disks given, at most {MAX_DISKS} fit on the PCI bus",
            disks.len()
        )));
    }
    let mut names = Vec::with_capacity(disks.len());
    let mut files = Vec::with_capacity(disks.len());
    for (i, d) in disks.iter().enumerate() {
        d.check_file()?;
        let name = d.name(i);
        if names.contains(&name) {
            return Err(ConfigError::Disks(format!("two disks are named '{name}'")));
        }
        names.push(name);
        // Two writers on one file would corrupt it: compare the files (device and inode, so
        // hard links and other spellings count), not the paths.
        let file = std::fs::metadata(&d.path).map(|m| (m.dev(), m.ino())).ok();
        if let Some((other, _, _)) = files
            .iter()
            .find(|(_, f, ro)| file.is_some() && *f == file && !(d.readonly && *ro))
        {
            return Err(ConfigError::Disks(format!(
                "{} and {} are the same file, used by two disks, one of them writable",
                PathBuf::from(other).display(),
                d.path.display()
            )));
        }
        files.push((d.path.clone(), file, d.readonly));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(tag: &str, len: u64) -> PathBuf {
        let path = std::env::temp_dir().join(format!("keel-diskcfg-{tag}-{}", std::process::id()));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len).unwrap();
        path
    }

    #[test]
    fn full_group_parses() {
        let d = DiskConfig::parse(
            "path=/x.img,readonly=on,cache=writeback,queues=4,queue_size=128,iothread=io0,serial=SN-1,id=data",
        )
        .unwrap();
        assert_eq!(d.path, PathBuf::from("/x.img"));
        assert!(d.readonly);
        assert_eq!(d.cache, CacheMode::Writeback);
        assert_eq!((d.queues, d.queue_size), (Some(4), 128));
        assert_eq!(d.iothread.as_deref(), Some("io0"));
        assert_eq!(d.serial.as_deref(), Some("SN-1"));
        assert_eq!(d.name(3), "data");
        let d = DiskConfig::parse("path=/y.img").unwrap();
        assert_eq!(
            d,
            DiskConfig {
                path: "/y.img".into(),
                ..DiskConfig::default()
            }
        );
        assert_eq!(d.name(2), "disk2");
        assert_eq!(
            DiskConfig::parse("path=/y,num_queues=2").unwrap().queues,
            Some(2)
        );
        // Without queues=, one per vCPU, up to MAX_QUEUES.
        let d = DiskConfig::parse("path=/y").unwrap();
        assert_eq!(d.queues, None);
        assert_eq!(
            [1, 2, 16, 17, 300].map(|v| d.queue_count(v)),
            [1, 2, 16, 16, 16]
        );
        assert_eq!(
            DiskConfig::parse("path=/y,queues=1")
                .unwrap()
                .queue_count(4),
            1
        );
    }

    #[test]
    fn iothread_cpus_and_numa_node_parse() {
        let d = DiskConfig::parse("path=/y,iothread=cpus:[2,4],numa_node=1").unwrap();
        assert_eq!(d.iothread, None);
        assert_eq!(d.iothread_cpus.unwrap().to_string(), "2,4");
        assert_eq!(d.numa_node, Some(1));
        let d = DiskConfig::parse("path=/y,iothread=io0:cpus:1-3").unwrap();
        assert_eq!(d.iothread.as_deref(), Some("io0"));
        assert_eq!(d.iothread_cpus.unwrap().to_string(), "1-3");
        for bad in [
            "path=/y,iothread=cpus:",
            "path=/y,iothread=cpus:x",
            "path=/y,iothread=a/b:cpus:1",
            "path=/y,numa_node=x",
        ] {
            let err = DiskConfig::parse(bad).unwrap_err().to_string();
            assert!(err.starts_with("--disk: "), "{bad}: {err}");
        }
    }

    #[test]
    fn polling_is_on_unless_turned_off() {
        assert_eq!(DiskConfig::parse("path=/a").unwrap().poll_us, 32);
        assert_eq!(DiskConfig::parse("path=/a,poll_us=0").unwrap().poll_us, 0);
        assert_eq!(DiskConfig::parse("path=/a,poll_us=50").unwrap().poll_us, 50);
    }

    #[test]
    fn the_engine_is_chosen_automatically_unless_named() {
        let engine = |text: &str| DiskConfig::parse(text).unwrap().engine;
        assert_eq!(engine("path=/a"), EngineChoice::Auto);
        assert_eq!(engine("path=/a,engine=auto"), EngineChoice::Auto);
        assert_eq!(engine("path=/a,engine=io_uring"), EngineChoice::IoUring);
        assert_eq!(engine("path=/a,engine=sync"), EngineChoice::Sync);
    }

    #[test]
    fn the_iothread_policy_is_chosen_automatically_unless_named() {
        let sched = |text: &str| DiskConfig::parse(text).unwrap().iothread_sched;
        assert_eq!(sched("path=/a"), IoThreadSched::Auto);
        for (text, want) in [
            ("auto", IoThreadSched::Auto),
            ("normal", IoThreadSched::Normal),
            ("batch", IoThreadSched::Batch),
        ] {
            assert_eq!(sched(&format!("path=/a,iothread_sched={text}")), want);
            assert_eq!(iothread_sched_text(want), text);
        }
    }

    #[test]
    fn images_are_locked_unless_lock_off() {
        assert!(DiskConfig::parse("path=/a").unwrap().lock);
        assert!(!DiskConfig::parse("path=/a,lock=off").unwrap().lock);
        assert!(DiskConfig::parse("path=/a,lock=on").unwrap().lock);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (input, key) in [
            ("readonly=on", "path"),
            ("path=", "path"),
            ("path=/a,readonly=maybe", "readonly"),
            ("path=/a,lock=auto", "lock"),
            ("path=/a,cache=unsafe", "cache"),
            ("path=/a,queues=0", "queues"),
            ("path=/a,queues=17", "queues"),
            ("path=/a,queue_size=100", "queue_size"),
            ("path=/a,queue_size=2048", "queue_size"),
            ("path=/a,poll_us=1001", "poll_us"),
            ("path=/a,poll_us=-1", "poll_us"),
            ("path=/a,engine=aio", "engine"),
            ("path=/a,engine=", "engine"),
            ("path=/a,iothread_sched=fifo", "iothread_sched"),
            ("path=/a,iothread_sched=", "iothread_sched"),
            ("path=/a,serial=this-serial-is-too-long", "serial"),
            ("path=/a,serial=has space", "serial"),
            ("path=/a,iothread=a/b", "iothread"),
            ("path=/a,id=", "id"),
            ("path=/a,queues=2,num_queues=2", "queues"),
            ("path=/a,bogus=1", "bogus"),
        ] {
            let err = DiskConfig::parse(input).unwrap_err().to_string();
            assert!(err.starts_with("--disk: "), "{input}: {err}");
            assert!(err.contains(key), "{input}: {err}");
        }
    }

    #[test]
    fn set_of_disks_is_checked() {
        let a = image("a", 1 << 20);
        let b = image("b", 1 << 20);
        let tiny = image("tiny", 100);
        let disk = |p: &PathBuf, ro: bool| DiskConfig {
            path: p.clone(),
            readonly: ro,
            ..DiskConfig::default()
        };
        assert!(validate_all(&[disk(&a, false), disk(&b, false)]).is_ok());
        assert!(validate_all(&[disk(&a, true), disk(&a, true)]).is_ok());
        let err = validate_all(&[disk(&a, false), disk(&a, true)]).unwrap_err();
        assert!(err.to_string().contains("two disks"), "{err}");
        // A hard link is the same file under another name.
        let link = a.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::fs::hard_link(&a, &link).unwrap();
        let err = validate_all(&[disk(&a, false), disk(&link, false)]).unwrap_err();
        assert!(err.to_string().contains("same file"), "{err}");
        assert!(validate_all(&[disk(&a, true), disk(&link, true)]).is_ok());
        let _ = std::fs::remove_file(&link);
        let named = DiskConfig {
            id: Some("disk0".into()),
            ..disk(&b, false)
        };
        let err = validate_all(&[disk(&a, false), named]).unwrap_err();
        assert!(err.to_string().contains("named 'disk0'"), "{err}");
        let err = validate_all(&[disk(&tiny, false)]).unwrap_err();
        assert!(err.to_string().contains("smaller than one"), "{err}");
        let err = validate_all(&[disk(&PathBuf::from("/nonexistent/x"), false)]).unwrap_err();
        assert!(
            err.to_string().starts_with("--disk: /nonexistent/x: "),
            "{err}"
        );
        let err = validate_all(&[disk(&std::env::temp_dir(), false)]).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        let many = vec![disk(&a, true); MAX_DISKS + 1];
        assert!(validate_all(&many).is_err());
        for p in [a, b, tiny] {
            let _ = std::fs::remove_file(p);
        }
    }
}
