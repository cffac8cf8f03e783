"""TRL's GRPOTrainer on the run of configs/grpo_math.toml: the same model, training prompts
(`oxrl config rows`: rendered with the same chat template, passed as plain text so TRL adds
nothing), group size, completion length, loss, clipping, learning rate (constant, as oxrl's),
AdamW, gradient clipping and temperature, rewarded by oxrl's own math verifier (`oxrl reward`
with the config's [[rewards]] entry). Writes OUT/metrics.jsonl (per step: reward and seconds)
and a checkpoint every EVAL_EVERY steps (OUT/checkpoint-N, HF directories) for `oxrl eval`.

What differs from oxrl's run: the order prompts are drawn in (each side shuffles the same pool
with its own generator), the sampler's random stream, and (unless TRL_PAD_ROW=trained) the input
embedding row of the pad token: transformers builds Llama's embedding with
`padding_idx = pad_token_id`, which gives that row no gradient from the input side, and the
bundled model's pad token is its EOS, <|im_end|>, which ends every chat message of the prompt
(the weights are tied, so the output side still trains it). oxrl trains the whole row.

usage: trl_grpo_curve.py MODEL ROWS_JSONL OUT STEPS SEED LR THREADS EVAL_EVERY OXRL CONFIG
"""
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
from datasets import Dataset
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

model, rows_path, out, steps, seed, lr, threads, eval_every, oxrl, config = sys.argv[1:11]
steps, seed, lr, threads, eval_every = int(steps), int(seed), float(lr), int(threads), int(eval_every)
torch.set_num_threads(threads)
rows = [json.loads(line) for line in open(rows_path)]
data = Dataset.from_list([{"prompt": r["prompt_text"], "row": json.dumps(r)} for r in rows])


def math_reward(completions, row, **_):
    """oxrl's math verifier on each completion with its row, through `oxrl reward`."""
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for c, r in zip(completions, row):
            f.write(json.dumps({**json.loads(r), "completion": c}) + "\n")
    try:
        scored = subprocess.run(
            [oxrl, "reward", "--reward", "math", "--config", config, "--input", f.name],
            capture_output=True, text=True, check=True,
        ).stdout
    finally:
        os.unlink(f.name)
    return [json.loads(line)["score"] for line in scored.splitlines()]


class StepLog(TrainerCallback):
    def __init__(self):
        self.file = open(os.path.join(out, "metrics.jsonl"), "a")
        self.start = None

    def on_step_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "reward" in logs:
            line = {"step": state.global_step, "reward": logs["reward"],
                    "time/step_seconds": time.perf_counter() - self.start}
            self.file.write(json.dumps(line) + "\n")
            self.file.flush()


os.makedirs(out, exist_ok=True)
args = GRPOConfig(
    output_dir=out, max_steps=steps, seed=seed, data_seed=seed,
    # configs/grpo_math.toml: 4 prompts x 4 completions of <= 64 tokens at T = 1, DAPO loss,
    # clip 0.2 / 0.28, beta 0, group-scaled rewards, constant lr, grad norm 1, f32.
    per_device_train_batch_size=16, num_generations=4, max_completion_length=64,
    temperature=1.0, top_p=1.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0,
    scale_rewards="group", learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
    max_grad_norm=1.0, weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
    bf16=False, gradient_checkpointing=False, use_cpu=True, report_to=[], logging_steps=1,
    save_strategy="steps", save_steps=eval_every, save_only_model=True, dataloader_num_workers=0,
)
policy = model
if os.environ.get("TRL_PAD_ROW", "frozen") == "trained":
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    policy.get_input_embeddings().padding_idx = None
trainer = GRPOTrainer(model=policy, reward_funcs=math_reward, args=args, train_dataset=data, callbacks=[StepLog()])
trainer.train()
