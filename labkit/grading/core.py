"""The machinery every self-check shares: run the learner's function on examples, compare, explain.

A check builds its examples and their expected answers FIRST (from labkit's reference or a closed
form), then `run_check` calls the learner's function on a fresh copy of each example's inputs with
the reference implementations swapped for tripwires, and compares what came back:

- the return value must be what the lab's next cells use (a whole number, a number, or a tensor of
  a given shape and dtype); a `None` return, a numpy array where a tensor is needed, a float where a
  count is asked for ... are each named in plain words;
- integers are compared exactly, floats and tensors within a tolerance; on a mismatch the message
  points at the first place the output differs (row, column) and adds a hint when the wrong answer
  matches a mistake the check knows;
- anything that goes wrong inside a check is reported, never raised, so a student copy always runs.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import io
import math
import numbers
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

PASS, FAIL, TODO = "passed", "failed", "not yet solved"
READABLE = {PASS: "passed", FAIL: "does not pass its check yet", TODO: "is not solved yet"}


@dataclass
class CheckResult:
    """What a self-check found; truthy when the learner's function passed."""

    name: str
    status: str          # PASS, FAIL or TODO
    message: str
    returns: str = "any"         # what the lab uses next: "int", "float", "tensor" or "any"
    reference: str = ""          # dotted name of labkit's reference implementation, for the fallback note

    def __bool__(self) -> bool:
        return self.status == PASS

    def __repr__(self) -> str:  # what a notebook shows if the result is the cell's last value
        return self.message


@dataclass
class Case:
    """One example: the learner's function is called as fn(*args, **kwargs) and must return `expected`."""

    description: str
    args: tuple
    kwargs: dict = field(default_factory=dict)
    expected: Any = None
    shown: str | None = None     # how to show the expected value, e.g. "exp(ln 84) = 84"


@dataclass
class Mistake:
    """A typical wrong answer: when `matches(got, *args)` is true, the failure message adds `hint`."""

    hint: str
    matches: Callable[..., bool]


def same_as(wrong: Callable[..., Any], rtol: float = 1e-4, atol: float = 1e-5) -> Callable[..., bool]:
    """A `Mistake.matches` that is true when the learner's output equals what `wrong(*args)` computes."""
    def matches(got: Any, *args: Any) -> bool:
        expected = wrong(*args)
        if isinstance(expected, torch.Tensor):
            return (isinstance(got, torch.Tensor) and got.shape == expected.shape
                    and bool(torch.allclose(got.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)))
        value, problem = as_number(got, integer=isinstance(expected, int))
        return problem is None and math.isclose(value, expected, rel_tol=rtol, abs_tol=atol)
    return matches


# ---------------------------------------------------------------------------------------------
# Showing numbers and tensors the way a learner reads them


def show_number(x: Any) -> str:
    """An int with thousands separators; a float with up to 6 significant digits (83.99999999999999 -> 84)."""
    if isinstance(x, bool):
        return repr(x)
    if isinstance(x, numbers.Integral):
        return f"{int(x):,}"
    if isinstance(x, numbers.Real):
        x = float(x)
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return f"{x:.6g}"
    return repr(x)


def where(index: Sequence[int], ndim: int, axes: Sequence[str] | None = None) -> str:
    """'row 3, column 1' for a matrix, 'index 4' for a vector, 'index (0, 2, 1)' beyond; or 'head 1, position 2'."""
    index = [int(i) for i in index]
    if axes and len(axes) == ndim:
        return ", ".join(f"{axis} {i}" for axis, i in zip(axes, index))
    if ndim == 1:
        return f"index {index[0]}"
    if ndim == 2:
        return f"row {index[0]}, column {index[1]}"
    return f"index {tuple(index)}"


def kind_of(x: Any) -> str:
    """A plain-words name for what a function returned."""
    try:
        return _kind_of(x)
    except Exception:
        return f"an object of type {type(x).__name__}"


def _kind_of(x: Any) -> str:
    if x is None:
        return "None"
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    if isinstance(x, np.ndarray):
        return f"a numpy array of shape {x.shape} and dtype {x.dtype}"
    if isinstance(x, numbers.Number) and not isinstance(x, bool):
        return f"{type(x).__name__} {show_number(x)}"
    return f"{type(x).__name__} {x!r}"[:120]


NONE_RETURNED = "returned None — did you forget `return`?"


def as_number(got: Any, integer: bool) -> tuple[Any, str | None]:
    """(value, None) for any numeric type (Python, numpy, 0-dim tensor), else (None, what is wrong).

    `integer=True` also demands a whole-number type: a count of bytes or parameters is an int.
    """
    if got is None:
        return None, NONE_RETURNED
    if isinstance(got, (torch.Tensor, np.ndarray)):
        if got.ndim == 0:
            return as_number(got.item(), integer)
        return None, f"returned {kind_of(got)}; expected one number"
    if isinstance(got, bool):
        return None, f"returned {got!r} (True/False); expected a number"
    if isinstance(got, numbers.Integral):
        return int(got), None
    if isinstance(got, numbers.Real) and not integer and not isinstance(got, (float, np.floating)):
        return None, (f"returned {got!r} (a {type(got).__name__}); the lab formats and plots this number, so "
                      "return a float — e.g. float(...) around it")
    if isinstance(got, numbers.Real):
        if integer:
            return None, (f"returned {float(got)!r} (a {type(got).__name__}); this is a whole number, so return "
                          "an int — e.g. use // for division, or int(...) around an exact result")
        return float(got), None
    return None, f"returned {kind_of(got)}; expected a number"


# ---------------------------------------------------------------------------------------------
# Comparing


@dataclass
class Returns:
    """What the lab does with the answer next, so the check demands exactly that.

    kind: "int" (compared exactly), "float" (within tolerance), "tensor" (shape, dtype, values) or "any".
    dtypes: for tensors, the dtypes the next cells accept (None: any floating dtype; "input": the
    dtype of the first argument). why: a short clause saying what the next cells do with it.
    """

    kind: str = "any"
    dtypes: Any = None
    why: str = ""
    axes: tuple[str, ...] | None = None     # names of a tensor's dimensions, for "where it differs"


def compare(got: Any, case: Case, returns: Returns, rtol: float, atol: float) -> str | None:
    """None if `got` is right for `case`, else a one-paragraph explanation of the first difference."""
    expected = case.expected
    shown = case.shown or (show_number(expected) if not isinstance(expected, torch.Tensor) else "")
    if returns.kind in ("int", "float"):
        value, problem = as_number(got, integer=returns.kind == "int")
        if problem:
            return problem
        if returns.kind == "int":
            if value == expected:
                return None
            diff = value - expected
            return f"expected {shown}, got {show_number(value)} ({'+' if diff > 0 else '−'}{show_number(abs(diff))})"
        if math.isclose(value, expected, rel_tol=rtol, abs_tol=atol):
            return None
        return f"expected {shown}, got {show_number(value)}"
    if returns.kind == "tensor":
        return compare_tensor(got, case, returns, rtol, atol)
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def compare_tensor(got: Any, case: Case, returns: Returns, rtol: float, atol: float) -> str | None:
    """Type, dtype, shape, then values: the first one that is wrong, said in words."""
    expected: torch.Tensor = case.expected
    why = f" ({returns.why})" if returns.why else ""
    if got is None:
        return NONE_RETURNED
    if isinstance(got, np.ndarray):
        return (f"returned {kind_of(got)}; the lab's next cells need a torch.Tensor{why} — compute with torch "
                "operations (or wrap the result in torch.from_numpy(...))")
    if not isinstance(got, torch.Tensor):
        return f"returned {kind_of(got)}; expected a torch.Tensor of shape {tuple(expected.shape)}{why}"
    allowed = returns.dtypes
    if allowed == "input":
        allowed = (case.args[0].dtype,)
    if allowed is None:
        if not got.dtype.is_floating_point:
            return f"returned a tensor of dtype {got.dtype}; expected a floating-point tensor{why}"
    elif got.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        return f"returned a tensor of dtype {got.dtype}; the lab needs {names}{why}"
    if got.shape != expected.shape:
        return f"returned shape {tuple(got.shape)}, expected shape {tuple(expected.shape)}"
    g, e = got.detach().double(), expected.detach().double()
    close = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return None
    bad = (~close).nonzero()
    n_bad = bad.shape[0]
    if got.dim() == 0:
        return f"expected {show_number(e.item())}, got {show_number(g.item())}"
    first = bad[0].tolist()
    at = where(first, got.dim(), returns.axes)
    return (f"{at}: expected {show_number(e[tuple(first)].item())}, got {show_number(g[tuple(first)].item())} "
            f"({n_bad:,} of {got.numel():,} values differ)")


class ShownText(str):
    """An answer a check's call wrote out as text, shown without quotes: `expected (0, [(48, 16)]), got …` reads
    as the structure the function returns, not as a string it should return. (In the grader's process it
    arrives as a stand-in of this class's name whose repr is the text: `shown_text` reads both.)"""

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)


def shown_text(got: Any) -> str | None:
    """The text of an answer as a check's call wrote it (a str, or the grader's stand-in for a ShownText),
    else None."""
    if isinstance(got, str):
        return str.__str__(got)
    if type(got).__name__ == ShownText.__name__:
        try:
            text = repr(got)
        except Exception:   # noqa: BLE001 — an unreadable answer is simply not one of ours
            return None
        return str.__str__(text) if isinstance(text, str) else None
    return None


class Shown:
    """The expected answer's text: equal to an answer with the same text (`shown_text`), shown without quotes."""

    def __init__(self, text: str):
        self.text = text

    def __eq__(self, other: object) -> bool:
        return shown_text(other) == self.text

    __hash__ = None

    def __repr__(self) -> str:
        return self.text


# ---------------------------------------------------------------------------------------------
# Tripwires: the learner must write the function, not call labkit's (or torch's) reference


class ReferenceCalled(BaseException):
    """Raised by a tripwire. A BaseException, so `except Exception` in the learner's code can't swallow it."""


def _resolve(dotted: str) -> tuple[Any, str] | None:
    """('torch.nn.functional', 'cross_entropy') -> (the module object, 'cross_entropy'); None if absent."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            owner = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:-1]:
                owner = getattr(owner, name)
        except AttributeError:
            return None
        return (owner, parts[-1]) if hasattr(owner, parts[-1]) else None
    return None


def _process_starters() -> frozenset:
    """The built-in functions that start (or become) another program: none belongs in an exercise's answer."""
    import os
    found = [getattr(os, name) for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv",
                                            "execve", "spawnv", "spawnve") if hasattr(os, name)]
    try:
        import _posixsubprocess
        found.append(_posixsubprocess.fork_exec)
    except ImportError:
        pass
    return frozenset(found)


_PROCESS_STARTERS = _process_starters()              # kept alive, so their ids stay theirs
_PROCESS_STARTER_IDS = frozenset(id(f) for f in _PROCESS_STARTERS)   # by identity: some C callables can't be hashed

#: Modules whose every Python function is a tripwire while any learner's function runs: the checks' own
#: reference helpers live here (one module per group of labs).
ALWAYS_FORBIDDEN_MODULES = ("labkit.grading.checks", "labkit.grading.checks_compression", "labkit.grading.checks_pools")


def forbidden_files(forbidden: Sequence[str]) -> tuple[str, ...]:
    """Source files (or package folders, ending in '/') of the modules named 'module.*' in `forbidden`,
    plus ALWAYS_FORBIDDEN_MODULES: no function defined there may run inside the learner's function."""
    import os
    files = []
    for dotted in [*ALWAYS_FORBIDDEN_MODULES, *(d[:-2] for d in forbidden if d.endswith(".*"))]:
        try:
            module = importlib.import_module(dotted)
        except ImportError:
            continue
        path = getattr(module, "__file__", None)
        if not path:
            continue
        if os.path.basename(path) == "__init__.py":    # a package: everything below its folder
            files.append(os.path.dirname(path) + os.sep)
        else:
            files.append(path)
    return tuple(files)


class _StandIn:
    """What an answer of an unknown type becomes: its type's name and its repr, taken while the guard was on."""

    __slots__ = ("_name", "_text")

    def __init__(self, name: str, text: str):
        self._name, self._text = name, text

    def __repr__(self) -> str:
        return self._text

    def __eq__(self, other: object) -> bool:
        return other is self

    __hash__ = object.__hash__


def _stand_in(x: Any) -> Any:
    """An object of a class named like type(x) whose repr is repr(x) now (learner's code runs here, guarded)."""
    try:
        text = repr(x)
        text = str.__str__(text) if isinstance(text, str) else "?"
    except ReferenceCalled:
        raise
    except Exception:  # noqa: BLE001  (a repr that crashes is shown as the object's type)
        text = f"<{type(x).__name__} object>"
    kind = type(str(type(x).__name__), (_StandIn,), {"__slots__": ()})
    return kind(kind.__name__, text[:1000])


#: Exact types whose objects hold no learner code: kept as they are.
_KEPT_TYPES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.Size, torch.device, np.dtype)


def _make_plain() -> tuple[Callable[..., Any], Callable[[torch.Tensor], torch.Tensor]]:
    """Build `_plain` and `_plain_tensor` around the helpers as they are now (a learner's function that rebinds
    the module's names mid-call changes nothing here)."""
    kept, stand_in = _KEPT_TYPES, _stand_in

    def _plain(x: Any, depth: int = 0) -> Any:
        """`x` as plain data: subclasses of dict/list/tuple/set/int/float/str → their exact base type,
        tensor and ndarray subclasses → base tensors/arrays, numpy scalars kept, anything else → a
        stand-in holding its repr.

        Called while the guard is on, so an overridden items()/__iter__/__repr__/__torch_function__ runs
        guarded, and nothing the learner wrote runs after it (the base types' own methods read the containers).
        """
        from decimal import Decimal
        from fractions import Fraction
        t = type(x)
        if t in kept or t is Decimal:
            return x
        if depth > 50:
            return stand_in(x)
        if t is Fraction:
            return Fraction(int.__int__(x.numerator), int.__int__(x.denominator))
        if isinstance(x, torch.Tensor):
            return plain_tensor(x)
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                return stand_in(x)
            return x if t is np.ndarray else np.ndarray.view(x, np.ndarray).copy()
        if isinstance(x, np.generic):
            return x if t.__module__ == "numpy" else stand_in(x)
        if isinstance(x, int):
            return int.__int__(x)
        if isinstance(x, float):
            return float.__float__(x)
        if isinstance(x, complex):
            return complex.__complex__(x)
        if isinstance(x, str):
            return str.__str__(x)
        if isinstance(x, bytes):
            return bytes.__bytes__(x) if hasattr(bytes, "__bytes__") else bytes(memoryview(x))
        if isinstance(x, dict):
            return {plain(k, depth + 1): plain(v, depth + 1) for k, v in list(dict.items(x))}
        if isinstance(x, list):
            return [plain(v, depth + 1) for v in list.__iter__(x)]
        if isinstance(x, tuple):
            return tuple(plain(v, depth + 1) for v in tuple.__iter__(x))
        if isinstance(x, frozenset):
            return frozenset(plain(v, depth + 1) for v in frozenset.__iter__(x))
        if isinstance(x, set):
            return {plain(v, depth + 1) for v in set.__iter__(x)}
        return stand_in(x)

    def _plain_tensor(x: torch.Tensor) -> torch.Tensor:
        """A base torch.Tensor with the same values (and autograd history), built with torch function subclasses off."""
        if type(x) is torch.Tensor or type(x) is torch.nn.Parameter:
            base = x
        else:
            with torch._C.DisableTorchFunctionSubclass():
                base = torch.Tensor.as_subclass(x, torch.Tensor)
        if torch._C._dispatch_keys(base).has(torch._C.DispatchKey.Python):   # a wrapper whose ops run Python code
            with torch._C.DisableTorchFunctionSubclass():
                values = torch.Tensor.tolist(base)
            base = torch.tensor(plain(values), dtype=base.dtype)
        return base

    plain, plain_tensor = _plain, _plain_tensor
    return _plain, _plain_tensor


_plain, _plain_tensor = _make_plain()


def _c_functions(module_name: str) -> list:
    """The built-in functions of a module; [] where the module is missing."""
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return []
    return [v for v in vars(module).values() if type(v).__name__ == "builtin_function_or_method"]


#: Built-in functions that load C code by hand (ctypes' own entry points): calling the C library's system() that
#: way would start another program that runs the reference unguarded.
_FOREIGN_CALLERS = frozenset(_c_functions("_ctypes"))
_FOREIGN_CALLER_IDS = frozenset(id(f) for f in _FOREIGN_CALLERS)


def _foreign_code_files() -> tuple[str, ...]:
    """ctypes' package folder: its Python entry points (CDLL, its attribute lookup) trip like a reference."""
    import os
    try:
        import ctypes
    except ImportError:
        return ()
    return (os.path.dirname(ctypes.__file__) + os.sep,)


def _make_guard() -> Callable[[Callable, tuple[str, ...], list[str]], Callable]:
    """Build `_guarded`, holding the real profile switches only in this closure (no module attribute reaches them)."""
    import _thread
    setprofile, getprofile, thread_setprofile = sys.setprofile, sys.getprofile, threading.setprofile
    switches = (sys.setprofile, sys.settrace)
    switch_ids = frozenset(id(f) for f in switches)
    start_thread = _thread.start_new_thread
    foreign_files, foreign_ids, process_ids = _foreign_code_files(), _FOREIGN_CALLER_IDS, _PROCESS_STARTER_IDS
    plain = _plain

    def _guarded(fn: Callable, files: tuple[str, ...], called: list[str]) -> Callable:
        """`fn`, run with a profile hook that trips on any Python function defined in `files`.

        This catches a reference however it was reached — a private helper of the same module, an alias,
        an object found through gc or a subclass list — where swapping module attributes cannot. It also
        trips on starting another process or thread, on calling into C code by hand (ctypes), and on
        switching the hook off; what `fn` returned is turned into plain data while the hook is still on
        (`_plain`), so none of the learner's code runs after it.
        """
        def trip(name: str) -> None:
            called.append(name)
            raise ReferenceCalled(name)

        def guard(frame: Any, event: str, arg: Any) -> None:
            if event == "c_call":
                if id(arg) in process_ids:   # a child process would run the reference unguarded
                    trip(f"{getattr(arg, '__module__', None) or 'os'}.{arg.__name__} (starting another process)")
                if id(arg) in foreign_ids:
                    trip(f"_ctypes.{arg.__name__} {THROUGH_CTYPES}")
                if id(arg) in switch_ids and frame.f_code is not guarded.__code__:
                    trip(f"sys.{arg.__name__} (switching the grading guard off)")
                if arg is start_thread:      # a new thread would start without this hook
                    trip("_thread.start_new_thread (starting an unguarded thread)")
            elif event == "call":
                path = frame.f_code.co_filename
                if foreign_files and path.startswith(foreign_files):
                    trip(f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname} {THROUGH_CTYPES}")
                if any(path == f or (f.endswith(("/", "\\")) and path.startswith(f)) for f in files):
                    trip(f"{frame.f_globals.get('__name__', '?')}.{frame.f_code.co_qualname}")

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            thread_setprofile(guard)
            setprofile(guard)
            try:
                answer = plain(fn(*args, **kwargs))      # plain data, built while the guard is still on
                if getprofile() is not guard:
                    trip(GUARD_OFF)
                return answer
            finally:
                setprofile(None)
                thread_setprofile(None)
        return guarded
    return _guarded


THROUGH_CTYPES = "(calling C code through ctypes)"
GUARD_OFF = "sys.getprofile() is no longer the guard (switching the grading guard off)"


_guarded = _make_guard()


@contextlib.contextmanager
def tripwires(forbidden: Sequence[str], fn: Callable) -> Iterator[list[str]]:
    """While inside, each forbidden reference (and every name in `fn` bound to it) raises ReferenceCalled.

    Yields the list of forbidden names that were called. Module and class attributes are swapped,
    as are the learner's own globals, closure cells and default arguments that hold the same object
    (so `from labkit.losses import cross_entropy` is caught too). Everything is restored on exit.
    """
    called: list[str] = []
    undo: list[Callable[[], None]] = []

    def wire_for(name: str, original: Any) -> Any:
        def tripwire(*args: Any, **kwargs: Any) -> Any:
            called.append(name)
            raise ReferenceCalled(name)
        if isinstance(original, property) or type(original).__name__ == "getset_descriptor":
            return property(tripwire)
        return tripwire

    try:
        swapped: dict[int, Any] = {}
        names: dict[int, str] = {}
        # switching the guard off from inside the learner's function is refused too
        for dotted in [*(d for d in forbidden if not d.endswith(".*")), "sys.setprofile", "sys.settrace",
                       "threading.setprofile", "threading.settrace"]:
            found = _resolve(dotted)
            if found is None:
                continue
            owner, attr = found
            in_dict = attr in vars(owner)
            original = vars(owner)[attr] if in_dict else getattr(owner, attr)
            if not in_dict:   # e.g. torch.Tensor.nbytes lives on torch._C.TensorBase
                original = next((vars(k)[attr] for k in type.mro(owner) if attr in vars(k)), original) \
                    if isinstance(owner, type) else original
            switch = dotted.startswith(("sys.", "threading.")) and dotted not in forbidden
            wire = wire_for(f"{dotted} (switching the grading guard off)" if switch else dotted, original)
            setattr(owner, attr, wire)
            undo.append((lambda o=owner, a=attr, v=original, d=in_dict: setattr(o, a, v) if d else delattr(o, a)))
            swapped[id(original)] = wire
            names[id(original)] = dotted
        handed_in = getattr(fn, "func", fn)               # the reference itself, or a functools.partial of it
        if id(handed_in) in names:
            called.append(names[id(handed_in)])
        for target in _learner_functions(fn):
            g = target.__globals__
            for key, value in list(g.items()):
                if id(value) in swapped and callable(value):
                    g[key] = swapped[id(value)]
                    undo.append(lambda g=g, k=key, v=value: g.__setitem__(k, v))
            for cell in target.__closure__ or ():
                try:
                    value = cell.cell_contents
                except ValueError:
                    continue
                if id(value) in swapped:
                    cell.cell_contents = swapped[id(value)]
                    undo.append(lambda c=cell, v=value: setattr(c, "cell_contents", v))
            if target.__defaults__ and any(id(v) in swapped for v in target.__defaults__):
                old = target.__defaults__
                target.__defaults__ = tuple(swapped.get(id(v), v) for v in old)
                undo.append(lambda t=target, o=old: setattr(t, "__defaults__", o))
            if target.__kwdefaults__ and any(id(v) in swapped for v in target.__kwdefaults__.values()):
                old_kw = target.__kwdefaults__
                target.__kwdefaults__ = {k: swapped.get(id(v), v) for k, v in old_kw.items()}
                undo.append(lambda t=target, o=old_kw: setattr(t, "__kwdefaults__", o))
        yield called
    finally:
        for restore in reversed(undo):
            restore()


def _learner_functions(fn: Callable) -> list:
    """`fn` and the plain functions it holds in closures (one level): whose names the tripwires rebind."""
    fn = getattr(fn, "__func__", fn)
    out = [fn] if hasattr(fn, "__globals__") else []
    for cell in getattr(fn, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:
            continue
        if hasattr(value, "__globals__") and value not in out:
            out.append(value)
    return out


# ---------------------------------------------------------------------------------------------
# Running a check


def _fresh(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A deep copy of an example's inputs: a function that edits its inputs in place can't change ours."""
    return copy.deepcopy(args), copy.deepcopy(kwargs)


#: labkit's own grading functions: run_learner keeps them in a closure and fails the check if the module's names
#: no longer point at them (a learner's function that swapped `core._guarded` or `core.tripwires` for its later calls).
_MACHINERY = ("_guarded", "tripwires", "forbidden_files", "_plain", "_plain_tensor", "_stand_in", "_KEPT_TYPES",
              "_learner_functions", "_resolve", "_tensors_in", "_same_tensor", "ReferenceCalled",
              "ALWAYS_FORBIDDEN_MODULES", "_PROCESS_STARTER_IDS", "_FOREIGN_CALLER_IDS", "run_learner", "GUARD_OFF")
MACHINERY_CHANGED = "(changing the grading machinery)"


def _make_run_learner() -> Callable[..., tuple[str, Any]]:
    """Build `run_learner` around the grading functions as they are now, held in its closure and re-checked by
    identity before and after every call."""
    module = sys.modules[__name__]
    own = {name: vars(module)[name] for name in _MACHINERY if name != "run_learner"}
    guarded_, tripwires_, files_of = own["_guarded"], own["tripwires"], own["forbidden_files"]
    tensors_in, same_tensor, reference_called = own["_tensors_in"], own["_same_tensor"], own["ReferenceCalled"]

    def changed() -> str | None:
        names = [name for name, value in own.items() if vars(module).get(name) is not value]
        return f"labkit.grading.core.{names[0]} {MACHINERY_CHANGED}" if names else None

    def run_learner(call: Callable, fn: Callable, args: tuple, kwargs: dict,
                    forbid: Sequence[str]) -> tuple[str, Any]:
        """Call the learner's function once with the references switched off.

        Returns ("returned", value), ("todo", None) for NotImplementedError, ("called", reference name)
        when a tripwire went off (even if the learner's code caught it) or the grading machinery was changed,
        or ("raised", "Type: message").
        """
        problem = changed()
        if problem:
            return "called", problem
        called: list[str] = []
        files = files_of(forbid)
        before = tensors_in((args, kwargs))
        pristine = [t.clone() for _, t in before]
        try:
            with tripwires_(forbid, fn) as called:
                got = call(guarded_(fn, files, called), args, kwargs)
        except NotImplementedError:
            problem = changed()
            return ("called", problem) if problem else ("todo", None)
        except reference_called as e:
            # the first forbidden name reached: the reference handed in itself, before whatever it calls
            return "called", changed() or (called[0] if called else str(e))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:
            if not called:
                return ("called", changed()) if changed() else ("raised", f"{type(e).__name__}: {e}")
        problem = changed()
        if problem:
            return "called", problem
        if called:
            return "called", called[0]
        for (where, t), old in zip(before, pristine):
            if not same_tensor(t, old):
                return "mutated", where
        return "returned", got

    own["run_learner"] = run_learner
    return run_learner


def _tensors_in(obj: Any, where: str = "") -> list[tuple[str, torch.Tensor]]:
    """Every tensor inside an example's inputs (tuples, lists, dicts, a module's parameters and buffers)."""
    if isinstance(obj, torch.Tensor):
        return [(where, obj)]
    if isinstance(obj, torch.nn.Module):
        return [(f"{where} ({name})", t) for name, t in obj.state_dict(keep_vars=True).items()]
    if isinstance(obj, dict):
        return [pair for k, v in obj.items() for pair in _tensors_in(v, f"{where}[{k!r}]")]
    if isinstance(obj, (tuple, list)):
        return [pair for i, v in enumerate(obj) for pair in _tensors_in(v, f"{where}[{i}]")]
    return []


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same shape, dtype and values (NaN equal to NaN): the learner did not change it in place."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    a, b = a.detach(), b.detach()
    if a.is_floating_point() or a.is_complex():
        return bool(torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0)))
    return torch.equal(a, b)


def _argument_name(where: str) -> str:
    """'[0][1] (blocks.0.weight)' -> 'argument 2 (blocks.0.weight)' for the message."""
    import re
    m = re.match(r"\[0\]\[(\d+)\](.*)", where)
    if m:
        return f"argument {int(m.group(1)) + 1}{m.group(2)}"
    m = re.match(r"\[1\]\[(.+?)\](.*)", where)
    return f"argument {m.group(1)}{m.group(2)}" if m else "an argument"


run_learner = _make_run_learner()

#: How run_check calls the learner's function: run_learner here; the grader (labkit.autograde) sets
#: a runner that calls it in a separate process holding no expected value.
LEARNER_RUNNER: Callable[..., tuple[str, Any]] | None = None

#: Set by the grader (labkit.autograde) in its fresh process: each check then adds examples drawn
#: from this seed, which nobody saw before, so a table of the public examples' answers can't pass.
HIDDEN_SEED: int | None = None
HIDDEN_EXAMPLES = 3


def run_check(name: str, fn: Callable, cases: Sequence[Case | tuple], rtol: float = 1e-5, atol: float = 1e-6,
              quiet: bool = False, returns: Returns | str = "any", mistakes: Sequence[Mistake] = (),
              forbid: Sequence[str] = (), reference: str = "",
              call: Callable[[Callable, tuple, dict], Any] | None = None,
              hidden: Callable[[torch.Generator], Case] | None = None) -> CheckResult:
    """Call the learner's `fn` on each example (expected values already computed); stop at the first problem.

    Prints one line (unless quiet): passed, not yet solved (NotImplementedError), or the failing
    example with expected vs got, where it first differs, and a hint for a recognised mistake.
    `forbid` names reference implementations that become tripwires while `fn` runs; `call`
    adapts how `fn` is invoked (default fn(*args, **kwargs)); `hidden(generator)` draws one random
    example, used HIDDEN_EXAMPLES times when the grader has set HIDDEN_SEED.
    """
    returns = returns if isinstance(returns, Returns) else Returns(returns)
    cases = [c if isinstance(c, Case) else Case(c[0], tuple(c[1]), dict(c[2]), c[3]) for c in cases]
    if hidden is not None and HIDDEN_SEED is not None:
        g = torch.Generator().manual_seed(HIDDEN_SEED)
        for _ in range(HIDDEN_EXAMPLES):
            case = hidden(g)
            case.description = f"a hidden example (grader's seed {HIDDEN_SEED}): {case.description}"
            cases.append(case)
    call = call or (lambda f, args, kwargs: f(*args, **kwargs))

    def done(status: str, message: str) -> CheckResult:
        result = CheckResult(name, status, message, returns=returns.kind, reference=reference)
        if not quiet:
            print(result.message)
        return result

    if not callable(fn):
        return done(FAIL, f"❌ {name}: expected a function, got {kind_of(fn)}")
    for case in cases:
        args, kwargs = _fresh(case.args, case.kwargs)
        outcome, got = (LEARNER_RUNNER or run_learner)(call, fn, args, kwargs, forbid)
        if outcome == "todo":
            return done(TODO, f"⏳ {name}: not yet solved — write the function above, then run this cell again.")
        if outcome == "called" and str(got).endswith(("(switching the grading guard off)", MACHINERY_CHANGED)):
            return done(FAIL, f"❌ {name}: the grading guard was switched off or changed while your function ran "
                              f"(`{str(got).split(' (')[0]}`); write the function without touching the grader.")
        if outcome == "called" and str(got).endswith(THROUGH_CTYPES):
            return done(FAIL, f"❌ {name}: your function calls C code through ctypes (`{str(got).split(' ')[0]}`), "
                              "which the check cannot watch (it can start another program); compute the answer in "
                              "Python.")
        if outcome == "called" and str(got).endswith("(starting an unguarded thread)"):
            return done(FAIL, f"❌ {name}: your function starts another thread (`{str(got).split(' ')[0]}`), which the "
                              "check cannot watch; compute the answer in your function itself.")
        if outcome == "called" and str(got).endswith("(starting another process)"):
            return done(FAIL, f"❌ {name}: your function starts another process (`{str(got).split(' ')[0]}`); an "
                              "exercise's answer is computed here, by your function itself — write it without one.")
        if outcome == "called":
            return done(FAIL, f"❌ {name}: your function calls `{got}`, the reference implementation — "
                              "write it yourself (the check switches the reference off while it runs yours).")
        if outcome == "mutated":  # the lab passes the model's own tensors: an in-place edit would damage the model
            return done(FAIL, f"❌ {name}: on {case.description}, your function changed {_argument_name(got)} in "
                              "place. The lab passes the model's own tensors to it: don't write into your inputs "
                              "(work on a copy, e.g. w = w.clone(), or use operations that return new tensors).")
        if outcome == "raised":   # the learner's code crashed: say where, not a traceback wall
            return done(FAIL, f"❌ {name}: on {case.description}, your function raised {got}")
        try:
            problem = compare(got, case, returns, rtol, atol)
        except Exception as e:     # e.g. an object whose == raises: about the answer, not a labkit bug
            problem = f"returned {kind_of(got)}, which could not be compared ({type(e).__name__}: {e})"
        if problem is not None:
            message = f"❌ {name}: on {case.description}\n   {problem}"
            hint = _hint(mistakes, got, case)
            if hint:
                message += f"\n   hint: {hint}"
            return done(FAIL, message)
    return done(PASS, f"✅ {name}: passed ({len(cases)} examples).")


def _hint(mistakes: Sequence[Mistake], got: Any, case: Case) -> str | None:
    """The hint of the first known mistake the wrong answer matches (a crashing matcher is skipped)."""
    for mistake in mistakes:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if mistake.matches(got, *case.args, **case.kwargs):
                    return mistake.hint
        except Exception:
            continue
    return None


def checks_safely(name: str) -> Callable[[Callable], Callable]:
    """Decorator for a check_* function: a crash inside the check itself is reported, never raised."""
    def wrap(check: Callable) -> Callable:
        @functools.wraps(check)
        def safe(fn: Callable, quiet: bool = False) -> CheckResult:
            try:
                return check(fn, quiet=quiet)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:
                result = CheckResult(name, FAIL, f"❌ {name}: the check could not run ({type(e).__name__}: {e}); "
                                                 "this is a problem in labkit, not in your function — tell your teacher.")
                if not quiet:
                    print(result.message)
                return result
        safe.check_name = name
        return safe
    return wrap


def reference_name(reference: Callable) -> str:
    """'labkit.losses.cross_entropy' for a module-level function; '' for a lambda or a local function."""
    module, qualname = getattr(reference, "__module__", None), getattr(reference, "__qualname__", "")
    if not module or not qualname or "<" in qualname or module == "__main__":
        return ""
    return f"{module}.{qualname}"


def use_or_fallback(student_fn: Callable, check: Callable[..., CheckResult], reference: Callable) -> Callable:
    """The learner's function if its check passes, else the reference (and say which), so later cells still run.

    Where the lab asks for a number, a passing function's answer is handed on as a plain Python
    int or float (a numpy scalar or 0-dim tensor is accepted by the check and converted here).
    """
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            result = check(student_fn)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:
        result = CheckResult(getattr(check, "check_name", "exercise"), FAIL, f"the check raised {type(e).__name__}")
    if not isinstance(result, CheckResult):    # a check replaced by something else: go by its truth, never crash
        result = CheckResult(getattr(check, "check_name", "exercise"), PASS if result else FAIL, "")
    if result:
        if result.returns in ("int", "float"):
            convert = int if result.returns == "int" else float

            @functools.wraps(student_fn)
            def as_plain_number(*args: Any, **kwargs: Any) -> Any:
                value, problem = as_number(student_fn(*args, **kwargs), integer=result.returns == "int")
                if problem:
                    raise TypeError(f"{result.name}: your function {problem}")
                return convert(value)
            return as_plain_number
        return student_fn
    name = reference_name(reference) or result.reference
    which = f"the reference implementation `{name}`" if name else "the reference implementation"
    print(f"ℹ️ {result.name} {READABLE.get(result.status, result.status)}: the cells below use {which} instead, "
          "so the rest of the lab still runs.")
    return reference
