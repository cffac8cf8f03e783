"""transformers' batched sampling throughput (MODEL: HF directory or GGUF file), the reference for bench/rollout_vs_hf.sh.

usage: hf_rollout.py MODEL BATCH NEW_TOKENS THREADS TEMPERATURE [DTYPE=f32|bf16] [DEVICE=cpu]
Same prompts as `oxrl bench rollout` (read from engine/src/cli/bench.rs), cycled to BATCH,
left-padded, sampled at TEMPERATURE with no top-k/top-p, EOS ignored; prints tokens_per_s=<v>.
"""
import os
import re
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

gguf, batch, new_tokens, threads, temperature = sys.argv[1:6]
dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[sys.argv[6] if len(sys.argv) > 6 else "f32"]
device = sys.argv[7] if len(sys.argv) > 7 else "cpu"
batch, new_tokens, threads, temperature = int(batch), int(new_tokens), int(threads), float(temperature)
torch.set_num_threads(threads)
torch.set_grad_enabled(False)

source = open(os.path.join(os.path.dirname(__file__), "../engine/src/cli/bench.rs")).read()
block = source[source.index("pub const PROMPTS"):]
prompts = re.findall(r'^\s+"((?:[^"\\]|\\.)*)",$', block[: block.index("];")], re.M)
prompts = [p.encode().decode("unicode_escape") for p in prompts]
prompts = [prompts[i % len(prompts)] for i in range(batch)]

if os.path.isdir(gguf):  # an HF directory (e.g. written by `oxrl import`): dense weights
    folder, name = gguf, None
else:  # transformers 5 keeps GGUF weights packed and dequantizes inside its kernels
    folder, name = os.path.split(gguf)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
tok.padding_side = "left"
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=dtype).eval().to(device)
model.generation_config.eos_token_id = None  # EOS ignored: exactly new_tokens per row
enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
model.generate(**enc, max_new_tokens=4, **kwargs)  # warm-up
best = float("inf")
for _ in range(2):
    start = time.perf_counter()
    out = model.generate(**enc, max_new_tokens=new_tokens, **kwargs)
    if device != "cpu":
        torch.cuda.synchronize()
    best = min(best, time.perf_counter() - start)
    assert out.shape[1] - enc.input_ids.shape[1] == new_tokens
print(f"tokens_per_s={batch * new_tokens / best:.1f}")
