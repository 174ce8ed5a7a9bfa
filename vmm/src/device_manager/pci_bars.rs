//! PCI BARs on the MMIO bus: each BAR of each device is its own bus range (labelled with the
//! device's id, so exits count per device), and a BAR move the guest programs is applied while its
//! configuration write is handled ([`BarMapper`]): the range moves on the bus and the
//! queue-notify ioeventfds move with it, before the guest's next instruction.
//!
//! A move is accepted into the 32-bit or the 64-bit PCI window ([`PciWindows`]), aligned to the
//! BAR's size and overlapping no other range on the bus. Anything else unmaps the BAR, as on
//! hardware where an address outside the bridge's windows decodes nowhere: accesses to it are
//! unclaimed until the guest programs a valid address again. The first refusal per BAR is a
//! warning, later ones are debug lines (the guest decides how many there are).
//! Moves happen on configuration accesses; the I/O path (ioeventfds, irqfds) never takes
//! this module's lock.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use arch::layout::PciWindows;
use devices::bus::{Bus, BusError};
use devices::device_id::DeviceLabel;
use devices::pci::{BarMapper, BarReprogram, PciBarBusDevice, PciDevice};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Errors mapping a BAR.
#[derive(Debug, thiserror::Error)]
pub enum PciBarError {
    /// The BAR is not aligned to its size or lies outside the PCI windows.
    #[error("BAR at {addr:#x} ({len:#x} bytes) is misaligned or outside the PCI windows")]
    Placement {
        /// Address.
        addr: u64,
        /// Size.
        len: u64,
    },
    /// The VM's buses are gone (it is being torn down).
    #[error("the MMIO bus is gone")]
    BusGone,
    /// The bus refused the range (overlap).
    #[error("cannot put the BAR on the MMIO bus")]
    Bus(#[source] BusError),
    /// Duplicating an eventfd failed.
    #[error("cannot duplicate a queue notify eventfd")]
    EventFd(#[source] std::io::Error),
    /// KVM refused an ioeventfd.
    #[error("KVM_IOEVENTFD at {addr:#x} failed")]
    Ioeventfd {
        /// Address.
        addr: u64,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// One BAR this module maps.
struct MappedBar {
    device: u8,
    bar: usize,
    label: DeviceLabel,
    len: u64,
    /// Where it decodes now; `None` after a refused move.
    at: Option<u64>,
    bus_device: Arc<Mutex<PciBarBusDevice>>,
    /// Notify eventfds at offsets within the BAR.
    ioevents: Vec<(u64, EventFd)>,
    /// Whether a refused move was already logged as a warning.
    warned: bool,
    /// Whether a move was already logged at info level (the guest decides how many follow).
    move_logged: bool,
}

/// The BARs of a VM's PCI devices on its MMIO bus; the PCI segment's [`BarMapper`].
pub struct PciBars {
    vm: Arc<VmFd>,
    /// Weak: the bus holds the ECAM device, which holds the segment, which holds this mapper;
    /// a strong reference would keep the whole device graph (and its open disk images)
    /// alive after the VM is gone.
    mmio: Weak<Bus>,
    windows: PciWindows,
    bars: Mutex<Vec<MappedBar>>,
}

impl PciBars {
    /// No BARs yet, for `mmio` within `windows`.
    pub fn new(vm: Arc<VmFd>, mmio: &Arc<Bus>, windows: PciWindows) -> Self {
        PciBars {
            vm,
            mmio: Arc::downgrade(mmio),
            windows,
            bars: Mutex::new(Vec::new()),
        }
    }

    /// The windows BARs may be placed in.
    pub fn windows(&self) -> &PciWindows {
        &self.windows
    }

    /// The MMIO bus, while the VM's buses exist.
    fn bus(&self) -> Result<Arc<Bus>, PciBarError> {
        self.mmio.upgrade().ok_or(PciBarError::BusGone)
    }

    fn placeable(&self, addr: u64, len: u64) -> bool {
        len.is_power_of_two() && addr.is_multiple_of(len) && self.windows.contains(addr, len)
    }

    /// Maps BAR `bar` of `dev` (at `device` on bus 0, known by `label`) at `addr` and
    /// registers `ioevents` (offset within the BAR, eventfd) as ioeventfds.
    pub fn add(
        &self,
        label: &DeviceLabel,
        (device, bar): (u8, usize),
        (addr, len): (u64, u64),
        dev: Arc<Mutex<dyn PciDevice>>,
        ioevents: &[(u64, &EventFd)],
    ) -> Result<(), PciBarError> {
        let ioevents = ioevents
            .iter()
            .map(|(off, fd)| Ok((*off, fd.try_clone().map_err(PciBarError::EventFd)?)))
            .collect::<Result<Vec<_>, PciBarError>>()?;
        let mut mapped = MappedBar {
            device,
            bar,
            label: label.clone(),
            len,
            at: None,
            bus_device: Arc::new(Mutex::new(PciBarBusDevice::new(dev, bar))),
            ioevents,
            warned: false,
            move_logged: false,
        };
        self.map_at(&mapped, addr)?;
        mapped.at = Some(addr);
        self.lock().push(mapped);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<MappedBar>> {
        self.bars.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn register_ioevents(&self, b: &MappedBar, base: u64) -> Result<(), PciBarError> {
        for (off, fd) in &b.ioevents {
            let at = base + off;
            self.vm
                .register_ioevent(fd, &IoEventAddress::Mmio(at), NoDatamatch)
                .map_err(|source| PciBarError::Ioeventfd { addr: at, source })?;
        }
        Ok(())
    }

    fn unregister_ioevents(&self, b: &MappedBar, base: u64) {
        for (off, fd) in &b.ioevents {
            let at = IoEventAddress::Mmio(base + off);
            if let Err(e) = self.vm.unregister_ioevent(fd, &at, NoDatamatch) {
                log::debug!("unregistering ioeventfd at {:#x}: {e}", base + off);
            }
        }
    }

    /// Puts `b` at `new` (it is unmapped now): on the bus, then its ioeventfds.
    fn map_at(&self, b: &MappedBar, new: u64) -> Result<(), PciBarError> {
        if !self.placeable(new, b.len) {
            return Err(PciBarError::Placement {
                addr: new,
                len: b.len,
            });
        }
        let mmio = self.bus()?;
        mmio.insert(&b.label, b.bus_device.clone(), new, b.len)
            .map_err(PciBarError::Bus)?;
        self.register_ioevents(b, new).inspect_err(|_| {
            self.unregister_ioevents(b, new);
            let _ = mmio.remove(new);
        })
    }

    /// Where BAR `bar` of `device` decodes now.
    #[cfg(test)]
    pub(crate) fn bar_address(&self, device: u8, bar: usize) -> Option<u64> {
        self.lock()
            .iter()
            .find(|b| b.device == device && b.bar == bar)
            .and_then(|b| b.at)
    }
}

impl BarMapper for PciBars {
    fn bar_moved(&self, device: u8, reprogram: &BarReprogram) {
        let (bar, new) = (reprogram.bar, reprogram.new);
        let mut bars = self.lock();
        let Some(b) = bars.iter_mut().find(|b| b.device == device && b.bar == bar) else {
            log::debug!("BAR {bar} of 00:{device:02x}.0 moved but Keel does not map it");
            return;
        };
        if b.at == Some(new) {
            return;
        }
        if let Some(old) = b.at.take() {
            self.unregister_ioevents(b, old);
            if let Some(mmio) = self.mmio.upgrade() {
                let _ = mmio.remove(old);
            }
        }
        match self.map_at(b, new) {
            Ok(()) if b.move_logged => {
                b.at = Some(new);
                log::debug!(
                    "BAR {bar} of 00:{device:02x}.0 ({}) moved to {new:#x}",
                    b.label.name()
                );
            }
            Ok(()) => {
                b.at = Some(new);
                b.move_logged = true;
                log::info!(
                    "guest moved BAR {bar} of 00:{device:02x}.0 ({}) to {new:#x}",
                    b.label.name()
                );
            }
            Err(e) if !b.warned => {
                b.warned = true;
                log::warn!(
                    "guest moved BAR {bar} of 00:{device:02x}.0 ({}) to {new:#x}: {e}; it decodes nowhere until moved again (further refusals are debug lines)",
                    b.label.name()
                );
            }
            Err(e) => log::debug!("BAR {bar} of 00:{device:02x}.0 not mapped at {new:#x}: {e}"),
        }
    }
}

/// Needs /dev/kvm: the BAR window registers ioeventfds on a real VM (skipped, saying so, where
/// there is none).
#[cfg(test)]
mod tests {
    use super::*;
    use devices::pci::{BarInfo, BarKind, PciSegment};

    /// The last BAR write a fake device saw: (offset, bytes).
    type LastWrite = Arc<Mutex<Option<(u64, Vec<u8>)>>>;

    /// A device with one 4 KiB BAR that remembers the last write and moves its BAR on a
    /// config write of a new address at 0x10.
    struct Fake {
        addr: u64,
        last: LastWrite,
    }

    impl PciDevice for Fake {
        fn config_read(&mut self, _offset: u32, data: &mut [u8]) {
            data.fill(0);
        }
        fn config_write(&mut self, offset: u32, data: &[u8]) -> Option<BarReprogram> {
            if offset != 0x10 || data.len() != 4 {
                return None;
            }
            let new = u64::from(u32::from_le_bytes(data.try_into().ok()?));
            let old = std::mem::replace(&mut self.addr, new);
            Some(BarReprogram {
                bar: 0,
                old,
                new,
                len: 0x1000,
                kind: BarKind::Memory32,
            })
        }
        fn bars(&self) -> Vec<BarInfo> {
            vec![]
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            *self.last.lock().unwrap() = Some((offset, data.to_vec()));
        }
    }

    const BASE: u64 = 0xc000_0000;
    /// Where OVMF puts BARs in a guest with 40 address bits: the 64-bit window's top eighth.
    const HIGH: u64 = 0xe0_0000_0000;

    /// A segment with one fake device whose 4 KiB BAR 0 is mapped at BASE with a notify
    /// eventfd at 0x10.
    struct Setup {
        segment: Arc<Mutex<PciSegment>>,
        mmio: Arc<Bus>,
        bars: Arc<PciBars>,
        slot: u8,
        last: LastWrite,
        kick: EventFd,
        label: DeviceLabel,
    }

    fn setup() -> Option<Setup> {
        let kvm = crate::host::kvm_for_test()?;
        let vm = Arc::new(kvm.create_vm().unwrap());
        let segment = Arc::new(Mutex::new(PciSegment::new()));
        let last = Arc::new(Mutex::new(None));
        let dev: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(Fake {
            addr: BASE,
            last: last.clone(),
        }));
        let slot = segment.lock().unwrap().add_device(dev.clone()).unwrap();
        let mmio = Arc::new(Bus::new());
        let windows = PciWindows::for_guest(1 << 30, 40);
        let bars = Arc::new(PciBars::new(vm, &mmio, windows));
        segment.lock().unwrap().set_bar_mapper(bars.clone());
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let ids = devices::device_id::DeviceIds::default();
        ids.add("host-bridge").unwrap();
        let label = ids.add("fake").unwrap();
        bars.add(
            &label,
            (slot, 0),
            (BASE, 0x1000),
            dev.clone(),
            &[(0x10, &kick)],
        )
        .unwrap();
        assert!(
            bars.add(&label, (slot, 1), (BASE + 0x800, 0x1000), dev, &[])
                .is_err(),
            "misaligned"
        );
        Some(Setup {
            segment,
            mmio,
            bars,
            slot,
            last,
            kick,
            label,
        })
    }

    fn move_bar(segment: &Mutex<PciSegment>, slot: u8, addr: u32) {
        segment
            .lock()
            .unwrap()
            .config_write(0, slot, 0, 0x10, &addr.to_le_bytes());
    }

    #[test]
    fn moves_take_effect_during_the_config_write() {
        let Some(Setup {
            segment,
            mmio,
            bars,
            slot,
            last,
            label,
            ..
        }) = setup()
        else {
            return;
        };
        let mut b = [0u8; 2];
        mmio.read(BASE + 0x20, &mut b).unwrap();
        assert_eq!(b, [0x20, 0x20]);
        assert!(mmio.read(BASE + 0x5000, &mut b).is_err(), "nothing there");

        move_bar(&segment, slot, (BASE + 0x4000) as u32);
        mmio.write(BASE + 0x4008, &[7]).unwrap();
        assert_eq!(*last.lock().unwrap(), Some((8, vec![7])));
        assert_eq!(bars.bar_address(slot, 0), Some(BASE + 0x4000));
        assert!(
            mmio.read(BASE + 0x20, &mut b).is_err(),
            "old address no longer decodes"
        );
        assert_eq!(
            mmio.read_from(BASE + 0x4000, &mut b).unwrap(),
            label.id(),
            "the moved BAR still counts for its device"
        );
    }

    #[test]
    fn a_move_outside_the_windows_unmaps_until_a_valid_one() {
        let Some(Setup {
            segment,
            mmio,
            bars,
            slot,
            ..
        }) = setup()
        else {
            return;
        };
        let mut b = [0u8; 1];
        move_bar(&segment, slot, 0x1000_0000);
        assert_eq!(bars.bar_address(slot, 0), None);
        assert!(mmio.read(BASE, &mut b).is_err() && mmio.read(0x1000_0000, &mut b).is_err());
        for _ in 0..1000 {
            move_bar(&segment, slot, 0x2000_0000);
            move_bar(&segment, slot, 0x1000_0000);
        }
        move_bar(&segment, slot, (BASE + 0x8000) as u32);
        assert_eq!(bars.bar_address(slot, 0), Some(BASE + 0x8000));
        mmio.read(BASE + 0x8001, &mut b).unwrap();
        assert_eq!(b, [1]);
    }

    #[test]
    fn ioeventfds_follow_the_bar_into_the_64_bit_window() {
        let Some(Setup {
            mmio,
            bars,
            slot,
            kick,
            ..
        }) = setup()
        else {
            return;
        };
        // The fake's config space is 32-bit; move it the way a 64-bit BAR's write reports.
        bars.bar_moved(
            slot,
            &BarReprogram {
                bar: 0,
                old: BASE,
                new: HIGH,
                len: 0x1000,
                kind: BarKind::Memory64,
            },
        );
        assert_eq!(bars.bar_address(slot, 0), Some(HIGH));
        let mut b = [0u8; 1];
        mmio.read(HIGH + 3, &mut b).unwrap();
        assert_eq!(b, [3]);
        // KVM holds the notify address at the new place: registering it again is refused,
        // and the old place is free again.
        let dup = kick.try_clone().unwrap();
        let vm = &bars.vm;
        assert!(vm
            .register_ioevent(&dup, &IoEventAddress::Mmio(HIGH + 0x10), NoDatamatch)
            .is_err());
        vm.register_ioevent(&dup, &IoEventAddress::Mmio(BASE + 0x10), NoDatamatch)
            .unwrap();
    }
}
