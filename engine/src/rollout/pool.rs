//! Rollout workers on their own threads, fed by crossbeam channels, streaming results back as
//! each request finishes. Weight updates are versioned and applied between requests:
//!
//! - **shared** weights: the worker's parameters are the learner's own storage
//!   ([`share_weights`]); an update is only a version bump, nothing is copied. The caller must
//!   not step the optimizer while such a worker generates (synchronous RL).
//! - **copied** weights: the worker keeps its own parameters and an update copies a snapshot
//!   into them, so it can keep generating from an older version while the learner trains
//!   (asynchronous RL, with [`Staleness`] bounding how old a sample may be).

use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{select, unbounded, Receiver, Sender};
use tch::nn::VarStore;
use tch::Tensor;

use super::generate::{generate_batch, Generated, GenerationRequest};
use crate::error::{Error, Result};
use crate::model::Llama;
use crate::tokenizer::Tokenizer;

/// A worker's model: its parameters and the network built on them.
pub struct WorkerModel {
    /// The parameters (shared with the learner, or a copy).
    pub vs: VarStore,
    /// The network.
    pub model: Llama,
}

/// A new policy for the workers.
pub enum WeightUpdate {
    /// Workers share the learner's storage: the weights already changed in place.
    Shared {
        /// The new policy version.
        version: u64,
    },
    /// Copy these tensors (by parameter name) into each worker's own parameters.
    Copy {
        /// The new policy version.
        version: u64,
        /// A snapshot of the learner's parameters ([`snapshot`]).
        tensors: Arc<Snapshot>,
    },
}

/// Detached copies of a model's parameters, safe to read from any thread.
pub struct Snapshot(Vec<(String, Tensor)>);

// SAFETY: the snapshot's tensors are private deep copies that are never written after
// creation; libtorch allows concurrent reads of one tensor from several threads.
unsafe impl Sync for Snapshot {}

/// Deep-copies the parameters of `vs`.
pub fn snapshot(vs: &VarStore) -> Snapshot {
    tch::no_grad(|| {
        Snapshot(
            vs.variables()
                .into_iter()
                .map(|(n, t)| (n, t.detach().copy()))
                .collect(),
        )
    })
}

/// Points every parameter of `worker` at the storage of the same-named parameter of
/// `learner`: later in-place updates by the learner are seen by the worker without a copy.
pub fn share_weights(learner: &VarStore, worker: &VarStore) -> Result<()> {
    let src = learner.variables();
    for (name, mut var) in worker.variables() {
        let t = src
            .get(&name)
            .ok_or_else(|| Error::Invalid(format!("the learner has no parameter {name}")))?;
        var.set_data(t);
    }
    Ok(())
}

/// The result of one request.
#[derive(Debug)]
pub struct RolloutResult {
    /// The id `submit` returned.
    pub id: u64,
    /// The policy version that generated it.
    pub policy_version: u64,
    /// The completions, or why generation failed.
    pub generated: Result<Vec<Generated>>,
}

enum Control {
    Update {
        version: u64,
        tensors: Option<Arc<Snapshot>>,
    },
    Shutdown,
}

struct Job {
    id: u64,
    request: GenerationRequest,
}

/// A pool of rollout workers.
pub struct RolloutPool {
    jobs: Option<Sender<Job>>,
    controls: Vec<Sender<Control>>,
    results: Receiver<RolloutResult>,
    handles: Vec<JoinHandle<()>>,
    next_id: u64,
}

impl RolloutPool {
    /// Starts one thread per worker model, all at policy `version`. `tokenizer` is needed
    /// only for stop strings.
    pub fn start(
        workers: Vec<WorkerModel>,
        version: u64,
        tokenizer: Option<Arc<Tokenizer>>,
    ) -> Self {
        let (job_tx, job_rx) = unbounded::<Job>();
        let (result_tx, results) = unbounded();
        let mut controls = Vec::new();
        let mut handles = Vec::new();
        for (i, worker) in workers.into_iter().enumerate() {
            let (control_tx, control_rx) = unbounded();
            controls.push(control_tx);
            let state = WorkerState {
                worker,
                version,
                tokenizer: tokenizer.clone(),
            };
            let (jobs, results) = (job_rx.clone(), result_tx.clone());
            let handle = std::thread::Builder::new()
                .name(format!("oxrl-rollout-{i}"))
                .spawn(move || state.run(control_rx, jobs, results))
                .expect("spawning a rollout thread");
            handles.push(handle);
        }
        Self {
            jobs: Some(job_tx),
            controls,
            results,
            handles,
            next_id: 0,
        }
    }

    /// Queues a request for the next free worker; returns its id.
    pub fn submit(&mut self, request: GenerationRequest) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        // The receivers live as long as the workers, which live as long as the pool.
        let jobs = self.jobs.as_ref().expect("pool is running");
        jobs.send(Job { id, request })
            .expect("rollout workers are running");
        id
    }

    /// Sends a new policy to every worker; each applies it before its next request, so
    /// every request submitted after this call runs on the new weights.
    pub fn update_weights(&self, update: WeightUpdate) {
        for control in &self.controls {
            let msg = match &update {
                WeightUpdate::Shared { version } => Control::Update {
                    version: *version,
                    tensors: None,
                },
                WeightUpdate::Copy { version, tensors } => Control::Update {
                    version: *version,
                    tensors: Some(tensors.clone()),
                },
            };
            // A worker that already exited has reported its failure through `results`.
            let _ = control.send(msg);
        }
    }

    /// The next finished request (blocking).
    pub fn recv(&self) -> Result<RolloutResult> {
        self.results
            .recv()
            .map_err(|_| Error::Invalid("all rollout workers have stopped".into()))
    }

    /// Stops the workers after their current request and waits for them.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.jobs = None;
        for control in &self.controls {
            let _ = control.send(Control::Shutdown);
        }
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Drop for RolloutPool {
    fn drop(&mut self) {
        self.stop();
    }
}

struct WorkerState {
    worker: WorkerModel,
    version: u64,
    tokenizer: Option<Arc<Tokenizer>>,
}

impl WorkerState {
    fn run(
        mut self,
        controls: Receiver<Control>,
        jobs: Receiver<Job>,
        results: Sender<RolloutResult>,
    ) {
        loop {
            // Updates queued while the last request ran take effect before the next one.
            while let Ok(control) = controls.try_recv() {
                if !self.apply(control) {
                    return;
                }
            }
            select! {
                recv(controls) -> control => {
                    let Ok(control) = control else { return };
                    if !self.apply(control) {
                        return;
                    }
                }
                recv(jobs) -> job => {
                    let Ok(job) = job else { return };
                    let generated = generate_batch(&self.worker.model, &job.request, self.tokenizer.as_deref());
                    let result = RolloutResult { id: job.id, policy_version: self.version, generated };
                    if results.send(result).is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Applies a control message; false means stop.
    fn apply(&mut self, control: Control) -> bool {
        match control {
            Control::Shutdown => false,
            Control::Update { version, tensors } => {
                if let Some(snapshot) = tensors {
                    let vars = self.worker.vs.variables();
                    tch::no_grad(|| {
                        for (name, t) in &snapshot.0 {
                            if let Some(var) = vars.get(name) {
                                var.shallow_clone().copy_(t);
                            }
                        }
                    });
                }
                self.version = version;
                true
            }
        }
    }
}

/// Bounded staleness for asynchronous rollouts: a sample generated by policy version `v` is
/// used at learner version `current` only if `current - v <= max`; the rest are counted.
#[derive(Debug, Clone, Default)]
pub struct Staleness {
    /// Largest accepted version gap.
    pub max: u64,
    /// Samples dropped so far.
    pub dropped: u64,
}

impl Staleness {
    /// Whether a sample of `version` is fresh enough at `current`; counts it if not.
    pub fn accept(&mut self, version: u64, current: u64, samples: usize) -> bool {
        let ok = current.saturating_sub(version) <= self.max;
        if !ok {
            self.dropped += samples as u64;
        }
        ok
    }
}
