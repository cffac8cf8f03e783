"""transformers' greedy decode speed on the bundled model, the reference for bench/decode_vs_hf.sh.

usage: hf_decode.py MODEL NEW_TOKENS PROMPT...   (MODEL: HF directory or GGUF file)   (prints one tokens_per_s=<v> line per prompt)
"""
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_grad_enabled(False)
model_path, new_tokens, prompts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
folder, name = (model_path, None) if os.path.isdir(model_path) else os.path.split(model_path)
tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
model.generation_config.eos_token_id = None  # exactly new_tokens steps, like --ignore-eos
for prompt in prompts:
    ids = tok(prompt, return_tensors="pt").input_ids
    model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
    start = time.perf_counter()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    secs = time.perf_counter() - start
    print(f"tokens_per_s={(out.shape[1] - ids.shape[1]) / secs:.1f}")
