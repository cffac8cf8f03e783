"""TRL's own loss code on one fixed batch, for tests/trl_batch.rs.

Reads a JSON request on stdin:
  {"model": HF dir, "norm_scale": s, "temperature": T, "max_completion_length": M,
   "group_size": G, "pad_id": id, "out_dir": dir,
   "prompt_ids": [[..]], "completion_ids": [[..]], "rewards": [..], "old_logp": [[..]],
   "cases": [{"name", "trainer": "grpo"|"dpo", ...its GRPOConfig/DPOConfig options}]}

The policy is the model with `model.norm.weight` multiplied by `norm_scale` (so that it differs
from DPO's reference, the unchanged model). For every case it builds TRL's trainer on that
policy and runs the trainer's own `_compute_loss` on the batch, then `backward()`; it writes
`out_dir/<name>.safetensors` with `loss` and every parameter's gradient under its HF name,
and prints nothing but errors.

GRPO (`GRPOTrainer._compute_loss`): the rows are the samples in order, `prompt_ids` +
`completion_ids` (the prompts have equal lengths, so no left padding moves positions),
completions right-padded; advantages are the lines of `_generate_and_score_completions` that
turn rewards into advantages (group mean, `nanstd`, + 1e-4), which are not a separate function
in TRL. DPO (`DPOTrainer._compute_loss`): consecutive samples are (chosen, rejected) pairs;
rows are all chosen then all rejected, as TRL's collator stacks them.
"""
import json
import os
import sys
import tempfile

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
from datasets import Dataset
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer
from trl.trainer.utils import nanstd

req = json.load(sys.stdin)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
tokenizer = AutoTokenizer.from_pretrained(req["model"])
scratch = tempfile.mkdtemp(prefix="oxrl-trl-batch-")
DTYPE = getattr(torch, req.get("dtype", "float32"))


def load(norm_scale=1.0):
    model = AutoModelForCausalLM.from_pretrained(req["model"], dtype=DTYPE)
    with torch.no_grad():
        model.model.norm.weight.mul_(norm_scale)
    # nn.Embedding's padding_idx gives the pad token's row no gradient from the input side.
    # SmolLM2's pad token is <|im_end|>, a real chat token that every prompt contains; oxrl
    # trains its row like any other, so the reference takes the plain gradient too.
    model.model.embed_tokens.padding_idx = None
    return model


def right_padded(rows, value):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), value, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def save(name, loss, model):
    tensors = {"loss": loss.detach().double().reshape(1)}
    for param_name, p in model.named_parameters():
        if p.grad is not None:
            tensors[param_name] = p.grad.detach().contiguous()
    save_file(tensors, os.path.join(req["out_dir"], f"{name}.safetensors"))


def grpo_advantages(rewards, group_size, scale_rewards):
    """`GRPOTrainer._generate_and_score_completions` (sum_then_normalize), rewards to
    advantages."""
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size, dim=0)
    if scale_rewards in ["group", "none"]:
        std = nanstd(grouped, dim=1).repeat_interleave(group_size, dim=0)
    else:
        std = nanstd(rewards).expand_as(rewards)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return advantages


def grpo_case(case):
    """The batch as TRL trains it with one group per micro-batch (`per_device_train_batch_size`
    = G, gradient accumulation over the groups), which is how oxrl's learner splits it: the
    same for every loss type but `bnpo`, whose normaliser is the micro-batch's tokens."""
    options = {k: v for k, v in case.items() if k not in ("name", "trainer")}
    n, group = len(req["prompt_ids"]), req["group_size"]
    micro_batches = n // group
    args = GRPOConfig(
        output_dir=scratch, per_device_train_batch_size=group, num_generations=group,
        gradient_accumulation_steps=micro_batches, steps_per_generation=micro_batches,
        max_completion_length=req["max_completion_length"], temperature=req["temperature"],
        use_cpu=True, report_to=[], bf16=False, seed=0, save_strategy="no", **options,
    )
    data = Dataset.from_list([{"prompt": "unused"}] * n)
    trainer = GRPOTrainer(
        model=load(req["norm_scale"]), reward_funcs=lambda completions, **_: [0.0] * len(completions),
        args=args, train_dataset=data, processing_class=tokenizer,
    )
    trainer.current_gradient_accumulation_steps = micro_batches
    prompt_ids, prompt_mask = right_padded(req["prompt_ids"], req["pad_id"])
    assert bool(prompt_mask.all()), "the prompts must have equal lengths"
    completion_ids, completion_mask = right_padded(req["completion_ids"], req["pad_id"])
    old = torch.zeros(completion_ids.shape, dtype=DTYPE)
    for i, row in enumerate(req["old_logp"]):
        old[i, : len(row)] = torch.tensor(row, dtype=DTYPE)
    rewards = torch.tensor(req["rewards"], dtype=DTYPE)
    batch = {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": grpo_advantages(rewards, group, args.scale_rewards),
        "old_per_token_logps": old,
    }
    model = trainer.model
    model.train()
    total = 0.0
    for start in range(0, n, group):
        inputs = {k: v[start : start + group] for k, v in batch.items()}
        # The generation batch's trained tokens, as `_prepare_inputs` passes it to every
        # micro-batch (DAPO's normaliser).
        inputs["num_items_in_batch"] = completion_mask.sum()
        loss = trainer._compute_loss(model, inputs)
        loss.backward()
        total = total + loss.detach()
    save(case["name"], total, model)


def dpo_case(case):
    options = {k: v for k, v in case.items() if k not in ("name", "trainer")}
    args = DPOConfig(
        output_dir=scratch, use_cpu=True, report_to=[], bf16=False, seed=0, save_strategy="no",
        **options,
    )
    data = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    trainer = DPOTrainer(
        model=load(req["norm_scale"]), ref_model=load(), args=args, train_dataset=data,
        processing_class=tokenizer,
    )
    prompts, completions = req["prompt_ids"], req["completion_ids"]
    rows = [prompts[i] + completions[i] for i in range(0, len(prompts), 2)]
    rows += [prompts[i] + completions[i] for i in range(1, len(prompts), 2)]
    input_ids, attention_mask = right_padded(rows, req["pad_id"])
    completion_mask = torch.zeros_like(input_ids)
    order = list(range(0, len(prompts), 2)) + list(range(1, len(prompts), 2))
    for row, i in enumerate(order):
        start = len(prompts[i])
        completion_mask[row, start : start + len(completions[i])] = 1
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    model = trainer.model
    model.train()
    loss = trainer._compute_loss(model, inputs, False)
    loss.backward()
    save(case["name"], loss, model)


for case in req["cases"]:
    {"grpo": grpo_case, "dpo": dpo_case}[case["trainer"]](case)
