//! An embedder can keep Keel from installing its vCPU kick signal handler (its own test
//! process, so nothing else installed one first).

mod common;

use std::time::Duration;

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
    let mut c = VmConfig::default();
    c.payload.kernel = common::probe_image("probe.elf");
    c.payload.cmdline = "probe.cmd=spin:ms=60000".into();
    c.memory.size = 64 << 20;
    c.serial = SerialConfig::Off;

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
    assert_eq!(vm.wait_timeout(Duration::from_millis(200)), None);
    // Keel left the embedder's handler in place, and its kicks still stop the vCPUs.
    assert_eq!(current_handler(), embedder_handler as *const () as usize);
    assert_eq!(vm.shutdown().unwrap(), VmOutcome::Stopped);

    // By default Keel installs its own.
    let mut vm = VmHandle::create(&c).unwrap();
    vm.boot().unwrap();
    assert_ne!(current_handler(), embedder_handler as *const () as usize);
    assert_eq!(vm.shutdown().unwrap(), VmOutcome::Stopped);
}
