//! The PC platform devices every Keel VM has, wired onto the port-I/O bus: COM1 (irqfd on
//! IRQ 4, its output through a [`console`] buffer that never blocks the vCPU), the i8042
//! (reset line), CMOS/RTC, the POST port and the ACPI PM block (power off, reset, PM timer).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arch::layout::ports;
use devices::bus::BusDevice;
use devices::legacy::{AcpiPm, Cmos, DebugCon, PostCode, Serial, I8042};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::console::{self, ConsoleDrain};
use super::Buses;
use crate::config::SerialConfig;

/// How long the end of a VM waits for the console reader to take the guest's last output.
const CONSOLE_FINISH_LIMIT: Duration = Duration::from_secs(5);

/// Errors wiring the legacy devices.
#[derive(Debug, thiserror::Error)]
pub enum LegacyDeviceError {
    /// The serial output file could not be opened.
    #[error("--serial: cannot open {path} (a FIFO needs a reader already)")]
    SerialFile {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The console output thread could not be started.
    #[error("cannot start the console output thread")]
    ConsoleThread(#[source] std::io::Error),
    /// An eventfd could not be created.
    #[error("failed to create an eventfd for IRQ {irq}")]
    EventFd {
        /// IRQ line.
        irq: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM_IRQFD failed.
    #[error("failed to register an irqfd for IRQ {irq}")]
    Irqfd {
        /// IRQ line.
        irq: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A bus insertion failed.
    #[error("failed to place {name} on the port-I/O bus")]
    Bus {
        /// Device name.
        name: &'static str,
        /// Cause.
        #[source]
        source: devices::bus::BusError,
    },
    /// The VM holds as many devices as it can.
    #[error(transparent)]
    TooManyDevices(#[from] devices::device_id::TooManyDevices),
}

/// Handles to legacy devices the VMM keeps talking to after boot.
pub struct LegacyDevices {
    /// COM1, for feeding input.
    pub serial: Arc<Mutex<Serial>>,
    /// Whether input should come from Keel's stdin.
    pub serial_from_stdin: bool,
    /// The i8042, for snapshots.
    pub i8042: Arc<Mutex<I8042>>,
    /// The CMOS, for snapshots.
    pub cmos: Arc<Mutex<Cmos>>,
    /// The ACPI PM block, for snapshots.
    pub pm: Arc<Mutex<AcpiPm>>,
    /// The thread writing COM1's output, if it goes anywhere.
    console: Option<ConsoleDrain>,
}

impl Drop for LegacyDevices {
    fn drop(&mut self) {
        stop_stdin_input(&self.serial);
        if let Some(console) = self.console.take() {
            console.finish(CONSOLE_FINISH_LIMIT);
        }
    }
}

/// Opens `--serial file=PATH` for appending without blocking: a FIFO without a reader fails
/// at once (ENXIO) instead of hanging; writes then block as usual, on the console thread.
fn open_serial_file(path: &std::path::Path) -> Result<File, LegacyDeviceError> {
    let err = |source| LegacyDeviceError::SerialFile {
        path: path.display().to_string(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(err)?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: F_GETFL/F_SETFL on a descriptor `file` owns; no memory is passed.
    let rc = unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            flags
        } else {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK)
        }
    };
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// COM1's output sink for `serial`, with the thread that drains it.
fn serial_output(
    serial: &SerialConfig,
) -> Result<(Box<dyn Write + Send>, Option<ConsoleDrain>), LegacyDeviceError> {
    let sink: Box<dyn Write + Send> = match serial {
        SerialConfig::Off => return Ok((Box::new(std::io::sink()), None)),
        SerialConfig::Tty => Box::new(std::io::stdout()),
        SerialConfig::File(path) => Box::new(open_serial_file(path)?),
    };
    let (output, drain) = console::spawn(sink).map_err(LegacyDeviceError::ConsoleThread)?;
    Ok((Box::new(output), Some(drain)))
}

fn irqfd(vm: &VmFd, irq: u32) -> Result<EventFd, LegacyDeviceError> {
    let evt = EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|source| LegacyDeviceError::EventFd { irq, source })?;
    vm.register_irqfd(&evt, irq)
        .map_err(|source| LegacyDeviceError::Irqfd { irq, source })?;
    Ok(evt)
}

/// Gives `device` an id and puts it on the port-I/O bus at `base`.
fn insert(
    buses: &Buses,
    name: &'static str,
    device: Arc<Mutex<dyn BusDevice>>,
    base: u16,
    len: u16,
) -> Result<(), LegacyDeviceError> {
    let label = buses.ids.add(name)?;
    buses
        .pio
        .insert(&label, device, u64::from(base), u64::from(len))
        .map_err(|source| LegacyDeviceError::Bus { name, source })
}

/// Creates the devices and puts them on the port-I/O bus. `ram_below_4g`/`ram_above_4g` feed
/// the CMOS memory-size registers.
pub fn attach(
    vm: &VmFd,
    buses: &Buses,
    serial: &SerialConfig,
    ram_below_4g: u64,
    ram_above_4g: u64,
) -> Result<LegacyDevices, LegacyDeviceError> {
    let (output, console) = serial_output(serial)?;
    let com1 = Arc::new(Mutex::new(Serial::new(irqfd(vm, ports::COM1_IRQ)?, output)));
    insert(buses, "com1", com1.clone(), ports::COM1, ports::COM1_LEN)?;
    let i8042 = Arc::new(Mutex::new(I8042::new()));
    insert(
        buses,
        "i8042",
        i8042.clone(),
        ports::I8042,
        ports::I8042_LEN,
    )?;
    let cmos = Arc::new(Mutex::new(Cmos::new(ram_below_4g, ram_above_4g)));
    insert(buses, "cmos", cmos.clone(), ports::CMOS, ports::CMOS_LEN)?;
    insert(
        buses,
        "post",
        Arc::new(Mutex::new(PostCode::new())),
        ports::POST,
        1,
    )?;
    insert(
        buses,
        "debugcon",
        Arc::new(Mutex::new(DebugCon::new())),
        ports::DEBUGCON,
        1,
    )?;
    let pm = Arc::new(Mutex::new(AcpiPm::new(
        ports::ACPI_S5_SLP_TYP,
        ports::ACPI_RESET_VALUE,
    )));
    insert(
        buses,
        "acpi-pm",
        pm.clone(),
        ports::ACPI_PM_BASE,
        ports::ACPI_PM_LEN,
    )?;
    Ok(LegacyDevices {
        serial: com1,
        serial_from_stdin: *serial == SerialConfig::Tty,
        i8042,
        cmos,
        pm,
        console,
    })
}

/// The COM1 that Keel's stdin feeds: the latest VM started with a terminal console.
static STDIN_TARGET: Mutex<Option<Arc<Mutex<Serial>>>> = Mutex::new(None);

fn stdin_target() -> std::sync::MutexGuard<'static, Option<Arc<Mutex<Serial>>>> {
    STDIN_TARGET
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Feeds Keel's stdin to `serial` (the guest's COM1): one detached reader thread per
/// process, started by the first VM with a terminal console, reads until stdin ends; a VM
/// started later takes the input over, and input with no VM to take it is dropped.
pub fn spawn_stdin_reader(serial: Arc<Mutex<Serial>>) -> std::io::Result<()> {
    static STARTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    *stdin_target() = Some(serial);
    if STARTED.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return Ok(());
    }
    let spawned = std::thread::Builder::new()
        .name("keel-stdin".into())
        .spawn(read_stdin_forever);
    if spawned.is_err() {
        STARTED.store(false, std::sync::atomic::Ordering::Release);
    }
    spawned.map(|_| ())
}

/// Stops feeding stdin to `serial` (its VM is going away).
pub fn stop_stdin_input(serial: &Arc<Mutex<Serial>>) {
    let mut target = stdin_target();
    if target.as_ref().is_some_and(|t| Arc::ptr_eq(t, serial)) {
        *target = None;
    }
}

/// Queues `bytes` on the current target's receive FIFO, waiting while it is full.
fn feed(mut pending: &[u8]) {
    while !pending.is_empty() {
        let Some(serial) = stdin_target().clone() else {
            return;
        };
        let queued = match serial.lock() {
            Ok(mut s) => s.enqueue_input(pending).unwrap_or(0),
            Err(_) => return,
        };
        if queued == 0 {
            // The guest's receive FIFO is full: give it time to drain.
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        pending = &pending[queued..];
    }
}

fn read_stdin_forever() {
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => feed(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("stopped reading stdin for the serial console: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acpi_pm_register_offsets_match_the_layout() {
        use devices::legacy::acpi_pm::{
            PM1A_CNT_OFFSET, PM1A_EVT_OFFSET, PM_TMR_OFFSET, RESET_OFFSET, SLEEP_CONTROL_OFFSET,
            SLEEP_STATUS_OFFSET,
        };
        let base = u64::from(ports::ACPI_PM_BASE);
        assert_eq!(
            u64::from(ports::ACPI_SLEEP_CONTROL) - base,
            SLEEP_CONTROL_OFFSET
        );
        assert_eq!(
            u64::from(ports::ACPI_SLEEP_STATUS) - base,
            SLEEP_STATUS_OFFSET
        );
        assert_eq!(u64::from(ports::ACPI_PM1A_EVT) - base, PM1A_EVT_OFFSET);
        assert_eq!(u64::from(ports::ACPI_PM1A_CNT) - base, PM1A_CNT_OFFSET);
        assert_eq!(u64::from(ports::ACPI_PM_TMR) - base, PM_TMR_OFFSET);
        assert_eq!(u64::from(ports::ACPI_RESET) - base, RESET_OFFSET);
        assert_eq!(
            u64::from(ports::ACPI_PM_LEN),
            devices::legacy::acpi_pm::ACPI_PM_LEN
        );
    }
}
