//! Which host QEMU may run the rig's L1. L1 runs KVM (kvm_amd) on QEMU's emulated AMD SVM, so
//! what a nested guest sees depends on TCG's SVM being right. Debian bookworm's QEMU 7.2 does
//! not intercept XSETBV for a nested guest: KVM in L1 never learns the guest's XCR0, answers
//! CPUID 0xD with the XSAVE size of x87 state alone, and the nested Linux warns "XSAVE
//! consistency problem" and runs without XSAVE (no AVX), unlike on any real host. Under 7.2 L1's
//! own kernel also died once in a keel vCPU thread (a GS-relative access after a VM exit).
//! QEMU 10.0 (bookworm-backports) intercepts XSETBV: the nested guest enables x87, SSE, AVX and
//! PKRU state as it would on hardware. (L1 runs one vCPU for a separate reason: `l1::L1_CPUS`.)

use std::path::Path;
use std::process::Command;

use crate::error::RigError;

/// The oldest QEMU whose TCG runs the rig's nested guests reliably.
pub const OLDEST: (u32, u32) = (10, 0);

/// `(major, minor)` from `qemu-system-x86_64 --version`'s first line, "QEMU emulator version
/// 10.0.2 (Debian ...)".
pub fn parse(version_output: &str) -> Option<(u32, u32)> {
    let line = version_output.lines().next()?;
    let rest = line.strip_prefix("QEMU emulator version ")?;
    let number = rest.split_whitespace().next()?;
    let mut parts = number.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Fails, naming the version found and how to get a newer one, unless `qemu` is at least
/// [`OLDEST`].
pub fn require_recent(qemu: &Path) -> Result<(), RigError> {
    let out = Command::new(qemu)
        .arg("--version")
        .output()
        .map_err(|source| RigError::Spawn {
            program: qemu.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found = parse(&text).ok_or_else(|| {
        RigError::Check(format!(
            "cannot read {}'s version from '{}'",
            qemu.display(),
            text.lines().next().unwrap_or("")
        ))
    })?;
    if found >= OLDEST {
        return Ok(());
    }
    Err(RigError::Check(format!(
        "{} is QEMU {}.{}; the rig's L1 needs QEMU {}.{} or newer, whose TCG runs nested \
         guests reliably (on Debian bookworm: apt-get install -t bookworm-backports \
         qemu-system-x86; .ci/run does it)",
        qemu.display(),
        found.0,
        found.1,
        OLDEST.0,
        OLDEST.1
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_debian_and_upstream_version_lines() {
        let debian = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n\
                      Copyright (c) 2003-2025 Fabrice Bellard";
        assert_eq!(parse(debian), Some((10, 0)));
        assert_eq!(
            parse("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
            Some((7, 2))
        );
        assert_eq!(parse("QEMU emulator version 9.2.0\n"), Some((9, 2)));
    }

    #[test]
    fn rejects_other_text() {
        assert_eq!(parse(""), None);
        assert_eq!(parse("qemu-img version 10.0.2"), None);
        assert_eq!(parse("QEMU emulator version x.y"), None);
    }

    #[test]
    fn orders_versions_by_major_then_minor() {
        assert!((7, 2) < OLDEST);
        assert!((9, 99) < OLDEST);
        assert!((10, 0) >= OLDEST);
        assert!((11, 0) >= OLDEST);
    }

    #[test]
    fn a_program_that_is_not_qemu_is_refused() {
        let e = require_recent(Path::new("/bin/true")).unwrap_err();
        assert!(e.to_string().contains("cannot read"), "{e}");
    }
}
