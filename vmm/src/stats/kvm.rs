//! KVM's binary statistics (KVM_GET_STATS_FD): the in-kernel counters of a VM or a vCPU
//! (exits, io_exits, mmio_exits, halt_exits, irq_exits, insn_emulation, halt polling, ...),
//! read by name without debugfs.
//!
//! The file starts with a header (flags, name size, descriptor count, and the offsets of the
//! ID string, the descriptors and the data). Each descriptor holds flags, exponent, size (in
//! u64s), the value's offset in the data block, a bucket size and a NUL-padded name.
//! Single-value counters are reported; histograms (size > 1) are summed.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;

use vmm_sys_util::ioctl::ioctl;
/// The ioctl number (the macro makes a public function; kept inside this private module).
mod numbers {
    use vmm_sys_util::ioctl_io_nr;
    ioctl_io_nr!(KVM_GET_STATS_FD, kvm_bindings::KVMIO, 0xce);
}
use numbers::KVM_GET_STATS_FD;

/// Header size in bytes.
const HEADER_LEN: usize = 24;
/// Fixed part of a descriptor, before the name.
const DESC_FIXED_LEN: usize = 16;
/// Sanity limits against a malformed file.
const MAX_DESCS: u32 = 4096;
const MAX_NAME: u32 = 256;

/// Errors reading KVM statistics.
#[derive(Debug, thiserror::Error)]
pub enum KvmStatsError {
    /// The ioctl failed (older kernels lack KVM_CAP_BINARY_STATS_FD).
    #[error("KVM_GET_STATS_FD failed")]
    Open(#[source] std::io::Error),
    /// Reading the file failed.
    #[error("cannot read KVM statistics")]
    Read(#[source] std::io::Error),
    /// The header or a descriptor is out of range.
    #[error("KVM statistics file is malformed: {0}")]
    Malformed(&'static str),
}

#[derive(Debug, Clone)]
struct Desc {
    name: String,
    offset: u64,
    size: u16,
}

/// An open statistics file with its descriptors parsed.
#[derive(Debug)]
pub struct KvmStats {
    file: File,
    data_offset: u64,
    descs: Vec<Desc>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(w)
}

impl KvmStats {
    /// Opens the statistics of the VM or vCPU behind `fd`.
    pub fn open(fd: &impl AsRawFd) -> Result<Self, KvmStatsError> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd or -1; `fd` is a
        // valid KVM VM or vCPU fd for the duration of the call.
        let ret = unsafe { ioctl(fd, KVM_GET_STATS_FD()) };
        if ret < 0 {
            return Err(KvmStatsError::Open(std::io::Error::last_os_error()));
        }
        // SAFETY: `ret` is a fresh fd owned by nobody else.
        let file = unsafe { File::from_raw_fd(ret) };
        Self::parse(file)
    }

    /// Reads an already open statistics fd (for example one taken from another process).
    pub fn from_stats_file(file: File) -> Result<Self, KvmStatsError> {
        Self::parse(file)
    }

    fn parse(file: File) -> Result<Self, KvmStatsError> {
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0)
            .map_err(KvmStatsError::Read)?;
        let name_size = u32_at(&header, 4);
        let num_desc = u32_at(&header, 8);
        let desc_offset = u64::from(u32_at(&header, 16));
        let data_offset = u64::from(u32_at(&header, 20));
        if name_size == 0 || name_size > MAX_NAME || num_desc > MAX_DESCS {
            return Err(KvmStatsError::Malformed("header limits"));
        }
        let desc_len = DESC_FIXED_LEN + name_size as usize;
        let mut raw = vec![0u8; desc_len * num_desc as usize];
        file.read_exact_at(&mut raw, desc_offset)
            .map_err(KvmStatsError::Read)?;
        let descs = raw
            .chunks_exact(desc_len)
            .map(|d| {
                let name = &d[DESC_FIXED_LEN..];
                let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
                Desc {
                    name: String::from_utf8_lossy(&name[..end]).into_owned(),
                    size: u16::from_le_bytes([d[6], d[7]]),
                    offset: u64::from(u32_at(d, 8)),
                }
            })
            .collect();
        Ok(KvmStats {
            file,
            data_offset,
            descs,
        })
    }

    /// Current values, by name, in the kernel's order.
    pub fn read(&self) -> Result<Vec<(String, u64)>, KvmStatsError> {
        let mut out = Vec::with_capacity(self.descs.len());
        for d in &self.descs {
            let mut buf = vec![0u8; usize::from(d.size.max(1)) * 8];
            self.file
                .read_exact_at(&mut buf, self.data_offset + d.offset)
                .map_err(KvmStatsError::Read)?;
            let sum = buf
                .chunks_exact(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w.copy_from_slice(c);
                    u64::from_le_bytes(w)
                })
                .fold(0u64, u64::wrapping_add);
            out.push((d.name.clone(), sum));
        }
        Ok(out)
    }
}

/// Needs /dev/kvm: opens KVM's binary statistics of a real VM and vCPU (skipped, saying so,
/// where there is none).
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_and_vcpu_stats_have_exit_counters() {
        let Some(kvm) = crate::host::kvm_for_test() else {
            return;
        };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let vm_stats = KvmStats::open(&vm).unwrap().read().unwrap();
        assert!(!vm_stats.is_empty());
        let stats = KvmStats::open(&vcpu).unwrap();
        let values = stats.read().unwrap();
        for name in ["exits", "io_exits", "mmio_exits", "halt_exits"] {
            assert!(
                values.iter().any(|(n, _)| n == name),
                "vCPU stat {name} missing: {values:?}"
            );
        }
    }
}
