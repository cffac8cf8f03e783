"""Writes arithmetic_pairs.jsonl: preference pairs for configs/dpo_pairs.toml.

Each row is a two-term sum or difference (operands 1..20, like configs/grpo_math.toml) with
the GSM8K-style `answer`, a `chosen` completion that gets it right in the asked-for format and
a `rejected` one that does not: off by a small amount or the other operator, the bundled
model's typical slips, half of them in its typical rambling style without the `####` line.
Deterministic: `python3 envs/data/make_arithmetic_pairs.py` rewrites the same file.
"""

import json
import pathlib
import random

ROWS = 600


def solution(a, op, b, value):
    return f"{a} {op} {b} = {value}\n#### {value}"


def main():
    rng = random.Random(0)
    out = pathlib.Path(__file__).with_name("arithmetic_pairs.jsonl")
    with out.open("w") as f:
        for i in range(ROWS):
            a, b, op = rng.randint(1, 20), rng.randint(1, 20), rng.choice("+-")
            value = a + b if op == "+" else a - b
            if rng.random() < 0.3:
                wrong = a - b if op == "+" else a + b
            else:
                wrong = value + rng.choice([-10, -3, -2, -1, 1, 2, 3, 10])
            if wrong == value:
                wrong = value + 1
            rejected = solution(a, op, b, wrong)
            if rng.random() < 0.5:
                verb = "add" if op == "+" else "subtract"
                rejected = (
                    f"To solve this problem, we need to {verb} the two numbers. "
                    f"{a} {op} {b} = {wrong}.\n\nSo, the answer is {wrong}."
                )
            row = {
                "id": f"pair-{i}",
                "prompt": f"What is {a} {op} {b}?",
                "answer": solution(a, op, b, value),
                "chosen": solution(a, op, b, value),
                "rejected": rejected,
            }
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
