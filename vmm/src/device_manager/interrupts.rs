//! Interrupt routing for MSI/MSI-X: KVM's GSI routing table (the in-kernel PIC/IOAPIC defaults
//! plus one MSI route per vector) and one irqfd per MSI vector, so a device signals the guest by
//! writing an eventfd, with no exit and no lock shared with vCPU threads.
//!
//! KVM_SET_GSI_ROUTING replaces the whole table, so the table is kept here and re-sent on every
//! change; changes happen when the guest programs or masks a vector, never per interrupt.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI, KVM_MAX_IRQ_ROUTES,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

/// Errors managing interrupt routes.
#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    /// No GSI left.
    #[error("no free GSI for another MSI vector (KVM allows {KVM_MAX_IRQ_ROUTES} routes)")]
    NoGsi,
    /// An eventfd could not be created.
    #[error("failed to create an eventfd for GSI {gsi}")]
    EventFd {
        /// GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// KVM_IRQFD failed.
    #[error("failed to register an irqfd for GSI {gsi}")]
    Irqfd {
        /// GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_SET_GSI_ROUTING failed.
    #[error("KVM_SET_GSI_ROUTING with {routes} routes failed")]
    SetRouting {
        /// Routes sent.
        routes: usize,
        /// Cause.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The routing table could not be built.
    #[error("too many GSI routes ({0})")]
    TooManyRoutes(usize),
    /// Writing an irqfd failed.
    #[error("failed to signal GSI {gsi}")]
    Signal {
        /// GSI.
        gsi: u32,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The lock guarding the table was poisoned by a panicking thread.
    #[error("the GSI routing table lock is poisoned")]
    Poisoned,
}

/// GSIs below this belong to the in-kernel IOAPIC (and PIC); MSI vectors get GSIs from here on.
pub const FIRST_MSI_GSI: u32 = arch::layout::IOAPIC_PINS;

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    entry.u.irqchip.irqchip = chip;
    entry.u.irqchip.pin = pin;
    entry
}

/// KVM's default routes for the in-kernel irqchip: GSI 0..16 to both PICs and the IOAPIC,
/// GSI 16..24 to the IOAPIC only.
fn default_routes() -> Vec<kvm_irq_routing_entry> {
    let mut routes = Vec::new();
    for gsi in 0..arch::layout::IOAPIC_PINS {
        if gsi < 8 {
            routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            routes.push(irqchip_route(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
        routes.push(irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    routes
}

fn msi_route(gsi: u32, addr: u64, data: u32) -> kvm_irq_routing_entry {
    let mut entry = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    entry.u.msi.address_lo = addr as u32;
    entry.u.msi.address_hi = (addr >> 32) as u32;
    entry.u.msi.data = data;
    entry
}

struct Table {
    /// MSI message `(address, data)` by GSI; a masked or unprogrammed vector has none.
    msi: BTreeMap<u32, (u64, u32)>,
    next_gsi: u32,
}

/// The VM's GSI routing table.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    table: Mutex<Table>,
}

/// One MSI vector: its GSI and the irqfd that raises it.
pub struct MsiVector {
    /// GSI KVM routes to the vector's MSI message.
    pub gsi: u32,
    /// Writing 1 raises the interrupt (in the kernel, no exit).
    pub irqfd: EventFd,
}

impl MsiVector {
    /// Raises the vector.
    pub fn trigger(&self) -> Result<(), InterruptError> {
        self.irqfd
            .write(1)
            .map_err(|source| InterruptError::Signal {
                gsi: self.gsi,
                source,
            })
    }
}

impl GsiRouter {
    /// A router for `vm`, which must already have its in-kernel irqchip.
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRouter {
            vm,
            table: Mutex::new(Table {
                msi: BTreeMap::new(),
                next_gsi: FIRST_MSI_GSI,
            }),
        }
    }

    /// Allocates a GSI and an irqfd for it. The vector delivers nothing until
    /// [`GsiRouter::set_msi`] gives it a message.
    pub fn allocate_msi(&self) -> Result<MsiVector, InterruptError> {
        let gsi = {
            let mut table = self.table.lock().map_err(|_| InterruptError::Poisoned)?;
            let gsi = table.next_gsi;
            if gsi as usize >= KVM_MAX_IRQ_ROUTES {
                return Err(InterruptError::NoGsi);
            }
            table.next_gsi += 1;
            gsi
        };
        let irqfd = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| InterruptError::EventFd { gsi, source })?;
        self.vm
            .register_irqfd(&irqfd, gsi)
            .map_err(|source| InterruptError::Irqfd { gsi, source })?;
        Ok(MsiVector { gsi, irqfd })
    }

    /// Routes `gsi` to the MSI message `(addr, data)`, or removes its route when `masked`.
    pub fn set_msi(
        &self,
        gsi: u32,
        addr: u64,
        data: u32,
        masked: bool,
    ) -> Result<(), InterruptError> {
        let mut table = self.table.lock().map_err(|_| InterruptError::Poisoned)?;
        let changed = if masked {
            table.msi.remove(&gsi).is_some()
        } else {
            table.msi.insert(gsi, (addr, data)) != Some((addr, data))
        };
        if changed {
            self.commit(&table)?;
        }
        Ok(())
    }

    fn commit(&self, table: &Table) -> Result<(), InterruptError> {
        let mut routes = default_routes();
        routes.extend(
            table
                .msi
                .iter()
                .map(|(&gsi, &(addr, data))| msi_route(gsi, addr, data)),
        );
        let count = routes.len();
        let wrapper = KvmIrqRouting::from_entries(&routes)
            .map_err(|_| InterruptError::TooManyRoutes(count))?;
        self.vm
            .set_gsi_routing(&wrapper)
            .map_err(|source| InterruptError::SetRouting {
                routes: count,
                source,
            })
    }

    /// Number of MSI routes currently installed.
    #[cfg(test)]
    pub(crate) fn msi_routes(&self) -> usize {
        self.table.lock().map(|t| t.msi.len()).unwrap_or(0)
    }
}

/// The MSI-X vectors of one device, as [`devices::pci::MsiInterrupt`]: each vector has its own
/// GSI and irqfd; `update` reprograms the vector's route (vCPU thread, rare) and `trigger`
/// writes its irqfd (I/O thread, lock-free).
pub struct MsiVectors {
    router: Arc<GsiRouter>,
    vectors: Vec<MsiVector>,
}

impl MsiVectors {
    /// Allocates `count` vectors from `router`.
    pub fn new(router: Arc<GsiRouter>, count: u16) -> Result<Self, InterruptError> {
        let vectors = (0..count)
            .map(|_| router.allocate_msi())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MsiVectors { router, vectors })
    }

    fn vector(&self, vector: u16) -> std::io::Result<&MsiVector> {
        self.vectors.get(usize::from(vector)).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "MSI-X vector {vector} beyond the {} allocated",
                    self.vectors.len()
                ),
            )
        })
    }
}

impl devices::pci::MsiInterrupt for MsiVectors {
    fn update(
        &self,
        vector: u16,
        msg: devices::pci::MsiMessage,
        masked: bool,
    ) -> std::io::Result<()> {
        let v = self.vector(vector)?;
        self.router
            .set_msi(v.gsi, msg.addr, msg.data, masked)
            .map_err(std::io::Error::other)
    }

    fn trigger(&self, vector: u16) -> std::io::Result<()> {
        self.vector(vector)?.irqfd.write(1)
    }
}

/// A PCI INTx line wired to an IOAPIC input through an irqfd.
pub struct IntxLine {
    gsi: u32,
    irqfd: EventFd,
}

impl IntxLine {
    /// Registers an irqfd raising IOAPIC input `gsi`.
    pub fn new(vm: &VmFd, gsi: u32) -> Result<Self, InterruptError> {
        let irqfd = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|source| InterruptError::EventFd { gsi, source })?;
        vm.register_irqfd(&irqfd, gsi)
            .map_err(|source| InterruptError::Irqfd { gsi, source })?;
        Ok(IntxLine { gsi, irqfd })
    }

    /// The IOAPIC input.
    pub fn gsi(&self) -> u32 {
        self.gsi
    }
}

impl devices::virtio::pci::IntxInterrupt for IntxLine {
    fn trigger(&self) -> std::io::Result<()> {
        self.irqfd.write(1)
    }
}

/// `kvm_accepts_msi_routes_and_irqfds` needs /dev/kvm: it programs routes and irqfds on a real
/// VM (skipped, saying so, where there is none); the others build routes only.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_cover_pic_and_ioapic() {
        let chip_pin = |r: &kvm_irq_routing_entry| {
            // SAFETY: default_routes builds only irqchip routes, so `u.irqchip` is the
            // initialised union member.
            unsafe { (r.u.irqchip.irqchip, r.u.irqchip.pin) }
        };
        let routes = default_routes();
        assert_eq!(routes.len(), 16 + 24);
        let ioapic = routes
            .iter()
            .filter(|r| chip_pin(r).0 == KVM_IRQCHIP_IOAPIC)
            .count();
        assert_eq!(ioapic, 24);
        let slave = routes
            .iter()
            .find(|r| r.gsi == 12 && chip_pin(r).0 == KVM_IRQCHIP_PIC_SLAVE);
        assert_eq!(slave.map(|r| chip_pin(r).1), Some(4));
    }

    #[test]
    fn msi_route_splits_the_address() {
        let r = msi_route(30, 0x1_fee0_1000, 0x4041);
        assert_eq!(r.type_, KVM_IRQ_ROUTING_MSI);
        // SAFETY: built as an MSI route.
        let (lo, hi, data) = unsafe { (r.u.msi.address_lo, r.u.msi.address_hi, r.u.msi.data) };
        assert_eq!((lo, hi, data), (0xfee0_1000, 1, 0x4041));
    }

    /// Real KVM: vectors get distinct GSIs from FIRST_MSI_GSI up, routes are accepted, masking
    /// removes them, and triggering an irqfd works.
    #[test]
    fn kvm_accepts_msi_routes_and_irqfds() {
        let Some(kvm) = crate::host::kvm_for_test() else {
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("create VM"));
        vm.create_irq_chip().expect("irqchip");
        let router = GsiRouter::new(Arc::clone(&vm));
        let a = router.allocate_msi().unwrap();
        let b = router.allocate_msi().unwrap();
        assert_eq!((a.gsi, b.gsi), (FIRST_MSI_GSI, FIRST_MSI_GSI + 1));
        router.set_msi(a.gsi, 0xfee0_0000, 0x0041, false).unwrap();
        router.set_msi(b.gsi, 0xfee0_0000, 0x0042, false).unwrap();
        assert_eq!(router.msi_routes(), 2);
        router.set_msi(a.gsi, 0xfee0_0000, 0x0041, true).unwrap();
        assert_eq!(router.msi_routes(), 1);
        b.trigger().unwrap();
    }
}
