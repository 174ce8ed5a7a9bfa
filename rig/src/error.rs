//! The rig's one error type: what failed, with the cause where there is one.

use std::path::PathBuf;

/// Why a scenario, a guest run or the L1 launcher failed.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// A check on what the guest or the host saw did not hold.
    #[error("{0}")]
    Check(String),
    /// A program could not be started.
    #[error("cannot start {program}")]
    Spawn {
        /// The program.
        program: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file or socket operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A wait ran past its deadline (the process was killed).
    #[error("timed out after {secs} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline, in seconds.
        secs: u64,
    },
    /// The guest's or a tool's output ended before what was awaited.
    #[error("output ended before {what} ({status})")]
    Ended {
        /// What was awaited.
        what: String,
        /// How the process ended.
        status: String,
    },
    /// A reply that should be JSON was not.
    #[error("cannot parse {what}")]
    Json {
        /// What was parsed.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

/// Fails with `RigError::Check(msg())` unless `cond` holds.
pub fn check(cond: bool, msg: impl FnOnce() -> String) -> Result<(), RigError> {
    if cond {
        Ok(())
    } else {
        Err(RigError::Check(msg()))
    }
}

/// An `Io` error constructor for `map_err`.
pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RigError {
    let path = path.into();
    move |source| RigError::Io { what, path, source }
}
