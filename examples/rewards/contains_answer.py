#!/usr/bin/env python3
"""oxrl command reward: one JSON sample per stdin line in, one JSON score per line out.
Each reply echoes the sample's `request_id`; print logs to stderr, never to stdout."""
import json, sys

def score(sample):  # your reward: 1.0 when the reference answer appears in the completion
    return float(str(sample["answer"]) in sample["completion"])

for line in sys.stdin:
    sample = json.loads(line)
    try:
        reply = {"score": score(sample)}
    except Exception as e:  # report, don't die: oxrl counts it as a failure of this sample
        reply = {"error": repr(e)}
    print(json.dumps({"request_id": sample["request_id"], **reply}), flush=True)
