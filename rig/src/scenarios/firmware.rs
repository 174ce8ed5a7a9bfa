//! UEFI firmware boots (`keel --firmware`): edk2's Cloud Hypervisor firmware (`make firmware`)
//! boots Linux from an EFI system partition through its UEFI Shell's startup.nsh, and powers
//! off or resets the machine when its Shell is told to. The disks come from
//! resources/firmware/rig-disks.sh.

use std::path::{Path, PathBuf};

use super::blk::expect_fio_ok;
use super::boot::{expect_cpus, expect_memory};
use super::Scenario;
use crate::error::{check, RigError};
use crate::guest::{Guest, Outcome};
use crate::image;
use crate::Ctx;

const MIB: u64 = 1 << 20;
/// The Linux boot's RAM: 5 GiB, so that most of it lies above the 32-bit hole.
const LINUX_MIB: u64 = 5 * 1024;
/// What the firmware prints on COM1 when its UEFI Shell starts.
const SHELL_BANNER: &str = "UEFI Interactive Shell";
/// Keel's exit code when the guest resets the machine.
const EXIT_RESET: i32 = 3;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "firmware-linux",
            about: "UEFI firmware boots Linux from a GPT disk's ESP through the Shell: 2 vCPUs, \
                    5 GiB, verified fio on a second disk, ACPI poweroff",
            run: Box::new(linux),
        },
        Scenario {
            name: "firmware-shell-poweroff",
            about: "`reset -s` in the firmware's UEFI Shell powers off: keel exits 0",
            run: Box::new(|c, d| shell_reset(c, d, "poweroff.img", 0)),
        },
        Scenario {
            name: "firmware-shell-reset",
            about: "`reset` in the firmware's UEFI Shell resets the machine: keel exits 3",
            run: Box::new(|c, d| shell_reset(c, d, "reset.img", EXIT_RESET)),
        },
    ]
}

/// A file of the firmware directory.
fn firmware_file(ctx: &Ctx, name: &str) -> Result<PathBuf, RigError> {
    let dir = ctx.firmware.as_ref().ok_or_else(|| {
        RigError::Check("no firmware directory (keel-rig --firmware; make firmware)".into())
    })?;
    let path = dir.join(name);
    check(path.is_file(), || {
        format!(
            "{} is missing (resources/firmware/rig-disks.sh)",
            path.display()
        )
    })?;
    Ok(path)
}

/// keel's arguments for a firmware boot with `disks` (the ESP read-only: scenarios share it).
fn firmware_args(
    ctx: &Ctx,
    cpus: u32,
    mib: u64,
    disks: &[String],
) -> Result<Vec<String>, RigError> {
    let mut args = vec![
        "--firmware".into(),
        firmware_file(ctx, "CLOUDHV.fd")?.display().to_string(),
        "--cpus".into(),
        format!("boot={cpus}"),
        "--memory".into(),
        format!("size={mib}M"),
        "--serial".into(),
        "tty".into(),
        "--stats".into(),
        "--log-level".into(),
        "debug".into(),
    ];
    for d in disks {
        args.extend(["--disk".into(), d.clone()]);
    }
    Ok(args)
}

/// The console log shows the firmware's UEFI Shell.
fn expect_shell(dir: &Path) -> Result<(), RigError> {
    let path = dir.join("guest.console");
    let text = std::fs::read(&path).map_err(crate::error::io("cannot read", &path))?;
    check(
        String::from_utf8_lossy(&text).contains(SHELL_BANNER),
        || format!("the console never showed '{SHELL_BANNER}'"),
    )
}

fn expect_exit(out: &Outcome, code: i32) -> Result<(), RigError> {
    check(out.code() == Some(code), || {
        format!("keel exited {:?}, not {code}", out.code())
    })
}

fn linux(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let esp = firmware_file(ctx, "linux.img")?;
    let cmdline = std::fs::read_to_string(firmware_file(ctx, "linux.cmdline")?)
        .map_err(crate::error::io("cannot read", "linux.cmdline"))?;
    // The blank data disk comes first: it is the guest's /dev/vda, which fio verifies; the
    // firmware finds the ESP on the second disk.
    let data = image::create(dir, "data.img", 64 * MIB, None)?;
    let disks = [
        format!("path={}", data.display()),
        format!("path={},readonly=on", esp.display()),
    ];
    let args = firmware_args(ctx, 2, LINUX_MIB, &disks)?;
    let out = Guest::start_with_args(ctx, dir, "guest", args)?.finish()?;
    expect_shell(dir)?;
    out.report.expect_clean()?;
    expect_exit(&out, 0)?;
    // The EFI stub's command line is the Shell's whole command: the image, initrd=, then ours.
    let seen = out.report.value("cmdline", "text")?;
    let given = cmdline.trim_end();
    check(
        seen.contains("initrd=") && seen.trim_end().ends_with(given),
        || format!("the guest's /proc/cmdline is '{seen}', startup.nsh gave '{given}'"),
    )?;
    let moved = expect_bars_moved_high(dir)?;
    expect_cpus(&out.report, 2)?;
    let share = expect_memory(&out.report, LINUX_MIB)?;
    let ios = expect_fio_ok(&out, "verify1")?;
    let msix = out.report.number("irqs", "virtio_msix")?;
    check(msix >= 4, || {
        format!("the guest lists {msix} virtio MSI-X vectors, want at least 2 per disk")
    })?;
    Ok(format!(
        "UEFI Shell booted Linux: 2 vCPUs, MemTotal {:.1}% of {LINUX_MIB} MiB, the firmware \
         moved {moved} BARs above 4 GiB, fio verified {ios} I/Os on /dev/vda, {msix} virtio \
         MSI-X vectors, ACPI poweroff, exit 0",
        share * 100.0
    ))
}

/// The firmware assigned the disks' 64-bit BARs itself, above 4 GiB, and keel followed (its
/// `guest moved BAR` lines); returns how many moved there.
fn expect_bars_moved_high(dir: &Path) -> Result<usize, RigError> {
    let path = dir.join("guest.stderr");
    let log = std::fs::read_to_string(&path).map_err(crate::error::io("cannot read", &path))?;
    let high = log
        .lines()
        .filter_map(|l| l.split_once("guest moved BAR ")?.1.split_once(" to 0x"))
        .filter_map(|(_, addr)| u64::from_str_radix(addr.trim(), 16).ok())
        .filter(|&addr| addr >= 1 << 32)
        .count();
    check(high > 0, || {
        "keel logged no BAR the firmware moved above 4 GiB".into()
    })?;
    Ok(high)
}

/// The firmware's Shell runs `esp`'s startup.nsh (`reset -s` or `reset`); keel must exit `code`.
fn shell_reset(ctx: &Ctx, dir: &Path, esp: &str, code: i32) -> Result<String, RigError> {
    let esp = firmware_file(ctx, esp)?;
    let args = firmware_args(
        ctx,
        1,
        512,
        &[format!("path={},readonly=on", esp.display())],
    )?;
    let out = Guest::start_with_args(ctx, dir, "guest", args)?.finish()?;
    expect_shell(dir)?;
    expect_exit(&out, code)?;
    Ok(format!(
        "UEFI Shell ran its startup.nsh, keel exited {code}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn moved(log: &str) -> Result<usize, RigError> {
        let dir = std::env::temp_dir().join(format!("keel-rig-fw-{}", super::super::nonce()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("guest.stderr"), log).unwrap();
        let r = expect_bars_moved_high(&dir);
        let _ = std::fs::remove_dir_all(dir);
        r
    }

    #[test]
    fn only_bars_keel_followed_above_4g_count() {
        let high = "keel: info: guest moved BAR 0 of 00:02.0 (disk1) to 0xe000000000\n";
        let low = "keel: info: guest moved BAR 0 of 00:01.0 (disk0) to 0xc0000000\n";
        let refused = "keel: warn: guest moved BAR 0 of 00:01.0 (disk0) to 0xe000080000: \
                       overlaps; it decodes nowhere until moved again\n";
        assert_eq!(moved(&format!("{high}{low}{high}")).unwrap(), 2);
        assert!(moved(low).is_err());
        assert!(moved(refused).is_err());
        assert!(moved("").is_err());
    }
}
