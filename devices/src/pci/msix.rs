//! MSI-X (PCI Local Bus 3.0 section 6.8.2): the capability structure and the vector table
//! and Pending Bit Array that live in a device's BAR.
//!
//! The capability (ID 0x11) holds Message Control (table size N-1 in bits 10:0, function mask
//! bit 14, enable bit 15; only bits 14 and 15 are writable), the table offset/BIR and the PBA
//! offset/BIR. [`MsixConfig`] holds the N 16-byte table entries (message address low/high,
//! message data, vector control with the mask bit) and the PBA, serves the guest's 4- and
//! 8-byte accesses to them, and delivers interrupts through the VMM's [`MsiInterrupt`]: every
//! change to an entry or to its effective mask calls `update` (so the VMM can reprogram its
//! routing for that vector), and [`MsixConfig::notify`] calls `trigger`, or sets the vector's
//! pending bit if it is masked; a pending vector is delivered as soon as it is unmasked. With
//! MSI-X disabled, notifications are dropped (the device would use INTx instead).
//!
//! Devices signal from their own threads through an [`MsixNotifier`] ([`MsixConfig::notifier`]),
//! which takes no lock: the enable bit, the function mask, the per-vector masks and the PBA are
//! atomics shared with the [`MsixConfig`], whose owner (the vCPU side) alone touches the table's
//! addresses and data. A notification that races with an unmask is delivered exactly once: both
//! sides re-check after publishing their own change, and the pending bit is consumed only by an
//! atomic clear-and-test.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use log::debug;

use super::config::{ConfigError, PciConfiguration, NUM_BARS};

/// Capability ID of MSI-X.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Largest table the spec allows.
pub const MSIX_MAX_VECTORS: u16 = 2048;
/// Size of one table entry in bytes.
pub const MSIX_TABLE_ENTRY_SIZE: u64 = 16;
/// Offset of Message Control inside the capability.
pub const MSIX_MSG_CTL_OFFSET: usize = 2;
/// Message Control: MSI-X enable.
pub const MSIX_MSG_CTL_ENABLE: u16 = 1 << 15;
/// Message Control: function mask.
pub const MSIX_MSG_CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: per-vector mask bit.
pub const MSIX_VECTOR_CTL_MASK: u32 = 1;
/// Length of the capability structure in bytes.
pub const MSIX_CAP_LEN: usize = 12;

/// Errors from MSI-X setup and delivery.
#[derive(Debug, thiserror::Error)]
pub enum MsixError {
    /// The table must hold 1..=2048 vectors.
    #[error("MSI-X table size {0} is not in 1..=2048")]
    TableSize(u16),
    /// A BAR Indicator Register must name BAR 0..=5.
    #[error("MSI-X BIR {0} does not name a BAR")]
    Bir(u8),
    /// Table and PBA offsets must be 8-byte aligned.
    #[error("MSI-X structure offset {0:#x} is not 8-byte aligned")]
    Offset(u32),
    /// The vector is beyond the table.
    #[error("MSI-X vector {vector} is out of range (table has {size})")]
    Vector {
        /// Requested vector.
        vector: u16,
        /// Table size.
        size: u16,
    },
    /// The VMM failed to update or trigger a vector.
    #[error("MSI-X interrupt delivery failed: {0}")]
    Interrupt(#[source] std::io::Error),
    /// Adding the capability to the configuration space failed.
    #[error("cannot add the MSI-X capability: {0}")]
    Config(#[from] ConfigError),
}

/// An MSI message: the address and data the device writes to signal the vector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address (low and high dwords combined).
    pub addr: u64,
    /// Message data.
    pub data: u32,
}

/// How MSI-X vectors reach the guest; implemented by the VMM (e.g. KVM GSI routing + irqfd).
pub trait MsiInterrupt: Send + Sync {
    /// Vector `vector` now has message `msg`; `masked` is true when it cannot be delivered
    /// (vector mask, function mask, or MSI-X disabled). The message is guest-controlled.
    fn update(&self, vector: u16, msg: MsiMessage, masked: bool) -> std::io::Result<()>;
    /// Signals vector `vector` to the guest.
    fn trigger(&self, vector: u16) -> std::io::Result<()>;
}

/// The MSI-X capability structure's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    table_size: u16,
    table: u32,
    pba: u32,
}

impl MsixCap {
    /// Describes a table of `table_size` vectors at `table_offset` in BAR `table_bir` and a
    /// PBA at `pba_offset` in BAR `pba_bir` (offsets 8-byte aligned).
    pub fn new(
        table_size: u16,
        table_bir: u8,
        table_offset: u32,
        pba_bir: u8,
        pba_offset: u32,
    ) -> Result<Self, MsixError> {
        if !(1..=MSIX_MAX_VECTORS).contains(&table_size) {
            return Err(MsixError::TableSize(table_size));
        }
        for bir in [table_bir, pba_bir] {
            if usize::from(bir) >= NUM_BARS {
                return Err(MsixError::Bir(bir));
            }
        }
        for offset in [table_offset, pba_offset] {
            if !offset.is_multiple_of(8) {
                return Err(MsixError::Offset(offset));
            }
        }
        Ok(Self {
            table_size,
            table: table_offset | u32::from(table_bir),
            pba: pba_offset | u32::from(pba_bir),
        })
    }

    /// The capability bytes (ID, next pointer 0, Message Control with enable and function
    /// mask clear, table offset/BIR, PBA offset/BIR).
    pub fn bytes(&self) -> [u8; MSIX_CAP_LEN] {
        let mut b = [0u8; MSIX_CAP_LEN];
        b[0] = MSIX_CAP_ID;
        b[2..4].copy_from_slice(&(self.table_size - 1).to_le_bytes());
        b[4..8].copy_from_slice(&self.table.to_le_bytes());
        b[8..12].copy_from_slice(&self.pba.to_le_bytes());
        b
    }

    /// The guest-writable bits: only enable and function mask in Message Control.
    pub fn writable_mask() -> [u8; MSIX_CAP_LEN] {
        let mut m = [0u8; MSIX_CAP_LEN];
        m[2..4].copy_from_slice(&(MSIX_MSG_CTL_ENABLE | MSIX_MSG_CTL_FUNCTION_MASK).to_le_bytes());
        m
    }

    /// Appends this capability to `config`, returning its offset.
    pub fn add_to(&self, config: &mut PciConfiguration) -> Result<u8, MsixError> {
        Ok(config.add_capability_with_mask(&self.bytes(), &Self::writable_mask())?)
    }
}

/// One table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MsixEntry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    ctrl: u32,
}

impl MsixEntry {
    fn msg(&self) -> MsiMessage {
        MsiMessage {
            addr: (u64::from(self.addr_hi) << 32) | u64::from(self.addr_lo),
            data: self.data,
        }
    }

    fn masked(&self) -> bool {
        self.ctrl & MSIX_VECTOR_CTL_MASK != 0
    }

    fn dword(&self, field: usize) -> u32 {
        match field {
            0 => self.addr_lo,
            1 => self.addr_hi,
            2 => self.data,
            _ => self.ctrl,
        }
    }

    fn set_dword(&mut self, field: usize, v: u32) {
        match field {
            0 => self.addr_lo = v & !0x3,
            1 => self.addr_hi = v,
            2 => self.data = v,
            _ => self.ctrl = v & MSIX_VECTOR_CTL_MASK,
        }
    }
}

/// Reset state: everything zero, every vector masked.
const RESET_ENTRY: MsixEntry = MsixEntry {
    addr_lo: 0,
    addr_hi: 0,
    data: 0,
    ctrl: MSIX_VECTOR_CTL_MASK,
};

/// State shared between an [`MsixConfig`] (vCPU side) and its [`MsixNotifier`]s (device side).
///
/// Every access uses `SeqCst`: the notify path stores a pending bit and then loads the masks,
/// the unmask path stores a mask and then takes the pending bit. In the single total order of
/// those accesses at least one side observes the other's store, and the pending bit is only
/// ever consumed by an atomic read-modify-write, so a pending vector is delivered by exactly
/// one side and never lost.
struct MsixShared {
    enabled: AtomicBool,
    function_masked: AtomicBool,
    /// Per-vector mask bits (the mirror of each entry's Vector Control bit 0).
    vector_masked: Vec<AtomicBool>,
    /// Pending Bit Array, 64 vectors per word.
    pba: Vec<AtomicU64>,
    interrupt: Arc<dyn MsiInterrupt>,
    #[cfg(test)]
    hooks: tests::RaceHooks,
}

/// Word index and bit mask of vector `v` in the PBA.
fn pba_bit(v: usize) -> (usize, u64) {
    (v / 64, 1u64 << (v % 64))
}

impl MsixShared {
    fn num_vectors(&self) -> u16 {
        // Bounded by MSIX_MAX_VECTORS at construction.
        self.vector_masked.len() as u16
    }

    fn globally_masked(&self) -> bool {
        !self.enabled.load(Ordering::SeqCst) || self.function_masked.load(Ordering::SeqCst)
    }

    /// Whether vector `v` cannot be delivered right now (out-of-range vectors are masked).
    fn masked(&self, v: usize) -> bool {
        self.globally_masked()
            || self
                .vector_masked
                .get(v)
                .is_none_or(|m| m.load(Ordering::SeqCst))
    }

    fn is_pending(&self, v: usize) -> bool {
        let (word, bit) = pba_bit(v);
        self.pba
            .get(word)
            .is_some_and(|q| q.load(Ordering::SeqCst) & bit != 0)
    }

    fn set_pending(&self, v: usize) {
        let (word, bit) = pba_bit(v);
        if let Some(q) = self.pba.get(word) {
            q.fetch_or(bit, Ordering::SeqCst);
        }
    }

    /// Clears vector `v`'s pending bit; true if this call is the one that cleared it.
    fn take_pending(&self, v: usize) -> bool {
        let (word, bit) = pba_bit(v);
        self.pba
            .get(word)
            .is_some_and(|q| q.fetch_and(!bit, Ordering::SeqCst) & bit != 0)
    }

    fn trigger(&self, v: usize) -> Result<(), MsixError> {
        // `v` < num_vectors <= 2048.
        self.interrupt
            .trigger(v as u16)
            .map_err(MsixError::Interrupt)
    }

    /// Delivers vector `v` if it is pending, consuming the bit.
    fn deliver_pending(&self, v: usize) -> Result<(), MsixError> {
        if self.take_pending(v) {
            self.trigger(v)?;
        }
        Ok(())
    }

    fn notify(&self, vector: u16) -> Result<(), MsixError> {
        let v = usize::from(vector);
        let Some(vector_mask) = self.vector_masked.get(v) else {
            return Err(MsixError::Vector {
                vector,
                size: self.num_vectors(),
            });
        };
        if !self.enabled.load(Ordering::SeqCst) {
            debug!("MSI-X vector {vector} notified while MSI-X is disabled");
            return Ok(());
        }
        if !self.function_masked.load(Ordering::SeqCst) && !vector_mask.load(Ordering::SeqCst) {
            return self.trigger(v);
        }
        #[cfg(test)]
        tests::RaceHooks::run(&self.hooks.before_pend);
        self.set_pending(v);
        if self.masked(v) {
            // Whoever unmasks the vector later takes the pending bit and delivers it.
            return Ok(());
        }
        // Unmasked between the first check and the pending store: the unmasking side may
        // already have looked at the PBA. Whichever side clears the bit delivers it.
        self.deliver_pending(v)
    }
}

/// A cloneable, lock-free handle that signals the vectors of one [`MsixConfig`] from any
/// thread (typically a device's I/O thread) without touching the table.
///
/// It observes the enable bit, the function mask and the per-vector masks as the vCPU side
/// changes them, and shares the Pending Bit Array with it.
#[derive(Clone)]
pub struct MsixNotifier {
    shared: Arc<MsixShared>,
}

impl std::fmt::Debug for MsixNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixNotifier")
            .field("vectors", &self.shared.num_vectors())
            .finish_non_exhaustive()
    }
}

impl MsixNotifier {
    /// Signals `vector`: delivered if MSI-X is enabled and the vector unmasked, made pending if
    /// it is masked (delivered later by whoever unmasks it), dropped if MSI-X is disabled.
    pub fn notify(&self, vector: u16) -> Result<(), MsixError> {
        self.shared.notify(vector)
    }

    /// Whether MSI-X is enabled (Message Control bit 15).
    pub fn enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::SeqCst)
    }

    /// Number of vectors in the table.
    pub fn num_vectors(&self) -> u16 {
        self.shared.num_vectors()
    }

    /// Whether `vector`'s pending bit is set (false for out-of-range vectors).
    pub fn is_pending(&self, vector: u16) -> bool {
        self.shared.is_pending(usize::from(vector))
    }
}

/// The MSI-X table, PBA and Message Control state of one function.
///
/// The table's addresses and data are only touched by the owner (the vCPU side, through
/// `&mut self`); the enable bit, the masks and the PBA are atomics shared with every
/// [`MsixNotifier`] obtained from [`MsixConfig::notifier`].
pub struct MsixConfig {
    table: Vec<MsixEntry>,
    shared: Arc<MsixShared>,
}

impl std::fmt::Debug for MsixConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixConfig")
            .field("vectors", &self.table.len())
            .field("enabled", &self.enabled())
            .field("function_masked", &self.function_masked())
            .finish_non_exhaustive()
    }
}

/// Splits a 4- or 8-byte naturally aligned access at `offset` into (index, first dword).
fn locate(offset: u64, len: usize, limit: u64) -> Option<(usize, usize)> {
    let aligned = match len {
        4 => offset.is_multiple_of(4),
        8 => offset.is_multiple_of(8),
        _ => false,
    };
    if !aligned || offset >= limit {
        return None;
    }
    // `offset < limit`, which is at most 32 KiB.
    let offset = usize::try_from(offset).ok()?;
    Some((offset / 16, offset % 16 / 4))
}

impl MsixConfig {
    /// Creates the state for `num_vectors` (1..=2048) vectors, all masked, MSI-X disabled.
    pub fn new(num_vectors: u16, interrupt: Arc<dyn MsiInterrupt>) -> Result<Self, MsixError> {
        if !(1..=MSIX_MAX_VECTORS).contains(&num_vectors) {
            return Err(MsixError::TableSize(num_vectors));
        }
        let n = usize::from(num_vectors);
        let shared = MsixShared {
            enabled: AtomicBool::new(false),
            function_masked: AtomicBool::new(false),
            vector_masked: (0..n).map(|_| AtomicBool::new(true)).collect(),
            pba: (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect(),
            interrupt,
            #[cfg(test)]
            hooks: tests::RaceHooks::default(),
        };
        Ok(Self {
            table: vec![RESET_ENTRY; n],
            shared: Arc::new(shared),
        })
    }

    /// A lock-free handle for signalling vectors from another thread.
    pub fn notifier(&self) -> MsixNotifier {
        MsixNotifier {
            shared: self.shared.clone(),
        }
    }

    /// Number of vectors.
    pub fn num_vectors(&self) -> u16 {
        self.shared.num_vectors()
    }

    /// Size of the table region in bytes.
    pub fn table_len(&self) -> u64 {
        self.table.len() as u64 * MSIX_TABLE_ENTRY_SIZE
    }

    /// Size of the PBA region in bytes (whole qwords).
    pub fn pba_len(&self) -> u64 {
        self.shared.pba.len() as u64 * 8
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.shared.enabled.load(Ordering::SeqCst)
    }

    /// Whether the function mask is set.
    pub fn function_masked(&self) -> bool {
        self.shared.function_masked.load(Ordering::SeqCst)
    }

    /// Whether `vector`'s pending bit is set (false for out-of-range vectors).
    pub fn is_pending(&self, vector: u16) -> bool {
        self.shared.is_pending(usize::from(vector))
    }

    /// Applies a Message Control value (enable and function mask bits; the rest is ignored).
    /// Vectors whose effective mask changes get an `update`; newly unmasked pending vectors
    /// are delivered. Every vector is processed even if one fails; the first error is returned.
    ///
    /// When unmasking, routes are updated before the notifiers can see the unmask; when
    /// masking, the notifiers see the mask before the routes are updated.
    pub fn set_message_control(&mut self, ctl: u16) -> Result<(), MsixError> {
        let enabled = ctl & MSIX_MSG_CTL_ENABLE != 0;
        let function_masked = ctl & MSIX_MSG_CTL_FUNCTION_MASK != 0;
        let was_masked = self.shared.globally_masked();
        let masked = !enabled || function_masked;
        let shared = &self.shared;
        if masked {
            // Function mask first: a notifier racing with "enabled + unmasked -> disabled +
            // masked" pends instead of seeing a transient state it would drop.
            shared
                .function_masked
                .store(function_masked, Ordering::SeqCst);
            shared.enabled.store(enabled, Ordering::SeqCst);
        }
        if masked == was_masked {
            return Ok(());
        }
        let mut result = Ok(());
        let mut keep = |r: Result<(), MsixError>| {
            if result.is_ok() {
                result = r;
            }
        };
        let unmasked_entries = || {
            self.table
                .iter()
                .enumerate()
                .filter(|(_, e)| !e.masked())
                .map(|(v, e)| (v, e.msg()))
        };
        for (v, msg) in unmasked_entries() {
            // `v` < 2048.
            keep(
                shared
                    .interrupt
                    .update(v as u16, msg, masked)
                    .map_err(MsixError::Interrupt),
            );
        }
        if !masked {
            // Enable first: the transient state is "enabled + function masked" (pends).
            shared.enabled.store(true, Ordering::SeqCst);
            shared.function_masked.store(false, Ordering::SeqCst);
            #[cfg(test)]
            tests::RaceHooks::run(&shared.hooks.before_take);
            for (v, _) in unmasked_entries() {
                keep(shared.deliver_pending(v));
            }
        }
        result
    }

    /// Reads Message Control from the capability at `cap_offset` in `config` and applies it;
    /// call after every guest config write.
    pub fn sync_from_config(
        &mut self,
        config: &PciConfiguration,
        cap_offset: u8,
    ) -> Result<(), MsixError> {
        self.set_message_control(config.read_u16(usize::from(cap_offset) + MSIX_MSG_CTL_OFFSET))
    }

    /// Reads the table at `offset` from its start. Only naturally aligned 4- and 8-byte
    /// accesses are defined; anything else reads all-ones.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        let Some((idx, field)) = locate(offset, data.len(), self.table_len()) else {
            data.fill(0xff);
            return;
        };
        let entry = &self.table[idx];
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&entry.dword(field + i).to_le_bytes());
        }
    }

    /// Writes the table at `offset` from its start (aligned 4- and 8-byte accesses; others are
    /// ignored). A changed entry is passed to `update`; a pending vector that becomes
    /// unmasked is delivered (the pending bit is taken atomically, so a racing
    /// [`MsixNotifier::notify`] and this write deliver it once between them).
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Result<(), MsixError> {
        let Some((idx, field)) = locate(offset, data.len(), self.table_len()) else {
            debug!(
                "ignoring MSI-X table write of {} bytes at {offset:#x}",
                data.len()
            );
            return Ok(());
        };
        let old = self.table[idx];
        let mut new = old;
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            new.set_dword(field + i, u32::from_le_bytes(b));
        }
        if new == old {
            return Ok(());
        }
        self.table[idx] = new;
        let shared = &self.shared;
        let vector_mask = &shared.vector_masked[idx];
        // Bounded by MSIX_MAX_VECTORS.
        let vector = idx as u16;
        if shared.globally_masked() || new.masked() {
            vector_mask.store(new.masked(), Ordering::SeqCst);
            return shared
                .interrupt
                .update(vector, new.msg(), true)
                .map_err(MsixError::Interrupt);
        }
        // Route first, then let notifiers through, then collect what pended meanwhile.
        let updated = shared
            .interrupt
            .update(vector, new.msg(), false)
            .map_err(MsixError::Interrupt);
        vector_mask.store(false, Ordering::SeqCst);
        #[cfg(test)]
        tests::RaceHooks::run(&shared.hooks.before_take);
        let delivered = shared.deliver_pending(idx);
        updated.and(delivered)
    }

    /// Reads the PBA at `offset` from its start (aligned 4- and 8-byte accesses; anything else
    /// reads all-ones). The PBA is read-only: writes need no handling.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        let Some((idx, field)) = locate(offset, data.len(), self.pba_len()) else {
            data.fill(0xff);
            return;
        };
        // `idx` counts 16-byte units; each holds two qwords.
        let Some(q) = self.shared.pba.get(idx * 2 + field / 2) else {
            data.fill(0xff);
            return;
        };
        let bytes = q.load(Ordering::SeqCst).to_le_bytes();
        let start = (field % 2) * 4;
        data.copy_from_slice(&bytes[start..start + data.len()]);
    }

    /// Signals `vector`: delivered if MSI-X is enabled and the vector unmasked, made pending if
    /// it is masked, dropped if MSI-X is disabled. Same as [`MsixNotifier::notify`].
    pub fn notify(&self, vector: u16) -> Result<(), MsixError> {
        self.shared.notify(vector)
    }
}

#[cfg(test)]
pub(crate) mod tests;
