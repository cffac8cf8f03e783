//! The C functions of `shim/c10d.cpp`. Each returns null on success or an error message the
//! caller frees with `oxrl_c10d_free_error`.

use std::ffi::{c_char, c_int, c_void};

use torch_sys::C_tensor;

extern "C" {
    pub fn oxrl_c10d_new_gloo(
        host: *const c_char,
        port: u16,
        rank: c_int,
        world_size: c_int,
        timeout_ms: i64,
        out: *mut *mut c_void,
    ) -> *mut c_char;
    pub fn oxrl_c10d_free(group: *mut c_void);
    pub fn oxrl_c10d_free_error(error: *mut c_char);
    pub fn oxrl_c10d_all_reduce(
        group: *mut c_void,
        tensors: *const *mut C_tensor,
        n: c_int,
        op: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn oxrl_c10d_broadcast(
        group: *mut c_void,
        tensors: *const *mut C_tensor,
        n: c_int,
        root: c_int,
        timeout_ms: i64,
    ) -> *mut c_char;
    pub fn oxrl_c10d_barrier(group: *mut c_void, timeout_ms: i64) -> *mut c_char;
    pub fn oxrl_c10d_store(group: *mut c_void) -> *mut c_void;
    pub fn oxrl_c10d_store_free(store: *mut c_void);
    pub fn oxrl_c10d_store_set(
        store: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: usize,
    ) -> *mut c_char;
    pub fn oxrl_c10d_store_try_get(
        store: *mut c_void,
        key: *const c_char,
        value: *mut *mut c_char,
        len: *mut usize,
    ) -> *mut c_char;
}

/// The message of a shim call's result, freeing it; `None` on success.
pub fn take_error(error: *mut c_char) -> Option<String> {
    if error.is_null() {
        return None;
    }
    // SAFETY: the shim returns a NUL-terminated string from strdup, freed once here.
    let msg = unsafe { std::ffi::CStr::from_ptr(error) }
        .to_string_lossy()
        .into_owned();
    // SAFETY: as above; not used after this.
    unsafe { oxrl_c10d_free_error(error) };
    Some(msg)
}
