"""Writes a GGUF file holding one random tensor per ggml type oxrl reads, plus the values the
`gguf` package (ggml's own Python reference) dequantizes them to, for oxrl's dequant tests.

usage: gguf_fixture.py OUT.gguf OUT.json
"""
import json
import sys

import numpy as np
from gguf import GGMLQuantizationType as Q, GGUFWriter, quants
from gguf.constants import GGML_QUANT_SIZES

# Byte offsets of the f16 scale fields inside one block of each type; random bytes there
# could be NaN/inf, so they get sane values instead.
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
    Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
}
ROWS, COLS = 4, 512


def main(out_gguf, out_json):
    rng = np.random.default_rng(0)
    writer = GGUFWriter(out_gguf, "llama")
    reference = {}
    for qtype in [Q.F32, Q.F16, Q.BF16, *F16_FIELDS]:
        block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
        n_blocks = ROWS * COLS // block_elems
        if qtype == Q.F32:
            raw = rng.standard_normal(ROWS * COLS).astype(np.float32).view(np.uint8)
        elif qtype == Q.F16:
            raw = rng.standard_normal(ROWS * COLS).astype(np.float16).view(np.uint8)
        elif qtype == Q.BF16:
            f32 = rng.standard_normal(ROWS * COLS).astype(np.float32)
            raw = (f32.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
            for off in F16_FIELDS[qtype]:
                scales = rng.uniform(-0.1, 0.1, size=n_blocks).astype(np.float16)
                blocks[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
            raw = blocks.reshape(-1)
        raw = raw.reshape(ROWS, -1)
        writer.add_tensor(qtype.name, raw, raw_dtype=qtype)
        values = quants.dequantize(raw, qtype).astype(np.float32)
        reference[qtype.name] = values.reshape(-1).tolist()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with open(out_json, "w") as f:
        json.dump(reference, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
