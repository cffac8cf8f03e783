//! One run per output directory: an exclusive `flock` on `output_dir/.oxrl-run.lock`, held for
//! the run's lifetime and released by the kernel when the process ends, however it ends. A
//! second run on the same directory would truncate and interleave the first one's logs and
//! checkpoints; it is refused with the holder's pid instead.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::Context;

/// The lock file's name inside `output_dir`.
pub const LOCK_FILE: &str = ".oxrl-run.lock";

/// Holds the output directory; dropping it (or exiting) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Takes `output_dir` for this process, or fails naming the process that holds it.
    pub fn acquire(output_dir: &Path) -> anyhow::Result<Self> {
        let path = output_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on a descriptor this function owns; it only reads the fd.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("pid {pid}"),
            };
            anyhow::bail!(
                "output_dir {} is in use by another oxrl run ({holder}): wait for it to finish, stop it, or set another output_dir",
                output_dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }
}
