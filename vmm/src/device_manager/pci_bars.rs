//! The 32-bit PCI BAR window: one MMIO bus device spanning the window that routes each access
//! to the BAR currently decoding it, follows BAR moves the guest programs, and moves the
//! queue-notify ioeventfds with their BAR.
//!
//! A guest move is queued by the PCI segment when the configuration write happens and is
//! applied here at the next access to the window. Until then the guest's kicks at the new
//! address still arrive: they exit to userspace, the move is applied, and the access reaches
//! the device, whose notify fallback signals the same eventfd. Moves outside the window,
//! misaligned or overlapping another BAR are refused (logged); the BAR then stays where it was.
//! Accesses on this path are configuration accesses; the I/O path (ioeventfds, irqfds) never
//! takes this device's lock.

use std::sync::{Arc, Mutex, PoisonError};

use devices::bus::{BusDevice, MachineRequest};
use devices::pci::{PciDevice, PciSegment};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// Errors mapping a BAR.
#[derive(Debug, thiserror::Error)]
pub enum BarWindowError {
    /// The BAR does not fit the window or overlaps another one.
    #[error(
        "BAR at {addr:#x} ({len:#x} bytes) does not fit the PCI window or overlaps another BAR"
    )]
    Placement {
        /// Address.
        addr: u64,
        /// Size.
        len: u64,
    },
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

struct MappedBar {
    device: u8,
    bar: usize,
    addr: u64,
    len: u64,
    dev: Arc<Mutex<dyn PciDevice>>,
    /// Notify eventfds at offsets within the BAR.
    ioevents: Vec<(u64, EventFd)>,
}

/// The BARs mapped in `[base, base + size)`.
pub struct BarWindow {
    segment: Arc<Mutex<PciSegment>>,
    vm: Arc<VmFd>,
    base: u64,
    size: u64,
    bars: Vec<MappedBar>,
}

impl BarWindow {
    /// An empty window over `[base, base + size)` for the devices of `segment`.
    pub fn new(segment: Arc<Mutex<PciSegment>>, vm: Arc<VmFd>, base: u64, size: u64) -> Self {
        BarWindow {
            segment,
            vm,
            base,
            size,
            bars: Vec::new(),
        }
    }

    /// Start of the window.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Size of the window.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn fits(&self, addr: u64, len: u64, skip: Option<usize>) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        len.is_power_of_two()
            && addr.is_multiple_of(len)
            && addr >= self.base
            && end <= self.base + self.size
            && self
                .bars
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != skip)
                .all(|(_, b)| end <= b.addr || addr >= b.addr + b.len)
    }

    /// Maps BAR `bar` of the device at `device` (bus 0) at `addr` and registers `ioevents`
    /// (offset within the BAR, eventfd) as ioeventfds.
    pub fn add(
        &mut self,
        device: u8,
        bar: usize,
        (addr, len): (u64, u64),
        dev: Arc<Mutex<dyn PciDevice>>,
        ioevents: &[(u64, &EventFd)],
    ) -> Result<(), BarWindowError> {
        if !self.fits(addr, len, None) {
            return Err(BarWindowError::Placement { addr, len });
        }
        let ioevents = ioevents
            .iter()
            .map(|(off, fd)| Ok((*off, fd.try_clone().map_err(BarWindowError::EventFd)?)))
            .collect::<Result<Vec<_>, BarWindowError>>()?;
        for (off, fd) in &ioevents {
            let at = addr + off;
            self.vm
                .register_ioevent(fd, &IoEventAddress::Mmio(at), NoDatamatch)
                .map_err(|source| BarWindowError::Ioeventfd { addr: at, source })?;
        }
        self.bars.push(MappedBar {
            device,
            bar,
            addr,
            len,
            dev,
            ioevents,
        });
        Ok(())
    }

    /// Applies the BAR moves the guest made since the last access.
    fn sync(&mut self) {
        let moves = {
            let mut seg = self.segment.lock().unwrap_or_else(PoisonError::into_inner);
            if !seg.has_bar_reprograms() {
                return;
            }
            seg.take_bar_reprograms()
        };
        for m in moves {
            let (device, bar, new) = (m.device, m.reprogram.bar, m.reprogram.new);
            let Some(i) = self
                .bars
                .iter()
                .position(|b| b.device == device && b.bar == bar)
            else {
                log::debug!("BAR {bar} of 00:{device:02x}.0 moved but is not in the window");
                continue;
            };
            if !self.fits(new, self.bars[i].len, Some(i)) {
                log::warn!(
                    "guest moved BAR {bar} of 00:{device:02x}.0 to {new:#x}: outside the PCI window, misaligned or overlapping; it stays at {:#x}",
                    self.bars[i].addr
                );
                continue;
            }
            if let Err(e) = self.move_ioevents(i, new) {
                log::error!("00:{device:02x}.0: cannot move its notify ioeventfds: {e}");
            }
            log::info!(
                "guest moved BAR {bar} of 00:{device:02x}.0 from {:#x} to {new:#x}",
                self.bars[i].addr
            );
            self.bars[i].addr = new;
        }
    }

    fn move_ioevents(&self, i: usize, new: u64) -> Result<(), BarWindowError> {
        let b = &self.bars[i];
        for (off, fd) in &b.ioevents {
            let old = IoEventAddress::Mmio(b.addr + off);
            if let Err(e) = self.vm.unregister_ioevent(fd, &old, NoDatamatch) {
                log::debug!("unregistering ioeventfd at {:#x}: {e}", b.addr + off);
            }
            let at = new + off;
            self.vm
                .register_ioevent(fd, &IoEventAddress::Mmio(at), NoDatamatch)
                .map_err(|source| BarWindowError::Ioeventfd { addr: at, source })?;
        }
        Ok(())
    }

    /// The BAR decoding `[addr, addr + len)`, with the offset into it.
    fn find(&self, addr: u64, len: usize) -> Option<(&MappedBar, u64)> {
        let end = addr.checked_add(len as u64)?;
        self.bars
            .iter()
            .find(|b| addr >= b.addr && end <= b.addr + b.len)
            .map(|b| (b, addr - b.addr))
    }

    /// Where BAR `bar` of `device` is mapped now.
    #[cfg(test)]
    pub(crate) fn bar_address(&mut self, device: u8, bar: usize) -> Option<u64> {
        self.sync();
        self.bars
            .iter()
            .find(|b| b.device == device && b.bar == bar)
            .map(|b| b.addr)
    }
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.sync();
        match self.find(self.base + offset, data.len()) {
            Some((b, off)) => b
                .dev
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .bar_read(b.bar, off, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        self.sync();
        if let Some((b, off)) = self.find(self.base + offset, data.len()) {
            b.dev
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .bar_write(b.bar, off, data);
        }
        None
    }
}

/// Needs /dev/kvm: the BAR window registers ioeventfds on a real VM (skipped, saying so, where
/// there is none).
#[cfg(test)]
mod tests {
    use super::*;
    use devices::pci::{BarInfo, BarKind, BarReprogram};

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

    #[test]
    fn routes_accesses_and_follows_moves() {
        let Some(kvm) = crate::host::kvm_for_test() else {
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let segment = Arc::new(Mutex::new(PciSegment::new()));
        let last = Arc::new(Mutex::new(None));
        let dev: Arc<Mutex<dyn PciDevice>> = Arc::new(Mutex::new(Fake {
            addr: BASE,
            last: last.clone(),
        }));
        let slot = segment.lock().unwrap().add_device(dev.clone()).unwrap();
        let mut w = BarWindow::new(segment.clone(), vm, BASE, 0x10_0000);
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        w.add(slot, 0, (BASE, 0x1000), dev.clone(), &[(0x10, &kick)])
            .unwrap();
        assert!(
            w.add(slot, 1, (BASE + 0x800, 0x1000), dev.clone(), &[])
                .is_err(),
            "misaligned and overlapping"
        );

        let mut b = [0u8; 2];
        w.read(0x20, &mut b);
        assert_eq!(b, [0x20, 0x20]);
        w.read(0x5000, &mut b);
        assert_eq!(b, [0xff, 0xff], "nothing mapped there");

        // The guest moves the BAR to BASE + 0x4000 through configuration space.
        segment.lock().unwrap().config_write(
            0,
            slot,
            0,
            0x10,
            &((BASE + 0x4000) as u32).to_le_bytes(),
        );
        w.write(0x4008, &[7]);
        assert_eq!(*last.lock().unwrap(), Some((8, vec![7])));
        assert_eq!(w.bar_address(slot, 0), Some(BASE + 0x4000));
        w.read(0x20, &mut b);
        assert_eq!(b, [0xff, 0xff], "old address no longer decodes");

        // A move outside the window is refused; the BAR stays.
        segment
            .lock()
            .unwrap()
            .config_write(0, slot, 0, 0x10, &0x1000_0000u32.to_le_bytes());
        assert_eq!(w.bar_address(slot, 0), Some(BASE + 0x4000));
    }
}
