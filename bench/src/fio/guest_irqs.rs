//! The guest's interrupts over fio's run, by source: the `KEEL-FIO-IRQS NAME=COUNT ...` line the
//! Linux guest's init prints after fio (its `/proc/interrupts` before and after, differenced,
//! all CPUs summed). It shows the same figures for every VMM, so what each one makes the guest
//! take per I/O (its disks' interrupts, timer ticks, IPIs between vCPUs) can be set side by side.
//!
//! The line comes from the guest: it is parsed with bounds (entries, name length and
//! characters) and anything that does not fit is skipped, never trusted.

/// Prefix of the line.
pub const IRQS: &str = "KEEL-FIO-IRQS";
/// At most this many sources are kept.
const MAX_SOURCES: usize = 64;
/// Longest source name kept.
const MAX_NAME: usize = 48;

/// One source's interrupts over the run.
#[derive(Debug, Clone, PartialEq)]
pub struct IrqCount {
    /// `/proc/interrupts`' label (`LOC`, `CAL`, ...) or a numbered IRQ's name (`virtio2-req.0`).
    pub name: String,
    /// Interrupts over the run, all CPUs.
    pub count: u64,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b))
}

/// The counts of one `KEEL-FIO-IRQS` line's body (after the prefix), sorted by name: at most
/// `MAX_SOURCES`, each `NAME=COUNT` with a name of letters, digits and `._-:`; malformed
/// words are skipped and a repeated name is summed.
pub fn parse(body: &str) -> Vec<IrqCount> {
    let mut out: Vec<IrqCount> = Vec::new();
    for word in body.split_ascii_whitespace() {
        let Some((name, count)) = word.split_once('=') else {
            continue;
        };
        let (true, Ok(count)) = (valid_name(name), count.parse::<u64>()) else {
            continue;
        };
        if let Some(c) = out.iter_mut().find(|c| c.name == name) {
            c.count = c.count.saturating_add(count);
        } else if out.len() < MAX_SOURCES {
            out.push(IrqCount {
                name: name.to_string(),
                count,
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A source's family, so that two VMMs' guests compare although they number their virtio
/// devices differently: a virtio device's request queues are `virtio_req`, its configuration
/// vector `virtio_config`; other names are kept.
pub fn family(name: &str) -> &str {
    match name.strip_prefix("virtio") {
        Some(rest) if rest.contains("-req") => "virtio_req",
        Some(rest) if rest.contains("-config") => "virtio_config",
        _ => name,
    }
}

/// Interrupts per I/O by family, sorted by family.
pub fn per_io_by_family(counts: &[IrqCount], ios: u64) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    if ios == 0 {
        return out;
    }
    for c in counts {
        let f = family(&c.name);
        let x = c.count as f64 / ios as f64;
        match out.iter_mut().find(|(name, _)| name == f) {
            Some((_, sum)) => *sum += x,
            None => out.push((f.to_string(), x)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_gives_counts_sorted_by_name() {
        let c = parse(" LOC=1100 virtio0-req.0=800 CAL=50");
        let names: Vec<_> = c.iter().map(|c| (c.name.as_str(), c.count)).collect();
        assert_eq!(names, [("CAL", 50), ("LOC", 1100), ("virtio0-req.0", 800)]);
    }

    #[test]
    fn hostile_words_are_skipped_and_the_list_is_bounded() {
        let long = "x".repeat(MAX_NAME + 1);
        let body =
            format!("a=1 b=-2 c=x {long}=3 =4 d e=5=6 f\u{1b}[2J=7 g=99999999999999999999999 a=2");
        let c = parse(&body);
        assert_eq!(
            c,
            vec![IrqCount {
                name: "a".into(),
                count: 3
            }]
        );
        let many: String = (0..1000).map(|i| format!("s{i}=1 ")).collect();
        assert_eq!(parse(&many).len(), MAX_SOURCES);
        assert_eq!(parse(&format!("n={} n={}", u64::MAX, 5))[0].count, u64::MAX);
    }

    #[test]
    fn virtio_queues_of_any_device_fall_in_one_family() {
        let c = parse("virtio1-req.0=30 virtio3-req.1=10 virtio1-config=1 CAL=20 LOC=40");
        let f = per_io_by_family(&c, 100);
        let f: Vec<_> = f.iter().map(|(n, x)| (n.as_str(), *x)).collect();
        assert_eq!(
            f,
            [
                ("CAL", 0.2),
                ("LOC", 0.4),
                ("virtio_config", 0.01),
                ("virtio_req", 0.4)
            ]
        );
        assert!(per_io_by_family(&c, 0).is_empty());
    }
}
