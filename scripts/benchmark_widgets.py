"""Measure how fast every slider in the notebooks answers: the kernel-side update time.

    python scripts/benchmark_widgets.py                 # all notebooks
    python scripts/benchmark_widgets.py notebooks/05_ddpm_vs_ddim.ipynb

Runs each notebook's cells in this process (IPython, matplotlib Agg), then finds every slider
it built and moves it over up to 12 of its values, timing the update its observers do (the
picture lookup and the redraw message). Also counts model calls during the moves: the rule is
none. Target: median under 0.1 s. Prints a table and writes docs/benchmarks_widgets.json.
"""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import ipywidgets as widgets  # noqa: E402
import nbformat  # noqa: E402
import torch  # noqa: E402
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

from lesson_lib.atomic import save_json_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SLIDERS = (widgets.IntSlider, widgets.FloatSlider, widgets.SelectionSlider)


def run_notebook(path: Path) -> float:
    """Execute a notebook's code cells in a fresh IPython namespace; return the seconds taken."""
    shell = InteractiveShell.instance()
    shell.reset(new_session=True)
    start = time.perf_counter()
    cwd = Path.cwd()
    try:
        os.chdir(path.parent)
        for cell in nbformat.read(path, as_version=4).cells:
            if cell.cell_type == "code":
                result = shell.run_cell(cell.source, silent=True)
                if not result.success:
                    raise RuntimeError(f"{path.name}: a cell failed: {result.error_in_exec!r}")
    finally:
        os.chdir(cwd)
    return time.perf_counter() - start


def values_of(slider) -> list:
    if isinstance(slider, widgets.SelectionSlider):
        return list(slider.options)
    if isinstance(slider, widgets.IntSlider):
        return list(range(slider.min, slider.max + 1, slider.step or 1))
    n = int(round((slider.max - slider.min) / slider.step)) + 1
    return [slider.min + i * slider.step for i in range(n)]


def time_sliders() -> tuple[list[float], int]:
    """Move every live slider over up to 12 values; return update times and the count of
    torch.nn.Module calls made meanwhile."""
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    handle = torch.nn.modules.module.register_module_forward_hook(count)
    times = []
    try:
        with warnings.catch_warnings():  # isinstance on some torch module objects warns
            warnings.simplefilter("ignore")
            sliders = [o for o in gc.get_objects() if isinstance(o, SLIDERS)]
        for slider in sliders:
            values = values_of(slider)
            picks = values[:: max(1, len(values) // 12)][:12]
            for value in picks[1:] + picks[:1]:
                start = time.perf_counter()
                slider.value = value
                times.append(time.perf_counter() - start)
    finally:
        handle.remove()
    return times, calls


def main() -> None:
    paths = [Path(p) for p in sys.argv[1:]] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    results = {}
    for path in paths:
        gc.collect()
        seconds = run_notebook(path.resolve())
        times, calls = time_sliders()
        results[path.name] = {
            "run_s": round(seconds, 1),
            "slider_moves": len(times),
            "median_update_s": statistics.median(times) if times else None,
            "max_update_s": max(times) if times else None,
            "model_calls_during_moves": calls,
        }
        r = results[path.name]
        print(
            f"{path.name:38s} run {r['run_s']:6.1f} s  moves {len(times):4d}  "
            f"median {1000 * (r['median_update_s'] or 0):6.2f} ms  "
            f"max {1000 * (r['max_update_s'] or 0):7.2f} ms  model calls {calls}"
        )
        widgets.Widget.close_all()
        InteractiveShell.instance().reset(new_session=True)
    out = ROOT / "docs" / "benchmarks_widgets.json"
    if not sys.argv[1:]:
        save_json_atomic(results, out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
