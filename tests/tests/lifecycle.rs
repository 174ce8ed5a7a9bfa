//! How a VM ends: guest poweroff exits 0 (PM1a_CNT or the firmware's sleep control register),
//! a triple fault and a guest reset (i8042, the FADT reset register, the chipset's 0xCF9) end
//! the VM with a message and exit 3, an instruction KVM cannot emulate is reported with RIP and bytes, and
//! SIGTERM/SIGINT stop the VM cleanly. Tiny hand-assembled kernels keep these independent of
//! the probe guest.

mod common;

use common::*;

#[test]
fn guest_poweroff_exits_zero_and_serial_reaches_stdout() {
    let kernel = tiny_kernel("hello.elf", &print_and_poweroff(b"hello keel\n"));
    let run = run_keel(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(run.stdout, "hello keel\n", "{}", run.describe());
}

#[test]
fn serial_file_and_off_modes() {
    let kernel = tiny_kernel("file.elf", &print_and_poweroff(b"to a file\n"));
    let out = kernel.with_file_name("serial.log");
    let _ = std::fs::remove_file(&out);
    let arg = format!("file={}", out.display());
    let run = run_keel(&["--kernel", kernel.to_str().unwrap(), "--serial", &arg]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(run.stdout, "");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "to a file\n");

    let run = run_keel(&["--kernel", kernel.to_str().unwrap(), "--serial", "off"]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert_eq!(run.stdout, "");
}

#[test]
fn triple_fault_ends_the_vm_as_a_reset() {
    // ud2 with only the empty boot IDT: #UD -> #GP -> #DF -> shutdown.
    let kernel = tiny_kernel("ud2.elf", &[0x0f, 0x0b]);
    let run = run_keel(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("guest reset (TripleFault)"),
        "{}",
        run.describe()
    );
}

/// x86 code: `mov dx, PORT; mov al, VALUE; out dx, al`, then `hlt` forever.
fn out_byte_then_halt(port: u16, value: u8) -> Vec<u8> {
    let [lo, hi] = port.to_le_bytes();
    vec![0x66, 0xba, lo, hi, 0xb0, value, 0xee, 0xf4, 0xeb, 0xfd]
}

/// Boots `code` as a tiny kernel: the VM must end as a reset a device asked for (exit 3).
fn assert_device_reset(name: &str, code: &[u8]) {
    let kernel = tiny_kernel(name, code);
    let run = run_keel(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(run.code(), Some(3), "{}", run.describe());
    assert!(
        run.stderr.contains("guest reset (Device)"),
        "{}",
        run.describe()
    );
}

#[test]
fn i8042_reset_ends_the_vm_as_a_reset() {
    // mov al, 0xfe; out 0x64, al; hlt
    assert_device_reset("reset.elf", &[0xb0, 0xfe, 0xe6, 0x64, 0xf4, 0xeb, 0xfd]);
}

#[test]
fn acpi_reset_register_ends_the_vm_as_a_reset() {
    assert_device_reset("acpi-reset.elf", &out_byte_then_halt(0x60c, 0x01));
}

#[test]
fn chipset_reset_control_ends_the_vm_as_a_reset() {
    // What edk2's firmware writes to reset: RST_CPU | SYS_RST to 0xCF9.
    assert_device_reset("cf9-reset.elf", &out_byte_then_halt(0xcf9, 0x06));
}

#[test]
fn the_firmware_sleep_control_register_powers_off() {
    // What edk2's CloudHv firmware writes to power off: SLP_TYP 5 | SLP_EN to 0x600.
    let kernel = tiny_kernel("sleep-control.elf", &out_byte_then_halt(0x600, 0x34));
    let run = run_keel(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
}

#[test]
fn emulation_failure_reports_rip_and_instruction_bytes() {
    if !is_pvm_host() {
        eprintln!("skipped: only a PVM host fails to emulate cmpxchg16b at CPL0");
        return;
    }
    // lock cmpxchg16b [rsi]: the PVM emulator lacks it.
    let kernel = tiny_kernel("cx16.elf", &[0xf0, 0x48, 0x0f, 0xc7, 0x0e, 0xf4]);
    let run = run_keel(&["--kernel", kernel.to_str().unwrap()]);
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    let line = run
        .stderr
        .lines()
        .find(|l| l.contains("internal error"))
        .unwrap_or_else(|| panic!("no internal error line\n{}", run.describe()));
    assert!(line.contains("emulation failure"), "{line}");
    assert!(line.contains("RIP 0x100000"), "{line}");
    assert!(line.contains("f0 48 0f c7 0e"), "{line}");
}

fn stop_with(signal: libc::c_int, name: &str) {
    // Prints a line, then an endless hlt: only a signal ends it. Keel installs its SIGINT and
    // SIGTERM handlers before it creates the VM, so once the guest has printed, the signal
    // meets them (sent earlier, it would kill keel instead: the race this line rules out).
    let kernel = tiny_kernel(&format!("halt-{name}.elf"), &print_and_halt(b"up\n"));
    let mut keel = Watched::spawn(&["--kernel", kernel.to_str().unwrap(), "--cpus", "boot=2"]);
    keel.wait_stdout("up", HANG_GUARD);
    keel.signal(signal);
    let run = keel.finish(HANG_GUARD);
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    assert!(
        run.stderr.contains(&format!("stopped by {name}")),
        "{}",
        run.describe()
    );
    assert_eq!(run.stdout, "up\n", "{}", run.describe());
}

#[test]
fn sigterm_stops_the_vm_cleanly() {
    stop_with(libc::SIGTERM, "SIGTERM");
}

#[test]
fn sigint_stops_the_vm_cleanly() {
    stop_with(libc::SIGINT, "SIGINT");
}
