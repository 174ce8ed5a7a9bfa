//! Lifecycle: the guest's `reboot -f` makes keel exit 3; SIGTERM to keel while the guest runs
//! makes it exit 0. (Power-off giving exit 0 is checked by every boot scenario.)

use std::path::Path;

use super::Scenario;
use crate::error::{check, RigError};
use crate::guest::{End, Guest, Kernel, Launch};
use crate::Ctx;

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "lifecycle-reboot",
            about: "guest reboot -f: keel exits 3",
            run: Box::new(reboot),
        },
        Scenario {
            name: "lifecycle-sigterm",
            about: "SIGTERM to keel while the guest runs: keel exits 0",
            run: Box::new(sigterm),
        },
    ]
}

fn reboot(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let mut launch = Launch::new(Kernel::BzImage, 1, &["info"]);
    launch.end = End::Reboot;
    let out = Guest::start(ctx, dir, "guest", &launch)?.finish()?;
    out.report.expect_clean()?;
    check(out.code() == Some(3), || {
        format!(
            "keel exited {:?} after the guest's reboot, not 3",
            out.code()
        )
    })?;
    Ok("reboot -f: exit 3".into())
}

fn sigterm(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let mut launch = Launch::new(Kernel::Pvh, 2, &["info"]);
    launch.end = End::Hang;
    let mut guest = Guest::start(ctx, dir, "guest", &launch)?;
    guest.wait_for("KEEL-T-DONE")?;
    guest.signal(libc::SIGTERM)?;
    let out = guest.finish()?;
    check(out.code() == Some(0), || {
        format!("keel exited {:?} on SIGTERM, not 0", out.code())
    })?;
    Ok("SIGTERM while the guest runs: exit 0".into())
}
