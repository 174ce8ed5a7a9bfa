//! Virtio-blk driver over the modern PCI transport: device discovery, initialisation (spec
//! 3.1.1), MSI-X vectors per queue, and a request engine with a fixed pool of request slots
//! per queue.
//!
//! Each slot owns a 16-byte request header, a status byte, a data buffer of `bs` bytes and
//! (when indirect descriptors are used) a 3-entry indirect table, all in the arena. A request
//! is a chain header (device-readable) -> data (readable for writes, writable for reads; left
//! out when empty) -> status (writable). Without indirect descriptors slot `k` of a queue uses
//! ring descriptors 3k..3k+2 (head id 3k); with them, ring descriptor k (head id k). Every id
//! the device returns is checked against the slots in flight.

use crate::bootinfo::BootInfo;
use crate::dma::{Arena, Zeroable};
use crate::err;
use crate::error::Result;
use crate::io::rdtsc;
use crate::pci::{Bdf, Pci};
use crate::tsc::Tsc;
use crate::virtio::{self, Transport, NO_VECTOR};
use crate::vring::{self, Vring, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE};

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;

/// Most queues the driver sets up.
pub const MAX_QUEUES: usize = 16;
/// Largest queue size used (the device's maximum is rounded down to a power of two).
const MAX_QUEUE_SIZE: u16 = 1024;
/// First interrupt vector; queue q uses `VECTOR_BASE + q` (MSI-X entry q).
pub const VECTOR_BASE: u8 = 0x40;
/// A request that takes longer than this is fatal.
pub const TIMEOUT_US: u64 = 10_000_000;

/// Finds the `n`-th virtio-blk function on bus 0: modern ID 0x1042, or transitional 0x1001
/// with the modern capabilities (legacy-only devices are not counted).
pub fn find(pci: &Pci, n: u32) -> Result<Bdf> {
    let mut seen = 0;
    let mut found = None;
    pci.scan(|b, vendor, device| {
        let modern = device == 0x1042 || (device == 0x1001 && virtio::is_modern(pci, b));
        if vendor == virtio::VENDOR && modern {
            if seen == n {
                found = Some(b);
                return false;
            }
            seen += 1;
        }
        true
    });
    found.ok_or_else(|| {
        err!(
            "no virtio-blk disk {} on PCI bus 0 ({} found, config access {})",
            n,
            seen,
            pci.kind()
        )
    })
}

/// Options for opening the device.
#[derive(Clone, Copy)]
pub struct Opts {
    pub queues: u16,
    /// Total requests in flight (spread over the queues).
    pub depth: u32,
    /// Data buffer bytes per slot.
    pub buf_len: u64,
    pub event_idx: bool,
    /// Some(true): always indirect; Some(false): never; None: when the rings are too small.
    pub indirect: Option<bool>,
    /// Request interrupts (false: suppress them).
    pub interrupts: bool,
}

/// What the device reported.
#[derive(Clone, Copy)]
pub struct Info {
    pub bdf: Bdf,
    pub device_features: u64,
    pub features: u64,
    pub capacity: u64,
    pub blk_size: u32,
    pub num_queues: u16,
    pub queue_size: u16,
    pub msix: bool,
    pub indirect: bool,
    pub read_only: bool,
}

/// Bookkeeping of one request slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    pub submitted: u64,
    pub sector: u64,
    pub kind: u32,
    pub busy: u8,
    /// Caller's marker (e.g. "check this read").
    pub tag: u8,
    pad: [u8; 2],
}

// SAFETY: plain integers; all-zero is a valid (idle) slot.
unsafe impl Zeroable for Slot {}

/// An initialised virtio-blk device with its request slots.
pub struct Blk<'a> {
    t: Transport,
    pub info: Info,
    rings: [Vring; MAX_QUEUES],
    nq: usize,
    per_q: usize,
    slots: &'a mut [Slot],
    free: &'a mut [u16],
    free_len: [usize; MAX_QUEUES],
    hdrs: u64,
    status: u64,
    tables: u64,
    bufs: u64,
    buf_len: u64,
    depth: usize,
    inflight: usize,
    rr: usize,
    interrupts: bool,
    last_progress: u64,
    tsc: Tsc,
}

/// A finished request.
#[derive(Clone, Copy)]
pub struct Done {
    pub slot: usize,
    pub info: Slot,
    pub status: u8,
}

fn pow2_floor(v: u16) -> u16 {
    if v == 0 {
        0
    } else {
        1 << (15 - v.leading_zeros())
    }
}

impl<'a> Blk<'a> {
    /// Opens, resets and initialises the device at `b` (spec 3.1.1) with `o.queues` queues.
    pub fn open(
        pci: &Pci,
        boot: &BootInfo,
        arena: &'a Arena,
        tsc: Tsc,
        b: Bdf,
        o: &Opts,
    ) -> Result<Blk<'a>> {
        let t = Transport::open(pci, boot, tsc, b)?;
        t.reset()?;
        let mut wanted = F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_RO | F_MQ;
        if o.event_idx {
            wanted |= virtio::F_EVENT_IDX;
        }
        if o.indirect != Some(false) {
            wanted |= virtio::F_INDIRECT_DESC;
        }
        let (offered, features) = t.negotiate(wanted)?;
        let mut blk = Blk {
            info: Info {
                bdf: b,
                device_features: offered,
                features,
                capacity: 0,
                blk_size: 512,
                num_queues: 1,
                queue_size: 0,
                msix: false,
                indirect: false,
                read_only: features & F_RO != 0,
            },
            t,
            rings: [Vring::EMPTY; MAX_QUEUES],
            nq: o.queues as usize,
            per_q: 0,
            slots: &mut [],
            free: &mut [],
            free_len: [0; MAX_QUEUES],
            hdrs: 0,
            status: 0,
            tables: 0,
            bufs: 0,
            buf_len: o.buf_len,
            depth: o.depth as usize,
            inflight: 0,
            rr: 0,
            interrupts: o.interrupts,
            last_progress: 0,
            tsc,
        };
        blk.read_config()?;
        blk.setup(arena, o)?;
        blk.t.add_status(virtio::STATUS_DRIVER_OK);
        let s = blk.t.status();
        if s & (virtio::STATUS_NEEDS_RESET | virtio::STATUS_FAILED) != 0
            || s & virtio::STATUS_DRIVER_OK == 0
        {
            return Err(err!("{}: device status {:#x} after DRIVER_OK", b, s));
        }
        Ok(blk)
    }

    /// Reads capacity, blk_size and num_queues (retrying while the generation changes).
    fn read_config(&mut self) -> Result<()> {
        let d = self.t.device;
        let f = self.info.features;
        for _ in 0..16 {
            let g = self.t.generation();
            let cap = d.read32(0) as u64 | (d.read32(4) as u64) << 32;
            let bs = if f & F_BLK_SIZE != 0 {
                d.read32(20)
            } else {
                512
            };
            let nq = if f & F_MQ != 0 { d.read16(34) } else { 1 };
            if g == self.t.generation() {
                if !(512..=1 << 20).contains(&bs) || !bs.is_power_of_two() {
                    return Err(err!("{}: unsupported blk_size {}", self.info.bdf, bs));
                }
                self.info.capacity = cap;
                self.info.blk_size = bs;
                self.info.num_queues = nq;
                return Ok(());
            }
        }
        Err(err!(
            "{}: device config generation keeps changing",
            self.info.bdf
        ))
    }

    /// MSI-X, queues and slots.
    fn setup(&mut self, arena: &'a Arena, o: &Opts) -> Result<()> {
        let b = self.info.bdf;
        let nq = self.nq;
        let avail_q = self.info.num_queues.min(self.t.max_queues()) as usize;
        if nq == 0 || nq > MAX_QUEUES || nq > avail_q {
            return Err(err!(
                "{}: queues={} but the device has {} (num_queues {}, common cfg {})",
                b,
                nq,
                avail_q,
                self.info.num_queues,
                self.t.max_queues()
            ));
        }
        let mut size = u16::MAX;
        for q in 0..nq as u16 {
            size = size.min(pow2_floor(self.t.queue_max(q).min(MAX_QUEUE_SIZE)));
        }
        if size == 0 {
            return Err(err!("{}: a queue reports size 0", b));
        }
        self.info.queue_size = size;
        self.per_q = self.depth.div_ceil(nq);
        let can_indirect = self.info.features & virtio::F_INDIRECT_DESC != 0;
        let indirect = match o.indirect {
            Some(true) if !can_indirect => {
                return Err(err!("{}: indirect=1 but INDIRECT_DESC is not offered", b))
            }
            Some(v) => v,
            None => 3 * self.per_q > size as usize && can_indirect,
        };
        let stride = if indirect { 1 } else { 3 };
        if self.per_q * stride > size as usize {
            return Err(err!(
                "{}: iodepth {} over {} queue(s) needs {} descriptors per queue, queue size is {}{}",
                b,
                self.depth,
                nq,
                self.per_q * stride,
                size,
                if can_indirect { "" } else { " (no INDIRECT_DESC)" }
            ));
        }
        self.info.indirect = indirect;
        // MSI-X: entry q -> vector VECTOR_BASE + q on the BSP (or entry 0 for all queues).
        let msix_entries = self.t.msix.map_or(0, |m| m.entries) as usize;
        let use_msix = msix_entries > 0;
        if use_msix {
            let apic = crate::irq::apic_id();
            if apic > 255 {
                return Err(err!(
                    "BSP APIC ID {} does not fit an xAPIC MSI address",
                    apic
                ));
            }
            for e in 0..nq.min(msix_entries) {
                self.t.msix_program(e as u16, apic, VECTOR_BASE + e as u8);
            }
            self.t.msix_enable();
            if !self.t.msix_enabled() {
                return Err(err!("{}: MSI-X enable did not stick", b));
            }
            let back = self.t.set_config_vector(NO_VECTOR);
            if back != NO_VECTOR {
                return Err(err!("{}: config MSI-X vector reads back {:#x}", b, back));
            }
        }
        self.info.msix = use_msix;
        for q in 0..nq {
            let mut r = Vring::new(
                arena,
                q as u16,
                size,
                self.info.features & virtio::F_EVENT_IDX != 0,
            )?;
            r.interrupts(self.interrupts);
            let vector = use_msix.then_some(if q < msix_entries { q as u16 } else { 0 });
            let w = self.t.setup_queue(q as u16, size, r.addrs(), vector)?;
            r.set_notify(w);
            self.rings[q] = r;
        }
        let n = nq * self.per_q;
        self.slots = arena.slice::<Slot>(n, "request slots")?;
        self.free = arena.slice::<u16>(n, "free slot lists")?;
        for q in 0..nq {
            for k in 0..self.per_q {
                // Pop order: slot 0 of the queue first.
                self.free[q * self.per_q + k] = (self.per_q - 1 - k) as u16;
            }
            self.free_len[q] = self.per_q;
        }
        self.hdrs = arena.alloc(16 * n as u64, 16, "request headers")?;
        self.status = arena.alloc(n as u64, 16, "request status bytes")?;
        if indirect {
            self.tables = arena.alloc(48 * n as u64, 16, "indirect descriptor tables")?;
        }
        let total = (n as u64)
            .checked_mul(self.buf_len)
            .ok_or_else(|| err!("data buffers too large"))?;
        self.bufs = arena.alloc(total, 4096, "data buffers (iodepth x bs)")?;
        Ok(())
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// Whether another request can be submitted now.
    pub fn can_submit(&self) -> bool {
        self.inflight < self.depth && self.free_len[..self.nq].iter().any(|&l| l > 0)
    }

    /// Takes a free slot, round-robin over the queues.
    pub fn reserve(&mut self) -> Option<usize> {
        if self.inflight >= self.depth {
            return None;
        }
        for i in 0..self.nq {
            let q = (self.rr + i) % self.nq;
            if self.free_len[q] > 0 {
                self.free_len[q] -= 1;
                let local = self.free[q * self.per_q + self.free_len[q]] as usize;
                self.rr = (q + 1) % self.nq;
                return Some(q * self.per_q + local);
            }
        }
        None
    }

    /// The data buffer of `slot` as words. Empty if the slot is in flight (or invalid).
    pub fn buf(&mut self, slot: usize) -> &mut [u64] {
        if slot >= self.slots.len() || self.slots[slot].busy != 0 {
            return &mut [];
        }
        let at = self.bufs + slot as u64 * self.buf_len;
        // SAFETY: the range is this slot's buffer in the arena (allocated in `setup`, not
        // aliased by any other Rust reference); the slot is not in flight, so the device
        // neither reads nor writes it (its completion was seen after an acquire fence);
        // `&mut self` keeps this the only reference.
        unsafe {
            core::slice::from_raw_parts_mut(at as usize as *mut u64, (self.buf_len / 8) as usize)
        }
    }

    /// Builds the request in a reserved `slot` (data = the first `len` bytes of its buffer)
    /// and queues it; `publish` makes it visible.
    pub fn submit(&mut self, slot: usize, kind: u32, sector: u64, len: u32, tag: u8) {
        let q = slot / self.per_q;
        let local = slot % self.per_q;
        let hdr = self.hdrs + 16 * slot as u64;
        let status = self.status + slot as u64;
        // SAFETY: header and status byte of this slot (arena memory allocated in `setup`);
        // the slot is reserved, so the device does not access them.
        unsafe {
            core::ptr::write_volatile(hdr as usize as *mut u32, kind);
            core::ptr::write_volatile((hdr + 4) as usize as *mut u32, 0);
            core::ptr::write_volatile((hdr + 8) as usize as *mut u64, sector);
            core::ptr::write_volatile(status as usize as *mut u8, 0xff);
        }
        let data = self.bufs + slot as u64 * self.buf_len;
        let data_flags = if kind == T_OUT { 0 } else { DESC_F_WRITE };
        let ring = &mut self.rings[q];
        let (head, base, first) = if self.info.indirect {
            let table = self.tables + 48 * slot as u64;
            (local as u16, table, 0u16)
        } else {
            let d = 3 * local as u16;
            (d, ring.desc_addr(0), d)
        };
        let put = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
            // SAFETY: descriptor i (< 3) of this slot's indirect table, or ring descriptor
            // i = 3 * local + k (k < 3; below the queue size, checked in `setup`): arena
            // memory no Rust reference covers; the slot is reserved, so the device is not
            // reading it.
            unsafe { vring::write_desc(base + 16 * i as u64, addr, len, flags, next) }
        };
        let n = if len > 0 {
            put(first, hdr, 16, DESC_F_NEXT, first + 1);
            put(first + 1, data, len, data_flags | DESC_F_NEXT, first + 2);
            put(first + 2, status, 1, DESC_F_WRITE, 0);
            3
        } else {
            put(first, hdr, 16, DESC_F_NEXT, first + 1);
            put(first + 1, status, 1, DESC_F_WRITE, 0);
            2
        };
        if self.info.indirect {
            // SAFETY: ring descriptor `head` = local (below the queue size, checked in
            // `setup`), not read by the device while the slot is reserved.
            unsafe { vring::write_desc(ring.desc_addr(head), base, 16 * n, DESC_F_INDIRECT, 0) };
        }
        ring.push(head);
        self.slots[slot] = Slot {
            submitted: rdtsc(),
            sector,
            kind,
            busy: 1,
            tag,
            pad: [0; 2],
        };
        if self.inflight == 0 {
            self.last_progress = rdtsc();
        }
        self.inflight += 1;
    }

    /// Publishes a chain head one past queue 0's last descriptor, as a broken driver would,
    /// and waits (a 10 s hang guard) for the device to set DEVICE_NEEDS_RESET. Returns the
    /// device status then; the device must be reset before it is used again.
    pub fn publish_bad_head(&mut self) -> Result<u8> {
        let ring = &mut self.rings[0];
        ring.push(self.info.queue_size);
        ring.publish();
        let start = rdtsc();
        let limit = self.tsc.ticks_us(10_000_000);
        loop {
            let s = self.t.status();
            if s & virtio::STATUS_NEEDS_RESET != 0 {
                return Ok(s);
            }
            if rdtsc().wrapping_sub(start) > limit {
                return Err(err!(
                    "{}: no DEVICE_NEEDS_RESET 10 s after a bad head (status {:#x})",
                    self.info.bdf,
                    s
                ));
            }
            core::hint::spin_loop();
        }
    }

    /// Publishes queued requests on every queue, notifying where needed.
    pub fn publish(&mut self) {
        for r in &mut self.rings[..self.nq] {
            r.publish();
        }
    }

    /// Notifications sent so far (all queues).
    pub fn kicks(&self) -> u64 {
        self.rings[..self.nq].iter().map(|r| r.kicks).sum()
    }

    /// Number of queues in use.
    pub fn queues(&self) -> usize {
        self.nq
    }

    /// Collects every completed request, calling `f` for each (the slot is free again when
    /// `f` runs, so `f` may read its buffer). Returns how many completed.
    pub fn poll(&mut self, mut f: impl FnMut(&mut Self, Done)) -> Result<usize> {
        let mut n = 0;
        for q in 0..self.nq {
            let mut got = false;
            while let Some((id, _len)) = self.rings[q].pop()? {
                let stride = if self.info.indirect { 1 } else { 3 };
                let local = id as usize / stride;
                let slot = q * self.per_q + local;
                if !(id as usize).is_multiple_of(stride)
                    || local >= self.per_q
                    || self.slots[slot].busy == 0
                {
                    return Err(err!(
                        "{}: queue {}: device completed unknown descriptor id {}",
                        self.info.bdf,
                        q,
                        id
                    ));
                }
                let status_at = self.status + slot as u64;
                // SAFETY: this slot's status byte (arena); the device has completed the request.
                let status = unsafe { core::ptr::read_volatile(status_at as usize as *const u8) };
                let info = self.slots[slot];
                self.slots[slot].busy = 0;
                self.free[q * self.per_q + self.free_len[q]] = local as u16;
                self.free_len[q] += 1;
                self.inflight -= 1;
                n += 1;
                got = true;
                f(self, Done { slot, info, status });
            }
            if got {
                let on = self.interrupts;
                self.rings[q].interrupts(on);
            }
        }
        if n > 0 {
            self.last_progress = rdtsc();
        } else if self.inflight > 0
            && rdtsc().wrapping_sub(self.last_progress) > self.tsc.ticks_us(TIMEOUT_US)
        {
            return Err(self.timeout_error());
        }
        Ok(n)
    }

    fn timeout_error(&self) -> crate::error::Error {
        let oldest = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.busy != 0)
            .min_by_key(|(_, s)| s.submitted);
        match oldest {
            Some((i, s)) => err!(
                "{}: request (type {}, sector {}) on queue {} not completed within {} s ({} in flight)",
                self.info.bdf,
                s.kind,
                s.sector,
                i / self.per_q,
                TIMEOUT_US / 1_000_000,
                self.inflight
            ),
            None => err!("{}: requests timed out", self.info.bdf),
        }
    }

    /// Runs one request synchronously on queue 0 (after all others finished); returns its
    /// status and the slot (whose buffer holds any data read).
    pub fn sync(&mut self, kind: u32, sector: u64, len: u32) -> Result<(u8, usize)> {
        while self.inflight > 0 {
            self.poll(|_, _| {})?;
        }
        self.rr = 0;
        let slot = self
            .reserve()
            .ok_or_else(|| err!("{}: no free request slot", self.info.bdf))?;
        self.submit(slot, kind, sector, len, 0);
        self.publish();
        let mut status = None;
        while status.is_none() {
            self.poll(|_, d| status = Some(d.status))?;
        }
        Ok((status.unwrap_or(0xff), slot))
    }
}

impl Drop for Blk<'_> {
    /// Resets the device so it stops using the arena before the arena is released.
    fn drop(&mut self) {
        let _ = self.t.reset();
    }
}
