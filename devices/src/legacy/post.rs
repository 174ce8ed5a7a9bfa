//! POST code port (0x80): firmware and kernels write progress bytes here (Linux also uses it
//! as an I/O delay). The last byte written is remembered and reads return it.

use log::{debug, trace};

use crate::bus::{BusDevice, MachineRequest};

/// The POST diagnostic port.
#[derive(Debug, Default)]
pub struct PostCode {
    last: Option<u8>,
}

impl PostCode {
    /// Creates the port with no code written yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last byte the guest wrote, if any.
    #[cfg(test)]
    pub(crate) fn last_code(&self) -> Option<u8> {
        self.last
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = self.last.unwrap_or(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        if offset != 0 {
            return None;
        }
        let &code = data.first()?;
        if self.last == Some(code) {
            trace!("POST code {code:#04x}");
        } else {
            debug!("POST code {code:#04x}");
        }
        self.last = Some(code);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_last_code() {
        let mut p = PostCode::new();
        assert_eq!(p.last_code(), None);
        let mut b = [0xaau8];
        p.read(0, &mut b);
        assert_eq!(b[0], 0);
        assert_eq!(p.write(0, &[0x12]), None);
        assert_eq!(p.write(0, &[0x34]), None);
        assert_eq!(p.last_code(), Some(0x34));
        p.read(0, &mut b);
        assert_eq!(b[0], 0x34);
        // Empty and off-base writes change nothing.
        p.write(0, &[]);
        p.write(1, &[0x56]);
        assert_eq!(p.last_code(), Some(0x34));
    }
}
