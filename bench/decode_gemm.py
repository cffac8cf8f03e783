"""Where a decode step's GEMM time goes: the 30 layers' projections of SmolLM2-135M (q, k, v,
o, gate, up, down; distinct weights per layer, so they stream from memory as in a real step)
at the batch sizes of a rollout, through libtorch's kernels: plain `linear` (what oxrl and
transformers call), MKL's prepacked sgemm (f32) and oneDNN's prepacked linear (bf16), next to
the memory-read floor (weight bytes / measured read bandwidth).

Usage: $OXRL_PYTHON bench/decode_gemm.py [THREADS=2]
"""

import sys
import time

import torch

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(THREADS)
F = torch.nn.functional
H, I, LAYERS = 576, 1536, 30
SHAPES = [(576, H), (192, H), (192, H), (H, 576), (I, H), (I, H), (H, I)]


def read_bandwidth():
    x = torch.randn(64 * 1024 * 1024)  # 256 MiB
    x.sum()
    start = time.perf_counter()
    for _ in range(5):
        x.sum()
    return 5 * x.numel() * 4 / (time.perf_counter() - start)


def calls(dtype, batch, method):
    inputs = {k: torch.randn(batch, k, dtype=dtype) for k in (H, I)}
    out = []
    for _ in range(LAYERS):
        for n, k in SHAPES:
            w = torch.randn(n, k, dtype=dtype) * 0.02
            x = inputs[k]
            if method == "linear":
                out.append(lambda x=x, w=w: F.linear(x, w))
            elif method == "mkl_packed":
                p = torch.ops.mkl._mkl_reorder_linear_weight(w, batch)
                out.append(lambda x=x, w=w, p=p: torch.ops.mkl._mkl_linear(x, p, w, None, batch))
            else:
                p = torch.ops.mkldnn._reorder_linear_weight(w, batch)
                out.append(lambda x=x, p=p: torch.ops.mkldnn._linear_pointwise(x, p, None, "none", [], ""))
    return out


def step_ms(fns, reps=10):
    with torch.inference_mode():
        for _ in range(3):
            for f in fns:
                f()
        start = time.perf_counter()
        for _ in range(reps):
            for f in fns:
                f()
    return (time.perf_counter() - start) / reps * 1e3


def main():
    bw = read_bandwidth()
    print(f"threads={THREADS} read_bandwidth={bw / 1e9:.1f}GB/s")
    params = LAYERS * sum(n * k for n, k in SHAPES)
    for dtype, methods in [(torch.float32, ["linear", "mkl_packed"]), (torch.bfloat16, ["linear", "onednn_packed"])]:
        floor = params * dtype.itemsize / bw * 1e3
        for batch in (1, 8, 32):
            times = " ".join(f"{m}={step_ms(calls(dtype, batch, m)):.1f}ms" for m in methods)
            print(f"{str(dtype)[6:]:8} batch={batch:2} layer_gemms: {times} read_floor={floor:.1f}ms")


if __name__ == "__main__":
    main()
