//! The replicas a run generates on: a request's prompts spread over them (least outstanding
//! requests first, a prompt's whole group on one replica so it shares the prefix), and the
//! learner's weights synced to all of them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tch::nn::VarStore;
use tch::{Device, Tensor};

use super::client::{CompletionParams, Replica};
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

    /// Generates every completion of `req`, prompt `i` with seed `req.seed + i` (a prompt's
    /// group draws from one seeded request). Prompts run concurrently; each goes to the
    /// replica with the fewest requests in flight.
    pub fn generate(&self, req: &GenerationRequest) -> anyhow::Result<Vec<Generated>> {
        let results: Vec<anyhow::Result<Vec<Generated>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = req
                .prompts
                .iter()
                .enumerate()
                .map(|(i, prompt)| {
                    let replica = self.least_busy();
                    scope.spawn(move || {
                        let params = CompletionParams {
                            n: req.n,
                            max_tokens: req.max_tokens,
                            sampling: &req.sampling,
                            stop: &req.stop,
                            seed: req.seed.wrapping_add(i as u64),
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
                            })
                            .collect())
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("request thread panicked")))
                })
                .collect()
        });
        let mut out = Vec::with_capacity(req.prompts.len() * req.n);
        for r in results {
            out.extend(r?);
        }
        Ok(out)
    }

    /// The replica with the fewest requests in flight (the first among equals).
    fn least_busy(&self) -> &Replica {
        self.replicas
            .iter()
            .min_by_key(|r| r.outstanding())
            .unwrap_or(&self.replicas[0])
    }

    /// Writes the weights of `vs` as safetensors into `root/v{version}` and has every
    /// replica reload them (and drop its prefix cache, computed with the old weights); older
    /// version directories under `root` are removed.
    pub fn sync_weights(
        &self,
        vs: &VarStore,
        config: &ModelConfig,
        root: &Path,
        version: u64,
    ) -> anyhow::Result<PathBuf> {
        let dir = root.join(format!("v{version:08}"));
        write_weights(vs, config, &dir)
            .with_context(|| format!("writing weights for vLLM to {}", dir.display()))?;
        for replica in &self.replicas {
            replica.reload_weights(&dir)?;
        }
        remove_older(root, &dir);
        Ok(dir)
    }
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
    if config.tie_word_embeddings {
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
