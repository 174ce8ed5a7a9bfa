//! Boots the probe guest through each boot path (64-bit ELF, PVH, bzImage) with 1 and 2 vCPUs
//! and checks what it reports against what Keel configured: the memory map, the command line,
//! the CPUs in ACPI/MP tables and online, and CPUID.

mod common;

use common::*;
use serde_json::Value;

const MEMORY: &str = "512M";
const MEMORY_BYTES: u64 = 512 << 20;

fn hex(v: &Value) -> u64 {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("not a hex string: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("bad hex {s}"))
}

fn leaf(cpuid: &Value, leaf: u64, subleaf: u64) -> Option<[u64; 4]> {
    cpuid["leaves"].as_array()?.iter().find_map(|l| {
        (hex(&l["leaf"]) == leaf && hex(&l["subleaf"]) == subleaf).then(|| {
            [
                hex(&l["eax"]),
                hex(&l["ebx"]),
                hex(&l["ecx"]),
                hex(&l["edx"]),
            ]
        })
    })
}

fn ids(v: &Value) -> Vec<u64> {
    let mut ids: Vec<u64> = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_u64().expect("integer id"))
        .collect();
    ids.sort();
    ids
}

fn check_default_report(run: &Run, cpus: u64, source: &str, cmdline: &str) {
    run.assert_probe_done();

    let e820 = run.report("e820");
    assert_eq!(e820["source"], source, "{}", run.describe());
    let entries: Vec<(u64, u64, u64)> = e820["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["addr"].as_u64().unwrap(),
                e["size"].as_u64().unwrap(),
                e["type"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x10_0000 - 0x9fc00, 2),
            (0x10_0000, MEMORY_BYTES - 0x10_0000, 1),
            (0xe000_0000, 0x10_0000, 2),
        ],
        "{}",
        run.describe()
    );

    assert_eq!(run.report("cmdline")["cmdline"], cmdline);

    let cpu_report = run.report("cpus");
    let expected: Vec<u64> = (0..cpus).collect();
    assert_eq!(
        ids(&cpu_report["acpi"]),
        expected,
        "ACPI MADT\n{}",
        run.describe()
    );
    assert_eq!(
        ids(&cpu_report["mptable"]),
        expected,
        "MP table\n{}",
        run.describe()
    );
    assert_eq!(
        ids(&cpu_report["online"]),
        expected,
        "online CPUs\n{}",
        run.describe()
    );
    assert_eq!(cpu_report["bsp"], 0);

    let cpuid = run.report("cpuid");
    assert_eq!(cpuid["hypervisor"], "KVMKVMKVM", "{}", run.describe());
    let l1 = leaf(&cpuid, 1, 0).expect("leaf 1");
    assert_eq!(l1[1] >> 24, 0, "BSP APIC ID");
    assert_eq!((l1[1] >> 16) & 0xff, cpus, "logical processor count");
    assert_ne!(l1[2] & (1 << 31), 0, "hypervisor bit");
    if is_pvm_host() {
        assert_eq!(l1[2] & (1 << 13), 0, "CX16 hidden on PVM");
    }
    if hex(&cpuid["max_basic"]) >= 0xb {
        let core = leaf(&cpuid, 0xb, 1).expect("leaf 0xB.1");
        assert_eq!(core[1] & 0xffff, cpus, "cores in leaf 0xB");
        assert_eq!((core[2] >> 8) & 0xff, 2, "core level type");
    }
    let timing = leaf(&cpuid, 0x4000_0010, 0).expect("timing leaf 0x40000010");
    assert!(timing[0] > 100_000, "TSC kHz {}", timing[0]);
}

fn boot_default(image: &str, cpus: u32, source: &str) {
    let cmdline = "console=ttyS0 keel.test=1";
    let run = run_probe(image, cpus, MEMORY, cmdline);
    check_default_report(&run, u64::from(cpus), source, cmdline);
}

#[test]
fn elf_64bit_entry_one_vcpu() {
    boot_default("probe.elf", 1, "boot_params");
}

#[test]
fn elf_64bit_entry_two_vcpus() {
    boot_default("probe.elf", 2, "boot_params");
}

#[test]
fn pvh_entry_one_vcpu() {
    boot_default("probe-pvh.elf", 1, "pvh");
}

#[test]
fn pvh_entry_two_vcpus() {
    boot_default("probe-pvh.elf", 2, "pvh");
}

#[test]
fn bzimage_one_vcpu() {
    boot_default("probe.bzimage", 1, "boot_params");
}

#[test]
fn bzimage_two_vcpus() {
    boot_default("probe.bzimage", 2, "boot_params");
}

#[test]
fn memory_above_the_hole_is_in_the_map() {
    let run = run_probe("probe.elf", 1, "4G", "probe.cmd=e820");
    run.assert_probe_done();
    let e820 = run.report("e820");
    let entries = e820["entries"].as_array().expect("entries");
    let high = entries
        .iter()
        .find(|e| e["addr"].as_u64() == Some(1 << 32))
        .unwrap_or_else(|| panic!("no RAM at 4 GiB\n{}", run.describe()));
    assert_eq!(high["size"].as_u64(), Some(1 << 30));
    assert_eq!(high["type"].as_u64(), Some(1));
    assert!(entries.iter().filter(|e| e["type"] == 1).all(|e| {
        let start = e["addr"].as_u64().unwrap();
        let end = start + e["size"].as_u64().unwrap();
        end <= 0xc000_0000 || start >= 1 << 32
    }));
}

#[test]
fn commands_run_in_order_and_spin_keeps_the_guest_alive() {
    let run = run_probe(
        "probe.elf",
        1,
        MEMORY,
        "probe.cmd=cmdline probe.cmd=spin:ms=200",
    );
    run.assert_probe_done();
    let cmds: Vec<Value> = run.json_lines().iter().map(|v| v["cmd"].clone()).collect();
    assert_eq!(cmds[..2], [Value::from("cmdline"), Value::from("spin")]);
    let spin = run.report("spin");
    assert_eq!(spin["ms"], 200);
    assert!(
        spin["iterations"].as_u64().unwrap_or(0) > 0,
        "{}",
        run.describe()
    );
}

#[test]
fn unknown_probe_command_is_reported() {
    let run = run_probe("probe.elf", 1, MEMORY, "probe.cmd=nonsense");
    assert_eq!(
        run.code(),
        Some(0),
        "the probe still powers off\n{}",
        run.describe()
    );
    let last = run.json_lines().pop().expect("a final line");
    assert_eq!(last["done"], false, "{}", run.describe());
}

#[test]
fn pvm_compat_off_keeps_cx16() {
    if !is_pvm_host() {
        eprintln!("skipped: only PVM hosts hide CX16");
        return;
    }
    let kernel = probe_image("probe.elf");
    let run = run_keel(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--cpus",
        "boot=1,pvm_compat=off",
        "--cmdline",
        "probe.cmd=cpuid",
    ]);
    run.assert_probe_done();
    let l1 = leaf(&run.report("cpuid"), 1, 0).expect("leaf 1");
    assert_ne!(
        l1[2] & (1 << 13),
        0,
        "CX16 offered with pvm_compat=off\n{}",
        run.describe()
    );
    assert!(!run.stderr.contains("hiding CPUID"), "{}", run.describe());
}

#[test]
fn guest_exception_is_reported_not_hung() {
    let run = run_probe("probe.elf", 1, MEMORY, "probe.cmd=fault");
    assert_eq!(run.code(), Some(0), "{}", run.describe());
    let last = run.json_lines().pop().expect("a final line");
    assert_eq!(last["done"], false);
    assert!(
        last["error"].as_str().unwrap_or("").contains("exception"),
        "{}",
        run.describe()
    );
}

/// `--firmware` enters a PVH image as a firmware: through its PVH note, with the PVH start
/// info, an empty command line and no initramfs; the probe then powers off through ACPI.
#[test]
fn firmware_boots_a_pvh_image_without_a_command_line() {
    let image = probe_image("probe-pvh.elf");
    let run = run_keel(&[
        "--firmware",
        image.to_str().expect("utf-8 path"),
        "--cpus",
        "boot=2",
        "--memory",
        &format!("size={MEMORY}"),
    ]);
    check_default_report(&run, 2, "pvh", "");
}
