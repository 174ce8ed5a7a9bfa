//! A small ACPI Machine Language encoder (ACPI 6.5 chapter 20) for the DSDT: name strings,
//! integers, strings, EISA IDs, packages, `Name`, `Scope`, `Device`, `Method`, `Return`, buffers
//! and the resource descriptors a PCI root bridge's `_CRS` needs.
//!
//! Every function returns the finished encoding of one object; containers take their children
//! already encoded, so a tree is built bottom-up:
//!
//! ```
//! # use arch::acpi::aml;
//! # fn main() -> Result<(), aml::AmlError> {
//! let sb = aml::scope("\\_SB", &[aml::device("PCI0", &[aml::name("_HID", &aml::eisa_id("PNP0A03")?)?])?])?;
//! # assert_eq!(sb[0], 0x10);
//! # Ok(()) }
//! ```

/// Errors encoding AML.
#[derive(Debug, thiserror::Error)]
pub enum AmlError {
    /// A name path with a bad segment (1-4 characters of `A-Z`, `0-9`, `_`, not starting with a
    /// digit), or too many segments.
    #[error("invalid AML name path {0:?}")]
    InvalidName(String),
    /// A string with a character outside 0x01..=0x7f.
    #[error("AML strings must be ASCII without NUL: {0:?}")]
    InvalidString(String),
    /// An EISA ID not of the form `AAA####` (3 upper-case letters, 4 hex digits).
    #[error("invalid EISA ID {0:?}")]
    InvalidEisaId(String),
    /// An object longer than a PkgLength can express (2^28 bytes).
    #[error("AML object of {0} bytes is too long for a PkgLength")]
    TooLong(usize),
    /// A package with more than 255 elements.
    #[error("AML package with {0} elements; at most 255 are supported")]
    TooManyElements(usize),
}

const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const ONES_OP: u8 = 0xff;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const STRING_PREFIX: u8 = 0x0d;
const QWORD_PREFIX: u8 = 0x0e;
const NAME_OP: u8 = 0x08;
const SCOPE_OP: u8 = 0x10;
const BUFFER_OP: u8 = 0x11;
const PACKAGE_OP: u8 = 0x12;
const METHOD_OP: u8 = 0x14;
#[cfg(test)]
const RETURN_OP: u8 = 0xa4;
const EXT_OP_PREFIX: u8 = 0x5b;
const DEVICE_OP: u8 = 0x82;
const ROOT_CHAR: u8 = b'\\';
const PARENT_PREFIX: u8 = b'^';
const DUAL_NAME_PREFIX: u8 = 0x2e;
const MULTI_NAME_PREFIX: u8 = 0x2f;
const NULL_NAME: u8 = 0x00;

/// Largest value a 4-byte PkgLength encodes.
const PKG_LENGTH_MAX: usize = (1 << 28) - 1;

/// Encodes the PkgLength of an object whose contents after the PkgLength are `content_len`
/// bytes. The encoded value counts the PkgLength bytes themselves, so it uses 1 to 4 bytes.
pub fn pkg_length(content_len: usize) -> Result<Vec<u8>, AmlError> {
    if content_len < 0x3f {
        return Ok(vec![(content_len + 1) as u8]);
    }
    for extra in 1..=3usize {
        let total = content_len + 1 + extra;
        if total < 1 << (4 + 8 * extra) && total <= PKG_LENGTH_MAX {
            let mut out = vec![((extra as u8) << 6) | (total & 0xf) as u8];
            out.extend((0..extra).map(|i| (total >> (4 + 8 * i)) as u8));
            return Ok(out);
        }
    }
    Err(AmlError::TooLong(content_len))
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

/// `op` (one or more bytes), a PkgLength, then `content`.
fn with_pkg_length(op: &[u8], content: &[u8]) -> Result<Vec<u8>, AmlError> {
    let mut out = op.to_vec();
    out.extend(pkg_length(content.len())?);
    out.extend_from_slice(content);
    Ok(out)
}

fn name_seg(seg: &str, path: &str) -> Result<[u8; 4], AmlError> {
    let bytes = seg.as_bytes();
    let valid_char = |c: &u8| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == b'_';
    if bytes.is_empty()
        || bytes.len() > 4
        || bytes[0].is_ascii_digit()
        || !bytes.iter().all(valid_char)
    {
        return Err(AmlError::InvalidName(path.to_string()));
    }
    let mut out = [b'_'; 4];
    out[..bytes.len()].copy_from_slice(bytes);
    Ok(out)
}

/// Encodes a NameString: an optional `\` (root) or `^` prefixes, then dot-separated segments
/// of up to 4 characters, each padded with `_` (`"\\_SB.PCI0"`, `"_S5"`, `"^FOO"`).
pub fn name_string(path: &str) -> Result<Vec<u8>, AmlError> {
    let mut out = Vec::new();
    let mut rest = path;
    if let Some(r) = rest.strip_prefix('\\') {
        out.push(ROOT_CHAR);
        rest = r;
    } else {
        while let Some(r) = rest.strip_prefix('^') {
            out.push(PARENT_PREFIX);
            rest = r;
        }
    }
    if rest.is_empty() {
        if out.is_empty() {
            return Err(AmlError::InvalidName(path.to_string()));
        }
        out.push(NULL_NAME);
        return Ok(out);
    }
    let segs = rest
        .split('.')
        .map(|s| name_seg(s, path))
        .collect::<Result<Vec<_>, _>>()?;
    match segs.len() {
        1 => {}
        2 => out.push(DUAL_NAME_PREFIX),
        n @ 3..=255 => out.extend([MULTI_NAME_PREFIX, n as u8]),
        _ => return Err(AmlError::InvalidName(path.to_string())),
    }
    segs.iter().for_each(|s| out.extend_from_slice(s));
    Ok(out)
}

/// An integer in its shortest encoding: `ZeroOp`, `OneOp`, `OnesOp` or a Byte/Word/DWord/QWord
/// constant.
pub fn integer(value: u64) -> Vec<u8> {
    match value {
        0 => vec![ZERO_OP],
        1 => vec![ONE_OP],
        u64::MAX => vec![ONES_OP],
        v if v <= u64::from(u8::MAX) => byte(v as u8),
        v if v <= u64::from(u16::MAX) => word(v as u16),
        v if v <= u64::from(u32::MAX) => dword(v as u32),
        v => qword(v),
    }
}

/// A ByteConst (`0x0A` prefix), whatever the value.
pub fn byte(value: u8) -> Vec<u8> {
    vec![BYTE_PREFIX, value]
}

/// A WordConst (`0x0B` prefix).
pub fn word(value: u16) -> Vec<u8> {
    let mut out = vec![WORD_PREFIX];
    out.extend(value.to_le_bytes());
    out
}

/// A DWordConst (`0x0C` prefix).
pub fn dword(value: u32) -> Vec<u8> {
    let mut out = vec![DWORD_PREFIX];
    out.extend(value.to_le_bytes());
    out
}

/// A QWordConst (`0x0E` prefix).
pub fn qword(value: u64) -> Vec<u8> {
    let mut out = vec![QWORD_PREFIX];
    out.extend(value.to_le_bytes());
    out
}

/// A String constant.
pub fn string(value: &str) -> Result<Vec<u8>, AmlError> {
    if !value.bytes().all(|b| (0x01..=0x7f).contains(&b)) {
        return Err(AmlError::InvalidString(value.to_string()));
    }
    let mut out = vec![STRING_PREFIX];
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    Ok(out)
}

/// `EISAID("AAA####")`: the compressed 32-bit EISA ID as a DWordConst.
pub fn eisa_id(id: &str) -> Result<Vec<u8>, AmlError> {
    let err = || AmlError::InvalidEisaId(id.to_string());
    let b = id.as_bytes();
    if b.len() != 7 || !b[..3].iter().all(u8::is_ascii_uppercase) {
        return Err(err());
    }
    if !b[3..].iter().all(u8::is_ascii_hexdigit) {
        return Err(err());
    }
    let product = u16::from_str_radix(&id[3..], 16).map_err(|_| err())?;
    let (c0, c1, c2) = (b[0] - 0x40, b[1] - 0x40, b[2] - 0x40);
    let [p0, p1] = product.to_be_bytes();
    let bytes = [(c0 << 2) | (c1 >> 3), ((c1 & 0x7) << 5) | c2, p0, p1];
    Ok(dword(u32::from_le_bytes(bytes)))
}

/// `Name (path, value)` with `value` already encoded.
pub fn name(path: &str, value: &[u8]) -> Result<Vec<u8>, AmlError> {
    let mut out = vec![NAME_OP];
    out.extend(name_string(path)?);
    out.extend_from_slice(value);
    Ok(out)
}

/// `Package (n) { elements }` with each element already encoded.
pub fn package(elements: &[Vec<u8>]) -> Result<Vec<u8>, AmlError> {
    let count =
        u8::try_from(elements.len()).map_err(|_| AmlError::TooManyElements(elements.len()))?;
    let mut content = vec![count];
    content.extend(concat(elements));
    with_pkg_length(&[PACKAGE_OP], &content)
}

/// `Scope (path) { body }`.
pub fn scope(path: &str, body: &[Vec<u8>]) -> Result<Vec<u8>, AmlError> {
    let mut content = name_string(path)?;
    content.extend(concat(body));
    with_pkg_length(&[SCOPE_OP], &content)
}

/// `Device (path) { body }`.
pub fn device(path: &str, body: &[Vec<u8>]) -> Result<Vec<u8>, AmlError> {
    let mut content = name_string(path)?;
    content.extend(concat(body));
    with_pkg_length(&[EXT_OP_PREFIX, DEVICE_OP], &content)
}

/// `Method (path, args, Serialized/NotSerialized) { body }` (sync level 0); `args` is 0..=7.
pub fn method(
    path: &str,
    args: u8,
    serialized: bool,
    body: &[Vec<u8>],
) -> Result<Vec<u8>, AmlError> {
    let mut content = name_string(path)?;
    content.push((args & 0x7) | (u8::from(serialized) << 3));
    content.extend(concat(body));
    with_pkg_length(&[METHOD_OP], &content)
}

/// `Return (value)`.
#[cfg(test)]
pub(crate) fn return_value(value: &[u8]) -> Vec<u8> {
    let mut out = vec![RETURN_OP];
    out.extend_from_slice(value);
    out
}

/// `Buffer () { bytes }`.
pub fn buffer(bytes: &[u8]) -> Result<Vec<u8>, AmlError> {
    let mut content = integer(bytes.len() as u64);
    content.extend_from_slice(bytes);
    with_pkg_length(&[BUFFER_OP], &content)
}

/// `ResourceTemplate () { descriptors }`: a buffer of the descriptors plus an End Tag.
pub fn resource_template(descriptors: &[Vec<u8>]) -> Result<Vec<u8>, AmlError> {
    let mut bytes = concat(descriptors);
    bytes.extend([0x79, 0x00]); // End Tag; a zero checksum means "treat as valid"
    buffer(&bytes)
}

/// Resource descriptors (ACPI 6.5 section 6.4) for `_CRS` templates.
pub mod resource {
    /// Memory range type of an address space descriptor.
    const TYPE_MEMORY: u8 = 0;
    /// I/O range type of an address space descriptor.
    const TYPE_IO: u8 = 1;
    /// Bus number range type of an address space descriptor.
    const TYPE_BUS: u8 = 2;
    /// General flags: `ResourceProducer, MinFixed, MaxFixed, PosDecode`.
    const PRODUCER_FIXED: u8 = 0x0c;
    /// I/O type flags: `EntireRange`.
    const IO_ENTIRE_RANGE: u8 = 0x3;

    /// `IO (Decode16, min, max, alignment, length)` (small descriptor 0x47).
    pub fn io(min: u16, max: u16, alignment: u8, length: u8) -> Vec<u8> {
        let mut out = vec![0x47, 0x01];
        out.extend(min.to_le_bytes());
        out.extend(max.to_le_bytes());
        out.extend([alignment, length]);
        out
    }

    /// `Memory32Fixed (ReadWrite, base, length)` (large descriptor 0x86).
    pub fn memory32_fixed(base: u32, length: u32) -> Vec<u8> {
        let mut out = vec![0x86, 9, 0, 0x01];
        out.extend(base.to_le_bytes());
        out.extend(length.to_le_bytes());
        out
    }

    fn address_space(tag: u8, kind: u8, type_flags: u8, fields: [u64; 5], width: usize) -> Vec<u8> {
        let len = 3 + 5 * width;
        let mut out = vec![tag, len as u8, 0, kind, PRODUCER_FIXED, type_flags];
        for f in fields {
            out.extend_from_slice(&f.to_le_bytes()[..width]);
        }
        out
    }

    /// `WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, min, max, 0, len)`.
    pub fn word_bus_number(min: u16, max: u16) -> Vec<u8> {
        let len = u64::from(max) - u64::from(min) + 1;
        address_space(0x88, TYPE_BUS, 0, [0, min.into(), max.into(), 0, len], 2)
    }

    /// `WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, min, max, 0,
    /// len)`.
    pub fn word_io(min: u16, max: u16) -> Vec<u8> {
        let len = u64::from(max) - u64::from(min) + 1;
        address_space(
            0x88,
            TYPE_IO,
            IO_ENTIRE_RANGE,
            [0, min.into(), max.into(), 0, len],
            2,
        )
    }

    fn memory_flags(cacheable: bool) -> u8 {
        // _RW = read-write; _MEM = Cacheable (1) or NonCacheable (0).
        0x01 | (u8::from(cacheable) << 1)
    }

    /// `DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable|NonCacheable,
    /// ReadWrite, 0, min, max, 0, len)`.
    pub fn dword_memory(min: u32, max: u32, cacheable: bool) -> Vec<u8> {
        let len = u64::from(max) - u64::from(min) + 1;
        let fields = [0, min.into(), max.into(), 0, len];
        address_space(0x87, TYPE_MEMORY, memory_flags(cacheable), fields, 4)
    }

    /// `QWordMemory (...)` like [`dword_memory`] for ranges above 4 GiB; `max` must be >= `min`.
    pub fn qword_memory(min: u64, max: u64, cacheable: bool) -> Vec<u8> {
        let len = max.wrapping_sub(min).wrapping_add(1);
        address_space(
            0x8a,
            TYPE_MEMORY,
            memory_flags(cacheable),
            [0, min, max, 0, len],
            8,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkg_length_uses_one_to_four_bytes() {
        assert_eq!(pkg_length(0).unwrap(), [0x01]);
        assert_eq!(pkg_length(62).unwrap(), [0x3f]);
        // 63 content bytes + 2 length bytes = 65 = 0x41.
        assert_eq!(pkg_length(63).unwrap(), [0x41, 0x04]);
        assert_eq!(pkg_length(0xfff - 2).unwrap(), [0x4f, 0xff]);
        assert_eq!(pkg_length(0xfff - 1).unwrap(), [0x81, 0x00, 0x01]);
        assert_eq!(pkg_length(0xf_ffff - 3).unwrap(), [0x8f, 0xff, 0xff]);
        assert_eq!(pkg_length(0xf_ffff - 2).unwrap(), [0xc1, 0x00, 0x00, 0x01]);
        assert_eq!(
            pkg_length(PKG_LENGTH_MAX - 4).unwrap(),
            [0xcf, 0xff, 0xff, 0xff]
        );
        assert!(matches!(
            pkg_length(PKG_LENGTH_MAX - 3),
            Err(AmlError::TooLong(_))
        ));
    }

    #[test]
    fn name_strings() {
        assert_eq!(name_string("_S5").unwrap(), b"_S5_");
        assert_eq!(name_string("\\_SB").unwrap(), b"\\_SB_");
        assert_eq!(name_string("\\_SB.PCI0").unwrap(), b"\\\x2e_SB_PCI0");
        assert_eq!(
            name_string("\\_SB.PCI0.ISA").unwrap(),
            b"\\\x2f\x03_SB_PCI0ISA_"
        );
        assert_eq!(name_string("^^FOO").unwrap(), b"^^FOO_");
        assert_eq!(name_string("\\").unwrap(), b"\\\x00");
        for bad in ["", "toolong", "_sb", "1ABC", "A..B", "\\_SB.", "A-B"] {
            assert!(
                matches!(name_string(bad), Err(AmlError::InvalidName(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn integers_pick_the_shortest_encoding() {
        assert_eq!(integer(0), [0x00]);
        assert_eq!(integer(1), [0x01]);
        assert_eq!(integer(u64::MAX), [0xff]);
        assert_eq!(integer(5), [0x0a, 0x05]);
        assert_eq!(integer(0x1234), [0x0b, 0x34, 0x12]);
        assert_eq!(integer(0x1_0000), [0x0c, 0x00, 0x00, 0x01, 0x00]);
        assert_eq!(integer(1 << 32), [0x0e, 0, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(byte(0), [0x0a, 0x00]);
    }

    #[test]
    fn strings_and_eisa_ids() {
        assert_eq!(string("ab").unwrap(), [0x0d, b'a', b'b', 0]);
        assert!(string("\u{e9}").is_err());
        // iasl: Name (_HID, EisaId ("PNP0A03")) => 08 5F 48 49 44 0C 41 D0 0A 03
        let hid = name("_HID", &eisa_id("PNP0A03").unwrap()).unwrap();
        assert_eq!(
            hid,
            [0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x0a, 0x03]
        );
        assert_eq!(eisa_id("PNP0C0C").unwrap(), [0x0c, 0x41, 0xd0, 0x0c, 0x0c]);
        for bad in ["PNP0A0", "pnp0A03", "PNP0G03", "PNP+A03"] {
            assert!(eisa_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn s5_package_matches_iasl() {
        // Name (\_S5, Package (4) { 5, 5, 0, 0 }) with byte constants.
        let s5 = name(
            "\\_S5",
            &package(&[byte(5), byte(5), byte(0), byte(0)]).unwrap(),
        )
        .unwrap();
        let expected = [
            0x08, b'\\', b'_', b'S', b'5', b'_', 0x12, 0x0a, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x0a,
            0x00, 0x0a, 0x00,
        ];
        assert_eq!(s5, expected);
    }

    #[test]
    fn scopes_devices_and_methods() {
        assert_eq!(
            scope("\\_SB", &[]).unwrap(),
            [0x10, 0x06, b'\\', b'_', b'S', b'B', b'_']
        );
        let dev = device("COM1", &[name("_UID", &integer(0)).unwrap()]).unwrap();
        assert_eq!(
            dev,
            [0x5b, 0x82, 0x0b, b'C', b'O', b'M', b'1', 0x08, b'_', b'U', b'I', b'D', 0x00]
        );
        let sta = method("_STA", 0, false, &[return_value(&byte(0x0f))]).unwrap();
        assert_eq!(
            sta,
            [0x14, 0x09, b'_', b'S', b'T', b'A', 0x00, 0xa4, 0x0a, 0x0f]
        );
        // A body long enough to need a two-byte PkgLength.
        let big = scope("\\_SB", &[vec![0xa3; 100]]).unwrap();
        assert_eq!(&big[..3], &[0x10, 0x4b, 0x06]); // 2 + 5 + 100 = 107 = 0x6b
        assert_eq!(big.len(), 1 + 107);
    }

    #[test]
    fn resource_descriptors_match_iasl() {
        // WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, 0, 0xFF, 0, 0x100)
        assert_eq!(
            resource::word_bus_number(0, 0xff),
            [0x88, 0x0d, 0x00, 0x02, 0x0c, 0x00, 0, 0, 0, 0, 0xff, 0, 0, 0, 0x00, 0x01]
        );
        // IO (Decode16, 0x0CF8, 0x0CF8, 0x01, 0x08)
        assert_eq!(
            resource::io(0xcf8, 0xcf8, 1, 8),
            [0x47, 0x01, 0xf8, 0x0c, 0xf8, 0x0c, 0x01, 0x08]
        );
        let mem = resource::dword_memory(0xc000_0000, 0xfebf_ffff, false);
        assert_eq!(mem.len(), 26);
        assert_eq!(&mem[..6], &[0x87, 0x17, 0x00, 0x00, 0x0c, 0x01]);
        assert_eq!(&mem[22..26], &0x3ec0_0000u32.to_le_bytes());
        assert_eq!(
            resource::qword_memory(1 << 40, (2 << 40) - 1, true).len(),
            46
        );
        let crs = name(
            "_CRS",
            &resource_template(&[resource::io(0x60, 0x60, 1, 1)]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            &crs[5..],
            &[0x11, 0x0d, 0x0a, 0x0a, 0x47, 0x01, 0x60, 0, 0x60, 0, 1, 1, 0x79, 0]
        );
    }
}
