//! Counters over fio's run: snapshots of a VMM's counters (flattened to dotted names) taken
//! at each `KEEL-FIO-START` and the `KEEL-FIO-JSON-BEGIN` after it, differenced and summed.

use std::collections::BTreeMap;
use std::time::Instant;

use super::console_tail::Marker;

/// Counters over fio's run: every counter's increase between a START marker and the
/// JSON-BEGIN marker after it, summed when several runs came one after another (so the
/// guest's printing of each report, one exit per byte, is left out).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CounterWindow {
    /// Seconds between the two snapshots.
    pub secs: f64,
    /// Increase of every flattened counter (see [`vmm::stats::view::flatten`]).
    pub delta: BTreeMap<String, u64>,
}

impl CounterWindow {
    /// Adds the increase from `before` to `after` (flattened counters), `secs` apart.
    pub fn add_flat(
        &mut self,
        before: &BTreeMap<String, u64>,
        after: &BTreeMap<String, u64>,
        secs: f64,
    ) {
        for (k, v) in after {
            let was = before.get(k).copied().unwrap_or(0);
            *self.delta.entry(k.clone()).or_insert(0) += v.saturating_sub(was);
        }
        self.secs += secs;
    }

    /// Requests completed by the data disks (every disk but the config disk).
    pub fn disk_requests(&self, config_disk: &str) -> u64 {
        self.data_disks_sum(config_disk, "requests")
    }

    /// One disk counter (`requests`, `kicks`, `interrupts`...) summed over the data disks
    /// (every disk but the config disk).
    pub fn data_disks_sum(&self, config_disk: &str, counter: &str) -> u64 {
        let suffix = format!(".{counter}");
        let config = format!("disk.{config_disk}{suffix}");
        self.delta
            .iter()
            .filter(|(k, _)| k.starts_with("disk.") && k.ends_with(&suffix))
            .filter(|(k, _)| k.as_str() != config)
            .map(|(_, v)| *v)
            .sum()
    }
}

/// Pairs START and JSON-BEGIN markers with counter snapshots into a [`CounterWindow`].
#[derive(Debug, Default)]
pub struct WindowTracker {
    at_start: Option<(Instant, BTreeMap<String, u64>)>,
    window: Option<CounterWindow>,
}

impl WindowTracker {
    /// Records `marker` with the counters read just now (None if they cannot be read).
    pub fn on_marker(&mut self, marker: Marker, counters: Option<BTreeMap<String, u64>>) {
        let Some(now) = counters else {
            return;
        };
        match marker {
            Marker::Start => self.at_start = Some((Instant::now(), now)),
            Marker::JsonBegin => {
                if let Some((at, before)) = self.at_start.take() {
                    let secs = at.elapsed().as_secs_f64();
                    self.window
                        .get_or_insert_with(CounterWindow::default)
                        .add_flat(&before, &now, secs);
                }
            }
        }
    }

    /// The window, if at least one START was followed by a JSON-BEGIN.
    pub fn into_window(self) -> Option<CounterWindow> {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(pairs: &[(&str, u64)]) -> Option<BTreeMap<String, u64>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect())
    }

    #[test]
    fn sums_start_to_json_spans_and_skips_the_rest() {
        let mut t = WindowTracker::default();
        t.on_marker(Marker::JsonBegin, counters(&[("kvm.exits", 1)]));
        t.on_marker(Marker::Start, counters(&[("kvm.exits", 10)]));
        t.on_marker(
            Marker::JsonBegin,
            counters(&[("kvm.exits", 15), ("disk.vda.requests", 4)]),
        );
        // Printing the report in between is not counted.
        t.on_marker(Marker::Start, counters(&[("kvm.exits", 100)]));
        t.on_marker(Marker::JsonBegin, None);
        t.on_marker(Marker::JsonBegin, counters(&[("kvm.exits", 107)]));
        let w = t.into_window().unwrap();
        assert_eq!(w.delta["kvm.exits"], 5 + 7);
        assert_eq!(w.disk_requests("fio-config"), 4);
        assert_eq!(w.data_disks_sum("fio-config", "kicks"), 0);
        assert_eq!(WindowTracker::default().into_window(), None);
    }
}
