"""The training loop: the loss, EMA, atomic checkpoints, exact resume, and DDP under torchrun."""

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lesson_lib.atomic import save_atomic, save_json_atomic
from lesson_lib.guidance import NULL_LABEL
from lesson_lib.loop import CHECKPOINT, TrainConfig, train
from lesson_lib.losses import diffusion_loss
from lesson_lib.schedules import NoiseSchedule

ROOT = Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    """A few parameters and a label embedding: enough to check the loop, fast."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.embed = nn.Embedding(11, 1)

    def forward(self, x, t, y=None):
        out = self.conv(x) + t.float().view(-1, 1, 1, 1) / 1000
        return out if y is None else out + self.embed(y).view(-1, 1, 1, 1)


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    return [torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)]


SCHEDULE = NoiseSchedule.linear(100)


def _loss(model, batch, generator):
    return diffusion_loss(model, SCHEDULE, batch[0], batch[1], 0.1, generator)


def _config(**kw):
    return TrainConfig(
        **{"steps": 8, "batch_size": 8, "lr": 1e-2, "warmup": 2, "log_every": 1, **kw}
    )


def _run(out_dir=None, callback=None, **kw):
    torch.manual_seed(0)
    return train(
        Tiny(), _loss, _data(), _config(**kw), out_dir=out_dir, progress=False, callback=callback
    )


def test_diffusion_loss_is_the_mse_between_true_and_predicted_noise():
    x0 = torch.randn(4, 1, 8, 8)
    seen = {}

    def model(x_t, t, y=None):
        seen.update(x_t=x_t, t=t, y=y)
        return torch.zeros_like(x_t)

    g = torch.Generator().manual_seed(3)
    loss = diffusion_loss(model, SCHEDULE, x0, torch.arange(4), p_uncond=0.0, generator=g)
    # Recover the noise from x_t by inverting q_sample in float64: the loss is its mean square.
    ab = SCHEDULE.alpha_bar[seen["t"]].view(-1, 1, 1, 1)
    eps = (seen["x_t"].double() - ab.sqrt() * x0.double()) / (1 - ab).sqrt()
    assert torch.allclose(loss.double(), eps.square().mean(), rtol=1e-4)
    assert torch.equal(seen["y"], torch.arange(4))


def test_label_dropout_reaches_the_model():
    got = []

    def model(x_t, t, y=None):
        got.append(y)
        return torch.zeros_like(x_t)

    diffusion_loss(
        model, SCHEDULE, torch.zeros(1000, 1, 2, 2), torch.zeros(1000, dtype=torch.long), 0.3
    )
    frac = (got[0] == NULL_LABEL).double().mean().item()
    assert 0.25 < frac < 0.35


def test_training_lowers_the_loss():
    result = _run(steps=60)
    first, last = result.losses[0][1], sum(v for _, v in result.losses[-10:]) / 10
    assert last < first


def test_interrupted_run_resumes_exactly(tmp_path):
    straight = _run(tmp_path / "a")

    def stop_at_3(step, loss, ema):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", callback=stop_at_3)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["step"] == 3
    resumed = _run(tmp_path / "b")
    assert resumed.step == straight.step == 8
    for p, q in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert resumed.losses == straight.losses


def test_checkpoints_are_written_atomically(tmp_path):
    _run(tmp_path, checkpoint_every=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]  # no temporary left over
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 8 and set(ckpt) >= {"model", "ema", "optimizer", "generators"}


def test_save_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "x.pt"
    save_atomic({"a": torch.ones(1)}, path)
    with pytest.raises((AttributeError, pickle.PicklingError)):
        save_atomic({"a": lambda: 0}, path)  # a lambda cannot be pickled
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(1))
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_save_json_atomic_keeps_the_old_manifest_when_writing_fails(tmp_path):
    path = tmp_path / "manifest.json"
    save_json_atomic({"mnist": {"steps": 1}}, path)
    with pytest.raises(TypeError):  # json.dump has written '{"mnist": ' before it meets the set
        save_json_atomic({"mnist": {"steps": {1}}}, path)
    assert json.loads(path.read_text()) == {"mnist": {"steps": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]


def test_ema_trails_the_weights():
    result = _run(steps=20, ema_decay=0.5)
    assert result.model.training is False
    assert all(not p.requires_grad for p in result.model.parameters())


@pytest.mark.parametrize(
    "field, value",
    [("steps", 0), ("batch_size", 0), ("lr", 0.0), ("ema_decay", 1.0), ("warmup", -1)],
)
def test_bad_config_names_the_field(field, value):
    with pytest.raises((ValueError, TypeError), match=field):
        _config(**{field: value})


def test_bad_data_is_refused():
    with pytest.raises(ValueError, match="differ in length"):
        train(Tiny(), _loss, [torch.zeros(4, 1, 8, 8), torch.zeros(5, dtype=torch.long)], _config())


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_trains_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "lesson_lib.train", "--config", "mnist_tiny",
        "--out", str(tmp_path), "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    for steps in (4, 6):
        done = subprocess.run(
            [*cmd, "--steps", str(steps)], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
        assert ckpt["step"] == steps and ckpt["world"] == 2 and len(ckpt["generators"]) == 2
    assert (tmp_path / "model.pt").exists() and (tmp_path / "info.json").exists()
    # A single-process run refuses the two-rank checkpoint instead of resuming it wrongly.
    single = subprocess.run(
        [sys.executable, "-m", "lesson_lib.train", "--config", "mnist_tiny", "--out", str(tmp_path),
         "--steps", "8", "--device", "cpu", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode != 0 and "2 ranks" in single.stderr


@pytest.mark.slow
def test_the_training_command_checkpoints_on_sigterm_and_resumes(tmp_path):
    """`kill` on a run started in the background (SIGINT ignored) leaves a checkpoint behind."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "lesson_lib.train", "--config", "mnist_tiny", "--out",
           str(tmp_path), "--device", "cpu"]  # fmt: skip
    run = subprocess.Popen(
        [*cmd, "--steps", "100000"],
        env=env,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    seen = b""
    while b" 2/100000" not in seen:  # the progress bar: the loop is running
        chunk = os.read(run.stderr.fileno(), 4096)
        assert chunk, f"the run ended before training:\n{seen.decode()[-3000:]}"
        seen += chunk
    run.send_signal(signal.SIGTERM)
    run.communicate(timeout=120)
    assert run.returncode != 0
    step = torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"]
    assert 2 <= step < 100000
    done = subprocess.run(
        [*cmd, "--steps", str(step + 3), "--no-progress"], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == step + 3


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    """A private copy of lesson_lib/weights that the training command may ship into."""
    from lesson_lib import pretrained
    from lesson_lib import train as command

    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS, copy)
    for module in (pretrained, command):
        monkeypatch.setattr(module, "WEIGHTS", copy)
        monkeypatch.setattr(module, "MANIFEST", copy / "manifest.json")
    return copy


def test_the_training_command_ships_a_run_into_the_manifest(tmp_path, shipped_copy):
    from lesson_lib import pretrained
    from lesson_lib.train import main

    others = pretrained.manifest()
    out = tmp_path / "run"
    main(["--config", "mnist_tiny", "--steps", "25", "--out", str(out), "--device", "cpu",
          "--no-progress", "--ship"])  # fmt: skip

    entries = pretrained.manifest()
    entry = entries.pop("mnist_tiny")
    assert entries == others  # the other models' entries are untouched
    assert entry["recipe"] == "mnist_tiny" and entry["steps"] == 25
    assert (
        entry["command"] == f"python -m lesson_lib.train --config mnist_tiny --steps 25 --out {out}"
    )
    assert entry["file_sha256"] == pretrained.sha256(out / "model.pt")
    assert entry["history_sha256"] == pretrained.sha256(out / "history.pt")
    assert pretrained.history("mnist_tiny")["steps"].tolist() == [25]
    trained = torch.load(out / "model.pt", weights_only=True)
    loaded = pretrained.load("mnist_tiny").model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)
