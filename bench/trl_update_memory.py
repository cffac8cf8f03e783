"""TRL's GRPOTrainer counterpart of `oxrl bench update`: GRPO steps of a random
Qwen2.5-0.5B-shaped Qwen2ForCausalLM (f32, CPU), each on G completions of exactly N tokens
(EOS suppressed by `min_new_tokens`) after a prompt of P random tokens; beta 0, lr 1e-6, DAPO
loss, gradient checkpointing on, f32 (bf16 off, as oxrl's run). The completions of all
UPDATES steps are generated at once before the first (`steps_per_generation`).

Prints `key=value` lines: generation's time (TRL's `_generate_and_score_completions`:
sampling, rewards, advantages, old logprobs) and peak RSS; per update (forward, backward,
optimizer step) its time, the RSS it started from and its peak RSS (VmHWM). Before each
update, as `oxrl bench update` does, freed memory is handed back to the OS (`malloc_trim`)
and VmHWM is reset to the current RSS, so each peak is the update's own. The last line is
the last update's, with the RSS after the model was built (baseline). The first update is
the one that allocates AdamW's moments (torch creates them at the first `step`).

usage: trl_update_memory.py THREADS [UPDATES=2] [GROUP=4] [PROMPT_TOKENS=64] [COMPLETION_TOKENS=512]
                            [OPTIM=adamw_torch] [DTYPE=f32]
OPTIM: HF `optim` (adamw_bnb_8bit needs bitsandbytes). DTYPE bf16: `bf16=True`, HF's mixed
precision (f32 weights, gradients and moments; forward and backward under bf16 autocast).
"""
import ctypes
import gc
import os
import re
import resource
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

THREADS = int(sys.argv[1])
UPDATES = int(sys.argv[2]) if len(sys.argv) > 2 else 2
GROUP = int(sys.argv[3]) if len(sys.argv) > 3 else 4
PROMPT_TOKENS = int(sys.argv[4]) if len(sys.argv) > 4 else 64
COMPLETION_TOKENS = int(sys.argv[5]) if len(sys.argv) > 5 else 512
OPTIM = sys.argv[6] if len(sys.argv) > 6 else "adamw_torch"
DTYPE = sys.argv[7] if len(sys.argv) > 7 else "f32"
assert DTYPE in ("f32", "bf16"), DTYPE
VOCAB = 151_936
EOS = 151_643  # Qwen2.5's <|endoftext|> id; suppressed until COMPLETION_TOKENS anyway
MIB = 1024 * 1024


def status_mib(field):
    """A kB field of /proc/self/status in MiB (VmRSS: now, VmHWM: the peak)."""
    kb = re.search(rf"^{field}:\s+(\d+) kB", open("/proc/self/status").read(), re.M).group(1)
    return int(kb) / 1024


def reset_peak():
    """VmHWM := VmRSS (Linux 4.0+), so the peak that follows excludes set-up transients."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def word_tokenizer():
    """A tokenizer whose VOCAB words `t0 .. t{VOCAB-1}` are the ids themselves (there is no
    Qwen tokenizer offline, and the model is random: text does not matter, shapes do)."""
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=f"t{EOS}", pad_token=f"t{EOS}")


def cpu_seconds():
    """User + system CPU seconds of this process so far (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def release_free_memory():
    """Hands memory malloc holds but nobody uses back to the OS (glibc's malloc_trim)."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


class StepMeter(TrainerCallback):
    """Per optimizer step: wall time, RSS at its start and peak RSS. Each step starts from a
    clean slate (freed memory released, VmHWM reset); so does the update after generation."""

    def __init__(self):
        self.steps, self.start = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.begin_update()

    def begin_update(self):
        release_free_memory()
        self.start_rss = status_mib("VmRSS")
        reset_peak()
        self.start, self.cpu_start = time.perf_counter(), cpu_seconds()

    def on_step_end(self, args, state, control, **kw):
        self.steps.append({
            "seconds": time.perf_counter() - self.start, "cpu": cpu_seconds() - self.cpu_start,
            "peak": status_mib("VmHWM"), "start": self.start_rss,
        })


def rewards(completions, **_):
    """Rewards spread over [0, 1] across the group, so every advantage is non-zero."""
    n = len(completions)
    return [i / max(n - 1, 1) for i in range(n)]


torch.set_num_threads(THREADS)
torch.manual_seed(0)
tokenizer = word_tokenizer()
config = Qwen2Config(
    vocab_size=VOCAB, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
    rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True,
    use_sliding_window=False, bos_token_id=None, eos_token_id=EOS, pad_token_id=EOS,
)
model = Qwen2ForCausalLM(config).float()  # HF init: N(0, 0.02), norms 1
param_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
prompts = torch.randint(0, EOS, (UPDATES, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
data = Dataset.from_list([{"prompt": " ".join(f"t{i}" for i in p)} for p in prompts.tolist()])

baseline = status_mib("VmRSS")
peak_reset = reset_peak()
meter = StepMeter()
# One generation for all updates (steps_per_generation): every update trains on GROUP
# completions of PROMPT_TOKENS + COMPLETION_TOKENS, as `oxrl bench update` does.
args = GRPOConfig(
    output_dir="/tmp/oxrl-trl-update-bench", max_steps=UPDATES, steps_per_generation=UPDATES,
    per_device_train_batch_size=GROUP, num_generations=GROUP,
    max_completion_length=COMPLETION_TOKENS, beta=0.0, learning_rate=1e-6, temperature=1.0,
    loss_type="dapo", use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
    dataloader_num_workers=0, seed=0, bf16=DTYPE == "bf16", gradient_checkpointing=True,
    optim=OPTIM,
    generation_kwargs={"min_new_tokens": COMPLETION_TOKENS},
)
trainer = GRPOTrainer(
    model=model, reward_funcs=rewards, args=args, train_dataset=data,
    processing_class=tokenizer, callbacks=[meter],
)

generate = trainer._generate_and_score_completions
generation = {}


def timed_generate(inputs):
    """TRL's generation + scoring, timed, with its peak RSS; then the update starts clean."""
    start = time.perf_counter()
    out = generate(inputs)
    generation["seconds"] = time.perf_counter() - start
    generation["peak"] = status_mib("VmHWM")
    generation["shapes"] = (tuple(out["prompt_ids"].shape), tuple(out["completion_ids"].shape))
    generation["trained_tokens"] = int(out["completion_mask"].sum())
    meter.begin_update()
    return out


trainer._generate_and_score_completions = timed_generate
trainer.train()
prompt, completion = generation["shapes"]
print(f"prompt_ids={prompt} completion_ids={completion} trained_tokens={generation['trained_tokens']}")
print(
    f"threads={torch.get_num_threads()} param_mib={param_mib:.0f} optim={OPTIM} dtype={DTYPE} "
    f"peak_reset={peak_reset} "
    f"generation_seconds={generation['seconds']:.2f} generation_peak_rss_mib={generation['peak']:.0f}"
)
for i, s in enumerate(meter.steps, 1):
    print(f"update={i} seconds={s['seconds']:.2f} cpu_seconds={s['cpu']:.1f} peak_rss_mib={s['peak']:.0f} start_rss_mib={s['start']:.0f}")
last = meter.steps[-1]
print(
    f"update_seconds={last['seconds']:.2f} update_cpu_seconds={last['cpu']:.1f} peak_rss_mib={last['peak']:.0f} "
    f"baseline_rss_mib={baseline:.0f}"
)
