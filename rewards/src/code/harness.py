# oxrl code-reward harness: runs the program, then its tests, and reports on fd 1 with a
# nonce that only this harness knows (popped from the environment before user code runs),
# so a completion that exits early or prints "OK" cannot fake a pass.
import json
import os
import sys


def _oxrl_main(_exec=exec, _compile=compile, _write=os.write, _base=BaseException):
    # Bound before user code runs, so patching builtins cannot skip the tests.
    nonce = os.environ.pop("OXRL_NONCE", "")
    with open("spec.json", encoding="utf-8") as f:
        spec = json.load(f)
    tests = spec.get("tests") or []
    total = max(len(tests), 1)
    passed = 0
    scope = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        _exec(_compile(spec["program"], "program.py", "exec"), scope)
        if spec["mode"] == "script":
            passed = 1
    except _base as e:  # noqa: BLE001 - any failure of user code is a failed test
        sys.stderr.write("program failed: %r\n" % (e,))
        tests = []
    for test in tests:
        try:
            _exec(_compile(test, "test.py", "exec"), scope)
            passed += 1
        except _base as e:  # noqa: BLE001
            sys.stderr.write("test failed: %r\n" % (e,))
    _write(1, ("\n%s %d %d\n" % (nonce, passed, total)).encode())


_oxrl_main()
