//! Unit tests of MSI-X: capability layout, table/PBA accesses, masking and delivery.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// A closure run once at an interleaving point.
pub(super) type Hook = Mutex<Option<Box<dyn FnOnce() + Send>>>;

/// Interleaving points inside the lock-free paths, so a test can run the other side of a race
/// at the worst moment.
#[derive(Default)]
pub(super) struct RaceHooks {
    /// In `notify`, after the masks were seen set and before the pending bit is published.
    pub before_pend: Hook,
    /// On the unmask paths, after the unmask is published and before the pending bit is taken.
    pub before_take: Hook,
}

impl RaceHooks {
    /// Runs (and removes) the hook in `slot`, if any.
    pub fn run(slot: &Hook) {
        let hook = slot.lock().unwrap().take();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// Records every call (also used by the virtio-pci transport tests).
#[derive(Default)]
pub(crate) struct Recorder {
    updates: Mutex<Vec<(u16, MsiMessage, bool)>>,
    triggers: Mutex<Vec<u16>>,
}

impl MsiInterrupt for Recorder {
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()> {
        self.updates.lock().unwrap().push((vector, msg, masked));
        Ok(())
    }
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.triggers.lock().unwrap().push(vector);
        Ok(())
    }
}

impl Recorder {
    pub(crate) fn triggers(&self) -> Vec<u16> {
        std::mem::take(&mut self.triggers.lock().unwrap())
    }
    pub(crate) fn updates(&self) -> Vec<(u16, MsiMessage, bool)> {
        std::mem::take(&mut self.updates.lock().unwrap())
    }
}

fn setup(n: u16) -> (MsixConfig, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    (MsixConfig::new(n, rec.clone()).unwrap(), rec)
}

/// Programs vector `v` with a message and the given mask bit, as a guest would.
fn program(m: &mut MsixConfig, v: u16, masked: bool) {
    let base = u64::from(v) * 16;
    m.write_table(base, &0xfee0_1000u32.to_le_bytes()).unwrap();
    m.write_table(base + 4, &0u32.to_le_bytes()).unwrap();
    m.write_table(base + 8, &(0x40 + u32::from(v)).to_le_bytes())
        .unwrap();
    m.write_table(base + 12, &u32::from(masked).to_le_bytes())
        .unwrap();
}

fn pba_bit(m: &MsixConfig, v: u16) -> bool {
    let mut q = [0u8; 8];
    m.read_pba(u64::from(v / 64) * 8, &mut q);
    u64::from_le_bytes(q) & (1 << (v % 64)) != 0
}

#[test]
fn capability_bytes() {
    let cap = MsixCap::new(8, 1, 0x2000, 2, 0x800).unwrap();
    assert_eq!(
        cap.bytes(),
        [0x11, 0, 7, 0, 0x01, 0x20, 0, 0, 0x02, 0x08, 0, 0]
    );
    assert!(matches!(
        MsixCap::new(0, 0, 0, 0, 0),
        Err(MsixError::TableSize(0))
    ));
    assert!(matches!(
        MsixCap::new(2049, 0, 0, 0, 0),
        Err(MsixError::TableSize(2049))
    ));
    assert!(matches!(
        MsixCap::new(1, 6, 0, 0, 0),
        Err(MsixError::Bir(6))
    ));
    assert!(matches!(
        MsixCap::new(1, 0, 4, 0, 0),
        Err(MsixError::Offset(4))
    ));
    assert!(matches!(
        MsixConfig::new(2049, Arc::new(Recorder::default())),
        Err(MsixError::TableSize(2049))
    ));
}

#[test]
fn table_write_then_notify_triggers() {
    let (mut m, rec) = setup(4);
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    program(&mut m, 2, false);
    let ups = rec.updates();
    let last = *ups.last().unwrap();
    assert_eq!(
        last,
        (
            2,
            MsiMessage {
                addr: 0xfee0_1000,
                data: 0x42
            },
            false
        )
    );
    // The entry reads back, as dwords and as a qword.
    let mut q = [0u8; 8];
    m.read_table(2 * 16, &mut q);
    assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
    let mut d = [0u8; 4];
    m.read_table(2 * 16 + 8, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0x42);
    m.notify(2).unwrap();
    assert_eq!(rec.triggers(), vec![2]);
    // Vector 0 was never unmasked: pending, not delivered.
    m.notify(0).unwrap();
    assert!(rec.triggers().is_empty());
    assert!(m.is_pending(0));
    assert!(matches!(
        m.notify(4),
        Err(MsixError::Vector { vector: 4, size: 4 })
    ));
    // An 8-byte write of data + control updates once.
    m.write_table(3 * 16 + 8, &0x55u64.to_le_bytes()).unwrap();
    assert_eq!(
        rec.updates(),
        vec![(
            3,
            MsiMessage {
                addr: 0,
                data: 0x55
            },
            false
        )]
    );
    // Rewriting the same value does not call update.
    m.write_table(3 * 16 + 8, &0x55u64.to_le_bytes()).unwrap();
    assert!(rec.updates().is_empty());
}

#[test]
fn masked_vector_pends_and_delivers_on_unmask() {
    let (mut m, rec) = setup(70);
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    program(&mut m, 65, true);
    m.notify(65).unwrap();
    assert!(rec.triggers().is_empty());
    assert!(pba_bit(&m, 65));
    let mut d = [0u8; 4];
    m.read_pba(8, &mut d);
    assert_eq!(u32::from_le_bytes(d), 0b10);
    // Unmasking delivers the pending vector and clears its bit.
    rec.updates();
    m.write_table(65 * 16 + 12, &0u32.to_le_bytes()).unwrap();
    assert_eq!(rec.triggers(), vec![65]);
    assert!(!pba_bit(&m, 65));
    assert_eq!(rec.updates().last().map(|u| u.2), Some(false));
    // Delivered once only.
    m.write_table(65 * 16 + 12, &1u32.to_le_bytes()).unwrap();
    m.write_table(65 * 16 + 12, &0u32.to_le_bytes()).unwrap();
    assert!(rec.triggers().is_empty());
}

#[test]
fn function_mask() {
    let (mut m, rec) = setup(2);
    m.set_message_control(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK)
        .unwrap();
    program(&mut m, 1, false);
    assert_eq!(rec.updates().last().map(|u| u.2), Some(true));
    m.notify(1).unwrap();
    assert!(rec.triggers().is_empty());
    assert!(pba_bit(&m, 1));
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    assert_eq!(rec.triggers(), vec![1]);
    // Only the unmasked vector got an update for the function mask change.
    assert_eq!(
        rec.updates(),
        vec![(
            1,
            MsiMessage {
                addr: 0xfee0_1000,
                data: 0x41
            },
            false
        )]
    );
    assert!(!m.function_masked());
    m.notify(1).unwrap();
    assert_eq!(rec.triggers(), vec![1]);
}

#[test]
fn disabled_means_no_delivery() {
    let (mut m, rec) = setup(2);
    program(&mut m, 0, false);
    assert!(!m.enabled());
    m.notify(0).unwrap();
    assert!(rec.triggers().is_empty());
    assert!(!m.is_pending(0));
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    assert!(rec.triggers().is_empty());
    m.notify(0).unwrap();
    assert_eq!(rec.triggers(), vec![0]);
    m.set_message_control(0).unwrap();
    m.notify(0).unwrap();
    assert!(rec.triggers().is_empty());
}

#[test]
fn config_space_integration() {
    use crate::pci::config::PciClassCode;
    let (mut m, rec) = setup(3);
    let class = PciClassCode {
        class: 2,
        subclass: 0,
        prog_if: 0,
    };
    let mut c = PciConfiguration::new(0x1af4, 0x1041, class);
    let off = MsixCap::new(3, 0, 0, 0, 0x800)
        .unwrap()
        .add_to(&mut c)
        .unwrap();
    let ctl = u32::from(off) + 2;
    // Table size bits are read-only; enable sticks.
    c.write_config(ctl, &0xffffu16.to_le_bytes());
    assert_eq!(c.read_u16(usize::from(off) + 2), 0xc002);
    m.sync_from_config(&c, off).unwrap();
    assert!(m.enabled() && m.function_masked());
    c.write_config(ctl, &0x8000u16.to_le_bytes());
    m.sync_from_config(&c, off).unwrap();
    assert!(m.enabled() && !m.function_masked());
    program(&mut m, 0, false);
    m.notify(0).unwrap();
    assert_eq!(rec.triggers(), vec![0]);
}

#[test]
fn arbitrary_accesses_never_panic() {
    let (mut m, _rec) = setup(MSIX_MAX_VECTORS);
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    let offsets = (0..64u64).chain([
        m.table_len() - 8,
        m.table_len(),
        m.pba_len(),
        u64::MAX,
        u64::MAX - 7,
    ]);
    for off in offsets {
        for len in 0..=9usize {
            let mut b = vec![0u8; len];
            m.read_table(off, &mut b);
            m.read_pba(off, &mut b);
            let _ = m.write_table(off, &vec![0xffu8; len]);
            let _ = m.write_table(off, &vec![0u8; len]);
        }
    }
    for v in [0, MSIX_MAX_VECTORS - 1] {
        m.notify(v).unwrap();
    }
    let (mut small, _r) = setup(1);
    let mut b = [0u8; 8];
    small.read_pba(0, &mut b);
    small.notify(0).unwrap();
    assert!(small.write_table(16, &b).is_ok());
    assert!(small.notify(1).is_err());
}

#[test]
fn notifier_disabled_drops_and_out_of_range_fails() {
    let (mut m, rec) = setup(2);
    let n = m.notifier();
    program(&mut m, 0, false);
    assert!(!n.enabled());
    n.notify(0).unwrap();
    assert!(rec.triggers().is_empty());
    assert!(!n.is_pending(0), "a disabled function does not pend");
    assert!(matches!(
        n.notify(2),
        Err(MsixError::Vector { vector: 2, size: 2 })
    ));
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    assert!(n.enabled());
    assert!(rec.triggers().is_empty(), "nothing was pending");
    n.notify(0).unwrap();
    assert_eq!(rec.triggers(), vec![0]);
    assert_eq!(n.num_vectors(), 2);
}

#[test]
fn notifier_pends_while_masked_and_unmask_delivers_once() {
    let (mut m, rec) = setup(3);
    let n = m.notifier();
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    program(&mut m, 1, true);
    // Several notifications while masked coalesce into one pending bit.
    for _ in 0..3 {
        n.notify(1).unwrap();
    }
    assert!(rec.triggers().is_empty());
    assert!(n.is_pending(1) && pba_bit(&m, 1));
    m.write_table(16 + 12, &0u32.to_le_bytes()).unwrap();
    assert_eq!(rec.triggers(), vec![1]);
    assert!(!n.is_pending(1));
    // Mask/unmask again without a new notification: nothing more is delivered.
    m.write_table(16 + 12, &1u32.to_le_bytes()).unwrap();
    m.write_table(16 + 12, &0u32.to_le_bytes()).unwrap();
    assert!(rec.triggers().is_empty());
    n.notify(1).unwrap();
    assert_eq!(rec.triggers(), vec![1]);
}

#[test]
fn notifier_function_mask_pends_until_cleared() {
    let (mut m, rec) = setup(2);
    let n = m.notifier();
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    program(&mut m, 0, false);
    m.set_message_control(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK)
        .unwrap();
    n.notify(0).unwrap();
    assert!(rec.triggers().is_empty());
    assert!(n.is_pending(0));
    // Disabling keeps the bit; re-enabling without the function mask delivers it once.
    m.set_message_control(0).unwrap();
    assert!(rec.triggers().is_empty());
    assert!(n.is_pending(0));
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    assert_eq!(rec.triggers(), vec![0]);
    assert!(!n.is_pending(0));
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    assert!(rec.triggers().is_empty());
}

/// Notifies from inside `update`, i.e. after the unmasking side has decided to unmask but
/// before it has published the unmask: the notification must pend and be delivered by the
/// unmasking side, exactly once.
struct NotifyDuringUpdate {
    notifier: Mutex<Option<MsixNotifier>>,
    triggers: Mutex<Vec<u16>>,
}

impl MsiInterrupt for NotifyDuringUpdate {
    fn update(&self, vector: u16, _msg: MsiMessage, masked: bool) -> std::io::Result<()> {
        if !masked {
            if let Some(n) = self.notifier.lock().unwrap().as_ref() {
                n.notify(vector).unwrap();
            }
        }
        Ok(())
    }
    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.triggers.lock().unwrap().push(vector);
        Ok(())
    }
}

#[test]
fn notify_racing_with_unmask_is_delivered_once() {
    let irq = Arc::new(NotifyDuringUpdate {
        notifier: Mutex::new(None),
        triggers: Mutex::new(Vec::new()),
    });
    let mut m = MsixConfig::new(2, irq.clone()).unwrap();
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    program(&mut m, 1, true);
    *irq.notifier.lock().unwrap() = Some(m.notifier());
    // Vector unmask: the notification lands between the route update and the unmask.
    m.write_table(16 + 12, &0u32.to_le_bytes()).unwrap();
    assert_eq!(*irq.triggers.lock().unwrap(), vec![1]);
    assert!(!m.is_pending(1));
    // Function unmask: same race through Message Control.
    m.set_message_control(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK)
        .unwrap();
    irq.triggers.lock().unwrap().clear();
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    assert_eq!(*irq.triggers.lock().unwrap(), vec![1]);
    assert!(!m.is_pending(1));
}

/// Counts triggers without a lock, for the threaded test.
#[derive(Default)]
struct Counter {
    triggers: std::sync::atomic::AtomicUsize,
}

impl MsiInterrupt for Counter {
    fn update(&self, _vector: u16, _msg: MsiMessage, _masked: bool) -> std::io::Result<()> {
        Ok(())
    }
    fn trigger(&self, _vector: u16) -> std::io::Result<()> {
        self.triggers.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

#[test]
fn concurrent_notify_and_mask_toggling_loses_nothing() {
    const NOTIFIES: usize = 20_000;
    let counter = Arc::new(Counter::default());
    let mut m = MsixConfig::new(1, counter.clone()).unwrap();
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    program(&mut m, 0, false);
    let n = m.notifier();
    let done = Arc::new(AtomicBool::new(false));
    let worker = {
        let done = done.clone();
        std::thread::spawn(move || {
            for _ in 0..NOTIFIES {
                n.notify(0).unwrap();
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut toggles = 0usize;
    while !done.load(Ordering::SeqCst) || toggles < 1000 {
        m.write_table(12, &1u32.to_le_bytes()).unwrap();
        m.write_table(12, &0u32.to_le_bytes()).unwrap();
        toggles += 1;
    }
    worker.join().unwrap();
    // The vector ends unmasked: a pending bit left now would be a lost interrupt.
    assert!(!m.is_pending(0), "pending bit stranded while unmasked");
    let delivered = counter.triggers.load(Ordering::SeqCst);
    assert!(delivered >= 1);
    assert!(
        delivered <= NOTIFIES,
        "{delivered} deliveries for {NOTIFIES} notifications"
    );
}

fn arm(slot: &Hook, hook: impl FnOnce() + Send + 'static) {
    *slot.lock().unwrap() = Some(Box::new(hook));
}

#[test]
fn unmask_between_mask_check_and_pend_is_caught_by_the_notifier() {
    let (m, rec) = setup(2);
    let m = Arc::new(Mutex::new(m));
    let n = m.lock().unwrap().notifier();
    {
        let mut m = m.lock().unwrap();
        m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
        program(&mut m, 1, true);
    }
    // The notifier saw the vector masked; the vCPU unmasks it (finding nothing pending)
    // before the notifier publishes its pending bit. The notifier's re-check must deliver.
    let vcpu = m.clone();
    arm(&m.lock().unwrap().shared.hooks.before_pend, move || {
        vcpu.lock()
            .unwrap()
            .write_table(16 + 12, &0u32.to_le_bytes())
            .unwrap();
    });
    n.notify(1).unwrap();
    assert_eq!(rec.triggers(), vec![1]);
    assert!(
        !n.is_pending(1),
        "pending bit stranded on an unmasked vector"
    );

    // Same window against a function unmask.
    m.lock()
        .unwrap()
        .set_message_control(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK)
        .unwrap();
    let vcpu = m.clone();
    arm(&m.lock().unwrap().shared.hooks.before_pend, move || {
        vcpu.lock()
            .unwrap()
            .set_message_control(MSIX_MSG_CTL_ENABLE)
            .unwrap();
    });
    n.notify(1).unwrap();
    assert_eq!(rec.triggers(), vec![1]);
    assert!(!n.is_pending(1));
}

#[test]
fn notify_between_unmask_and_pending_take_is_not_lost() {
    let (mut m, rec) = setup(2);
    let n = m.notifier();
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    program(&mut m, 0, true);
    n.notify(0).unwrap();
    assert!(n.is_pending(0));
    // A second notification arrives after the unmask is visible but before the vCPU collects
    // the pending bit: one delivery for each notification, nothing left pending.
    let racer = n.clone();
    arm(&m.shared.hooks.before_take, move || {
        racer.notify(0).unwrap()
    });
    m.write_table(12, &0u32.to_le_bytes()).unwrap();
    assert_eq!(rec.triggers(), vec![0, 0]);
    assert!(!n.is_pending(0));

    // And through Message Control.
    m.set_message_control(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK)
        .unwrap();
    n.notify(0).unwrap();
    let racer = n.clone();
    arm(&m.shared.hooks.before_take, move || {
        racer.notify(0).unwrap()
    });
    m.set_message_control(MSIX_MSG_CTL_ENABLE).unwrap();
    assert_eq!(rec.triggers(), vec![0, 0]);
    assert!(!n.is_pending(0));
}
