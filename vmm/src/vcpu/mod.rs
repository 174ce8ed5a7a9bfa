//! vCPUs: per-vCPU setup (CPUID, MSRs, FPU, LAPIC, and the boot vCPU's entry registers) and
//! the run loop, which hands every exit to [`crate::exit::handle_exit`] and reports how the
//! vCPU stopped. [`control`] is how other threads pause and stop it.

pub mod control;
pub mod save;
pub mod state;

use std::sync::Arc;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, Msrs};
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::device_manager::Buses;
use crate::exit::{handle_exit, Action, ResetCause};
use crate::loader::EntryMode;
use crate::paravirt::{Paravirt, ParavirtError};
use crate::stats::exits::{ExitCounters, Unclaimed};
use crate::stats::kvm::KvmStats;
use control::VcpuControl;

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// A paravirtual capability could not be enabled.
    #[error("vCPU {index}: paravirtual setup failed")]
    Paravirt {
        /// vCPU index.
        index: u32,
        /// Cause.
        #[source]
        source: ParavirtError,
    },
    /// KVM_CREATE_VCPU failed.
    #[error("failed to create vCPU {index}")]
    Create {
        /// vCPU index.
        index: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A vCPU ioctl failed during setup.
    #[error("vCPU {index}: {what} failed")]
    Setup {
        /// vCPU index.
        index: u32,
        /// The ioctl.
        what: &'static str,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Not every boot MSR was accepted.
    #[error("vCPU {index}: KVM accepted only {set} of {wanted} boot MSRs")]
    Msrs {
        /// vCPU index.
        index: u32,
        /// Accepted.
        set: usize,
        /// Wanted.
        wanted: usize,
    },
    /// Building boot structures failed.
    #[error("vCPU {index}: failed to write the boot GDT/page tables")]
    Regs {
        /// vCPU index.
        index: u32,
        /// Cause.
        #[source]
        source: arch::regs::RegsError,
    },
    /// A FAM wrapper could not be built.
    #[error("vCPU {index}: too many {what} entries for KVM")]
    Fam {
        /// vCPU index.
        index: u32,
        /// CPUID or MSR.
        what: &'static str,
    },
    /// KVM refused an MSR of a restored state.
    #[error("vCPU {index}: KVM refused MSR {msr:#x} of the saved state")]
    MsrRefused {
        /// vCPU index.
        index: u32,
        /// The MSR.
        msr: u32,
    },
    /// The vCPUs' extended state does not fit KVM_GET_XSAVE (AMX).
    #[error("the vCPUs' extended state ({size} bytes, AMX) is larger than a snapshot can hold")]
    XsaveTooLarge {
        /// KVM_CAP_XSAVE2's size.
        size: usize,
    },
}

/// How a vCPU's run loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// Told to stop (another vCPU ended the VM, or the user asked).
    Requested,
    /// The guest powered off.
    PowerOff,
    /// The guest reset.
    Reset(ResetCause),
    /// A fatal exit, described.
    Fatal(String),
}

/// Where the boot vCPU starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// 64-bit or PVH.
    pub mode: EntryMode,
    /// Entry address.
    pub entry: GuestAddress,
    /// Zero page (64-bit) or hvm_start_info (PVH).
    pub boot_info: GuestAddress,
}

/// A created vCPU.
pub struct Vcpu {
    /// Index (= APIC ID).
    pub index: u32,
    fd: VcpuFd,
    /// Exit counters, shared for reading.
    pub counters: Arc<ExitCounters>,
    /// KVM's in-kernel counters for this vCPU (None if the host lacks binary stats).
    pub kvm_stats: Option<Arc<KvmStats>>,
    /// The MSRs a snapshot saves (KVM_GET_MSR_INDEX_LIST).
    msr_indices: Arc<[u32]>,
}

impl Vcpu {
    /// KVM_CREATE_VCPU; `counters` are its exit counters (see [`ExitCounters`]);
    /// `msr_indices` the MSRs its snapshots save.
    pub fn new(
        vm: &VmFd,
        index: u32,
        counters: ExitCounters,
        msr_indices: Arc<[u32]>,
    ) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|source| VcpuError::Create { index, source })?;
        let kvm_stats = match KvmStats::open(&fd) {
            Ok(stats) => Some(Arc::new(stats)),
            Err(e) => {
                log::debug!("vCPU {index}: no KVM statistics: {e}");
                None
            }
        };
        Ok(Vcpu {
            index,
            fd,
            counters: Arc::new(counters),
            kvm_stats,
            msr_indices,
        })
    }

    /// Puts a saved state into this vCPU (before it first runs).
    pub fn restore_state(&self, state: &state::VcpuState) -> Result<(), VcpuError> {
        state.restore(&self.fd)
    }

    /// If a snapshot wants this vCPU's state, completes any pending I/O instruction (one
    /// KVM_RUN with `immediate_exit`, which returns before guest code runs) and deposits the
    /// state.
    fn deposit_state(&mut self, requests: &save::StateRequests) {
        if !requests.wanted(self.index) {
            return;
        }
        self.fd.set_kvm_immediate_exit(1);
        let completed = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        };
        self.fd.set_kvm_immediate_exit(0);
        let state = completed
            .map_err(|source| VcpuError::Setup {
                index: self.index,
                what: "KVM_RUN (immediate exit)",
                source,
            })
            .and_then(|()| state::VcpuState::capture(&self.fd, self.index, &self.msr_indices));
        requests.put(self.index, state);
    }

    fn setup_err(&self, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
        let index = self.index;
        move |source| VcpuError::Setup {
            index,
            what,
            source,
        }
    }

    /// The host TSC frequency as KVM runs this vCPU, if KVM tells.
    pub fn tsc_khz(&self) -> Option<u32> {
        self.fd.get_tsc_khz().ok().filter(|&k| k != 0)
    }

    /// Sets CPUID (`entries`, final), the paravirtual capabilities that go with it, MSRs,
    /// FPU and LAPIC LINT pins.
    pub fn configure(
        &self,
        entries: &[kvm_cpuid_entry2],
        paravirt: &Paravirt,
    ) -> Result<(), VcpuError> {
        let cpuid = CpuId::from_entries(entries).map_err(|_| VcpuError::Fam {
            index: self.index,
            what: "CPUID",
        })?;
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(self.setup_err("KVM_SET_CPUID2"))?;
        paravirt
            .enable_vcpu_caps(&self.fd)
            .map_err(|source| VcpuError::Paravirt {
                index: self.index,
                source,
            })?;

        let msr_entries = arch::regs::boot_msrs();
        let msrs = Msrs::from_entries(&msr_entries).map_err(|_| VcpuError::Fam {
            index: self.index,
            what: "MSR",
        })?;
        let set = self
            .fd
            .set_msrs(&msrs)
            .map_err(self.setup_err("KVM_SET_MSRS"))?;
        if set != msr_entries.len() {
            return Err(VcpuError::Msrs {
                index: self.index,
                set,
                wanted: msr_entries.len(),
            });
        }
        self.fd
            .set_fpu(&arch::regs::boot_fpu())
            .map_err(self.setup_err("KVM_SET_FPU"))?;
        let mut lapic = self
            .fd
            .get_lapic()
            .map_err(self.setup_err("KVM_GET_LAPIC"))?;
        arch::regs::set_lint(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.setup_err("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// Puts the boot vCPU at the kernel entry.
    pub fn set_boot_entry(&self, mem: &GuestMemoryMmap, boot: &BootEntry) -> Result<(), VcpuError> {
        let mut sregs = self
            .fd
            .get_sregs()
            .map_err(self.setup_err("KVM_GET_SREGS"))?;
        let regs = match boot.mode {
            EntryMode::Linux64 => {
                arch::regs::setup_sregs_64bit(mem, &mut sregs).map_err(|source| {
                    VcpuError::Regs {
                        index: self.index,
                        source,
                    }
                })?;
                arch::regs::regs_64bit(boot.entry.0, boot.boot_info.0)
            }
            EntryMode::Pvh => {
                arch::regs::setup_sregs_pvh(mem, &mut sregs).map_err(|source| VcpuError::Regs {
                    index: self.index,
                    source,
                })?;
                arch::regs::regs_pvh(boot.entry.0, boot.boot_info.0)
            }
        };
        self.fd
            .set_sregs(&sregs)
            .map_err(self.setup_err("KVM_SET_SREGS"))?;
        self.fd
            .set_regs(&regs)
            .map_err(self.setup_err("KVM_SET_REGS"))
    }

    /// Runs until the guest or `control` ends it. `control` is checked before every KVM_RUN
    /// (the VM kicks vCPU threads out of KVM_RUN with a signal); a pause parks the thread there.
    pub fn run(
        mut self,
        buses: &Buses,
        mem: &GuestMemoryMmap,
        control: &VcpuControl,
    ) -> (VcpuStop, Unclaimed) {
        let mut unclaimed = Unclaimed::default();
        let counters = Arc::clone(&self.counters);
        if self.index == 0 {
            // `make bench` reads this line to measure exec -> first KVM_RUN.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            log::debug!("first KVM_RUN at unix time {:.6}", now.as_secs_f64());
        }
        loop {
            if control.checkpoint(|| self.deposit_state(&control.states)) {
                if log::log_enabled!(log::Level::Debug) {
                    log::debug!(
                        "vCPU {} stopped at {}, {}",
                        self.index,
                        self.describe_rip(mem),
                        self.describe_run_state()
                    );
                }
                return (VcpuStop::Requested, unclaimed);
            }
            let action = match self.fd.run() {
                Ok(exit) => handle_exit(buses, exit, &counters, &mut unclaimed),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.fd.set_kvm_immediate_exit(0);
                    counters
                        .interrupted
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Action::Interrupted
                }
                Err(e) => {
                    return (
                        VcpuStop::Fatal(format!("vCPU {}: KVM_RUN failed: {e}", self.index)),
                        unclaimed,
                    )
                }
            };
            match action {
                Action::Continue | Action::Interrupted => {}
                Action::PowerOff => return (VcpuStop::PowerOff, unclaimed),
                Action::Reset(cause) => return (VcpuStop::Reset(cause), unclaimed),
                Action::InternalError => {
                    return (
                        VcpuStop::Fatal(self.describe_internal_error(mem)),
                        unclaimed,
                    )
                }
                Action::FailEntry(reason) => {
                    let msg = format!(
                        "vCPU {}: VM entry failed (hardware reason {reason:#x}) at {}",
                        self.index,
                        self.describe_rip(mem)
                    );
                    return (VcpuStop::Fatal(msg), unclaimed);
                }
                Action::Unhandled(code) => {
                    let msg = format!(
                        "vCPU {}: unhandled KVM exit reason {code} at {}",
                        self.index,
                        self.describe_rip(mem)
                    );
                    return (VcpuStop::Fatal(msg), unclaimed);
                }
            }
        }
    }

    fn describe_internal_error(&mut self, mem: &GuestMemoryMmap) -> String {
        // SAFETY: reading the `internal` member of the kvm_run exit union is valid right after
        // KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, which is how we got here.
        let (suberror, ndata, data) = unsafe {
            let internal = self.fd.get_kvm_run().__bindgen_anon_1.internal;
            (internal.suberror, internal.ndata, internal.data)
        };
        let what = match suberror {
            1 => "emulation failure",
            2 => "simultaneous exception",
            3 => "delivery event failure",
            4 => "unexpected exit reason",
            _ => "unknown suberror",
        };
        let shown = (ndata as usize).min(data.len());
        format!(
            "vCPU {}: KVM internal error, suberror {suberror} ({what}), data {:x?}, at {}",
            self.index,
            &data[..shown],
            self.describe_rip(mem)
        )
    }

    /// "RFLAGS 0x..., mp_state n, interrupt pending ...": why a stopped vCPU was not running.
    fn describe_run_state(&self) -> String {
        let rflags = self
            .fd
            .get_regs()
            .map(|r| format!("{:#x}", r.rflags))
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let mp_state = self
            .fd
            .get_mp_state()
            .map(|m| m.mp_state.to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"));
        let events = self
            .fd
            .get_vcpu_events()
            .map(|e| {
                format!(
                    "interrupt injected {} (vector {}), NMI pending {}, interrupt shadow {}",
                    e.interrupt.injected, e.interrupt.nr, e.nmi.pending, e.interrupt.shadow
                )
            })
            .unwrap_or_else(|e| format!("events unknown ({e})"));
        format!("RFLAGS {rflags}, mp_state {mp_state}, {events}")
    }

    /// "RIP 0x... (CPL n), instruction bytes ..." as far as they can be read.
    fn describe_rip(&self, mem: &GuestMemoryMmap) -> String {
        let regs = match self.fd.get_regs() {
            Ok(r) => r,
            Err(e) => return format!("an unknown RIP (KVM_GET_REGS failed: {e})"),
        };
        let cpl = self.fd.get_sregs().map(|s| s.cs.dpl).unwrap_or(0);
        let bytes = self
            .fd
            .translate_gva(regs.rip)
            .ok()
            .filter(|t| t.valid != 0)
            .and_then(|t| {
                let mut buf = [0u8; 15];
                mem.read_slice(&mut buf, GuestAddress(t.physical_address))
                    .ok()
                    .map(|_| buf)
            });
        match bytes {
            Some(b) => format!(
                "RIP {:#x} (CPL {cpl}), instruction bytes {}",
                regs.rip,
                b.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => format!(
                "RIP {:#x} (CPL {cpl}), instruction bytes unreadable",
                regs.rip
            ),
        }
    }
}
