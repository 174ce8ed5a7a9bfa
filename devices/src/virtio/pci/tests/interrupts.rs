//! Interrupt delivery through the transport: MSI-X vectors, masking and the PBA, the INTx
//! fallback with the ISR byte, and vector validation.

use super::*;

const PBA: u64 = MSIX_PBA_OFFSET;

/// Vector control dword of table entry `v`.
fn vector_ctrl(v: u64) -> u64 {
    MSIX_TABLE_OFFSET + 16 * v + 12
}

/// MSI-X on, queue 0 on vector 1, config on vector 0, device live.
fn live_with_msix() -> (Harness, Arc<dyn VirtioInterrupt>) {
    let mut h = Harness::new();
    h.enable_msix();
    h.write(CONFIG_MSIX_VECTOR, 2, 0);
    h.write(QUEUE_SELECT, 2, 0);
    h.write(QUEUE_MSIX_VECTOR, 2, 1);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 1);
    assert_eq!(h.read(CONFIG_MSIX_VECTOR, 2), 0);
    assert_eq!(h.bring_up(), 0x0f);
    h.msi.triggers();
    let irq = h.device_interrupt();
    (h, irq)
}

#[test]
fn msix_enabled_unmasked_triggers_the_queue_vector() {
    let (mut h, irq) = live_with_msix();
    irq.trigger_queue(0).unwrap();
    assert_eq!(h.msi.triggers(), vec![1]);
    irq.trigger_queue(1).unwrap();
    assert!(h.msi.triggers().is_empty(), "queue 1 has NO_VECTOR");
    irq.trigger_queue(7).unwrap();
    assert!(h.msi.triggers().is_empty(), "no such queue");
    irq.trigger_config().unwrap();
    assert_eq!(h.msi.triggers(), vec![0]);
    assert_eq!(h.intx.count.load(Ordering::SeqCst), 0);
    assert_eq!(
        h.read(ISR_CFG_OFFSET, 1),
        u64::from(ISR_CONFIG),
        "only the config bit is used with MSI-X"
    );
    // The vCPU reassigns a vector while the device is live; the dataplane follows.
    h.write(QUEUE_SELECT, 2, 1);
    h.write(QUEUE_MSIX_VECTOR, 2, 2);
    irq.trigger_queue(1).unwrap();
    assert_eq!(h.msi.triggers(), vec![2]);
    // The route updates carried the programmed messages.
    let ups = h.msi.updates();
    assert!(ups
        .iter()
        .any(|&(v, m, masked)| v == 1 && m.addr == 0xfee0_0000 && m.data == 0x31 && !masked));
}

#[test]
fn masked_vector_pends_and_is_delivered_once_on_unmask() {
    let (mut h, irq) = live_with_msix();
    h.write(vector_ctrl(1), 4, 1);
    irq.trigger_queue(0).unwrap();
    irq.trigger_queue(0).unwrap();
    assert!(h.msi.triggers().is_empty());
    assert_eq!(h.read(PBA, 8), 0b10);
    assert_eq!(h.read(PBA, 4), 0b10);
    h.write(vector_ctrl(1), 4, 0);
    assert_eq!(h.msi.triggers(), vec![1]);
    assert_eq!(h.read(PBA, 8), 0);
    h.write(vector_ctrl(1), 4, 1);
    h.write(vector_ctrl(1), 4, 0);
    assert!(h.msi.triggers().is_empty(), "delivered once only");

    // The function mask pends too, and clearing it delivers.
    let ctl = u32::from(h.dev.cap_offsets().msix) + 2;
    h.cfg_write(ctl, 2, 0xc000);
    irq.trigger_queue(0).unwrap();
    assert!(h.msi.triggers().is_empty());
    assert_eq!(h.read(PBA, 8), 0b10);
    h.cfg_write(ctl, 2, 0x8000);
    assert_eq!(h.msi.triggers(), vec![1]);
    assert_eq!(h.read(PBA, 8), 0);
}

#[test]
fn msix_disabled_uses_isr_and_intx() {
    let mut h = Harness::new();
    assert_eq!(h.bring_up(), 0x0f);
    let irq = h.device_interrupt();
    irq.trigger_queue(0).unwrap();
    assert_eq!(h.intx.count.load(Ordering::SeqCst), 1);
    assert!(h.msi.triggers().is_empty());
    assert_eq!(h.dev.interrupt().isr(), ISR_QUEUE);
    // Wrong-width ISR reads return 0 and do not acknowledge.
    assert_eq!(h.read(ISR_CFG_OFFSET, 4), 0);
    assert_eq!(h.read(ISR_CFG_OFFSET + 1, 1), 0);
    assert_eq!(h.read(ISR_CFG_OFFSET, 1), 1);
    assert_eq!(h.read(ISR_CFG_OFFSET, 1), 0, "reading clears");

    let generation = h.read(CONFIG_GENERATION, 1);
    irq.trigger_config().unwrap();
    irq.trigger_queue(1).unwrap();
    assert_eq!(h.intx.count.load(Ordering::SeqCst), 3);
    assert_eq!(h.read(CONFIG_GENERATION, 1), generation + 1);
    assert_eq!(h.read(ISR_CFG_OFFSET, 1), 3);
    assert_eq!(h.read(ISR_CFG_OFFSET, 1), 0);

    // Interrupt Disable in the command register: ISR only.
    h.cfg_write(0x04, 2, 0x0406);
    irq.trigger_queue(0).unwrap();
    assert_eq!(h.intx.count.load(Ordering::SeqCst), 3);
    assert_eq!(h.read(ISR_CFG_OFFSET, 1), 1);
    h.cfg_write(0x04, 2, 0x0006);
    irq.trigger_queue(0).unwrap();
    assert_eq!(h.intx.count.load(Ordering::SeqCst), 4);

    // No INTx line at all: the ISR is still maintained.
    let mut bare = Harness::with(2, false);
    assert_eq!(bare.bring_up(), 0x0f);
    bare.device_interrupt().trigger_queue(0).unwrap();
    assert_eq!(bare.read(ISR_CFG_OFFSET, 1), 1);
}

#[test]
fn out_of_range_vectors_read_back_no_vector() {
    let mut h = Harness::new();
    // Three vectors: 0..=2.
    for (written, expected) in [(2u64, 2u64), (3, 0xffff), (0x7ff, 0xffff), (0xffff, 0xffff)] {
        h.write(CONFIG_MSIX_VECTOR, 2, written);
        assert_eq!(h.read(CONFIG_MSIX_VECTOR, 2), expected, "config {written}");
        h.write(QUEUE_SELECT, 2, 1);
        h.write(QUEUE_MSIX_VECTOR, 2, written);
        assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), expected, "queue {written}");
    }
    h.enable_msix();
    h.write(QUEUE_SELECT, 2, 0);
    h.write(QUEUE_MSIX_VECTOR, 2, 9);
    assert_eq!(h.bring_up(), 0x0f);
    h.msi.triggers();
    h.device_interrupt().trigger_queue(0).unwrap();
    assert!(h.msi.triggers().is_empty());
    assert_eq!(h.intx.count.load(Ordering::SeqCst), 0);
}

#[test]
fn dataplane_thread_races_with_vcpu_masking() {
    const TRIGGERS: usize = 5_000;
    let (mut h, irq) = live_with_msix();
    let worker = std::thread::spawn(move || {
        for _ in 0..TRIGGERS {
            irq.trigger_queue(0).unwrap();
        }
    });
    while !worker.is_finished() {
        h.write(vector_ctrl(1), 4, 1);
        h.write(vector_ctrl(1), 4, 0);
    }
    worker.join().unwrap();
    h.write(vector_ctrl(1), 4, 1);
    h.write(vector_ctrl(1), 4, 0);
    assert_eq!(h.read(PBA, 8), 0, "nothing stranded in the PBA");
    let delivered = h.msi.triggers();
    assert!(!delivered.is_empty() && delivered.len() <= TRIGGERS);
    assert!(delivered.iter().all(|&v| v == 1));
}
