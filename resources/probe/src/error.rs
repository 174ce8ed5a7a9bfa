//! A small fixed-size error message type (no allocator), and the `err!` macro.

use core::fmt;

/// Maximum stored message length; longer messages are truncated.
const CAP: usize = 240;

/// An error message that ends the run with `{"done":false,"error":...}`.
pub struct Error {
    buf: [u8; CAP],
    len: usize,
}

/// Result type used throughout the probe.
pub type Result<T> = core::result::Result<T, Error>;

impl Error {
    /// An empty message, to be filled with `write!`.
    pub fn empty() -> Self {
        Error {
            buf: [0; CAP],
            len: 0,
        }
    }

    /// Formats a message.
    pub fn new(args: fmt::Arguments) -> Self {
        let mut e = Error::empty();
        let _ = fmt::Write::write_fmt(&mut e, args);
        e
    }

    /// The message bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for Error {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len < CAP {
                self.buf[self.len] = b;
                self.len += 1;
            }
        }
        Ok(())
    }
}

/// Builds an [`Error`] from a format string.
#[macro_export]
macro_rules! err {
    ($($t:tt)*) => {
        $crate::error::Error::new(format_args!($($t)*))
    };
}
