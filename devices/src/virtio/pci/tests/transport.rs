//! Configuration space, capabilities, feature negotiation, queue setup, activation, reset,
//! notifications and hostile register accesses.

use super::*;

#[test]
fn ids_class_and_bar() {
    let mut h = Harness::new();
    assert_eq!(h.cfg_read(0, 4), 0x1042_1af4);
    assert_eq!(h.cfg_read(0x08, 1), 1, "revision 1");
    assert_eq!(h.cfg_read(0x09, 4) >> 8, 0x0180, "mass storage / other");
    assert_eq!(h.cfg_read(0x0e, 1), 0, "header type 0");
    assert_eq!(h.cfg_read(0x2c, 4), 0x1042_1af4, "subsystem IDs");
    assert_eq!(h.cfg_read(0x3d, 1), 1, "INTA#");
    assert_ne!(h.cfg_read(0x06, 2) & 0x10, 0, "capability list");
    assert_eq!(h.dev.device_type(), 2);

    // 64-bit non-prefetchable memory BAR 0 of 512 KiB.
    assert_eq!(h.cfg_read(0x10, 4), 0x4);
    h.cfg_write(0x10, 4, 0xffff_ffff);
    h.cfg_write(0x14, 4, 0xffff_ffff);
    assert_eq!(h.cfg_read(0x10, 4), 0xfff8_0004);
    assert_eq!(h.cfg_read(0x14, 4), 0xffff_ffff);
    assert_eq!(h.cfg_read(0x18, 4), 0, "no BAR 2");
    let bars = h.dev.bars();
    assert_eq!(bars.len(), 1);
    assert_eq!(bars[0].size, VIRTIO_PCI_BAR_SIZE);
    assert_eq!(bars[0].kind, crate::pci::config::BarKind::Memory64);

    let mut other = Harness::with(4, false);
    assert_eq!(other.cfg_read(0, 4), 0x1044_1af4);
    assert_eq!(other.cfg_read(0x09, 4) >> 8, 0xff00);
    assert_eq!(other.cfg_read(0x3d, 1), 0, "no interrupt pin without INTx");
}

#[test]
fn invalid_devices_are_refused() {
    let log = Arc::new(Mutex::new(DeviceLog::default()));
    let make = |device_type, sizes: Vec<u16>| FakeDevice {
        log: log.clone(),
        device_type,
        sizes,
        active: false,
    };
    let msi: Arc<dyn MsiInterrupt> = Arc::new(FakeMsi::default());
    let new = |d: FakeDevice| VirtioPciDevice::new(Box::new(d), guest_memory(), msi.clone(), None);
    assert!(matches!(
        new(make(0, vec![8])),
        Err(VirtioPciError::DeviceType(0))
    ));
    assert!(matches!(
        new(make(0x40, vec![8])),
        Err(VirtioPciError::DeviceType(0x40))
    ));
    assert!(matches!(
        new(make(2, vec![])),
        Err(VirtioPciError::QueueCount(0))
    ));
    assert!(matches!(
        new(make(2, vec![8; MAX_QUEUES + 1])),
        Err(VirtioPciError::QueueCount(_))
    ));
    assert!(matches!(
        new(make(2, vec![8, 12])),
        Err(VirtioPciError::QueueMaxSize { queue: 1, size: 12 })
    ));
    assert!(new(make(2, vec![8; MAX_QUEUES])).is_ok());
}

/// Walks the capability list: (offset, bytes of the capability, up to 20).
fn capabilities(h: &mut Harness) -> Vec<(u8, Vec<u8>)> {
    let mut caps = Vec::new();
    let mut at = h.cfg_read(0x34, 1) as u8;
    while at != 0 {
        assert!(caps.len() < 48, "capability loop");
        let bytes: Vec<u8> = (0..20)
            .map(|i| h.cfg_read(u32::from(at) + i, 1) as u8)
            .collect();
        let next = bytes[1];
        caps.push((at, bytes));
        at = next;
    }
    caps
}

fn dword(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

#[test]
fn capability_chain() {
    let mut h = Harness::new();
    let caps = capabilities(&mut h);
    let vendor: Vec<_> = caps.iter().filter(|(_, b)| b[0] == 0x09).collect();
    assert_eq!(vendor.len(), 4);
    let expected = [
        (1u8, COMMON_CFG_OFFSET, COMMON_CFG_LEN, 16u8),
        (2, NOTIFY_OFFSET, 4 * FAKE_SIZES.len() as u64, 20),
        (3, ISR_CFG_OFFSET, 1, 16),
        (4, DEVICE_CFG_OFFSET, 0x1000, 16),
    ];
    for (cfg_type, offset, length, cap_len) in expected {
        let (_, b) = vendor
            .iter()
            .find(|(_, b)| b[3] == cfg_type)
            .unwrap_or_else(|| panic!("no capability of type {cfg_type}"));
        assert_eq!(b[2], cap_len, "cap_len of type {cfg_type}");
        assert_eq!(b[4], 0, "BAR of type {cfg_type}");
        assert_eq!(u64::from(dword(b, 8)), offset, "offset of type {cfg_type}");
        assert_eq!(u64::from(dword(b, 12)), length, "length of type {cfg_type}");
    }
    let (_, notify) = vendor.iter().find(|(_, b)| b[3] == 2).unwrap();
    assert_eq!(dword(notify, 16), 4, "notify_off_multiplier");
    assert_eq!(COMMON_CFG_OFFSET, 0);
    assert_eq!(ISR_CFG_OFFSET, 0x1000);
    assert_eq!(DEVICE_CFG_OFFSET, 0x2000);
    assert_eq!(NOTIFY_OFFSET, 0x3000);

    let (msix_at, msix) = caps.iter().find(|(_, b)| b[0] == 0x11).unwrap();
    assert_eq!(*msix_at, h.dev.cap_offsets().msix);
    assert_eq!(
        u16::from_le_bytes([msix[2], msix[3]]) & 0x7ff,
        2,
        "3 vectors"
    );
    assert_eq!(dword(msix, 4), MSIX_TABLE_OFFSET as u32, "table in BAR 0");
    assert_eq!(dword(msix, 8), MSIX_PBA_OFFSET as u32, "PBA in BAR 0");
    let offsets = h.dev.cap_offsets();
    let found: Vec<u8> = caps.iter().map(|(at, _)| *at).collect();
    assert_eq!(
        found,
        vec![
            offsets.common,
            offsets.notify,
            offsets.isr,
            offsets.device,
            offsets.msix
        ]
    );

    // Capability bytes are read-only, apart from the MSI-X enable / function-mask bits.
    let before = capabilities(&mut h);
    for (at, _) in &before {
        for dw in (u32::from(*at)..u32::from(*at) + 20).step_by(4) {
            if dw != u32::from(*msix_at) {
                h.cfg_write(dw, 4, 0xffff_ffff);
                h.cfg_write(dw, 1, 0);
            }
        }
    }
    assert_eq!(capabilities(&mut h), before);
    h.cfg_write(u32::from(*msix_at), 4, 0xffff_ffff);
    assert_eq!(h.cfg_read(u32::from(*msix_at), 4), 0xc002_0011);
}

#[test]
fn feature_negotiation_across_both_halves() {
    let mut h = Harness::new();
    assert_eq!(h.device_features(), FAKE_FEATURES);
    h.write(DEVICE_FEATURE_SELECT, 4, 2);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 0, "select 2 is empty");
    assert_eq!(h.read(DEVICE_FEATURE_SELECT, 4), 2);

    let wanted = VERSION_1 | (1 << 35);
    assert_eq!(h.negotiate(wanted), 0x0b);
    assert_eq!(h.log.lock().unwrap().acked, vec![wanted]);
    // The driver's features read back per half, and are frozen after FEATURES_OK.
    h.write(DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 0x9);
    h.write(DRIVER_FEATURE, 4, 0);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 0x9);
    h.write(DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 0);
}

#[test]
fn features_ok_refused_without_version_1_or_with_unoffered_bits() {
    let mut h = Harness::new();
    assert_eq!(h.negotiate(1 << 3), 0x03, "FEATURES_OK reads back clear");
    h.set_status(0x0f);
    assert_eq!(h.status() & STATUS_DRIVER_OK, 0);
    assert!(h.log.lock().unwrap().acked.is_empty());
    assert!(h.log.lock().unwrap().activations.is_empty());

    h.set_status(0);
    assert_eq!(
        h.negotiate(VERSION_1 | (1 << 4)),
        0x03,
        "bit 4 was not offered"
    );
    // The driver may retry with an acceptable set.
    h.write_features(VERSION_1);
    h.set_status(0x0b);
    assert_eq!(h.status(), 0x0b);
    assert_eq!(h.log.lock().unwrap().acked, vec![VERSION_1]);
}

#[test]
fn queue_setup_and_driver_ok_activate() {
    let mut h = Harness::new();
    assert_eq!(h.read(NUM_QUEUES, 2), 2);
    for (q, &max) in FAKE_SIZES.iter().enumerate() {
        h.write(QUEUE_SELECT, 2, q as u64);
        assert_eq!(h.read(QUEUE_SIZE, 2), u64::from(max));
        assert_eq!(h.read(QUEUE_NOTIFY_OFF, 2), q as u64);
        assert_eq!(h.read(QUEUE_ENABLE, 2), 0);
        assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 0xffff);
    }
    // Above the maximum is ignored; a full 64-bit write works too.
    h.write(QUEUE_SELECT, 2, 1);
    h.write(QUEUE_SIZE, 2, 128);
    assert_eq!(h.read(QUEUE_SIZE, 2), 64);
    h.write(QUEUE_DESC, 8, 0x1234_5678_9abc_def0);
    assert_eq!(h.read(QUEUE_DESC, 8), 0x1234_5678_9abc_def0);
    assert_eq!(h.read(QUEUE_DESC + 4, 4), 0x1234_5678);
    assert_eq!(h.read(QUEUE_DESC, 4), 0x9abc_def0);

    assert_eq!(h.bring_up(), 0x0f);
    assert!(h.dev.is_activated());
    let log = h.log.lock().unwrap();
    assert_eq!(log.activations.len(), 1);
    assert_eq!(
        log.activations[0],
        vec![
            ActivatedQueue {
                size: 128,
                desc: 0x1_0000,
                avail: 0x1_1000,
                used: 0x1_2000,
                ready: true,
                position: (0, 0),
            },
            ActivatedQueue {
                size: 64,
                desc: 0x2_0000,
                avail: 0x2_1000,
                used: 0x2_2000,
                ready: true,
                position: (0, 0),
            },
        ]
    );
    drop(log);
    // Live queues are frozen.
    h.write(QUEUE_SELECT, 2, 0);
    h.write(QUEUE_SIZE, 2, 16);
    h.write(QUEUE_DESC, 4, 0x5000);
    assert_eq!(h.read(QUEUE_SIZE, 2), 128);
    assert_eq!(h.read(QUEUE_DESC, 4), 0x1_0000);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 1);
    // Status cannot move backwards.
    h.set_status(STATUS_ACKNOWLEDGE);
    assert_eq!(h.status(), 0x0f);
}

#[test]
fn only_enabled_prefix_is_activated() {
    let mut h = Harness::new();
    assert_eq!(h.negotiate(FAKE_FEATURES), 0x0b);
    h.setup_queue(0, 256, 0x1_0000);
    h.set_status(0x0f);
    assert_eq!(h.status(), 0x0f);
    assert_eq!(h.log.lock().unwrap().activations[0].len(), 1);
}

#[test]
fn bad_queue_configuration_needs_reset() {
    // Queue 1 enabled without queue 0, a non-power-of-two size, rings outside memory.
    let cases: [&dyn Fn(&mut Harness); 3] = [
        &|h| h.setup_queue(1, 64, 0x2_0000),
        &|h| h.setup_queue(0, 100, 0x1_0000),
        &|h| h.setup_queue(0, 256, MEM_SIZE as u64),
    ];
    for setup in cases {
        let mut h = Harness::new();
        h.enable_msix();
        h.write(CONFIG_MSIX_VECTOR, 2, 2);
        h.msi.triggers();
        assert_eq!(h.negotiate(FAKE_FEATURES), 0x0b);
        setup(&mut h);
        h.set_status(0x0f);
        assert_eq!(h.status(), 0x4f, "DEVICE_NEEDS_RESET");
        assert!(h.log.lock().unwrap().activations.is_empty());
        assert!(!h.dev.is_activated());
        assert_eq!(h.msi.triggers(), vec![2], "configuration change notified");
    }
}

#[test]
fn a_device_asking_for_reset_shows_device_needs_reset_until_reset() {
    let mut h = Harness::new();
    h.enable_msix();
    h.write(CONFIG_MSIX_VECTOR, 2, 2);
    assert_eq!(h.bring_up(), 0x0f);
    h.msi.triggers();
    let irq = h.device_interrupt();
    irq.needs_reset().unwrap();
    // Asked again before the driver reacted: no second notification.
    irq.needs_reset().unwrap();
    assert_eq!(h.status(), 0x4f, "DEVICE_NEEDS_RESET read by the driver");
    assert_eq!(
        h.msi.triggers(),
        vec![2],
        "one configuration change notified"
    );
    // The driver writes back what it read: the bit stays until the reset.
    h.set_status(0x4f);
    assert_eq!(h.status(), 0x4f);
    h.set_status(0);
    assert_eq!(h.status(), 0);
    assert_eq!(h.bring_up(), 0x0f, "the device works again after the reset");
}

#[test]
fn failed_activation_then_reset_works() {
    let mut h = Harness::new();
    h.log.lock().unwrap().fail_next_activate = true;
    assert_eq!(h.bring_up(), 0x4f);
    assert!(!h.dev.is_activated());
    // The driver writes back what it read, including DEVICE_NEEDS_RESET: ignored.
    h.set_status(0x4f);
    assert_eq!(h.status(), 0x4f);
    h.set_status(0);
    assert_eq!(h.status(), 0);
    assert_eq!(h.log.lock().unwrap().resets, 1);
    assert_eq!(h.bring_up(), 0x0f);
    assert!(h.dev.is_activated());
    assert_eq!(h.log.lock().unwrap().activations.len(), 1);
}

#[test]
fn reset_restores_defaults() {
    let mut h = Harness::new();
    h.enable_msix();
    h.write(CONFIG_MSIX_VECTOR, 2, 2);
    h.write(QUEUE_SELECT, 2, 1);
    h.write(QUEUE_MSIX_VECTOR, 2, 1);
    assert_eq!(h.bring_up(), 0x0f);
    h.dev.interrupt().trigger_config().unwrap();
    h.write(DEVICE_FEATURE_SELECT, 4, 1);
    h.write(QUEUE_SELECT, 2, 1);
    h.dev.bar_write(0, NOTIFY_OFFSET, &0u16.to_le_bytes());

    h.set_status(0);
    assert_eq!(h.log.lock().unwrap().resets, 1);
    assert!(!h.dev.is_activated());
    assert_eq!(h.status(), 0);
    assert_eq!(h.read(DEVICE_FEATURE_SELECT, 4), 0);
    assert_eq!(h.read(QUEUE_SELECT, 2), 0);
    assert_eq!(h.read(CONFIG_MSIX_VECTOR, 2), 0xffff);
    assert_eq!(h.read(ISR_CFG_OFFSET, 1), 0);
    for (q, &max) in FAKE_SIZES.iter().enumerate() {
        h.write(QUEUE_SELECT, 2, q as u64);
        assert_eq!(h.read(QUEUE_SIZE, 2), u64::from(max));
        assert_eq!(h.read(QUEUE_ENABLE, 2), 0);
        assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 0xffff);
        for reg in [QUEUE_DESC, QUEUE_DRIVER, QUEUE_DEVICE] {
            assert_eq!(h.read(reg, 8), 0);
        }
    }
    h.write(DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 0);
    // The stale kick was drained.
    assert_eq!(eventfd_count(h.dev.notify_eventfds()[0].1), None);
    assert_eq!(h.dev.interrupt().queue_vector(1), NO_VECTOR);
    // MSI-X itself is PCI state and survives a virtio reset.
    let ctl = u32::from(h.dev.cap_offsets().msix) + 2;
    assert_eq!(h.cfg_read(ctl, 2) & 0x8000, 0x8000);
    // A second cycle activates again.
    assert_eq!(h.bring_up(), 0x0f);
    assert_eq!(h.log.lock().unwrap().activations.len(), 2);
}

#[test]
fn notify_writes_signal_kick_eventfds() {
    let mut h = Harness::new();
    let offsets: Vec<u64> = h.dev.notify_eventfds().iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, vec![0x3000, 0x3004]);
    // Before activation the fallback path already signals the VMM-visible eventfd.
    h.dev.bar_write(0, 0x3004, &1u16.to_le_bytes());
    assert_eq!(eventfd_count(h.dev.notify_eventfds()[1].1), Some(1));
    assert_eq!(eventfd_count(h.dev.notify_eventfds()[0].1), None);

    assert_eq!(h.bring_up(), 0x0f);
    // The device got duplicates of the same eventfds.
    for q in 0..2u64 {
        h.dev
            .bar_write(0, 0x3000 + 4 * q, &(q as u16).to_le_bytes());
        let log = h.log.lock().unwrap();
        assert_eq!(eventfd_count(&log.kicks[q as usize]), Some(1), "queue {q}");
        assert_eq!(eventfd_count(&log.kicks[1 - q as usize]), None);
    }
    // Unaligned, out-of-range and odd-sized notifications signal nothing.
    for (offset, len) in [(0x3002u64, 2usize), (0x3008, 2), (0x3000, 3), (0x3000, 8)] {
        h.dev.bar_write(0, offset, &vec![0; len]);
    }
    let log = h.log.lock().unwrap();
    assert!(log.kicks.iter().all(|k| eventfd_count(k).is_none()));
}

#[test]
fn device_config_window_and_generation() {
    let mut h = Harness::new();
    assert_eq!(h.read(DEVICE_CFG_OFFSET, 4), 0x1312_1110);
    assert_eq!(h.read(DEVICE_CFG_OFFSET + 4, 8), 0x1716_1514);
    assert_eq!(h.read(DEVICE_CFG_OFFSET + 6, 2), 0x1716);
    assert_eq!(h.read(DEVICE_CFG_OFFSET + 3, 3), 0, "odd sizes read 0");
    h.write(DEVICE_CFG_OFFSET + 2, 2, 0xbeef);
    h.write(DEVICE_CFG_OFFSET + 2, 3, 0xbeef);
    assert_eq!(
        h.log.lock().unwrap().config_writes,
        vec![(2, vec![0xef, 0xbe])]
    );
    let generation = h.read(CONFIG_GENERATION, 1);
    h.dev.interrupt().trigger_config().unwrap();
    assert_eq!(h.read(CONFIG_GENERATION, 1), generation + 1);
}

#[test]
fn set_bar_address_moves_bar_0() {
    let mut h = Harness::new();
    h.dev.set_bar_address(0, 0x1_0008_0000).unwrap();
    assert_eq!(h.dev.bars()[0].addr, 0x1_0008_0000);
    assert_eq!(h.cfg_read(0x10, 4), 0x0008_0004);
    assert_eq!(h.cfg_read(0x14, 4), 1);
    assert!(matches!(
        h.dev.set_bar_address(1, 0),
        Err(VirtioPciError::BarIndex(1))
    ));
    assert!(matches!(
        h.dev.set_bar_address(0, 0x1000),
        Err(VirtioPciError::BarAddress(0x1000))
    ));
    assert_eq!(h.dev.bars()[0].addr, 0x1_0008_0000);
    // A guest move is reported by config_write.
    h.cfg_write(0x10, 4, 0xe000_0000);
    let moved = h.cfg_write(0x14, 4, 0).unwrap();
    assert_eq!((moved.old, moved.new), (0x1_0008_0000, 0xe000_0000));
    assert_eq!(h.dev.bars()[0].addr, 0xe000_0000);
}

#[test]
fn hostile_accesses_never_panic() {
    let mut h = Harness::new();
    h.enable_msix();
    // 8-byte accesses to 4-byte fields, 4-byte accesses to 2-byte fields read 0 / are ignored.
    assert_eq!(h.read(DEVICE_FEATURE, 8), 0);
    assert_eq!(h.read(NUM_QUEUES, 4), 0);
    h.write(QUEUE_SELECT, 4, 1);
    assert_eq!(h.read(QUEUE_SELECT, 2), 0);
    assert_eq!(h.read(QUEUE_DESC + 2, 4), 0, "unaligned half");
    assert_eq!(h.read(DEVICE_STATUS, 2), 0);
    // A huge queue_select: queue fields read 0 (vector NO_VECTOR), writes go nowhere.
    h.write(QUEUE_SELECT, 2, 0xffff);
    for reg in [QUEUE_SIZE, QUEUE_ENABLE, QUEUE_NOTIFY_OFF] {
        h.write(reg, 2, 1);
        assert_eq!(h.read(reg, 2), 0);
    }
    h.write(QUEUE_MSIX_VECTOR, 2, 0);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 0xffff);
    h.write(QUEUE_DESC, 8, 0x1000);
    assert_eq!(h.read(QUEUE_DESC, 8), 0);

    let offsets = [
        0u64,
        0x37,
        0x38,
        0xfff,
        0x1000,
        0x1001,
        0x1fff,
        0x2ffc,
        0x2fff,
        0x3000,
        0x3ffe,
        0x3_fffc,
        0x4_0000,
        0x4_002c,
        0x4_0030,
        0x5_fff8,
        0x6_0000,
        0x6_0008,
        0x7_fffc,
        0x7_ffff,
        0x8_0000,
        u64::MAX - 3,
        u64::MAX,
    ];
    for off in offsets.into_iter().chain(0..0x40) {
        for len in 0..=9usize {
            for bar in [0usize, 1, 5, 6, usize::MAX] {
                let mut b = vec![0u8; len];
                h.dev.bar_read(bar, off, &mut b);
                h.dev.bar_write(bar, off, &vec![0xa5; len]);
            }
        }
    }
    for off in (0..0x1000u32).chain([u32::MAX - 1, u32::MAX]) {
        for len in [0usize, 1, 2, 3, 4, 8] {
            let mut b = vec![0u8; len];
            h.dev.config_read(off, &mut b);
        }
    }
    // Still a working device afterwards.
    h.set_status(0);
    assert_eq!(h.bring_up(), 0x0f);
}
