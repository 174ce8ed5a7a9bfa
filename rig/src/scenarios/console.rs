//! Console input: a line typed on keel's stdin reaches the guest's COM1, and the guest echoes it.

use std::path::Path;

use super::{nonce, Scenario};
use crate::error::{check, RigError};
use crate::guest::{Guest, Kernel, Launch};
use crate::Ctx;

pub fn scenarios() -> Vec<Scenario> {
    vec![Scenario {
        name: "console-echo",
        about: "a line typed on keel's stdin is read by the guest and echoed",
        run: Box::new(echo),
    }]
}

fn echo(ctx: &Ctx, dir: &Path) -> Result<String, RigError> {
    let launch = Launch::new(Kernel::BzImage, 1, &["console"]);
    let mut guest = Guest::start(ctx, dir, "guest", &launch)?;
    guest.wait_for("KEEL-T console ready")?;
    let typed = format!("hello keel {}", nonce());
    guest.send_line(&typed)?;
    let out = guest.finish()?;
    out.report.expect_clean()?;
    let got = out.report.value("console", "line")?;
    check(got == typed, || {
        format!("the guest read '{got}', not '{typed}'")
    })?;
    check(out.code() == Some(0), || {
        format!("keel exited {:?}, not 0", out.code())
    })?;
    Ok(format!("typed and echoed: '{typed}'"))
}
