//! Tests of the PCI pieces together: config access through 0xCF8/0xCFC and ECAM, BAR moves
//! reaching the VMM, BAR routing, and hostile accesses.

use std::sync::{Arc, Mutex};

use super::config_io::{CONFIG_ADDRESS_OFFSET, CONFIG_DATA_OFFSET};
use super::*;
use crate::bus::{Bus, BusDevice, MachineRequest};

/// A device with a 32-bit memory BAR 0 (4 KiB) and a 64-bit BAR 2; BAR accesses echo the
/// offset's low byte and remember the last write.
struct TestDevice {
    config: PciConfiguration,
    last_write: Option<(usize, u64, Vec<u8>)>,
}

impl TestDevice {
    fn new(device_id: u16) -> Self {
        let class = PciClassCode {
            class: 0x01,
            subclass: 0x00,
            prog_if: 0x00,
        };
        let mut config = PciConfiguration::new(0x1af4, device_id, class);
        for bar in [
            BarInfo {
                index: 0,
                addr: 0xe000_0000,
                size: 0x1000,
                kind: BarKind::Memory32,
                prefetchable: false,
            },
            BarInfo {
                index: 2,
                addr: 0x1_0000_0000,
                size: 0x4000,
                kind: BarKind::Memory64,
                prefetchable: true,
            },
        ] {
            config.add_bar(bar).unwrap();
        }
        Self {
            config,
            last_write: None,
        }
    }
}

impl PciDevice for TestDevice {
    fn config_read(&mut self, offset: u32, data: &mut [u8]) {
        self.config.read_config(offset, data);
    }
    fn config_write(&mut self, offset: u32, data: &[u8]) -> Option<BarReprogram> {
        self.config.write_config(offset, data)
    }
    fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
    }
    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.last_write = Some((bar, offset, data.to_vec()));
    }
}

fn segment_with_device() -> (Arc<Mutex<PciSegment>>, Arc<Mutex<TestDevice>>) {
    let mut seg = PciSegment::new();
    let dev = Arc::new(Mutex::new(TestDevice::new(0x1042)));
    assert_eq!(seg.add_device(dev.clone()).unwrap(), 1);
    (Arc::new(Mutex::new(seg)), dev)
}

fn cf8(bus: u32, dev: u32, func: u32, reg: u32) -> u32 {
    (1 << 31) | (bus << 16) | (dev << 11) | (func << 8) | reg
}

fn io_read(io: &mut PciConfigIo, addr: u32, port_off: u64, len: usize) -> u32 {
    io.write(CONFIG_ADDRESS_OFFSET, &addr.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(CONFIG_DATA_OFFSET + port_off, &mut b[..len]);
    u32::from_le_bytes(b)
}

fn ecam_read(m: &mut PciConfigMmio, dev: u64, func: u64, reg: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    m.read((dev << 15) | (func << 12) | reg, &mut b[..len]);
    u64::from_le_bytes(b)
}

#[test]
fn config_io_ids_round_trip() {
    let (seg, _dev) = segment_with_device();
    let mut io = PciConfigIo::new(seg);
    assert_eq!(io_read(&mut io, cf8(0, 0, 0, 0), 0, 4), 0x0d57_8086);
    assert_eq!(io_read(&mut io, cf8(0, 0, 0, 8), 0, 4) >> 16, 0x0600);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0), 0, 4), 0x1042_1af4);
    // Byte and word accesses at their sub-offsets.
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0), 1, 1), 0x1a);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0), 2, 2), 0x1042);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0), 3, 1), 0x10);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 8), 3, 1), 0x01);
    // The address register reads back, without reserved bits.
    io.write(CONFIG_ADDRESS_OFFSET, &0xffff_ffffu32.to_le_bytes());
    let mut b = [0u8; 4];
    io.read(CONFIG_ADDRESS_OFFSET, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x80ff_fffc);
    assert_eq!(io.config_address(), 0x80ff_fffc);
}

#[test]
fn config_io_word_write_at_cfe_and_byte_at_cfd() {
    let (seg, _dev) = segment_with_device();
    let mut io = PciConfigIo::new(seg);
    // Command register (0x04) low byte through 0xCFC, interrupt line via 0xCFC at 0x3c.
    io.write(CONFIG_ADDRESS_OFFSET, &cf8(0, 1, 0, 0x04).to_le_bytes());
    io.write(CONFIG_DATA_OFFSET, &[0x06]);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0x04), 0, 2), 0x0006);
    // Byte at 0xCFD reaches register 0x3d (pin, read-only); 0xCFC writes the line.
    io.write(CONFIG_ADDRESS_OFFSET, &cf8(0, 1, 0, 0x3c).to_le_bytes());
    io.write(CONFIG_DATA_OFFSET + 1, &[0x03]);
    io.write(CONFIG_DATA_OFFSET, &[0x0a]);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0x3c), 0, 2), 0x000a);
    // Word at 0xCFE reaches the upper half of BAR 0 (0x12..0x13).
    io.write(CONFIG_ADDRESS_OFFSET, &cf8(0, 1, 0, 0x10).to_le_bytes());
    io.write(CONFIG_DATA_OFFSET + 2, &0xe010u16.to_le_bytes());
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0x10), 0, 4), 0xe010_0000);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0x10), 2, 2), 0xe010);
    // Misaligned / oversize data accesses are ignored and read all-ones.
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0), 2, 4), 0xffff_ffff);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0), 3, 2), 0xffff);
}

#[test]
fn config_io_disabled_and_absent_read_all_ones() {
    let (seg, _dev) = segment_with_device();
    let mut io = PciConfigIo::new(seg);
    // Enable bit clear.
    assert_eq!(
        io_read(&mut io, cf8(0, 0, 0, 0) & !(1 << 31), 0, 4),
        0xffff_ffff
    );
    // Absent device, other function, other bus: vendor 0xffff.
    for addr in [
        cf8(0, 2, 0, 0),
        cf8(0, 31, 0, 0),
        cf8(0, 1, 1, 0),
        cf8(1, 0, 0, 0),
    ] {
        assert_eq!(io_read(&mut io, addr, 0, 2), 0xffff, "{addr:#x}");
    }
    // A disabled write does not reach the device.
    io.write(
        CONFIG_ADDRESS_OFFSET,
        &(cf8(0, 1, 0, 0x3c) & !(1 << 31)).to_le_bytes(),
    );
    io.write(CONFIG_DATA_OFFSET, &[0x0b]);
    assert_eq!(io_read(&mut io, cf8(0, 1, 0, 0x3c), 0, 1), 0);
    // 0xCF9 is the reset control register and leaves CONFIG_ADDRESS alone: SYS_RST is kept,
    // RST_CPU resets (edk2 writes 0x06).
    io.write(CONFIG_ADDRESS_OFFSET, &cf8(0, 1, 0, 0).to_le_bytes());
    assert_eq!(io.write(1, &[0x02]), None);
    let mut b = [0xaau8; 1];
    io.read(1, &mut b);
    assert_eq!(b, [0x02]);
    assert_eq!(io.write(1, &[0x06]), Some(MachineRequest::Reset));
    assert_eq!(io.write(1, &[0x04]), Some(MachineRequest::Reset));
    // Wider accesses are not the register.
    assert_eq!(io.write(1, &[0x06, 0x06]), None);
    assert_eq!(io.config_address(), cf8(0, 1, 0, 0));
}

#[test]
fn ecam_round_trip() {
    let (seg, _dev) = segment_with_device();
    let mut m = PciConfigMmio::new(seg);
    assert_eq!(ecam_read(&mut m, 0, 0, 0, 4), 0x0d57_8086);
    assert_eq!(ecam_read(&mut m, 1, 0, 0, 4), 0x1042_1af4);
    assert_eq!(ecam_read(&mut m, 1, 0, 1, 1), 0x1a);
    assert_eq!(ecam_read(&mut m, 1, 0, 2, 2), 0x1042);
    assert_eq!(ecam_read(&mut m, 1, 0, 0, 8), 0x0000_0000_1042_1af4);
    assert_eq!(ecam_read(&mut m, 2, 0, 0, 2), 0xffff);
    assert_eq!(ecam_read(&mut m, 1, 3, 0, 4), 0xffff_ffff);
    // Misaligned reads are all-ones; extended space of a present function reads zero.
    assert_eq!(ecam_read(&mut m, 1, 0, 1, 2), 0xffff);
    assert_eq!(ecam_read(&mut m, 1, 0, 0x100, 4), 0);
    // Beyond the 1 MiB window is another bus: absent.
    let mut b = [0u8; 4];
    m.read(PCI_MMIO_CONFIG_SIZE, &mut b);
    assert_eq!(b, [0xff; 4]);
    // Writes: interrupt line by byte, then read back by word.
    m.write((1 << 15) | 0x3c, &[0x0b]);
    assert_eq!(ecam_read(&mut m, 1, 0, 0x3c, 2), 0x000b);
}

/// Records every BAR move it is told of.
#[derive(Default)]
struct RecordingMapper(Mutex<Vec<(u8, usize, u64, u64)>>);

impl BarMapper for RecordingMapper {
    fn bar_moved(&self, device: u8, r: &BarReprogram) {
        self.0.lock().unwrap().push((device, r.bar, r.old, r.new));
    }
}

impl RecordingMapper {
    fn take(&self) -> Vec<(u8, usize, u64, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[test]
fn bar_moves_reach_the_mapper_during_the_write() {
    let (seg, dev) = segment_with_device();
    let mapper = Arc::new(RecordingMapper::default());
    seg.lock().unwrap().set_bar_mapper(mapper.clone());
    let mut m = PciConfigMmio::new(seg.clone());
    let bar0 = (1 << 15) | 0x10;
    // Sizing then restoring reports nothing.
    m.write(bar0, &0xffff_ffffu32.to_le_bytes());
    assert_eq!(ecam_read(&mut m, 1, 0, 0x10, 4), 0xffff_f000);
    m.write(bar0, &0xe000_0000u32.to_le_bytes());
    assert!(mapper.take().is_empty());
    // Each move is reported as it happens; a 64-bit move via one 8-byte ECAM write.
    m.write(bar0, &0xe100_0000u32.to_le_bytes());
    assert_eq!(mapper.take(), [(1, 0, 0xe000_0000, 0xe100_0000)]);
    m.write(bar0, &0xe200_0000u32.to_le_bytes());
    m.write((1 << 15) | 0x18, &0x3_0000_000cu64.to_le_bytes());
    assert_eq!(
        mapper.take(),
        [
            (1, 0, 0xe100_0000, 0xe200_0000),
            (1, 2, 0x1_0000_0000, 0x3_0000_0000)
        ]
    );
    assert_eq!(dev.lock().unwrap().bars()[0].addr, 0xe200_0000);
}

#[test]
fn segment_slots() {
    let mut seg = PciSegment::new();
    let d = || Arc::new(Mutex::new(TestDevice::new(1))) as Arc<Mutex<dyn PciDevice>>;
    assert_eq!(seg.add_device_at(0, d()), Err(PciError::InvalidDevice(0)));
    assert_eq!(seg.add_device_at(32, d()), Err(PciError::InvalidDevice(32)));
    seg.add_device_at(5, d()).unwrap();
    assert_eq!(seg.add_device_at(5, d()), Err(PciError::DeviceInUse(5)));
    for expect in (1..=31).filter(|&n| n != 5) {
        assert_eq!(seg.add_device(d()), Ok(expect));
    }
    assert_eq!(seg.add_device(d()), Err(PciError::BusFull));
    assert!(seg.device(0).is_some() && seg.device(31).is_some() && seg.device(32).is_none());
}

#[test]
fn bar_bus_device_routes_offsets() {
    let (seg, dev) = segment_with_device();
    let pci_dev = seg.lock().unwrap().device(1).unwrap();
    let bus = Bus::new();
    let bar = pci_dev.lock().unwrap().bars()[1];
    bus.insert(
        &crate::device_id::DeviceIds::default().add("bar2").unwrap(),
        Arc::new(Mutex::new(PciBarBusDevice::new(pci_dev, 2))),
        bar.addr,
        bar.size,
    )
    .unwrap();
    let mut b = [0u8; 2];
    bus.read(bar.addr + 0x33, &mut b).unwrap();
    assert_eq!(b, [0x33; 2]);
    bus.write(bar.addr + 0x10, &[1, 2, 3, 4]).unwrap();
    assert_eq!(
        dev.lock().unwrap().last_write,
        Some((2, 0x10, vec![1, 2, 3, 4]))
    );
}

#[test]
fn arbitrary_accesses_never_panic() {
    let (seg, _dev) = segment_with_device();
    let mut io = PciConfigIo::new(seg.clone());
    let mut mmio = PciConfigMmio::new(seg.clone());
    let addrs = [
        0,
        cf8(0, 0, 0, 0),
        cf8(0, 1, 0, 0x10),
        cf8(0, 1, 0, 0xfc),
        u32::MAX,
        cf8(0, 31, 7, 0xfc),
    ];
    for addr in addrs {
        io.write(CONFIG_ADDRESS_OFFSET, &addr.to_le_bytes());
        for off in (0..=16u64).chain([u64::MAX, u64::MAX - 3, 1 << 63]) {
            for len in 0..=8usize {
                let mut b = vec![0u8; len];
                io.read(off, &mut b);
                let _ = io.write(off, &vec![0xff; len]);
                let _ = io.write(off, &vec![0x00; len]);
            }
        }
    }
    let offsets = (0..0x110u64).chain((1 << 15)..(1 << 15) + 0x48).chain([
        0xf_fff8,
        0xf_ffff,
        PCI_MMIO_CONFIG_SIZE,
        u64::MAX,
        u64::MAX - 7,
    ]);
    for off in offsets {
        for len in 0..=8usize {
            let mut b = vec![0u8; len];
            mmio.read(off, &mut b);
            let _ = mmio.write(off, &vec![0xff; len]);
            let _ = mmio.write(off, &vec![0x5a; len]);
        }
    }
    // The IDs survived the barrage.
    assert_eq!(ecam_read(&mut mmio, 1, 0, 0, 4), 0x1042_1af4);
}
