//! The `vmm` crate embedded in this test process: two probe guests at once, driven through
//! their lifecycle (create, boot, pause, resume, wait) with events and counters, and requests
//! that do not fit the state refused without harming the VM.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

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

#[test]
fn two_vms_in_one_process_pause_resume_and_power_off() {
    let (ca, out_a) = config("a", "probe.cmd=spin:ms=1200");
    let (cb, out_b) = config("b", "probe.cmd=boot");
    let mut a = VmHandle::create(&ca).unwrap();
    let mut b = VmHandle::create(&cb).unwrap();
    let events_a = a.take_events().unwrap();
    assert!(a.take_events().is_none());
    assert_eq!(a.state(), VmState::Created);
    assert!(matches!(a.pause(), Err(HandleError::WrongState { .. })));
    assert!(a.counters().is_none());

    a.boot().unwrap();
    b.boot().unwrap();
    assert!(matches!(
        a.boot(),
        Err(HandleError::WrongState {
            action: "boot",
            state: VmState::Running
        })
    ));

    // Paused, the guest makes no progress: not even timer interrupts exit.
    std::thread::sleep(Duration::from_millis(200));
    a.pause().unwrap();
    assert_eq!(a.state(), VmState::Paused);
    let frozen = kvm_exits(&a);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(kvm_exits(&a), frozen);
    assert!(matches!(a.pause(), Err(HandleError::WrongState { .. })));
    a.resume().unwrap();
    assert_eq!(a.state(), VmState::Running);

    // The other VM ran (and ended) meanwhile.
    assert_eq!(b.wait(), Some(VmOutcome::PowerOff));
    assert_eq!(a.wait(), Some(VmOutcome::PowerOff));
    assert_eq!(a.state(), VmState::Stopped);
    assert!(kvm_exits(&a) > frozen);
    assert!(matches!(a.resume(), Err(HandleError::WrongState { .. })));
    assert!(matches!(a.shutdown(), Err(HandleError::WrongState { .. })));

    let events: Vec<VmEvent> = events_a.try_iter().collect();
    assert_eq!(
        events,
        [
            VmEvent::Booted,
            VmEvent::Paused,
            VmEvent::Resumed,
            VmEvent::PowerOff
        ]
    );
    for out in [out_a, out_b] {
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(text.contains("{\"done\":true}"), "{text}");
        let _ = std::fs::remove_file(out);
    }
}

#[test]
fn shutdown_stops_a_running_guest() {
    let (c, out) = config("shutdown", "probe.cmd=spin:ms=60000");
    let mut vm = VmHandle::create(&c).unwrap();
    let events = vm.take_events().unwrap();
    vm.boot().unwrap();
    assert_eq!(vm.wait_timeout(Duration::from_millis(300)), None);
    let start = Instant::now();
    assert_eq!(vm.shutdown().unwrap(), VmOutcome::Stopped);
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(vm.state(), VmState::Stopped);
    assert!(vm.counters().is_some());
    let events: Vec<VmEvent> = events.try_iter().collect();
    assert_eq!(events, [VmEvent::Booted, VmEvent::Shutdown]);
    let _ = std::fs::remove_file(out);
}
