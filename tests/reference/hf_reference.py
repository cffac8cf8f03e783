"""Reference numbers from Hugging Face transformers, for oxrl's parity tests.

Reads one JSON request on stdin, prints one JSON answer on stdout. Requests:
  {"op": "logits", "model": DIR, "tokens": [[...], ...]}
      -> {"logits": [[[...]]]}  full-sequence logits of an HF directory (tiny test models)
  {"op": "smollm2", "gguf": FILE, "imported": DIR, "pairs": [[prompt, completion], ...],
   "greedy_prompts": [...], "greedy_tokens": N, "texts": [...], "chat": [{"role", "content"}]}
      -> per-pair completion logprobs, greedy continuations, tokenizer encodes and the chat
         rendering, all from transformers loading the GGUF (dequantized to f32), plus the
         largest logit difference between that model and the `oxrl import` directory.
  {"op": "seq_cls_scores", "model": DIR, "tokens": [[...], ...], "pad_token_id": N}
  {"op": "seq_cls_scores", "model": DIR, "chat": [[prompt, completion], ...]}
  {"op": "seq_cls_scores", "model": DIR, "plain": [[prompt, completion], ...]}
      -> {"scores": [[...]], "tokens": [[...]]}  a *ForSequenceClassification directory's
         outputs per sequence, right-padded; given token ids as they are, or texts the way
         TRL's GRPOTrainer feeds a reward model (chat: [user prompt, assistant completion]
         through the model's chat template; plain: prompt + completion; no special tokens;
         the tokenizer's pad token, else its EOS, as the model's pad_token_id).
Everything runs in float32 on CPU; prompt and completion are tokenized separately, without
special tokens, and concatenated (the convention `oxrl logprobs` documents).
"""
import json
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in test logs

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

torch.set_grad_enabled(False)


def logits(req):
    # Eager attention is transformers' literal reference (SDPA would skip Gemma's soft-capping).
    model = AutoModelForCausalLM.from_pretrained(
        req["model"], dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    out = model(torch.tensor(req["tokens"])).logits
    return {"logits": out.tolist()}


def completion_logprobs(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    logp = model(ids).logits[0].float().log_softmax(-1)
    n = len(prompt_ids)
    rows = logp[n - 1 : n - 1 + len(completion_ids)]
    return rows.gather(1, torch.tensor(completion_ids)[:, None])[:, 0].tolist()


def smollm2(req):
    folder, name = os.path.split(req["gguf"])
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.eval()
    answer = {"pairs": [], "greedy": [], "encodes": []}
    for prompt, completion in req["pairs"]:
        p = tok.encode(prompt, add_special_tokens=False)
        c = tok.encode(completion, add_special_tokens=False)
        answer["pairs"].append({"tokens": c, "logprobs": completion_logprobs(model, p, c)})
    # No EOS: exactly greedy_tokens argmax steps, like oxrl with an empty stop list.
    model.generation_config.eos_token_id = None
    for prompt in req["greedy_prompts"]:
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False)])
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=req["greedy_tokens"],
            do_sample=False,
            pad_token_id=tok.pad_token_id,
        )
        answer["greedy"].append(out[0, ids.shape[1] :].tolist())
    answer["encodes"] = [tok.encode(t, add_special_tokens=False) for t in req["texts"]]
    answer["chat"] = tok.apply_chat_template(req["chat"], tokenize=False, add_generation_prompt=True)
    imported = AutoModelForCausalLM.from_pretrained(req["imported"], dtype=torch.float32)
    ids = torch.tensor([tok.encode(req["texts"][0], add_special_tokens=False)])
    answer["import_max_diff"] = (model(ids).logits - imported(ids).logits).abs().max().item()
    imported_tok = AutoTokenizer.from_pretrained(req["imported"])
    answer["imported_encodes"] = [imported_tok.encode(t, add_special_tokens=False) for t in req["texts"]]
    return answer


def trl_reward_inputs(req):
    """Token ids and pad id as TRL's GRPOTrainer prepares a reward model's input."""
    tok = AutoTokenizer.from_pretrained(req["model"])
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if "chat" in req:
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False
            )
            for p, c in req["chat"]
        ]
    else:
        texts = [p + c for p, c in req["plain"]]
    enc = tok(text=texts, padding=True, padding_side="right", add_special_tokens=False)
    tokens = [[t for t, m in zip(ids, mask) if m] for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]
    return tokens, tok.pad_token_id


def seq_cls_scores(req):
    model = AutoModelForSequenceClassification.from_pretrained(
        req["model"], dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    if "tokens" in req:
        tokens, pad = req["tokens"], req["pad_token_id"]
    else:
        tokens, pad = trl_reward_inputs(req)
    # The last non-pad token is found by the config's pad id; TRL sets it to the tokenizer's.
    model.config.pad_token_id = pad
    width = max(len(t) for t in tokens)
    ids = torch.tensor([t + [pad] * (width - len(t)) for t in tokens])
    mask = torch.tensor([[1] * len(t) + [0] * (width - len(t)) for t in tokens])
    scores = model(input_ids=ids, attention_mask=mask).logits
    return {"scores": scores.tolist(), "tokens": tokens}


if __name__ == "__main__":
    request = json.load(sys.stdin)
    ops = {"logits": logits, "smollm2": smollm2, "seq_cls_scores": seq_cls_scores}
    json.dump(ops[request["op"]](request), sys.stdout)
