//! One vCPU exit, handled: port and MMIO accesses go to the buses, guest requests (power off,
//! reset) and fatal exits become an [`Action`]. A plain function so unit tests can drive it
//! without a vCPU.

use devices::bus::MachineRequest;
use kvm_ioctls::VcpuExit;

use crate::device_manager::Buses;
use crate::stats::exits::{ExitCounters, Unclaimed};

/// Why a guest asked to reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetCause {
    /// A device (i8042 pulse, ACPI reset register).
    Device,
    /// KVM_EXIT_SHUTDOWN: triple fault.
    TripleFault,
    /// KVM_EXIT_SYSTEM_EVENT reset.
    SystemEvent,
}

/// What the vCPU loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Run the vCPU again.
    Continue,
    /// KVM_RUN was interrupted (a kick): check whether to stop.
    Interrupted,
    /// The guest powered off.
    PowerOff,
    /// The guest reset.
    Reset(ResetCause),
    /// KVM_EXIT_INTERNAL_ERROR: the caller collects the details.
    InternalError,
    /// KVM_EXIT_FAIL_ENTRY with the hardware reason.
    FailEntry(u64),
    /// An exit Keel does not handle (its KVM exit code).
    Unhandled(u32),
}

fn request_action(request: Option<MachineRequest>) -> Action {
    match request {
        None => Action::Continue,
        Some(MachineRequest::PowerOff) => Action::PowerOff,
        Some(MachineRequest::Reset) => Action::Reset(ResetCause::Device),
    }
}

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// Handles one exit. Unclaimed reads return all ones, as on real hardware.
pub fn handle_exit(
    buses: &Buses,
    exit: VcpuExit,
    counters: &ExitCounters,
    unclaimed: &mut Unclaimed,
) -> Action {
    match exit {
        VcpuExit::IoIn(port, data) => {
            ExitCounters::bump(&counters.io_in);
            match buses.pio.read_from(u64::from(port), data) {
                Ok(device) => counters.pio_device(device),
                Err(_) => {
                    ExitCounters::bump(&counters.unclaimed);
                    unclaimed.port(port);
                    data.fill(0xff);
                }
            }
            Action::Continue
        }
        VcpuExit::IoOut(port, data) => {
            ExitCounters::bump(&counters.io_out);
            match buses.pio.write_to(u64::from(port), data) {
                Ok((device, request)) => {
                    counters.pio_device(device);
                    request_action(request)
                }
                Err(_) => {
                    ExitCounters::bump(&counters.unclaimed);
                    unclaimed.port(port);
                    Action::Continue
                }
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            ExitCounters::bump(&counters.mmio_read);
            match buses.mmio.read_from(addr, data) {
                Ok(device) => counters.mmio_device(device),
                Err(_) => {
                    ExitCounters::bump(&counters.unclaimed);
                    unclaimed.mmio(addr);
                    data.fill(0xff);
                }
            }
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            ExitCounters::bump(&counters.mmio_write);
            match buses.mmio.write_to(addr, data) {
                Ok((device, request)) => {
                    counters.mmio_device(device);
                    request_action(request)
                }
                Err(_) => {
                    ExitCounters::bump(&counters.unclaimed);
                    unclaimed.mmio(addr);
                    Action::Continue
                }
            }
        }
        other => {
            ExitCounters::bump(&counters.other);
            match other {
                VcpuExit::Shutdown => Action::Reset(ResetCause::TripleFault),
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _) => Action::PowerOff,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _) => {
                    Action::Reset(ResetCause::SystemEvent)
                }
                VcpuExit::InternalError => Action::InternalError,
                VcpuExit::FailEntry(reason, _) => Action::FailEntry(reason),
                // With the in-kernel irqchip HLT and IRQ windows stay in KVM; seeing them is
                // harmless, the vCPU just runs again.
                VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Action::Continue,
                VcpuExit::Unsupported(code) => Action::Unhandled(code),
                VcpuExit::Unknown => Action::Unhandled(0),
                _ => Action::Unhandled(u32::MAX),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::bus::BusDevice;
    use std::sync::atomic::Ordering;
    use std::sync::{Arc, Mutex};

    struct Reg {
        value: u8,
        request_on: Option<(u8, MachineRequest)>,
    }

    impl BusDevice for Reg {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.value);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<MachineRequest> {
            self.value = data[0];
            match self.request_on {
                Some((v, r)) if v == data[0] => Some(r),
                _ => None,
            }
        }
    }

    fn buses() -> Buses {
        let b = Buses::default();
        let dev = Arc::new(Mutex::new(Reg {
            value: 7,
            request_on: Some((0xfe, MachineRequest::Reset)),
        }));
        b.pio
            .insert(&b.ids.add("reg").unwrap(), dev, 0x64, 1)
            .unwrap();
        let pm = Arc::new(Mutex::new(Reg {
            value: 0,
            request_on: Some((0x20, MachineRequest::PowerOff)),
        }));
        b.mmio
            .insert(&b.ids.add("pm").unwrap(), pm, 0xd000_0000, 0x10)
            .unwrap();
        b
    }

    #[test]
    fn port_reads_and_writes_reach_the_device() {
        let b = buses();
        let c = ExitCounters::default();
        let mut u = Unclaimed::default();
        let mut data = [0u8; 1];
        assert_eq!(
            handle_exit(&b, VcpuExit::IoIn(0x64, &mut data), &c, &mut u),
            Action::Continue
        );
        assert_eq!(data, [7]);
        assert_eq!(
            handle_exit(&b, VcpuExit::IoOut(0x64, &[3]), &c, &mut u),
            Action::Continue
        );
        assert_eq!(
            handle_exit(&b, VcpuExit::IoIn(0x64, &mut data), &c, &mut u),
            Action::Continue
        );
        assert_eq!(data, [3]);
        assert_eq!(c.io_in.load(Ordering::Relaxed), 2);
        assert_eq!(c.io_out.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn exits_are_counted_per_device() {
        let b = buses();
        let other = Arc::new(Mutex::new(Reg {
            value: 1,
            request_on: None,
        }));
        let c = ExitCounters::default();
        // Added after the counters were made, as a BAR the guest maps late: counted all the same.
        let label = b.ids.add("other").unwrap();
        b.pio.insert(&label, other, 0x70, 2).unwrap();
        let mut u = Unclaimed::default();
        let mut data = [0u8; 1];
        for _ in 0..3 {
            handle_exit(&b, VcpuExit::IoIn(0x71, &mut data), &c, &mut u);
        }
        handle_exit(&b, VcpuExit::IoOut(0x64, &[1]), &c, &mut u);
        handle_exit(&b, VcpuExit::MmioRead(0xd000_0000, &mut data), &c, &mut u);
        handle_exit(&b, VcpuExit::IoIn(0x1234, &mut data), &c, &mut u);
        let rows: Vec<(&str, String, u64)> = c
            .by_device(&b.ids)
            .into_iter()
            .map(|d| (d.bus, d.device, d.count))
            .collect();
        assert_eq!(
            rows,
            [
                ("pio", "reg".to_string(), 1),
                ("pio", "other".to_string(), 3),
                ("mmio", "pm".to_string(), 1)
            ]
        );
        assert_eq!(u.ports.get(&0x1234), Some(&1));
    }

    #[test]
    fn device_requests_become_actions() {
        let b = buses();
        let c = ExitCounters::default();
        let mut u = Unclaimed::default();
        assert_eq!(
            handle_exit(&b, VcpuExit::IoOut(0x64, &[0xfe]), &c, &mut u),
            Action::Reset(ResetCause::Device)
        );
        assert_eq!(
            handle_exit(&b, VcpuExit::MmioWrite(0xd000_0004, &[0x20]), &c, &mut u),
            Action::PowerOff
        );
    }

    #[test]
    fn unclaimed_accesses_are_counted_and_read_as_ones() {
        let b = buses();
        let c = ExitCounters::default();
        let mut u = Unclaimed::default();
        let mut data = [0u8; 2];
        assert_eq!(
            handle_exit(&b, VcpuExit::IoIn(0x1234, &mut data), &c, &mut u),
            Action::Continue
        );
        assert_eq!(data, [0xff, 0xff]);
        handle_exit(&b, VcpuExit::IoOut(0x1234, &[1]), &c, &mut u);
        let mut d4 = [0u8; 4];
        handle_exit(&b, VcpuExit::MmioRead(0xe000_0000, &mut d4), &c, &mut u);
        assert_eq!(d4, [0xff; 4]);
        assert_eq!(c.unclaimed.load(Ordering::Relaxed), 3);
        assert_eq!(u.ports.get(&0x1234), Some(&2));
        assert_eq!(u.mmio.get(&0xe000_0000), Some(&1));
    }

    #[test]
    fn unclaimed_mmio_addresses_are_bounded() {
        let b = buses();
        let c = ExitCounters::default();
        let mut u = Unclaimed::default();
        for i in 0..(Unclaimed::MAX_ADDRESSES as u64 * 2) {
            handle_exit(
                &b,
                VcpuExit::MmioWrite(0xe000_0000 + i * 8, &[0]),
                &c,
                &mut u,
            );
        }
        assert_eq!(u.mmio.len(), Unclaimed::MAX_ADDRESSES);
        assert_eq!(
            c.unclaimed.load(Ordering::Relaxed),
            Unclaimed::MAX_ADDRESSES as u64 * 2
        );
    }

    #[test]
    fn fatal_and_lifecycle_exits() {
        let b = buses();
        let c = ExitCounters::default();
        let mut u = Unclaimed::default();
        assert_eq!(
            handle_exit(&b, VcpuExit::Shutdown, &c, &mut u),
            Action::Reset(ResetCause::TripleFault)
        );
        assert_eq!(
            handle_exit(&b, VcpuExit::InternalError, &c, &mut u),
            Action::InternalError
        );
        assert_eq!(
            handle_exit(&b, VcpuExit::FailEntry(0x21, 0), &c, &mut u),
            Action::FailEntry(0x21)
        );
        assert_eq!(
            handle_exit(&b, VcpuExit::SystemEvent(1, &[]), &c, &mut u),
            Action::PowerOff
        );
        assert_eq!(handle_exit(&b, VcpuExit::Hlt, &c, &mut u), Action::Continue);
        assert_eq!(c.other.load(Ordering::Relaxed), 5);
    }
}
