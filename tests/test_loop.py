"""The training loop: learning rate, clipping, EMA, atomic checkpoints, exact resume, and DDP."""

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from lesson_lib.atomic import save_atomic, save_json_atomic
from lesson_lib.loop import CHECKPOINT, TrainConfig, _lr_at, plan_steps, train
from lesson_lib.losses import diffusion_loss
from lesson_lib.schedules import NoiseSchedule

ROOT = Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    """A few parameters, dropout and a label embedding: enough to check the loop, fast."""

    def __init__(self, dropout=0.0):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Embedding(11, 1)

    def forward(self, x, t, y=None):
        out = self.drop(self.conv(x)) + t.float().view(-1, 1, 1, 1) / 1000
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


def _run(out_dir=None, callback=None, dropout=0.0, **kw):
    torch.manual_seed(0)
    return train(
        Tiny(dropout), _loss, _data(), _config(**kw), out_dir, progress=False, callback=callback
    )


def _stop_at_3(step, loss, ema):
    if step == 3:
        raise KeyboardInterrupt


class Line(nn.Module):
    """Four float64 weights trained on the loss ``scale * w.sum()``, whose gradient is ``scale``
    everywhere: AdamW then moves each weight by exactly the learning rate (up to its eps)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(4, dtype=torch.float64))


def _train_line(scale=1.0, **kw):
    """The weights before each step and after the last, (steps + 1, 4); the EMA after each step,
    (steps, 4); and the result."""
    model, weights, emas = Line(), [], []

    def loss(net, batch, generator):
        weights.append(net.w.detach().clone())
        return scale * net.w.sum()

    def callback(step, loss, ema):
        emas.append(ema.w.clone())

    result = train(model, loss, [torch.zeros(1)], _config(**kw), progress=False, callback=callback)
    return torch.stack([*weights, model.w.detach()]), torch.stack(emas), result


def test_the_learning_rate_warms_up_linearly_then_decays_by_a_cosine():
    weights, _, _ = _train_line(lr=1.0, warmup=2, steps=6, grad_clip=100.0)
    c = math.cos(math.pi / 4)
    # warm-up (k + 1) / warmup for k = 0, 1; then 0.5 (1 + cos(pi (k - warmup) / (steps - warmup)))
    expected = torch.tensor([0.5, 1.0, 1.0, 0.5 * (1 + c), 0.5, 0.5 * (1 - c)], dtype=torch.float64)
    assert torch.allclose(weights[:-1, 0] - weights[1:, 0], expected, rtol=1e-6)


def test_the_optimiser_sees_the_clipped_gradient():
    norms = []
    hook = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: norms.append(opt.param_groups[0]["params"][0].grad.norm().item())
    )
    try:
        _train_line(scale=10.0, grad_clip=0.5)  # the gradient's norm is 10 * sqrt(4) = 20
    finally:
        hook.remove()
    assert norms == pytest.approx([0.5] * 8)


def test_training_lowers_the_loss():
    result = _run(steps=60)
    first, last = result.losses[0][1], sum(v for _, v in result.losses[-10:]) / 10
    assert last < first


def _assert_same_run(a, b):
    assert a.step == b.step == 8 and a.losses == b.losses
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_interrupted_run_resumes_exactly_and_says_so(tmp_path, capsys, dropout):
    straight = _run(tmp_path / "a", dropout=dropout)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", _stop_at_3, dropout=dropout)
    assert torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["step"] == 3
    assert "resumed" not in capsys.readouterr().err
    _assert_same_run(straight, _run(tmp_path / "b", dropout=dropout))
    assert capsys.readouterr().err == f"resumed from {tmp_path / 'b' / CHECKPOINT} at step 3 of 8\n"


def test_a_checkpoint_without_random_states_resumes_with_a_note(tmp_path, capsys):
    """As written before torch's global random states were saved: the loop's generator only."""
    straight = _run(tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "b", _stop_at_3)
    path = tmp_path / "b" / CHECKPOINT
    ckpt = torch.load(path, weights_only=True)
    ckpt["generators"] = [s["generator"] for s in ckpt.pop("random_states")]
    torch.save(ckpt, path)
    _assert_same_run(straight, _run(tmp_path / "b"))
    assert "exact only for a model without dropout" in capsys.readouterr().err


def test_checkpoints_are_written_atomically(tmp_path):
    _run(tmp_path, checkpoint_every=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]  # no temporary left over
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 8 and set(ckpt) >= {"model", "ema", "optimizer", "random_states"}


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


def test_ema_trails_the_weights_by_the_warmed_up_decay():
    weights, emas, result = _train_line(steps=20, ema_decay=0.6)
    ema = weights[0]
    for n in range(20):
        decay = min(0.6, (1 + n) / (10 + n))  # the warm-up reaches 0.6 at step 13
        ema = decay * ema + (1 - decay) * weights[n + 1]
        assert torch.allclose(emas[n], ema, rtol=0, atol=1e-14)
    assert torch.equal(result.model.w, emas[-1])
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


def test_the_training_command_says_it_resumed(tmp_path, capsys):
    from lesson_lib.train import main

    args = ["--config", "mnist_tiny", "--out", str(tmp_path), "--device", "cpu", "--no-progress"]
    main([*args, "--steps", "1"])
    assert "resumed" not in capsys.readouterr().err
    main([*args, "--steps", "2"])
    assert f"resumed from {tmp_path / CHECKPOINT} at step 1 of 2" in capsys.readouterr().err


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
        assert ckpt["step"] == steps and ckpt["world"] == 2 and len(ckpt["random_states"]) == 2
    assert done.stderr.count("resumed from") == 1  # the second run, rank 0 only
    assert (tmp_path / "model.pt").exists() and (tmp_path / "info.json").exists()
    # A single-process run refuses the two-rank checkpoint instead of resuming it wrongly.
    single = subprocess.run(
        [sys.executable, "-m", "lesson_lib.train", "--config", "mnist_tiny", "--out", str(tmp_path),
         "--steps", "8", "--device", "cpu", "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert single.returncode != 0 and "2 ranks" in single.stderr


@pytest.mark.slow
def test_torchrun_two_cpu_ranks_train_by_the_clock(tmp_path):
    """Each rank times its own steps and re-plans on its own clock; the ranks must still stop at
    the same step (rank 0's decisions, broadcast), or one would wait forever in DDP's all-reduce.
    The classifier: a recipe whose steps are cheap and that has no sample history."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         "-m", "lesson_lib.train", "--config", "mnist_classifier", "--out", str(tmp_path),
         "--device", "cpu", "--no-progress", "--minutes", "0.3"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("planned") == 1  # rank 0's plan, which both ranks follow
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    info = json.loads((tmp_path / "info.json").read_text())
    assert ckpt["world"] == 2 and ckpt["step"] == info["steps"]
    assert ckpt["config"]["steps"] == info["train_config"]["steps"]


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


def test_the_training_command_ships_a_run_into_the_manifest(tmp_path, weights_copy):
    from lesson_lib import manifest, pretrained
    from lesson_lib.train import main

    others = manifest.read_manifest()
    out = tmp_path / "run"
    main(["--config", "mnist_tiny", "--steps", "25", "--out", str(out), "--device", "cpu",
          "--no-progress", "--ship"])  # fmt: skip

    entries = manifest.read_manifest()
    entry = entries.pop("mnist_tiny")
    assert entries == others  # the other models' entries are untouched
    assert entry.recipe == "mnist_tiny" and entry.steps == 25
    assert entry.command == f"python -m lesson_lib.train --config mnist_tiny --steps 25 --out {out}"
    assert entry.file_sha256 == manifest.sha256(out / "model.pt")
    assert entry.history_sha256 == manifest.sha256(out / "history.pt")
    assert pretrained.history("mnist_tiny")["steps"].tolist() == [25]
    trained = torch.load(out / "model.pt", weights_only=True)
    loaded = pretrained.load("mnist_tiny").model.state_dict()
    assert loaded.keys() == trained.keys()
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


class Clock:
    """A stand-in for time.perf_counter that moves only when a training step runs."""

    def __init__(self, per_step):
        self.now, self.per_step = 0.0, per_step

    def __call__(self):
        return self.now

    def loss(self, model, batch, generator):
        self.now += self.per_step
        return _loss(model, batch, generator)


@pytest.fixture
def clock(monkeypatch):
    import lesson_lib.loop as loop

    clock = Clock(per_step=1.0)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=clock))
    return clock


def test_a_time_limit_stops_the_run_with_a_checkpoint_and_counts_resumed_seconds(
    tmp_path, clock, capsys
):
    torch.manual_seed(0)
    run = train(Tiny(), clock.loss, _data(), _config(steps=1000), tmp_path, progress=False,
                time_limit=3.5)  # fmt: skip
    # Checked before each step: after 4 steps 4 s have passed, more than 3.5.
    assert run.step == 4 and run.seconds == 4.0
    assert (
        "stopped at the time limit (4 s of training) at step 4 of 1000" in capsys.readouterr().err
    )
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert ckpt["step"] == 4 and ckpt["seconds"] == 4.0 and ckpt["losses"][-1][0] == 4
    # A resumed run counts the 4 s already spent: 3 more steps reach 7 s, past 6.5.
    again = train(Tiny(), clock.loss, _data(), _config(steps=1000), tmp_path, progress=False,
                  time_limit=6.5)  # fmt: skip
    assert again.step == 7 and again.seconds == 7.0
    # Past its limit already, a resumed run takes no step at all.
    assert train(Tiny(), clock.loss, _data(), _config(steps=1000), tmp_path, progress=False,
                 time_limit=6.5).step == 7  # fmt: skip


def test_a_time_limit_is_checked(clock):
    with pytest.raises(ValueError, match="time_limit"):
        train(Tiny(), clock.loss, _data(), _config(), progress=False, time_limit=0.0)
    with pytest.raises(ValueError, match="fit_to_time=True .* give one"):
        train(Tiny(), clock.loss, _data(), _config(), progress=False, fit_to_time=True)


@pytest.mark.parametrize("planned", [1000, 20])  # a plan 10x too long, and 5x too short
def test_fit_to_time_ends_the_schedule_on_time_whatever_the_plan(clock, planned):
    """Steps of 1 s and 100 s to spend: the plan's 1000 steps would stop at step 100 with the
    learning rate near its peak, its 20 would end after 20 s; re-planned, both fill the time."""
    config = _config(steps=planned, log_every=5, warmup=2)
    fixed = train(Tiny(), clock.loss, _data(), config, progress=False, time_limit=100.0)
    assert (fixed.step, fixed.config.steps) == (min(planned, 100), planned)
    fitted = train(Tiny(), clock.loss, _data(), config, progress=False, time_limit=100.0,
                   fit_to_time=True)  # fmt: skip
    # The schedule's end is the step the run ended at, inside the time, nearly all of it spent.
    assert fitted.step == fitted.config.steps and 95 <= fitted.step <= 100
    assert _lr_at(fitted.config, fitted.step - 1) < 0.01 * config.lr


def test_fit_to_time_resumes_with_its_last_re_plan(tmp_path, clock):
    def stop_at(step):
        def callback(at, loss, ema):
            if at == step:
                raise KeyboardInterrupt

        return callback

    config = _config(steps=1000, log_every=5, warmup=2)
    args = (clock.loss, _data(), config, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        train(Tiny(), *args, progress=False, callback=stop_at(40), time_limit=100.0,
              fit_to_time=True)  # fmt: skip
    replanned = torch.load(tmp_path / CHECKPOINT, weights_only=True)["config"]["steps"]
    assert 95 <= replanned <= 100  # re-planned from 1000 at the pace of 1 s a step
    # Stopped again at the resumed session's first logged step, before it re-plans anything:
    # the checkpoint holds the re-plan it resumed with, not the caller's 1000.
    with pytest.raises(KeyboardInterrupt):
        train(Tiny(), *args, progress=False, callback=stop_at(45), time_limit=100.0,
              fit_to_time=True)  # fmt: skip
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["config"]["steps"] == replanned
    done = train(Tiny(), *args, progress=False, time_limit=100.0, fit_to_time=True)
    assert done.step == done.config.steps and 95 <= done.step <= 100


def test_plan_steps_times_a_copy_and_leaves_the_model_and_random_state_alone(clock):
    clock.per_step = 0.5
    model = Tiny(dropout=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    steps, per_step = plan_steps(model, clock.loss, _data(), _config(), seconds=10.0)
    assert per_step == 0.5 and steps == 20
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew, and the state is restored
    with pytest.raises(ValueError, match="seconds"):
        plan_steps(model, clock.loss, _data(), _config(), seconds=-1.0)


def test_bf16_runs_the_forward_under_autocast_and_keeps_float32_weights():
    seen = []
    model = Tiny()
    model.conv.register_forward_hook(lambda mod, inputs, out: seen.append(out.dtype))
    train(model, _loss, _data(), _config(steps=2, bf16=True), progress=False)
    assert seen == [torch.bfloat16] * 2
    assert all(p.dtype == torch.float32 for p in model.parameters())
    train(model, _loss, _data(), _config(steps=1), progress=False)
    assert seen[-1] == torch.float32


@pytest.mark.parametrize("bf16_seconds", [2.0, 0.5])
def test_faster_precision_keeps_bf16_only_where_it_times_faster(clock, bf16_seconds):
    from lesson_lib.train import faster_precision

    def loss(model, batch, generator):  # a step under bf16 autocast takes bf16_seconds
        clock.now += bf16_seconds if torch.is_autocast_enabled("cpu") else 1.0
        return _loss(model, batch, generator)

    config, per_step, timed = faster_precision(Tiny(), loss, _data(), _config(bf16=True), "cpu")
    assert timed == {"bf16": bf16_seconds, "float32": 1.0}
    assert config.bf16 == (bf16_seconds < 1.0) and per_step == min(bf16_seconds, 1.0)
    assert config == _config(bf16=config.bf16)  # nothing else changed
    # A float32 config is timed as it is: bf16 is a speed lever only where the recipe allows it.
    config, per_step, timed = faster_precision(Tiny(), loss, _data(), _config(), "cpu")
    assert timed == {"float32": 1.0} and not config.bf16 and per_step == 1.0


def test_a_budget_trains_in_the_precision_its_plan_chose(tmp_path, monkeypatch, capsys):
    import lesson_lib.train as command

    def bf16_timed_faster(model, loss_fn, data, config, device):
        return replace(config, bf16=True), 0.01, {"bf16": 0.01, "float32": 0.02}

    monkeypatch.setattr(command, "faster_precision", bf16_timed_faster)
    command.main(["--config", "mnist_classifier", "--out", str(tmp_path), "--device", "cpu",
                  "--no-progress", "--minutes", "0.1"])  # fmt: skip
    assert "minutes in bf16 (per step, timed on cpu: bf16 0.010 s, float32 0.020 s)" in (
        capsys.readouterr().err
    )
    plan = json.loads((tmp_path / command.PLAN).read_text())
    info = json.loads((tmp_path / "info.json").read_text())
    assert plan["bf16"] and plan["seconds_per_step_timed"] == {"bf16": 0.01, "float32": 0.02}
    assert info["train_config"]["bf16"]  # the recipe's float32 classifier trained under autocast


def test_the_training_command_plans_a_budget_and_keeps_the_plan(tmp_path, capsys):
    from lesson_lib.train import PLAN, main

    # The classifier: a recipe whose steps are cheap and that has no sample history.
    args = ["--config", "mnist_classifier", "--out", str(tmp_path), "--device", "cpu",
            "--no-progress"]  # fmt: skip
    main([*args, "--minutes", "0.2"])
    plan = json.loads((tmp_path / PLAN).read_text())
    assert f"planned {plan['steps']} steps for 0.2 minutes" in capsys.readouterr().err
    info = json.loads((tmp_path / "info.json").read_text())
    assert info["minutes"] == 0.2
    # Its one command is the budget's: --steps N would run all N steps, not stop on time.
    command = "python -m lesson_lib.train --config mnist_classifier --minutes 0.2"
    assert info["command"] == f"{command} --out {tmp_path}"
    # The steps its schedule ended with: the plan as re-planned on the way (fit_to_time).
    ckpt = torch.load(tmp_path / CHECKPOINT, weights_only=True)
    assert info["train_config"]["steps"] == ckpt["config"]["steps"] >= info["steps"]
    main([*args, "--minutes", "0.2"])  # resumed: the same plan, not a new one
    assert "planned" not in capsys.readouterr().err
    with pytest.raises(ValueError, match="planned this run for 0.2 minutes"):
        main([*args, "--minutes", "1"])
    with pytest.raises(SystemExit):
        main([*args, "--minutes", "0"])
    assert "--minutes must be a positive number" in capsys.readouterr().err


def test_a_budget_too_short_for_the_history_is_a_clear_error(tmp_path):
    from lesson_lib.train import main

    with pytest.raises(ValueError, match="minutes=0.001 is too short for 'mnist_tiny'.*snapshots"):
        main(["--config", "mnist_tiny", "--out", str(tmp_path), "--device", "cpu",
              "--minutes", "0.001"])  # fmt: skip
