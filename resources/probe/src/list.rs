//! A fixed-capacity list of u32 values (APIC IDs).

/// Up to 256 IDs; pushes beyond that are dropped.
pub struct IdList {
    ids: [u32; 256],
    len: usize,
}

impl IdList {
    /// An empty list.
    pub const fn new() -> Self {
        IdList {
            ids: [0; 256],
            len: 0,
        }
    }

    /// Appends an ID (ignored when full).
    pub fn push(&mut self, id: u32) {
        if self.len < self.ids.len() {
            self.ids[self.len] = id;
            self.len += 1;
        }
    }

    /// The IDs in insertion order.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..self.len]
    }
}
