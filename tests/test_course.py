"""The instructor flow, end to end and headless: `python -m labkit.course` around nbgrader on labs 00 and 03.

One course is made in a temporary folder (never in notebooks/), one submission per scenario is
collected, autograded, given feedback and exported once; each test then asserts on what came out:

    solved -> full marks              untouched student copy -> zero, and it runs to the end
    one wrong function -> loses exactly that cell's points, the self-check's message in the feedback HTML
    an edited locked cell -> restored and graded (and the only "checksum has changed" warning)
    a deleted graded cell -> put back, reported in the log, graded
    a monkeypatched check / a function delegating to labkit's reference -> no points for that cell
    written answers (manual-graded markdown cells) -> "needs manual grade"; graded by hand -> full marks;
        neither the answer key nor any of its lines reaches a student copy
    `nbgrader validate`: "Success!" on a solved notebook, fails a wrong one with the check's message

nbgrader is an instructor extra (requirements-instructor.txt); the README's test command installs it.
"""
from __future__ import annotations

import csv
import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labkit import course, grading

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
FLOW_LABS = ["00_start_here", "03_where_memory_goes"]     # the two fastest labs

# A wrong answer per lab: (the learner's function, a plausible wrong body, what it gets wrong)
WRONG = {
    "00_start_here": ("tensor_bytes", "    return math.prod(shape)   # counts elements, not bytes\n"),
    "03_where_memory_goes": ("adam_training_bytes", "    return 3 * n_params * bytes_per_element   # forgot the gradients\n"),
}
# A function that delegates to labkit's own implementation (the reference a tripwire must catch)
DELEGATE = ("params_that_fit", "    import labkit.memory\n    return labkit.memory.params_that_fit(budget_bytes, bytes_per_param)\n")
MONKEYPATCH = "import labkit.grading\nlabkit.grading.check_tensor_bytes = lambda *a, **k: True\ngrading.check_tensor_bytes = lambda *a, **k: True\n"

needs_nbgrader = pytest.mark.skipif(
    __import__("importlib").util.find_spec("nbgrader") is None,
    reason="nbgrader is not installed: pip install -r requirements-instructor.txt (the README's test command does)")


# ---------------------------------------------------------------------------------------------
# Unit tests of labkit.course (fast, no nbgrader needed)


def test_every_lab_notebook_is_in_the_course():
    """A lab joins the course by one line in course.LABS; a notebook missing from it would never be handed out."""
    on_disk = sorted(p.stem for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert course.LABS == on_disk


def test_timeout_is_sized_from_the_slowest_measured_cell():
    """nbgrader's 30 s default interrupted lab 01's training (45 s cells); the course's timeout comes from measurement."""
    timing = {"slowest_s": 45.1, "cell": 47, "first_line": "SWEEP = {", "how": "measured here"}
    timeout = course.cell_timeout_s(45.1)
    assert timeout >= course.TIMEOUT_LOAD_FACTOR * 45.1 and timeout % 60 == 0
    assert course.cell_timeout_s(0.5) == course.TIMEOUT_FLOOR_S > 30
    assert course.cell_timeout_s(None) == course.TIMEOUT_WITHOUT_TIMINGS_S >= timeout
    text = course.config_text({"00_start_here": None, "01_language_models": timing}, Path("/cache"))
    assert f"c.Execute.timeout = {course.TIMEOUT_WITHOUT_TIMINGS_S}" in text          # the unmeasured lab rules
    assert "cell 47 ('SWEEP = {') took 45.1 s" in text and "measured here" in text
    text = course.config_text({"01_language_models": timing}, Path("/cache"))
    assert f"c.Execute.timeout = {timeout}" in text


def test_slowest_cell_reads_execution_timestamps():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("fast()", metadata={"execution": {
            "iopub.execute_input": "2026-01-01T00:00:00.000Z", "shell.execute_reply": "2026-01-01T00:00:01.500Z"}}),
        nbformat.v4.new_code_cell("\nslow()", metadata={"execution": {
            "iopub.execute_input": "2026-01-01T00:00:02.000Z", "shell.execute_reply": "2026-01-01T00:00:44.250Z"}}),
        nbformat.v4.new_code_cell("untimed()")])
    assert course.slowest_cell(nb) == (42.25, 1, "slow()")
    assert course.slowest_cell(nbformat.v4.new_notebook()) is None


def test_points_table_totals_every_graded_cell():
    rows = course.points_table(["00_start_here", "03_where_memory_goes"])
    expected = {}
    for lab in ["00_start_here", "03_where_memory_goes"]:
        nb = nbformat.read(NOTEBOOKS / f"{lab}.ipynb", as_version=4)
        cells = [c.metadata["nbgrader"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert cells and all(m.get("points", 0) > 0 for m in cells), f"{lab}: a graded cell without points"
        expected[lab] = sum(m["points"] for m in cells)
    table = course.format_points_table(rows)
    for lab, total in expected.items():
        assert f"| {lab} | " in table and re.search(rf"\| {lab} \| \d+ \| {total:g} \|", table)
    assert f"| **course** | {len(rows)} | {sum(expected.values()):g} |" in table


def test_points_table_splits_autograded_and_by_hand_points():
    rows = [{"lab": "00_x", "grade_id": "ex00-1-test", "points": 1.0, "graded": "autograded"},
            {"lab": "00_x", "grade_id": "ex00-2-test", "points": 2.0, "graded": "autograded"},
            {"lab": "00_x", "grade_id": "ex00-w1-why", "points": 2.0, "graded": "by hand"},
            {"lab": "01_y", "grade_id": "ex01-1-test", "points": 1.5, "graded": "autograded"}]
    table = course.format_points_table(rows)
    assert "| lab | graded cells | total points | autograded | by hand |" in table
    assert "| 00_x | 3 | 5 | 3 | 2 |" in table and "| 01_y | 1 | 1.5 | 1.5 | 0 |" in table
    assert "| **course** | 4 | 6.5 | 4.5 | 2 |" in table


def test_grade_command_says_which_written_answers_wait_for_a_manual_grade(monkeypatch, capsys):
    monkeypatch.setattr(course, "grade", lambda root, labs, force: {"00_start_here": {"ada": 2.0, "bob": 0.0}})
    monkeypatch.setattr(course, "to_grade_by_hand", lambda root, lab: {"ada": ["ex00-w1-mixed-precision"]})
    assert course.main(["grade", "COURSE"]) == 0
    out = capsys.readouterr().out
    assert "00_start_here  ada: 2  (+ 1 written answer(s) to grade by hand)" in out
    assert "00_start_here  bob: 0\n" in out
    assert "00_start_here: 1 written answers need a manual grade: `nbgrader formgrader` in COURSE" in out


def test_every_lab_has_written_questions_graded_by_hand():
    """Issue 8: 1-2 written questions per lab, nbgrader manual-graded markdown cells holding the answer key."""
    for lab in course.LABS:
        nb = nbformat.read(NOTEBOOKS / f"{lab}.ipynb", as_version=4)
        written = [c for c in course.graded_cells(nb) if not c.autograded]
        assert 1 <= len(written) <= 2, f"{lab}: {len(written)} written questions"
        assert any(c.autograded for c in course.graded_cells(nb)), f"{lab}: no autograded cell left"
        rows = [r for r in course.points_table([lab]) if r["graded"] == "by hand"]
        assert sorted(r["grade_id"] for r in rows) == sorted(c.grade_id for c in written)


def test_instructors_guide_shows_the_current_points_table():
    guide = (ROOT / "INSTRUCTORS.md").read_text()
    start = "<!-- points table: generated by `python -m labkit.course points` -->\n"
    shown = guide.split(start, 1)[1].split("\n<!-- end points table -->", 1)[0]
    assert shown == course.format_points_table(course.points_table()), \
        "INSTRUCTORS.md's points table is stale: paste the output of `python -m labkit.course points`"


def test_validate_hook_is_added_once_before_the_hidden_tests():
    old = ("# graded cell\n### BEGIN HIDDEN TESTS\nassert grading.check_tensor_bytes(tensor_bytes, quiet=True)\n"
           "### END HIDDEN TESTS")
    new = ('### BEGIN HIDDEN TESTS\nfrom labkit.autograde import grade\ngrade("check_split_heads", split_heads)\n'
           "### END HIDDEN TESTS")
    assert course.hidden_test_target(old) == ("tensor_bytes", "tensor_bytes")
    assert course.hidden_test_target(new) == ("split_heads", "split_heads")
    hooked = course.add_validate_hook(old)
    before, hidden = hooked.split("### BEGIN HIDDEN TESTS")
    assert "check_when_validating('tensor_bytes', tensor_bytes)" in before and "check_when_validating" not in hidden
    assert course.add_validate_hook(hooked) == hooked
    assert course.add_validate_hook("x = 1") == "x = 1"


def test_check_when_validating_acts_only_under_nbgrader_validate(monkeypatch):
    def wrong(shape, dtype):
        return 0

    def right(shape, dtype):
        import math

        import torch
        return math.prod(shape) * torch.empty((), dtype=dtype).element_size()

    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    assert course.check_when_validating("tensor_bytes", wrong) is None          # a learner's run: nothing
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")
    assert course.check_when_validating("tensor_bytes", wrong) is None          # hidden tests grade, not this
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")
    assert course.check_when_validating("tensor_bytes", right) is None
    message = grading.check_tensor_bytes(wrong, quiet=True).message
    with pytest.raises(AssertionError) as info:
        course.check_when_validating("tensor_bytes", wrong)
    assert message.splitlines()[0].strip() in str(info.value)


def test_prepare_source_drops_widget_state_and_timestamps():
    nb = nbformat.read(NOTEBOOKS / "00_start_here.ipynb", as_version=4)
    n_graded = sum(1 for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code")
    course.prepare_source_notebook(nb)
    assert "widgets" not in nb.metadata
    assert not any("execution" in c.metadata for c in nb.cells)
    assert sum("check_when_validating(" in c.source for c in nb.cells) == n_graded


def test_cli_says_in_one_line_that_nbgrader_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nbgrader", None)        # as if nbgrader were not installed
    assert course.main(["init", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert "requirements-instructor.txt" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "c").exists()


@needs_nbgrader
def test_cli_errors_are_one_line_with_exit_2(tmp_path, capsys):
    (tmp_path / "inbox").mkdir()
    for argv, words in [(["init", str(tmp_path)], "already exists"),
                        (["init", str(tmp_path / "c"), "--labs", "99_nope"], "lab='99_nope' is not in the course"),
                        (["init", str(tmp_path / "no" / "c")], "parent folder does not exist"),
                        (["grade", str(tmp_path)], "no nbgrader_config.py"),
                        (["collect", str(tmp_path), "00_start_here", str(tmp_path / "inbox")], "no nbgrader_config.py")]:
        assert course.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "c").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inbox"]      # a failed init leaves nothing behind


def test_collect_places_both_hand_in_layouts_and_refuses_odd_student_ids(tmp_path):
    root = tmp_path / "course"
    (root / "source" / "00_start_here").mkdir(parents=True)
    (root / "nbgrader_config.py").write_text("c = get_config()\n")
    inbox = tmp_path / "inbox"
    (inbox / "bob").mkdir(parents=True)
    (inbox / "ada.ipynb").write_text("{}")
    (inbox / "bob" / "00_start_here.ipynb").write_text('{"bob": 1}')
    (inbox / "notes.txt").write_text("ignored")
    placed = course.collect(root, "00_start_here", inbox)
    assert sorted(placed) == ["ada", "bob"]
    assert (root / "submitted" / "bob" / "00_start_here" / "00_start_here.ipynb").read_text() == '{"bob": 1}'
    assert (root / "submitted" / "ada" / "00_start_here" / "00_start_here.ipynb").read_text() == "{}"
    (inbox / "a b.ipynb").write_text("{}")
    with pytest.raises(course.CourseError, match="student id 'a b'"):
        course.collect(root, "00_start_here", inbox)
    with pytest.raises(course.CourseError, match="lab='03_where_memory_goes' is not in this course"):
        course.collect(root, "03_where_memory_goes", inbox)


# ---------------------------------------------------------------------------------------------
# The whole flow (one course, every scenario, graded once)


def _solution_cells(nb) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "code"}


def _written_cells(nb) -> dict[str, nbformat.NotebookNode]:
    """The written questions' answer cells (markdown, graded by hand)."""
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("solution") and c.cell_type == "markdown"}


STUDENT_ANSWER = "My answer: the bytes saved in one place are spent in another ({grade_id})."


def _cell_defining(nb, fn: str):
    for cell in nb.cells:
        if cell.cell_type == "code" and re.search(rf"^def {fn}\(", cell.source, re.MULTILINE):
            return cell
    raise LookupError(f"no cell defines {fn}()")


def _graded_cell_for(nb, fn: str):
    """The graded cell that tests `fn` (found by its hidden test, or by its visible validate line in a student copy)."""
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("grade"):
            continue
        target = course.hidden_test_target(cell.source)
        if (target and target[1] == fn) or re.search(rf"check_when_validating\(['\"]\w+['\"], {fn}\)", cell.source):
            return cell
    raise LookupError(f"no graded cell tests {fn}()")


def _with_body(cell_source: str, body: str) -> str:
    """The function definition in `cell_source` (signature and docstring kept) with `body` as its body."""
    lines = cell_source.splitlines(keepends=True)
    keep = []
    for line in lines:
        keep.append(line)
        if line.strip().endswith('"""') and len(keep) > 1:
            break
    return "".join(keep) + body


def _wrong_function(lab: str, source_nb):
    fn, body = WRONG[lab]
    namespace: dict = {}
    exec("import math, torch\n"  # noqa: S102 (the test's own wrong answer, as a learner would write it)
          + _with_body(_cell_defining(source_nb, fn).source, body), namespace)
    return namespace[fn]


def _solved(release_nb, source_nb):
    nb = nbformat.from_dict(json.loads(json.dumps(release_nb)))
    answers = _solution_cells(source_nb)
    for grade_id, cell in _solution_cells(nb).items():
        cell.source = answers[grade_id].source
    for grade_id, cell in _written_cells(nb).items():       # a learner's own words, not the answer key
        cell.source = STUDENT_ANSWER.format(grade_id=grade_id)
    return nb


def _make_submissions(root: Path, lab: str) -> dict[str, str]:
    """One handed-in notebook per scenario in a folder, as a teacher would download them; returns student -> what."""
    release_nb = nbformat.read(root / "release" / lab / f"{lab}.ipynb", as_version=4)
    source_nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    fn, body = WRONG[lab]
    out = {}

    def hand_in(student, nb, what):
        inbox = root.parent / f"inbox-{lab}"
        inbox.mkdir(exist_ok=True)
        nbformat.write(nb, inbox / f"{student}.ipynb")
        out[student] = what

    hand_in("solved", _solved(release_nb, source_nb), "every exercise solved")
    hand_in("untouched", release_nb, "the student copy as handed out")
    nb = _solved(release_nb, source_nb)
    cell = _cell_defining(nb, fn)
    cell.source = _with_body(cell.source, body)
    hand_in("wrong", nb, f"{fn} wrong")
    if lab == "00_start_here":
        # tampered: the wrong function's graded cell edited, and the other graded cell deleted
        nb = _solved(release_nb, source_nb)
        cell = _cell_defining(nb, fn)
        cell.source = _with_body(cell.source, body)
        _graded_cell_for(nb, fn).source = "# I edited this locked cell\npass\n"
        nb.cells.remove(_graded_cell_for(nb, DELEGATE[0]))
        hand_in("tampered", nb, f"{fn} wrong and its graded cell edited; the graded cell of {DELEGATE[0]} deleted")
        # cheater: the wrong function plus the check rebound, and the other function delegating to labkit
        nb = _solved(release_nb, source_nb)
        cell = _cell_defining(nb, fn)
        cell.source = _with_body(cell.source, body) + "\n" + MONKEYPATCH
        cell = _cell_defining(nb, DELEGATE[0])
        cell.source = _with_body(cell.source, DELEGATE[1])
        hand_in("cheater", nb, f"{fn} wrong with the check rebound; {DELEGATE[0]} calls labkit's reference")
    course.collect(root, lab, root.parent / f"inbox-{lab}")
    return out


def _upgraded(root: Path, lab: str) -> bool:
    """True when the course's graded cells use the tamper-proof grade() form (labkit.autograde)."""
    nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    return any(course._NEW_HIDDEN_TEST.search(c.source) for c in nb.cells)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Make the course, hand in every scenario, grade, write feedback, export: once for all tests below."""
    if __import__("importlib").util.find_spec("nbgrader") is None:
        pytest.skip("nbgrader is not installed: pip install -r requirements-instructor.txt")
    import time

    base = tmp_path_factory.mktemp("course")
    root = base / "course"
    times = {}
    t0 = time.perf_counter()
    result = course.init(root, FLOW_LABS)
    times["init (incl. generate_assignment)"] = time.perf_counter() - t0
    students = {lab: _make_submissions(root, lab) for lab in FLOW_LABS}
    for lab in FLOW_LABS:
        t0 = time.perf_counter()
        course.grade(root, [lab])
        times[f"autograde {lab} ({len(students[lab])} submissions)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    course.feedback(root)
    times["feedback"] = time.perf_counter() - t0
    csv_path = course.export(root)
    print("\n" + "\n".join(f"{k}: {v:.1f} s" for k, v in times.items()))
    return {"root": root, "students": students, "csv": csv_path, "init": result,
            "scores": {lab: course.scores(root, lab) for lab in FLOW_LABS},
            "cells": {lab: course.cell_scores(root, lab) for lab in FLOW_LABS},
            "by_hand": {lab: course.to_grade_by_hand(root, lab) for lab in FLOW_LABS}}


def _total(root: Path, lab: str, autograded_only: bool = False) -> float:
    """The lab's points: all of them, or only those the hidden tests award (written answers are graded by hand)."""
    nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    return sum(c.points for c in course.graded_cells(nb) if c.autograded or not autograded_only)


def _written_ids(root: Path, lab: str) -> list[str]:
    nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    return sorted(c.grade_id for c in course.graded_cells(nb) if not c.autograded)


def _points_of(root: Path, lab: str, fn: str) -> float:
    nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    return float(_graded_cell_for(nb, fn).metadata["nbgrader"]["points"])


def _grade_id(root: Path, lab: str, fn: str) -> str:
    nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    return _graded_cell_for(nb, fn).metadata["nbgrader"]["grade_id"]


def _max_points(root: Path, lab: str) -> dict[str, float]:
    """Each graded cell's score in a fully solved submission after autograde: its points, or 0 for a written
    answer (it "needs manual grade" until the instructor scores it; nbgrader counts it 0 until then)."""
    nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    return {c.grade_id: c.points if c.autograded else 0.0 for c in course.graded_cells(nb)}


def _autograded(root: Path, student: str, lab: str):
    return nbformat.read(root / "autograded" / student / lab / f"{lab}.ipynb", as_version=4)


def _errors(nb, graded: bool | None = None) -> list[tuple[int, str]]:
    out = []
    for i, cell in enumerate(nb.cells):
        is_graded = bool(cell.metadata.get("nbgrader", {}).get("grade"))
        if graded is not None and is_graded != graded:
            continue
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append((i, f"{o['ename']}: {o['evalue']}"))
    return out


def _feedback_text(root: Path, student: str, lab: str) -> str:
    page = (root / "feedback" / student / lab / f"{lab}.html").read_text()
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def _log(root: Path) -> str:
    return (root / "logs" / "nbgrader.log").read_text()


@needs_nbgrader
@pytest.mark.parametrize("lab", FLOW_LABS)
def test_solved_gets_full_marks(flow, lab):
    root = flow["root"]
    assert _total(root, lab) > 0
    assert _total(root, lab) > _total(root, lab, autograded_only=True) > 0      # the lab has written questions
    assert flow["scores"][lab]["solved"] == _total(root, lab, autograded_only=True)   # full AUTOGRADED marks
    assert flow["cells"][lab]["solved"] == _max_points(root, lab)
    assert _errors(_autograded(root, "solved", lab)) == []


@needs_nbgrader
@pytest.mark.parametrize("lab", FLOW_LABS)
def test_written_answers_are_left_for_manual_grading(flow, lab):
    root = flow["root"]
    written = _written_ids(root, lab)
    assert written and flow["by_hand"][lab]["solved"] == written          # nbgrader: "needs manual grade"
    assert "untouched" not in flow["by_hand"][lab]                         # an unanswered question scores 0 by itself
    assert all(flow["cells"][lab]["untouched"][g] == 0 for g in written)
    answers = _written_cells(_autograded(root, "solved", lab))
    assert {g: c.source for g, c in answers.items()} == {g: STUDENT_ANSWER.format(grade_id=g) for g in written}


@needs_nbgrader
@pytest.mark.parametrize("lab", FLOW_LABS)
def test_untouched_student_copy_gets_zero_and_runs_to_the_end(flow, lab):
    root = flow["root"]
    assert flow["scores"][lab]["untouched"] == 0
    assert set(flow["cells"][lab]["untouched"].values()) == {0.0}
    nb = _autograded(root, "untouched", lab)
    assert _errors(nb, graded=False) == [], "a cell outside the graded cells failed in the student copy"
    assert len(_errors(nb, graded=True)) == sum(c.autograded for c in course.graded_cells(nb))
    shown = "\n".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "this lab ran in" in shown, "the student copy did not reach its last cell"


@needs_nbgrader
@pytest.mark.parametrize("lab", FLOW_LABS)
def test_one_wrong_function_loses_exactly_its_points(flow, lab):
    root = flow["root"]
    fn = WRONG[lab][0]
    expected = {**_max_points(root, lab), _grade_id(root, lab, fn): 0.0}
    assert flow["cells"][lab]["wrong"] == expected
    assert flow["scores"][lab]["wrong"] == _total(root, lab, autograded_only=True) - _points_of(root, lab, fn)
    nb = _autograded(root, "wrong", lab)
    errors = _errors(nb)
    assert len(errors) == 1 and errors[0][1].startswith("AssertionError"), errors
    assert nb.cells[errors[0][0]] is _graded_cell_for(nb, fn)      # the failure sits in that exercise's graded cell


@needs_nbgrader
@pytest.mark.parametrize("lab", FLOW_LABS)
def test_feedback_carries_the_self_checks_message(flow, lab):
    root = flow["root"]
    if not _upgraded(root, lab):
        pytest.skip("graded cells still use `assert grading.check_x(fn, quiet=True)` (a bare AssertionError): "
                    "needs labkit.autograde.grade and grading.upgrade_graded_cells")
    source_nb = nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4)
    check = getattr(grading, f"check_{course.hidden_test_target(_graded_cell_for(source_nb, WRONG[lab][0]).source)[0]}")
    message = check(_wrong_function(lab, source_nb), quiet=True).message
    text = _feedback_text(root, "wrong", lab)
    for line in filter(None, (" ".join(line.split()) for line in message.splitlines())):
        assert line in text, f"feedback HTML lacks the check's line {line!r}"


@needs_nbgrader
def test_edited_locked_cell_is_restored_and_graded(flow):
    root, lab, fn = flow["root"], "00_start_here", WRONG["00_start_here"][0]
    source_cell = _graded_cell_for(nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4), fn)
    restored = _graded_cell_for(_autograded(root, "tampered", lab), fn)
    assert restored.source == source_cell.source
    assert flow["cells"][lab]["tampered"][_grade_id(root, lab, fn)] == 0      # restored, then it graded the wrong answer
    # nbgrader warns about this edit, and only about this one: the false "checksum has changed" warning
    # for every hidden-test cell of every submission (jupyter/nbgrader#1961) is gone
    warnings = re.findall(r"Attribute 'checksum' for cell (\S+) has changed", _log(root))
    assert warnings == [_grade_id(root, lab, fn)]


@needs_nbgrader
def test_deleted_graded_cell_is_reported_put_back_and_graded(flow):
    root, lab, fn = flow["root"], "00_start_here", DELEGATE[0]
    grade_id = _grade_id(root, lab, fn)
    assert f"Missing grade cell {grade_id} encountered, adding to notebook" in _log(root)
    nb = _autograded(root, "tampered", lab)
    readded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id]
    assert len(readded) == 1 and "was missing from the submission" in readded[0].source
    assert flow["cells"][lab]["tampered"][grade_id] == _max_points(root, lab)[grade_id]   # graded: the answer was right


@needs_nbgrader
def test_monkeypatched_check_earns_no_points(flow):
    root, lab, fn = flow["root"], "00_start_here", WRONG["00_start_here"][0]
    if not _upgraded(root, lab):
        pytest.skip("graded cells still call grading.check_x in the student's kernel, which an answer cell can "
                    "rebind: needs labkit.autograde.grade and grading.upgrade_graded_cells")
    assert flow["cells"][lab]["cheater"][_grade_id(root, lab, fn)] == 0


@needs_nbgrader
def test_function_delegating_to_the_reference_earns_no_points(flow):
    root, lab, fn = flow["root"], "00_start_here", DELEGATE[0]
    if not _upgraded(root, lab):
        pytest.skip("needs labkit.autograde's tripwires (grading.upgrade_graded_cells) to catch a call to the reference")
    assert flow["cells"][lab]["cheater"][_grade_id(root, lab, fn)] == 0
    assert "reference" in _feedback_text(root, "cheater", lab)


@needs_nbgrader
@pytest.mark.parametrize("lab", FLOW_LABS)
def test_student_copies_are_locked_and_carry_no_answers(flow, lab):
    nb = nbformat.read(flow["root"] / "release" / lab / f"{lab}.ipynb", as_version=4)
    assert "widgets" not in nb.metadata                                   # no widget state with rendered answers
    assert not any("execution" in c.metadata or c.get("outputs") for c in nb.cells)
    text = "\n".join(c.source for c in nb.cells)
    assert "### BEGIN SOLUTION" not in text and "### BEGIN HIDDEN TESTS" not in text
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")
              and not c.metadata["nbgrader"].get("solution")]
    assert graded and all(c.metadata.get("editable") is False and c.metadata.get("deletable") is False for c in graded)
    # the written questions' answer cells: nbgrader replaced each whole answer key with its stub, editable
    written = _written_cells(nb)
    assert written and all(c.source == "YOUR ANSWER HERE" and c.metadata.get("editable", True) is True
                           and c.metadata.get("deletable") is False for c in written.values())
    source = nbformat.read(flow["root"] / "source" / lab / f"{lab}.ipynb", as_version=4)
    for grade_id, key in _written_cells(source).items():
        assert "Marking guide" in key.source and grade_id in written
        leaked = [line for line in key.source.splitlines() if len(line.strip()) > 20 and line in text]
        assert not leaked, f"{lab}: the answer key of {grade_id} reached the student copy: {leaked[0]!r}"


@needs_nbgrader
def test_grades_csv_has_every_submission(flow):
    with open(flow["csv"]) as f:
        rows = list(csv.DictReader(f))
    got = {(r["assignment"], r["student_id"]): float(r["score"]) for r in rows}
    for lab, by_student in flow["scores"].items():
        for student, score in by_student.items():
            assert got[(lab, student)] == score
    assert {float(r["max_score"]) for r in rows if r["assignment"] == "00_start_here"} == \
        {_total(flow["root"], "00_start_here")}             # written answers' points included


@needs_nbgrader
def test_nbgrader_validate_fails_a_wrong_notebook_and_passes_a_solved_one(flow, tmp_path):
    root, lab = flow["root"], "00_start_here"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def validate(student: str) -> str:
        path = root / "submitted" / student / lab / f"{lab}.ipynb"
        done = subprocess.run([sys.executable, "-m", "nbgrader", "validate", str(path)],
                              capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
        return done.stdout + done.stderr

    assert "Success! Your notebook passes all the tests." in validate("solved")
    out = validate("wrong")
    assert "VALIDATION FAILED ON 1 CELL(S)!" in out
    message = grading.check_tensor_bytes(_wrong_function(lab, nbformat.read(
        root / "source" / lab / f"{lab}.ipynb", as_version=4)), quiet=True).message
    assert " ".join(message.splitlines()[0].split()) in " ".join(out.split())


@needs_nbgrader
def test_measure_sizes_the_timeout_from_this_machine(flow):
    root = flow["root"]
    assert json.loads((root / course.TIMINGS_FILE).read_text())["00_start_here"] is None   # nothing measured at init
    timing = course.measure(root, ["00_start_here"], progress=False)["00_start_here"]
    assert 0 < timing["slowest_s"] <= timing["total_s"]
    text = (root / "nbgrader_config.py").read_text()
    assert f"took {timing['slowest_s']:.1f} s" in text and "measured by `python -m labkit.course measure`" in text
    assert json.loads((root / course.TIMINGS_FILE).read_text())["00_start_here"]["slowest_s"] == timing["slowest_s"]


@needs_nbgrader
def test_course_config_is_what_nbgrader_runs_with(flow, monkeypatch):
    """nbgrader reads the measured timeout, the data cache and one thread per kernel from the course's config."""
    from nbgrader.preprocessors import Execute
    from traitlets.config.loader import PyFileConfigLoader

    from labkit.data import cache_dir

    monkeypatch.delenv("LABKIT_DATA_DIR", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    expected_cache = str(cache_dir().resolve())
    config = PyFileConfigLoader("nbgrader_config.py", path=str(flow["root"])).load_config()
    written = int(re.search(r"^c\.Execute\.timeout = (\d+)$", (flow["root"] / "nbgrader_config.py").read_text(), re.MULTILINE)[1])
    assert Execute(config=config).timeout == written >= course.TIMEOUT_FLOOR_S > 30
    assert os.environ["LABKIT_DATA_DIR"] == expected_cache      # kernels started by nbgrader inherit these
    assert os.environ["OMP_NUM_THREADS"] == "1"
    assert config.CourseDirectory.root == str(flow["root"])


@needs_nbgrader
def test_grading_the_written_answers_by_hand_completes_the_score(flow):
    """What formgrader does when the instructor scores a written answer: the manual score joins the autograded ones."""
    from nbgrader.api import Gradebook

    root, lab = flow["root"], "03_where_memory_goes"
    points = {c.grade_id: c.points for c in course.graded_cells(
        nbformat.read(root / "source" / lab / f"{lab}.ipynb", as_version=4))}
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", course.COURSE_ID) as gb:
        for grade_id in _written_ids(root, lab):
            grade = gb.find_grade(grade_id, lab, lab, "solved")
            grade.manual_score = points[grade_id]
            grade.needs_manual_grade = False
        gb.db.commit()
    assert "solved" not in course.to_grade_by_hand(root, lab)
    assert course.scores(root, lab)["solved"] == _total(root, lab)
