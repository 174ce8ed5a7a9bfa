//! Bad user input gets one clear line on stderr and a non-zero exit, never a panic.

mod common;

use common::*;

fn assert_refused(args: &[&str], expect: &str) {
    let run = run_keel(args);
    assert_eq!(run.code(), Some(1), "{args:?}\n{}", run.describe());
    let lines: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| !l.contains("warn:"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one error line\n{}",
        run.describe()
    );
    assert!(
        lines[0].contains(expect),
        "{args:?}: {:?} lacks {expect:?}",
        lines[0]
    );
    assert!(!run.stderr.contains("panicked"));
    assert_eq!(run.stdout, "", "no guest ran");
}

fn ok_kernel() -> String {
    tiny_kernel("ok.elf", &print_and_poweroff(b"x"))
        .display()
        .to_string()
}

#[test]
fn missing_kernel_file() {
    assert_refused(
        &["--kernel", "/nonexistent/vmlinux"],
        "/nonexistent/vmlinux",
    );
}

#[test]
fn kernel_flag_required() {
    assert_refused(&[], "--kernel");
}

#[test]
fn firmware_that_is_not_a_pvh_firmware() {
    // An ELF kernel without a PVH note boots with --kernel, not as a firmware.
    assert_refused(&["--firmware", &ok_kernel()], "not a PVH firmware");
    assert_refused(&["--firmware", "/nonexistent/CLOUDHV.fd"], "--firmware");
}

#[test]
fn firmware_comes_without_kernel_options() {
    let fw = probe_image("probe-pvh.elf").display().to_string();
    for other in [
        ["--kernel", fw.as_str()],
        ["--cmdline", "quiet"],
        ["--initramfs", fw.as_str()],
    ] {
        assert_refused(
            &["--firmware", &fw, other[0], other[1]],
            "cannot be used with",
        );
    }
}

#[test]
fn kernel_that_is_a_directory() {
    assert_refused(&["--kernel", "/tmp"], "not a regular file");
}

#[test]
fn file_that_is_not_a_kernel() {
    let path = tiny_kernel("garbage", b"").with_file_name("not-a-kernel.bin");
    std::fs::write(&path, vec![0x5a; 4096]).unwrap();
    assert_refused(&["--kernel", path.to_str().unwrap()], "not a kernel image");
}

#[test]
fn zero_memory() {
    assert_refused(
        &["--kernel", &ok_kernel(), "--memory", "size=0"],
        "too small",
    );
}

#[test]
fn more_memory_than_the_host() {
    assert_refused(
        &["--kernel", &ok_kernel(), "--memory", "size=64T"],
        "more than the host",
    );
}

#[test]
fn unaligned_and_unparsable_memory() {
    assert_refused(
        &["--kernel", &ok_kernel(), "--memory", "size=67108865"],
        "multiple of",
    );
    assert_refused(
        &["--kernel", &ok_kernel(), "--memory", "size=lots"],
        "invalid value",
    );
}

#[test]
fn zero_vcpus() {
    assert_refused(
        &["--kernel", &ok_kernel(), "--cpus", "boot=0"],
        "at least one vCPU",
    );
}

#[test]
fn more_vcpus_than_allowed() {
    assert_refused(
        &["--kernel", &ok_kernel(), "--cpus", "boot=100000"],
        "at most",
    );
}

#[test]
fn unknown_keys_and_flags() {
    assert_refused(
        &["--kernel", &ok_kernel(), "--cpus", "boot=1,turbo=on"],
        "unknown key 'turbo'",
    );
    assert_refused(
        &["--kernel", &ok_kernel(), "--memory", "size=1G,colour=red"],
        "unknown key 'colour'",
    );
    assert_refused(
        &["--kernel", &ok_kernel(), "--serial", "socket=/x"],
        "expected tty, off or file=PATH",
    );
    assert_refused(&["--kernel", &ok_kernel(), "--frobnicate"], "--frobnicate");
    assert_refused(
        &["--kernel", &ok_kernel(), "--log-level", "loud"],
        "unknown log level",
    );
}

#[test]
fn missing_initramfs() {
    assert_refused(
        &[
            "--kernel",
            &ok_kernel(),
            "--initramfs",
            "/nonexistent/initrd",
        ],
        "/nonexistent/initrd",
    );
}

#[test]
fn serial_file_in_missing_directory() {
    assert_refused(
        &[
            "--kernel",
            &ok_kernel(),
            "--serial",
            "file=/nonexistent/dir/log",
        ],
        "--serial",
    );
}

#[test]
fn keel_stat_bad_arguments_are_one_line() {
    assert_refused(
        &["stat", "--pid", "abc"],
        "keel stat: invalid value 'abc' for '--pid",
    );
    assert_refused(
        &["stat", "--pid", "1", "--colour"],
        "keel stat: unexpected argument",
    );
}
