//! Minimal i8042 PS/2 keyboard controller, decoding ports 0x60..=0x64 (offsets 0..=4).
//!
//! No keyboard or mouse is attached and no interrupt line is wired. The controller answers the
//! commands an OS uses to probe it (command byte read/write, self test, interface tests, port
//! enable/disable, output port) synchronously through the output buffer, so polling drivers such
//! as Linux's never wait for a timeout, and it turns the pulse-reset command 0xFE into a machine
//! reset. Port 0x61 (offset 1, system control port B) is a plain read/write latch here.

use log::debug;

use crate::bus::{BusDevice, MachineRequest};
use crate::snapshot::{DeviceSnapshot, StateError};

/// Offset of the data port (0x60).
const DATA: u64 = 0;
/// Offset of system control port B (0x61).
const PORT_B: u64 = 1;
/// Offset of the status/command port (0x64).
const STATUS_CMD: u64 = 4;

/// Status: output buffer full (a byte is waiting in the data port).
const STS_OBF: u8 = 0x01;
/// Status: system flag (set once the controller passed its self test).
const STS_SYS: u8 = 0x04;
/// Status: last write went to the command port.
const STS_CMD: u8 = 0x08;

/// Command byte: keyboard interrupt enable.
const CTR_KBDINT: u8 = 0x01;
/// Command byte: system flag.
const CTR_SYS: u8 = 0x04;
/// Command byte: keyboard clock disabled.
const CTR_KBDDIS: u8 = 0x10;
/// Command byte: aux clock disabled.
const CTR_AUXDIS: u8 = 0x20;
/// Command byte: scancode set 1 translation.
const CTR_XLATE: u8 = 0x40;

/// Command byte after reset.
const CTR_DEFAULT: u8 = CTR_KBDINT | CTR_SYS | CTR_AUXDIS | CTR_XLATE;
/// Output port after reset: bit 0 = not in reset, bit 1 = A20 enabled.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;

/// What the next data-port write is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    /// Nothing: the byte would go to the (absent) keyboard.
    None,
    /// Write internal RAM byte `n` (0 = command byte), command 0x60..=0x7f.
    Ram(usize),
    /// Write the output port, command 0xd1.
    OutputPort,
    /// Echo as if received from the keyboard, command 0xd2.
    KbdEcho,
    /// Echo as if received from the aux device, command 0xd3.
    AuxEcho,
}

/// The i8042's saved state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    /// The 32 bytes of internal RAM (byte 0: the command byte).
    pub ram: Vec<u8>,
    /// The output port.
    pub output_port: u8,
    /// Port 0x61.
    pub port_b: u8,
    /// The output buffer.
    pub out: Option<u8>,
    /// The last byte read from the data port.
    pub last_out: u8,
    /// Whether the last write was a command.
    pub last_was_command: bool,
    /// What the next data byte is for: 0 nothing, 1 the output port, 2 keyboard echo, 3 aux
    /// echo, 32 + n internal RAM byte n.
    pub pending: u8,
}

/// [`I8042Snapshot::pending`] of internal RAM byte 0.
const PENDING_RAM: u8 = 32;

impl Pending {
    fn code(self) -> u8 {
        match self {
            Pending::None => 0,
            Pending::OutputPort => 1,
            Pending::KbdEcho => 2,
            Pending::AuxEcho => 3,
            // n < 32.
            Pending::Ram(n) => PENDING_RAM + n as u8,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Pending::None,
            1 => Pending::OutputPort,
            2 => Pending::KbdEcho,
            3 => Pending::AuxEcho,
            n @ PENDING_RAM..=63 => Pending::Ram(usize::from(n - PENDING_RAM)),
            _ => return None,
        })
    }
}

impl DeviceSnapshot for I8042 {
    type State = I8042Snapshot;
    const NAME: &'static str = "i8042";
    const STATE_VERSION: u32 = 1;

    fn save_state(&self) -> I8042Snapshot {
        I8042Snapshot {
            ram: self.ram.to_vec(),
            output_port: self.output_port,
            port_b: self.port_b,
            out: self.out,
            last_out: self.last_out,
            last_was_command: self.last_was_command,
            pending: self.pending.code(),
        }
    }

    fn restore_state(&mut self, saved: &I8042Snapshot) -> Result<(), StateError> {
        let invalid = |what: String| StateError::invalid(Self::NAME, what);
        let ram = saved
            .ram
            .as_slice()
            .try_into()
            .map_err(|_| invalid(format!("{} bytes of RAM, not 32", saved.ram.len())))?;
        let pending = Pending::from_code(saved.pending)
            .ok_or_else(|| invalid(format!("pending code {}", saved.pending)))?;
        *self = I8042 {
            ram,
            output_port: saved.output_port,
            port_b: saved.port_b,
            out: saved.out,
            last_out: saved.last_out,
            last_was_command: saved.last_was_command,
            pending,
        };
        Ok(())
    }
}

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    /// Internal RAM; byte 0 is the command byte.
    ram: [u8; 32],
    output_port: u8,
    port_b: u8,
    /// The single-byte output buffer.
    out: Option<u8>,
    /// The last byte read from the data port (real controllers return it again when empty).
    last_out: u8,
    last_was_command: bool,
    pending: Pending,
}

impl Default for I8042 {
    fn default() -> Self {
        Self::new()
    }
}

impl I8042 {
    /// Creates a controller in its post-reset state.
    pub fn new() -> Self {
        let mut ram = [0u8; 32];
        ram[0] = CTR_DEFAULT;
        Self {
            ram,
            output_port: OUTPUT_PORT_DEFAULT,
            port_b: 0,
            out: None,
            last_out: 0,
            last_was_command: false,
            pending: Pending::None,
        }
    }

    fn status(&self) -> u8 {
        let mut s = STS_SYS;
        if self.out.is_some() {
            s |= STS_OBF;
        }
        if self.last_was_command {
            s |= STS_CMD;
        }
        s
    }

    /// Places a response in the output buffer, replacing any stale byte.
    fn respond(&mut self, byte: u8) {
        self.out = Some(byte);
    }

    fn command(&mut self, cmd: u8) -> Option<MachineRequest> {
        self.last_was_command = true;
        self.pending = Pending::None;
        match cmd {
            0x20..=0x3f => self.respond(self.ram[usize::from(cmd & 0x1f)]),
            0x60..=0x7f => self.pending = Pending::Ram(usize::from(cmd & 0x1f)),
            0xa7 => self.ram[0] |= CTR_AUXDIS,
            0xa8 => self.ram[0] &= !CTR_AUXDIS,
            // Aux interface test: no mouse is attached, report "clock line stuck high" so the
            // OS gives up on the aux port at once.
            0xa9 => self.respond(0x02),
            0xaa => {
                // Self test resets the controller's internal state; the command byte survives.
                self.respond(0x55);
            }
            0xab => self.respond(0x00),
            0xad => self.ram[0] |= CTR_KBDDIS,
            0xae => self.ram[0] &= !CTR_KBDDIS,
            0xd0 => self.respond(self.output_port),
            0xd1 => self.pending = Pending::OutputPort,
            0xd2 => self.pending = Pending::KbdEcho,
            0xd3 => self.pending = Pending::AuxEcho,
            0xfe => {
                debug!("i8042: pulse reset");
                return Some(MachineRequest::Reset);
            }
            // 0xf0..=0xff pulse output lines; only bit 0 (reset) matters and is handled above.
            _ => debug!("i8042: ignoring command {cmd:#04x}"),
        }
        None
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match std::mem::replace(&mut self.pending, Pending::None) {
            Pending::Ram(i) => {
                if let Some(slot) = self.ram.get_mut(i) {
                    *slot = value;
                }
            }
            // Bit 0 low would hold the CPU in reset; A20 masking is not modelled either, so the
            // value is only remembered.
            Pending::OutputPort => self.output_port = value,
            Pending::KbdEcho => self.respond(value),
            // No aux device: the looped-back byte arrives without the aux-data status bit, which
            // probing drivers (Linux) take as "no aux port" without waiting for a timeout.
            Pending::AuxEcho => self.respond(value),
            // The keyboard is absent; bytes sent to it are dropped.
            Pending::None => debug!("i8042: dropping keyboard byte {value:#04x}"),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let [byte] = data else {
            data.fill(0xff);
            return;
        };
        *byte = match offset {
            DATA => {
                if let Some(b) = self.out.take() {
                    self.last_out = b;
                }
                self.last_out
            }
            PORT_B => self.port_b,
            STATUS_CMD => self.status(),
            _ => 0,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        let &[value] = data else {
            return None;
        };
        match offset {
            DATA => self.data(value),
            // Only the low nibble of port B is writable.
            PORT_B => self.port_b = value & 0x0f,
            STATUS_CMD => return self.command(value),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rd(d: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        d.read(offset, &mut b);
        b[0]
    }

    /// Sends a controller command and returns its response, if any.
    fn cmd(d: &mut I8042, c: u8) -> Option<u8> {
        assert_eq!(d.write(STATUS_CMD, &[c]), None);
        (rd(d, STATUS_CMD) & STS_OBF != 0).then(|| rd(d, DATA))
    }

    #[test]
    fn pulse_reset() {
        let mut d = I8042::new();
        assert_eq!(d.write(STATUS_CMD, &[0xfe]), Some(MachineRequest::Reset));
        // Not on the data port, and not as a wide write.
        assert_eq!(d.write(DATA, &[0xfe]), None);
        assert_eq!(d.write(STATUS_CMD, &[0xfe, 0]), None);
    }

    #[test]
    fn status_idle() {
        let mut d = I8042::new();
        let s = rd(&mut d, STATUS_CMD);
        assert_eq!(s & (STS_OBF | 0x02), 0, "no data, input buffer empty");
        assert_ne!(s, 0xff);
    }

    #[test]
    fn self_and_interface_tests() {
        let mut d = I8042::new();
        assert_eq!(cmd(&mut d, 0xaa), Some(0x55));
        assert_eq!(rd(&mut d, STATUS_CMD) & STS_OBF, 0);
        assert_eq!(cmd(&mut d, 0xab), Some(0x00));
        let aux = cmd(&mut d, 0xa9).unwrap();
        assert!(aux != 0 && aux != 0xfa && aux != 0xff);
    }

    #[test]
    fn command_byte_and_port_enables() {
        let mut d = I8042::new();
        assert_eq!(cmd(&mut d, 0x20), Some(CTR_DEFAULT));
        assert_eq!(cmd(&mut d, 0x60), None);
        d.write(DATA, &[0x61]);
        assert_eq!(cmd(&mut d, 0x20), Some(0x61));
        assert_eq!(cmd(&mut d, 0xad), None);
        assert_eq!(cmd(&mut d, 0x20), Some(0x61 | CTR_KBDDIS));
        cmd(&mut d, 0xae);
        cmd(&mut d, 0xa7);
        assert_eq!(cmd(&mut d, 0x20), Some(0x61 | CTR_AUXDIS));
        cmd(&mut d, 0xa8);
        assert_eq!(cmd(&mut d, 0x20), Some(0x41));
        // The loop-back byte is echoed.
        cmd(&mut d, 0xd3);
        d.write(DATA, &[0x5a]);
        assert_eq!(rd(&mut d, DATA), 0x5a);
        // Output port write/read.
        cmd(&mut d, 0xd1);
        d.write(DATA, &[0xdf]);
        assert_eq!(cmd(&mut d, 0xd0), Some(0xdf));
    }

    #[test]
    fn unknown_reads_dont_panic() {
        let mut d = I8042::new();
        for off in [2, 3, 5, 100, u64::MAX] {
            assert_eq!(rd(&mut d, off), 0);
            assert_eq!(d.write(off, &[0xfe]), None);
        }
        let mut wide = [0u8; 4];
        d.read(STATUS_CMD, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        d.read(DATA, &mut []);
        // Unknown command is ignored and produces no data.
        assert_eq!(cmd(&mut d, 0x01), None);
    }
}
