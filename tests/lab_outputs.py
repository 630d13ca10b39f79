"""What the labs' claims tests share: a lab's committed notebook, the text it printed, the numbers in that text,
and the rule every printed ranking must follow (a paired difference beyond 2 standard errors)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
#: a printed number: sign, thousands separators, decimals, an exponent
NUMBER = r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?"


def to_float(text: str) -> float:
    """A printed number ('1,234.5', '3e-04') as a float."""
    return float(text.replace(",", ""))


def lab_notebook(env_var: str, filename: str):
    """The committed notebook `filename` (or the file named by the environment variable `env_var`), read."""
    return nbformat.read(Path(os.environ.get(env_var, NOTEBOOKS / filename)), as_version=4)


def printed_text(nb, lab: str) -> str:
    """Everything the lab's code cells printed to stdout, in order; fails if the lab was never run to its end."""
    out = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                    if o.get("output_type") == "stream" and o.get("name") == "stdout")
    assert "this lab ran in" in out, f"{lab} has no committed outputs: build it with python -m labkit.lab build"
    return out


def assert_rankings_follow(text: str, minimum: int, lab: str, paired_marker: bool = False) -> None:
    """'A beats B by d ± s' needs d > 2s; 'within the noise (d ± s)' needs |d| <= 2s; at least `minimum` of them.

    `paired_marker`: the lab writes '(paired' after each ranking's number, and only those are read."""
    tail_beats, tail_ties = (r" \(paired", ", paired") if paired_marker else ("", "")
    beats = re.findall(rf"beats .+? by ({NUMBER}) ± ({NUMBER}) nats/char{tail_beats}", text)
    ties = re.findall(rf"within the noise of this evaluation set \(({NUMBER}) ± ({NUMBER}) nats/char{tail_ties}", text)
    assert len(beats) + len(ties) >= minimum, f"{lab} should rank its models by paired differences"
    for d, s in beats:
        assert to_float(d) > 2 * to_float(s), f"'beats by {d} ± {s}' is inside the noise"
    for d, s in ties:
        assert abs(to_float(d)) <= 2 * to_float(s), f"'within the noise ({d} ± {s})' is outside it"
