//! Checkpoints: everything needed to continue a run exactly — policy (and critic) weights,
//! optimizer moments, the data cursor and the step — written to a temporary directory and
//! renamed into place, so a run killed at any moment leaves either the old or the new
//! checkpoint, never half of one. A manifest records every file's size and CRC-32, so a
//! checkpoint damaged later (a truncated file, a bad disk) is detected before it loads, and
//! `--resume auto` falls back to the newest intact one. The rollout RNG needs no saving: each
//! step's sampling seed is derived from the run seed and the step number.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use oxrl_envs::Cursor;
use serde::{Deserialize, Serialize};

use crate::learner::Learner;
use crate::weights;

const STATE: &str = "state.json";
const MODEL: &str = "model.safetensors";
const CRITIC: &str = "critic.safetensors";
const OPTIMIZER: &str = "optimizer.safetensors";
const MANIFEST: &str = "manifest.json";
/// LoRA options of a checkpoint trained with adapters.
pub const LORA: &str = "lora.json";

/// The loop's own state at a step boundary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The next step to run.
    pub next_step: usize,
    /// The data sampler's position.
    pub cursor: Cursor,
}

/// Where a run's checkpoints live.
pub fn root(output_dir: &Path) -> PathBuf {
    output_dir.join("checkpoints")
}

/// Writes a checkpoint for `state` and keeps only the newest `keep_last`.
/// `describe` writes the files that make the checkpoint self-contained (model config,
/// tokenizer, LoRA options) so `oxrl export` needs nothing else.
pub fn save(
    root: &Path,
    learner: &Learner,
    state: &TrainState,
    keep_last: usize,
    describe: &dyn Fn(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let name = format!("step-{:08}", state.next_step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    weights::save_safetensors(learner.var_store(), &tmp.join(MODEL), None)?;
    if let Some(critic) = learner.critic_var_store() {
        weights::save_safetensors(critic, &tmp.join(CRITIC), None)?;
    }
    learner.save_optimizer(&tmp.join(OPTIMIZER))?;
    describe(&tmp)?;
    std::fs::write(tmp.join(STATE), serde_json::to_string_pretty(state)?)?;
    write_manifest(&tmp)?;
    let dir = root.join(&name);
    publish(&tmp, &dir)?;
    prune(root, keep_last.max(1))?;
    Ok(dir)
}

/// Moves the finished directory `tmp` to `dir`, so that a reader (or a kill at any moment)
/// finds the old or the new directory, whole: one rename, or where `dir` exists one atomic
/// swap (`renameat2` with `RENAME_EXCHANGE`) before the old one is removed. Filesystems
/// without the swap remove the old `dir` first.
pub fn publish(tmp: &Path, dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        if exchange(tmp, dir).is_ok() {
            // `tmp` now holds the old directory.
            return std::fs::remove_dir_all(tmp)
                .with_context(|| format!("removing the replaced {}", dir.display()));
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("replacing {}", dir.display()))?;
    }
    std::fs::rename(tmp, dir).with_context(|| format!("publishing {}", dir.display()))
}

/// Swaps two paths in one step.
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: two valid NUL-terminated paths, relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A file's size and CRC-32, as the manifest records them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct FileSum {
    bytes: u64,
    crc32: u32,
}

fn file_sum(path: &Path) -> anyhow::Result<FileSum> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileSum {
        bytes,
        crc32: hasher.finalize(),
    })
}

/// Records the size and checksum of every file in `dir`.
fn write_manifest(dir: &Path) -> anyhow::Result<()> {
    let mut sums = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_file() {
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            sums.insert(name, file_sum(&path)?);
        }
    }
    std::fs::write(dir.join(MANIFEST), serde_json::to_string_pretty(&sums)?)?;
    Ok(())
}

/// Checks a checkpoint against its manifest: every file present, of its recorded size and
/// checksum. A checkpoint written before manifests existed passes unchecked.
pub fn verify(dir: &Path) -> anyhow::Result<()> {
    let manifest = dir.join(MANIFEST);
    let Ok(text) = std::fs::read_to_string(&manifest) else {
        return Ok(());
    };
    let sums: BTreeMap<String, FileSum> = serde_json::from_str(&text)
        .with_context(|| format!("{} is damaged", manifest.display()))?;
    for (name, want) in sums {
        let path = dir.join(&name);
        let got = file_sum(&path)?;
        anyhow::ensure!(
            got.bytes == want.bytes,
            "{}: {} bytes where the manifest records {} (truncated?)",
            path.display(),
            got.bytes,
            want.bytes
        );
        anyhow::ensure!(
            got.crc32 == want.crc32,
            "{}: its checksum differs from the manifest's (corrupted)",
            path.display()
        );
    }
    Ok(())
}

/// The newest checkpoint under `root` that passes [`verify`], saying on stderr which newer
/// ones were skipped as damaged. `None` when there are none at all; an error when there are
/// checkpoints but every one is damaged.
pub fn newest_intact(root: &Path) -> anyhow::Result<Option<PathBuf>> {
    let all = list(root)?;
    for dir in all.iter().rev() {
        match verify(dir) {
            Ok(()) => return Ok(Some(dir.clone())),
            Err(e) => eprintln!(
                "warning: checkpoint {} is damaged ({e:#}); falling back to the one before it",
                dir.display()
            ),
        }
    }
    match all.is_empty() {
        true => Ok(None),
        false => anyhow::bail!(
            "every checkpoint in {} is damaged; nothing to resume from",
            root.display()
        ),
    }
}

/// Complete checkpoints under `root`, oldest first.
pub fn list(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("step-"))
        })
        .filter(|p| p.join(STATE).exists())
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn prune(root: &Path, keep_last: usize) -> anyhow::Result<()> {
    let dirs = list(root)?;
    for old in &dirs[..dirs.len().saturating_sub(keep_last)] {
        std::fs::remove_dir_all(old).with_context(|| format!("removing {}", old.display()))?;
    }
    Ok(())
}

/// Loads a checkpoint into `learner` and returns the loop state it recorded.
pub fn restore(dir: &Path, learner: &mut Learner) -> anyhow::Result<TrainState> {
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path)
        .with_context(|| format!("{} is not a checkpoint", dir.display()))?;
    verify(dir)?;
    let state: TrainState =
        serde_json::from_str(&text).with_context(|| state_path.display().to_string())?;
    load_weights(learner.var_store(), &dir.join(MODEL))?;
    if let Some(critic) = learner.critic_var_store() {
        load_weights(critic, &dir.join(CRITIC))?;
    }
    learner.load_optimizer(&dir.join(OPTIMIZER))?;
    Ok(state)
}

fn load_weights(vs: &tch::nn::VarStore, path: &Path) -> anyhow::Result<()> {
    let report = weights::load_into(vs, weights::read_safetensors(path)?);
    anyhow::ensure!(
        report.is_complete(),
        "{}: {}",
        path.display(),
        report.describe()
    );
    Ok(())
}

/// Writes a checkpoint's policy as a plain HF directory (adapters merged): `oxrl export`.
pub fn export(checkpoint: &Path, out: &Path) -> anyhow::Result<()> {
    use crate::learner::lora::{self, LoraConfig};
    use crate::model::{Llama, ModelConfig};
    let config = ModelConfig::from_file(&checkpoint.join("config.json"))?;
    let lora_path = checkpoint.join(LORA);
    let lora: Option<LoraConfig> = match std::fs::read_to_string(&lora_path) {
        Ok(text) => {
            Some(serde_json::from_str(&text).with_context(|| lora_path.display().to_string())?)
        }
        Err(_) => None,
    };
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let spec = lora.as_ref().map(|l| l.spec()).transpose()?;
    let _model = Llama::with_lora(&vs.root(), &config, spec.as_ref());
    load_weights(&vs, &checkpoint.join(MODEL))?;
    match &lora {
        Some(l) => lora::export_merged(&vs, &config, l, out, None)?,
        None => crate::pretrained::save_model_dir(&vs, &config, out, None)?,
    }
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ] {
        if checkpoint.join(file).exists() {
            std::fs::copy(checkpoint.join(file), out.join(file))?;
        }
    }
    Ok(())
}
