"""Grade a learner's function in a fresh Python process, so names rebound in the notebook don't count.

A graded (hidden-test) cell reads

    import sys; sys.modules.pop("labkit.autograde", None)  # a fresh copy: names rebound in this notebook don't count
    from labkit.autograde import grade
    grade("tensor_bytes", tensor_bytes)

`grade` pickles the learner's function *by value* (cloudpickle: its code, and the notebook globals
it uses), starts `python -m labkit.autograde`, which imports labkit and torch afresh, runs
`labkit.grading.check_<name>` there (expected values first, references swapped for tripwires while
the learner's function runs, plus a few hidden examples drawn from a new random seed, so a table of
the public examples' answers can't pass), and reads the verdict back. So `grading.check_x = lambda *a: True`,
or rebinding a torch or labkit function, in the notebook changes nothing. On a pass `grade`
returns; otherwise it raises AssertionError carrying the check's whole message (which example,
expected vs got, the hint), which is what nbgrader shows as feedback.

What it guards against: rebinding checks, torch or labkit functions in the notebook; calling (or
handing in) the reference implementation — however it is reached: every function of the modules a check
names ('labkit.prune.*') and of labkit.grading.checks* trips while the learner's function runs; starting
another process or thread, or calling C code through ctypes, from inside it; an answer that computes itself
later (a dict subclass's items(), an object's __repr__, a tensor subclass's __torch_function__): what the
function returned is turned into plain data while the guard is still on; switching the profile hook off
(the real switches live only in a closure, calling one trips, and the hook must still be in place when the
function returns); swapping labkit.grading.core's functions (run_learner keeps its own and fails the check
if the module's names changed, also when they were changed while the function was unpickled); a table of
the public examples' answers; copying the expected value from the check's frames; printing a verdict (the
nonce is unknown to the learner's process, and more than one answer line fails the grade).
What it does not: the learner's process is Python, and code there can edit any object in it. A function
that switches the hook off and back on from C (e.g. through map), edits the guard's closure cells, patches
torch's or Python's own classes that the grader uses after the call (torch.save, Tensor methods), builds a
ctypes function pointer while it is unpickled, or runs a copy of labkit's source (exec of its text, which is
pasting the source) is not caught in that process. What still holds then is the hidden examples (drawn
from a seed the learner's process never sees) plus the comparison, made in the grader's own process on
the decoded answer: a passing function gave the right answers to inputs nobody saw before, though whether
it computed them with labkit's code is no longer guaranteed. Also: code that runs in the notebook's
kernel *before* the graded cell can still replace what `grade` itself relies on (subprocess, cloudpickle,
the import system) — only grading outside the student's kernel closes that; and when grading runs as
root, the learner's process may read the grader's memory through /proc (prctl(PR_SET_DUMPABLE, 0) stops
that for any other user): grade as an ordinary user.
"""
from __future__ import annotations

import json
import os
import pickle
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

#: seconds the fresh process may take (startup + torch import + the check's small examples)
TIMEOUT_S = 300


def grade(check_name: str, fn: Callable, timeout_s: float = TIMEOUT_S) -> None:
    """Run `labkit.grading.check_<check_name>` on `fn` in a fresh process; AssertionError(its message) unless it passes."""
    import cloudpickle

    if not isinstance(check_name, str) or not check_name.isidentifier():
        raise ValueError(f"check_name={check_name!r} must be the name of a check, e.g. 'tensor_bytes'")
    check_name = check_name.removeprefix("check_")      # "check_tensor_bytes" names the same check
    try:
        payload = cloudpickle.dumps(fn)
    except Exception as e:
        raise AssertionError(f"{check_name}: your function could not be sent to the grader ({type(e).__name__}: {e}). "
                             "Define it with `def` at the top level of its cell, using only plain values, "
                             "tensors and modules.") from None
    nonce = secrets.token_hex(16)
    seed = secrets.randbelow(2**31)          # the hidden examples' seed: new on every call, printed on failure
    request = pickle.dumps({"check": check_name, "fn": payload, "nonce": nonce, "seed": seed})
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    package_root = str(Path(__file__).resolve().parent.parent)           # so `labkit` imports from any cwd
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    try:
        run = subprocess.run([sys.executable, "-m", "labkit.autograde"], input=request, capture_output=True,
                             timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{check_name}: your function did not finish the check's small examples within "
                             f"{timeout_s:.0f} s (an endless loop?)") from None
    answers = [line for line in run.stdout.decode(errors="replace").splitlines() if line.startswith(nonce + " ")]
    if len(answers) > 1:   # the grader writes exactly one: a second one was forged by the code being graded
        raise AssertionError(f"{check_name}: the grader's answer was written more than once — something in the "
                             "graded code tampered with the grader, so no verdict is trusted")
    verdict = json.loads(answers[0][len(nonce) + 1:]) if answers else None
    if verdict is None:
        tail = run.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise AssertionError(f"{check_name}: the grader could not run your function (exit code {run.returncode}): "
                             + " | ".join(tail))
    if verdict["status"] != "passed":
        raise AssertionError(verdict["message"])


class LearnerProcess:
    """The learner's function in a forked process that never holds an expected value, the seed or the nonce.

    Forked before the request is read, it receives the pickled function, then one call at a time
    (the call adapter, inputs, the references to switch off), and answers with what came back,
    encoded so this side decodes it with torch.load(weights_only=True): the learner's bytes can't
    run code here. Frame-walking from the learner's function finds no `case.expected` to copy.
    """

    def __init__(self, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        to_child, self._to_child = os.pipe()
        self._from_child, from_child = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:                       # the learner's side
            os.close(self._to_child)
            os.close(self._from_child)
            self._serve(to_child, from_child)   # never returns
        os.close(to_child)
        os.close(from_child)

    # -- the learner's side ---------------------------------------------------------------------
    @staticmethod
    def _serve(inbox: int, outbox: int) -> None:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):                    # no stdin (the request), no way onto the verdict channel
            os.dup2(null, fd)
        sys.stdout = sys.stderr = open(os.devnull, "w")
        try:
            import cloudpickle

            from labkit.grading.core import run_learner
            # bound here, before the learner's bytes are unpickled: a function that rebinds the module's names
            # (or labkit.grading.core's, which run_learner re-checks at each call) changes nothing
            encode, write, read, loads = _encode, _write, _read, cloudpickle.loads
            try:
                fn = loads(read(inbox))
                write(outbox, encode("loaded", None))
            except BaseException as e:
                write(outbox, encode("load_failed", f"{type(e).__name__}: {e}"))
                os._exit(0)
            while True:
                message = read(inbox)
                if message is None:
                    os._exit(0)
                call, args, kwargs, forbid = loads(message)
                write(outbox, encode(*run_learner(call, fn, args, kwargs, forbid)))
        finally:
            os._exit(0)

    # -- the grader's side ----------------------------------------------------------------------
    def load(self, payload: bytes) -> str | None:
        """Send the pickled function; None when it loaded, else why not."""
        _write(self._to_child, payload)
        kind, text = self._answer()
        return None if kind == "loaded" else str(text)

    def run(self, call: Callable, fn: Any, args: tuple, kwargs: dict, forbid: Any) -> tuple[str, Any]:
        """core.LEARNER_RUNNER: one call of the learner's function, over there."""
        import cloudpickle
        _write(self._to_child, cloudpickle.dumps((call, args, kwargs, tuple(forbid))))
        return self._answer()

    def _answer(self) -> tuple[str, Any]:
        import select
        ready, _, _ = select.select([self._from_child], [], [], self.timeout_s)
        if not ready:
            self.close()
            return "raised", f"TimeoutError: no answer within {self.timeout_s:.0f} s (an endless loop?)"
        data = _read(self._from_child)
        if data is None:
            return "raised", "the process running your function ended before it returned"
        try:
            return _decode(data)
        except Exception as e:
            return "raised", f"its answer could not be read ({type(e).__name__})"

    def close(self) -> None:
        """Stop the learner's process (idempotent)."""
        if self.pid:
            for fd in (self._to_child, self._from_child):
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
            except OSError:
                pass
            self.pid = 0


MAX_MESSAGE_BYTES = 256 * 2**20


def _write(fd: int, data: bytes) -> None:
    data = len(data).to_bytes(8, "little") + data
    while data:
        data = data[os.write(fd, data):]


def _read(fd: int) -> bytes | None:
    """One length-prefixed message, or None at end of file."""
    def exactly(n: int) -> bytes | None:
        chunks, left = [], n
        while left:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    head = exactly(8)
    if head is None:
        return None
    size = int.from_bytes(head, "little")
    if size > MAX_MESSAGE_BYTES:
        return None
    return exactly(size)


def _encode(kind: str, value: Any) -> bytes:
    """An outcome as torch.save bytes of plain values and tensors (what weights_only loading accepts)."""
    import io

    import numpy as np
    import torch
    if kind != "returned":
        message = {"kind": kind, "text": None if value is None else str(value)}
    elif value is None or type(value) in (bool, int, float, str):
        message = {"kind": kind, "value": value}
    elif isinstance(value, torch.Tensor):     # a subclass's __torch_function__ must not run here, unguarded
        with torch._C.DisableTorchFunctionSubclass():
            tensor = torch.Tensor.as_subclass(value, torch.Tensor).detach().cpu().clone()
        message = {"kind": kind, "tensor": tensor}
    elif isinstance(value, np.ndarray) and value.dtype != object:
        message = {"kind": kind, "numpy": torch.from_numpy(np.ascontiguousarray(value))}
    elif isinstance(value, np.generic) and not isinstance(value, np.object_):
        message = {"kind": kind, "npscalar": value.dtype.str, "value": value.item()}
    else:
        message = {"kind": kind, "other": type(value).__name__, "text": _safe_repr(value)}
    buffer = io.BytesIO()
    torch.save(message, buffer)
    return buffer.getvalue()


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)[:200]
    except Exception:
        return "?"


def _decode(data: bytes) -> tuple[str, Any]:
    import io

    import numpy as np
    import torch
    message = torch.load(io.BytesIO(data), weights_only=True)
    kind = message["kind"]
    if kind != "returned":
        return kind, message.get("text")
    if "tensor" in message:
        return kind, message["tensor"]
    if "numpy" in message:
        return kind, message["numpy"].numpy()
    if "npscalar" in message:
        return kind, np.dtype(message["npscalar"]).type(message["value"])
    if "other" in message:
        stand_in = type(str(message["other"]), (), {"__repr__": lambda self, text=str(message["text"]): text})
        return kind, stand_in()
    return kind, message["value"]


class _OverThere:
    """Stands for the learner's function in the grader's process (the real one lives in LearnerProcess)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the learner's function runs in its own process")


def _verdict(request: dict[str, Any], worker: "LearnerProcess | None") -> dict[str, str]:
    """Run the named check on the learner's function, here (expected values) and in `worker` (the calls)."""
    import contextlib
    import io

    from labkit import grading
    from labkit.grading import core

    name = request["check"]
    check = getattr(grading, f"check_{name}", None)
    if check is None:
        known = sorted(k.removeprefix("check_") for k in vars(grading) if k.startswith("check_"))
        return {"status": "failed", "message": f"check_name={name!r} is not a check; allowed: {known}"}
    if worker is not None:
        problem = worker.load(request["fn"])
        fn: Any = _OverThere()
        core.LEARNER_RUNNER = worker.run
    else:                                           # no fork (not POSIX): load and call it here
        import cloudpickle
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                fn, problem = cloudpickle.loads(request["fn"]), None
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
    if problem is not None:
        return {"status": "failed", "message": f"❌ {name}: your function could not be loaded by the grader "
                                               f"({problem})"}
    core.HIDDEN_SEED = request.get("seed")   # each check adds examples nobody has seen
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = check(fn, quiet=True)
    return {"status": result.status, "message": result.message}


def _not_dumpable() -> None:
    """Linux: make this process's memory and open files unreadable through /proc by the learner's process.

    (prctl PR_SET_DUMPABLE = 0.) It protects only when grading does NOT run as root: root may read any
    process. A no-op where prctl is unavailable.
    """
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main() -> None:
    """`python -m labkit.autograde`: read a pickled request on stdin, write '<nonce> <json verdict>' on stdout."""
    import labkit.grading  # noqa: F401  (imported before the fork, so the learner's process starts warm)
    _not_dumpable()
    worker = LearnerProcess() if hasattr(os, "fork") else None   # forked before the request is read
    out = sys.stdout
    request = pickle.loads(sys.stdin.buffer.read())     # written by grade() in the parent, never by the learner
    nonce = request.pop("nonce")
    try:
        verdict = _verdict(request, worker)
    except BaseException as e:   # whatever happens, the parent gets a verdict, not silence
        verdict = {"status": "failed", "message": f"❌ {request.get('check')}: grading stopped with "
                                                      f"{type(e).__name__}: {e}"}
    finally:
        if worker is not None:
            worker.close()
    out.write(f"{nonce} {json.dumps(verdict)}\n")
    out.flush()


if __name__ == "__main__":
    main()
