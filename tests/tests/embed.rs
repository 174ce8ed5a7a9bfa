//! The `vmm` crate embedded in this test process: two probe guests in it, driven through
//! their lifecycle (create, boot, pause, resume, power off, shut down) with events and
//! counters, and requests that do not fit the state refused without harming the VM.

mod common;

use std::path::{Path, PathBuf};

use common::{wait_for_file, wait_until, within, BOOT_LINE, HANG_GUARD};
use vmm::config::{SerialConfig, VmConfig};
use vmm::handle::{HandleError, VmEvent, VmHandle, VmState};
use vmm::vm::VmOutcome;

fn config(tag: &str, cmdline: &str) -> (VmConfig, PathBuf) {
    let out = std::env::temp_dir().join(format!("keel-embed-{tag}-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut c = VmConfig::default();
    c.payload.kernel = common::probe_image("probe.elf");
    c.payload.cmdline = cmdline.to_string();
    c.memory.size = 128 << 20;
    c.serial = SerialConfig::File(out.clone());
    (c, out)
}

fn kvm_exits(vm: &VmHandle) -> u64 {
    vm.counters()
        .expect("booted")
        .vcpus
        .iter()
        .flat_map(|v| v.kvm.iter())
        .filter(|(name, _)| name == "exits")
        .map(|(_, n)| n)
        .sum()
}

/// Exits Keel handled in userspace: each one an instruction the guest ran.
fn userspace_exits(vm: &VmHandle) -> u64 {
    vm.counters()
        .expect("booted")
        .vcpus
        .iter()
        .map(|v| v.userspace.total)
        .sum()
}

/// Asserts the guest printed its boot line but never finished (it was stopped).
fn assert_stopped_while_running(serial: &Path) {
    let text = std::fs::read_to_string(serial).unwrap();
    assert!(text.contains(BOOT_LINE), "{text}");
    assert!(
        !text.contains("\"done\""),
        "the guest was not stopped: {text}"
    );
}

#[test]
fn two_vms_in_one_process_pause_resume_and_power_off() {
    // A runs until it is shut down, exiting to Keel all the while; B powers off on its own.
    let (ca, out_a) = config("a", &common::busy_until_stopped());
    let (cb, out_b) = config("b", "probe.cmd=boot");
    let mut a = VmHandle::create(&ca).unwrap();
    let mut b = VmHandle::create(&cb).unwrap();
    let events_a = a.take_events().unwrap();
    assert!(a.take_events().is_none());
    let events_b = b.take_events().unwrap();
    assert_eq!(a.state(), VmState::Created);
    assert!(matches!(a.pause(), Err(HandleError::WrongState { .. })));
    assert!(a.counters().is_none());

    a.boot().unwrap();
    assert!(matches!(
        a.boot(),
        Err(HandleError::WrongState {
            action: "boot",
            state: VmState::Running
        })
    ));
    // A's guest runs once it has printed its boot line.
    wait_for_file(&out_a, BOOT_LINE, HANG_GUARD);

    // Paused, the guest makes no progress: not even timer interrupts exit. It stays paused
    // while the other VM boots, runs and powers off (its whole run is the window watched).
    a.pause().unwrap();
    assert_eq!(a.state(), VmState::Paused);
    let frozen = kvm_exits(&a);
    let frozen_userspace = userspace_exits(&a);
    b.boot().unwrap();
    assert_eq!(b.wait_timeout(HANG_GUARD), Some(VmOutcome::PowerOff));
    assert_eq!(kvm_exits(&a), frozen);
    assert_eq!(userspace_exits(&a), frozen_userspace);
    assert!(matches!(a.pause(), Err(HandleError::WrongState { .. })));
    a.resume().unwrap();
    assert_eq!(a.state(), VmState::Running);
    // Resumed, it runs again: its PM timer reads exit to Keel.
    wait_until("the resumed guest runs", HANG_GUARD, || {
        (userspace_exits(&a) > frozen_userspace).then_some(())
    });
    let resumed = kvm_exits(&a);
    assert!(resumed > frozen, "{resumed} <= {frozen}");

    // The VM that powered off is stopped for good; its counters stay readable.
    assert_eq!(b.state(), VmState::Stopped);
    assert_eq!(b.wait(), Some(VmOutcome::PowerOff));
    assert!(kvm_exits(&b) > 0);
    assert!(matches!(b.resume(), Err(HandleError::WrongState { .. })));
    assert!(matches!(b.shutdown(), Err(HandleError::WrongState { .. })));

    let (mut a, outcome) = within("shutting down VM a", HANG_GUARD, move || {
        let outcome = a.shutdown();
        (a, outcome)
    });
    assert_eq!(outcome.unwrap(), VmOutcome::Stopped);
    assert_eq!(a.state(), VmState::Stopped);
    assert!(kvm_exits(&a) >= resumed);
    assert!(matches!(a.resume(), Err(HandleError::WrongState { .. })));
    assert!(matches!(a.shutdown(), Err(HandleError::WrongState { .. })));

    let events: Vec<VmEvent> = events_a.try_iter().collect();
    assert_eq!(
        events,
        [
            VmEvent::Booted,
            VmEvent::Paused,
            VmEvent::Resumed,
            VmEvent::Shutdown
        ]
    );
    let events: Vec<VmEvent> = events_b.try_iter().collect();
    assert_eq!(events, [VmEvent::Booted, VmEvent::PowerOff]);
    assert_stopped_while_running(&out_a);
    let text = std::fs::read_to_string(&out_b).unwrap();
    assert!(text.contains("{\"done\":true}"), "{text}");
    for out in [out_a, out_b] {
        let _ = std::fs::remove_file(out);
    }
}

#[test]
fn shutdown_stops_a_running_guest() {
    // The guest spins for an hour: only the shutdown ends it within the hang guard.
    let (c, out) = config("shutdown", common::RUNS_UNTIL_STOPPED);
    let mut vm = VmHandle::create(&c).unwrap();
    let events = vm.take_events().unwrap();
    vm.boot().unwrap();
    wait_for_file(&out, BOOT_LINE, HANG_GUARD);
    assert_eq!(vm.state(), VmState::Running);
    let (mut vm, outcome) = within("shutdown", HANG_GUARD, move || {
        let outcome = vm.shutdown();
        (vm, outcome)
    });
    assert_eq!(outcome.unwrap(), VmOutcome::Stopped);
    assert_eq!(vm.state(), VmState::Stopped);
    assert!(vm.counters().is_some());
    let events: Vec<VmEvent> = events.try_iter().collect();
    assert_eq!(events, [VmEvent::Booted, VmEvent::Shutdown]);
    assert_stopped_while_running(&out);
    let _ = std::fs::remove_file(out);
}
