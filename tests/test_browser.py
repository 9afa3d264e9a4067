"""Every notebook in a real browser: JupyterLab driven through headless Chromium by Playwright.

For each notebook: open it, Run All, wait for the kernel to go idle and fail on any error output;
then move every slider once with the keyboard (arrow keys, several times) and once with a mouse
drag, and check the picture beside it changes each time. The time from key press to new picture
is measured in the page; the figures go to ``test-artifacts/browser/latency.json`` with a
screenshot of every widget (CI keeps the folder). Nbmake proves the notebooks execute; this proves
a learner's sliders answer.

The server runs on 127.0.0.1 with a random port and token, in a private temporary home, on copies
of the notebooks (nothing is written outside the temporary folder). Where Chromium or Playwright
is missing the tests are skipped with a message saying how to install them, unless
``LESSON_LIB_REQUIRE_BROWSER=1`` (set by ``.ci/run``), which turns the skip into a failure.
Chromium is found at ``LESSON_LIB_CHROMIUM`` (default ``/usr/bin/chromium``, Debian's package;
Playwright's own browser download is never used).
"""

from __future__ import annotations

import inspect
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROMIUM = Path(os.environ.get("LESSON_LIB_CHROMIUM", "/usr/bin/chromium"))
REQUIRED = os.environ.get("LESSON_LIB_REQUIRE_BROWSER") == "1"
RUN_ALL_TIMEOUT_S = 420  # per notebook; nbmake's budget is 300 s
KEY_PRESSES = 3  # keyboard moves per slider

CHROMIUM_ARGS = [
    "--no-sandbox",  # needed as root; the page is our own local server
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]

# Settings for the private JupyterLab: no news toast, no autosave, every cell rendered
# (windowing would leave off-screen widgets out of the page).
LAB_SETTINGS = {
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
}

PANEL = "window.jupyterapp.shell.currentWidget"
# Done when the kernel is idle and every code cell has run, or as soon as any cell failed.
RUN_DONE_JS = f"""() => {{
    const panel = {PANEL};
    const kernel = panel.sessionContext.session?.kernel;
    const cells = panel.content.model.toJSON().cells.filter(c => c.cell_type === "code");
    if (cells.some(c => (c.outputs || []).some(o => o.output_type === "error"))) return true;
    if (kernel?.status === "dead") return true;
    return kernel?.status === "idle" && cells.every(c => c.execution_count !== null);
}}"""
# For one widget: remember when a key goes down and when its picture's src next changes.
WATCH_JS = """(box) => {
    const img = box.querySelector("img");
    window.__watch = {keyAt: null, changedAt: null, src: img.src};
    document.addEventListener("keydown", () => { window.__watch.keyAt = performance.now(); },
                              {capture: true, once: true});
    new MutationObserver((_, observer) => {
        if (img.src !== window.__watch.src) {
            window.__watch.changedAt = performance.now();
            observer.disconnect();
        }
    }).observe(img, {attributes: true, attributeFilter: ["src"]});
}"""


def _missing_browser() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed: pip install -e '.[dev]'"
    if not CHROMIUM.exists():
        return (
            f"Chromium not found at {CHROMIUM}: install it (Debian/Ubuntu: sudo apt-get install "
            "chromium) or point LESSON_LIB_CHROMIUM at a Chromium or Chrome binary"
        )
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on copies of the notebooks, in a private home under ``root``."""

    def __init__(self, root: Path):
        self.root, self.port, self.token = root, _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        work = root / "notebooks"
        shutil.copytree(ROOT / "notebooks", work)
        (root / "docs").symlink_to(ROOT / "docs")  # the notebooks read ../docs as in the repo
        settings = root / "settings"
        for plugin, values in LAB_SETTINGS.items():
            path = settings / f"{plugin}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values))
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # inline, as a learner
        env.update(
            HOME=str(root / "home"),
            JUPYTER_CONFIG_DIR=str(root / "jupyter" / "config"),
            JUPYTER_DATA_DIR=str(root / "jupyter" / "data"),
            JUPYTER_RUNTIME_DIR=str(root / "jupyter" / "runtime"),
            IPYTHONDIR=str(root / "ipython"),
            MPLCONFIGDIR=str(root / "matplotlib"),
            OMP_NUM_THREADS="1",  # kernels on a busy 2-core machine: see tests/nbstall.py
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={work}",
            f"--IdentityProvider.token={self.token}",
            "--LabApp.news_url=None",
            "--LabApp.expose_app_in_browser=True",
            f"--LabApp.user_settings_dir={settings}",
            f"--LabApp.workspaces_dir={root / 'workspaces'}",
        ]
        if os.geteuid() == 0:
            cmd.append("--allow-root")
        self.log = open(root / "jupyterlab.log", "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"{self.url}/api/status?token={self.token}", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"JupyterLab did not start; its log:\n{self.log_text()}")

    def log_text(self) -> str:
        return (self.root / "jupyterlab.log").read_text()[-4000:]

    def stop(self) -> None:
        """SIGTERM the server (it shuts its kernels down), then kill whatever is left of it."""
        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for child in children:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        self.log.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    reason = _missing_browser()
    if reason:
        (pytest.fail if REQUIRED else pytest.skip)(reason)
    server = Lab(tmp_path_factory.mktemp("jupyterlab"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def latencies(request):
    """Per notebook, the key-press-to-picture times; written out and reported at the end."""
    found: dict[str, list[float]] = {}
    yield found
    summary = {
        name: {
            "moves": len(ms),
            "median_ms": round(statistics.median(ms), 1),
            "max_ms": round(max(ms), 1),
        }
        for name, ms in found.items()
        if ms
    }
    if not summary:
        return
    (ARTIFACTS / "latency.json").write_text(json.dumps(summary, indent=2) + "\n")
    plugins = request.config.pluginmanager
    report = plugins.get_plugin("terminalreporter")
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():  # as capsys.disabled
        report.write_line(
            "\nslider key press -> new picture in Chromium (target: median < 200 ms):"
        )
        for name, s in summary.items():
            report.write_line(
                f"  {name:30s} {s['moves']:2d} moves  median {s['median_ms']:6.1f} ms  "
                f"max {s['max_ms']:6.1f} ms"
            )


def _run_all(page, name: str) -> None:
    """Run every cell once the kernel is ready; fail on an error output or a timeout."""
    page.wait_for_function(
        f"window.jupyterapp && {PANEL} && {PANEL}.sessionContext", timeout=60_000
    )
    page.evaluate(
        f"async () => {{ await {PANEL}.context.ready; await {PANEL}.sessionContext.ready; }}"
    )
    page.wait_for_function(
        f"{PANEL}.sessionContext.session?.kernel?.status === 'idle'", timeout=60_000
    )
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function(RUN_DONE_JS, timeout=RUN_ALL_TIMEOUT_S * 1000, polling=500)
    status = page.evaluate(f"() => {PANEL}.sessionContext.session?.kernel?.status")
    assert status != "dead", f"{name}: the kernel died during Run All"
    cells = page.evaluate(f"() => {PANEL}.content.model.toJSON().cells")
    errors = [
        f"cell {i}: {o['ename']}: {o['evalue']}"
        for i, cell in enumerate(cells)
        for o in cell.get("outputs", [])
        if o["output_type"] == "error"
    ]
    assert not errors, f"{name} failed in the browser:\n" + "\n".join(errors)


def _picture_changes(page, box, move) -> float | None:
    """Do ``move()`` and wait for the widget's picture to change; return the key-press latency
    in ms (None for a mouse move, whose start the page does not see as a key)."""
    box.evaluate(WATCH_JS)
    move()
    page.wait_for_function("window.__watch.changedAt !== null", timeout=10_000, polling="raf")
    watch = page.evaluate("window.__watch")
    return None if watch["keyAt"] is None else watch["changedAt"] - watch["keyAt"]


def _settled_count(locator, timeout: float = 30) -> int:
    """How many elements match once widgets stop appearing (they render after the kernel idles)."""
    counts, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts.append(locator.count())
        if len(counts) >= 4 and counts[-1] > 0 and len(set(counts[-4:])) == 1:
            break
        time.sleep(0.25)
    return counts[-1]


def _position(slider) -> tuple[float, float, float]:
    """The slider's (min, value, max) as its handle tells assistive technology."""
    handle = slider.locator(".noUi-handle")
    return tuple(float(handle.get_attribute(f"aria-value{k}")) for k in ("min", "now", "max"))


def _drag_to_far_end(page, slider) -> None:
    """Drag the slider's handle with the mouse to the end of its track farther from it."""
    low, value, high = _position(slider)
    handle = slider.locator(".noUi-handle").bounding_box()
    track = slider.locator(".noUi-base").bounding_box()
    x = track["x"] + 2 if value - low > high - value else track["x"] + track["width"] - 2
    y = handle["y"] + handle["height"] / 2
    page.mouse.move(handle["x"] + handle["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(x, y, steps=8)
    page.mouse.up()


def _check_slider(page, slider, label: str) -> list[float]:
    """Move ``slider`` with the keyboard and with the mouse; each move must change its value and
    the picture beside it. Returns the key-press latencies in ms."""
    # The widget the slider belongs to: the nearest box that holds a picture.
    box = slider.locator("xpath=ancestor::div[contains(@class,'widget-box')][.//img][1]")
    slider.scroll_into_view_if_needed()
    readout = slider.locator(".widget-readout")
    found = []
    for _ in range(KEY_PRESSES):
        _, value, high = _position(slider)
        key = "ArrowRight" if value < high else "ArrowLeft"
        slider.locator(".noUi-handle").focus()
        before = readout.inner_text()
        found.append(_picture_changes(page, box, lambda key=key: page.keyboard.press(key)))
        assert readout.inner_text() != before, f"{label}: {key} did not move it"
    box.screenshot(path=ARTIFACTS / f"{label}.png")
    before = readout.inner_text()
    _picture_changes(page, box, lambda: _drag_to_far_end(page, slider))
    assert readout.inner_text() != before, f"{label}: the mouse drag did not move it"
    return found


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_sliders_in_browser(lab, browser, latencies, name):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    stem = name.removesuffix(".ipynb")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
        _run_all(page, name)
        sliders = page.locator(".jp-OutputArea .widget-slider")
        count = _settled_count(sliders)
        assert count > 0, f"{stem} shows no slider"
        found = latencies.setdefault(stem, [])
        for i in range(count):
            found += _check_slider(page, sliders.nth(i), f"{stem}-slider{i}")
    except Exception:
        page.screenshot(path=ARTIFACTS / f"{stem}-failure.png")
        raise
    finally:
        page.close()


# The source of the first code cell whose source starts with `start`, and that cell's text output.
CELL_OUTPUT_JS = f"""(start) => {{
    const cell = {PANEL}.content.model.toJSON().cells.find(c => [].concat(c.source).join("").startsWith(start));
    return (cell.outputs || []).map(o => [].concat(o.text || "").join("")).join("");
}}"""


def test_an_exercise_names_the_mistake_then_passes_in_browser(lab, browser):
    """Type a wrong q_sample into notebook 01's exercise cell, run it and its check: the hint of
    that mistake appears; type the reference: the check passes."""
    from lesson_lib.exercises import EXERCISES

    name = "01_forward_noising.ipynb"
    wrong = (
        "def q_sample(x0, t, eps, alpha_bar):\n"
        "    ab = alpha_bar[t].view(-1, *[1] * (x0.ndim - 1))\n"
        "    return (ab * x0 + (1 - ab) * eps).to(x0.dtype)\n"
    )
    right = inspect.getsource(EXERCISES["q_sample"].reference)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        page.goto(f"{lab.url}/lab/tree/{name}?reset&token={lab.token}")
        _run_all(page, name)
        cell = page.locator(".jp-CodeCell", has_text="def q_sample(")  # the exercise's stub
        for answer, expected in [
            (wrong, EXERCISES["q_sample"].mistakes[0].hint),
            (right, "✓ q_sample: correct"),
        ]:
            cell.locator(".cm-content").click()
            page.keyboard.press("Control+a")
            page.keyboard.insert_text(answer)  # as typed or pasted, without auto-indent
            page.keyboard.press("Shift+Enter")  # run it; the check cell below gets selected
            page.keyboard.press("Shift+Enter")  # run the check
            page.wait_for_function(
                f"(s) => ({CELL_OUTPUT_JS})('check(\"q_sample\"').includes(s)",
                arg=expected[:60],
                timeout=30_000,
            )
        page.screenshot(path=ARTIFACTS / "exercise-q_sample.png")
    except Exception:
        page.screenshot(path=ARTIFACTS / "exercise-failure.png")
        raise
    finally:
        page.close()
