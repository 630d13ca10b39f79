"""The instructor's command: an nbgrader course for the labs, made and run without touching code.

    python -m labkit.course init COURSE_DIR          # nbgrader_config.py, source/, release/ (student copies), gradebook
    python -m labkit.course measure COURSE_DIR       # run each solved lab once here: size the cell timeout
    python -m labkit.course release COURSE_DIR       # student copies again, e.g. after editing source/
    python -m labkit.course collect COURSE_DIR LAB FOLDER   # files handed in -> submitted/<student>/<lab>/
    python -m labkit.course grade COURSE_DIR         # nbgrader autograde every lab with submissions
    python -m labkit.course feedback COURSE_DIR      # feedback/<student>/<lab>/<lab>.html
    python -m labkit.course export COURSE_DIR        # grades.csv
    python -m labkit.course points                   # points per graded cell; per lab: total, autograded, by hand

nbgrader is an instructor extra (`pip install -r requirements-instructor.txt`); nothing here imports it
until a command needs it, so `labkit.course` also loads in a learner's environment (the graded cells call
`check_when_validating` from here). The labs of the course are the list `LABS` below: a new lab joins
the course, its points table and the CI flow test by adding one line.
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
COURSE_ID = "llm-memory-lab"

# The course, in order. Each entry is a notebook in notebooks/ and an nbgrader assignment of the same name.
LABS: list[str] = [
    "00_start_here",
    "01_language_models",
    "02_inside_the_transformer",
    "03_where_memory_goes",
    "04_pruning_and_sparse_storage",
    "05_quantization",
    "06_knowledge_distillation",
    "07_compression_and_storage",
    "08_memory_pools",
]

# nbgrader's per-cell timeout defaults to 30 s, which lab 01's training cells exceed (they were interrupted,
# then every later cell failed with NameError/KeyError). The course sizes it from measured cell times:
# `measure` runs each lab's solved notebook once on the grading machine and takes its slowest cell,
# times a margin for a loaded machine (with two threads on busy cores a lab ran 12x slower, issue 7),
# never below a floor. Until measured, a notebook's own execution timestamps are used if it has them,
# else a generous default.
TIMEOUT_LOAD_FACTOR = 10
TIMEOUT_FLOOR_S = 120
TIMEOUT_WITHOUT_TIMINGS_S = 900   # used for a lab with no measured cell times
TIMINGS_FILE = "timings.json"      # in the course folder: what `measure` found, per lab

VALIDATE_HOOK_MARK = "check_when_validating("
HIDDEN_BEGIN, HIDDEN_END = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"


class CourseError(RuntimeError):
    """A problem the instructor can fix; the command prints it as one line and exits with status 2."""


# ---------------------------------------------------------------------------------------------
# What a lab notebook holds: graded cells, their points, its slowest cell


@dataclass
class GradedCell:
    """One cell nbgrader gives points for."""

    grade_id: str
    points: float
    autograded: bool        # False: a written answer the instructor grades by hand in formgrader


def lab_notebook(lab: str, notebooks_dir: Path | str = NOTEBOOKS_DIR) -> Path:
    """The notebook file of `lab` (e.g. '00_start_here' -> notebooks/00_start_here.ipynb)."""
    if lab not in LABS:
        raise CourseError(f"lab={lab!r} is not in the course; allowed: {', '.join(LABS)}")
    return Path(notebooks_dir) / f"{lab}.ipynb"


def graded_cells(nb) -> list[GradedCell]:
    """Every cell of `nb` that carries points, in notebook order."""
    cells = []
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("grade"):
            autograded = cell.cell_type == "code" and not meta.get("solution")
            cells.append(GradedCell(meta["grade_id"], float(meta.get("points", 0)), autograded))
    return cells


def points_table(labs: list[str] | None = None, notebooks_dir: Path | str = NOTEBOOKS_DIR) -> list[dict]:
    """One row per graded cell of each lab: lab, grade_id, points, how it is graded."""
    import nbformat

    rows = []
    for lab in labs or LABS:
        nb = nbformat.read(lab_notebook(lab, notebooks_dir), as_version=4)
        for cell in graded_cells(nb):
            rows.append({"lab": lab, "grade_id": cell.grade_id, "points": cell.points,
                         "graded": "autograded" if cell.autograded else "by hand"})
    return rows


def _fmt_points(points: float) -> str:
    return f"{points:g}"


def format_points_table(rows: list[dict]) -> str:
    """The points table as Markdown: every graded cell, then per lab and for the course the total, split into
    autograded points (the hidden tests) and points graded by hand (written answers, in nbgrader's formgrader)."""
    lines = ["| lab | graded cell | points | graded |", "|---|---|---:|---|"]
    totals: dict[str, dict[str, float]] = {}
    for r in rows:
        lines.append(f"| {r['lab']} | `{r['grade_id']}` | {_fmt_points(r['points'])} | {r['graded']} |")
        lab = totals.setdefault(r["lab"], {"cells": 0, "total": 0.0, "autograded": 0.0, "by hand": 0.0})
        lab["cells"] += 1
        lab["total"] += r["points"]
        lab["autograded" if r["graded"] == "autograded" else "by hand"] += r["points"]
    lines += ["", "| lab | graded cells | total points | autograded | by hand |", "|---|---:|---:|---:|---:|"]
    for lab, t in totals.items():
        lines.append(f"| {lab} | {t['cells']} | {_fmt_points(t['total'])} | {_fmt_points(t['autograded'])} | "
                     f"{_fmt_points(t['by hand'])} |")
    course = {k: sum(t[k] for t in totals.values()) for k in ("total", "autograded", "by hand")}
    lines.append(f"| **course** | {len(rows)} | {_fmt_points(course['total'])} | {_fmt_points(course['autograded'])} | "
                 f"{_fmt_points(course['by hand'])} |")
    return "\n".join(lines)


def _parse_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)     # Python 3.11 reads the trailing "Z" itself


def slowest_cell(nb) -> tuple[float, int, str] | None:
    """(seconds, cell index, first line) of the slowest code cell in the notebook's last build.

    Read from the execution timestamps nbconvert/nbclient record in each cell's metadata
    ("iopub.execute_input" to "shell.execute_reply"); None when the notebook carries none.
    """
    best = None
    for index, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type != "code" or "iopub.execute_input" not in stamps or "shell.execute_reply" not in stamps:
            continue
        seconds = (_parse_time(stamps["shell.execute_reply"]) - _parse_time(stamps["iopub.execute_input"])).total_seconds()
        if best is None or seconds > best[0]:
            first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
            best = (seconds, index, first_line[:60])
    return best


def cell_timeout_s(slowest_s: float | None) -> int:
    """nbgrader's per-cell timeout (s) for a lab whose slowest cell took `slowest_s` seconds when built."""
    if slowest_s is None:
        return TIMEOUT_WITHOUT_TIMINGS_S
    return max(TIMEOUT_FLOOR_S, 60 * math.ceil(TIMEOUT_LOAD_FACTOR * slowest_s / 60))


# ---------------------------------------------------------------------------------------------
# `nbgrader validate` and hidden tests
#
# nbgrader validate runs the student's file as it is, and the student's file has no hidden tests (they
# are removed from release/ and only restored at autograde), so a graded cell whose checks are all
# hidden "passes" whatever the answer. Each graded cell therefore also carries one visible line,
#     from labkit.course import check_when_validating; check_when_validating("tensor_bytes", tensor_bytes)
# which does nothing when a learner runs the cell (a student copy still runs top to bottom) and, only
# under `nbgrader validate` (which sets NBGRADER_EXECUTION=validate), runs the same check as the hidden
# test and raises its message. The hidden test stays what earns the points at autograde.

_OLD_HIDDEN_TEST = re.compile(r"grading\.check_(\w+)\(\s*(\w+)")
_NEW_HIDDEN_TEST = re.compile(r"\bgrade\(\s*[\"'](?:check_)?(\w+)[\"']\s*,\s*(\w+)")


def hidden_test_target(source: str) -> tuple[str, str] | None:
    """(check name without 'check_', learner's function name) that a graded cell's hidden test grades."""
    if HIDDEN_BEGIN not in source:
        return None
    hidden = source.split(HIDDEN_BEGIN, 1)[1].split(HIDDEN_END, 1)[0]
    for pattern in (_NEW_HIDDEN_TEST, _OLD_HIDDEN_TEST):
        m = pattern.search(hidden)
        if m:
            return m.group(1), m.group(2)
    return None


def check_when_validating(check_name: str, fn: Callable) -> None:
    """Under `nbgrader validate` only: run the exercise's check on `fn` and raise AssertionError(its message).

    Elsewhere (a learner running the cell, nbgrader autograde) it does nothing and returns None.
    """
    if os.environ.get("NBGRADER_EXECUTION") != "validate":
        return
    name = check_name.removeprefix("check_")
    try:
        from labkit.autograde import (
            grade,  # the tamper-proof grader (fresh process), when present
        )
    except ImportError:
        grade = None
    if grade is not None:
        grade(name, fn)
        return
    from labkit import grading
    result = getattr(grading, f"check_{name}")(fn, quiet=True)
    if not result:
        raise AssertionError(result.message)
    return


def add_validate_hook(source: str) -> str:
    """A graded cell's source with the visible `check_when_validating` line added before its hidden tests."""
    target = hidden_test_target(source)
    if target is None or VALIDATE_HOOK_MARK in source:
        return source
    check, fn = target
    hook = ("# `nbgrader validate` checks your answer here; running the cell yourself does nothing\n"
            f"from labkit.course import check_when_validating; check_when_validating({check!r}, {fn})\n")
    head, tail = source.split(HIDDEN_BEGIN, 1)
    indent = head[len(head.rstrip(" \t")):]
    return head.rstrip(" \t") + hook + indent + HIDDEN_BEGIN + tail


def prepare_source_notebook(nb) -> dict:
    """Make a solved lab notebook into an nbgrader source notebook, in place; returns what was changed.

    - graded cells use the tamper-proof form (grading.upgrade_graded_cells and labkit.autograde, when
      labkit has them; a no-op on notebooks already converted);
    - each graded cell gets the visible `check_when_validating` line (see above);
    - widget state (which shows rendered answers) and per-cell execution timestamps are dropped, so the
      student copies nbgrader generates from it carry neither.
    """
    from labkit import grading

    changed = {"upgraded": 0, "validate_hooks": 0}
    upgrade = getattr(grading, "upgrade_graded_cells", None)
    if upgrade is not None and importlib.util.find_spec("labkit.autograde") is not None:
        changed["upgraded"] = int(upgrade(nb) or 0)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code" and cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
            new = add_validate_hook(cell.source)
            if new != cell.source:
                cell.source = new
                changed["validate_hooks"] += 1
    return changed


def overwrite_cells_preprocessor():
    """nbgrader's OverwriteCells without its false "checksum has changed" warning for hidden tests.

    At autograde nbgrader restores every locked cell from the gradebook and warns when the submitted
    source differs. A graded cell with hidden tests always differs (the student copy has them removed;
    jupyter/nbgrader#1961), so every submission logs a warning for every such cell and the real ones
    drown. This subclass restores a cell silently when it is exactly the released version (source
    minus hidden tests) and leaves nbgrader's warning for any other change: a real edit still warns.
    """
    from nbgrader import utils
    from nbgrader.api import MissingEntry
    from nbgrader.preprocessors import ClearHiddenTests, OverwriteCells

    class OverwriteCellsExpectingHiddenTests(OverwriteCells):
        def preprocess_cell(self, cell, resources, cell_index):
            grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
            if grade_id is not None and utils.is_locked(cell):
                try:
                    source_cell = self.gradebook.find_source_cell(grade_id, self.notebook_id, self.assignment_id)
                except MissingEntry:
                    source_cell = None
                if source_cell is not None and HIDDEN_BEGIN in source_cell.source:
                    released = copy.deepcopy(cell)
                    released.source = source_cell.source
                    ClearHiddenTests(parent=self)._remove_hidden_test_region(released)
                    if cell.source == released.source:
                        self.log.info("Restored the hidden tests of cell %s", grade_id)
                        cell.source = source_cell.source
            return super().preprocess_cell(cell, resources, cell_index)

    return OverwriteCellsExpectingHiddenTests


# ---------------------------------------------------------------------------------------------
# The course directory


CONFIG_TEMPLATE = '''\
# nbgrader configuration of the LLM Memory Lab course, written by `python -m labkit.course init`.
# Commands: python -m labkit.course release|collect|grade|feedback|export {root_hint} (see INSTRUCTORS.md).
import os

from nbgrader.preprocessors import CheckCellMetadata, ClearOutput, DeduplicateIds, OverwriteKernelspec

from labkit.course import overwrite_cells_preprocessor

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = {course_id!r}
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))   # the folder holding this file

# Kernels started by nbgrader (autograde, validate) inherit this process's environment:
# one thread per kernel, so thirty submissions graded on a shared server don't fight over the cores,
# and the data cache with the corpus and the zoo's reference models (pre-built: python -m labkit.zoo build).
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("LABKIT_DATA_DIR", {data_dir!r})

# Per-cell timeout. nbgrader's default (30 s) interrupts lab 01's training cells; then every later cell
# fails with NameError/KeyError. Sized from measured cell times: the slowest cell of each lab, times
# {factor} for a loaded machine, at least {floor} s:
{timing_lines}
c.Execute.timeout = {timeout}

# A graded cell a student deleted is put back (with a note) and graded, instead of needing a manual grade.
c.OverwriteCells.add_missing_cells = True
c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec,
                                      overwrite_cells_preprocessor(), CheckCellMetadata]
'''


def _require_nbgrader() -> None:
    try:
        import nbgrader  # noqa: F401
    except ImportError:
        raise CourseError("nbgrader is not installed: it is an instructor extra, install it with "
                          "`python -m pip install -r requirements-instructor.txt`") from None


def _require_course(root: Path) -> Path:
    root = Path(root)
    if not (root / "nbgrader_config.py").is_file():
        raise CourseError(f"course_dir={str(root)!r} is not a course made by `python -m labkit.course init` "
                          "(it has no nbgrader_config.py)")
    return root.resolve()


def course_labs(root: Path) -> list[str]:
    """The labs that have an assignment in this course, in course order."""
    return [lab for lab in LABS if (root / "source" / lab).is_dir()]


def run_nbgrader(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `nbgrader ARGS` in the course folder; on failure raise CourseError with nbgrader's last lines."""
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, capture_output=True, text=True,
                          check=False)
    log = root / "logs"
    log.mkdir(exist_ok=True)
    with open(log / "nbgrader.log", "a") as f:
        f.write(f"$ nbgrader {' '.join(args)}\n{done.stdout}{done.stderr}\n")
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise CourseError(f"`nbgrader {' '.join(args)}` failed (exit {done.returncode}); its last lines:\n{tail}")
    return done


def _copy_source(lab: str, notebooks_dir: Path, source_root: Path) -> tuple[dict, dict | None]:
    import nbformat

    from labkit.data import atomic_write_bytes

    src = lab_notebook(lab, notebooks_dir)
    if not src.is_file():
        raise CourseError(f"lab {lab!r}: {src} does not exist")
    nb = nbformat.read(src, as_version=4)
    if not any(cell.solution for cell in _nbgrader_cells(nb)):
        raise CourseError(f"lab {lab!r}: {src} holds no solution cells; a course is made from the solved notebooks")
    timing = _timing_from_timestamps(nb, f"execution timestamps recorded when {src.name} was built")
    changed = prepare_source_notebook(nb)
    (source_root / lab).mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(source_root / lab / f"{lab}.ipynb", nbformat.writes(nb).encode())
    return changed, timing


@dataclass
class _Meta:
    solution: bool
    grade: bool


def _nbgrader_cells(nb) -> list[_Meta]:
    return [_Meta(bool(m.get("solution")), bool(m.get("grade")))
            for m in (c.get("metadata", {}).get("nbgrader") for c in nb.cells) if m]


def config_text(timings: dict[str, dict | None], data_dir: Path) -> str:
    """nbgrader_config.py for these labs: course id, data cache, threads, timeouts with the measurements behind them.

    `timings` maps each lab to None (not measured) or {"slowest_s", "cell", "first_line", "how"}.
    """
    lines, timeouts = [], []
    for lab, timing in timings.items():
        timeout = cell_timeout_s(timing["slowest_s"] if timing else None)
        timeouts.append(timeout)
        if timing:
            lines.append(f"#   {lab}: cell {timing['cell']} ({timing['first_line']!r}) took "
                         f"{timing['slowest_s']:.1f} s -> {timeout} s\n#       ({timing['how']})")
        else:
            lines.append(f"#   {lab}: not measured yet -> {timeout} s (run: python -m labkit.course measure COURSE_DIR)")
    return CONFIG_TEMPLATE.format(course_id=COURSE_ID, data_dir=str(data_dir), factor=TIMEOUT_LOAD_FACTOR,
                                  floor=TIMEOUT_FLOOR_S, timing_lines="\n".join(lines),
                                  timeout=max(timeouts), root_hint="COURSE_DIR")


def _timing_from_timestamps(nb, how: str) -> dict | None:
    found = slowest_cell(nb)
    if found is None:
        return None
    return {"slowest_s": found[0], "cell": found[1], "first_line": found[2], "how": how}


def write_config(root: Path, timings: dict[str, dict | None]) -> int:
    """(Re)write nbgrader_config.py and timings.json of a course; returns the per-cell timeout (s)."""
    from labkit.data import atomic_write_bytes, cache_dir

    atomic_write_bytes(root / TIMINGS_FILE, (json.dumps(timings, indent=1) + "\n").encode())
    atomic_write_bytes(root / "nbgrader_config.py", config_text(timings, cache_dir().resolve()).encode())
    return max(cell_timeout_s(t["slowest_s"] if t else None) for t in timings.values())


def measure(course_dir: Path | str, labs: list[str] | None = None, progress: bool = True) -> dict[str, dict]:
    """Run each lab's solved notebook once on this machine, time every cell, and size the timeout from the slowest.

    Runs as nbgrader's kernels will (one thread, the course's data cache), in a scratch folder; a cell
    that fails is a CourseError naming it (the solved notebook must run here before students' can be graded).
    Rewrites nbgrader_config.py; returns {lab: timing}.
    """
    import time

    import nbformat
    from nbclient import NotebookClient
    from tqdm.auto import tqdm

    from labkit.data import cache_dir

    root = _require_course(Path(course_dir))
    labs = _labs_in(root, labs)
    timings = _read_timings(root)
    env = {"OMP_NUM_THREADS": "1", "LABKIT_DATA_DIR": str(cache_dir().resolve())}
    saved = {k: os.environ.get(k) for k in (*env, "NBGRADER_EXECUTION")}
    os.environ.update(env)                      # the kernel inherits this process's environment
    os.environ.pop("NBGRADER_EXECUTION", None)
    try:
        for lab in tqdm(labs, desc="measure labs", disable=not progress):
            nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as scratch:
                try:
                    NotebookClient(nb, timeout=TIMEOUT_WITHOUT_TIMINGS_S, kernel_name="python3", record_timing=True,
                                   resources={"metadata": {"path": scratch}}).execute()
                except Exception as e:  # noqa: BLE001 (any failure of the solved lab is reported by cell)
                    where = [i for i, c in enumerate(nb.cells)
                             if any(o.get("output_type") == "error" for o in c.get("outputs", []))]
                    raise CourseError(f"lab {lab}: the solved notebook failed in cell "
                                      f"{where[0] if where else '?'} ({type(e).__name__}); fix it before grading") from None
            stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
            timing = _timing_from_timestamps(nb, f"measured by `python -m labkit.course measure`, {stamp}, "
                                                 f"1 thread, load average {load:.1f} on {os.cpu_count()} CPUs")
            timing["total_s"] = time.perf_counter() - t0
            timings[lab] = timing
            write_config(root, timings)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {lab: timings[lab] for lab in labs}


def _read_timings(root: Path) -> dict[str, dict | None]:
    try:
        timings = json.loads((root / TIMINGS_FILE).read_text())
    except (OSError, ValueError):
        timings = {}
    return {lab: timings.get(lab) for lab in course_labs(root)}


def init(course_dir: Path | str, labs: list[str] | None = None, notebooks_dir: Path | str = NOTEBOOKS_DIR) -> dict:
    """Make an nbgrader course in `course_dir` (which must not exist) and generate every lab's student copy.

    Built in a temporary folder beside it and renamed into place, so a failed init leaves nothing behind.
    Returns {"labs": [...], "timeout_s": ..., "points": rows of points_table}.
    """
    _require_nbgrader()
    course_dir = Path(course_dir)
    labs = list(labs or LABS)
    for lab in labs:
        lab_notebook(lab, notebooks_dir)          # unknown lab -> CourseError
    if course_dir.exists():
        raise CourseError(f"course_dir={str(course_dir)!r} already exists; choose a new folder "
                          "(to refresh student copies of an existing course use `release`)")
    if not course_dir.parent.is_dir():
        raise CourseError(f"course_dir={str(course_dir)!r}: its parent folder does not exist")
    tmp = Path(tempfile.mkdtemp(prefix=f".{course_dir.name}.", dir=course_dir.parent))
    from labkit.data import current_umask  # here, not at the top: nbgrader's config imports this module

    os.chmod(tmp, 0o777 & ~current_umask())
    try:
        timings = {}
        for lab in labs:
            _, timings[lab] = _copy_source(lab, Path(notebooks_dir), tmp / "source")
        timeout = write_config(tmp, timings)
        for sub in ("release", "submitted", "autograded", "feedback"):
            (tmp / sub).mkdir()
        tmp.rename(course_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    root = course_dir.resolve()
    try:
        release(root, labs)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return {"labs": labs, "timeout_s": timeout, "points": _source_points(root, labs),
            "measured": [lab for lab, t in timings.items() if t]}


def _source_points(root: Path, labs: list[str]) -> list[dict]:
    import nbformat

    rows = []
    for lab in labs:
        nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
        rows += [{"lab": lab, "grade_id": c.grade_id, "points": c.points,
                  "graded": "autograded" if c.autograded else "by hand"} for c in graded_cells(nb)]
    return rows


def release(course_dir: Path | str, labs: list[str] | None = None) -> list[Path]:
    """`nbgrader generate_assignment` for each lab: the student copies in release/<lab>/ to hand out."""
    _require_nbgrader()
    root = _require_course(Path(course_dir))
    labs = _labs_in(root, labs)
    out = []
    for lab in labs:
        run_nbgrader(root, "generate_assignment", lab, "--force")
        out += sorted((root / "release" / lab).glob("*.ipynb"))
    return out


def _labs_in(root: Path, labs: list[str] | None) -> list[str]:
    present = course_labs(root)
    if not labs:
        return present
    for lab in labs:
        if lab not in present:
            raise CourseError(f"lab={lab!r} is not in this course; allowed: {', '.join(present)}")
    return list(labs)


_STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$")


def collect(course_dir: Path | str, lab: str, folder: Path | str) -> dict[str, Path]:
    """Place handed-in notebooks into submitted/<student>/<lab>/<lab>.ipynb; returns student -> path.

    `folder` holds one file per student, named `<student>.ipynb`, or one folder per student,
    `<student>/<lab>.ipynb` (what a learning platform's bulk download usually gives after unzipping).
    """
    from labkit.data import atomic_write_bytes

    root = _require_course(Path(course_dir))
    lab = _labs_in(root, [lab])[0]
    folder = Path(folder)
    if not folder.is_dir():
        raise CourseError(f"folder={str(folder)!r} is not a folder of handed-in notebooks")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix == ".ipynb":
            found[path.stem] = path
        elif path.is_dir() and (path / f"{lab}.ipynb").is_file():
            found[path.name] = path / f"{lab}.ipynb"
    if not found:
        raise CourseError(f"folder={str(folder)!r} holds no <student>.ipynb files nor <student>/{lab}.ipynb")
    placed = {}
    for student, path in found.items():
        if not _STUDENT_ID.match(student):
            raise CourseError(f"student id {student!r} (from {path.name}) may hold only letters, digits and _.@-")
        dst = root / "submitted" / student / lab / f"{lab}.ipynb"
        dst.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dst, path.read_bytes())
        placed[student] = dst
    return placed


def grade(course_dir: Path | str, labs: list[str] | None = None, force: bool = False) -> dict[str, dict[str, float]]:
    """`nbgrader autograde` every lab that has submissions; returns {lab: {student: score}}."""
    _require_nbgrader()
    root = _require_course(Path(course_dir))
    graded = {}
    for lab in _labs_in(root, labs):
        if not list((root / "submitted").glob(f"*/{lab}")):
            continue
        run_nbgrader(root, "autograde", lab, *(["--force"] if force else []))
        graded[lab] = scores(root, lab)
    return graded


def scores(course_dir: Path | str, lab: str) -> dict[str, float]:
    """Each student's score for `lab` from the gradebook: autograded points plus the manual grades given so far."""
    from nbgrader.api import Gradebook

    root = _require_course(Path(course_dir))
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", COURSE_ID) as gb:
        return {s.student.id: s.score for s in gb.find_assignment(lab).submissions}


def cell_scores(course_dir: Path | str, lab: str) -> dict[str, dict[str, float]]:
    """Each student's score in each graded cell of `lab`: {student: {grade_id: points earned}}."""
    from nbgrader.api import Gradebook

    root = _require_course(Path(course_dir))
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", COURSE_ID) as gb:
        return {s.student.id: {g.name: g.score for nb in s.notebooks for g in nb.grades}
                for s in gb.find_assignment(lab).submissions}


def to_grade_by_hand(course_dir: Path | str, lab: str) -> dict[str, list[str]]:
    """Written answers of `lab` still waiting for a manual grade: {student: [grade_id, ...]} (students with none left out).

    nbgrader autograde gives an unanswered written question 0 points by itself; an answered one "needs manual
    grade" until the instructor scores it in formgrader (INSTRUCTORS.md, "Grading the written answers").
    """
    from nbgrader.api import Gradebook

    root = _require_course(Path(course_dir))
    waiting: dict[str, list[str]] = {}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", COURSE_ID) as gb:
        for submission in gb.find_assignment(lab).submissions:
            ids = sorted(g.name for nb in submission.notebooks for g in nb.grades if g.needs_manual_grade)
            if ids:
                waiting[submission.student.id] = ids
    return waiting


def feedback(course_dir: Path | str, labs: list[str] | None = None) -> list[Path]:
    """`nbgrader generate_feedback` for every graded lab; returns the HTML files (feedback/<student>/<lab>/)."""
    _require_nbgrader()
    root = _require_course(Path(course_dir))
    out = []
    for lab in _labs_in(root, labs):
        if not list((root / "autograded").glob(f"*/{lab}")):
            continue
        run_nbgrader(root, "generate_feedback", lab, "--force")
        out += sorted((root / "feedback").glob(f"*/{lab}/*.html"))
    return out


def export(course_dir: Path | str, to: Path | str | None = None) -> Path:
    """`nbgrader export`: one row per student and lab (score, max score) in a CSV; returns its path."""
    _require_nbgrader()
    root = _require_course(Path(course_dir))
    to = Path(to).resolve() if to else root / "grades.csv"
    run_nbgrader(root, "export", f"--to={to}")
    return to


# ---------------------------------------------------------------------------------------------
# Command line: every bad argument -> one line and exit status 2


def _print_timings(timings: dict[str, dict]) -> None:
    for lab, t in timings.items():
        print(f"{lab}: ran in {t['total_s']:.1f} s; slowest cell {t['cell']} ({t['first_line']!r}) "
              f"{t['slowest_s']:.1f} s -> timeout {cell_timeout_s(t['slowest_s'])} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m labkit.course", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("init", help="make an nbgrader course folder with every lab's student copy")
    s.add_argument("course_dir")
    s.add_argument("--labs", nargs="+", metavar="LAB", help=f"a subset of the course (default: all {len(LABS)})")
    s.add_argument("--measure", action="store_true",
                   help="then run each solved lab once here and size the cell timeout from its slowest cell")
    s = sub.add_parser("measure", help="run each solved lab once here; size nbgrader's cell timeout from the slowest cell")
    s.add_argument("course_dir")
    s.add_argument("labs", nargs="*", metavar="LAB")
    s = sub.add_parser("release", help="generate the student copies (release/<lab>/) again")
    s.add_argument("course_dir")
    s.add_argument("labs", nargs="*", metavar="LAB")
    s = sub.add_parser("collect", help="place handed-in notebooks into submitted/<student>/<lab>/")
    s.add_argument("course_dir")
    s.add_argument("lab")
    s.add_argument("folder", help="holds <student>.ipynb files or <student>/<lab>.ipynb folders")
    s = sub.add_parser("grade", help="autograde every lab that has submissions")
    s.add_argument("course_dir")
    s.add_argument("labs", nargs="*", metavar="LAB")
    s.add_argument("--force", action="store_true", help="grade again submissions already graded")
    s = sub.add_parser("feedback", help="write feedback HTML for every graded submission")
    s.add_argument("course_dir")
    s.add_argument("labs", nargs="*", metavar="LAB")
    s = sub.add_parser("export", help="write the grades as CSV")
    s.add_argument("course_dir")
    s.add_argument("--to", help="CSV path (default: COURSE_DIR/grades.csv)")
    s = sub.add_parser("points", help="print the points of every graded cell and the total per lab")
    s.add_argument("--labs", nargs="+", metavar="LAB")
    args = p.parse_args(argv)
    try:
        if args.command == "init":
            result = init(args.course_dir, args.labs)
            if args.measure:
                _print_timings(measure(args.course_dir, result["labs"]))
                result["timeout_s"] = write_config(Path(args.course_dir), _read_timings(Path(args.course_dir)))
            elif len(result["measured"]) < len(result["labs"]):
                print("cell timeout not measured for every lab: run `python -m labkit.course measure "
                      f"{args.course_dir}` once on the grading machine (it runs each solved lab)")
            print(f"course made in {Path(args.course_dir).resolve()} with {len(result['labs'])} labs "
                  f"(per-cell timeout {result['timeout_s']} s; see nbgrader_config.py)\n")
            print(format_points_table(result["points"]))
            print(f"\nhand out: {Path(args.course_dir) / 'release'}/<lab>/<lab>.ipynb\n"
                  f"then: collect, grade, feedback, export (python -m labkit.course -h)")
        elif args.command == "measure":
            _print_timings(measure(args.course_dir, args.labs))
        elif args.command == "release":
            for path in release(args.course_dir, args.labs):
                print(path)
        elif args.command == "collect":
            for student, path in collect(args.course_dir, args.lab, args.folder).items():
                print(f"{student}: {path}")
        elif args.command == "grade":
            for lab, by_student in grade(args.course_dir, args.labs, args.force).items():
                waiting = to_grade_by_hand(args.course_dir, lab)
                for student, score in sorted(by_student.items()):
                    by_hand = f"  (+ {len(waiting[student])} written answer(s) to grade by hand)" if student in waiting else ""
                    print(f"{lab}  {student}: {score:g}{by_hand}")
                if waiting:
                    print(f"{lab}: {sum(map(len, waiting.values()))} written answers need a manual grade: "
                          f"`nbgrader formgrader` in {Path(args.course_dir)} (INSTRUCTORS.md, 'Grading the written answers')")
        elif args.command == "feedback":
            for path in feedback(args.course_dir, args.labs):
                print(path)
        elif args.command == "export":
            print(export(args.course_dir, args.to))
        elif args.command == "points":
            print(format_points_table(points_table(args.labs)))
    except CourseError as e:
        print(f"labkit.course {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
