//! Data parallelism on libtorch's own c10d (the engine inside `torch.distributed`), reached
//! through a small C++ shim (`shim/c10d.cpp`): a TCPStore rendezvous and a Gloo process
//! group with all-reduce, broadcast, barrier and all-gather of small vectors. Gloo works on
//! CPU tensors; NCCL (CUDA) is not bound yet.
//!
//! tch binds no part of c10d. The shim compiles against the headers of the libtorch oxrl
//! links, with declarations standing in for the Gloo headers torch's wheel leaves out
//! (`shim/gloo/README.md`), and calls the implementation inside `libtorch_cpu.so`.

mod ffi;
pub mod launch;
mod rendezvous;
mod store;

use std::ffi::{c_int, c_void, CString};
use std::ptr::NonNull;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

pub use rendezvous::Rendezvous;
pub use store::Store;

use crate::error::{Error, Result};

/// How [`ProcessGroup::all_reduce`] combines the ranks' values (Gloo has no average: divide
/// a sum by [`ProcessGroup::world_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Elementwise sum.
    Sum,
    /// Elementwise maximum.
    Max,
    /// Elementwise minimum.
    Min,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Max => 1,
            ReduceOp::Min => 2,
        }
    }
}

/// `[dist]`: how the ranks of a data-parallel run talk (`oxrl train --nproc N`, or a
/// launcher's `RANK`/`WORLD_SIZE`/`MASTER_ADDR`/`MASTER_PORT`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DistSection {
    /// `auto` or `gloo` (CPU tensors); `nccl` is refused by name until it is bound.
    pub backend: Backend,
    /// How long a rank waits for the others (to join, or in any collective) before the run
    /// stops with an error naming the operation: a dead or hung rank ends the job.
    pub timeout_seconds: u64,
}

impl Default for DistSection {
    fn default() -> Self {
        Self {
            backend: Backend::Auto,
            timeout_seconds: 300,
        }
    }
}

impl DistSection {
    /// Refuses, by name, what is not bound.
    pub fn validate(&self) -> Result<()> {
        if self.backend == Backend::Nccl {
            return Err(Error::Invalid(
                "dist.backend = \"nccl\" is not implemented yet (oxrl binds Gloo only: CPU tensors); use \"auto\" or \"gloo\"".into(),
            ));
        }
        Ok(())
    }

    /// The collectives' timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_seconds.max(1))
    }
}

/// A c10d backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Gloo on the CPU (the only one bound so far).
    Auto,
    /// Gloo: CPU tensors.
    Gloo,
    /// NCCL: CUDA tensors. Not bound yet.
    Nccl,
}

/// Gradients are all-reduced in flat buckets of about this many bytes (DDP's default): few
/// enough calls that latency does not dominate, small enough that the flat copy is cheap.
pub const BUCKET_BYTES: usize = 25 << 20;

/// This process's membership of a group of ranks: every collective must be called by every
/// rank, in the same order, with tensors of the same shapes and dtypes.
pub struct ProcessGroup {
    raw: NonNull<c_void>,
    rank: usize,
    world_size: usize,
    timeout: Duration,
}

// SAFETY: c10d's process groups may be used from any thread (one at a time here: `&self`
// methods are called in program order by the thread that owns the group).
unsafe impl Send for ProcessGroup {}

impl std::fmt::Debug for ProcessGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessGroup")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .finish()
    }
}

impl ProcessGroup {
    /// Joins the Gloo group that `at` describes: rank 0 serves the TCPStore at
    /// `MASTER_ADDR:MASTER_PORT`, every rank connects to it. Blocks until all ranks have
    /// joined; fails after `timeout` (which also bounds every later collective), naming
    /// what was waited for.
    pub fn gloo(at: &Rendezvous, timeout: Duration) -> Result<Self> {
        let fail = |msg: String| Error::Collective {
            rank: at.rank,
            op: "rendezvous",
            msg,
        };
        let host = CString::new(at.master_addr.as_str())
            .map_err(|_| fail(format!("MASTER_ADDR {:?} holds a NUL", at.master_addr)))?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: `host` outlives the call; `raw` receives a group the shim allocated.
        let error = unsafe {
            ffi::oxrl_c10d_new_gloo(
                host.as_ptr(),
                at.master_port,
                at.rank as c_int,
                at.world_size as c_int,
                millis(timeout),
                &mut raw,
            )
        };
        if let Some(msg) = ffi::take_error(error) {
            return Err(fail(match msg.strip_prefix("membership: ") {
                Some(why) => format!("{why} (store at {}:{})", at.master_addr, at.master_port),
                None => format!(
                    "{} ranks did not meet at {}:{} within {timeout:?}: {msg}",
                    at.world_size, at.master_addr, at.master_port
                ),
            }));
        }
        let raw = NonNull::new(raw).ok_or_else(|| fail("the shim returned no group".into()))?;
        Ok(Self {
            raw,
            rank: at.rank,
            world_size: at.world_size,
            timeout,
        })
    }

    /// This process's rank, `0..world_size`.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many ranks the group has.
    pub fn world_size(&self) -> usize {
        self.world_size
    }

    /// Reduces `tensor` (dense, contiguous, on the CPU) across ranks in place.
    pub fn all_reduce(&self, tensor: &Tensor, op: ReduceOp) -> Result<()> {
        self.check("all_reduce", tensor)?;
        let ptrs = [tensor.as_ptr() as *mut _];
        // SAFETY: the group is alive; the tensor handle outlives the call.
        let error = unsafe {
            ffi::oxrl_c10d_all_reduce(
                self.raw.as_ptr(),
                ptrs.as_ptr(),
                1,
                op.code(),
                millis(self.timeout),
            )
        };
        self.result("all_reduce", error)
    }

    /// `values` reduced elementwise across ranks (in f64: exact for counts), for the small
    /// statistics a step shares.
    pub fn all_reduce_values(&self, values: &[f64], op: ReduceOp) -> Result<Vec<f64>> {
        let t = Tensor::from_slice(values);
        self.all_reduce(&t, op)?;
        Ok(Vec::<f64>::try_from(&t)?)
    }

    /// Sums `tensors` across ranks in place, in flat buckets of about [`BUCKET_BYTES`] (one
    /// all-reduce per bucket); `mean` then divides by the world size. For gradients: any
    /// shapes, each rank passing the same list.
    pub fn all_reduce_buckets(&self, tensors: &[Tensor], mean: bool) -> Result<()> {
        for bucket in buckets(tensors, BUCKET_BYTES) {
            let mut flat = Tensor::cat(
                &bucket.iter().map(|t| t.reshape([-1])).collect::<Vec<_>>(),
                0,
            );
            self.all_reduce(&flat, ReduceOp::Sum)?;
            if mean {
                let _ = flat.g_div_scalar_(self.world_size as f64);
            }
            let mut offset = 0;
            for t in bucket {
                let n = t.numel() as i64;
                let mut t = t.shallow_clone();
                tch::no_grad(|| t.copy_(&flat.narrow(0, offset, n).view_as(&t)));
                offset += n;
            }
        }
        Ok(())
    }

    /// Copies rank `root`'s `tensor` into every other rank's, in place.
    pub fn broadcast(&self, tensor: &Tensor, root: usize) -> Result<()> {
        self.check("broadcast", tensor)?;
        let ptrs = [tensor.as_ptr() as *mut _];
        // SAFETY: as in `all_reduce`.
        let error = unsafe {
            ffi::oxrl_c10d_broadcast(
                self.raw.as_ptr(),
                ptrs.as_ptr(),
                1,
                root as c_int,
                millis(self.timeout),
            )
        };
        self.result("broadcast", error)
    }

    /// A handle on the job's key-value store, usable from any thread.
    pub fn store(&self) -> Store {
        Store::of_group(self.raw, self.rank)
    }

    /// Returns when every rank has called it (or fails after the timeout).
    pub fn barrier(&self) -> Result<()> {
        // SAFETY: the group is alive.
        let error = unsafe { ffi::oxrl_c10d_barrier(self.raw.as_ptr(), millis(self.timeout)) };
        self.result("barrier", error)
    }

    /// Every rank's `values`, by rank: for small metric vectors. Every rank must pass the
    /// same number of values (checked).
    pub fn all_gather(&self, values: &[f64]) -> Result<Vec<Vec<f64>>> {
        let n = values.len() as f64;
        let lengths = self.all_reduce_values(&[n, -n], ReduceOp::Max)?;
        let (longest, shortest) = (lengths[0], -lengths[1]);
        if longest != n || shortest != n {
            return Err(Error::Collective {
                rank: self.rank,
                op: "all_gather",
                msg: format!(
                    "ranks passed {shortest}..{longest} values, this one {n}: every rank must pass as many"
                ),
            });
        }
        let rows = Tensor::zeros(
            [self.world_size as i64, values.len() as i64],
            (Kind::Double, tch::Device::Cpu),
        );
        rows.get(self.rank as i64)
            .copy_(&Tensor::from_slice(values));
        self.all_reduce(&rows, ReduceOp::Sum)?;
        Ok(Vec::<Vec<f64>>::try_from(&rows)?)
    }

    /// Every rank's `bytes`, by rank; ranks may pass different lengths. For text (log
    /// lines) rank 0 writes for the job.
    pub fn gather_bytes(&self, bytes: &[u8]) -> Result<Vec<Vec<u8>>> {
        let lengths: Vec<usize> = (self.all_gather(&[bytes.len() as f64])?.into_iter())
            .map(|row| row[0] as usize)
            .collect();
        let longest = lengths.iter().copied().max().unwrap_or(0);
        if longest == 0 {
            return Ok(vec![Vec::new(); self.world_size]);
        }
        let rows = Tensor::zeros(
            [self.world_size as i64, longest as i64],
            (Kind::Uint8, tch::Device::Cpu),
        );
        if !bytes.is_empty() {
            rows.get(self.rank as i64)
                .narrow(0, 0, bytes.len() as i64)
                .copy_(&Tensor::from_slice(bytes));
        }
        self.all_reduce(&rows, ReduceOp::Sum)?;
        let flat = Vec::<u8>::try_from(rows.reshape([-1]))?;
        Ok((flat.chunks(longest).zip(lengths))
            .map(|(row, n)| row[..n].to_vec())
            .collect())
    }

    /// Every rank's `values` concatenated in rank order; ranks may pass different counts.
    pub fn gather_values(&self, values: &[f64]) -> Result<Vec<f64>> {
        let counts = Tensor::zeros([self.world_size as i64], (Kind::Double, tch::Device::Cpu));
        let _ = counts.get(self.rank as i64).fill_(values.len() as f64);
        self.all_reduce(&counts, ReduceOp::Sum)?;
        let counts: Vec<usize> = Vec::<f64>::try_from(&counts)?
            .into_iter()
            .map(|c| c as usize)
            .collect();
        let longest = counts.iter().copied().max().unwrap_or(0);
        let mut padded = values.to_vec();
        padded.resize(longest, 0.0);
        let rows = self.all_gather(&padded)?;
        Ok(rows
            .into_iter()
            .zip(counts)
            .flat_map(|(row, n)| row.into_iter().take(n))
            .collect())
    }

    fn check(&self, op: &'static str, tensor: &Tensor) -> Result<()> {
        let problem = if tensor.device() != tch::Device::Cpu {
            Some("Gloo here reduces CPU tensors only")
        } else if !tensor.is_contiguous() {
            Some("the tensor is not contiguous")
        } else {
            None
        };
        match problem {
            Some(msg) => Err(Error::Collective {
                rank: self.rank,
                op,
                msg: msg.into(),
            }),
            None => Ok(()),
        }
    }

    fn result(&self, op: &'static str, error: *mut std::ffi::c_char) -> Result<()> {
        match ffi::take_error(error) {
            None => Ok(()),
            Some(msg) => Err(Error::Collective {
                rank: self.rank,
                op,
                msg: format!(
                    "{msg} (a peer rank died, hung past {:?}, or called another collective)",
                    self.timeout
                ),
            }),
        }
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by `oxrl_c10d_new_gloo`, freed once.
        unsafe { ffi::oxrl_c10d_free(self.raw.as_ptr()) };
    }
}

/// `tensors` cut into runs of one dtype and device holding about `bytes` each (a tensor
/// larger than `bytes` is a bucket of its own).
fn buckets(tensors: &[Tensor], bytes: usize) -> Vec<Vec<&Tensor>> {
    let mut out: Vec<Vec<&Tensor>> = Vec::new();
    let mut filled = 0;
    for t in tensors {
        let size = t.numel() * t.kind().elt_size_in_bytes();
        let fits = out.last().is_some_and(|b| {
            let first = b[0];
            first.kind() == t.kind() && first.device() == t.device() && filled + size <= bytes
        });
        if fits {
            out.last_mut().expect("a bucket").push(t);
            filled += size;
        } else {
            out.push(vec![t]);
            filled = size;
        }
    }
    out
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_parses_and_refuses_nccl_by_name() {
        let section: DistSection = toml::from_str("timeout_seconds = 5").unwrap();
        assert_eq!(section.timeout(), Duration::from_secs(5));
        assert_eq!(section.backend, Backend::Auto);
        section.validate().unwrap();
        let nccl: DistSection = toml::from_str("backend = \"nccl\"").unwrap();
        let err = nccl.validate().unwrap_err().to_string();
        assert!(
            err.contains("dist.backend = \"nccl\" is not implemented"),
            "{err}"
        );
        assert!(toml::from_str::<DistSection>("timeout = 5").is_err());
    }

    #[test]
    fn buckets_hold_runs_of_one_dtype_up_to_the_size() {
        let f = |n: i64| Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
        let d = |n: i64| Tensor::zeros([n], (Kind::Double, tch::Device::Cpu));
        let tensors = [f(2), f(2), f(8), d(1), f(1)];
        let sizes: Vec<Vec<i64>> = buckets(&tensors, 16)
            .iter()
            .map(|b| b.iter().map(|t| t.numel() as i64).collect())
            .collect();
        assert_eq!(sizes, [vec![2, 2], vec![8], vec![1], vec![1]]);
    }
}
