//! The `key=value` option parsers of the command line (`--cpus`, `--memory`, `--disk`,
//! `--numa`, `--serial`): the first byte picks one, the rest is its text. Any text is a
//! config or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::config::{CpusConfig, DiskConfig, MemoryConfig, NumaNodeConfig, SerialConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match which % 5 {
        0 => {
            if let Ok(c) = CpusConfig::parse(text) {
                let _ = c.validate(254, "fuzz");
            }
        }
        1 => {
            if let Ok(m) = MemoryConfig::parse(text) {
                let _ = m.validate(Some(1 << 40));
            }
        }
        2 => {
            let _ = DiskConfig::parse(text);
        }
        3 => {
            let _ = NumaNodeConfig::parse(text);
        }
        _ => {
            let _ = SerialConfig::parse(text);
        }
    }
});
