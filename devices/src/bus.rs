//! An address bus (port I/O or MMIO) that routes guest accesses to devices.
//!
//! Each device claims a half-open range `[base, base + len)`. Ranges never overlap. A guest
//! access at `addr` is delivered to the device whose range contains `addr`, with the offset
//! `addr - base`; the device never learns its absolute address. Every device has its own mutex,
//! so vCPU threads touching different devices do not contend, and a device whose mutex was
//! poisoned by a panicking thread keeps working (the guard is recovered).
//!
//! Each range carries the [`DeviceLabel`] its device got when it was added
//! ([`crate::device_id`]); an access reports the [`DeviceId`] that served it, so exits can be
//! counted per device.
//!
//! Ranges can be moved and removed while vCPUs run (a guest reprogramming a PCI BAR): the
//! range map sits behind a read-write lock that an access holds only to find its device, never
//! while the device handles the access, so a device may move ranges from inside an access
//! without deadlocking.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::device_id::{DeviceId, DeviceLabel};

/// Something a guest write asks of the whole machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineRequest {
    /// Power the machine off (e.g. ACPI S5).
    PowerOff,
    /// Reset the machine (e.g. i8042 pulse-reset command, ACPI reset register).
    Reset,
}

/// A device model reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` from the device's base into `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` from the device's base; may ask the machine for something.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest>;
}

/// Errors from inserting devices into, or accessing, a [`Bus`].
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The new range overlaps a range already claimed by another device.
    #[error(
        "range {base:#x}+{len:#x} for `{name}` overlaps `{existing}` at {existing_base:#x}+{existing_len:#x}"
    )]
    Overlap {
        /// Name of the device being inserted.
        name: String,
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
        /// Name of the device already holding an overlapping range.
        existing: String,
        /// Base of the existing range.
        existing_base: u64,
        /// Length of the existing range.
        existing_len: u64,
    },
    /// A range of zero length was requested.
    #[error("device `{name}` requested a zero-length range at {base:#x}")]
    ZeroLength {
        /// Name of the device being inserted.
        name: String,
        /// Base of the rejected range.
        base: u64,
    },
    /// `base + len` does not fit in a `u64`.
    #[error("range {base:#x}+{len:#x} for `{name}` overflows the address space")]
    Overflow {
        /// Name of the device being inserted.
        name: String,
        /// Base of the rejected range.
        base: u64,
        /// Length of the rejected range.
        len: u64,
    },
    /// No device claims the accessed address.
    #[error("no device at {addr:#x} (access of {len} bytes)")]
    Unclaimed {
        /// The accessed address.
        addr: u64,
        /// The access width in bytes.
        len: usize,
    },
    /// No range starts at the address given to move or remove.
    #[error("no range starts at {base:#x}")]
    NoRange {
        /// The address given.
        base: u64,
    },
}

/// One claimed range.
struct BusEntry {
    len: u64,
    label: DeviceLabel,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// The ranges.
#[derive(Default)]
struct Ranges {
    /// Keyed by range base.
    devices: BTreeMap<u64, BusEntry>,
}

impl Ranges {
    /// Checks that `[base, base + len)` is a valid range overlapping none but the one starting
    /// at `skip`.
    fn check_free(
        &self,
        name: &str,
        base: u64,
        len: u64,
        skip: Option<u64>,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::ZeroLength {
                name: name.to_owned(),
                base,
            });
        }
        let end = base.checked_add(len).ok_or_else(|| BusError::Overflow {
            name: name.to_owned(),
            base,
            len,
        })?;
        let overlap = |(&ebase, e): (&u64, &BusEntry)| BusError::Overlap {
            name: name.to_owned(),
            base,
            len,
            existing: e.label.name().to_owned(),
            existing_base: ebase,
            existing_len: e.len,
        };
        let others = |(b, _): &(&u64, &BusEntry)| Some(**b) != skip;
        // The closest other range starting at or below `base` must end at or before `base`.
        if let Some((&ebase, e)) = self.devices.range(..=base).rev().find(others) {
            if ebase + e.len > base {
                return Err(overlap((&ebase, e)));
            }
        }
        // No other range may start inside `(base, end)`.
        if let Some(found) = self.devices.range(base..end).find(others) {
            return Err(overlap(found));
        }
        Ok(())
    }

    /// Finds the entry covering `addr` and its base.
    fn lookup(&self, addr: u64) -> Option<(u64, &BusEntry)> {
        let (&base, entry) = self.devices.range(..=addr).next_back()?;
        // `addr >= base` by construction; ranges never overflow.
        (addr - base < entry.len).then_some((base, entry))
    }
}

/// Where one access goes: the device (its range lock already released), the offset in its
/// range and the device's id.
struct Route {
    device: Arc<Mutex<dyn BusDevice>>,
    offset: u64,
    id: DeviceId,
}

/// Routes accesses to the devices that claim them. `Send + Sync`; share it with `Arc`.
#[derive(Default)]
pub struct Bus {
    ranges: RwLock<Ranges>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.read_ranges();
        let mut map = f.debug_map();
        for (base, entry) in &ranges.devices {
            map.entry(
                &format_args!("{:#x}..{:#x}", base, base.saturating_add(entry.len)),
                &entry.label.name(),
            );
        }
        map.finish()
    }
}

/// Locks a device, recovering the guard if a previous holder panicked.
fn lock<'a>(device: &'a Mutex<dyn BusDevice + 'static>) -> MutexGuard<'a, dyn BusDevice + 'static> {
    device.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Bus {
    /// Creates an empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    fn read_ranges(&self) -> RwLockReadGuard<'_, Ranges> {
        self.ranges.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_ranges(&self) -> RwLockWriteGuard<'_, Ranges> {
        self.ranges.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Claims `[base, base + len)` for `device`, known by `label` in errors and exit counts
    /// (all ranges inserted under one label count as one device).
    ///
    /// Fails on a zero length, on `base + len` overflowing `u64` (a range may end exactly at
    /// `u64::MAX`, exclusive), or on overlap with any range already on the bus.
    pub fn insert(
        &self,
        label: &DeviceLabel,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let mut ranges = self.write_ranges();
        ranges.check_free(label.name(), base, len, None)?;
        ranges.devices.insert(
            base,
            BusEntry {
                len,
                label: label.clone(),
                device,
            },
        );
        Ok(())
    }

    /// Moves the range starting at `base` to start at `new_base`, with the same length and
    /// device, in one step: no access sees it at both places or at neither. Fails, leaving it
    /// where it was, if no range starts at `base` or the moved range would overflow or overlap
    /// another.
    pub fn relocate(&self, base: u64, new_base: u64) -> Result<(), BusError> {
        let mut ranges = self.write_ranges();
        let entry = ranges
            .devices
            .get(&base)
            .ok_or(BusError::NoRange { base })?;
        let (label, len) = (entry.label.clone(), entry.len);
        ranges.check_free(label.name(), new_base, len, Some(base))?;
        if let Some(entry) = ranges.devices.remove(&base) {
            ranges.devices.insert(new_base, entry);
        }
        Ok(())
    }

    /// Removes the range starting at `base`.
    pub fn remove(&self, base: u64) -> Result<(), BusError> {
        self.write_ranges()
            .devices
            .remove(&base)
            .map(|_| ())
            .ok_or(BusError::NoRange { base })
    }

    /// The device covering `addr`, its offset there and its id; the range lock is
    /// released before the caller touches the device.
    fn route(&self, addr: u64, len: usize) -> Result<Route, BusError> {
        let ranges = self.read_ranges();
        let (base, entry) = ranges
            .lookup(addr)
            .ok_or(BusError::Unclaimed { addr, len })?;
        Ok(Route {
            device: Arc::clone(&entry.device),
            offset: addr - base,
            id: entry.label.id(),
        })
    }

    /// Reads `data.len()` bytes at `addr` from the device covering `addr`.
    ///
    /// The device gets `addr - base` as offset. Accesses spilling past the end of the range are
    /// delivered whole to the device that covers `addr`; devices must tolerate them.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Result<(), BusError> {
        self.read_from(addr, data).map(|_| ())
    }

    /// [`Bus::read`], returning the id of the device that served it.
    pub fn read_from(&self, addr: u64, data: &mut [u8]) -> Result<DeviceId, BusError> {
        let route = self.route(addr, data.len())?;
        lock(&route.device).read(route.offset, data);
        Ok(route.id)
    }

    /// Writes `data` at `addr` to the device covering `addr`, returning what it asks of the
    /// machine, if anything.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<Option<MachineRequest>, BusError> {
        self.write_to(addr, data).map(|(_, request)| request)
    }

    /// [`Bus::write`], also returning the id of the device that took it.
    pub fn write_to(
        &self,
        addr: u64,
        data: &[u8],
    ) -> Result<(DeviceId, Option<MachineRequest>), BusError> {
        let route = self.route(addr, data.len())?;
        let request = lock(&route.device).write(route.offset, data);
        Ok((route.id, request))
    }

    /// Name of the device covering `addr`, if any.
    #[cfg(test)]
    pub(crate) fn device_name(&self, addr: u64) -> Option<String> {
        self.read_ranges()
            .lookup(addr)
            .map(|(_, e)| e.label.name().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_id::DeviceIds;

    /// A label for a device whose id the test does not look at.
    fn named(name: &str) -> DeviceLabel {
        DeviceIds::default().add(name).unwrap()
    }

    /// Records the last access; reads return the offset's low byte.
    #[derive(Default)]
    struct Probe {
        last_read: Option<(u64, usize)>,
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            self.last_read = Some((offset, data.len()));
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
            self.last_write = Some((offset, data.to_vec()));
            match data.first() {
                Some(0xfe) => Some(MachineRequest::Reset),
                Some(0xff) => Some(MachineRequest::PowerOff),
                _ => None,
            }
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn bus_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Bus>();
    }

    #[test]
    fn lookup_first_and_last_byte() {
        let bus = Bus::new();
        let p = probe();
        bus.insert(&named("p"), p.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x3f8, &mut b).unwrap();
        assert_eq!(b[0], 0);
        assert_eq!(p.lock().unwrap().last_read, Some((0, 1)));
        bus.read(0x3ff, &mut b).unwrap();
        assert_eq!(b[0], 7);
        assert_eq!(p.lock().unwrap().last_read, Some((7, 1)));
        assert_eq!(bus.device_name(0x3f8).as_deref(), Some("p"));
        assert_eq!(bus.device_name(0x3ff).as_deref(), Some("p"));
        assert_eq!(bus.device_name(0x400).as_deref(), None);
        assert_eq!(bus.device_name(0x3f7).as_deref(), None);
    }

    #[test]
    fn unclaimed_outside_ranges() {
        let bus = Bus::new();
        let mut b = [0u8; 2];
        assert!(matches!(
            bus.read(0, &mut b),
            Err(BusError::Unclaimed { addr: 0, len: 2 })
        ));
        bus.insert(&named("p"), probe(), 0x10, 0x10).unwrap();
        for addr in [0, 0xf, 0x20, u64::MAX] {
            assert!(matches!(
                bus.read(addr, &mut b),
                Err(BusError::Unclaimed { addr: a, len: 2 }) if a == addr
            ));
            assert!(matches!(
                bus.write(addr, &b),
                Err(BusError::Unclaimed { .. })
            ));
        }
    }

    #[test]
    fn overlap_rejected() {
        let bus = Bus::new();
        bus.insert(&named("a"), probe(), 0x100, 0x10).unwrap();
        // Full: identical, containing, contained.
        for (base, len) in [(0x100, 0x10), (0xf0, 0x40), (0x104, 2)] {
            assert!(
                matches!(
                    bus.insert(&named("b"), probe(), base, len),
                    Err(BusError::Overlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        // Partial: from below, from above.
        for (base, len) in [(0xf8, 0x9), (0x10f, 0x10)] {
            assert!(
                matches!(
                    bus.insert(&named("b"), probe(), base, len),
                    Err(BusError::Overlap { .. })
                ),
                "{base:#x}+{len:#x}"
            );
        }
        // Adjacent on both sides is fine.
        bus.insert(&named("below"), probe(), 0xf0, 0x10).unwrap();
        bus.insert(&named("above"), probe(), 0x110, 0x10).unwrap();
        assert_eq!(bus.device_name(0xff).as_deref(), Some("below"));
        assert_eq!(bus.device_name(0x100).as_deref(), Some("a"));
        assert_eq!(bus.device_name(0x10f).as_deref(), Some("a"));
        assert_eq!(bus.device_name(0x110).as_deref(), Some("above"));
    }

    #[test]
    fn zero_length_and_overflow_rejected() {
        let bus = Bus::new();
        assert!(matches!(
            bus.insert(&named("z"), probe(), 0x10, 0),
            Err(BusError::ZeroLength { .. })
        ));
        assert!(matches!(
            bus.insert(&named("o"), probe(), u64::MAX, 2),
            Err(BusError::Overflow { .. })
        ));
        assert!(matches!(
            bus.insert(&named("o"), probe(), 1, u64::MAX),
            Err(BusError::Overflow { .. })
        ));
        // Ending exactly at the top of the address space is allowed.
        bus.insert(&named("top"), probe(), u64::MAX - 1, 1).unwrap();
        assert_eq!(bus.device_name(u64::MAX - 1).as_deref(), Some("top"));
        assert_eq!(bus.device_name(u64::MAX).as_deref(), None);
    }

    #[test]
    fn offsets_are_relative_and_requests_returned() {
        let bus = Bus::new();
        let p = probe();
        bus.insert(&named("p"), p.clone(), 0xfee0_0000, 0x1000)
            .unwrap();
        assert_eq!(bus.write(0xfee0_0020, &[1, 2, 3, 4]).unwrap(), None);
        assert_eq!(p.lock().unwrap().last_write, Some((0x20, vec![1, 2, 3, 4])));
        assert_eq!(
            bus.write(0xfee0_0fff, &[0xfe]).unwrap(),
            Some(MachineRequest::Reset)
        );
        assert_eq!(p.lock().unwrap().last_write, Some((0xfff, vec![0xfe])));
        assert_eq!(
            bus.write(0xfee0_0000, &[0xff]).unwrap(),
            Some(MachineRequest::PowerOff)
        );
    }

    #[test]
    fn poisoned_device_still_works() {
        let bus = Bus::new();
        let p = probe();
        bus.insert(&named("p"), p.clone(), 0, 4).unwrap();
        let p2 = p.clone();
        let _ = std::thread::spawn(move || {
            let _g = p2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(p.is_poisoned());
        let mut b = [0u8; 1];
        bus.read(3, &mut b).unwrap();
        assert_eq!(b[0], 3);
    }

    #[test]
    fn accesses_report_which_device_served_them() {
        let bus = Bus::new();
        let ids = DeviceIds::default();
        let (a_label, b_label) = (ids.add("a").unwrap(), ids.add("b").unwrap());
        let a = Arc::new(Mutex::new(Probe::default()));
        let b = Arc::new(Mutex::new(Probe::default()));
        bus.insert(&a_label, a.clone(), 0x10, 0x10).unwrap();
        bus.insert(&b_label, b, 0x40, 0x10).unwrap();
        // A second range under an existing label is the same device.
        bus.insert(&a_label, a, 0x80, 0x10).unwrap();
        let mut data = [0u8; 1];
        assert_eq!(bus.read_from(0x12, &mut data).unwrap(), a_label.id());
        assert_eq!(bus.read_from(0x41, &mut data).unwrap(), b_label.id());
        assert_eq!(bus.write_to(0x8f, &[1]).unwrap(), (a_label.id(), None));
        assert!(bus.read_from(0x30, &mut data).is_err());
    }

    #[test]
    fn relocate_moves_a_range_whole_or_not_at_all() {
        let bus = Bus::new();
        let p = probe();
        bus.insert(&named("bar"), p.clone(), 0x1000, 0x100).unwrap();
        bus.insert(&named("other"), probe(), 0x2000, 0x100).unwrap();
        bus.relocate(0x1000, 0x1080).unwrap();
        assert_eq!(bus.device_name(0x1000).as_deref(), None);
        assert_eq!(bus.device_name(0x1080).as_deref(), Some("bar"));
        let mut b = [0u8; 1];
        bus.read(0x1090, &mut b).unwrap();
        assert_eq!(
            p.lock().unwrap().last_read,
            Some((0x10, 1)),
            "offset from the new base"
        );
        // Overlapping its own old place is fine; overlapping another range is not.
        bus.relocate(0x1080, 0x1000).unwrap();
        assert!(matches!(
            bus.relocate(0x1000, 0x1f80),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.relocate(0x1000, u64::MAX - 0x10),
            Err(BusError::Overflow { .. })
        ));
        assert_eq!(
            bus.device_name(0x1000).as_deref(),
            Some("bar"),
            "left in place"
        );
        assert!(matches!(
            bus.relocate(0x1234, 0),
            Err(BusError::NoRange { base: 0x1234 })
        ));
    }

    #[test]
    fn a_removed_range_stops_decoding_and_its_device_keeps_its_id() {
        let bus = Bus::new();
        let ids = DeviceIds::default();
        let (a, b) = (ids.add("a").unwrap(), ids.add("b").unwrap());
        bus.insert(&a, probe(), 0x10, 0x10).unwrap();
        bus.insert(&b, probe(), 0x40, 0x10).unwrap();
        bus.remove(0x10).unwrap();
        assert!(bus.remove(0x10).is_err());
        let mut d = [0u8; 1];
        assert!(bus.read_from(0x12, &mut d).is_err());
        bus.insert(&a, probe(), 0x80, 0x10).unwrap();
        assert_eq!(bus.read_from(0x81, &mut d).unwrap(), a.id());
        assert_eq!(bus.read_from(0x41, &mut d).unwrap(), b.id());
    }

    #[test]
    fn a_device_may_move_its_own_range_from_inside_an_access() {
        struct Mover(Arc<Bus>);
        impl BusDevice for Mover {
            fn read(&mut self, _offset: u64, data: &mut [u8]) {
                data.fill(0);
            }
            fn write(&mut self, _offset: u64, _data: &[u8]) -> Option<MachineRequest> {
                self.0.relocate(0x100, 0x200).unwrap();
                None
            }
        }
        let bus = Arc::new(Bus::new());
        bus.insert(
            &named("mover"),
            Arc::new(Mutex::new(Mover(bus.clone()))),
            0x100,
            0x10,
        )
        .unwrap();
        bus.write(0x100, &[1]).unwrap();
        assert_eq!(bus.device_name(0x200).as_deref(), Some("mover"));
    }
}
