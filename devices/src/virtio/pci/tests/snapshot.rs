//! Saving a live function and replaying it into a fresh one, as a snapshot and restore do.

use super::*;
use crate::snapshot::{DeviceSnapshot, StateError};
use crate::virtio::device::QueuePosition;
use crate::virtio::pci::state::{VirtioPciState, CONFIG_SPACE_LEN};

/// A live function with MSI-X on, vectors 0/1 for the queues and 2 for configuration, and
/// the device standing at `positions` when quiesced.
fn live(positions: &[(u16, u16)]) -> Harness {
    let mut h = Harness::new();
    h.enable_msix();
    h.write(CONFIG_MSIX_VECTOR, 2, 2);
    for q in 0..2u64 {
        h.write(QUEUE_SELECT, 2, q);
        h.write(QUEUE_MSIX_VECTOR, 2, q);
    }
    assert_eq!(h.bring_up(), 0x0f);
    h.write(QUEUE_SELECT, 2, 1);
    h.log.lock().unwrap().positions = positions
        .iter()
        .map(|&(next_avail, next_used)| QueuePosition {
            next_avail,
            next_used,
        })
        .collect();
    h
}

/// What the VMM does around `restore`: BAR, interrupt line and command through
/// configuration space first, MSI-X message control last.
fn replay(b: &mut Harness, saved: &VirtioPciState) -> Result<(), StateError> {
    let dword = |at: usize| u32::from_le_bytes(saved.config_space[at..at + 4].try_into().unwrap());
    for (offset, len) in [(0x10, 4), (0x14, 4), (0x3c, 1), (0x04, 2)] {
        b.cfg_write(offset, len, dword(offset as usize));
    }
    b.dev.restore_state(saved)?;
    let ctl = usize::from(b.dev.cap_offsets().msix) + 2;
    b.cfg_write(ctl as u32, 2, dword(ctl) & 0xffff);
    Ok(())
}

#[test]
fn a_replayed_function_reads_back_as_saved_and_its_queues_start_where_they_stood() {
    let mut a = live(&[(7, 5), (300, 299)]);
    a.cfg_write(0x04, 2, 0x0406);
    a.dev.quiesce().unwrap();
    let saved = a.dev.save_state();
    a.dev.unquiesce().unwrap();
    assert_eq!(a.log.lock().unwrap().quiesced, 1);
    assert_eq!(a.log.lock().unwrap().unquiesced, 1);
    assert_eq!(saved.config_space.len(), CONFIG_SPACE_LEN);
    assert_eq!(saved.status, 0x0f);
    assert_eq!(saved.selects.2, 1);
    assert_eq!(saved.device_config, vec![(0x12, vec![0xab])]);

    let mut b = Harness::new();
    replay(&mut b, &saved).unwrap();
    assert!(b.dev.is_activated());
    let log = b.log.lock().unwrap();
    let activated = log.activations.last().unwrap();
    assert_eq!(activated[0].position, (7, 5));
    assert_eq!(activated[1].position, (300, 299));
    assert_eq!(log.acked, vec![FAKE_FEATURES]);
    assert_eq!(log.config_writes, vec![(0x12, vec![0xab])]);
    drop(log);
    // Everything the driver can read is as it was (positions belong to a quiesced device).
    let again = b.dev.save_state();
    let strip = |s: &VirtioPciState| {
        let mut s = s.clone();
        s.queues.iter_mut().for_each(|q| q.position = None);
        s
    };
    assert_eq!(strip(&again), strip(&saved));
    assert_eq!(b.cfg_read(0x04, 2), 0x0406);
}

#[test]
fn kicks_and_vectors_fire_once_per_live_queue_after_a_restore() {
    let mut a = live(&[(1, 1), (2, 2)]);
    a.dev.quiesce().unwrap();
    let saved = a.dev.save_state();
    let mut b = Harness::new();
    replay(&mut b, &saved).unwrap();
    b.msi.triggers();
    b.dev.kick_after_restore();
    let kicks: Vec<Option<u64>> = b
        .log
        .lock()
        .unwrap()
        .kicks
        .iter()
        .map(eventfd_count)
        .collect();
    assert_eq!(kicks, vec![Some(1), Some(1)]);
    assert_eq!(b.msi.triggers(), vec![0, 1]);
}

#[test]
fn a_function_that_was_never_started_restores_to_a_fresh_one() {
    let mut a = Harness::new();
    a.dev.quiesce().unwrap();
    let saved = a.dev.save_state();
    assert_eq!(a.log.lock().unwrap().quiesced, 0, "nothing live to quiesce");
    let mut b = Harness::new();
    replay(&mut b, &saved).unwrap();
    assert!(!b.dev.is_activated());
    assert_eq!(b.status(), 0);
    b.dev.kick_after_restore();
    assert!(b.log.lock().unwrap().kicks.is_empty());
}

#[test]
fn a_state_of_another_shape_is_refused() {
    let mut a = live(&[]);
    a.dev.quiesce().unwrap();
    let mut saved = a.dev.save_state();
    saved.queues.pop();
    let mut b = Harness::new();
    let e = b.dev.restore_state(&saved).unwrap_err();
    let cause = std::error::Error::source(&e)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(
        cause.contains("has queues 1, this device 2"),
        "{e}: {cause}"
    );
    assert!(!b.dev.is_activated());
}
