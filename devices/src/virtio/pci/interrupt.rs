//! Guest notifications of the virtio-pci transport (virtio 1.2 §4.1.4.5, §4.1.5.3-4).
//!
//! [`VirtioPciInterrupt`] is the [`VirtioInterrupt`] sink handed to the device on activation.
//! It is called from the device's I/O threads while vCPUs keep writing the MSI-X table and the
//! common configuration, so it shares no lock with them: the vector numbers, the ISR byte, the
//! configuration generation and the INTx-disable bit are atomics that the vCPU side updates,
//! and MSI-X delivery goes through the lock-free [`MsixNotifier`].
//!
//! With MSI-X enabled, a queue notification signals the vector the driver assigned to the
//! queue (nothing when it is [`NO_VECTOR`]); with MSI-X disabled it sets ISR bit 0 and asserts
//! INTx. A configuration change bumps `config_generation`, sets ISR bit 1 (in both modes, as
//! §4.1.4.5.1 asks) and signals the configuration vector or INTx.
//!
//! A device that meets an impossible ring state calls `needs_reset`: the flag reads as
//! `DEVICE_NEEDS_RESET` in the device status (the transport ORs it in) and a configuration
//! change is signalled, once, until a device reset clears the flag. The flag lives here rather
//! than in the status register because the I/O thread sets it while a vCPU may be writing the
//! status; the vCPU side never writes it, so a status write cannot lose it.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;

use log::debug;

use crate::pci::msix::{MsixError, MsixNotifier};
use crate::virtio::device::{DeviceError, VirtioInterrupt};

/// The "no MSI-X vector" value of `config_msix_vector` and `queue_msix_vector`.
pub const NO_VECTOR: u16 = 0xffff;
/// ISR status bit 0: a queue has used buffers.
pub const ISR_QUEUE: u8 = 0x1;
/// ISR status bit 1: the device configuration changed.
pub const ISR_CONFIG: u8 = 0x2;

/// A legacy INTx line (INTA#), implemented by the VMM (e.g. with an irqfd).
pub trait IntxInterrupt: Send + Sync {
    /// Asserts the line (or sends the edge that stands for it).
    fn trigger(&self) -> std::io::Result<()>;
}

/// The transport's interrupt state, shared between the vCPU side (register accesses) and the
/// device's I/O threads (notifications).
pub struct VirtioPciInterrupt {
    msix: MsixNotifier,
    queue_vectors: Box<[AtomicU16]>,
    config_vector: AtomicU16,
    isr: AtomicU8,
    config_generation: AtomicU8,
    intx: Option<Arc<dyn IntxInterrupt>>,
    intx_disabled: AtomicBool,
    /// Set by the device (`needs_reset`), cleared by a device reset; read into the status.
    needs_reset: AtomicBool,
}

impl std::fmt::Debug for VirtioPciInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciInterrupt")
            .field("queues", &self.queue_vectors.len())
            .field("isr", &self.isr())
            .field("intx", &self.intx.is_some())
            .finish_non_exhaustive()
    }
}

/// Converts an MSI-X failure into the device contract's error.
fn msix_error(e: MsixError) -> DeviceError {
    match e {
        MsixError::Interrupt(io) => DeviceError::Interrupt(io),
        other => DeviceError::Interrupt(std::io::Error::other(other)),
    }
}

impl VirtioPciInterrupt {
    /// State for `num_queues` queues, every vector unassigned.
    pub(crate) fn new(
        msix: MsixNotifier,
        num_queues: usize,
        intx: Option<Arc<dyn IntxInterrupt>>,
    ) -> Self {
        Self {
            msix,
            queue_vectors: (0..num_queues).map(|_| AtomicU16::new(NO_VECTOR)).collect(),
            config_vector: AtomicU16::new(NO_VECTOR),
            isr: AtomicU8::new(0),
            config_generation: AtomicU8::new(0),
            intx,
            intx_disabled: AtomicBool::new(false),
            needs_reset: AtomicBool::new(false),
        }
    }

    /// The MSI-X vector of queue `queue` ([`NO_VECTOR`] if none or no such queue).
    pub fn queue_vector(&self, queue: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(queue))
            .map_or(NO_VECTOR, |v| v.load(Ordering::Acquire))
    }

    pub(crate) fn set_queue_vector(&self, queue: u16, vector: u16) {
        if let Some(v) = self.queue_vectors.get(usize::from(queue)) {
            v.store(vector, Ordering::Release);
        }
    }

    /// The MSI-X vector for configuration changes.
    pub fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Acquire)
    }

    pub(crate) fn set_config_vector(&self, vector: u16) {
        self.config_vector.store(vector, Ordering::Release);
    }

    /// The ISR status byte, without clearing it.
    pub fn isr(&self) -> u8 {
        self.isr.load(Ordering::SeqCst)
    }

    /// Reads and clears the ISR status byte (the driver's read of the ISR region).
    pub(crate) fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::SeqCst)
    }

    /// The `config_generation` register.
    pub fn config_generation(&self) -> u8 {
        self.config_generation.load(Ordering::SeqCst)
    }

    /// Mirrors the Interrupt Disable bit of the PCI command register.
    pub(crate) fn set_intx_disabled(&self, disabled: bool) {
        self.intx_disabled.store(disabled, Ordering::Release);
    }

    /// Device reset: unassigns every vector and clears the ISR.
    pub(crate) fn reset(&self) {
        for v in self.queue_vectors.iter() {
            v.store(NO_VECTOR, Ordering::Release);
        }
        self.config_vector.store(NO_VECTOR, Ordering::Release);
        self.isr.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    /// `DEVICE_NEEDS_RESET` (0x40) when the device asked for a reset since the last one, else 0.
    pub fn needs_reset_status(&self) -> u8 {
        if self.needs_reset.load(Ordering::SeqCst) {
            super::STATUS_DEVICE_NEEDS_RESET
        } else {
            0
        }
    }

    fn signal_vector(&self, vector: u16) -> Result<(), DeviceError> {
        if vector == NO_VECTOR {
            return Ok(());
        }
        self.msix.notify(vector).map_err(msix_error)
    }

    fn signal_intx(&self, isr_bit: u8) -> Result<(), DeviceError> {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        match &self.intx {
            Some(_) if self.intx_disabled.load(Ordering::Acquire) => {
                debug!("virtio-pci: INTx disabled in the command register, ISR set only");
                Ok(())
            }
            Some(intx) => intx.trigger().map_err(DeviceError::Interrupt),
            None => {
                debug!("virtio-pci: no INTx line and MSI-X disabled, ISR set only");
                Ok(())
            }
        }
    }
}

impl VirtioInterrupt for VirtioPciInterrupt {
    fn trigger_queue(&self, queue: u16) -> Result<(), DeviceError> {
        if self.msix.enabled() {
            self.signal_vector(self.queue_vector(queue))
        } else {
            self.signal_intx(ISR_QUEUE)
        }
    }

    fn needs_reset(&self) -> Result<(), DeviceError> {
        if self.needs_reset.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.trigger_config()
    }

    fn trigger_config(&self) -> Result<(), DeviceError> {
        self.config_generation.fetch_add(1, Ordering::SeqCst);
        if self.msix.enabled() {
            self.isr.fetch_or(ISR_CONFIG, Ordering::SeqCst);
            self.signal_vector(self.config_vector())
        } else {
            self.signal_intx(ISR_CONFIG)
        }
    }
}
