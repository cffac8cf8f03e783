"""Renders chat templates the way transformers does, for envs/tests/chat_template_parity.rs.

Reads a JSON list of cases from stdin, each
    {"template": <Jinja source>, "messages": [...], "add_generation_prompt": bool,
     "kwargs": {...}}
and writes a JSON list with, per case, {"text": <rendered>} or {"error": <message>}.
`kwargs` are passed as `apply_chat_template` passes its keyword arguments (the tokenizer's
special tokens such as `bos_token` among them): into
`transformers.utils.chat_template_utils.render_jinja_template`, which `apply_chat_template`
calls to render.

Run with the set-up's Python ($OXRL_PYTHON: transformers and jinja2 installed).
"""
import json
import sys

from transformers.utils.chat_template_utils import render_jinja_template


def render(case):
    try:
        rendered, _ = render_jinja_template(
            conversations=[case["messages"]],
            chat_template=case["template"],
            add_generation_prompt=case["add_generation_prompt"],
            **case["kwargs"],
        )
        return {"text": rendered[0]}
    except Exception as e:  # the test compares failures too (e.g. raise_exception)
        return {"error": f"{type(e).__name__}: {e}"}


def main():
    cases = json.load(sys.stdin)
    json.dump([render(case) for case in cases], sys.stdout)


if __name__ == "__main__":
    main()
