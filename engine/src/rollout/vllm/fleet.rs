//! The replicas a run generates on: a request's prompts spread over the healthy ones (least
//! outstanding requests first, a prompt's whole group on one replica so it shares the
//! prefix), and the learner's weights synced to all of them. A replica whose request fails is
//! set aside until the caller has checked and re-synced it (`train::vllm_rollout`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::client::{CompletionParams, Replica};
use super::server::SERVED_MODEL;
use crate::learner::lora::{save_adapter, LoraConfig};
use crate::model::ModelConfig;
use crate::rollout::{Generated, GenerationRequest};

/// vLLM replicas serving the policy.
#[derive(Debug)]
pub struct Fleet {
    replicas: Vec<Replica>,
}

impl Fleet {
    /// A fleet of the servers at `urls`.
    pub fn connect(urls: &[String], timeout: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(!urls.is_empty(), "a vLLM fleet needs at least one server");
        let replicas = urls
            .iter()
            .map(|u| Replica::new(u, timeout))
            .collect::<anyhow::Result<_>>()?;
        Ok(Fleet { replicas })
    }

    /// The replicas.
    pub fn replicas(&self) -> &[Replica] {
        &self.replicas
    }

    /// Generates the completions of the prompts `prompts` of `req`, prompt `i` with seed
    /// `req.seed + req.prompt_offset + i` (a prompt's group draws from one seeded request),
    /// one try each. Prompts run concurrently; each goes to the healthy replica with the
    /// fewest requests in flight.
    /// A replica whose request fails is marked unhealthy (see [`Replica::set_healthy`]).
    pub fn generate(
        &self,
        req: &GenerationRequest,
        prompts: &[usize],
        model: &str,
    ) -> Vec<(usize, anyhow::Result<Vec<Generated>>)> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = prompts
                .iter()
                .map(|&i| {
                    let claim = self.least_busy().map(Replica::claim);
                    let handle = scope.spawn(move || {
                        let replica = claim.ok_or_else(|| {
                            anyhow::anyhow!("no healthy vLLM replica to send prompt {i} to")
                        })?;
                        let done = complete(&replica, req, i, model);
                        if done.is_err() {
                            replica.set_healthy(false);
                        }
                        done
                    });
                    (i, handle)
                })
                .collect();
            handles
                .into_iter()
                .map(|(i, h)| {
                    let result = h
                        .join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("request thread panicked")));
                    (i, result)
                })
                .collect()
        })
    }

    /// Every completion of `req` by the served base model, one try per prompt, in prompt
    /// order; the first failure is the error.
    pub fn generate_all(&self, req: &GenerationRequest) -> anyhow::Result<Vec<Generated>> {
        let all: Vec<usize> = (0..req.prompts.len()).collect();
        let mut out = Vec::with_capacity(req.prompts.len() * req.n);
        for (_, done) in self.generate(req, &all, SERVED_MODEL) {
            out.extend(done?);
        }
        Ok(out)
    }

    /// The healthy replica with the fewest requests in flight (the first among equals).
    fn least_busy(&self) -> Option<&Replica> {
        self.replicas
            .iter()
            .filter(|r| r.is_healthy())
            .min_by_key(|r| r.outstanding())
    }

    /// Writes the weights of `vs` as safetensors into `root/v{version}` and has every healthy
    /// replica reload them (and drop its prefix cache, computed with the old weights); older
    /// version directories under `root` are removed. A replica that fails to reload is marked
    /// unhealthy and its error returned beside the directory; the caller re-syncs it once it
    /// answers again.
    ///
    /// This is the one place a weight transport lives: a GPU fleet would broadcast the
    /// tensors over NCCL instead (vLLM's `/init_weight_transfer_engine` and `/update_weights`
    /// routes; docs/rollout.md, "Weight sync").
    pub fn sync_weights(
        &self,
        vs: &VarStore,
        config: &ModelConfig,
        root: &Path,
        version: u64,
    ) -> anyhow::Result<(PathBuf, Vec<anyhow::Error>)> {
        let dir = root.join(format!("v{version:08}"));
        write_weights(vs, config, &dir)
            .with_context(|| format!("writing weights for vLLM to {}", dir.display()))?;
        let failures = self.load_on_healthy(|replica| replica.reload_weights(&dir));
        remove_older(root, &dir);
        Ok((dir, failures))
    }

    /// A LoRA run's sync: writes the adapters of `vs` (PEFT files) into `root/v{version}` and
    /// has every healthy replica load them as `name`, then unload `previous`; older version
    /// directories are removed. Failures are handled as in [`sync_weights`](Self::sync_weights).
    pub fn sync_adapter(
        &self,
        vs: &VarStore,
        lora: &LoraConfig,
        root: &Path,
        (version, name, previous): (u64, &str, Option<&str>),
    ) -> anyhow::Result<(PathBuf, Vec<anyhow::Error>)> {
        let dir = root.join(format!("v{version:08}"));
        save_adapter(vs, lora, &dir)
            .with_context(|| format!("writing the LoRA adapter for vLLM to {}", dir.display()))?;
        let failures = self.load_on_healthy(|replica| {
            replica.load_adapter(name, &dir)?;
            match previous {
                Some(old) if old != name => replica.unload_adapter(old),
                _ => Ok(()),
            }
        });
        remove_older(root, &dir);
        Ok((dir, failures))
    }

    /// Runs `load` on every healthy replica; one that fails is marked unhealthy and its error
    /// returned (the caller re-syncs it once it answers again).
    fn load_on_healthy(&self, load: impl Fn(&Replica) -> anyhow::Result<()>) -> Vec<anyhow::Error> {
        let healthy = self.replicas.iter().filter(|r| r.is_healthy());
        healthy
            .filter_map(|replica| {
                let failed = load(replica).err()?;
                replica.set_healthy(false);
                Some(failed)
            })
            .collect()
    }
}

/// One try of prompt `i` of `req` on `replica`, sampling `model`.
fn complete(
    replica: &Replica,
    req: &GenerationRequest,
    i: usize,
    model: &str,
) -> anyhow::Result<Vec<Generated>> {
    let prompt = &req.prompts[i];
    let params = CompletionParams {
        n: req.n,
        max_tokens: req.max_tokens,
        sampling: &req.sampling,
        stop: &req.stop,
        seed: req.seed.wrapping_add((req.prompt_offset + i) as u64),
        model,
    };
    let done = replica
        .complete(prompt, &params)
        .with_context(|| format!("prompt {i} ({} tokens)", prompt.len()))?;
    Ok(done
        .into_iter()
        .enumerate()
        .map(|(j, c)| Generated {
            prompt_index: i,
            sample_index: j,
            tokens: c.tokens,
            logprobs: c.logprobs,
            finish_reason: c.finish_reason,
            learner_logprobs: None,
        })
        .collect())
}

/// `model.safetensors` with every parameter of `vs`, and for a model with tied embeddings
/// `lm_head.weight` too: vLLM's in-place reload loads each module from the file and leaves a
/// tied head it finds no weight for as it was ("ParallelLMHead: Failed to load weights"), so
/// without it the server would keep the old output layer.
fn write_weights(vs: &VarStore, config: &ModelConfig, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    if config.tied_embeddings() {
        let embed = tensors
            .iter()
            .find(|(name, _)| name == EMBED)
            .map(|(_, t)| t.shallow_clone())
            .with_context(|| format!("a tied model without {EMBED}"))?;
        tensors.push((LM_HEAD.to_string(), embed));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors"))?;
    Ok(())
}

const EMBED: &str = "model.embed_tokens.weight";
const LM_HEAD: &str = "lm_head.weight";

/// Removes every `v*` directory under `root` except `keep`.
fn remove_older(root: &Path, keep: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_version = entry.file_name().to_string_lossy().starts_with('v');
        if is_version && path != keep && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}
