"""Graded tests run the check in a fresh process: rebinding names in the notebook doesn't help, delegating fails.

Each `grade` call starts a Python process (≈ 3–5 s, mostly `import torch`), so the cases are few and chosen.
"""
import math
import sys

import pytest
import torch
from grading_helpers import notebook_function

from labkit import grading
from labkit.autograde import grade

RIGHT = "def tensor_bytes(shape, dtype):\n    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()\n"
WRONG = "def tensor_bytes(shape, dtype):\n    return math.prod(shape)\n"


def test_right_function_passes():
    assert grade("tensor_bytes", notebook_function(RIGHT, "tensor_bytes")) is None
    assert grade("check_tensor_bytes", notebook_function(RIGHT, "tensor_bytes")) is None   # either spelling


def test_wrong_function_raises_with_the_checks_message():
    with pytest.raises(AssertionError) as e:
        grade("tensor_bytes", notebook_function(WRONG, "tensor_bytes"))
    message = str(e.value)
    assert "tensor_bytes((3, 4), torch.float32)" in message and "expected 48, got 12" in message
    assert "hint: that is the number of elements" in message


def test_rebinding_the_check_and_torch_in_the_notebook_does_not_help(monkeypatch):
    # the trick that scored 2/2: replace the check in the notebook's process
    monkeypatch.setattr(grading, "check_tensor_bytes", lambda *a, **k: True)
    monkeypatch.setattr(torch.Tensor, "element_size", lambda self: 1)   # makes the wrong answer look right here
    from labkit import memory
    monkeypatch.setattr(memory, "tensor_bytes", lambda shape, dtype: math.prod(shape))
    with pytest.raises(AssertionError, match="expected 48, got 12"):
        grade("tensor_bytes", notebook_function(WRONG, "tensor_bytes"))


def test_rebinding_the_expected_value_source_does_not_help(monkeypatch):
    # the check computes cross-entropy's expected values with F.cross_entropy: rebinding it here changes nothing
    import torch.nn.functional as F
    wrong = notebook_function("def ce(logits, targets):\n    return (torch.logsumexp(logits, -1) - logits.gather(1, "
                              "targets[:, None]).squeeze(1)).sum()\n", "ce")
    monkeypatch.setattr(F, "cross_entropy", lambda l, t: wrong(l, t))
    with pytest.raises(AssertionError, match="SUM over the examples"):
        grade("cross_entropy", wrong)


def test_delegating_to_the_reference_fails_with_the_tripwire_message():
    from labkit.losses import cross_entropy
    delegating = notebook_function("def ce(logits, targets):\n    return reference(logits, targets)\n", "ce",
                                   reference=cross_entropy)
    with pytest.raises(AssertionError, match="your function calls `labkit.losses.cross_entropy`, the reference"):
        grade("cross_entropy", delegating)


@pytest.mark.parametrize("body, words", [
    ("    x = math.prod(shape)\n", "did you forget `return`?"),
    ("    return 1 / 0\n", "raised ZeroDivisionError"),
    ("    raise NotImplementedError()\n", "not yet solved"),
], ids=["None", "crash", "unsolved"])
def test_none_crash_and_unsolved_raise_clear_assertion_errors(body, words):
    fn = notebook_function("def tensor_bytes(shape, dtype):\n" + body, "tensor_bytes")
    with pytest.raises(AssertionError, match=words.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        grade("tensor_bytes", fn)


def test_a_function_that_cannot_be_pickled_says_so():
    import threading
    fn = notebook_function("def tensor_bytes(shape, dtype):\n    with lock:\n        return 0\n", "tensor_bytes",
                           lock=threading.Lock())
    with pytest.raises(AssertionError, match="could not be sent to the grader"):
        grade("tensor_bytes", fn)


def test_an_unknown_check_name_is_refused():
    with pytest.raises(ValueError, match="check_name"):
        grade("tensor bytes", lambda *a: 0)


def test_the_upgraded_graded_cell_ignores_a_rebound_grade(monkeypatch):
    # the tamper-proof cell pops labkit.autograde from sys.modules, so a patched copy there doesn't count
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "### BEGIN HIDDEN TESTS\nassert grading.check_tensor_bytes(tensor_bytes, quiet=True)\n### END HIDDEN TESTS")])
    assert grading.upgrade_graded_cells(nb) == 1
    import labkit.autograde
    monkeypatch.setattr(labkit.autograde, "grade", lambda *a, **k: None)
    monkeypatch.setattr(grading, "check_tensor_bytes", lambda *a, **k: True)
    cell = {"__name__": "__main__", "tensor_bytes": notebook_function(WRONG, "tensor_bytes"), "grading": grading}
    with pytest.raises(AssertionError, match="expected 48, got 12"):
        exec(nb.cells[0].source, cell)
    sys.modules["labkit.autograde"] = labkit.autograde     # leave the module table as the other tests expect


def test_a_table_of_the_public_answers_passes_the_self_check_but_not_the_grader():
    # precomputed outside the function (no tripwire sees it), looked up inside: the hidden examples catch it
    table = {}
    grading.check_tensor_bytes(lambda shape, dtype: table.setdefault((shape, dtype), math.prod(shape) * dtype.itemsize),
                               quiet=True)
    lookup = notebook_function("def tensor_bytes(shape, dtype):\n    return table[(shape, dtype)]\n", "tensor_bytes",
                               table=table)
    assert grading.check_tensor_bytes(lookup, quiet=True)
    with pytest.raises(AssertionError, match=r"a hidden example \(grader's seed \d+\)"):
        grade("tensor_bytes", lookup)


FRAME_WALKER = '''
def tensor_bytes(shape, dtype):
    import sys
    frame = sys._getframe(1)
    while frame is not None:              # climb to the check's frame and copy its expected value
        if "case" in frame.f_locals:
            return frame.f_locals["case"].expected
        frame = frame.f_back
    return 0
'''


def test_copying_the_expected_value_from_the_checks_frame_fails_in_the_grader():
    # in the notebook's own process the self-check can be fooled this way; the grader calls the function in a
    # process forked before any expected value exists
    walker = notebook_function(FRAME_WALKER, "tensor_bytes")
    assert grading.check_tensor_bytes(walker, quiet=True)
    with pytest.raises(AssertionError, match="expected 48, got 0"):
        grade("tensor_bytes", walker)


def test_answers_come_back_as_what_they_were():
    # a numpy array (not a tensor) and an arbitrary object are reported as such, from the other process
    fn = notebook_function("def ng(counts, k):\n    s = counts.double() + k\n    return (s / s.sum(-1, keepdim=True))"
                           ".numpy()\n", "ng")
    with pytest.raises(AssertionError, match="returned a numpy array of shape"):
        grade("ngram_probabilities", fn)


def test_graded_cell_in_a_real_kernel(tmp_path):
    # the issue-8 trick, end to end: a wrong answer plus `grading.check_tensor_bytes = lambda ...: True` in the
    # answer cell; the upgraded graded cell still fails, and its error carries the check's message
    import nbformat
    from nbclient import NotebookClient
    graded = nbformat.v4.new_code_cell("### BEGIN HIDDEN TESTS\nassert grading.check_tensor_bytes(tensor_bytes, "
                                       "quiet=True)\n### END HIDDEN TESTS")
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("import math, torch\nfrom labkit import grading"),
        nbformat.v4.new_code_cell(WRONG + "grading.check_tensor_bytes = lambda fn, quiet=False: True\n"),
        graded,
    ])
    assert grading.upgrade_graded_cells(nb) == 1
    NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert len(errors) == 1 and errors[0]["ename"] == "AssertionError"
    assert "expected 48, got 12" in errors[0]["evalue"] and "hint:" in errors[0]["evalue"]


def test_a_second_answer_line_is_a_forgery_and_fails(monkeypatch):
    """The grader writes one '<nonce> <verdict>' line; code that learned the nonce and wrote another one fails."""
    import json
    import pickle
    import subprocess

    from labkit import autograde

    def forged_run(cmd, input, **kwargs):
        nonce = pickle.loads(input)["nonce"]
        line = f"{nonce} {json.dumps({'status': 'passed', 'message': 'ok'})}\n"
        return subprocess.CompletedProcess(cmd, 0, stdout=(line + line).encode(), stderr=b"")

    monkeypatch.setattr(autograde.subprocess, "run", forged_run)
    with pytest.raises(AssertionError, match="more than once"):
        grade("tensor_bytes", notebook_function(WRONG, "tensor_bytes"))


def test_a_private_helper_of_the_reference_fails_in_the_grader_too():
    from labkit import prune
    fn = notebook_function("def magnitude_mask(w, s):\n    k = round(s * w.numel())\n"
                           "    return prune._remove_smallest(w.abs(), k)\n", "magnitude_mask", prune=prune)
    with pytest.raises(AssertionError, match="your function calls `labkit.prune._remove_smallest`"):
        grade("magnitude_mask", fn)


def test_running_the_reference_in_another_process_fails_in_the_grader():
    """A child process runs unguarded: asking one to compute the reference's answer must not pass (found by review)."""
    source = ("def teacher_targets_bytes(n, V, k, vb, ib):\n"
              "    import subprocess, sys\n"
              "    code = f'from labkit.distill import teacher_targets_bytes as f; print(f({n}, {V}, {k!r}, {vb}, {ib}))'\n"
              "    return int(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout)\n")
    with pytest.raises(AssertionError, match="your function starts another process"):
        grade("teacher_targets_bytes", notebook_function(source, "teacher_targets_bytes"))


# ---- review items 3 and 5: what the learner's function can do in its own process -------------------------------

LATE_TENSOR = '''
def tensor_bytes(shape, dtype):
    from labkit import memory

    class Late(torch.Tensor):          # every operation on it computes the reference's answer, after the guard
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            real = torch.tensor(table["ref"](shape, dtype))
            with torch._C.DisableTorchFunctionSubclass():
                return func(*(real if isinstance(a, Late) else a for a in args), **(kwargs or {}))
    return torch.tensor(0).as_subclass(Late)
'''


def test_an_answer_computed_after_the_guard_fails_in_the_grader():
    from labkit import memory
    fn = notebook_function(LATE_TENSOR, "tensor_bytes", table={"ref": memory.tensor_bytes})
    with pytest.raises(AssertionError, match="expected 48, got 0"):
        grade("tensor_bytes", fn)


def test_ctypes_fails_in_the_grader():
    source = ("def tensor_bytes(shape, dtype):\n    import ctypes\n    ctypes.CDLL(None).system(b'true')\n"
              "    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()\n")
    with pytest.raises(AssertionError, match="calls C code through ctypes"):
        grade("tensor_bytes", notebook_function(source, "tensor_bytes"))


SWITCH_OFF = '''
def tensor_bytes(shape, dtype):
    import sys
    list(map(sys._getframe(1).f_locals["setprofile"], [None]))    # the guard's own switch, called from C
    return table["ref"](shape, dtype)
'''

SWAP_MACHINERY = '''
def tensor_bytes(shape, dtype):
    import contextlib, sys
    core = sys.modules["labkit.grading.core"]
    core._guarded = lambda f, files, called: f
    core.tripwires = lambda forbid, fn: contextlib.nullcontext([])
    if shape == (3, 4) and dtype == torch.float32:    # call 1, answered honestly; later calls delegate
        return 48
    return table["ref"](shape, dtype)
'''


@pytest.mark.parametrize("source, words", [(SWITCH_OFF, "the grading guard was switched off"),
                                           (SWAP_MACHINERY, "core._guarded")], ids=["switch off", "swap core"])
def test_switching_the_guard_off_fails_in_the_grader(source, words):
    from labkit import memory
    with pytest.raises(AssertionError, match=words):
        grade("tensor_bytes", notebook_function(source, "tensor_bytes", table={"ref": memory.tensor_bytes}))


class _PatchesCoreWhenUnpickled:
    def __reduce__(self):
        code = ("import contextlib, labkit.grading.core as c\nc._guarded = lambda f, files, called: f\n"
                "c.tripwires = lambda forbid, fn, n=contextlib.nullcontext: n([])")
        return (exec, (code,))


def test_swapping_the_machinery_at_unpickle_time_fails_in_the_grader():
    source = "def tensor_bytes(shape, dtype):\n    hook\n    return memory.tensor_bytes(shape, dtype)\n"
    from labkit import memory
    fn = notebook_function(source, "tensor_bytes", hook=_PatchesCoreWhenUnpickled(), memory=memory)
    with pytest.raises(AssertionError, match="core._guarded"):
        grade("tensor_bytes", fn)
