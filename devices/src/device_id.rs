//! Device ids: what a VM's per-device counters are keyed by.
//!
//! A device gets its [`DeviceLabel`] from the VM's [`DeviceIds`] when it is added, before any
//! of its ranges goes on a [`crate::bus::Bus`]. Every range the device claims, on either bus
//! (port I/O or MMIO), carries that label, so an access reports the same [`DeviceId`] wherever
//! the guest moves the range and however many ranges the device has. Ids are dense, start at 0
//! and are never reused, so counters can be plain arrays of [`MAX_DEVICES`] slots made before
//! any device exists (a device added later is counted too).

use std::sync::{Arc, Mutex, PoisonError};

/// Most devices one VM holds; per-device counters have this many slots.
pub const MAX_DEVICES: usize = 128;

/// A device's index among its VM's devices: below [`MAX_DEVICES`], fixed for the VM's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeviceId(u16);

impl DeviceId {
    /// The id as an index into per-device counters.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A device's id and the name logs, errors and statistics show for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLabel {
    id: DeviceId,
    name: Arc<str>,
}

impl DeviceLabel {
    /// The id.
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A VM already holds [`MAX_DEVICES`] devices.
#[derive(Debug, thiserror::Error)]
#[error("cannot add device `{name}`: a VM holds at most {MAX_DEVICES} devices")]
pub struct TooManyDevices {
    /// The refused device's name.
    pub name: String,
}

/// The devices of one VM, in the order they were added.
#[derive(Debug, Default)]
pub struct DeviceIds {
    labels: Mutex<Vec<DeviceLabel>>,
}

impl DeviceIds {
    /// Gives a new device `name` the next id. Names need not be unique: the id tells devices
    /// apart.
    pub fn add(&self, name: &str) -> Result<DeviceLabel, TooManyDevices> {
        let mut labels = self.labels.lock().unwrap_or_else(PoisonError::into_inner);
        let id = u16::try_from(labels.len())
            .ok()
            .filter(|&id| usize::from(id) < MAX_DEVICES)
            .ok_or_else(|| TooManyDevices {
                name: name.to_owned(),
            })?;
        let label = DeviceLabel {
            id: DeviceId(id),
            name: name.into(),
        };
        labels.push(label.clone());
        Ok(label)
    }

    /// Every device added so far, by id.
    pub fn labels(&self) -> Vec<DeviceLabel> {
        self.labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_in_the_order_devices_were_added() {
        let ids = DeviceIds::default();
        let a = ids.add("a").unwrap();
        let b = ids.add("b").unwrap();
        let a2 = ids.add("a").unwrap();
        assert_eq!([a.id().index(), b.id().index(), a2.id().index()], [0, 1, 2]);
        assert_eq!((a.name(), a2.name()), ("a", "a"));
        assert_eq!(ids.labels(), [a, b, a2]);
    }

    #[test]
    fn a_vm_holds_at_most_max_devices() {
        let ids = DeviceIds::default();
        for i in 0..MAX_DEVICES {
            assert_eq!(ids.add(&format!("d{i}")).unwrap().id().index(), i);
        }
        let err = ids.add("one-more").unwrap_err();
        assert_eq!(err.name, "one-more");
        assert_eq!(ids.labels().len(), MAX_DEVICES);
    }
}
