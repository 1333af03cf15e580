import pytest
import torch

from cifartune.config import resolve_config
from cifartune.models import create_model, list_models, model_stats

SMALL = {"fast": ["widths=[16,32,32]"], "resnet": ["depth=3", "width=16", "units=64"]}


def test_registry_lists_both_families():
    assert {"fast", "resnet"} <= set(list_models())


@pytest.mark.parametrize("arch", list_models())
@pytest.mark.parametrize("classes", [10, 3])
def test_forward_backward(arch, classes):
    cfg = resolve_config(overrides=[f"arch={arch}", *SMALL.get(arch, [])])
    model = create_model(cfg.model, classes)
    x = torch.rand(4, 3, 32, 32)
    model.init_from_data(x)
    out = model(x)
    assert out.shape == (4, classes) and torch.isfinite(out).all()
    out.sum().backward()
    assert any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", list_models())
def test_stats_count_parameters_and_flops(arch):
    cfg = resolve_config(overrides=[f"arch={arch}"])
    stats = model_stats(create_model(cfg.model))
    assert stats.parameters > 100_000 and stats.flops_per_image > 1e7
    assert "GFLOP" in stats.describe()


def test_fast_default_size_matches_airbench_scale():
    stats = model_stats(create_model(resolve_config().model))
    assert 1.9e6 < stats.parameters < 2.1e6  # 64/256/256 widths
    assert 0.2e9 < stats.flops_per_image < 0.27e9


def test_whitening_layer_whitens_patches(small):
    cfg = resolve_config(overrides=SMALL["fast"])
    model = create_model(cfg.model)
    x = torch.from_numpy(small.train.x[:500]).permute(0, 3, 1, 2).float() / 255
    model.init_from_data(x)
    w = model.net.whiten.weight
    assert not w.requires_grad
    out = torch.nn.functional.conv2d(model.normalize(x), w)  # (N, 24, 31, 31)
    first = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = first.T @ first / len(first)
    # about unit variance along each eigen-direction (eps shrinks the faintest ones), and
    # decorrelated
    d = cov.diagonal().sort().values
    assert (d > 0.4).all() and (d < 1.01).all() and (d[6:] > 0.95).all()
    off = cov - torch.diag(cov.diagonal())
    assert off.abs().max() < 0.05


def test_resnet_depth_and_units_map_onto_the_network():
    cfg = resolve_config(overrides=["arch=resnet", "depth=5", "units=512", "blocks=1"])
    model = create_model(cfg.model)
    blocks = [m for m in model.modules() if type(m).__name__ == "_Block"]
    assert len(blocks) == 5
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears[0].out_features == 512 and linears[-1].out_features == 10
