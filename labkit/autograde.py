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
    """Run `labkit.grading.check_<check_name>` on `fn` in a fresh process; AssertionError with its message unless it passes."""
    import cloudpickle

    if not isinstance(check_name, str) or not check_name.isidentifier():
        raise ValueError(f"check_name={check_name!r} must be the name of a check, e.g. 'tensor_bytes'")
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
    verdict = None
    for line in run.stdout.decode(errors="replace").splitlines():
        if line.startswith(nonce + " "):
            verdict = json.loads(line[len(nonce) + 1:])
    if verdict is None:
        tail = run.stderr.decode(errors="replace").strip().splitlines()[-3:]
        raise AssertionError(f"{check_name}: the grader could not run your function (exit code {run.returncode}): "
                             + " | ".join(tail))
    if verdict["status"] != "passed":
        raise AssertionError(verdict["message"])


def _verdict(request: dict[str, Any]) -> dict[str, str]:
    """Unpickle the learner's function and run the named check on it, in this (fresh) process."""
    import contextlib
    import io

    import cloudpickle

    from labkit import grading
    from labkit.grading import core

    core.HIDDEN_SEED = request.get("seed")   # each check adds examples nobody has seen
    name = request["check"]
    check = getattr(grading, f"check_{name}", None)
    if check is None:
        known = sorted(k.removeprefix("check_") for k in vars(grading) if k.startswith("check_"))
        return {"status": "failed", "message": f"check_name={name!r} is not a check; allowed: {known}"}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            fn = cloudpickle.loads(request["fn"])
    except Exception as e:
        return {"status": "failed", "message": f"❌ {name}: your function could not be loaded by the grader "
                                               f"({type(e).__name__}: {e})"}
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        result = check(fn, quiet=True)         # the learner's prints don't reach the verdict channel
    return {"status": result.status, "message": result.message}


def main() -> None:
    """`python -m labkit.autograde`: read a pickled request on stdin, write '<nonce> <json verdict>' on stdout."""
    out = sys.stdout
    request = pickle.loads(sys.stdin.buffer.read())     # written by grade() in the parent, never by the learner
    nonce = request.pop("nonce")
    try:
        verdict = _verdict(request)
    except BaseException as e:   # whatever happens, the parent gets a verdict, not silence
        verdict = {"status": "failed", "message": f"❌ {request.get('check')}: grading stopped with "
                                                      f"{type(e).__name__}: {e}"}
    out.write(f"{nonce} {json.dumps(verdict)}\n")
    out.flush()


if __name__ == "__main__":
    main()
