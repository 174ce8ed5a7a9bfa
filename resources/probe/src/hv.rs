//! The `hv` command: what the hypervisor offers in its CPUID ranges and paravirtual MSRs, and
//! the lookups of those ranges that `clock` uses.
//!
//! CPUID: ranges at 0x40000000 + 0x100 * k (k < 16), walked until the first whose max leaf
//! (EAX of its base leaf) lies outside [base, base + 0xff]. (Intel CPUs answer unknown leaves
//! with the highest basic leaf, AMD with zeros: either stops the walk.) MSRs are read from
//! CPL3 through the #GP handler (`msr`), so a missing MSR shows as `"ok":false`.

use crate::cmd::show;
use crate::err;
use crate::error::Result;
use crate::io::cpuid;
use crate::json::Line;
use crate::msr::{rdmsr, wrmsr};
use crate::pvpage;

/// Ranges walked at most, leaves dumped per range (base..=base+0x10, as the `cpuid` command:
/// 0x40000010 is KVM's and VMware's TSC frequency leaf), and leaves dumped in all (keeps the
/// line well under the 16 KiB output buffer even for a hypervisor that fills every range).
const MAX_RANGES: u32 = 16;
const MAX_LEAVES_PER_RANGE: u32 = 17;
const MAX_LEAVES: usize = 128;

pub const HV_GUEST_OS_ID: u32 = 0x4000_0000;
pub const HV_HYPERCALL: u32 = 0x4000_0001;
pub const HV_REFERENCE_TSC: u32 = 0x4000_0021;

/// The guest OS id the probe writes, in the TLFS "open source" encoding that Linux uses
/// (`hv_generate_guest_id`): bit 63 open source, OS type 0x01 (Linux) in bits 62:56, OS id 0
/// in bits 55:48, version 0.1.0 (LINUX_VERSION_CODE layout) in bits 47:16, build 0.
pub const GUEST_OS_ID: u64 = (0x8100 << 48) | (0x00_01_00 << 16);

/// The MSRs the `hv` command reads, in output order.
const MSRS: [(u32, &str); 18] = [
    (HV_GUEST_OS_ID, "hv_guest_os_id"),
    (HV_HYPERCALL, "hv_hypercall"),
    (0x4000_0002, "hv_vp_index"),
    (0x4000_0010, "hv_vp_runtime"),
    (0x4000_0020, "hv_time_ref_count"),
    (HV_REFERENCE_TSC, "hv_reference_tsc"),
    (0x4000_0022, "hv_tsc_frequency"),
    (0x4000_0023, "hv_apic_frequency"),
    (0x4000_0080, "hv_scontrol"),
    (0x4000_00b0, "hv_stimer0_config"),
    (0x4000_0105, "hv_crash_ctl"),
    (0x4000_0003, "hv_reset"),
    (0x4b56_4d00, "kvm_wall_clock_new"),
    (0x4b56_4d01, "kvm_system_time_new"),
    (0x4b56_4d02, "kvm_async_pf_en"),
    (0x4b56_4d03, "kvm_steal_time"),
    (0x4b56_4d04, "kvm_pv_eoi_en"),
    (0x4b56_4d05, "kvm_poll_control"),
];

/// Parsed `hv` arguments.
#[derive(Clone, Copy)]
pub struct Args {
    /// Write [`GUEST_OS_ID`] after the reads, then enable the hypercall page.
    pub guest_os_id: bool,
}

/// Parses the part after `hv:` (`guest_os_id=0|1`).
pub fn parse(args: Option<&[u8]>) -> Result<Args> {
    let mut guest_os_id = None;
    for arg in args.into_iter().flat_map(|a| a.split(|&c| c == b',')) {
        let v = match arg {
            b"guest_os_id=0" => false,
            b"guest_os_id=1" => true,
            _ => return Err(err!("hv: bad argument '{}'", show(arg))),
        };
        if guest_os_id.replace(v).is_some() {
            return Err(err!("hv: guest_os_id given twice"));
        }
    }
    Ok(Args {
        guest_os_id: guest_os_id.unwrap_or(false),
    })
}

/// One hypervisor CPUID range.
#[derive(Clone, Copy)]
pub struct Range {
    pub base: u32,
    pub max: u32,
    /// EBX, ECX, EDX of the base leaf.
    pub sig: [u32; 3],
}

impl Range {
    /// The signature as 12 raw bytes.
    pub fn sig_bytes(&self) -> [u8; 12] {
        let mut out = [0u8; 12];
        for (i, r) in self.sig.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&r.to_le_bytes());
        }
        out
    }
}

/// The `k`-th hypervisor range, or None if the walk stops there (see the module doc).
fn range(k: u32) -> Option<Range> {
    let base = 0x4000_0000 + 0x100 * k;
    let [max, b, c, d] = cpuid(base, 0);
    (base..=base + 0xff).contains(&max).then_some(Range {
        base,
        max,
        sig: [b, c, d],
    })
}

/// Every range in walk order.
fn ranges() -> impl Iterator<Item = Range> {
    (0..MAX_RANGES).map_while(range)
}

/// The first range whose signature is `sig` (e.g. `b"KVMKVMKVM\0\0\0"`).
pub fn find(sig: &[u8; 12]) -> Option<Range> {
    ranges().find(|r| &r.sig_bytes() == sig)
}

/// The signature with NULs dropped and non-printable bytes replaced by '?'.
fn sanitized(sig: [u8; 12], out: &mut [u8; 12]) -> usize {
    let mut n = 0;
    for b in sig.into_iter().filter(|&b| b != 0) {
        out[n] = if (0x20..0x7f).contains(&b) { b } else { b'?' };
        n += 1;
    }
    n
}

/// `{"ok":true,"value":"0x.."}` or `{"ok":false}` for a read.
fn read_result(l: &mut Line, msr: u32) {
    match rdmsr(msr) {
        Some(v) => l.raw("{\"ok\":true,\"value\":").hex(v).raw("}"),
        None => l.raw("{\"ok\":false}"),
    };
}

/// Runs the `hv` command.
pub fn run(a: &Args) -> Result<()> {
    let mut l = Line::new();
    let hv_bit = cpuid(1, 0)[2] & (1 << 31) != 0;
    l.raw("{\"cmd\":\"hv\",\"hypervisor_bit\":")
        .bool(hv_bit)
        .raw(",\"ranges\":[");
    let mut total = 0usize;
    let mut truncated = false;
    for (i, r) in ranges().enumerate() {
        if i > 0 {
            l.raw(",");
        }
        let mut sig = [0u8; 12];
        let n = sanitized(r.sig_bytes(), &mut sig);
        l.raw("{\"base\":")
            .hex(r.base as u64)
            .raw(",\"max\":")
            .hex(r.max as u64)
            .raw(",\"signature\":")
            .string(&sig[..n])
            .raw(",\"leaves\":[");
        let last = r.max.min(r.base + MAX_LEAVES_PER_RANGE - 1);
        for leaf in r.base..=last {
            if total == MAX_LEAVES {
                truncated = true;
                break;
            }
            total += 1;
            if leaf > r.base {
                l.raw(",");
            }
            l.raw("[").hex(leaf as u64);
            for v in cpuid(leaf, 0) {
                l.raw(",").hex(v as u64);
            }
            l.raw("]");
        }
        l.raw("]");
        if r.max > last || truncated {
            l.raw(",\"truncated\":true");
        }
        l.raw("}");
    }
    l.raw("]");
    if truncated {
        l.raw(",\"truncated\":true");
    }
    l.raw(",\"msrs\":[");
    for (i, &(msr, name)) in MSRS.iter().enumerate() {
        if i > 0 {
            l.raw(",");
        }
        l.raw("{\"msr\":")
            .hex(msr as u64)
            .raw(",\"name\":\"")
            .raw(name)
            .raw("\",");
        match rdmsr(msr) {
            Some(v) => l.raw("\"ok\":true,\"value\":").hex(v).raw("}"),
            None => l.raw("\"ok\":false}"),
        };
    }
    l.raw("]");
    if a.guest_os_id {
        set_guest_os_id(&mut l);
    }
    l.raw("}");
    l.finish()
}

/// Writes the guest OS id, reads it and HYPERCALL back, then enables the hypercall page
/// (which KVM ignores while the guest OS id is 0) and reads HYPERCALL and the page again.
fn set_guest_os_id(l: &mut Line) {
    l.raw(",\"set_guest_os_id\":{\"value\":")
        .hex(GUEST_OS_ID)
        .raw(",\"ok\":")
        .bool(wrmsr(HV_GUEST_OS_ID, GUEST_OS_ID))
        .raw(",\"guest_os_id\":");
    read_result(l, HV_GUEST_OS_ID);
    l.raw(",\"hypercall\":");
    read_result(l, HV_HYPERCALL);
    let enable = pvpage::HV_HYPERCALL.addr() | 1;
    l.raw(",\"hypercall_enable\":{\"value\":")
        .hex(enable)
        .raw(",\"ok\":")
        .bool(wrmsr(HV_HYPERCALL, enable))
        .raw(",\"hypercall\":");
    read_result(l, HV_HYPERCALL);
    l.raw(",\"page\":\"");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in pvpage::HV_HYPERCALL.head::<16>() {
        let pair = [HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]];
        // Both bytes are ASCII hex digits.
        l.raw(core::str::from_utf8(&pair).unwrap_or("??"));
    }
    l.raw("\"}}");
}
