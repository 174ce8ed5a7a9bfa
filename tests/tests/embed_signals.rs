//! An embedder can keep Keel from installing its vCPU kick signal handler (its own test
//! process, so nothing else installed one first).

mod common;

use common::{wait_for_file, within, BOOT_LINE, HANG_GUARD, RUNS_UNTIL_STOPPED};
use vmm::config::{SerialConfig, VmConfig};
use vmm::handle::VmHandle;
use vmm::vm::{kick_signal, VmOutcome};

fn current_handler() -> libc::sighandler_t {
    // SAFETY: a query-only sigaction with a zeroed, writable output struct.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(kick_signal(), std::ptr::null(), &mut old),
            0
        );
        old.sa_sigaction
    }
}

extern "C" fn embedder_handler(_: libc::c_int) {}

#[test]
fn the_kick_handler_is_opt_out() {
    let out = std::env::temp_dir().join(format!("keel-embed-signals-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut c = VmConfig::default();
    c.payload.kernel = common::probe_image("probe.elf");
    // The guest spins for an hour: only kicks that stop its vCPU end it within the hang guard.
    c.payload.cmdline = RUNS_UNTIL_STOPPED.into();
    c.memory.size = 64 << 20;
    c.serial = SerialConfig::File(out.clone());

    assert_eq!(current_handler(), libc::SIG_DFL);
    let mut vm = VmHandle::create(&c).unwrap().without_signal_handler();
    // The embedder installs its own, as the opt-out asks.
    // SAFETY: the handler does nothing, which is async-signal-safe; the struct is zeroed
    // apart from the handler.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = embedder_handler as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(kick_signal(), &action, std::ptr::null_mut()),
            0
        );
    }
    vm.boot().unwrap();
    // The vCPU is in the guest once it has printed its boot line.
    wait_for_file(&out, BOOT_LINE, HANG_GUARD);
    // Keel left the embedder's handler in place, and its kicks still stop the vCPUs.
    assert_eq!(current_handler(), embedder_handler as *const () as usize);
    let outcome = within(
        "shutdown with the embedder's handler",
        HANG_GUARD,
        move || vm.shutdown().unwrap(),
    );
    assert_eq!(outcome, VmOutcome::Stopped);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        !text.contains("\"done\""),
        "the guest was not stopped: {text}"
    );

    // By default Keel installs its own.
    c.serial = SerialConfig::Off;
    let mut vm = VmHandle::create(&c).unwrap();
    vm.boot().unwrap();
    assert_ne!(current_handler(), embedder_handler as *const () as usize);
    let outcome = within("shutdown with Keel's handler", HANG_GUARD, move || {
        vm.shutdown().unwrap()
    });
    assert_eq!(outcome, VmOutcome::Stopped);
    let _ = std::fs::remove_file(out);
}
