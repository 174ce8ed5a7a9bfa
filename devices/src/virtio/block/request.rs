//! Parsing and validation of virtio-blk requests (virtio 1.2 §5.2.6).
//!
//! A request is a descriptor chain made of a 16-byte device-readable header
//! (`le32 type; le32 reserved; le64 sector`), zero or more data descriptors and a last,
//! 1-byte, device-writable status descriptor. Everything in the chain is guest-controlled, so
//! [`Request::parse`] checks every field before anything is touched: descriptor directions,
//! lengths, guest-physical ranges, sector ranges (overflow-safe) and per-type limits. The
//! header must be its own descriptor of exactly 16 bytes and the status its own descriptor of
//! exactly 1 byte (what Linux and Windows drivers send); other framings are refused.
//!
//! A rejected chain is reported as a [`Rejected`], which carries the status address when the
//! status descriptor itself was valid (so `IOERR`/`UNSUPP` can be written), and `None` when
//! the chain is too broken for that (the chain is then returned with a used length of 0).

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
    VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryMmap,
};

use super::engine::IoVecs;

/// Size of a sector, the unit of every virtio-blk offset and length.
pub const SECTOR_SIZE: u64 = 512;
/// log2 of [`SECTOR_SIZE`].
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the device ID string returned by `GET_ID`.
pub const SERIAL_LEN: usize = 20;

const HEADER_LEN: u32 = 16;
const RANGE_LEN: u64 = 16;

/// Device limits a request is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Capacity in sectors.
    pub capacity: u64,
    /// Maximum number of data descriptors in a request.
    pub seg_max: u32,
    /// Maximum sectors in one discard range.
    pub max_discard_sectors: u32,
    /// Maximum ranges in one discard request.
    pub max_discard_seg: u32,
    /// Maximum sectors in one write-zeroes range.
    pub max_write_zeroes_sectors: u32,
    /// Maximum ranges in one write-zeroes request.
    pub max_write_zeroes_seg: u32,
    /// The disk refuses writes.
    pub readonly: bool,
}

/// Why a descriptor chain is not a valid request.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain has no readable descriptor at all.
    #[error("empty descriptor chain")]
    EmptyChain,
    /// The chain ends on a descriptor with NEXT set: a loop, a chain longer than the queue, an
    /// out-of-range `next` index, or a descriptor/indirect table outside guest memory.
    #[error("descriptor chain is truncated (loop, bad next index or unreadable descriptor)")]
    BrokenChain,
    /// The last descriptor is device-readable.
    #[error("status descriptor is not device-writable")]
    StatusNotWritable,
    /// The last descriptor is not exactly 1 byte long.
    #[error("status descriptor has length {0}, expected 1")]
    StatusLength(u32),
    /// The status byte lies outside guest memory.
    #[error("status descriptor at {0:#x} is outside guest memory")]
    StatusOutOfMemory(u64),
    /// The chain has a status descriptor but no header.
    #[error("request has no header descriptor")]
    MissingHeader,
    /// The header descriptor is device-writable.
    #[error("header descriptor is not device-readable")]
    HeaderNotReadable,
    /// The header descriptor is not exactly 16 bytes long.
    #[error("header descriptor has length {0}, expected 16")]
    HeaderLength(u32),
    /// The header could not be read from guest memory.
    #[error("cannot read the request header at {addr:#x}")]
    HeaderRead {
        /// Guest address of the header.
        addr: u64,
        /// Cause.
        #[source]
        source: GuestMemoryError,
    },
    /// The request type is not implemented.
    #[error("unsupported request type {0}")]
    UnsupportedType(u32),
    /// A write-type request on a read-only disk.
    #[error("write request to a read-only disk")]
    ReadOnly,
    /// More data descriptors than `seg_max`.
    #[error("{count} data segments, at most {max} allowed")]
    TooManySegments {
        /// Number of data descriptors (at least).
        count: usize,
        /// Limit.
        max: u32,
    },
    /// A data descriptor has the wrong direction for the request type.
    #[error("descriptor {index} has the wrong direction for this request type")]
    WrongDirection {
        /// Position of the descriptor in the chain.
        index: usize,
    },
    /// A data descriptor lies (partly) outside guest memory.
    #[error("data descriptor {addr:#x}+{len:#x} is outside guest memory")]
    SegmentOutOfMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// The data buffers map to more than `MAX_IOVECS` host buffers.
    #[error("data buffers need more than the maximum number of iovecs")]
    TooManyIovecs,
    /// A read or write without data.
    #[error("read/write request without data")]
    NoData,
    /// The data length of a read or write is not a multiple of 512.
    #[error("data length {0} is not a multiple of the sector size")]
    UnalignedLength(u64),
    /// `sector + sectors` overflows.
    #[error("sector {sector} + {sectors} sectors overflows")]
    SectorOverflow {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
    },
    /// The sector range ends past the capacity.
    #[error("sectors {sector}+{sectors} are past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Capacity in sectors.
        capacity: u64,
    },
    /// The discard/write-zeroes payload is empty or not a multiple of 16 bytes.
    #[error("discard/write-zeroes payload of {0} bytes is not a non-empty multiple of 16")]
    RangeLength(u64),
    /// More discard/write-zeroes ranges than allowed.
    #[error("{count} ranges, at most {max} allowed")]
    TooManyRanges {
        /// Number of ranges.
        count: u64,
        /// Limit.
        max: u32,
    },
    /// The discard/write-zeroes payload could not be read from guest memory.
    #[error("cannot read the discard/write-zeroes ranges")]
    RangeRead(#[source] GuestMemoryError),
    /// A range has unknown flags, or UNMAP on a discard.
    #[error("unsupported range flags {0:#x}")]
    RangeFlags(u32),
    /// A range is longer than the per-range maximum.
    #[error("range of {count} sectors, at most {max} allowed")]
    TooManySectors {
        /// Sectors in the range.
        count: u32,
        /// Limit.
        max: u32,
    },
}

impl RequestError {
    /// The virtio-blk status byte reporting this error.
    pub fn status(&self) -> u8 {
        match self {
            RequestError::UnsupportedType(_) | RequestError::RangeFlags(_) => {
                VIRTIO_BLK_S_UNSUPP as u8
            }
            _ => VIRTIO_BLK_S_IOERR as u8,
        }
    }
}

/// A chain that could not be parsed into a [`Request`].
#[derive(Debug)]
pub struct Rejected {
    /// Head descriptor index, to return the chain on the used ring.
    pub head_index: u16,
    /// Where to write the status byte, if the status descriptor was usable.
    pub status_addr: Option<GuestAddress>,
    /// What was wrong.
    pub error: RequestError,
}

/// A byte range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Byte offset in the image.
    pub offset: u64,
    /// Byte length (never 0).
    pub len: u64,
    /// Deallocation allowed (write-zeroes with the UNMAP flag).
    pub unmap: bool,
}

/// What a request asks for.
#[derive(Debug)]
pub enum RequestKind {
    /// Read into the guest buffers from byte `offset`.
    In {
        /// Byte offset in the image.
        offset: u64,
        /// Guest buffers as host iovecs.
        iovecs: IoVecs,
    },
    /// Write the guest buffers at byte `offset`.
    Out {
        /// Byte offset in the image.
        offset: u64,
        /// Guest buffers as host iovecs.
        iovecs: IoVecs,
    },
    /// Flush the write cache.
    Flush,
    /// Write the device ID into the (device-writable) buffers.
    GetId {
        /// Guest buffers `(address, length)`.
        buffers: Vec<(GuestAddress, u32)>,
    },
    /// Discard the ranges.
    Discard(Vec<Range>),
    /// Zero the ranges.
    WriteZeroes(Vec<Range>),
}

/// A validated request.
#[derive(Debug)]
pub struct Request {
    /// Head descriptor index.
    pub head_index: u16,
    /// Guest address of the status byte.
    pub status_addr: GuestAddress,
    /// The operation.
    pub kind: RequestKind,
}

/// Turns a sector range into a byte offset, checking it against the capacity.
fn sector_range(sector: u64, sectors: u64, capacity: u64) -> Result<u64, RequestError> {
    let end = sector
        .checked_add(sectors)
        .ok_or(RequestError::SectorOverflow { sector, sectors })?;
    if end > capacity {
        return Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity,
        });
    }
    // capacity <= u64::MAX >> SECTOR_SHIFT (it is derived from a byte size), so no overflow.
    sector
        .checked_mul(SECTOR_SIZE)
        .ok_or(RequestError::SectorOverflow { sector, sectors })
}

/// Checks direction and guest-memory bounds of the data descriptors; returns the total length.
fn check_data(
    data: &[Descriptor],
    writable: bool,
    mem: &GuestMemoryMmap,
) -> Result<u64, RequestError> {
    let mut total = 0u64;
    for (i, d) in data.iter().enumerate() {
        if d.is_write_only() != writable {
            return Err(RequestError::WrongDirection { index: i + 1 });
        }
        if !GuestMemoryBackend::check_range(mem, d.addr(), d.len() as usize) {
            return Err(RequestError::SegmentOutOfMemory {
                addr: d.addr().raw_value(),
                len: d.len(),
            });
        }
        total += u64::from(d.len());
    }
    Ok(total)
}

/// Translates the (already bounds-checked) data descriptors into host iovecs.
fn iovecs(data: &[Descriptor], mem: &GuestMemoryMmap) -> Result<IoVecs, RequestError> {
    let mut v = IoVecs::with_capacity(data.len());
    for d in data.iter().filter(|d| d.len() > 0) {
        let out_of_memory = || RequestError::SegmentOutOfMemory {
            addr: d.addr().raw_value(),
            len: d.len(),
        };
        for slice in GuestMemoryBackend::get_slices(mem, d.addr(), d.len() as usize) {
            let slice = slice.map_err(|_| out_of_memory())?;
            if !v.push(slice.ptr_guard_mut().as_ptr(), slice.len()) {
                return Err(RequestError::TooManyIovecs);
            }
        }
    }
    Ok(v)
}

/// Reads and validates the discard/write-zeroes ranges carried by `data`.
fn ranges(
    data: &[Descriptor],
    mem: &GuestMemoryMmap,
    limits: &RequestLimits,
    discard: bool,
) -> Result<Vec<Range>, RequestError> {
    let total = check_data(data, false, mem)?;
    let (max_seg, max_sectors) = if discard {
        (limits.max_discard_seg, limits.max_discard_sectors)
    } else {
        (limits.max_write_zeroes_seg, limits.max_write_zeroes_sectors)
    };
    if total == 0 || !total.is_multiple_of(RANGE_LEN) {
        return Err(RequestError::RangeLength(total));
    }
    let count = total / RANGE_LEN;
    if count > u64::from(max_seg) {
        return Err(RequestError::TooManyRanges {
            count,
            max: max_seg,
        });
    }
    // Bounded by max_seg * 16 bytes.
    let mut raw = vec![0u8; total as usize];
    let mut pos = 0usize;
    for d in data {
        let len = d.len() as usize;
        mem.read_slice(&mut raw[pos..pos + len], d.addr())
            .map_err(RequestError::RangeRead)?;
        pos += len;
    }
    let mut out = Vec::with_capacity(count as usize);
    for chunk in raw.chunks_exact(RANGE_LEN as usize) {
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&chunk[0..8]);
        let sector = u64::from_le_bytes(sector);
        let num = u32::from_le_bytes([chunk[8], chunk[9], chunk[10], chunk[11]]);
        let flags = u32::from_le_bytes([chunk[12], chunk[13], chunk[14], chunk[15]]);
        let allowed = if discard {
            0
        } else {
            VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP
        };
        if flags & !allowed != 0 {
            return Err(RequestError::RangeFlags(flags));
        }
        if num > max_sectors {
            return Err(RequestError::TooManySectors {
                count: num,
                max: max_sectors,
            });
        }
        let offset = sector_range(sector, u64::from(num), limits.capacity)?;
        if num > 0 {
            out.push(Range {
                offset,
                len: u64::from(num) << SECTOR_SHIFT,
                unmap: flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0,
            });
        }
    }
    Ok(out)
}

impl Request {
    /// Parses and validates the descriptor chain `chain` against `limits`.
    pub fn parse<M>(
        chain: DescriptorChain<M>,
        mem: &GuestMemoryMmap,
        limits: &RequestLimits,
    ) -> Result<Request, Rejected>
    where
        M: std::ops::Deref<Target = GuestMemoryMmap>,
    {
        let head_index = chain.head_index();
        let reject = |status_addr, error| Rejected {
            head_index,
            status_addr,
            error,
        };

        // Collect at most header + seg_max + status descriptors, but walk the whole chain
        // (bounded by the queue or indirect table size) to find its last descriptor.
        let max_descs = (limits.seg_max as usize).saturating_add(2);
        let mut descs: Vec<Descriptor> = Vec::with_capacity(max_descs.min(16));
        let mut count = 0usize;
        let mut last = None;
        for d in chain {
            count += 1;
            if descs.len() < max_descs {
                descs.push(d);
            }
            last = Some(d);
        }
        let status_addr = Self::status_address(last, mem).map_err(|e| reject(None, e))?;
        let fail = |error| Err(reject(Some(status_addr), error));

        if count < 2 {
            return fail(RequestError::MissingHeader);
        }
        if count > max_descs {
            return fail(RequestError::TooManySegments {
                count: count - 2,
                max: limits.seg_max,
            });
        }
        let header = descs[0];
        let data = &descs[1..count - 1];
        if header.is_write_only() {
            return fail(RequestError::HeaderNotReadable);
        }
        if header.len() != HEADER_LEN {
            return fail(RequestError::HeaderLength(header.len()));
        }
        let (req_type, sector) = match Self::read_header(header, mem) {
            Ok(h) => h,
            Err(e) => return fail(e),
        };
        let kind = match Self::parse_kind(req_type, sector, data, mem, limits) {
            Ok(kind) => kind,
            Err(e) => return fail(e),
        };
        Ok(Request {
            head_index,
            status_addr,
            kind,
        })
    }

    /// Where the status byte goes: the chain's last descriptor, which must end the chain, be
    /// device-writable, one byte long and inside guest memory.
    fn status_address(
        last: Option<Descriptor>,
        mem: &GuestMemoryMmap,
    ) -> Result<GuestAddress, RequestError> {
        let status = last.ok_or(RequestError::EmptyChain)?;
        if status.has_next() {
            return Err(RequestError::BrokenChain);
        }
        if !status.is_write_only() {
            return Err(RequestError::StatusNotWritable);
        }
        if status.len() != 1 {
            return Err(RequestError::StatusLength(status.len()));
        }
        if !GuestMemoryBackend::check_range(mem, status.addr(), 1) {
            return Err(RequestError::StatusOutOfMemory(status.addr().raw_value()));
        }
        Ok(status.addr())
    }

    /// The request type and sector from the (already length-checked) header descriptor.
    fn read_header(header: Descriptor, mem: &GuestMemoryMmap) -> Result<(u32, u64), RequestError> {
        let mut raw = [0u8; HEADER_LEN as usize];
        if let Err(source) = mem.read_slice(&mut raw, header.addr()) {
            let addr = header.addr().raw_value();
            return Err(RequestError::HeaderRead { addr, source });
        }
        let req_type = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&raw[8..16]);
        Ok((req_type, u64::from_le_bytes(sector)))
    }

    fn parse_kind(
        req_type: u32,
        sector: u64,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
        limits: &RequestLimits,
    ) -> Result<RequestKind, RequestError> {
        let is_write = matches!(
            req_type,
            VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES
        );
        if is_write && limits.readonly {
            return Err(RequestError::ReadOnly);
        }
        match req_type {
            VIRTIO_BLK_T_IN | VIRTIO_BLK_T_OUT => {
                let writable = req_type == VIRTIO_BLK_T_IN;
                let len = check_data(data, writable, mem)?;
                if len == 0 {
                    return Err(RequestError::NoData);
                }
                if !len.is_multiple_of(SECTOR_SIZE) {
                    return Err(RequestError::UnalignedLength(len));
                }
                let offset = sector_range(sector, len >> SECTOR_SHIFT, limits.capacity)?;
                let iovecs = iovecs(data, mem)?;
                Ok(if writable {
                    RequestKind::In { offset, iovecs }
                } else {
                    RequestKind::Out { offset, iovecs }
                })
            }
            VIRTIO_BLK_T_FLUSH => Ok(RequestKind::Flush),
            VIRTIO_BLK_T_GET_ID => {
                check_data(data, true, mem)?;
                let buffers = data.iter().map(|d| (d.addr(), d.len())).collect();
                Ok(RequestKind::GetId { buffers })
            }
            VIRTIO_BLK_T_DISCARD => Ok(RequestKind::Discard(ranges(data, mem, limits, true)?)),
            VIRTIO_BLK_T_WRITE_ZEROES => {
                Ok(RequestKind::WriteZeroes(ranges(data, mem, limits, false)?))
            }
            other => Err(RequestError::UnsupportedType(other)),
        }
    }
}

/// Writes `serial` (NUL-padded to 20 bytes, truncated to the buffers) into `buffers`; returns
/// the number of bytes written.
pub fn write_serial(
    mem: &GuestMemoryMmap,
    buffers: &[(GuestAddress, u32)],
    serial: &[u8; SERIAL_LEN],
) -> Result<u32, GuestMemoryError> {
    let mut written = 0usize;
    for &(addr, len) in buffers {
        if written >= SERIAL_LEN {
            break;
        }
        let n = (len as usize).min(SERIAL_LEN - written);
        mem.write_slice(&serial[written..written + n], addr)?;
        written += n;
    }
    Ok(written as u32)
}
