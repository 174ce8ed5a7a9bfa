//! Block device configuration: the VMM-facing [`BlockConfig`] and the guest-visible
//! configuration space (virtio 1.2 §5.2.4).
//!
//! Layout of `struct virtio_blk_config` (all little-endian):
//!
//! | offset | field |
//! |-------:|-------|
//! | 0  | `le64 capacity` (512-byte sectors) |
//! | 8  | `le32 size_max` |
//! | 12 | `le32 seg_max` |
//! | 16 | `le16 cylinders; u8 heads; u8 sectors` (geometry) |
//! | 20 | `le32 blk_size` |
//! | 24 | `u8 physical_block_exp; u8 alignment_offset; le16 min_io_size; le32 opt_io_size` |
//! | 32 | `u8 writeback; u8 unused0` |
//! | 34 | `le16 num_queues` |
//! | 36 | `le32 max_discard_sectors; le32 max_discard_seg; le32 discard_sector_alignment` |
//! | 48 | `le32 max_write_zeroes_sectors; le32 max_write_zeroes_seg` |
//! | 56 | `u8 write_zeroes_may_unmap; u8 unused1[3]` |
//!
//! Secure-erase and zoned fields (offset 60 and later) are not offered and read as zero.

use std::path::PathBuf;

use super::engine::EngineChoice;
use super::request::RequestLimits;

/// Offset of the `writeback` byte, the only field the driver may write.
pub const WRITEBACK_OFFSET: u64 = 32;
/// Size of the configuration space served (through `write_zeroes_may_unmap` and padding).
pub const CONFIG_SPACE_SIZE: usize = 60;

/// Largest `seg_max` advertised, whatever the queue size.
pub const MAX_SEG: u32 = 126;
/// Largest discard range, in sectors (2 GiB).
pub const MAX_DISCARD_SECTORS: u32 = 1 << 22;
/// Most ranges in one discard request.
pub const MAX_DISCARD_SEG: u32 = 32;
/// Largest write-zeroes range, in sectors (16 MiB: bounds the synchronous zero-writing
/// fallback).
pub const MAX_WRITE_ZEROES_SECTORS: u32 = 1 << 15;
/// Most ranges in one write-zeroes request.
pub const MAX_WRITE_ZEROES_SEG: u32 = 8;
/// Discard alignment hint, in sectors (4 KiB).
pub const DISCARD_SECTOR_ALIGNMENT: u32 = 8;
/// Logical block size reported to the guest.
pub const BLK_SIZE: u32 = 512;

/// Errors in a [`BlockConfig`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `num_queues` is 0.
    #[error("num_queues must be at least 1")]
    NoQueues,
    /// `queue_size` is not a power of two in 4..=32768.
    #[error("queue_size {0} must be a power of two between 4 and 32768")]
    QueueSize(u16),
    /// The serial is longer than 20 bytes.
    #[error("serial is {0} bytes long, at most 20 allowed")]
    SerialTooLong(usize),
}

/// How the VMM wants a block device set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Open read-only and offer `VIRTIO_BLK_F_RO`.
    pub readonly: bool,
    /// cache=none: use `O_DIRECT` for aligned requests.
    pub direct: bool,
    /// Number of request queues (`VIRTIO_BLK_F_MQ` when more than one).
    pub num_queues: u16,
    /// Maximum size of each queue.
    pub queue_size: u16,
    /// Device ID returned by `GET_ID` (at most 20 bytes).
    pub serial: Option<String>,
    /// Lock the image (shared if read-only, exclusive if writable) against other users.
    pub lock: bool,
    /// Which I/O engine serves the queues.
    pub engine: EngineChoice,
}

impl BlockConfig {
    /// Checks the VMM-provided values.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_queues == 0 {
            return Err(ConfigError::NoQueues);
        }
        if !(4..=32768).contains(&self.queue_size) || !self.queue_size.is_power_of_two() {
            return Err(ConfigError::QueueSize(self.queue_size));
        }
        if let Some(s) = &self.serial {
            if s.len() > super::request::SERIAL_LEN {
                return Err(ConfigError::SerialTooLong(s.len()));
            }
        }
        Ok(())
    }

    /// `seg_max` for this queue size: leaves room for the header and status descriptors.
    pub fn seg_max(&self) -> u32 {
        u32::from(self.queue_size)
            .saturating_sub(2)
            .clamp(1, MAX_SEG)
    }

    /// The serial as the 20-byte, NUL-padded `GET_ID` payload.
    pub fn serial_bytes(&self) -> [u8; super::request::SERIAL_LEN] {
        let mut out = [0u8; super::request::SERIAL_LEN];
        if let Some(s) = &self.serial {
            let n = s.len().min(out.len());
            out[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        out
    }

    /// Request limits for a disk of `capacity` sectors.
    pub fn limits(&self, capacity: u64) -> RequestLimits {
        RequestLimits {
            capacity,
            seg_max: self.seg_max(),
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: MAX_DISCARD_SEG,
            max_write_zeroes_sectors: MAX_WRITE_ZEROES_SECTORS,
            max_write_zeroes_seg: MAX_WRITE_ZEROES_SEG,
            readonly: self.readonly,
        }
    }
}

/// The guest-visible configuration space bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: [u8; CONFIG_SPACE_SIZE],
}

impl ConfigSpace {
    /// Builds the configuration space for `limits` and `num_queues`, in writeback mode.
    pub fn new(limits: &RequestLimits, num_queues: u16) -> Self {
        let mut c = ConfigSpace {
            bytes: [0; CONFIG_SPACE_SIZE],
        };
        c.put(0, &limits.capacity.to_le_bytes());
        c.put(8, &0u32.to_le_bytes()); // size_max: VIRTIO_BLK_F_SIZE_MAX not offered
        c.put(12, &limits.seg_max.to_le_bytes());
        // 16..20: geometry, VIRTIO_BLK_F_GEOMETRY not offered.
        c.put(20, &BLK_SIZE.to_le_bytes());
        c.put(24, &[0, 0]); // physical_block_exp, alignment_offset
        c.put(26, &1u16.to_le_bytes()); // min_io_size (in logical blocks)
        c.put(28, &0u32.to_le_bytes()); // opt_io_size: no preference
        c.put(32, &[1, 0]); // writeback, unused0
        c.put(34, &num_queues.to_le_bytes());
        c.put(36, &limits.max_discard_sectors.to_le_bytes());
        c.put(40, &limits.max_discard_seg.to_le_bytes());
        c.put(44, &DISCARD_SECTOR_ALIGNMENT.to_le_bytes());
        c.put(48, &limits.max_write_zeroes_sectors.to_le_bytes());
        c.put(52, &limits.max_write_zeroes_seg.to_le_bytes());
        c.put(56, &[1, 0, 0, 0]); // write_zeroes_may_unmap, unused1
        c
    }

    fn put(&mut self, offset: usize, value: &[u8]) {
        if let Some(dst) = self.bytes.get_mut(offset..offset + value.len()) {
            dst.copy_from_slice(value);
        }
    }

    /// Copies config bytes at `offset` into `data`; bytes past the end read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok())
                .and_then(|o| self.bytes.get(o).copied())
                .unwrap_or(0);
        }
    }

    /// Current `writeback` value (1 = writeback, 0 = writethrough).
    pub fn writeback(&self) -> u8 {
        self.bytes[WRITEBACK_OFFSET as usize]
    }

    /// Sets the `writeback` byte.
    pub fn set_writeback(&mut self, value: u8) {
        self.bytes[WRITEBACK_OFFSET as usize] = value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BlockConfig {
        BlockConfig {
            path: PathBuf::from("/nonexistent"),
            readonly: false,
            direct: false,
            num_queues: 4,
            queue_size: 256,
            serial: Some("keel-disk".into()),
            lock: false,
            engine: Default::default(),
        }
    }

    #[test]
    fn layout_offsets() {
        let c = cfg();
        let space = ConfigSpace::new(&c.limits(2048), c.num_queues);
        let mut b8 = [0u8; 8];
        space.read(0, &mut b8);
        assert_eq!(u64::from_le_bytes(b8), 2048);
        let mut b4 = [0u8; 4];
        space.read(12, &mut b4);
        assert_eq!(u32::from_le_bytes(b4), 126);
        space.read(20, &mut b4);
        assert_eq!(u32::from_le_bytes(b4), 512);
        let mut b2 = [0u8; 2];
        space.read(34, &mut b2);
        assert_eq!(u16::from_le_bytes(b2), 4);
        space.read(36, &mut b4);
        assert_eq!(u32::from_le_bytes(b4), MAX_DISCARD_SECTORS);
        space.read(52, &mut b4);
        assert_eq!(u32::from_le_bytes(b4), MAX_WRITE_ZEROES_SEG);
        let mut b1 = [0u8; 1];
        space.read(56, &mut b1);
        assert_eq!(b1[0], 1);
        assert_eq!(space.writeback(), 1);
        // Unaligned read straddling capacity and size_max; reads past the end are zero.
        space.read(6, &mut b4);
        assert_eq!(b4, [0, 0, 0, 0]);
        let mut big = [0xffu8; 8];
        space.read(58, &mut big);
        assert_eq!(big, [0; 8]);
        space.read(u64::MAX, &mut big);
        assert_eq!(big, [0; 8]);
    }

    #[test]
    fn validation() {
        assert!(cfg().validate().is_ok());
        let mut c = cfg();
        c.queue_size = 100;
        assert_eq!(c.validate(), Err(ConfigError::QueueSize(100)));
        c = cfg();
        c.num_queues = 0;
        assert_eq!(c.validate(), Err(ConfigError::NoQueues));
        c = cfg();
        c.serial = Some("x".repeat(21));
        assert_eq!(c.validate(), Err(ConfigError::SerialTooLong(21)));
        assert_eq!(&cfg().serial_bytes()[..10], b"keel-disk\0");
        c = cfg();
        c.queue_size = 4;
        assert_eq!(c.seg_max(), 2);
    }
}
