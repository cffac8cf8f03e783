"""vLLM generation throughput on a running server (bench/vllm_vs_native.sh starts one):
`batch` completions of exactly `new_tokens` tokens (EOS ignored, temperature 1), sent as one
request per 4 completions, all at once; prints tokens_per_s last (best of 3 after a warm-up)."""
import json, sys, time, urllib.request
from concurrent.futures import ThreadPoolExecutor

url, batch, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
prompt = [1, 4093, 198, 1780, 314, 216, 34, 1232, 216, 37, 47, 2, 198, 1, 520, 9531, 198]


def request(n):
    body = {"model": "oxrl-policy", "prompt": prompt, "n": n, "max_tokens": new_tokens,
            "min_tokens": new_tokens, "ignore_eos": True, "temperature": 1.0, "top_k": -1}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    reply = json.loads(urllib.request.urlopen(req, timeout=600).read())
    return len(reply["choices"]) * new_tokens  # exactly new_tokens each (min_tokens, ignore_eos)


def run():
    groups = [4] * (batch // 4) + ([batch % 4] if batch % 4 else [])
    start = time.perf_counter()
    with ThreadPoolExecutor(len(groups)) as pool:
        tokens = sum(pool.map(request, groups))
    return tokens / (time.perf_counter() - start)


run()
print(f"tokens_per_s={max(run() for _ in range(3)):.1f}")
