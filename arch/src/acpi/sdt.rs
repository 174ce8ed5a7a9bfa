//! A writer for ACPI System Description Tables: the standard 36-byte header with Keel's OEM
//! fields, a body appended or patched at fixed offsets, and the length and checksum fixed up
//! when the table is finished. Also the Generic Address Structure used by the FADT.

/// Size of the standard SDT header.
pub const HEADER_SIZE: usize = 36;
/// OEM ID in every table and the RSDP.
pub const OEM_ID: [u8; 6] = *b"KEEL  ";
/// OEM table ID in every table.
pub const OEM_TABLE_ID: [u8; 8] = *b"KEELVM  ";
/// OEM revision in every table.
pub const OEM_REVISION: u32 = 1;
/// Creator ID in every table.
pub const CREATOR_ID: [u8; 4] = *b"KEEL";
/// Creator revision in every table.
pub const CREATOR_REVISION: u32 = 1;

const LENGTH_OFFSET: usize = 4;
const CHECKSUM_OFFSET: usize = 9;

/// The byte that makes the sum of `bytes` plus itself zero (mod 256).
pub fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_sub(*b))
}

/// An ACPI table under construction. Fields are little-endian, as ACPI requires.
#[derive(Debug, Clone)]
pub struct Sdt {
    bytes: Vec<u8>,
}

impl Sdt {
    /// A table with `signature` and `revision` and an empty body.
    pub fn new(signature: [u8; 4], revision: u8) -> Self {
        let mut bytes = Vec::with_capacity(HEADER_SIZE);
        bytes.extend_from_slice(&signature);
        bytes.extend_from_slice(&0u32.to_le_bytes()); // length, set by finish()
        bytes.push(revision);
        bytes.push(0); // checksum, set by finish()
        bytes.extend_from_slice(&OEM_ID);
        bytes.extend_from_slice(&OEM_TABLE_ID);
        bytes.extend_from_slice(&OEM_REVISION.to_le_bytes());
        bytes.extend_from_slice(&CREATOR_ID);
        bytes.extend_from_slice(&CREATOR_REVISION.to_le_bytes());
        Self { bytes }
    }

    /// A table whose body is `length - HEADER_SIZE` zero bytes, for fixed-layout tables whose
    /// fields are then set with the `set_*` methods.
    pub fn with_length(signature: [u8; 4], revision: u8, length: usize) -> Self {
        let mut sdt = Self::new(signature, revision);
        sdt.bytes.resize(length.max(HEADER_SIZE), 0);
        sdt
    }

    /// Current length of the table, header included.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the table is only a header. Never true of a useful table.
    pub fn is_empty(&self) -> bool {
        self.bytes.len() == HEADER_SIZE
    }

    /// Appends raw bytes to the body.
    pub fn append(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
    }

    /// Appends a `u32` to the body.
    pub fn append_u32(&mut self, value: u32) {
        self.append(&value.to_le_bytes());
    }

    /// Appends a `u64` to the body.
    pub fn append_u64(&mut self, value: u64) {
        self.append(&value.to_le_bytes());
    }

    /// Writes `data` at `offset` from the start of the table, growing it if needed.
    pub fn set_bytes(&mut self, offset: usize, data: &[u8]) {
        let end = offset + data.len();
        if self.bytes.len() < end {
            self.bytes.resize(end, 0);
        }
        self.bytes[offset..end].copy_from_slice(data);
    }

    /// Writes a byte at `offset`.
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        self.set_bytes(offset, &[value]);
    }

    /// Writes a `u16` at `offset`.
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    /// Writes a `u32` at `offset`.
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    /// Writes a `u64` at `offset`.
    pub fn set_u64(&mut self, offset: usize, value: u64) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    /// Fills in the length and checksum and returns the finished table.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.bytes.len() as u32;
        self.bytes[LENGTH_OFFSET..LENGTH_OFFSET + 4].copy_from_slice(&len.to_le_bytes());
        self.bytes[CHECKSUM_OFFSET] = 0;
        self.bytes[CHECKSUM_OFFSET] = checksum(&self.bytes);
        self.bytes
    }
}

/// ACPI Generic Address Structure address space IDs.
pub mod address_space {
    /// System memory.
    pub const SYSTEM_MEMORY: u8 = 0;
    /// System I/O ports.
    pub const SYSTEM_IO: u8 = 1;
}

/// Generic Address Structure access sizes.
pub mod access_size {
    /// Undefined (legacy).
    pub const UNDEFINED: u8 = 0;
    /// Byte access.
    pub const BYTE: u8 = 1;
    /// Word access.
    pub const WORD: u8 = 2;
    /// Double-word access.
    pub const DWORD: u8 = 3;
    /// Quad-word access.
    pub const QWORD: u8 = 4;
}

/// An ACPI Generic Address Structure (12 bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GenericAddress {
    /// Address space ID (see [`address_space`]).
    pub space_id: u8,
    /// Register width in bits.
    pub bit_width: u8,
    /// Register offset in bits.
    pub bit_offset: u8,
    /// Access size (see [`access_size`]).
    pub access_size: u8,
    /// Register address.
    pub address: u64,
}

impl GenericAddress {
    /// Size of the encoded structure.
    pub const SIZE: usize = 12;

    /// An I/O port block of `len` bytes at `port`, accessed `access` at a time.
    pub fn io_port(port: u16, len: u8, access: u8) -> Self {
        Self {
            space_id: address_space::SYSTEM_IO,
            bit_width: len.saturating_mul(8),
            bit_offset: 0,
            access_size: access,
            address: u64::from(port),
        }
    }

    /// The structure's encoding.
    pub fn to_bytes(self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[0] = self.space_id;
        b[1] = self.bit_width;
        b[2] = self.bit_offset;
        b[3] = self.access_size;
        b[4..12].copy_from_slice(&self.address.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_and_checksum() {
        let mut sdt = Sdt::new(*b"TEST", 3);
        sdt.append(&[1, 2, 3]);
        sdt.append_u32(0xdead_beef);
        let t = sdt.finish();
        assert_eq!(t.len(), HEADER_SIZE + 7);
        assert_eq!(&t[0..4], b"TEST");
        assert_eq!(u32::from_le_bytes(t[4..8].try_into().unwrap()), 43);
        assert_eq!(t[8], 3);
        assert_eq!(&t[10..16], b"KEEL  ");
        assert_eq!(&t[16..24], b"KEELVM  ");
        assert_eq!(u32::from_le_bytes(t[24..28].try_into().unwrap()), 1);
        assert_eq!(&t[28..32], b"KEEL");
        assert_eq!(u32::from_le_bytes(t[32..36].try_into().unwrap()), 1);
        assert_eq!(&t[36..43], &[1, 2, 3, 0xef, 0xbe, 0xad, 0xde]);
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }

    #[test]
    fn fixed_length_tables_and_setters() {
        let mut sdt = Sdt::with_length(*b"FIXD", 1, 64);
        sdt.set_u16(40, 0x1234);
        sdt.set_u64(56, 0x0102_0304_0506_0708);
        sdt.set_u8(70, 9); // grows the table
        let t = sdt.finish();
        assert_eq!(t.len(), 71);
        assert_eq!(&t[40..42], &[0x34, 0x12]);
        assert_eq!(&t[56..64], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(t[70], 9);
        assert_eq!(t.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
    }

    #[test]
    fn generic_address_encoding() {
        let gas = GenericAddress::io_port(0x604, 2, access_size::WORD);
        assert_eq!(gas.to_bytes(), [1, 16, 0, 2, 0x04, 0x06, 0, 0, 0, 0, 0, 0]);
    }
}
