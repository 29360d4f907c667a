//! Pool memory, as the core sees it: somewhere to write bytes at an offset.
//!
//! The broker backs it with a shared memfd mapping; tests with a `Vec`. The core only ever
//! writes inside slices it allocated, so implementations may assume in-bounds writes, but
//! must not trust that blindly (they clamp).

/// The bytes behind one connection's receive pool.
pub trait PoolMemory {
    /// Copy `data` to `offset`. Out-of-range parts are dropped.
    fn write(&mut self, offset: u64, data: &[u8]);
    /// The pool's size in bytes, as the client asked for it at HELLO.
    fn size(&self) -> u64;
    /// Read back (for tests and debugging); `None` if out of range.
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>>;
}

/// Heap-backed pool memory for tests.
pub struct VecPool(pub Vec<u8>);

impl VecPool {
    /// A zeroed pool of `size` bytes.
    pub fn new(size: u64) -> Self {
        VecPool(vec![0; size as usize])
    }
}

impl PoolMemory for VecPool {
    fn write(&mut self, offset: u64, data: &[u8]) {
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        let Some(dst) = self.0.get_mut(start..) else {
            return;
        };
        let n = data.len().min(dst.len());
        dst[..n].copy_from_slice(&data[..n]);
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        self.0
            .get(start..start.checked_add(len)?)
            .map(|s| s.to_vec())
    }
}
