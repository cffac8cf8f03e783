"""TRL's GRPOTrainer on the same model, prompts, group size, completion length and threads as
bench/grpo_vs_trl.toml; prints `trl_s_per_step=<v>` (mean over the steps after the first).

usage: trl_grpo.py MODEL_DIR PROMPTS_JSONL STEPS THREADS
"""
import json
import os
import re
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model_dir, prompts_path, steps, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
rows = [r for r in map(json.loads, open(prompts_path)) if "question" in r and "answer" in r]
data = Dataset.from_list(
    [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"].split("####")[-1].strip()} for r in rows]
)


def correct(completions, answer, **_):
    """1 when the last number of the completion is the answer (a cheap stand-in; scoring is
    not what this benchmark times)."""
    out = []
    for c, a in zip(completions, answer):
        nums = re.findall(r"-?\d+", c[0]["content"] if isinstance(c, list) else c)
        out.append(1.0 if nums and nums[-1] == a else 0.0)
    return out


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self.start = [], None

    def on_step_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self.start)


timer = StepTimer()
config = GRPOConfig(
    output_dir="/tmp/oxrl-trl-bench", max_steps=steps, per_device_train_batch_size=8,
    num_generations=8, max_completion_length=64, beta=0.0, learning_rate=1e-6, temperature=1.0,
    loss_type="dapo", use_cpu=True, report_to=[], logging_steps=1, save_strategy="no",
    dataloader_num_workers=0, seed=0,
    # oxrl trains in f32 without activation checkpointing; TRL's defaults (bf16 autocast and
    # gradient checkpointing) are turned off so both sides do the same arithmetic.
    # TRL_DEFAULTS=1 keeps them instead.
    **({} if os.environ.get("TRL_DEFAULTS") == "1" else {"bf16": False, "gradient_checkpointing": False}),
)
trainer = GRPOTrainer(model=model_dir, reward_funcs=correct, args=config, train_dataset=data, callbacks=[timer])
trainer.train()
later = timer.times[1:] or timer.times
print(f"trl_step_seconds={timer.times}")
print(f"trl_s_per_step={sum(later) / len(later):.2f}")
