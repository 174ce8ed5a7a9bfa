//! The firmware debug console (QEMU's "isa-debugcon", port 0x402): edk2 checks that a read
//! returns 0xE9 and then writes its debug log there a byte at a time. Keel logs each line at
//! debug level, prefixed `firmware:`.
//!
//! The guest controls every byte, so lines are cut at [`MAX_LINE`] bytes, control characters
//! are dropped, and after [`MAX_LINES`] lines the rest is counted, not logged.

use log::debug;

use crate::bus::{BusDevice, MachineRequest};

/// What a read returns: edk2's `PlatformDebugLibIoPort` writes only when it sees this.
pub const DEBUGCON_PRESENT: u8 = 0xe9;
/// Longest line logged; the rest of a longer line starts a new one.
pub const MAX_LINE: usize = 240;
/// Lines logged before the console only counts what it gets.
pub const MAX_LINES: u64 = 100_000;

/// The debug console port.
#[derive(Debug, Default)]
pub struct DebugCon {
    line: Vec<u8>,
    lines: u64,
    dropped: u64,
}

impl DebugCon {
    /// Creates the port with nothing written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes not logged because [`MAX_LINES`] was reached.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    fn push(&mut self, byte: u8) {
        if self.lines >= MAX_LINES {
            self.dropped = self.dropped.saturating_add(1);
            return;
        }
        match byte {
            b'\n' => self.flush(),
            b if b.is_ascii_graphic() || b == b' ' => {
                self.line.push(b);
                if self.line.len() >= MAX_LINE {
                    self.flush();
                }
            }
            _ => {}
        }
    }

    fn flush(&mut self) {
        if self.line.is_empty() {
            return;
        }
        self.lines += 1;
        debug!("firmware: {}", String::from_utf8_lossy(&self.line));
        if self.lines == MAX_LINES {
            debug!("firmware: {MAX_LINES} lines logged; the rest of the debug console is dropped");
        }
        self.line.clear();
    }
}

impl BusDevice for DebugCon {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = DEBUGCON_PRESENT;
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        if offset == 0 {
            for &b in data {
                self.push(b);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_presence_byte_and_splits_lines() {
        let mut con = DebugCon::new();
        let mut b = [0u8; 2];
        con.read(0, &mut b);
        assert_eq!(b, [DEBUGCON_PRESENT, 0]);
        con.write(0, b"SecCoreStartupWithStack\r\nx");
        assert_eq!((con.lines, con.line.as_slice()), (1, &b"x"[..]));
        con.write(0, &vec![b'a'; 2 * MAX_LINE + 1]);
        assert_eq!((con.lines, con.line.len()), (3, 2));
    }

    #[test]
    fn output_is_bounded() {
        let mut con = DebugCon::new();
        con.lines = MAX_LINES - 1;
        con.write(0, b"last\nmore\n");
        assert_eq!(con.lines, MAX_LINES);
        assert_eq!(con.dropped(), 5);
        assert!(con.line.is_empty());
    }
}
