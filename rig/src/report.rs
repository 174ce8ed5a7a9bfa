//! What the test guest's init reported on its console: `KEEL-T <step> key=value...` result
//! lines, `KEEL-T-FAIL <step> <reason>` and `KEEL-T-DONE` (see resources/guest-linux/README.md).
//! Values carry no spaces; the guest writes a space as `%20`, which [`unescape`] undoes.

use std::collections::BTreeMap;

use crate::error::{check, RigError};

/// One console line of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// `KEEL-T <step> key=value...`.
    Result {
        /// The step (or sub-result) name.
        step: String,
        /// Its values.
        values: BTreeMap<String, String>,
    },
    /// `KEEL-T-FAIL <step> <reason>`.
    Fail {
        /// The step that failed.
        step: String,
        /// Why, in the guest's words.
        reason: String,
    },
    /// `KEEL-T-DONE`: every step ran.
    Done,
}

/// Parses one console line; `None` for anything that is not part of the protocol.
pub fn parse_line(line: &str) -> Option<Entry> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line == "KEEL-T-DONE" {
        return Some(Entry::Done);
    }
    if let Some(rest) = line.strip_prefix("KEEL-T-FAIL ") {
        let (step, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        return Some(Entry::Fail {
            step: step.to_string(),
            reason: reason.to_string(),
        });
    }
    let rest = line.strip_prefix("KEEL-T ")?;
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let step = words.next()?.to_string();
    let values = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), unescape(v)))
        .collect();
    Some(Entry::Result { step, values })
}

/// Undoes the guest's `%20` escaping of spaces (and `%25` of `%`).
pub fn unescape(v: &str) -> String {
    v.replace("%20", " ").replace("%25", "%")
}

/// Kernel warnings kept per run (the first ones say what went wrong).
const MAX_KERNEL_WARNINGS: usize = 8;

/// Whether a console line is the kernel reporting a problem of its own: a `WARN()`, a `BUG:`,
/// an oops, or a CPU feature it turned off because what it read was inconsistent.
pub fn is_kernel_warning(line: &str) -> bool {
    // Kernel lines start with the "[    1.234567] " timestamp; the guest's own lines do not.
    let Some((_, text)) = line.split_once("] ") else {
        return false;
    };
    text.starts_with("WARNING: CPU:")
        || text.starts_with("BUG: ")
        || text.starts_with("Oops: ")
        || text.starts_with("XSAVE consistency problem")
}

/// Every protocol line of one guest run, in order, and the kernel's own warnings.
#[derive(Debug, Default, Clone)]
pub struct Report {
    entries: Vec<Entry>,
    kernel_warnings: Vec<String>,
}

impl Report {
    /// Adds a line if it belongs to the protocol or is a kernel warning.
    pub fn push_line(&mut self, line: &str) {
        if let Some(e) = parse_line(line) {
            self.entries.push(e);
        } else if is_kernel_warning(line) && self.kernel_warnings.len() < MAX_KERNEL_WARNINGS {
            self.kernel_warnings.push(line.trim_end().to_string());
        }
    }

    /// Fails, quoting them, if the guest kernel printed warnings (see [`is_kernel_warning`]).
    pub fn expect_no_kernel_warnings(&self) -> Result<(), RigError> {
        check(self.kernel_warnings.is_empty(), || {
            format!(
                "the guest kernel warned: {}",
                self.kernel_warnings.join(" | ")
            )
        })
    }

    /// Whether the guest said `KEEL-T-DONE`.
    pub fn done(&self) -> bool {
        self.entries.contains(&Entry::Done)
    }

    /// The steps that failed, as `step: reason`.
    pub fn failures(&self) -> Vec<String> {
        self.entries
            .iter()
            .filter_map(|e| match e {
                Entry::Fail { step, reason } => Some(format!("{step}: {reason}")),
                _ => None,
            })
            .collect()
    }

    /// Every result of `step`, in order.
    pub fn all<'a>(
        &'a self,
        step: &'a str,
    ) -> impl Iterator<Item = &'a BTreeMap<String, String>> + 'a {
        self.entries.iter().filter_map(move |e| match e {
            Entry::Result { step: s, values } if s == step => Some(values),
            _ => None,
        })
    }

    /// `key` of the first result of `step`.
    pub fn value<'a>(&'a self, step: &'a str, key: &str) -> Result<&'a str, RigError> {
        self.all(step)
            .find_map(|v| v.get(key))
            .map(String::as_str)
            .ok_or_else(|| RigError::Check(format!("the guest reported no {step} {key}=")))
    }

    /// `key` of the first result of `step`, as a number.
    pub fn number(&self, step: &str, key: &str) -> Result<u64, RigError> {
        let v = self.value(step, key)?;
        v.parse()
            .map_err(|_| RigError::Check(format!("{step} {key}={v} is not a number")))
    }

    /// Fails unless every step ran without a `KEEL-T-FAIL` and the guest said `KEEL-T-DONE`.
    pub fn expect_clean(&self) -> Result<(), RigError> {
        let failures = self.failures();
        check(failures.is_empty(), || {
            format!("guest steps failed: {}", failures.join("; "))
        })?;
        check(self.done(), || "the guest never said KEEL-T-DONE".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_warnings_are_collected_and_fail_the_check() {
        let mut r = Report::default();
        r.push_line("[    0.1] x86/fpu: Enabled xstate features 0x207");
        r.push_line("KEEL-T info nproc=2");
        r.push_line("WARNING: CPU: not a kernel line, no timestamp");
        assert!(r.expect_no_kernel_warnings().is_ok());
        r.push_line("[    2.628489] XSAVE consistency problem: size 2696 != kernel_size 576");
        r.push_line("[    2.628489] WARNING: CPU: 0 PID: 0 at arch/x86/kernel/fpu/xstate.c:606");
        let e = r.expect_no_kernel_warnings().unwrap_err().to_string();
        assert!(
            e.contains("XSAVE consistency") && e.contains("xstate.c:606"),
            "{e}"
        );
        assert_eq!(r.number("info", "nproc").unwrap(), 2);
    }

    #[test]
    fn kernel_warnings_kept_are_bounded() {
        let mut r = Report::default();
        for i in 0..1000 {
            r.push_line(&format!("[ {i}.0] BUG: soft lockup - CPU#0 stuck"));
        }
        assert_eq!(r.kernel_warnings.len(), MAX_KERNEL_WARNINGS);
    }

    #[test]
    fn lines_parse_into_entries() {
        let mut r = Report::default();
        for l in [
            "[    1.0] random kernel line",
            "KEEL-T info nproc=2 memtotal_kb=1000 cmdline=a%20b\r",
            "KEEL-T node id=0 cpus=0-1",
            "KEEL-T node id=1 cpus=2",
            "KEEL-T-FAIL ro write succeeded",
            "KEEL-T-DONE",
        ] {
            r.push_line(l);
        }
        assert_eq!(r.number("info", "nproc").unwrap(), 2);
        assert_eq!(r.value("info", "cmdline").unwrap(), "a b");
        assert_eq!(r.all("node").count(), 2);
        assert!(r.done());
        assert_eq!(r.failures(), vec!["ro: write succeeded".to_string()]);
        assert!(r.expect_clean().is_err());
        assert!(r.value("info", "missing").is_err());
        assert!(r.number("node", "cpus").is_err());
    }

    #[test]
    fn a_report_without_done_is_not_clean() {
        let mut r = Report::default();
        r.push_line("KEEL-T info nproc=1");
        assert!(r.expect_clean().is_err());
        r.push_line("KEEL-T-DONE");
        assert!(r.expect_clean().is_ok());
    }

    #[test]
    fn non_protocol_lines_are_ignored() {
        assert_eq!(parse_line("KEEL-TX foo"), None);
        assert_eq!(parse_line("KEEL-FIO-START job=x"), None);
        assert_eq!(parse_line("KEEL-T "), None);
    }
}
