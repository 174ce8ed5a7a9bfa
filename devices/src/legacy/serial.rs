//! 16550A UART (COM1-style, 8 ports) on top of `vm-superio`.
//!
//! `vm-superio` models the registers, the receive FIFO and the interrupt identification logic;
//! this module adapts it to the [`BusDevice`] interface, raises the interrupt through an
//! eventfd (an irqfd the VMM registered for the UART's IRQ line) and feeds host input in.
//! Every byte the guest transmits is written to the output sink and flushed at once by
//! `vm-superio`, so line-buffered sinks such as stdout still show output promptly.

use std::io::{self, Write};

use log::warn;
use vm_superio::serial::{Error as SuperioError, NoEvents};
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, MachineRequest};
use crate::snapshot::{DeviceSnapshot, StateError};

/// Number of ports a 16550 decodes.
const SERIAL_PORTS: u64 = 8;

/// Errors from feeding the UART.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Raising the interrupt eventfd failed.
    #[error("failed to raise the serial interrupt: {0}")]
    Interrupt(#[source] io::Error),
    /// Writing or flushing the output sink failed.
    #[error("failed to write serial output: {0}")]
    Output(#[source] io::Error),
    /// The receive FIFO was full.
    #[error("serial receive FIFO is full")]
    FifoFull,
}

impl From<SuperioError<io::Error>> for SerialError {
    fn from(e: SuperioError<io::Error>) -> Self {
        match e {
            SuperioError::Trigger(e) => Self::Interrupt(e),
            SuperioError::IOError(e) => Self::Output(e),
            SuperioError::FullFifo => Self::FifoFull,
        }
    }
}

/// Raises the UART interrupt by signalling an eventfd (an irqfd in the VMM).
struct EventFdTrigger(EventFd);

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A 16550's receive FIFO.
const FIFO_SIZE: usize = 64;

/// The UART's saved state: DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR, and the bytes
/// received but not yet read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    /// The registers in the order above.
    pub registers: [u8; 9],
    /// The receive FIFO.
    pub in_buffer: Vec<u8>,
}

/// The boxed output sink the guest's transmitted bytes go to.
type Sink = Box<dyn Write + Send>;

/// A 16550A UART whose transmitter writes to a host sink and whose receiver is fed by
/// [`Serial::enqueue_input`].
pub struct Serial {
    inner: vm_superio::Serial<EventFdTrigger, NoEvents, Sink>,
    /// Whether an output error was already logged (the guest may write many bytes into a
    /// broken sink; one warning is enough).
    output_error_logged: bool,
}

impl std::fmt::Debug for Serial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serial")
            .field("fifo_capacity", &self.inner.fifo_capacity())
            .finish_non_exhaustive()
    }
}

impl Serial {
    /// Creates a UART that raises `interrupt` (written with 1) and transmits into `output`.
    pub fn new(interrupt: EventFd, output: Box<dyn Write + Send>) -> Self {
        Self {
            inner: vm_superio::Serial::new(EventFdTrigger(interrupt), output),
            output_error_logged: false,
        }
    }
}

impl DeviceSnapshot for Serial {
    type State = SerialSnapshot;
    const NAME: &'static str = "com1";
    const STATE_VERSION: u32 = 1;

    /// The registers and receive FIFO.
    fn save_state(&self) -> SerialSnapshot {
        let s = self.inner.state();
        SerialSnapshot {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// Puts saved registers and receive FIFO back, keeping this UART's interrupt and output.
    /// A FIFO longer than a 16550's is cut to what the UART holds.
    fn restore_state(&mut self, saved: &SerialSnapshot) -> Result<(), StateError> {
        let [divisor_low, divisor_high, ier, iir, lcr, lsr, mcr, msr, scratch] = saved.registers;
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: divisor_low,
            baud_divisor_high: divisor_high,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch,
            in_buffer: saved.in_buffer.iter().copied().take(FIFO_SIZE).collect(),
        };
        let invalid = |what: String| StateError::invalid(Self::NAME, what);
        let interrupt = self
            .inner
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| invalid(format!("cannot duplicate its interrupt eventfd: {e}")))?;
        let output = std::mem::replace(self.inner.writer_mut(), Box::new(io::sink()));
        self.inner =
            vm_superio::Serial::from_state(&state, EventFdTrigger(interrupt), NoEvents, output)
                .map_err(|e| invalid(format!("{e:?}")))?;
        Ok(())
    }
}

impl Serial {
    /// Free space in the receive FIFO, in bytes.
    pub fn fifo_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Queues `bytes` as received data for the guest, as many as fit in the receive FIFO, and
    /// raises the data-available interrupt if the guest enabled it. Returns how many bytes were
    /// queued (0 if `bytes` is empty or the FIFO is full; the caller retries the rest later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<usize, SerialError> {
        let room = self.inner.fifo_capacity().min(bytes.len());
        if room == 0 {
            return Ok(0);
        }
        Ok(self.inner.enqueue_raw_bytes(&bytes[..room])?)
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data, u8::try_from(offset)) {
            ([byte], Ok(off)) if offset < SERIAL_PORTS => *byte = self.inner.read(off),
            (data, _) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<MachineRequest> {
        let (&[value], Ok(off)) = (data, u8::try_from(offset)) else {
            return None;
        };
        if offset >= SERIAL_PORTS {
            return None;
        }
        match self.inner.write(off, value).map_err(SerialError::from) {
            Ok(()) => {}
            Err(e @ SerialError::Output(_)) => {
                if !self.output_error_logged {
                    self.output_error_logged = true;
                    warn!("serial: {e} (further output errors are not logged)");
                }
            }
            Err(e) => warn!("serial: {e}"),
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    // 16550 register offsets and bits used by the tests.
    const RBR_THR: u64 = 0;
    const IER: u64 = 1;
    const IIR: u64 = 2;
    const LSR: u64 = 5;
    const IER_RDA: u8 = 0x01;
    const IER_THRE: u8 = 0x02;
    const LSR_DR: u8 = 0x01;

    /// A sink tests can look into.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, EventFd, SharedBuf) {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let out = SharedBuf::default();
        let s = Serial::new(evt.try_clone().unwrap(), Box::new(out.clone()));
        (s, evt, out)
    }

    fn rd(s: &mut Serial, offset: u64) -> u8 {
        let mut b = [0u8];
        s.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn thr_bytes_reach_the_sink() {
        let (mut s, _evt, out) = serial();
        for &b in b"hi\n" {
            assert_eq!(s.write(RBR_THR, &[b]), None);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Wide writes are ignored.
        s.write(RBR_THR, b"xy");
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
    }

    #[test]
    fn enabling_thre_interrupt_fires_eventfd() {
        let (mut s, evt, _out) = serial();
        // Nothing pending before.
        assert!(evt.read().is_err());
        s.write(IER, &[IER_THRE]);
        assert_eq!(evt.read().unwrap(), 1);
        // IIR reports THR empty (id 0b001 << 1 = 0x02), with the FIFO bits set.
        assert_eq!(rd(&mut s, IIR) & 0x0f, 0x02);
    }

    #[test]
    fn input_readable_through_rbr() {
        let (mut s, evt, _out) = serial();
        s.write(IER, &[IER_RDA]);
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
        assert_eq!(s.enqueue_input(b"ab").unwrap(), 2);
        assert_eq!(evt.read().unwrap(), 1);
        assert_eq!(rd(&mut s, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut s, RBR_THR), b'a');
        assert_eq!(rd(&mut s, LSR) & LSR_DR, LSR_DR);
        assert_eq!(rd(&mut s, RBR_THR), b'b');
        assert_eq!(rd(&mut s, LSR) & LSR_DR, 0);
    }

    #[test]
    fn input_respects_fifo_limit() {
        let (mut s, _evt, _out) = serial();
        let cap = s.fifo_capacity();
        assert!(cap > 0);
        let big = vec![b'z'; cap + 10];
        assert_eq!(s.enqueue_input(&big).unwrap(), cap);
        assert_eq!(s.fifo_capacity(), 0);
        assert_eq!(s.enqueue_input(b"more").unwrap(), 0);
        assert_eq!(s.enqueue_input(b"").unwrap(), 0);
        rd(&mut s, RBR_THR);
        assert_eq!(s.enqueue_input(b"more").unwrap(), 1);
    }

    #[test]
    fn bad_widths_and_offsets_read_ff() {
        let (mut s, _evt, _out) = serial();
        let mut b = [0u8; 2];
        s.read(LSR, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        assert_eq!(rd(&mut s, 8), 0xff);
        assert_eq!(rd(&mut s, 0x100), 0xff);
        // A write at offset 0x100 must not alias offset 0 (THR).
        let (mut s, _evt, out) = serial();
        s.write(0x100, b"x");
        assert!(out.0.lock().unwrap().is_empty());
    }
}
