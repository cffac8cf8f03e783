# oxrl code-reward harness: runs the program, then its tests, and reports on fd 1 with a
# nonce that only this harness knows, so a completion cannot fake a pass. Defence in depth
# (docs/rewards.md, "What a completion can still do"):
# - the nonce arrives on stdin, which is read to the end and closed before user code runs: it
#   is never in the environment, so /proc/self/environ does not show it;
# - the program and the tests each run on a thread of their own (`_thread`, so no `threading`
#   registry lists them), while the nonce, the tests and the tally stay in the main thread's
#   frame, which no frame reachable from user code leads to;
# - an audit hook refuses, always: trace and profile hooks, other threads' frames, gc's
#   object walks, ctypes and cffi, and opening or listing anything under /proc; and while the tests run
#   (when user code is called by them) every way to a frame: sys._getframe and the frames of
#   tracebacks, generators and coroutines;
# - tests run in their own scope with pristine builtins (a snapshot taken before user code
#   ran) and without the program's names that shadow builtins;
# - what the tested functions return must be plain data (numbers, strings, bytes, None and
#   lists/tuples/sets/dicts/deques/Counters of them, by exact type; an iterator's items
#   likewise), so an object that equals everything fails (spec "plain_results": false opts
#   out);
# - everything the harness uses after user code runs is bound before it (defaults and
#   closures), so patching builtins or this module's globals changes nothing here.
import _thread
import builtins
import collections
import collections.abc
import json
import os
import sys


def _oxrl_main(
    _exec=exec,
    _compile=compile,
    _write=os.write,
    _read=os.read,
    _close=os.close,
    _exit=os._exit,
    _base=BaseException,
    _type=type,
    _all=all,
    _dict=dict,
    _bytes=bytes,
    _tuple=tuple,
    _iter=iter,
    _len=len,
    _isinstance=isinstance,
    _realpath=os.path.realpath,
    _fspath=os.fspath,
    _stderr=sys.stderr,
    _function=type(lambda: None),
    _iterator=collections.abc.Iterator,
    _runtime_error=RuntimeError,
    _start=_thread.start_new_thread,
    _new_lock=_thread.allocate_lock,
):
    chunks = []
    while True:
        chunk = _read(0, 256)
        if not chunk:
            break
        chunks.append(chunk)
    nonce = b"".join(chunks).decode().strip()
    _close(0)
    try:
        os.open(os.devnull, os.O_RDONLY)  # becomes fd 0: user code reading stdin sees EOF
    except OSError:
        pass
    with open("spec.json", encoding="utf-8") as f:
        spec = json.load(f)
    mode = spec["mode"]
    tests = spec.get("tests") or []
    entry_point = spec.get("entry_point")
    plain_results = spec.get("plain_results", True)
    pristine = _dict(builtins.__dict__)
    plain_scalars = (int, float, complex, str, bytes, bool, type(None), range)
    plain_sequences = (list, tuple, set, frozenset, collections.deque)
    plain_maps = (dict, collections.Counter, collections.OrderedDict, collections.defaultdict)

    def is_plain(x):
        t = _type(x)
        if t in plain_scalars:
            return True
        if t in plain_sequences:
            return _all(is_plain(v) for v in x)
        if t in plain_maps:
            return _all(is_plain(k) and is_plain(v) for k, v in _dict.items(x))
        return False

    def checked(fn):
        # An iterator's items are checked and handed on by a plain tuple iterator, so the
        # caller sees the same sequence and none of the user type's methods.
        def call(*args, **kwargs):
            result = fn(*args, **kwargs)
            if _type(result) not in plain_sequences and _isinstance(result, _iterator):
                items = _tuple(result)
                if not is_plain(items):
                    raise _runtime_error("an item of the result is not plain data")
                return _iter(items)
            if not is_plain(result):
                raise _runtime_error("the result is not plain data: %s" % _type(result).__name__)
            return result

        return call

    always_refused = {
        "sys._current_frames", "sys._current_exceptions", "sys.settrace", "sys.setprofile",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents",
    }
    refused_imports = {"ctypes", "_ctypes", "cffi", "_cffi_backend"}
    frame_attrs = {"tb_frame", "gi_frame", "cr_frame", "ag_frame"}
    path_events = {"open", "os.listdir", "os.scandir", "os.chdir"}
    phase = ["program"]

    def under_proc(path):
        if _isinstance(path, int):
            return False
        try:
            path = _fspath(path)
            if _isinstance(path, _bytes):
                path = path.decode(errors="replace")
            real = _realpath(path)
        except _base:
            return True
        return real == "/proc" or real.startswith("/proc/")

    def audit(event, args):
        testing = phase[0] == "tests"
        refuse = (
            event in always_refused
            or event.startswith("ctypes.")
            or (event == "import" and args and args[0] in refused_imports)
            or (event in path_events and args and under_proc(args[0]))
            or (testing and event == "sys._getframe")
            or (
                testing
                and event == "object.__getattr__"
                and _len(args) > 1
                and args[1] in frame_attrs
            )
        )
        if refuse:
            raise _runtime_error("refused by the oxrl harness: %s" % event)

    sys.addaudithook(audit)

    def on_thread(work):
        # Runs `work` on a new thread and waits for it; `work` sees none of this frame.
        done = _new_lock()
        done.acquire()

        def body():
            try:
                work()
            finally:
                done.release()

        _start(body, ())
        done.acquire()

    def test_scope(user):
        scope = {"__name__": "__main__", "__builtins__": _dict(pristine)}
        for name, value in user.items():
            if name.startswith("__") or name in pristine:
                continue
            wrap = plain_results and _type(value) is _function
            scope[name] = checked(value) if wrap else value
        return scope

    def runner(code, filename, scope, outcome):
        def work():
            try:
                _exec(_compile(code, filename, "exec"), scope)
                outcome.append(True)
            except _base as e:  # noqa: BLE001 - any failure of user code is a failed test
                outcome.append(False)
                _stderr.write("%s failed: %s\n" % (filename, _type(e).__name__))

        return work

    total = max(len(tests), 1)
    user = {"__name__": "__main__", "__builtins__": builtins}
    ran = []
    on_thread(runner(spec["program"], "program.py", user, ran))
    if ran != [True]:
        tests, mode = [], "failed"
    phase[0] = "tests"
    outcomes = []
    if mode == "humaneval":
        scope = test_scope(user)
        candidate = user.get(entry_point)
        scope["__oxrl_candidate__"] = checked(candidate) if plain_results else candidate
        code = tests[0] + "\n\ncheck(__oxrl_candidate__)\n"
        on_thread(runner(code, "test.py", scope, outcomes))
    elif mode == "script":
        on_thread(runner(tests[0] if tests else "", "test.py", test_scope(user), outcomes))
    elif mode == "asserts":
        scope = test_scope(user)
        for test in tests:
            on_thread(runner(test, "test.py", scope, outcomes))
    passed = outcomes.count(True)
    _write(1, ("\n%s %d %d\n" % (nonce, passed, total)).encode())
    _stderr.flush()
    _exit(0)


_oxrl_main()
