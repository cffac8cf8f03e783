//! `oxrl train FILE --nproc N`: starts N local ranks of one run, as torchrun does: a free
//! port for the rendezvous, `RANK`/`WORLD_SIZE`/`LOCAL_RANK`/`MASTER_ADDR`/`MASTER_PORT` in
//! each rank's environment, SIGINT/SIGTERM forwarded (the ranks checkpoint and stop), exit
//! statuses collected, and the other ranks stopped as soon as one fails.

use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::rollout::vllm::free_port;

/// How long stopped ranks get to exit after SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(30);

/// Runs this binary with `args` as ranks `0..nproc` on this machine and waits for them;
/// fails naming the first rank that failed.
pub fn run_local(nproc: usize, args: &[OsString]) -> anyhow::Result<()> {
    let port = free_port().context("finding a free port for the ranks' rendezvous")?;
    let threads = std::env::var_os("OMP_NUM_THREADS").is_none().then(|| {
        // Each rank would take every core: share them, as torchrun does.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (cores / nproc).max(1)
    });
    let mut ranks = Vec::with_capacity(nproc);
    for rank in 0..nproc {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args(args)
            .env("RANK", rank.to_string())
            .env("LOCAL_RANK", rank.to_string())
            .env("WORLD_SIZE", nproc.to_string())
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string());
        if let Some(t) = threads {
            cmd.env("OMP_NUM_THREADS", t.to_string());
        }
        match cmd.spawn() {
            Ok(child) => ranks.push(child),
            Err(e) => {
                stop(&mut ranks);
                return Err(e).with_context(|| format!("starting rank {rank}"));
            }
        }
    }
    let signalled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, signalled.clone())?;
    }
    let mut statuses: Vec<Option<ExitStatus>> = vec![None; nproc];
    let mut forwarded = false;
    loop {
        for (rank, child) in ranks.iter_mut().enumerate() {
            if statuses[rank].is_none() {
                statuses[rank] = child.try_wait()?;
            }
        }
        if let Some(rank) = statuses
            .iter()
            .position(|s| s.is_some_and(|s| !s.success()))
        {
            let status = statuses[rank].expect("an exited rank");
            stop(&mut ranks);
            bail!(
                "rank {rank} of {nproc} {}; the other ranks were stopped",
                describe(status)
            );
        }
        if statuses.iter().all(Option::is_some) {
            return Ok(());
        }
        if signalled.load(Ordering::Relaxed) && !forwarded {
            // Each rank saves a checkpoint after its current step and exits cleanly.
            for child in &ranks {
                terminate(child);
            }
            forwarded = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGTERM to every rank still running, then SIGKILL to those still running after [`GRACE`].
fn stop(ranks: &mut [Child]) {
    for child in ranks.iter() {
        terminate(child);
    }
    let deadline = Instant::now() + GRACE;
    for child in ranks.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

fn terminate(child: &Child) {
    // SAFETY: kill(2) on a child's pid; a process that already exited is not reaped yet, so
    // the pid is still ours.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig}"),
        _ => format!("ended: {status}"),
    }
}
