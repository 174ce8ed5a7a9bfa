//! The legacy PC platform devices every Keel VM has on its port-I/O bus: the COM1 UART, the
//! i8042 (for its reset line), the CMOS/RTC, the POST port, the firmware debug console and the
//! ACPI PM register block.

pub mod acpi_pm;
pub mod cmos;
pub mod debugcon;
pub mod i8042;
pub mod post;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use cmos::Cmos;
pub use debugcon::DebugCon;
pub use i8042::I8042;
pub use post::PostCode;
pub use serial::{Serial, SerialError};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use vmm_sys_util::eventfd::EventFd;

    /// Every access a hostile guest could make in the first 32 bytes of a device, in every
    /// width up to 16 bytes and with varied data, must neither panic nor report the wrong size.
    fn hammer(name: &str, dev: &mut dyn BusDevice) {
        for offset in 0..=32u64 {
            for len in 0..=16usize {
                let mut buf = vec![0x5au8; len];
                dev.read(offset, &mut buf);
                assert_eq!(buf.len(), len, "{name}");
                for fill in [0x00u8, 0x01, 0x55, 0x80, 0xaa, 0xff] {
                    // 0xfe / reset values may legitimately request a reset; never panic.
                    let data = vec![fill; len];
                    let _ = dev.write(offset, &data);
                }
            }
        }
        for offset in [u64::MAX, u64::MAX - 1, 1 << 63] {
            let mut buf = [0u8; 4];
            dev.read(offset, &mut buf);
            let _ = dev.write(offset, &buf);
        }
    }

    #[test]
    fn arbitrary_accesses_never_panic() {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        hammer("serial", &mut Serial::new(evt, Box::new(std::io::sink())));
        hammer("i8042", &mut I8042::new());
        hammer("cmos", &mut Cmos::new(3 << 30, 2 << 30));
        hammer("post", &mut PostCode::new());
        hammer("debugcon", &mut DebugCon::new());
        hammer("acpi-pm", &mut AcpiPm::new(5, 0x0f));
    }

    #[test]
    fn devices_work_through_a_bus() {
        use crate::bus::{Bus, MachineRequest};
        use std::sync::{Arc, Mutex};
        let bus = Bus::new();
        let ids = crate::device_id::DeviceIds::default();
        let insert = |name: &str, dev: Arc<Mutex<dyn crate::bus::BusDevice>>, base, len| {
            bus.insert(&ids.add(name).unwrap(), dev, base, len).unwrap();
        };
        insert("i8042", Arc::new(Mutex::new(I8042::new())), 0x60, 5);
        insert("cmos", Arc::new(Mutex::new(Cmos::new(1 << 30, 0))), 0x70, 2);
        insert("pm", Arc::new(Mutex::new(AcpiPm::new(5, 0x0f))), 0x600, 16);
        assert_eq!(
            bus.write(0x64, &[0xfe]).unwrap(),
            Some(MachineRequest::Reset)
        );
        assert_eq!(
            bus.write(0x60c, &[0x0f]).unwrap(),
            Some(MachineRequest::Reset)
        );
        assert_eq!(
            bus.write(0x606, &0x3400u16.to_le_bytes()).unwrap(),
            Some(MachineRequest::PowerOff)
        );
        assert_eq!(
            bus.write(0x600, &[0x34]).unwrap(),
            Some(MachineRequest::PowerOff)
        );
        bus.write(0x70, &[0x8d]).unwrap();
        let mut b = [0u8; 1];
        bus.read(0x71, &mut b).unwrap();
        assert_eq!(b, [0x80]);
    }
}
