"""Release: solved notebooks -> student copies, refusing anything that could leak or destroy an answer.

    python -m labkit.grading release notebooks/ student/           # student copies
    python -m labkit.grading release notebooks/ student/ --force   # ... overwriting earlier copies
    python -m labkit.grading upgrade-graded-cells notebooks/0*.ipynb  # hidden tests -> tamper-proof form

A student copy has every `### BEGIN SOLUTION` … `### END SOLUTION` block replaced by a stub (code:
`raise NotImplementedError()`; markdown: "YOUR ANSWER HERE"), every solution cell without such a block (a written
answer, graded by hand) replaced as a whole by the stub — as `nbgrader generate_assignment` does, so an
instructor's answer key never reaches a student — and every
`### BEGIN HIDDEN TESTS` … `### END HIDDEN TESTS` block removed, outputs, widget state and execution
timestamps cleared, and locked/graded cells marked non-editable and non-deletable (JupyterLab honours
`editable: false, deletable: false`). The release refuses, before writing anything:
- a source folder that is missing, holds no notebooks, or holds no solutions (swapped arguments?);
- a BEGIN marker with no matching END (or a misspelt marker), naming the notebook, cell and line;
- existing files in the destination, unless `force=True` — and never a solved notebook, even then.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

SOLUTION_RE = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*\n?", re.S | re.M)
HIDDEN_RE = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[^\n]*\n.*?^[ \t]*### END HIDDEN TESTS[^\n]*\n?", re.S | re.M)
STUDENT_STUB = "{indent}# YOUR CODE HERE\n{indent}raise NotImplementedError()\n"
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
# any line that looks like an nbgrader marker ("###" then BEGIN/END), spelt right or not
MARKER_LIKE = re.compile(r"^[ \t]*#{2,}\s*(BEGIN|END)\b(.*)$", re.I)


class ReleaseError(ValueError):
    """A release that would leak an answer or destroy a notebook; the message says which and why."""


def strip_solutions(source: str) -> str:
    """A cell's source with every solution block replaced by a stub and every hidden-test block removed."""
    source = SOLUTION_RE.sub(lambda m: STUDENT_STUB.format(indent=m.group(1)), source)
    return HIDDEN_RE.sub("", source)


def check_markers(source: str, where: str) -> None:
    """Raise ReleaseError naming `where` and the line if the markers in `source` don't pair up exactly."""
    open_marker: tuple[str, int] | None = None
    for number, line in enumerate(source.splitlines(), start=1):
        m = MARKER_LIKE.match(line)
        if not m:
            continue
        text = f"{m.group(1).upper()}{m.group(2).rstrip()}"
        if not line.lstrip().startswith("### ") or text not in MARKERS:
            raise ReleaseError(f"{where}, line {number}: {line.strip()!r} is not an nbgrader marker; "
                               f"allowed: {', '.join('### ' + k for k in MARKERS)}")
        kind = text.split(" ", 1)[1]
        if text.startswith("BEGIN"):
            if open_marker:
                raise ReleaseError(f"{where}, line {open_marker[1]}: `### BEGIN {open_marker[0]}` has no matching "
                                   f"`### END {open_marker[0]}` before line {number}")
            open_marker = (kind, number)
        else:
            if not open_marker or open_marker[0] != kind:
                raise ReleaseError(f"{where}, line {number}: `### END {kind}` with no `### BEGIN {kind}` before it")
            open_marker = None
    if open_marker:
        raise ReleaseError(f"{where}, line {open_marker[1]}: `### BEGIN {open_marker[0]}` has no matching "
                           f"`### END {open_marker[0]}`: the student copy would keep the answer")


WRITTEN_ANSWER_STUB = "YOUR ANSWER HERE"


def _whole_cell_solution(cell) -> bool:
    """An nbgrader solution cell with no BEGIN/END SOLUTION block: the whole cell is the answer (as in nbgrader).

    A student copy's stubs ("YOUR ANSWER HERE", "# YOUR CODE HERE") are not answers.
    """
    source = cell.source.strip()
    return (bool(cell.metadata.get("nbgrader", {}).get("solution")) and not SOLUTION_RE.search(cell.source)
            and source != WRITTEN_ANSWER_STUB and "# YOUR CODE HERE" not in source)


def count_solutions(nb) -> int:
    """Solutions in a notebook: BEGIN/END SOLUTION blocks, plus solution cells that are an answer as a whole."""
    return sum(len(SOLUTION_RE.findall(cell.source)) + _whole_cell_solution(cell)
               for cell in nb.cells if cell.cell_type in ("code", "markdown"))


def student_copy(nb, name: str = "notebook"):
    """The student version of a notebook object (edited in place and returned); checks markers first."""
    for i, cell in enumerate(nb.cells):
        check_markers(cell.source, f"{name}, cell {i}")
    nb.metadata.pop("widgets", None)                       # saved widget state shows rendered answers
    for cell in nb.cells:
        cell.metadata.pop("execution", None)               # per-cell timestamps
        if cell.cell_type in ("code", "markdown") and _whole_cell_solution(cell):   # e.g. a written answer
            cell.source = STUDENT_STUB.format(indent="") if cell.cell_type == "code" else WRITTEN_ANSWER_STUB
        if cell.cell_type == "code":
            if cell.get("metadata", {}).get("nbgrader", {}).get("grade"):
                # the visible line that makes `nbgrader validate` run the check (hidden tests are gone here)
                from labkit.course import add_validate_hook
                cell.source = add_validate_hook(cell.source)
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
        elif cell.cell_type == "markdown":   # a written answer inside a question cell: the stub, as nbgrader does
            cell.source = SOLUTION_RE.sub(lambda m: f"{m.group(1)}{WRITTEN_ANSWER_STUB}\n", cell.source)
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("locked") or meta.get("grade"):
            if not meta.get("solution"):
                cell.metadata["editable"] = False
            cell.metadata["deletable"] = False
    return nb


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp name in the same folder, then rename; mode follows the umask (readable by a class)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def release_notebook(src: Path, dst: Path) -> int:
    """Write the student copy of one notebook; returns how many solution blocks were removed."""
    import nbformat
    nb = nbformat.read(src, as_version=4)
    removed = count_solutions(nb)
    write_atomic(Path(dst), nbformat.writes(student_copy(nb, Path(src).name)).encode())
    return removed


def release(src_dir: Path | str, dst_dir: Path | str, force: bool = False) -> dict[str, int]:
    """Student copies of every notebook in src_dir, written to dst_dir; returns blocks removed per notebook.

    Everything is checked before anything is written (see the module docstring for what is refused).
    """
    import nbformat
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    if not src_dir.exists():
        raise ReleaseError(f"src_dir={str(src_dir)!r} does not exist; give the folder of solved notebooks")
    if not src_dir.is_dir():
        raise ReleaseError(f"src_dir={str(src_dir)!r} is not a folder; give the folder of solved notebooks")
    if src_dir.resolve() == dst_dir.resolve():
        raise ReleaseError(f"dst_dir={str(dst_dir)!r} is src_dir: a release must never overwrite the solved notebooks")
    sources = sorted(src_dir.glob("*.ipynb"))
    if not sources:
        raise ReleaseError(f"src_dir={str(src_dir)!r} holds no .ipynb notebooks")
    books = {}
    for path in sources:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as e:
            raise ReleaseError(f"{path}: not a readable notebook ({type(e).__name__}: {e})") from None
        for i, cell in enumerate(nb.cells):
            check_markers(cell.source, f"{path.name}, cell {i}")
        books[path] = nb
    if sum(count_solutions(nb) for nb in books.values()) == 0:
        raise ReleaseError(f"src_dir={str(src_dir)!r} holds no `### BEGIN SOLUTION` blocks: these look like student "
                           "copies, not the solved notebooks (are the arguments swapped? usage: release SRC DST)")
    for path in sources:
        target = dst_dir / path.name
        if target.exists():
            if not force:
                raise ReleaseError(f"{target} already exists; pass --force to overwrite earlier student copies")
            try:
                if count_solutions(nbformat.read(target, as_version=4)) > 0:
                    raise ReleaseError(f"{target} holds solutions (a solved notebook): refusing to overwrite it "
                                       "even with --force")
            except ReleaseError:
                raise
            except Exception:
                pass   # an unreadable old copy may be replaced
    return {path.name: release_notebook(path, dst_dir / path.name) for path in sources}


# ---------------------------------------------------------------------------------------------
# Upgrading graded cells to the tamper-proof form

OLD_GRADED = re.compile(r"^([ \t]*)assert\s+(?:labkit\.)?grading\.check_(\w+)\(\s*(\w+)\s*(?:,\s*quiet\s*=\s*True\s*)?\)"
                        r"[ \t]*(#[^\n]*)?$", re.M)
NEW_GRADED = ('{indent}import sys; sys.modules.pop("labkit.autograde", None)  # a fresh copy: names rebound in this '
              'notebook don\'t count\n{indent}from labkit.autograde import grade\n{indent}grade("{check}", {fn})')


def upgrade_graded_cells(nb) -> int:
    """Rewrite `assert grading.check_x(fn, quiet=True)` hidden tests into `grade("x", fn)`; returns cells changed.

    `grade` runs the check in a fresh Python process (names the notebook rebinds don't count) and
    raises AssertionError carrying the check's message, which nbgrader shows as feedback.
    """
    changed = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or "### BEGIN HIDDEN TESTS" not in cell.source:
            continue

        def rewrite_block(block: re.Match) -> str:
            return OLD_GRADED.sub(lambda m: NEW_GRADED.format(indent=m.group(1), check=m.group(2), fn=m.group(3)),
                                  block.group(0))
        new = HIDDEN_RE.sub(rewrite_block, cell.source)
        if new != cell.source:
            cell.source = new
            changed += 1
    return changed


def upgrade_notebook(path: Path | str) -> int:
    """upgrade_graded_cells on a notebook file, written back atomically; returns cells changed."""
    import nbformat
    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    changed = upgrade_graded_cells(nb)
    if changed:
        write_atomic(path, nbformat.writes(nb).encode())
    return changed
