//! The `oxrl` binary.

fn main() -> std::process::ExitCode {
    keep_freed_memory();
    match oxrl::cli::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Makes glibc's malloc keep freed memory for reuse instead of returning it to the kernel.
/// libtorch's CPU tensors come from malloc, and a training step allocates and frees the same
/// large buffers (logits, activations, gradients) every time; by default each one is a fresh
/// `mmap` whose pages the kernel faults in and zeroes again, ~10% of a CPU step. The cost is
/// that the process keeps its peak heap.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
