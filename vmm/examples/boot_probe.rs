//! Boots the probe guest from code and prints its counters: the smallest embedding of Keel.
//!
//! ```sh
//! make probe
//! cargo run --release -p vmm --example boot_probe -- build/probe/probe.elf
//! ```

use std::process::ExitCode;

use vmm::config::{SerialConfig, VmConfig};
use vmm::handle::VmHandle;
use vmm::stats::view as stats_view;

fn main() -> ExitCode {
    let kernel = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "build/probe/probe.elf".into());
    let mut config = VmConfig::default();
    config.payload.kernel = kernel.into();
    config.payload.cmdline = "probe.cmd=cpus probe.cmd=pci".into();
    config.cpus.boot_vcpus = 2;
    config.serial = SerialConfig::Tty;

    let mut vm = match VmHandle::create(&config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("boot_probe: cannot create the VM: {e}");
            return ExitCode::FAILURE;
        }
    };
    let events = vm.take_events();
    if let Err(e) = vm.boot() {
        eprintln!("boot_probe: cannot boot: {e}");
        return ExitCode::FAILURE;
    }
    let outcome = vm.wait();
    if let Some(events) = events {
        for event in events.try_iter() {
            println!("event: {event:?}");
        }
    }
    println!("outcome: {outcome:?}");
    if let Some(counters) = vm.counters() {
        print!("{}", stats_view::table(&counters));
    }
    ExitCode::SUCCESS
}
