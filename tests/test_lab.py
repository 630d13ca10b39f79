"""labkit.lab: the thread count start() sets, the thread benchmark's plumbing, and the notebook build command."""
from __future__ import annotations

import os
import stat

import nbformat
import pytest
import torch

from labkit import lab


@pytest.fixture
def restore_threads(monkeypatch):
    monkeypatch.delenv(lab.THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Threads

def test_start_sets_the_default_thread_count_and_says_why(restore_threads, capsys):
    torch.set_num_threads(2)  # what JupyterLab gives a kernel on a 2-core machine
    assert lab.start(seed=3) is None  # nothing to display when it is a cell's last line
    out = capsys.readouterr().out
    assert torch.get_num_threads() == lab.DEFAULT_THREADS == 1
    assert lab.choose_threads() == (1, f"chosen: {lab.THREADS_REASON}")
    assert "seed 3" in out and "1 thread (chosen: 2 threads collapse when another process shares the cores" in out
    assert "python -m labkit.lab threads" in out and "LABKIT_THREADS=N" in out


def test_start_threads_argument_wins_over_the_environment(restore_threads, monkeypatch, capsys):
    monkeypatch.setenv(lab.THREADS_ENV, "1")
    lab.start(threads=2)
    assert torch.get_num_threads() == 2
    assert "2 threads (asked for in start(threads=...)" in capsys.readouterr().out


def test_start_reads_labkit_threads(restore_threads, monkeypatch, capsys):
    monkeypatch.setenv(lab.THREADS_ENV, " 2 ")
    lab.start()
    assert torch.get_num_threads() == 2
    assert "from LABKIT_THREADS=2" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["0", "-1", "two", "1.5", "2x"])
def test_bad_labkit_threads_is_refused_with_name_and_value(restore_threads, monkeypatch, bad):
    monkeypatch.setenv(lab.THREADS_ENV, bad)
    with pytest.raises(ValueError, match=rf"LABKIT_THREADS='{bad}'; allowed: a whole number of threads >= 1"):
        lab.start()


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "3"])
def test_bad_threads_argument_is_refused(restore_threads, bad):
    with pytest.raises(ValueError, match=r"threads=.*allowed: a whole number of threads >= 1"):
        lab.start(threads=bad)


def test_thread_benchmark_measures_each_count_and_load(restore_threads):
    before = torch.get_num_threads()
    res = lab.thread_benchmark((1, 2), repeats=2, train_steps=1, gen_tokens=2, conditions=("quiet",),
                               progress=False)
    assert torch.get_num_threads() == before  # the benchmark puts the thread count back
    quiet = res["conditions"]["quiet"]
    for task in ("training step", "generation step"):
        for n in (1, 2):
            s = quiet[task][n]
            assert s["repeats"] == 2 and 0 < s["min_ms"] <= s["median_ms"] <= s["max_ms"]
        assert res["ratios"]["quiet"][task][2] == pytest.approx(quiet[task][2]["median_ms"] / quiet[task][1]["median_ms"])
    table = lab.format_thread_benchmark(res)
    assert "2 vs 1" in table and "training step" in table and "generation step" in table


def test_recommend_threads_picks_the_count_with_the_smallest_worst_slowdown():
    def summary(ms):
        return {"median_ms": ms}
    res = {"threads": [1, 2], "conditions": {
        "quiet": {"training step": {1: summary(10), 2: summary(9.5)}},
        "one competing process": {"training step": {1: summary(12), 2: summary(60)}}}}
    assert lab.recommend_threads(res) == 1
    res["conditions"]["one competing process"]["training step"][2] = summary(11)
    assert lab.recommend_threads(res) == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"repeats": 0}, r"repeats=0; allowed: a whole number >= 1"),
    ({"conditions": ("busy",)}, r"conditions contains 'busy'; allowed"),
    ({"thread_counts": (1, 0)}, r"thread_counts=0"),
])
def test_thread_benchmark_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        lab.thread_benchmark(**kwargs)


def test_threads_competing_process_is_stopped(restore_threads, monkeypatch):
    """The CPU-bound process the benchmark starts for its loaded run is killed when the run ends."""
    import subprocess
    started = []
    real_popen = subprocess.Popen

    def recording_popen(*args, **kwargs):
        proc = real_popen(*args, **kwargs)
        if lab._SPINNER in (args[0] if args else kwargs.get("args", [])):
            started.append(proc)
        return proc
    monkeypatch.setattr(subprocess, "Popen", recording_popen)
    lab.thread_benchmark((1,), repeats=1, train_steps=1, gen_tokens=1, conditions=("one competing process",),
                         progress=False)
    assert len(started) == 1 and started[0].poll() is not None


# ---------------------------------------------------------------------------------------------
# Progress bars in built notebooks

def _finished_bar_state(total: int = 20):
    """A tqdm.notebook bar run to the end, and the ipywidgets manager state that holds its final values."""
    import ipywidgets
    from tqdm.notebook import tqdm as tqdm_notebook

    bar = tqdm_notebook(range(total), desc="train gpt", display=False)
    for _ in bar:
        pass
    bar.close()
    state = ipywidgets.Widget.get_manager_state(drop_defaults=False)["state"]
    return bar.container.model_id, state


def test_finished_progress_text_is_rebuilt_from_widget_state():
    model_id, state = _finished_bar_state(20)
    text = lab.finished_progress_text(state, model_id)
    assert text.startswith("train gpt: 100%|██████████| 20/20 [")
    assert "&lt;" not in text and "\u2007" not in text
    assert lab.finished_progress_text(state, "no-such-model") is None


def test_finish_progress_bars_replaces_the_0_percent_snapshot():
    model_id, state = _finished_bar_state(7)
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    stale = "train gpt:   0%|          | 0/7 [00:00<?, ?it/s]"
    cell = nbformat.v4.new_code_cell("...")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": stale, "application/vnd.jupyter.widget-view+json": {"model_id": model_id, "version_major": 2,
                                                                          "version_minor": 0}})]
    nb.cells.append(cell)
    assert lab.finish_progress_bars(nb) == 1
    assert cell.outputs[0]["data"]["text/plain"].startswith("train gpt: 100%|██████████| 7/7 [")
    assert lab.finish_progress_bars(nb) == 0  # already finished: nothing to do


# ---------------------------------------------------------------------------------------------
# python -m labkit.lab build

def _write_nb(path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_build_executes_in_place_one_thread_in_the_notebooks_folder(tmp_path, capsys):
    nb_path = _write_nb(tmp_path / "lab.ipynb",
                        "import os, torch; print(os.getcwd()); print('OMP', os.environ.get('OMP_NUM_THREADS'))",
                        "from tqdm.auto import tqdm\nfor _ in tqdm(range(30), desc='train gpt'): pass")
    os.chmod(nb_path, 0o644)
    assert lab.main(["build", str(nb_path)]) == 0
    out = capsys.readouterr().out
    assert f"built {nb_path}" in out and " s (" in out
    nb = nbformat.read(nb_path, as_version=4)
    printed = "".join(o.get("text", "") for o in nb.cells[0].outputs)
    assert str(tmp_path) in printed and "OMP 1" in printed
    bar = [o for o in nb.cells[1].outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(bar) == 1, nb.cells[1].outputs
    # nbclient alone leaves tqdm's first snapshot ("0%") as the text a viewer shows
    assert bar[0]["data"]["text/plain"].startswith("train gpt: 100%|██████████| 30/30 ["), bar[0]["data"]
    assert bar[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"] in lab._widget_state(nb)
    assert stat.S_IMODE(nb_path.stat().st_mode) == 0o644  # the rename keeps the file's permissions
    assert not list(tmp_path.glob(".*tmp*"))
    assert not any("execution" in c.metadata for c in nb.cells)  # no timestamps: a rebuild is not a diff


def test_build_leaves_a_failing_notebook_unchanged(tmp_path, capsys):
    good = _write_nb(tmp_path / "good.ipynb", "print(1)")
    bad = _write_nb(tmp_path / "bad.ipynb", "print('before')", "raise RuntimeError('boom in cell 2')")
    before = bad.read_bytes()
    assert lab.main(["build", str(bad), str(good)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED {bad}: cell 1 raised RuntimeError: boom in cell 2 (the file was left unchanged)" in out
    assert f"built {good}" in out
    assert bad.read_bytes() == before
    assert nbformat.read(good, as_version=4).cells[0].outputs[0]["text"] == "1\n"


@pytest.mark.parametrize("argv, message", [
    (["build", "missing.ipynb"], "NOTEBOOK='missing.ipynb' does not exist"),
    (["build", "README.md"], "NOTEBOOK='README.md' is not a .ipynb file"),
    (["threads", "--repeats", "0"], "'0' is not a whole number >= 1"),
    (["bogus"], "invalid choice: 'bogus'"),
])
def test_command_line_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        lab.main(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_prune_widget_state_keeps_what_displayed_widgets_need():
    def model(name, **state):
        return {"model_name": name, "model_module": "@jupyter-widgets/controls", "state": state}
    state = {
        "box": model("VBoxModel", children=["IPY_MODEL_slider", "IPY_MODEL_out"], layout="IPY_MODEL_lay"),
        "slider": model("IntSliderModel", style="IPY_MODEL_sty"), "lay": model("LayoutModel"),
        "sty": model("SliderStyleModel"),
        "out": model("OutputModel", outputs=[{"output_type": "display_data", "data": {
            "application/vnd.jupyter.widget-view+json": {"model_id": "inner"}}}]),
        "inner": model("HTMLModel"),
        "probe": model("VBoxModel", children=["IPY_MODEL_probe_slider"]), "probe_slider": model("IntSliderModel"),
    }
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": state}}
    cell = nbformat.v4.new_code_cell("panel")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        "text/plain": "VBox(...)", "application/vnd.jupyter.widget-view+json": {"model_id": "box"}})]
    nb.cells.append(cell)
    assert lab.prune_widget_state(nb) == 2
    assert sorted(lab._widget_state(nb)) == ["box", "inner", "lay", "out", "slider", "sty"]
