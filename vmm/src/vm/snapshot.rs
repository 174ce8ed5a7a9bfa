//! Taking a snapshot of a running VM ([`RunningVm::snapshot`]) and building a VM from one
//! ([`Vm::restore`]); the file and its format are in [`crate::snapshot`].

use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::config::vm_config_to_json;
use crate::device_manager::state::{DeviceStateError, DevicesState};
use crate::snapshot::file::{FileError, SnapshotFile, SnapshotWriter};
use crate::snapshot::live::{LiveError, LiveRam, Prepared};
use crate::snapshot::ram_io::{GuestTarget, RamRegion};
use crate::snapshot::{sections, RestoreReport, SnapshotMode, SnapshotReport};
use crate::vcpu::save::CollectError;
use crate::vcpu::state::{check_xsave_size, VcpuState};
use crate::vcpu::{Vcpu, VcpuError};

use super::state::VmState;
use super::{RunningVm, Vm, VmError};

mod job;

use job::{remove_incomplete, write_file, Captured, JobStart};
pub use job::{Progress, SnapshotJob};

/// How long a snapshot waits for the parked vCPUs to hand over their state.
const COLLECT_LIMIT: Duration = Duration::from_secs(5);

/// Errors taking a snapshot. The VM runs on (or stays paused, if it was) after any of them.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// Guest RAM could not be write-protected for a live snapshot.
    #[error("cannot take a live snapshot")]
    Live(#[source] LiveError),
    /// A vCPU has ended: there is no running guest to save.
    #[error("the guest has ended; there is nothing to snapshot")]
    Ended,
    /// The vCPUs did not park.
    #[error("cannot pause the VM for the snapshot")]
    Pause(#[source] Box<VmError>),
    /// The vCPUs' state could not be collected.
    #[error("cannot collect the vCPUs' state")]
    Vcpus(#[source] CollectError),
    /// The extended state cannot be saved.
    #[error(transparent)]
    Xsave(VcpuError),
    /// The VM-wide KVM state could not be read.
    #[error("cannot read the VM's KVM state")]
    VmState(#[source] Box<VmError>),
    /// A device's state could not be saved.
    #[error(transparent)]
    Devices(#[from] DeviceStateError),
    /// The configuration could not be encoded.
    #[error("cannot encode the VM's configuration")]
    Config(#[source] serde_json::Error),
    /// The file could not be written.
    #[error(transparent)]
    File(#[from] FileError),
}

/// Guest RAM as the RAM writer sees it.
pub(crate) fn ram_regions(mem: &GuestMemoryMmap) -> Vec<RamRegion> {
    mem.iter()
        .map(|r| RamRegion {
            guest: r.start_addr().0,
            host: r.as_ptr(),
            len: r.len(),
        })
        .collect()
}

/// Guest RAM as the restore's reader fills it.
struct MemTarget<'a>(&'a GuestMemoryMmap);

impl GuestTarget for MemTarget<'_> {
    fn host(&self, guest: u64, len: u64) -> Option<*mut u8> {
        let region = self.0.find_region(GuestAddress(guest))?;
        let offset = guest - region.start_addr().0;
        if offset.checked_add(len)? > region.len() {
            return None;
        }
        // SAFETY: `offset + len` lies within the region, checked above.
        Some(unsafe { region.as_ptr().add(offset as usize) })
    }
}

impl RunningVm {
    /// Saves the VM at this instant to `path` (which must not exist). In paused mode the
    /// guest is parked until RAM is on disk; in live mode only until its RAM is
    /// write-protected. Either way it then runs on, unless it was paused before.
    pub fn snapshot(
        &mut self,
        path: &Path,
        mode: SnapshotMode,
    ) -> Result<SnapshotReport, SnapshotError> {
        self.begin_snapshot(path, mode)?.finish()
    }

    /// [`RunningVm::snapshot`] up to the instant: a paused snapshot is written by the time
    /// this returns; a live one returns once the guest runs on, with what is left to write
    /// (guest RAM, while the guest runs) in the job, which may finish on another thread.
    pub fn begin_snapshot(
        &mut self,
        path: &Path,
        mode: SnapshotMode,
    ) -> Result<SnapshotJob, SnapshotError> {
        if self.threads.iter().any(|t| t.is_finished()) || self.threads.is_empty() {
            return Err(SnapshotError::Ended);
        }
        let mem = self._vm.ram.mem.clone();
        // Registration (and, on older kernels, faulting in untouched RAM) and the first phase
        // of write-protection happen while the guest runs; a destination that exists is
        // refused before the guest stops.
        let live = match mode {
            SnapshotMode::Live => {
                let page = self._vm.ram.backing.page_size;
                let prepared =
                    Prepared::new(&ram_regions(&mem), page).map_err(SnapshotError::Live)?;
                Some(LiveRam::start(prepared).map_err(SnapshotError::Live)?)
            }
            SnapshotMode::Paused => None,
        };
        let w = SnapshotWriter::create(path)?;
        let job = JobStart::new(path, mode, mem);
        let was_paused = self.is_paused();
        let result = match (live, self.pause()) {
            (_, Err(e)) => Err(SnapshotError::Pause(Box::new(e))),
            (Some(live), Ok(())) => self.snapshot_live(w, live, was_paused, job),
            (None, Ok(())) => self.snapshot_paused(w, was_paused, job),
        };
        result.inspect_err(|_| remove_incomplete(path))
    }

    /// Lets the disks and (unless it was paused before) the guest run again.
    fn release(&mut self, was_paused: bool) {
        self._vm.devices.resume_dataplane();
        if !was_paused {
            self.resume();
        }
    }

    fn snapshot_paused(
        &mut self,
        w: SnapshotWriter,
        was_paused: bool,
        job: JobStart,
    ) -> Result<SnapshotJob, SnapshotError> {
        let result = self
            .capture()
            .and_then(|c| write_file(w, &c, &job.mem, None, &job.progress));
        self.release(was_paused);
        Ok(job.written(result?))
    }

    fn snapshot_live(
        &mut self,
        w: SnapshotWriter,
        live: LiveRam,
        was_paused: bool,
        job: JobStart,
    ) -> Result<SnapshotJob, SnapshotError> {
        let armed = self.capture().and_then(|c| {
            live.instant().map_err(SnapshotError::Live)?;
            Ok(c)
        });
        self.release(was_paused);
        let captured = armed?;
        Ok(job.live(w, captured, live))
    }

    /// Reads every vCPU's, the VM's and the devices' state; the vCPUs are parked.
    fn capture(&mut self) -> Result<Captured, SnapshotError> {
        check_xsave_size(self._vm.host.xsave2_size).map_err(SnapshotError::Xsave)?;
        let vm = &self._vm;
        let devices = vm.devices.capture_state()?;
        let config =
            serde_json::from_str(&vm_config_to_json(&vm.config)).map_err(SnapshotError::Config)?;
        let vm_state =
            VmState::capture(&vm._vm_fd).map_err(|e| SnapshotError::VmState(Box::new(e)))?;
        self.control.states.request(self.threads.len());
        self.control.poke();
        let vcpus = self
            .control
            .states
            .collect(COLLECT_LIMIT)
            .map_err(SnapshotError::Vcpus)?;
        Ok(Captured {
            config,
            vm: vm_state,
            vcpus,
            devices,
        })
    }
}

impl Vm {
    /// Builds the VM saved in `snap`: its configuration, RAM, and the VM, device and vCPU
    /// state; [`Vm::start`] then runs it on from the snapshot's instant.
    pub fn restore(snap: &SnapshotFile) -> Result<(Self, RestoreReport), VmError> {
        let config: serde_json::Value = snap.section(sections::CONFIG)?;
        let config = crate::config::vm_config_from_json(&config.to_string())
            .map_err(|e| VmError::SnapshotConfig(Box::new(e)))?;
        let vm = Vm::build(&config, false)?;
        let report = vm.restore_state(snap)?;
        Ok((vm, report))
    }

    /// Reads RAM and puts the VM, device and vCPU state of `snap` into this freshly built VM.
    fn restore_state(&self, snap: &SnapshotFile) -> Result<RestoreReport, VmError> {
        let vcpus: Vec<VcpuState> = snap.section(sections::VCPUS)?;
        if vcpus.len() != self.vcpus.len() {
            return Err(VmError::SnapshotVcpus {
                saved: vcpus.len(),
                built: self.vcpus.len(),
            });
        }
        let vm_state: VmState = snap.section(sections::VM)?;
        let devices: DevicesState = snap.section(sections::DEVICES)?;
        let extents = snap.ram_extents(&self.ram.regions)?;
        let started = Instant::now();
        let ram_bytes = snap.read_ram(&extents, &MemTarget(&self.ram.mem))?;
        let ram_time = started.elapsed();
        vm_state.restore(&self._vm_fd)?;
        self.devices.restore_state(&devices)?;
        for (vcpu, state) in self.vcpus.iter().zip(&vcpus) {
            restore_vcpu(vcpu, state)?;
        }
        self.devices.kick_after_restore();
        Ok(RestoreReport {
            ram_bytes,
            ram_time,
        })
    }
}

fn restore_vcpu(vcpu: &Vcpu, state: &VcpuState) -> Result<(), VmError> {
    if state.index != vcpu.index {
        return Err(VmError::SnapshotVcpuOrder {
            position: vcpu.index,
            saved: state.index,
        });
    }
    Ok(vcpu.restore_state(state)?)
}
