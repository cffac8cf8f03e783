#!/usr/bin/env python3
"""oxrl command reward: one JSON sample per stdin line in, one JSON score per line out."""
import json, sys

def score(sample):  # your reward: 1.0 when the reference answer appears in the completion
    return float(str(sample["answer"]) in sample["completion"])

for line in sys.stdin:
    try:
        print(json.dumps({"score": score(json.loads(line))}), flush=True)
    except Exception as e:  # report, don't die: oxrl counts it as a failure of this sample
        print(json.dumps({"error": repr(e)}), flush=True)
