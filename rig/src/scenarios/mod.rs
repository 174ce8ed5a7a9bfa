//! The named scenarios of the Linux guest suite, and running a list of them: each gets its own
//! directory under the work directory, one `RIG-RESULT` line, and on failure the last lines of
//! its consoles (`RIG-LOG`).

mod bench;
mod blk;
mod boot;
mod clocks;
mod console;
mod firmware;
mod lifecycle;
mod placement;
mod probe;
mod snapshot;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{io, RigError};
use crate::Ctx;

/// A scenario's body: runs its guests in a directory of its own and returns a one-line summary
/// of what it saw.
pub type Body = Box<dyn Fn(&Ctx, &Path) -> Result<String, RigError>>;

/// A named scenario.
pub struct Scenario {
    /// Its name (`make rig RIG_SCENARIOS=name`).
    pub name: &'static str,
    /// What it proves, in one line.
    pub about: &'static str,
    /// The body.
    pub run: Body,
}

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    let mut v = boot::scenarios();
    v.extend(lifecycle::scenarios());
    v.extend(blk::scenarios());
    v.extend(placement::scenarios());
    v.extend(clocks::scenarios());
    v.extend(console::scenarios());
    v.extend(probe::scenarios());
    v.extend(snapshot::scenarios());
    v.extend(firmware::scenarios());
    v.extend(bench::scenarios());
    v
}

/// The scenarios named (all if `names` is empty), in that order; a name given twice runs twice
/// (to chase an intermittent failure); an unknown name is an error.
pub fn select(names: &[String]) -> Result<Vec<Scenario>, RigError> {
    if names.is_empty() {
        return Ok(all());
    }
    names
        .iter()
        .map(|n| {
            all().into_iter().find(|s| s.name == n).ok_or_else(|| {
                RigError::Check(format!(
                    "no scenario named '{n}' (keel-rig list names them)"
                ))
            })
        })
        .collect()
}

/// Runs `list` one after another; returns (passed, failed).
pub fn run_all(ctx: &Ctx, list: &[Scenario]) -> (usize, usize) {
    let (mut passed, mut failed) = (0, 0);
    for s in list {
        crate::say(format!("RIG-START {}", s.name));
        let started = Instant::now();
        let result = scenario_dir(ctx, s.name).and_then(|dir| (s.run)(ctx, &dir).map(|m| (dir, m)));
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok((_, summary)) => {
                passed += 1;
                crate::say(format!("RIG-RESULT {} PASS {secs:.1}s {summary}", s.name));
            }
            Err(e) => {
                failed += 1;
                crate::say(format!(
                    "RIG-RESULT {} FAIL {secs:.1}s {}",
                    s.name,
                    error_chain(&e)
                ));
                print_logs(s.name, &ctx.work.join(s.name));
            }
        }
    }
    (passed, failed)
}

fn scenario_dir(ctx: &Ctx, name: &str) -> Result<PathBuf, RigError> {
    let dir = ctx.work.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io("cannot clear", &dir))?;
    }
    std::fs::create_dir_all(&dir).map_err(io("cannot create", &dir))?;
    Ok(dir)
}

/// `e` and its causes, joined with ": ".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// Lines of each console and stderr log printed after a failure.
const LOG_TAIL: usize = 30;

/// Prints the last lines of every log in `dir` as `RIG-LOG <name> <file>| <line>`.
fn print_logs(name: &str, dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("console" | "stderr" | "out")
            )
        })
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read(&f)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let file = f.file_name().and_then(|n| n.to_str()).unwrap_or("?");
        let tail_from = lines.len().saturating_sub(LOG_TAIL);
        // Where each vCPU was when keel stopped (its debug log), even above the tail.
        let vcpu_stops = lines[..tail_from]
            .iter()
            .filter(|l| l.contains("vCPU") && l.contains(" stopped at "));
        for l in vcpu_stops.chain(&lines[tail_from..]) {
            let l: String = l.chars().take(300).collect();
            crate::say(format!("RIG-LOG {name} {file}| {l}"));
        }
    }
}

/// A value for the guest's command line that no other run has.
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", t as u64, std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_selectable() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let picked = select(&["lifecycle-reboot".into(), "boot-pvh-1cpu".into()]).unwrap();
        assert_eq!(picked[0].name, "lifecycle-reboot");
        assert_eq!(picked[1].name, "boot-pvh-1cpu");
        assert!(select(&["nope".into()]).is_err());
        assert_eq!(select(&[]).unwrap().len(), all.len());
        let twice = select(&["console-echo".into(), "console-echo".into()]).unwrap();
        assert_eq!(twice.len(), 2);
    }
}
