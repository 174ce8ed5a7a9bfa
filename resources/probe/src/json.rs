//! Building one JSON output line in a fixed buffer, then writing it to the serial port.

use crate::error::Result;
use crate::{err, serial};
use core::fmt;

const CAP: usize = 16 * 1024;

/// One output line under construction.
pub struct Line {
    buf: [u8; CAP],
    len: usize,
    overflow: bool,
}

impl Line {
    /// An empty line.
    pub fn new() -> Self {
        Line {
            buf: [0; CAP],
            len: 0,
            overflow: false,
        }
    }

    fn push(&mut self, b: u8) {
        if self.len < CAP {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.overflow = true;
        }
    }

    /// Appends raw (already valid JSON) text.
    pub fn raw(&mut self, s: &str) -> &mut Self {
        for &b in s.as_bytes() {
            self.push(b);
        }
        self
    }

    fn raw_bytes(&mut self, s: &[u8]) {
        for &b in s {
            self.push(b);
        }
    }

    /// Appends an unsigned decimal number.
    pub fn num(&mut self, v: u64) -> &mut Self {
        let mut digits = [0u8; 20];
        let mut n = 0;
        let mut x = v;
        loop {
            digits[n] = b'0' + (x % 10) as u8;
            n += 1;
            x /= 10;
            if x == 0 {
                break;
            }
        }
        for i in (0..n).rev() {
            self.push(digits[i]);
        }
        self
    }

    /// Appends a quoted lowercase hex string, e.g. `"0x1f"`.
    pub fn hex(&mut self, v: u64) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.raw("\"0x");
        let mut started = false;
        for shift in (0..16).rev() {
            let d = ((v >> (shift * 4)) & 0xf) as usize;
            if d != 0 || started || shift == 0 {
                started = true;
                self.push(HEX[d]);
            }
        }
        self.raw("\"")
    }

    /// Appends a quoted lowercase hex string with at least `digits` digits, e.g. `"0x060000"`.
    pub fn hex_pad(&mut self, v: u64, digits: u32) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.raw("\"0x");
        let mut started = false;
        for shift in (0..16u32).rev() {
            let d = ((v >> (shift * 4)) & 0xf) as usize;
            if d != 0 || started || shift < digits {
                started = true;
                self.push(HEX[d]);
            }
        }
        self.raw("\"")
    }

    /// Appends `milli / 1000` as a decimal number with three fraction digits, e.g. `12.345`.
    pub fn dec3(&mut self, milli: u64) -> &mut Self {
        self.num(milli / 1000);
        let f = milli % 1000;
        self.push(b'.');
        self.push(b'0' + (f / 100) as u8);
        self.push(b'0' + (f / 10 % 10) as u8);
        self.push(b'0' + (f % 10) as u8);
        self
    }

    /// Appends `micro / 10^6` as a decimal number with six fraction digits, e.g. `1.500000`
    /// (the integer part saturates at u64::MAX).
    pub fn dec6(&mut self, micro: u128) -> &mut Self {
        self.num(u64::try_from(micro / 1_000_000).unwrap_or(u64::MAX));
        self.push(b'.');
        let mut f = (micro % 1_000_000) as u32;
        let mut digits = [0u8; 6];
        for d in digits.iter_mut().rev() {
            *d = b'0' + (f % 10) as u8;
            f /= 10;
        }
        self.raw_bytes(&digits);
        self
    }

    /// Appends a number, or `null` for None.
    pub fn opt_num(&mut self, v: Option<u64>) -> &mut Self {
        match v {
            Some(v) => self.num(v),
            None => self.raw("null"),
        }
    }

    /// Appends `true` or `false`.
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.raw(if v { "true" } else { "false" })
    }

    /// Appends a quoted, escaped string. Bytes >= 0x80 are escaped as `\u00XX` (Latin-1).
    pub fn string(&mut self, s: &[u8]) -> &mut Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        self.push(b'"');
        for &b in s {
            match b {
                b'"' => self.raw_bytes(b"\\\""),
                b'\\' => self.raw_bytes(b"\\\\"),
                b'\n' => self.raw_bytes(b"\\n"),
                b'\r' => self.raw_bytes(b"\\r"),
                b'\t' => self.raw_bytes(b"\\t"),
                0x20..=0x7e => self.push(b),
                _ => self.raw_bytes(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]),
            }
        }
        self.push(b'"');
        self
    }

    /// Appends a JSON array of numbers.
    pub fn num_list(&mut self, ids: &[u32]) -> &mut Self {
        self.raw("[");
        for (i, &id) in ids.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.num(id as u64);
        }
        self.raw("]")
    }

    /// Whether the line does not fit together with its newline (`finish` then fails
    /// without writing anything).
    pub fn overflowed(&self) -> bool {
        self.overflow || self.len >= CAP
    }

    /// Appends a newline and writes the line to the serial port.
    pub fn finish(&mut self) -> Result<()> {
        if self.overflowed() {
            return Err(err!("output line longer than {} bytes", CAP));
        }
        self.push(b'\n');
        serial::write(&self.buf[..self.len]);
        Ok(())
    }
}

impl fmt::Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.raw(s);
        Ok(())
    }
}
