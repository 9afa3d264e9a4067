"""Shipped models: verified by sha256, refused when damaged, and as good as their manifest says."""

import json

import pytest
import torch

from lesson_lib import manifest, pretrained
from lesson_lib.data import load_mnist
from lesson_lib.guidance import cfg
from lesson_lib.metrics import accuracy, predict
from lesson_lib.samplers import ddim_sample
from lesson_lib.schedules import NoiseSchedule

SHIPPED = ["mnist", "mnist_classifier", "mnist_fast"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_in_eval_mode_with_its_manifest(name):
    loaded = pretrained.load(name)
    assert not loaded.model.training
    info = loaded.info
    assert info.recipe == name and info.steps > 0 and info.command.startswith("python -m")
    assert info.file_sha256 == manifest.sha256(manifest.WEIGHTS / info.file)
    assert (loaded.schedule is None) == (name == "mnist_classifier")


def test_all_shipped_weights_fit_the_size_budget():
    total = sum(p.stat().st_size for p in manifest.WEIGHTS.iterdir())
    assert total <= 25 * 2**20, f"shipped weights take {total / 2**20:.1f} MB, more than 25 MB"


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="mnist_classifier") as err:
        pretrained.load("cifar")
    assert "'cifar'" in str(err.value)


def test_damaged_file_is_refused_naming_file_and_checksum(weights_copy):
    path = weights_copy / manifest.read_entry("mnist_classifier").file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256") as err:
        pretrained.load("mnist_classifier")
    assert path.name in str(err.value)
    assert manifest.read_entry("mnist_classifier").file_sha256 in str(err.value)


def test_tampered_manifest_checksum_is_refused(weights_copy):
    entries = json.loads((weights_copy / "manifest.json").read_text())
    entries["mnist"]["file_sha256"] = "0" * 64
    (weights_copy / "manifest.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="damaged or was changed"):
        pretrained.load("mnist")


@pytest.mark.slow
def test_shipped_classifier_reads_held_out_digits():
    images, labels = load_mnist("heldout", source="bundled")
    assert accuracy(pretrained.load("mnist_classifier").model, images, labels) >= 0.97


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist", "mnist_fast"])  # two hours; 30 minutes by the clock
def test_shipped_model_draws_the_asked_digits(name):
    shipped, classifier = pretrained.load(name), pretrained.load("mnist_classifier").model
    labels = torch.arange(10).repeat(2)
    x_T = torch.randn(20, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    x = ddim_sample(cfg(shipped.model, 3.0), shipped.schedule, x_T, 20, y=labels)
    assert (predict(classifier, x.clamp(-1, 1)) == labels).double().mean() >= 0.9


def test_history_of_a_model_without_one_is_a_clear_error():
    with pytest.raises(ValueError, match="no history"):
        pretrained.history("mnist_classifier")


def test_a_run_folder_loads_like_a_shipped_model(tmp_path):
    from lesson_lib.train import main

    out = tmp_path / "run"
    main(["--config", "mnist_tiny", "--steps", "3", "--out", str(out), "--device", "cpu",
          "--no-progress"])  # fmt: skip
    run = pretrained.load_run(out)
    assert not run.model.training and run.info.recipe == "mnist_tiny" and run.info.steps == 3
    trained = torch.load(out / "model.pt", weights_only=True)
    assert all(torch.equal(run.model.state_dict()[k], v) for k, v in trained.items())
    assert torch.equal(
        run.schedule.alpha_bar, pretrained.get_recipe("mnist_tiny").schedule.alpha_bar
    )


def test_a_folder_without_a_finished_run_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="info.json"):
        pretrained.load_run(tmp_path)


def test_an_unknown_manifest_field_is_named(weights_copy):
    entries = json.loads((weights_copy / "manifest.json").read_text())
    entries["mnist"]["colour"] = "blue"
    (weights_copy / "manifest.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="colour"):
        pretrained.load("mnist")


def test_recipe_configs_are_frozen():
    from dataclasses import FrozenInstanceError

    from lesson_lib.recipes import MNIST_UNET

    with pytest.raises(FrozenInstanceError):
        MNIST_UNET.base_channels = 8


def test_changing_a_loaded_schedule_does_not_change_the_next_load():
    first = pretrained.load("mnist")
    first.schedule.betas.fill_(0.5)
    first.schedule.alpha_bar.zero_()
    again = pretrained.load("mnist").schedule
    fresh = NoiseSchedule.linear(1000)  # the shipped model's schedule
    assert torch.equal(again.betas, fresh.betas) and torch.equal(again.alpha_bar, fresh.alpha_bar)


def test_a_run_recorded_without_its_files_says_so_when_loaded(tmp_path, weights_copy):
    from lesson_lib.train import main

    out = tmp_path / "run"
    main(["--config", "mnist_tiny", "--steps", "2", "--out", str(out), "--device", "cpu",
          "--no-progress"])  # fmt: skip
    before = sorted(p.name for p in weights_copy.iterdir())
    manifest.ship(out, files=False)
    assert sorted(p.name for p in weights_copy.iterdir()) == before  # nothing copied
    entry = manifest.read_entry("mnist_tiny")
    assert entry.steps == 2 and entry.file is None and entry.history is None
    with pytest.raises(ValueError, match="'mnist_tiny' has no file"):
        pretrained.load("mnist_tiny")
