//! Unit tests of the configuration space: registers, masks, BAR sizing and moves, capabilities.

use super::*;

fn cfg() -> PciConfiguration {
    let class = PciClassCode {
        class: 0x02,
        subclass: 0x00,
        prog_if: 0x00,
    };
    PciConfiguration::new(0x1af4, 0x1041, class)
}

fn bar(index: usize, addr: u64, size: u64, kind: BarKind, prefetchable: bool) -> BarInfo {
    BarInfo {
        index,
        addr,
        size,
        kind,
        prefetchable,
    }
}

fn rd32(c: &PciConfiguration, off: u32) -> u32 {
    let mut b = [0u8; 4];
    c.read_config(off, &mut b);
    u32::from_le_bytes(b)
}

fn wr32(c: &mut PciConfiguration, off: u32, v: u32) -> Option<BarReprogram> {
    c.write_config(off, &v.to_le_bytes())
}

#[test]
fn ids_and_class() {
    let mut c = cfg();
    c.set_revision(1);
    c.set_subsystem(0x1af4, 0x0001);
    assert_eq!(rd32(&c, 0), 0x1041_1af4);
    assert_eq!(rd32(&c, 8), 0x0200_0001);
    assert_eq!(rd32(&c, 0x2c), 0x0001_1af4);
    assert_eq!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
}

#[test]
fn read_only_registers_ignore_writes() {
    let mut c = cfg();
    c.set_interrupt_pin(1).unwrap();
    for off in [0u32, 8, 0x0c, 0x2c, 0x30, 0x34] {
        let before = rd32(&c, off);
        wr32(&mut c, off, 0xdead_beef);
        if off == 0x0c {
            // Only the cache line size byte is writable.
            assert_eq!(rd32(&c, off), (before & !0xff) | 0xef);
        } else {
            assert_eq!(rd32(&c, off), before, "{off:#x}");
        }
    }
    // Command: only the defined bits stick; status is read-only.
    wr32(&mut c, 4, 0xffff_ffff);
    assert_eq!(rd32(&c, 4), 0x0000_0547);
    // Interrupt line writable, pin not.
    c.write_config(0x3c, &[0x0b, 0x04]);
    assert_eq!(c.read_u16(0x3c), 0x010b);
    assert_eq!(c.interrupt_line(), 0x0b);
    // Unused BARs are read-only zero.
    wr32(&mut c, 0x10, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x10), 0);
}

#[test]
fn bar_sizing_32bit_memory() {
    let mut c = cfg();
    c.add_bar(bar(0, 0xe000_0000, 0x1000, BarKind::Memory32, false))
        .unwrap();
    assert_eq!(rd32(&c, 0x10), 0xe000_0000);
    assert_eq!(wr32(&mut c, 0x10, 0xffff_ffff), None);
    assert_eq!(rd32(&c, 0x10), 0xffff_f000);
    // Restoring is not a move.
    assert_eq!(wr32(&mut c, 0x10, 0xe000_0000), None);
    assert_eq!(
        wr32(&mut c, 0x10, 0xe010_0000),
        Some(BarReprogram {
            bar: 0,
            old: 0xe000_0000,
            new: 0xe010_0000,
            len: 0x1000,
            kind: BarKind::Memory32
        })
    );
    assert_eq!(c.bars()[0].addr, 0xe010_0000);
    // Low bits below the size cannot be set.
    wr32(&mut c, 0x10, 0xe010_0abc);
    assert_eq!(rd32(&c, 0x10), 0xe010_0000);
}

#[test]
fn bar_sizing_prefetchable_64bit_memory() {
    let mut c = cfg();
    c.add_bar(bar(2, 0x1_0000_0000, 0x4000, BarKind::Memory64, true))
        .unwrap();
    assert_eq!(rd32(&c, 0x18), 0x0000_000c);
    assert_eq!(rd32(&c, 0x1c), 0x1);
    // Linux-style sizing: low then high, each restored.
    assert_eq!(wr32(&mut c, 0x18, 0xffff_ffff), None);
    assert_eq!(rd32(&c, 0x18), 0xffff_c00c);
    assert_eq!(wr32(&mut c, 0x18, 0x0000_000c), None);
    assert_eq!(wr32(&mut c, 0x1c, 0xffff_ffff), None);
    assert_eq!(rd32(&c, 0x1c), 0xffff_ffff);
    assert_eq!(wr32(&mut c, 0x1c, 0x1), None);
    // A move is reported once, on the high dword.
    assert_eq!(wr32(&mut c, 0x18, 0x8000_0000), None);
    let r = wr32(&mut c, 0x1c, 0x2).unwrap();
    assert_eq!(
        (r.bar, r.old, r.new, r.len),
        (2, 0x1_0000_0000, 0x2_8000_0000, 0x4000)
    );
    assert_eq!(r.kind, BarKind::Memory64);
    // Big 64-bit BARs mask the high dword too.
    let mut c = cfg();
    c.add_bar(bar(0, 0x40_0000_0000, 1 << 36, BarKind::Memory64, false))
        .unwrap();
    wr32(&mut c, 0x10, 0xffff_ffff);
    wr32(&mut c, 0x14, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x10), 0x0000_0004);
    assert_eq!(rd32(&c, 0x14), 0xffff_fff0);
    assert_eq!(
        c.add_bar(bar(1, 0, 0x1000, BarKind::Memory32, false)),
        Err(ConfigError::BarInUse(1))
    );
}

#[test]
fn bar_sizing_io() {
    let mut c = cfg();
    c.add_bar(bar(5, 0xc040, 0x20, BarKind::Io, true)).unwrap();
    assert_eq!(rd32(&c, 0x24), 0xc041);
    wr32(&mut c, 0x24, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x24), 0xffff_ffe1);
    let r = wr32(&mut c, 0x24, 0xc081).unwrap();
    assert_eq!((r.old, r.new, r.kind), (0xc040, 0xc080, BarKind::Io));
    assert!(!c.bars()[0].prefetchable);
}

#[test]
fn bar_validation() {
    let mut c = cfg();
    let e = |size, kind| Err(ConfigError::BarSize { size, kind });
    assert_eq!(
        c.add_bar(bar(0, 0, 0x3000, BarKind::Memory32, false)),
        e(0x3000, BarKind::Memory32)
    );
    assert_eq!(
        c.add_bar(bar(0, 0, 8, BarKind::Memory32, false)),
        e(8, BarKind::Memory32)
    );
    assert_eq!(
        c.add_bar(bar(0, 0, 512, BarKind::Io, false)),
        e(512, BarKind::Io)
    );
    assert_eq!(
        c.add_bar(bar(0, 0x800, 0x1000, BarKind::Memory32, false)),
        Err(ConfigError::BarAddress {
            addr: 0x800,
            size: 0x1000
        })
    );
    assert_eq!(
        c.add_bar(bar(0, 1 << 32, 0x1000, BarKind::Memory32, false)),
        Err(ConfigError::BarAddress {
            addr: 1 << 32,
            size: 0x1000
        })
    );
    assert_eq!(
        c.add_bar(bar(5, 0, 0x1000, BarKind::Memory64, false)),
        Err(ConfigError::BarIndex(5))
    );
    assert_eq!(
        c.add_bar(bar(6, 0, 0x1000, BarKind::Memory32, false)),
        Err(ConfigError::BarIndex(6))
    );
    c.add_bar(bar(0, 0, 0x1000, BarKind::Memory32, false))
        .unwrap();
    assert_eq!(
        c.add_bar(bar(0, 0, 0x1000, BarKind::Memory32, false)),
        Err(ConfigError::BarInUse(0))
    );
    assert_eq!(c.set_interrupt_pin(5), Err(ConfigError::InterruptPin(5)));
}

#[test]
fn capability_chain_walk() {
    let mut c = cfg();
    assert_eq!(c.add_capability(&[0x09, 0xff, 1, 2, 3]).unwrap(), 0x40);
    assert_eq!(
        c.add_capability(&[0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .unwrap(),
        0x48
    );
    assert_eq!(
        c.add_capability_with_mask(&[0x05, 0, 0xaa, 0], &[0xff, 0xff, 0x0f, 0])
            .unwrap(),
        0x54
    );
    assert_ne!(c.read_u16(STATUS) & STATUS_CAPABILITIES_LIST, 0);
    let mut found = Vec::new();
    let mut ptr = usize::from(c.read_u16(CAPABILITIES_POINTER) as u8);
    while ptr != 0 && found.len() < 48 {
        assert_eq!(ptr % 4, 0);
        let id_next = c.read_u16(ptr);
        found.push(((id_next & 0xff) as u8, ptr));
        ptr = usize::from((id_next >> 8) as u8);
    }
    assert_eq!(found, vec![(0x09, 0x40), (0x11, 0x48), (0x05, 0x54)]);
    assert_eq!(c.read_u32(0x40 + 2) & 0xffff, 0x0201);
    // ID and next pointer are read-only even if the mask says otherwise; the mask applies.
    wr32(&mut c, 0x54, 0xffff_ffff);
    assert_eq!(rd32(&c, 0x54), 0x000f_0005 | 0xa0_0000);
    // Bounded: fill the space.
    let big = [0x09u8; 180];
    assert_eq!(
        c.add_capability(&big),
        Err(ConfigError::CapabilitySpace(180))
    );
    assert_eq!(
        c.add_capability(&[0x09]),
        Err(ConfigError::CapabilityLength(1))
    );
    assert_eq!(
        c.add_capability(&[0u8; 200]),
        Err(ConfigError::CapabilityLength(200))
    );
    assert!(matches!(
        c.add_capability_with_mask(&[1, 2], &[0]),
        Err(ConfigError::CapabilityMask { .. })
    ));
}

#[test]
fn arbitrary_accesses_never_panic() {
    let mut c = cfg();
    c.add_bar(bar(0, 0xe000_0000, 0x1000, BarKind::Memory64, false))
        .unwrap();
    for off in (0..300u32).chain([u32::MAX, u32::MAX - 3]) {
        for len in 0..=8usize {
            let mut b = vec![0u8; len];
            c.read_config(off, &mut b);
            let _ = c.write_config(off, &vec![0xffu8; len]);
            let _ = c.write_config(off, &vec![0x5au8; len]);
        }
    }
    assert_eq!(c.read_u16(VENDOR_ID), 0x1af4);
}
