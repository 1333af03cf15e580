
import pytest
import torch

from cifartune.config import ScheduleConfig, apply
from cifartune.data import limit
from cifartune.errors import CheckpointError, DivergenceError
from cifartune.train import _device, train
from cifartune.train.checkpoint import load_checkpoint, save_checkpoint
from cifartune.train.optim import lr_factor
from cifartune.train.run import evaluate_model


def test_trains_reports_epochs_and_learns(tiny_config, small):
    cfg = apply(tiny_config, {"epochs": 3, "val_size": 0})
    reports = []
    result = train(cfg, small, on_epoch=reports.append)
    assert [r.epoch for r in reports] == [1, 2, 3] and result.history == reports
    assert reports[-1].train_loss < reports[0].train_loss
    assert reports[-1].eval_split == "test" and reports[-1].eval_accuracy > 0.2  # chance: 0.1
    assert result.images_seen == 3 * (len(small.train) // 100) * 100
    assert result.train_seconds > 0 and result.images_per_second > 0


def test_seeded_runs_are_reproducible(tiny_config, small):
    a = train(tiny_config, small).model.state_dict()
    b = train(tiny_config, small).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train(apply(tiny_config, {"seed": 1}), small).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("optimizer, schedule", [
    ("muon", "linear"), ("sgd", "cosine"), ("adam", "exponential"), ("adamw", "constant")])
def test_every_optimizer_trains(tiny_config, small, optimizer, schedule):
    lr = {"muon": 0.24, "sgd": 0.05, "adam": 1e-3, "adamw": 1e-3}[optimizer]
    cfg = apply(tiny_config, {"optimizer": optimizer, "schedule": schedule, "lr": lr,
                              "l2": 5e-4 if optimizer == "adam" else 0.0,
                              "warmup_epochs": 0.2, "epochs": 3})
    losses = [r.train_loss for r in train(cfg, limit(small, train=300)).history]
    assert losses[-1] < losses[0], losses  # it learns (3 epochs of 3 steps)


def test_resnet_with_dropout_and_affine_augmentation(tiny_config, small):
    cfg = apply(tiny_config, {"arch": "resnet", "depth": 2, "width": 8, "units": 32,
                              "dropout": 0.3, "rotate": 15.0, "shift": 0.1, "zoom": 0.1,
                              "cutout": 8, "optimizer": "adam", "lr": 1e-3, "epochs": 3})
    result = train(cfg, small)
    drops = [m.p for m in result.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(p == 0.3 for p in drops)
    losses = [r.train_loss for r in result.history]
    assert losses[-1] < losses[0], losses


def test_divergence_raises_a_typed_error(tiny_config, small):
    cfg = apply(tiny_config, {"optimizer": "sgd", "lr": 1e12, "momentum": 0.9,
                              "precision": "fp32", "label_smoothing": 0.0})
    with pytest.raises(DivergenceError) as e:
        train(cfg, small)
    assert e.value.step >= 0 and "diverged" in str(e.value)


def test_reading_the_loss_once_per_epoch_trains_the_same_weights(tiny_config, small,
                                                                monkeypatch):
    """The divergence check reads the loss on the host only every few steps (a read stalls a
    GPU); how often must not change what is trained."""
    from cifartune.train import loop

    monkeypatch.setattr(loop, "DIVERGENCE_CHECK_STEPS", 1)
    every_step = train(apply(tiny_config, {"epochs": 2}), small).model.state_dict()
    monkeypatch.setattr(loop, "DIVERGENCE_CHECK_STEPS", 10**9)  # at the epochs' ends only
    per_epoch = train(apply(tiny_config, {"epochs": 2}), small).model.state_dict()
    assert all(torch.equal(every_step[k], per_epoch[k]) for k in every_step)


def test_divergence_is_caught_within_the_check_interval(tiny_config, small, monkeypatch):
    from cifartune.train import loop

    cfg = apply(tiny_config, {"optimizer": "sgd", "lr": 1e12, "momentum": 0.9,
                              "precision": "fp32", "label_smoothing": 0.0, "epochs": 3})
    steps = {}
    for every in (1, 4, 10**9):
        monkeypatch.setattr(loop, "DIVERGENCE_CHECK_STEPS", every)
        with pytest.raises(DivergenceError) as e:
            train(cfg, small)
        steps[every] = e.value.step
    per_epoch = 1000 // 100
    assert steps[1] <= steps[4] < steps[1] + 4, steps  # caught within 4 steps
    assert steps[10**9] % per_epoch == per_epoch - 1, steps  # at the end of an epoch
    assert steps[10**9] >= steps[1]


def test_pruning_exception_from_the_callback_stops_training(tiny_config, small):
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(r):
        seen.append(r.epoch)
        raise Stop

    with pytest.raises(Stop):
        train(apply(tiny_config, {"epochs": 3}), small, on_epoch=on_epoch)
    assert seen == [1]


def test_lr_schedules():
    s = ScheduleConfig(schedule="linear", warmup_epochs=1, final_lr=0.0)
    assert lr_factor(0, 100, 10, s) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, s) == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, s) < 0.02
    cos = ScheduleConfig(schedule="cosine", final_lr=0.1)
    assert lr_factor(0, 100, 10, cos) == pytest.approx(1.0)
    assert lr_factor(50, 100, 10, cos) == pytest.approx(0.55)
    exp = ScheduleConfig(schedule="exponential", decay_rate=0.5)
    assert lr_factor(20, 100, 10, exp) == pytest.approx(0.25)
    assert lr_factor(70, 100, 10, ScheduleConfig(schedule="constant")) == 1.0


def test_checkpoint_round_trip_gives_identical_predictions(tiny_config, small, tmp_path):
    result = train(tiny_config, small)
    path = tmp_path / "run" / "model.safetensors"
    save_checkpoint(path, result.model, result.config, small.classes)
    ckpt = load_checkpoint(path.parent)
    assert ckpt.config == result.config and ckpt.classes == small.classes
    before, logits_a = evaluate_model(result.model, small.test, small.classes, tiny_config,
                                      torch.device("cpu"))
    after, logits_b = evaluate_model(ckpt.model, small.test, small.classes, tiny_config,
                                     torch.device("cpu"))
    assert (logits_a.argmax(1) == logits_b.argmax(1)).all()
    assert before.accuracy == after.accuracy
    assert list(tmp_path.glob("run/*.tmp")) == []  # nothing half-written left behind


def test_tta_views_are_mirror_invariant(tiny_config, small):
    from cifartune.data.loader import to_device
    from cifartune.train import predict_logits

    model = train(tiny_config, small).model
    x, _ = to_device(small.test.subset(slice(0, 64)), torch.device("cpu"))
    a = predict_logits(model, x, tta=1, dtype=None)
    b = predict_logits(model, x.flip(-1), tta=1, dtype=None)
    assert torch.allclose(a, b, atol=1e-4)  # flip TTA sees both sides either way
    levels = [predict_logits(model, x, tta=level, dtype=None) for level in (0, 1, 2)]
    assert not torch.allclose(levels[0], levels[1]) and not torch.allclose(levels[1], levels[2])


def test_compiled_training_matches_eager(tiny_config, small, monkeypatch):
    cfg = apply(tiny_config, {"precision": "fp32"})
    eager = train(cfg, limit(small, train=300)).history[-1]
    compiled_models = []
    real_compile = torch.compile

    class Recording(torch.nn.Module):  # the compiled module, noting each call's mode
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.modes = inner, []

        def forward(self, x):
            self.modes.append("train" if self.training else "eval")
            return self.inner(x)

    def compile_(model, *args, **kwargs):
        compiled_models.append(Recording(real_compile(model, *args, **kwargs)))
        return compiled_models[-1]

    monkeypatch.setattr(torch, "compile", compile_)
    result = train(apply(cfg, {"compile": True}), limit(small, train=300))
    compiled = result.history[-1]
    assert len(compiled_models) == 1  # the option reached torch.compile
    assert compiled.train_loss == pytest.approx(eager.train_loss, rel=1e-3)
    # the per-epoch evaluation ran through the compiled module too, and so will the final one
    assert set(compiled_models[0].modes) == {"train", "eval"}
    assert result.inference is compiled_models[0]
    assert compiled.eval_accuracy == pytest.approx(eager.eval_accuracy, abs=0.01)


def test_a_run_does_not_depend_on_cached_model_statistics(tiny_config, small):
    """The statistics are computed once per configuration by building a model, which draws
    from torch's generator: the run after (dropout draws from it) must be the same."""
    from cifartune.models.registry import _described

    cfg = apply(tiny_config, {"arch": "resnet", "depth": 2, "width": 8, "units": 32,
                              "dropout": 0.3, "optimizer": "adam", "lr": 1e-3})
    _described.cache_clear()
    cold = train(cfg, small).model.state_dict()
    warm = train(cfg, small).model.state_dict()  # statistics cached now
    assert all(torch.equal(cold[k], warm[k]) for k in cold)


@pytest.mark.parametrize("flags, expected", [
    ("fpu avx2 avx512f avx512bw avx512_bf16", torch.bfloat16),  # AMD Zen 4
    ("fpu avx2 avx512f amx_tile amx_bf16", torch.bfloat16),  # Intel Sapphire Rapids
    ("fpu avx2 avx512f avx512bw avx512_vnni", None),  # AVX-512 without bf16: emulated, 4x slower
    ("fpu avx2 fma", None),
])
def test_auto_precision_is_bf16_only_where_the_cpu_runs_it_natively(tmp_path, monkeypatch,
                                                                     flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
    real = _device._cpu_flags
    monkeypatch.setattr(_device, "_cpu_flags", lambda: real(str(cpuinfo)))
    assert _device.resolve_dtype("auto", torch.device("cpu")) is expected
    assert _device.resolve_dtype("fp32", torch.device("cpu")) is None
    assert _device.resolve_dtype("bf16", torch.device("cpu")) is torch.bfloat16


@pytest.mark.parametrize("capability, expected", [
    ((7, 0), torch.float16), ((7, 5), torch.float16),
    ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16),
])
def test_auto_precision_on_a_gpu_is_bf16_only_from_ampere_on(monkeypatch, capability, expected):
    """V100 (7.0) and T4 (7.5) emulate bf16, slowly: fp16 with loss scaling there."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert _device.resolve_dtype("auto", torch.device("cuda")) is expected


def test_arm_cpu_flags_are_read_too(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n")
    assert "bf16" in _device._cpu_flags(str(cpuinfo))
    assert _device._cpu_flags(str(tmp_path / "missing")) is None


class _Stop(Exception):
    pass


def _stop_after(epoch: int):
    def on_epoch(report):
        if report.epoch == epoch:
            raise _Stop
    return on_epoch


@pytest.mark.parametrize("overrides", [
    {"averaging": "ema", "ema_every": 1, "epochs": 2.5},  # fast model, Muon, a part epoch
    {"arch": "resnet", "depth": 2, "width": 8, "units": 32, "dropout": 0.3, "rotate": 15.0,
     "shift": 0.1, "zoom": 0.1, "cutout": 8, "optimizer": "adam", "lr": 1e-3,
     "schedule": "exponential", "averaging": "lookahead", "epochs": 3},  # seed-like: dropout
], ids=["fast-ema", "resnet-dropout-lookahead"])
def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_config, small,
                                                                    tmp_path, overrides):
    """Stopped after epoch 1 and resumed from its saved state: the same final weights and the
    same curve as a run never stopped (augmentation draws, dropout masks, optimizer moments,
    averaged weights and the schedule all continue where they were)."""
    cfg = apply(tiny_config, {**overrides, "train_limit": 600})
    whole = train(cfg, small)
    state = tmp_path / "train_state.pt"
    with pytest.raises(_Stop):
        train(cfg, small, on_epoch=_stop_after(1), save_state_to=state)
    resumed = train(cfg, small, save_state_to=state, resume=True)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [(h.epoch, h.steps, h.train_loss, h.eval_accuracy) for h in resumed.history] == \
        [(h.epoch, h.steps, h.train_loss, h.eval_accuracy) for h in whole.history]
    assert resumed.images_seen == whole.images_seen
    # stopped after its last epoch (a crash while it was evaluated): nothing left to train
    with pytest.raises(_Stop):
        train(cfg, small, on_epoch=_stop_after(whole.history[-1].epoch), save_state_to=state)
    done = train(cfg, small, save_state_to=state, resume=True).model.state_dict()
    assert all(torch.equal(a[k], done[k]) for k in a)


def test_resuming_with_another_config_or_without_a_state_is_refused(tiny_config, small,
                                                                    tmp_path):
    state = tmp_path / "train_state.pt"
    with pytest.raises(CheckpointError, match="does not exist"):
        train(tiny_config, small, save_state_to=state, resume=True)
    train(tiny_config, small, save_state_to=state)
    with pytest.raises(CheckpointError, match=r"another config \(optim.lr differ\)"):
        train(apply(tiny_config, {"lr": 0.1}), small, save_state_to=state, resume=True)
    # the data may have moved (another machine); the kind of device and precision may not
    moved = apply(tiny_config, {"data.path": str(tmp_path)})
    train(moved, small, save_state_to=state, resume=True)
    saved = torch.load(state, weights_only=True)
    torch.save({**saved, "where": "cuda, bfloat16"}, state)
    with pytest.raises(CheckpointError, match="trained on cuda, bfloat16 and would resume on cpu"):
        train(tiny_config, small, save_state_to=state, resume=True)
    state.write_bytes(b"not a state")
    with pytest.raises(CheckpointError, match="not a readable training state"):
        train(tiny_config, small, save_state_to=state, resume=True)
