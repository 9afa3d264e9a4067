"""Measure every notebook's run time, top to bottom in a fresh kernel, as nbmake runs it.

    python scripts/measure_notebooks.py                 # every notebooks/NN_*.ipynb, then the text
    python scripts/measure_notebooks.py 05_ddpm_vs_ddim  # some of them (the others keep their row)
    python scripts/measure_notebooks.py --text-only     # rewrite the text from the JSON, no runs
    python scripts/measure_notebooks.py --out DIR/times.json --no-text   # elsewhere (GPU check)

Each notebook runs in a fresh kernel (nbclient, as nbmake does) with the working directory
``notebooks/``; the wall-clock seconds from kernel start to the last cell, the device each
notebook reports ("device: ...") and whether it ran clean go to ``docs/notebook_times.json``
(written atomically after every notebook, so an interrupted run keeps what it measured), with
the machine, the torch thread count and the load average before and after: on a shared machine
the load says how far the figures are from an idle run.

From that JSON, and only from it, the script then writes the run-time column of README.md's
course table and the "**Run time:**" line of every notebook header that has one
(``tests/test_project.py`` checks that both agree with the JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lesson_lib.atomic import save_json_atomic  # noqa: E402

NOTEBOOKS = ROOT / "notebooks"
JSON = ROOT / "docs" / "notebook_times.json"
README = ROOT / "README.md"
HEADER = re.compile(r"^\*\*Run time:\*\*.*$", re.MULTILINE)  # the line a notebook header holds
ROW = re.compile(
    r"^(\|\s*\[[^\]]*\]\(notebooks/(?P<name>[0-9][0-9]_[^)]*\.ipynb)\).*\|)\s*(?P<time>[^|]*?)\s*\|\s*$"
)
NOTE_START, NOTE_END = (
    "<!-- notebook-times: written by scripts/measure_notebooks.py -->",
    "<!-- /notebook-times -->",
)


def notebooks() -> list[Path]:
    """Every course notebook present now: notebooks/NN_*.ipynb, in order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset (torch's default)"),
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def run_one(path: Path, timeout: int) -> dict:
    """Execute ``path`` in a fresh kernel; seconds, the device it printed, and any error."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as err:  # a failing cell: record it, keep measuring the others
        plain = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # without the terminal colours
        lines = [line.strip() for line in plain.splitlines() if line.strip()]
        failing = [line for line in lines if line.startswith("---->")]  # the failing line
        error = " | ".join([*failing[-1:], lines[-1]])[:400] if lines else type(err).__name__
    seconds = time.perf_counter() - start
    devices = set()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("device: "):
                    devices.add(line.removeprefix("device: ").strip())
    return {
        "seconds": round(seconds, 1),
        "ok": error is None,
        "error": error,
        "device": ", ".join(sorted(devices)) or None,
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def format_seconds(entry: dict) -> str:
    """The README cell and the header's figure: '41 s', or 'failed after 12 s'."""
    seconds = f"{entry['seconds']:.0f} s"
    return seconds if entry["ok"] else f"failed after {seconds}"


def header_line(entry: dict, times: dict) -> str:
    where = times["where"]
    return (
        f"**Run time:** {format_seconds(entry)} top to bottom, measured by "
        f"`scripts/measure_notebooks.py` on {where} (`docs/notebook_times.json`)."
    )


def readme_note(times: dict) -> str:
    m = times["machine"]
    # a run of some notebooks leaves the others' dates as they were
    dates = sorted({e.get("measured", times["measured"]) for e in times["notebooks"].values()})
    when = f"on {dates[0]}" if len(dates) == 1 else f"between {dates[0]} and {dates[-1]}"
    return (
        f"Run times: one run of each notebook top to bottom in a fresh kernel, measured by "
        f"`python scripts/measure_notebooks.py` {when} ({m['cpu']}, {m['cores']} cores, torch "
        f"{m['torch']} with {m['torch_threads']} threads, OMP_NUM_THREADS "
        f"{m['OMP_NUM_THREADS']}). {times['where'][0].upper() + times['where'][1:]}."
    )


def readme_with_times(text: str, times: dict) -> str:
    """README.md with every course-table row's last cell, and the note under the table, from
    ``times``. Rows of notebooks the JSON does not hold are left as they are."""
    lines = text.splitlines()
    out = []
    for line in lines:
        match = ROW.match(line)
        if match and match["name"] in times["notebooks"]:
            line = f"{match[1]} {format_seconds(times['notebooks'][match['name']])} |"
        out.append(line)
    text = "\n".join(out) + ("\n" if text.endswith("\n") else "")
    note = f"{NOTE_START}\n{readme_note(times)}\n{NOTE_END}"
    if NOTE_START in text:
        text = re.sub(re.escape(NOTE_START) + r".*?" + re.escape(NOTE_END), note, text, flags=re.S)
    return text


def header_with_time(source: str, entry: dict, times: dict) -> str:
    return HEADER.sub(header_line(entry, times), source, count=1)


def write_text(times: dict) -> None:
    """README's column and the notebook headers, from ``times``."""
    import nbformat

    README.write_text(readme_with_times(README.read_text(), times))
    for path in notebooks():
        entry = times["notebooks"].get(path.name)
        if entry is None:
            continue
        nb = nbformat.read(path, as_version=4)
        first = nb.cells[0]
        new = header_with_time(first.source, entry, times)
        if new != first.source:
            first.source = new
            nbformat.write(nb, path)
            print(f"header of {path.name}: {format_seconds(entry)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("names", nargs="*", help="notebooks to measure (default: all)")
    parser.add_argument("--out", type=Path, default=JSON, help="the JSON (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    parser.add_argument("--text-only", action="store_true", help="no runs: rewrite the text")
    parser.add_argument("--no-text", action="store_true", help="leave README and headers alone")
    parser.add_argument(
        "--where",
        default=None,
        help="how to describe the machine in the text (default: from the load average)",
    )
    args = parser.parse_args()

    times = json.loads(args.out.read_text()) if args.out.exists() else {"notebooks": {}}
    if not args.text_only:
        paths = notebooks()
        if args.names:
            paths = [p for p in paths if p.stem in args.names or p.name in args.names]
        for entry in times["notebooks"].values():  # each keeps the date it was measured on
            entry.setdefault("measured", times["measured"])
        times["machine"] = machine()
        times["measured"] = datetime.date.today().isoformat()
        times["load_average_before"] = load_average()  # 1, 5 and 15 minutes
        times["how"] = (
            "each notebook once, top to bottom in a fresh kernel (nbclient, as nbmake), working "
            "directory notebooks/; seconds from kernel start to the end of the last cell"
        )
        for path in paths:
            print(f"{path.name} ...", flush=True)
            before = load_average()
            times["notebooks"][path.name] = entry = run_one(path, args.timeout)
            entry["measured"] = times["measured"]
            entry["load_average_before"] = before
            entry["load_average_after"] = load_average()
            print(
                f"  {format_seconds(entry)} on {entry['device']}  load {entry['load_average_after']}"
            )
            times["notebooks"] = dict(sorted(times["notebooks"].items()))
            save_json_atomic(times, args.out)
        times["load_average_after"] = load_average()
        loads = [times["load_average_before"][0], times["load_average_after"][0]]
        for entry in times["notebooks"].values():  # every notebook's, measured now or before
            loads += [entry.get("load_average_before", [0])[0], entry["load_average_after"][0]]
        busy = max(loads)
        cores = times["machine"]["cores"]
        # A notebook's own threads load every core: only a load above the core count is others'.
        times["where"] = args.where or (
            f"a busy shared {cores}-core CPU (1-minute load average up to {busy:.1f} while measuring)"
            if busy > cores
            else f"an otherwise idle {cores}-core CPU (1-minute load average up to {busy:.1f}, "
            "the notebooks' own)"
        )
        if times["machine"]["cuda"]:
            times["where"] = args.where or f"one {times['machine']['cuda']} GPU"
        save_json_atomic(times, args.out)
    if not args.no_text:
        write_text(times)


if __name__ == "__main__":
    main()
