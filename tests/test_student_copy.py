"""A student copy (solutions stripped) must still run top to bottom and say 'not yet solved'."""
import re
from pathlib import Path

import nbformat
import torch
import pytest

from labkit import grading

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_release_strips_every_solution():
    solved = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert solved, "no notebooks found"
    for path in solved:
        nb = nbformat.read(path, as_version=4)
        answers = {i: c.source for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("solution")}
        student = grading.student_copy(nb, path.name)
        for i, source in answers.items():   # no line of an answer survives, except the def/docstring around a block
            kept = set(student.cells[i].source.splitlines())
            lost = [line for line in source.splitlines() if line.strip() and line not in kept]
            assert lost, f"{path.name}, cell {i}: the student copy keeps the whole answer"


@pytest.mark.parametrize("name", sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")))
def test_student_copy_runs_top_to_bottom(tmp_path, name):
    from nbclient import NotebookClient

    removed = grading.release(NOTEBOOKS, tmp_path)
    assert removed[name] >= 2, "the lab should have at least two exercises to strip"
    nb = nbformat.read(tmp_path / name, as_version=4)
    text = "\n".join(c.source for c in nb.cells)
    assert "### BEGIN SOLUTION" not in text and "### BEGIN HIDDEN TESTS" not in text
    assert "widgets" not in nb.metadata and not any("execution" in c.metadata for c in nb.cells)
    graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade") and not c.metadata["nbgrader"].get("solution")]
    assert graded and all(c.metadata.get("editable") is False and c.metadata.get("deletable") is False for c in graded)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"student copy raised: {errors[0]['ename']}: {errors[0]['evalue']}"
    shown = outputs_text(nb)
    answer_cells = [c for c in nb.cells if c.cell_type == "markdown" and c.metadata.get("nbgrader", {}).get("solution")]
    written = len(answer_cells)
    assert written >= 1 and all(c.source == "YOUR ANSWER HERE" for c in answer_cells)
    assert shown.count("not yet solved") >= removed[name] - written    # written answers have no self-check
    assert re.search(r"the cells below use the reference implementation (`[\w.]+` )?instead", shown)  # fell back, said so
    assert "this lab ran in" in shown             # it reached the last cell


def test_labkit_release_copies_fail_nbgrader_validate_on_a_wrong_answer(monkeypatch):
    """A copy from `labkit.grading release` keeps, in each graded cell, the line that makes `nbgrader validate`
    run the check (its hidden tests are gone): under validate a wrong answer raises, a right one passes, and a
    learner running the cell sees nothing happen."""
    nb = nbformat.read(NOTEBOOKS / "00_start_here.ipynb", as_version=4)
    graded = [c.source for c in grading.student_copy(nb, "00").cells
              if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")]
    assert graded and all("check_when_validating(" in s and "BEGIN HIDDEN" not in s for s in graded)
    cell = next(s for s in graded if "'tensor_bytes'" in s)
    wrong = {"tensor_bytes": lambda shape, dtype: 0}
    exec(cell, dict(wrong))                                        # a learner's run: nothing happens
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")
    with pytest.raises(AssertionError, match="tensor_bytes"):
        exec(cell, dict(wrong))
    exec(cell, {"tensor_bytes": lambda shape, dtype: (torch.tensor(0, dtype=dtype).element_size()
                                                      * torch.Size(shape).numel())})
