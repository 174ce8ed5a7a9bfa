//! A minimal `log` backend: one line per record on stderr, prefixed with `keel` and the level.
//! The `vmm` library only logs through the `log` facade; installing a backend is the program's
//! business (an embedder installs its own).

use std::io::Write;

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if self.enabled(record.metadata()) {
            let level = record.level().as_str().to_ascii_lowercase();
            // A failed write to stderr has nowhere better to be reported.
            let _ = writeln!(std::io::stderr().lock(), "keel: {level}: {}", record.args());
        }
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger at `level`. Installing twice keeps the first logger (and sets the level).
pub fn init(level: log::LevelFilter) {
    // A second init (another VM in the same process) finds the logger already set: fine.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
