//! The job's key-value store: c10d's TCPStore, served by rank 0, which every rank joined at
//! the rendezvous. Small values any rank sets and any thread of any rank reads, such as each
//! rank's live phase for rank 0's `/status`.

use std::ffi::{c_void, CString};
use std::ptr::NonNull;

use super::ffi;
use crate::error::{Error, Result};

/// A handle on the store (it keeps the store alive on its own).
pub struct Store {
    raw: NonNull<c_void>,
    rank: usize,
}

// SAFETY: TCPStore serializes its operations with a lock; the handle is a reference-counted
// pointer only freed on drop.
unsafe impl Send for Store {}
unsafe impl Sync for Store {}

impl Store {
    /// A handle on the store of the group `group` (a `ProcessGroup`'s raw pointer).
    pub(super) fn of_group(group: NonNull<c_void>, rank: usize) -> Self {
        // SAFETY: the group is alive; the shim returns a new handle.
        let raw = unsafe { ffi::oxrl_c10d_store(group.as_ptr()) };
        Self {
            raw: NonNull::new(raw).expect("the shim returns a store handle"),
            rank,
        }
    }

    /// Sets `key` to `value` for every rank to read.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<()> {
        let key = self.key(key)?;
        // SAFETY: the handle is alive; `key` and `value` outlive the call.
        let error = unsafe {
            ffi::oxrl_c10d_store_set(self.raw.as_ptr(), key.as_ptr(), value.as_ptr(), value.len())
        };
        self.result("store set", error)
    }

    /// The value of `key`, or `None` while no rank has set it (never waits).
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let key = self.key(key)?;
        let (mut value, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: as in `set`; the shim fills `value` with a malloc'd buffer of `len` bytes.
        let error = unsafe {
            ffi::oxrl_c10d_store_try_get(self.raw.as_ptr(), key.as_ptr(), &mut value, &mut len)
        };
        self.result("store get", error)?;
        if value.is_null() {
            return Ok(None);
        }
        // SAFETY: `value` holds `len` bytes, read once and freed once.
        let bytes = unsafe { std::slice::from_raw_parts(value as *const u8, len) }.to_vec();
        // SAFETY: malloc'd by the shim; not used after this.
        unsafe { ffi::oxrl_c10d_free_error(value) };
        Ok(Some(bytes))
    }

    fn key(&self, key: &str) -> Result<CString> {
        CString::new(key).map_err(|_| Error::Invalid(format!("store key {key:?} holds a NUL")))
    }

    fn result(&self, op: &'static str, error: *mut std::ffi::c_char) -> Result<()> {
        match ffi::take_error(error) {
            None => Ok(()),
            Some(msg) => Err(Error::Collective {
                rank: self.rank,
                op,
                msg,
            }),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // SAFETY: created by `oxrl_c10d_store`, freed once.
        unsafe { ffi::oxrl_c10d_store_free(self.raw.as_ptr()) };
    }
}
