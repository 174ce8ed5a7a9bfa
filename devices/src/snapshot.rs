//! The per-device snapshot contract: every device with state a snapshot must keep implements
//! [`DeviceSnapshot`], whose saved form carries the device's own state version
//! ([`Saved`]), so that a device's layout can change without touching the others' and a
//! restore refuses a state it does not know instead of misreading it.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a saved state could not be put back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Saved by a keel whose layout of this device's state differs.
    #[error("{device}: saved state version {found}, this keel reads version {expected}")]
    Version {
        /// The device.
        device: &'static str,
        /// The version found.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// The device could not take the state.
    #[error("{device}: the saved state cannot be restored")]
    Device {
        /// The device.
        device: &'static str,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The state does not fit the device.
    #[error("{device}: {what}")]
    Invalid {
        /// The device.
        device: &'static str,
        /// What does not fit.
        what: String,
    },
}

impl StateError {
    /// `device`'s saved state does not fit it: `what`.
    pub fn invalid(device: &'static str, what: impl Into<String>) -> Self {
        StateError::Invalid {
            device,
            what: what.into(),
        }
    }
}

/// A device whose state a snapshot saves and a restore puts back into a freshly built one.
pub trait DeviceSnapshot {
    /// The saved form.
    type State: Serialize + DeserializeOwned;
    /// Names the device in errors.
    const NAME: &'static str;
    /// Changes whenever `State` changes shape.
    const STATE_VERSION: u32;
    /// The state now.
    fn save_state(&self) -> Self::State;
    /// Puts `state` back.
    fn restore_state(&mut self, state: &Self::State) -> Result<(), StateError>;
}

/// A device's state with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved<T> {
    /// [`DeviceSnapshot::STATE_VERSION`] when saved.
    pub version: u32,
    /// The state.
    pub state: T,
}

/// Saves `device`'s state with its version.
pub fn save<D: DeviceSnapshot>(device: &D) -> Saved<D::State> {
    Saved {
        version: D::STATE_VERSION,
        state: device.save_state(),
    }
}

/// Puts `saved` back into `device` after checking its version.
pub fn restore<D: DeviceSnapshot>(
    device: &mut D,
    saved: &Saved<D::State>,
) -> Result<(), StateError> {
    if saved.version != D::STATE_VERSION {
        return Err(StateError::Version {
            device: D::NAME,
            found: saved.version,
            expected: D::STATE_VERSION,
        });
    }
    device.restore_state(&saved.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::{AcpiPm, Cmos, I8042};

    #[test]
    fn a_state_of_another_version_is_refused_naming_the_device() {
        let mut cmos = Cmos::new(1 << 30, 0);
        let mut saved = save(&cmos);
        assert!(restore(&mut cmos, &saved).is_ok());
        saved.version += 1;
        let e = restore(&mut cmos, &saved).unwrap_err();
        assert!(
            e.to_string().starts_with("cmos: saved state version"),
            "{e}"
        );
    }

    #[test]
    fn legacy_devices_come_back_as_saved() {
        let mut pm = AcpiPm::new(5, 6);
        let saved = save(&pm);
        let json = serde_json::to_string(&saved).unwrap();
        let back: Saved<_> = serde_json::from_str(&json).unwrap();
        restore(&mut pm, &back).unwrap();
        assert!(
            save(&pm).state.ticks >= saved.state.ticks,
            "the PM timer goes on"
        );

        let mut kbc = I8042::new();
        let mut state = save(&kbc).state;
        state.ram[0] = 0x47;
        state.out = Some(0xaa);
        restore(
            &mut kbc,
            &Saved {
                version: I8042::STATE_VERSION,
                state: state.clone(),
            },
        )
        .unwrap();
        assert_eq!(save(&kbc).state, state);
        state.pending = 200;
        assert!(restore(
            &mut kbc,
            &Saved {
                version: I8042::STATE_VERSION,
                state
            }
        )
        .is_err());
    }
}
