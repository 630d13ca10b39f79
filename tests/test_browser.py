"""Real-browser test of lab 03's memory calculator: JupyterLab + headless Chromium (Python Playwright).

The flow: start JupyterLab on 127.0.0.1 with a token (isolated runtime, settings and workspace
dirs in a temporary folder, autosave off, no news or update checks), open the notebook in
Debian's Chromium, wait for the kernel's idle indicator, run all cells from the Run menu, wait
until every cell has run and the kernel is idle again, press ArrowRight on the "layers" slider
and check that the printed total and the bar chart (the Output's PNG) both change. A screenshot
of the notebook after the slider move is saved to artifacts/browser/notebook03_after_slider.png.
Afterwards the notebook file must be byte for byte unchanged and the browser must not have asked
to save, rename, delete or restore it (JupyterLab creating a checkpoint copy is allowed: it does
that under load and it does not touch the file). Every wait polls for a condition with a generous
bound, because CI runs this beside the rest of the suite on 2 cores.

Chromium comes from Debian's `chromium` package (installed by .ci/run; Playwright's own browser
download is not possible here). The test is skipped only when /usr/bin/chromium or the Python
playwright package is missing. The notebook under test is notebooks/03_where_memory_goes.ipynb;
LABKIT_BROWSER_NOTEBOOK=<path relative to the repo> picks another one that displays the calculator.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_03 = REPO / "notebooks" / "03_where_memory_goes.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "artifacts" / "browser"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
]
# Bounded waits (seconds), generous because the test runs beside the whole suite (`pytest -n 2`) on
# 2 cores; every wait polls for a condition and returns as soon as it holds, so they cost nothing when
# the machine is quiet. On top of them, every wait in the browser is cut to what is left of TEST_BUDGET.
SERVER_START_TIMEOUT = 120
TEST_BUDGET = 600
KERNEL_IDLE_TIMEOUT = 180
RUN_ALL_TIMEOUT = 480
SLIDER_TIMEOUT = 90
SETTLE_S = 1.0          # the slider's output counts as settled when unchanged for this long, kernel idle
SLIDER_STEPS = 3

pytestmark = pytest.mark.browser


def notebook_under_test() -> Path:
    """Lab 03, unless LABKIT_BROWSER_NOTEBOOK names another notebook (relative to the repository)."""
    chosen = os.environ.get("LABKIT_BROWSER_NOTEBOOK")
    return (REPO / chosen).resolve() if chosen else NOTEBOOK_03


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_lab_settings(settings_dir: Path) -> None:
    """User settings for this server only: no autosave, no news/update checks, every cell in the DOM."""
    settings = {
        "docmanager-extension/plugin": {"autosave": False},
        "apputils-extension/notification": {"checkForUpdates": False, "fetchNews": "false"},
        # "none": all cells are rendered, so every prompt and output can be located and waited on.
        "notebook-extension/tracker": {"windowingMode": "none"},
    }
    for name, values in settings.items():
        path = settings_dir / "@jupyterlab" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


def _server_info(runtime_dir: Path, pid: int) -> dict | None:
    """The jpserver-<pid>.json the server writes into its (private) runtime dir once it listens."""
    info = runtime_dir / f"jpserver-{pid}.json"
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return None


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the server (it shuts its kernels down), then SIGKILL its process group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:  # the server was started in its own session: this group is the server and its kernels only
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


@pytest.fixture
def playwright_api():
    """The playwright.sync_api module; skips (only) when no browser is available here."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (.ci/run does: apt-get install chromium)")
    try:
        from playwright import sync_api
    except ImportError as e:
        pytest.skip(f"the Python playwright package is not importable ({e})")
    return sync_api


@pytest.fixture
def jupyterlab(playwright_api, tmp_path):
    """A JupyterLab server rooted at the repo, on 127.0.0.1 with a random token; yields (base_url, token)."""
    token = secrets.token_hex(24)
    runtime_dir, settings_dir, workspaces_dir = (tmp_path / d for d in ("runtime", "settings", "workspaces"))
    for d in (runtime_dir, settings_dir, workspaces_dir, tmp_path / "checkpoints", tmp_path / "config"):
        d.mkdir()
    _write_lab_settings(settings_dir)
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(runtime_dir), JUPYTER_CONFIG_DIR=str(tmp_path / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(settings_dir), JUPYTERLAB_WORKSPACES_DIR=str(workspaces_dir),
               MPLBACKEND="Agg", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               PYTHONDONTWRITEBYTECODE="1")
    port = _free_port()
    cmd = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser",
        "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=20",  # if another worker grabbed the port meanwhile; the real port is read back
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO}",
        f"--LabApp.user_settings_dir={settings_dir}",
        f"--LabApp.workspaces_dir={workspaces_dir}",
        f"--FileCheckpoints.root_dir={tmp_path / 'checkpoints'}",  # no .ipynb_checkpoints in the repo
        "--LabApp.news_url=None",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--LabApp.extension_manager=readonly",
        "--ServerApp.terminals_enabled=False",
    ] + (["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])  # CI containers run as root
    log_path = tmp_path / "jupyterlab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        base_url = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with code {proc.returncode} before answering; log:\n"
                            + log_path.read_text(errors="replace")[-4000:])
            info = _server_info(runtime_dir, proc.pid)
            if info:
                base_url = f"http://127.0.0.1:{info['port']}"
                try:
                    with urllib.request.urlopen(f"{base_url}/api/status?token={token}", timeout=5) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(0.25)
        else:
            pytest.fail(f"JupyterLab did not answer /api/status within {SERVER_START_TIMEOUT} s; log:\n"
                        + log_path.read_text(errors="replace")[-4000:])
        yield base_url, token
    finally:
        _stop(proc)
        print(f"[browser test] JupyterLab log tail:\n{log_path.read_text(errors='replace')[-1500:]}")


def _parse_total(text: str) -> float:
    """Bytes from the calculator's line '... total 1.23 MiB = params ...'."""
    m = re.search(r"total\s+([\d.,]+)\s*(TiB|GiB|MiB|KiB|B)\b", text)
    assert m, f"no 'total <number> <unit>' in the calculator's printed line: {text!r}"
    scale = {"B": 1, "KiB": 2 ** 10, "MiB": 2 ** 20, "GiB": 2 ** 30, "TiB": 2 ** 40}[m.group(2)]
    return float(m.group(1).replace(",", "")) * scale


def file_changing_requests(requests: list[tuple[str, str]], rel: str) -> list[str]:
    """The requests among (method, url) that would change the notebook's file through the contents API.

    A save is a PUT of the notebook's contents; PATCH renames it, DELETE deletes it, and a POST to
    .../checkpoints/<id> restores a checkpoint over it. A POST to .../checkpoints (no id) only *creates*
    a checkpoint, a copy kept elsewhere (here in a temporary folder): JupyterLab may do that while it
    opens or runs a notebook, and the notebook's bytes stay the same, so it is allowed.
    """
    notebook_path = f"/api/contents/{rel}"
    changing = []
    for method, url in requests:
        path = urllib.parse.unquote(urllib.parse.urlsplit(url).path).rstrip("/")
        saves_renames_deletes = path.endswith(notebook_path) and method in ("PUT", "PATCH", "DELETE")
        restores = method == "POST" and f"{notebook_path}/checkpoints/" in path
        if saves_renames_deletes or restores:
            changing.append(f"{method} {path}")
    return changing


def test_file_changing_requests_allows_checkpoint_creation_only():
    rel = "notebooks/03_where_memory_goes.ipynb"
    base = "http://127.0.0.1:8888/lab/api/contents/"
    requests = [("POST", base + "notebooks/03_where_memory_goes.ipynb/checkpoints"),      # create: allowed
                ("POST", base + "notebooks%2F03_where_memory_goes.ipynb/checkpoints/"),   # create: allowed
                ("PUT", base + "notebooks/03_where_memory_goes.ipynb"),                   # save
                ("PATCH", base + "notebooks%2F03_where_memory_goes.ipynb"),               # rename
                ("POST", base + "notebooks/03_where_memory_goes.ipynb/checkpoints/abc"),  # restore
                ("PUT", base + "notebooks/other.ipynb")]                                   # another file
    assert file_changing_requests(requests, rel) == [
        "PUT /lab/api/contents/notebooks/03_where_memory_goes.ipynb",
        "PATCH /lab/api/contents/notebooks/03_where_memory_goes.ipynb",
        "POST /lab/api/contents/notebooks/03_where_memory_goes.ipynb/checkpoints/abc"]


@pytest.mark.parametrize("notebook", [notebook_under_test()], ids=lambda p: p.name)
def test_calculator_slider_updates_plot_and_total(notebook: Path, playwright_api, jupyterlab):
    PlaywrightError, sync_playwright = playwright_api.Error, playwright_api.sync_playwright
    assert notebook.exists(), f"notebook under test {notebook} does not exist"
    rel = notebook.relative_to(REPO).as_posix()
    print(f"[browser test] notebook under test: {rel}")
    original_bytes = notebook.read_bytes()
    checkpoints = notebook.parent / ".ipynb_checkpoints"
    had_checkpoints = checkpoints.exists()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / ("notebook03_after_slider.png" if notebook == NOTEBOOK_03
                              else f"{notebook.stem}_after_slider.png")
    base_url, token = jupyterlab
    contents_requests: list[tuple[str, str]] = []   # (method, url) of every non-GET contents API request
    t0 = time.monotonic()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = None
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            page = context.new_page()
            # Every request to the contents API that is not a read is recorded; after the test, the ones
            # that would change the notebook's file (a save, rename, delete, checkpoint restore) fail it.
            page.on("request", lambda r: contents_requests.append((r.method, r.url.split("?")[0]))
                    if "/api/contents" in r.url and r.method != "GET" else None)
            page.set_default_timeout(120_000)

            def wait_for(what: str, fn, timeout_s: float, poll_s: float = 0.2, detail=None):
                """Poll fn() until it returns a truthy value; fail with `what` (and detail()) after timeout_s."""
                timeout_s = max(1.0, min(timeout_s, t0 + TEST_BUDGET - time.monotonic()))
                deadline = time.monotonic() + timeout_s
                last_exc = None
                while time.monotonic() < deadline:
                    try:
                        value = fn()
                        if value:
                            return value
                    except PlaywrightError as e:  # e.g. element re-rendered between two calls
                        last_exc = e
                    page.wait_for_timeout(poll_s * 1000)
                state = ""
                if detail is not None:
                    try:
                        state = f"; state: {detail()}"
                    except PlaywrightError as e:
                        state = f"; state unavailable: {e}"
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{state}"
                            + (f" (last error: {last_exc})" if last_exc else ""))

            page.goto(f"{base_url}/lab/tree/{rel}?token={token}", wait_until="domcontentloaded")
            notebook_panel = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first
            indicator = notebook_panel.locator(".jp-Notebook-ExecutionIndicator")

            # The toolbar's execution indicator says data-status="idle" even before a kernel exists
            # (the status bar then reads "No Kernel | Initializing"), so both must say idle.
            kernel_status = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\S \| \w+$"))

            def kernel_idle() -> bool:
                texts = [t.strip() for t in kernel_status.all_inner_texts()]
                return (indicator.count() == 1 and indicator.get_attribute("data-status") == "idle"
                        and any(t.endswith("| Idle") and not t.startswith("No Kernel") for t in texts))

            def kernel_state() -> str:
                return (f"execution indicator data-status={indicator.get_attribute('data-status') if indicator.count() else None!r}, "
                        f"status bar {kernel_status.all_inner_texts()!r}")

            wait_for("the kernel to be idle after opening (indicator data-status='idle' and status bar '| Idle')",
                     kernel_idle, KERNEL_IDLE_TIMEOUT, detail=kernel_state)
            t_open = time.monotonic() - t0

            # A saved notebook may already show [1]..[n] prompts, exactly what a fresh run leaves, so
            # "every prompt is [n]:" alone does not prove the run happened: an in-page MutationObserver
            # records whether the run visibly started (a [*] prompt or a busy execution indicator).
            page.evaluate("""(panel) => {
                window.__labkitRunSeen = false;
                const check = () => {
                    const ind = panel.querySelector('.jp-Notebook-ExecutionIndicator');
                    if ((ind && ind.getAttribute('data-status') === 'busy') ||
                        [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]
                            .some(p => p.textContent.trim() === '[*]:')) window.__labkitRunSeen = true;
                };
                new MutationObserver(check).observe(panel, {subtree: true, childList: true,
                    characterData: true, attributes: true, attributeFilter: ['data-status']});
            }""", notebook_panel.element_handle())

            # Run → Run All Cells, from the menu bar.
            page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
            page.locator(".lm-Menu-item:not(.lm-mod-disabled) .lm-Menu-itemLabel",
                         has_text=re.compile(r"^Run All Cells$")).click()
            prompts = notebook_panel.locator(".jp-CodeCell .jp-InputArea-prompt")
            errors = notebook_panel.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')

            def raised() -> list[str]:
                return [t for t in errors.all_inner_texts()
                        if "Traceback" in t or re.search(r"^\w*(Error|Exception)\b", t, re.MULTILINE)]

            def all_cells_ran() -> bool:
                if not page.evaluate("window.__labkitRunSeen"):
                    return False
                texts = [t.strip() for t in prompts.all_inner_texts()]
                if "[*]:" in texts or not kernel_idle():  # a queued or running cell shows [*]
                    return False
                if raised():  # Run All stops at an error (and unqueues the rest): fail now, not at the timeout
                    pytest.fail(f"running {rel} raised:\n" + "\n---\n".join(raised())[:3000])
                return bool(texts) and all(re.fullmatch(r"\[\d+\]:", t) for t in texts)  # every code cell ran

            def run_state() -> str:
                texts = [t.strip() for t in prompts.all_inner_texts()]
                pending = [f"cell {i}: {t}" for i, t in enumerate(texts) if not re.fullmatch(r"\[\d+\]:", t)]
                return (f"run seen={page.evaluate('window.__labkitRunSeen')}, {len(texts)} code cells, "
                        f"not yet run: {pending[:8]}, {kernel_state()}")

            wait_for(f"all cells of {rel} to run (a [*] prompt seen, then every prompt [n]:, kernel idle)",
                     all_cells_ran, RUN_ALL_TIMEOUT, detail=run_state)
            t_run = time.monotonic() - t0
            assert not raised(), f"running {rel} raised:\n" + "\n---\n".join(raised())[:3000]

            # The calculator: the first live widget box with a "layers" slider and an Output printing a total.
            layers = notebook_panel.locator(".widget-slider", has=page.locator(".widget-label", has_text=re.compile(r"^layers$"))).first
            output = notebook_panel.locator(".widget-output", has_text="total").first
            wait_for("the calculator's 'layers' slider and its Output ('total' text + PNG)",
                     lambda: layers.is_visible() and output.locator("img").count() >= 1, 30)
            total_line = output.locator(".jp-OutputArea-output", has_text="total").first

            def snapshot():
                return (total_line.inner_text().strip(), output.locator("img").first.get_attribute("src"),
                        layers.locator(".widget-readout").inner_text().strip())

            text_before, src_before, readout_before = snapshot()
            assert src_before and src_before.startswith("data:image/png"), f"unexpected plot src: {str(src_before)[:80]}"

            layers.scroll_into_view_if_needed()
            handle = layers.locator(".noUi-handle").first
            handle.focus()
            readout = layers.locator(".widget-readout")
            for step in range(1, SLIDER_STEPS + 1):
                handle.press("ArrowRight")
                wanted = str(int(readout_before) + step)
                wait_for(f"the 'layers' readout to show {wanted} after ArrowRight",
                         lambda wanted=wanted: readout.inner_text().strip() == wanted, SLIDER_TIMEOUT,
                         detail=lambda: f"readout {readout.inner_text().strip()!r}")
            expected_readout = str(int(readout_before) + SLIDER_STEPS)

            def moved():
                text, src, readout = snapshot()
                return (readout == expected_readout and text != text_before and src and src != src_before
                        and kernel_idle())

            def slider_state() -> str:
                text, src, readout = snapshot()
                return (f"layers readout {readout!r}, text changed={text != text_before}, "
                        f"plot changed={src != src_before}, {kernel_state()}")

            wait_for(f"the 'layers' readout to go {readout_before} → {expected_readout} and the printed total "
                     "and the plot to change (kernel idle)", moved, SLIDER_TIMEOUT, detail=slider_state)

            # Each key press triggers a redraw; the last one may still be on its way. Settled = the kernel
            # is idle and the text and plot have not changed for SETTLE_S seconds.
            seen = {"snap": None, "since": 0.0}

            def settled() -> bool:
                snap = snapshot()
                now = time.monotonic()
                if snap != seen["snap"] or not kernel_idle():
                    seen.update(snap=snap, since=now)
                    return False
                return now - seen["since"] >= SETTLE_S

            wait_for(f"the calculator's output to stay unchanged for {SETTLE_S} s with the kernel idle",
                     settled, SLIDER_TIMEOUT, poll_s=0.25, detail=slider_state)
            text_after, src_after, readout_after = snapshot()
            t_slider = time.monotonic() - t0

            output.scroll_into_view_if_needed()
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"[browser test] screenshot: {screenshot.relative_to(REPO)}")
            print(f"[browser test] before: layers={readout_before}: {text_before}")
            print(f"[browser test] after:  layers={readout_after}: {text_after}")
            print(f"[browser test] timings: opened+idle {t_open:.1f} s, run all {t_run:.1f} s, "
                  f"slider {t_slider:.1f} s")

            assert readout_after == expected_readout
            assert text_after != text_before, "the printed total did not change after moving the slider"
            assert src_after != src_before, "the plot (the Output's PNG) did not change after moving the slider"
            assert _parse_total(text_after) > _parse_total(text_before), (
                f"more layers should need more memory: {text_before!r} → {text_after!r}")
        except BaseException:
            if page is not None:
                try:
                    page.screenshot(path=str(ARTIFACTS / f"{notebook.stem}_FAILED.png"), full_page=True)
                    (ARTIFACTS / f"{notebook.stem}_FAILED.html").write_text(page.content())
                except Exception:  # noqa: BLE001, S110 - best effort
                    pass
            raise
        finally:
            browser.close()

    print(f"[browser test] contents API requests other than reads: {contents_requests}")
    changing = file_changing_requests(contents_requests, rel)
    assert not changing, f"the browser session asked to change {rel} (save, rename, delete or restore): {changing}"
    assert notebook.read_bytes() == original_bytes, (
        f"{rel} changed during the test, though the browser sent no save request "
        "(was it edited by someone else meanwhile?)")
    assert had_checkpoints or not checkpoints.exists(), f"JupyterLab wrote {checkpoints} into the repo"
