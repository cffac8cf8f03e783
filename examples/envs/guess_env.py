#!/usr/bin/env python3
"""An oxrl external environment in plain Python (no dependencies): a number-guessing game.

oxrl starts this program and talks to it in JSON lines over stdin/stdout
(protocol: docs/envs.md, "External environments"):

  {"request_id": 1, "op": "reset", "row": {...}}
      -> {"request_id": 1, "messages": [{"role": "user", "content": "..."}]}
  {"request_id": 2, "op": "step", "action": "..."}
      -> {"request_id": 2, "observation": [...], "reward": r, "done": bool}
  anything wrong -> {"request_id": n, "error": "..."}

Every reply echoes its request's `request_id`. Print logs to stderr: oxrl skips stray stdout
lines, but only a few.

The secret comes from the row: `secret` if present, else derived from `seed` (rows that oxrl
generates for external tasks carry a `seed`). Each wrong guess costs 0.05 (a per-turn
reward); the right guess earns 1.0 and ends the episode. Use with:

  [env]
  task = "external"
  [env.external]
  command = ["python3", "examples/envs/guess_env.py"]
"""
import json
import random
import re
import sys

LOW, HIGH = 1, 64
WRONG_GUESS_REWARD = -0.05


class Game:
    def __init__(self):
        self.secret = None

    def reset(self, row):
        if "secret" in row:
            self.secret = int(row["secret"])
        else:
            self.secret = random.Random(int(row.get("seed", 0))).randint(LOW, HIGH)
        text = (f"I picked an integer from {LOW} to {HIGH}. Guess it with <guess>N</guess>; "
                "I will say higher, lower or correct.")
        return {"messages": [{"role": "user", "content": text}]}

    def step(self, action):
        if self.secret is None:
            return {"error": "step before reset"}
        found = re.findall(r"<guess>\s*(-?\d+)\s*</guess>", action)
        if not found:
            return self.reply("Please answer with <guess>N</guess>.", WRONG_GUESS_REWARD, False)
        guess = int(found[-1])
        if guess == self.secret:
            return self.reply("correct", 1.0, True)
        return self.reply("higher" if guess < self.secret else "lower", WRONG_GUESS_REWARD, False)

    @staticmethod
    def reply(text, reward, done):
        return {"observation": [{"role": "user", "content": text}], "reward": reward, "done": done}


def main():
    game = Game()
    for line in sys.stdin:  # oxrl closes stdin when it is done with the environment
        request = {}
        try:
            request = json.loads(line)
            if request["op"] == "reset":
                reply = game.reset(request["row"])
            elif request["op"] == "step":
                reply = game.step(request["action"])
            else:
                reply = {"error": f"unknown op {request['op']!r}"}
        except Exception as exc:  # report, don't crash: the run records the failure
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps({"request_id": request.get("request_id"), **reply}), flush=True)


if __name__ == "__main__":
    main()
