//! Running a closure on libtorch's own OpenMP thread team.
//!
//! libtorch's CPU kernels run on libgomp's team, whose idle threads spin for a while after
//! each parallel region; a second pool (rayon, std threads) started between two libtorch ops
//! fights those spinning threads for the cores. Entering a parallel region the way compiled
//! `#pragma omp parallel` code does (`GOMP_parallel`) reuses the same threads instead. The
//! symbols are looked up at run time in the libgomp that libtorch loaded, so nothing is linked.

use std::ffi::{c_int, c_uint, c_void};
use std::sync::OnceLock;

type Body = extern "C" fn(*mut c_void);
type Parallel = unsafe extern "C" fn(Body, *mut c_void, c_uint, c_uint);
type Query = unsafe extern "C" fn() -> c_int;

struct Gomp {
    parallel: Parallel,
    thread_num: Query,
    num_threads: Query,
}

fn gomp() -> Option<&'static Gomp> {
    static GOMP: OnceLock<Option<Gomp>> = OnceLock::new();
    GOMP.get_or_init(|| {
        let find = |name: &std::ffi::CStr| {
            // SAFETY: dlsym with a NUL-terminated name; a null result is handled.
            let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
            (!p.is_null()).then_some(p)
        };
        let (parallel, thread_num, num_threads) = (
            find(c"GOMP_parallel")?,
            find(c"omp_get_thread_num")?,
            find(c"omp_get_num_threads")?,
        );
        // SAFETY: these are libgomp's exported C functions with exactly these signatures.
        unsafe {
            Some(Gomp {
                parallel: std::mem::transmute::<*mut c_void, Parallel>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, Query>(thread_num),
                num_threads: std::mem::transmute::<*mut c_void, Query>(num_threads),
            })
        }
    })
    .as_ref()
}

/// Whether [`parallel`] can run (libtorch was built against libgomp, as the PyPI wheels are).
pub fn available() -> bool {
    gomp().is_some()
}

/// Runs `body(thread_index, thread_count)` once on each of libtorch's intra-op threads
/// (`tch::get_num_threads`) and returns when all are done. `body` must not panic (it would
/// abort the process). Does nothing if [`available`] is false.
pub fn parallel<F: Fn(usize, usize) + Sync>(body: F) {
    extern "C" fn trampoline<F: Fn(usize, usize) + Sync>(data: *mut c_void) {
        let gomp = gomp().expect("GOMP_parallel found");
        // SAFETY: `data` is the `&F` passed below, alive until GOMP_parallel returns.
        let body = unsafe { &*(data as *const F) };
        // SAFETY: called inside the parallel region GOMP_parallel opened.
        let (index, count) = unsafe { ((gomp.thread_num)(), (gomp.num_threads)()) };
        body(index as usize, count as usize);
    }
    if let Some(gomp) = gomp() {
        let data = &body as *const F as *mut c_void;
        let threads = tch::get_num_threads().max(1) as c_uint;
        // SAFETY: `trampoline::<F>` reads `data` as `&F`, which outlives the region.
        unsafe { (gomp.parallel)(trampoline::<F>, data, threads, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_thread_runs_once_with_its_index() {
        tch::set_num_threads(2); // loads libtorch (and with it libgomp); the team's size
        assert!(available(), "libtorch's libgomp should be loaded");
        let (seen, counts) = (AtomicUsize::new(0), AtomicUsize::new(0));
        parallel(|i, n| {
            seen.fetch_or(1 << i, Ordering::Relaxed);
            counts.fetch_add(n, Ordering::Relaxed);
        });
        assert_eq!(seen.load(Ordering::Relaxed), 0b11);
        assert_eq!(counts.load(Ordering::Relaxed), 4);
    }
}
