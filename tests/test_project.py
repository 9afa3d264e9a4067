"""Project hygiene: the conda environment matches pyproject.toml; notebooks are saved clean."""

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        reqs += extra
    return {r.replace(" ", "") for r in reqs}


def _environment_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_environment_yml_lists_the_same_packages_as_pyproject():
    in_pyproject, in_env = _pyproject_requirements(), _environment_requirements()
    assert in_pyproject == in_env, (
        f"only in pyproject.toml: {sorted(in_pyproject - in_env)}; "
        f"only in environment.yml: {sorted(in_env - in_pyproject)}"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_saved_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    dirty = [
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} hold outputs; strip them (nbstripout) and save"


def test_the_notebook_stall_workaround_is_active():
    from jupyter_client.channels import AsyncZMQSocketChannel

    from tests import nbstall

    assert AsyncZMQSocketChannel.get_msg is nbstall._get_msg_in_slices


def _stack() -> list[str]:
    """The module order of lesson_lib/__init__.py's map, lowest layer first."""
    import lesson_lib

    lines = lesson_lib.__doc__.split("\n\n", 2)[2].splitlines()
    return [line.split()[0] for line in lines if line.strip()]


def _imports(path: Path) -> tuple[set[str], list[int]]:
    """The lesson_lib modules ``path`` imports ("" for its own package's submodules), and the
    lines where it imports one inside a function (a lazy import that can hide a circle)."""
    import ast

    depth = len(path.relative_to(ROOT / "lesson_lib").parts)  # 1 in lesson_lib, 2 in a package

    def lesson_module(node) -> str | None:
        if isinstance(node, ast.ImportFrom) and node.level:
            return (node.module or "").split(".")[0] if node.level == depth else ""
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lesson_lib."):
            return node.module.split(".")[1]
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
            a.name.startswith("lesson_lib") for a in node.names
        ):
            return ""
        return None

    tree = ast.parse(path.read_text())
    found = {m for n in ast.walk(tree) if (m := lesson_module(n)) is not None}
    nested = [
        n.lineno
        for f in ast.walk(tree)
        if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        for n in ast.walk(f)
        if lesson_module(n) is not None
    ]
    return found, nested


def test_the_module_map_lists_every_module_once():
    stack = _stack()
    on_disk = sorted(
        p.stem if p.name != "__init__.py" else p.parent.name
        for p in (ROOT / "lesson_lib").glob("*.py")
        if p.name != "__init__.py"
    ) + sorted(p.name for p in (ROOT / "lesson_lib").iterdir() if (p / "__init__.py").exists())
    assert sorted(stack) == sorted(on_disk)


def test_modules_import_only_from_lower_layers_and_never_inside_functions():
    stack = _stack()
    for path in sorted((ROOT / "lesson_lib").rglob("*.py")):
        package = path.parent.name if path.parent.name != "lesson_lib" else None
        name = package or path.stem
        if name == "__init__":
            continue
        found, nested = _imports(path)
        found -= {"", name}  # a package's own submodules
        above = [m for m in found if stack.index(m) > stack.index(name)]
        assert not above, f"{path.relative_to(ROOT)} imports {above}, a layer above it"
        assert not nested, f"{path.relative_to(ROOT)} imports inside a function (lines {nested})"


MODULES = sorted((ROOT / "lesson_lib").rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(ROOT)) for p in MODULES])
def test_every_module_fits_in_300_lines(path):
    assert len(path.read_text().splitlines()) <= 300


def _script(name: str):
    """scripts/NAME.py as a module: the one place its text for the docs is made."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _measure_notebooks():
    return _script("measure_notebooks")


def _notebook_times() -> dict:
    return json.loads((ROOT / "docs" / "notebook_times.json").read_text())


def test_every_notebook_has_a_measured_run_time():
    times = _notebook_times()
    course = [p.name for p in NOTEBOOKS if p.name[:2].isdigit()]
    missing = [name for name in course if name not in times["notebooks"]]
    assert not missing, (
        f"{missing} have no run time in docs/notebook_times.json: "
        "run python scripts/measure_notebooks.py NAME"
    )
    assert times["machine"]["cores"] and times["where"] and times["load_average_before"]
    failed = [name for name, entry in times["notebooks"].items() if not entry["ok"]]
    assert not failed, f"{failed} failed when measured: {times['notebooks']}"


def test_readme_run_times_are_the_measured_ones():
    measure, times = _measure_notebooks(), _notebook_times()
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if measure.ROW.match(line)]
    listed = {measure.ROW.match(line)["name"] for line in rows}
    assert listed >= set(times["notebooks"]), (
        f"README's course table lacks rows for {sorted(set(times['notebooks']) - listed)}"
    )
    assert measure.readme_with_times(readme, times) == readme, (
        "README.md's run times differ from docs/notebook_times.json: run "
        "python scripts/measure_notebooks.py --text-only"
    )


def test_the_run_times_note_names_each_date_the_notebooks_were_measured_on():
    # measuring one notebook again must not re-date the others' figures
    times = {**_notebook_times(), "measured": "2026-12-08"}
    times["notebooks"] = {"a.ipynb": {"measured": "2026-12-02"}, "b.ipynb": {}}
    note = _measure_notebooks().readme_note
    assert "measure_notebooks.py` between 2026-12-02 and 2026-12-08 (" in note(times)
    times["notebooks"]["a.ipynb"]["measured"] = "2026-12-08"
    assert "measure_notebooks.py` on 2026-12-08 (" in note(times)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_header_run_time_is_the_measured_one(path):
    measure, times = _measure_notebooks(), _notebook_times()
    header = json.loads(path.read_text())["cells"][0]["source"]
    header = "".join(header) if isinstance(header, list) else header
    assert measure.HEADER.search(header), f"{path.name}'s header has no '**Run time:**' line"
    entry = times["notebooks"][path.name]
    assert measure.header_with_time(header, entry, times) == header, (
        f"{path.name}: the header's run time differs from docs/notebook_times.json: run "
        "python scripts/measure_notebooks.py --text-only"
    )


def test_the_training_figures_in_the_docs_are_the_measured_ones():
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    training, profile = _script("benchmark_training"), _script("profile_training")
    assert training.tables(json.loads(training.RESULTS.read_text())) in docs, (
        "docs/benchmarks.md's training tables differ from docs/benchmarks_training.json: paste "
        "the tables of python scripts/benchmark_training.py --report"
    )
    for results in sorted((ROOT / "docs").glob("benchmarks_training_speed*.json")):  # each CPU's
        assert profile.markdown(json.loads(results.read_text())) in docs, (
            f"docs/benchmarks.md's step profile differs from docs/{results.name}: paste the "
            "tables python scripts/profile_training.py printed"
        )


def test_the_two_hour_comparison_in_the_docs_is_the_measured_one():
    docs = (ROOT / "docs" / "benchmarks.md").read_text()
    rows = {
        "`mnist` as shipped (float32, lr 1e-3)": "docs/benchmarks_models.json",
        "`bf16+minsnr5+lr2e-3` (the first `mnist_fast`), 120 minutes": (
            "docs/benchmarks_models_fast120.json"
        ),
        "`mnist_fast`'s recipe (half the width) planned for 120 minutes": (
            "docs/benchmarks_models_half120.json"
        ),
    }
    results = {label: json.loads((ROOT / f).read_text()) for label, f in rows.items()}
    assert _script("benchmark_models").comparison_markdown(results) in docs, (
        "docs/benchmarks.md's two-hour comparison differs from its results files: paste the "
        "table of python scripts/benchmark_models.py --compare "
        + " ".join(f"'{label}={f}'" for label, f in rows.items())
    )


# The benchmark run that measured mnist_fast as lesson_lib.recipes has it (notebook 04 prints it).
MNIST_FAST_RUN = "30 minutes, side by side 2026-12-07b"
# The recipes lesson_lib.recipes names as a benchmark's winners, and the candidate each was
# measured as (notebook 04 prints both rows as the recipe's).
WINNERS = {
    "mnist_live": "live+flow+noattn+lr4e-3",
    "mnist_fast": "fast+uncond0.7+ema0.998+lr3e-3+width16",
}


@pytest.mark.parametrize("name", WINNERS)
def test_a_winning_recipe_is_its_benchmarked_candidate(name):
    import torch

    from lesson_lib.recipes import RECIPES

    candidate = _script("benchmark_training").CANDIDATES[WINNERS[name]]()
    recipe = RECIPES[name]
    # the steps are what a --minutes run plans; every other setting is the candidate's
    assert replace(candidate.train, steps=recipe.train.steps) == recipe.train
    assert (candidate.schedule is None) == (recipe.schedule is None)
    if recipe.schedule is not None:
        assert torch.equal(candidate.schedule.alpha_bar, recipe.schedule.alpha_bar)
    models = []
    for r in (candidate, recipe):
        torch.manual_seed(0)
        models.append(r.make_model())
    ours, theirs = (m.state_dict() for m in models)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the same loss (label dropout, its weighting, its time draw) on the same batch and draws;
    # the weights jittered alike first: a fresh U-Net's zero output layer ignores the labels
    for m in models:
        torch.manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))
    images, labels = (t[:256] for t in recipe.load_data())  # some draws fall between p_uncond
    losses = [
        r.loss(m, [images, labels], torch.Generator().manual_seed(0))
        for r, m in zip((candidate, recipe), models, strict=True)
    ]
    assert torch.equal(*losses)


def test_mnist_fast_is_shipped_from_its_benchmark_run():
    from lesson_lib.manifest import read_entry
    from lesson_lib.recipes import RECIPES

    results = json.loads(_script("benchmark_training").RESULTS.read_text())
    run = results[MNIST_FAST_RUN]["mnist_fast"]
    assert RECIPES["mnist_fast"].train.steps == run["planned_steps"]
    # the shipped weights are that run's, and the manifest says what it measured of them
    entry = read_entry("mnist_fast")
    end = run["points"][-1]
    assert entry.steps == run["steps"] == end["step"] and entry.hardware == run["hardware"]
    assert entry.quality["ddim50_unguided"]["fd_ratio"] == end["unguided_fd_ratio"]
    assert entry.quality["ddim50_guided_w3"]["accuracy"] == end["guided_accuracy"]
