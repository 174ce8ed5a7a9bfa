//! The `cpus` command: APIC IDs from the MADT and the MP table, then INIT-SIPI-SIPI for every
//! AP in the MADT through the xAPIC ICR, with the trampoline from `asm/ap.s` copied to a free
//! page below 1 MiB. Each AP marks `ap_slots[apic_id]`; the BSP polls with a 1 s timeout.

use crate::acpi;
use crate::bootinfo::BootInfo;
use crate::cmd::Ctx;
use crate::err;
use crate::error::Result;
use crate::io::{cpuid, rdtsc};
use crate::json::Line;
use crate::list::IdList;
use crate::mptable;
use crate::phys::{mmio_read32, mmio_write32};

extern "C" {
    #[link_name = "ap_tramp_start"]
    static AP_TRAMP_START: u8;
    #[link_name = "ap_tramp_end"]
    static AP_TRAMP_END: u8;
    #[link_name = "ap_slots"]
    static mut AP_SLOTS: [u8; 256];
}

const LAPIC_SVR: u64 = 0xf0;
const LAPIC_ICR_LO: u64 = 0x300;
const LAPIC_ICR_HI: u64 = 0x310;
const ICR_PENDING: u32 = 1 << 12;
const ICR_INIT: u32 = 0x0000_4500;
const ICR_SIPI: u32 = 0x0000_4600;

fn slot(id: u32) -> u8 {
    // SAFETY: `id` < 256 (callers check) indexes the 256-byte `ap_slots` array in .data.
    unsafe { core::ptr::read_volatile((&raw const AP_SLOTS).cast::<u8>().add(id as usize)) }
}

fn clear_slots() {
    for i in 0..256 {
        // SAFETY: `i` < 256 indexes `ap_slots`; no AP is running the trampoline yet.
        unsafe { core::ptr::write_volatile((&raw mut AP_SLOTS).cast::<u8>().add(i), 0) };
    }
}

/// Picks a 4 KiB page in usable RAM below 0xA0000 (0x8000 preferred) for the trampoline.
fn trampoline_page(boot: &BootInfo) -> Option<u64> {
    let usable = |p: u64| {
        boot.e820()
            .iter()
            .any(|e| e.kind == 1 && e.addr <= p && e.addr.saturating_add(e.size) >= p + 0x1000)
    };
    core::iter::once(0x8000u64)
        .chain((0x1000u64..0x9f000).step_by(0x1000))
        .find(|&p| usable(p))
}

fn copy_trampoline(page: u64) -> Result<()> {
    let start = &raw const AP_TRAMP_START as usize;
    let end = &raw const AP_TRAMP_END as usize;
    let len = end.wrapping_sub(start);
    if len == 0 || len > 0x1000 {
        return Err(err!("bad AP trampoline size {}", len));
    }
    // SAFETY: the source is the trampoline code in the image; the destination is a whole
    // usable-RAM page below 1 MiB (from the e820 map) that holds nothing the probe still needs
    // (boot info was copied at start); the ranges do not overlap (image is above 1 MiB).
    unsafe { core::ptr::copy_nonoverlapping(start as *const u8, page as usize as *mut u8, len) };
    Ok(())
}

fn icr_send(lapic: u64, dest: u32, low: u32) {
    for _ in 0..10_000 {
        if mmio_read32(lapic + LAPIC_ICR_LO) & ICR_PENDING == 0 {
            break;
        }
    }
    mmio_write32(lapic + LAPIC_ICR_HI, dest << 24);
    mmio_write32(lapic + LAPIC_ICR_LO, low);
}

/// Starts every AP in `targets`; returns the IDs that reported in (BSP first).
fn bring_up(ctx: &mut Ctx, lapic: u64, targets: &IdList, bsp: u32) -> Result<IdList> {
    let mut online = IdList::new();
    online.push(bsp);
    let aps = targets
        .as_slice()
        .iter()
        .filter(|&&id| id != bsp && id < 256);
    if aps.clone().next().is_none() {
        return Ok(online);
    }
    let tsc = ctx.tsc()?;
    let page = trampoline_page(ctx.boot)
        .ok_or_else(|| err!("no usable page below 1 MiB for the AP trampoline"))?;
    copy_trampoline(page)?;
    clear_slots();
    let svr = mmio_read32(lapic + LAPIC_SVR);
    mmio_write32(lapic + LAPIC_SVR, svr | 0x1ff);
    let vector = (page >> 12) as u32;
    for &id in aps {
        icr_send(lapic, id, ICR_INIT);
        tsc.delay_us(10_000);
        icr_send(lapic, id, ICR_SIPI | vector);
        tsc.delay_us(200);
        if slot(id) == 0 {
            icr_send(lapic, id, ICR_SIPI | vector);
        }
        let start = rdtsc();
        let limit = tsc.ticks_us(1_000_000);
        while slot(id) == 0 && rdtsc().wrapping_sub(start) < limit {
            core::hint::spin_loop();
        }
    }
    for id in 0..256u32 {
        if id != bsp && slot(id) != 0 {
            online.push(id);
        }
    }
    Ok(online)
}

/// Runs the `cpus` command.
pub fn run(ctx: &mut Ctx) -> Result<()> {
    let mut acpi_ids = IdList::new();
    let mut lapic = 0xfee0_0000u64;
    if let Some(madt) = ctx.acpi.as_ref().and_then(|a| a.madt) {
        let addr = acpi::madt_apic_ids(madt, &mut acpi_ids);
        if addr != 0 && addr.is_multiple_of(0x1000) && addr < crate::phys::LIMIT {
            lapic = addr;
        }
    }
    let mut mp_ids = IdList::new();
    let have_mp = mptable::processors(&mut mp_ids);
    let bsp = cpuid(1, 0)[1] >> 24;
    let online = bring_up(ctx, lapic, &acpi_ids, bsp)?;
    let mut line = Line::new();
    line.raw("{\"cmd\":\"cpus\",\"acpi\":")
        .num_list(acpi_ids.as_slice())
        .raw(",\"mptable\":");
    if have_mp {
        line.num_list(mp_ids.as_slice());
    } else {
        line.raw("null");
    }
    line.raw(",\"online\":")
        .num_list(online.as_slice())
        .raw(",\"bsp\":")
        .num(bsp as u64)
        .raw("}");
    line.finish()
}
