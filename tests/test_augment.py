import pytest
import torch

from cifartune.config import AugmentConfig
from cifartune.data import augment as A
from cifartune.data.loader import TrainBatches, as_float, to_device


@pytest.fixture
def batch(small):
    x, _ = to_device(small.train.subset(slice(0, 64)), torch.device("cpu"))
    return as_float(x)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_twice_is_identity(batch):
    mask = torch.rand(len(batch), generator=gen()) < 0.5
    assert torch.equal(A.flip(A.flip(batch, mask), mask), batch)
    flipped = A.flip(batch, torch.ones(len(batch), dtype=torch.bool))
    assert torch.equal(flipped, batch.flip(-1))


@pytest.mark.parametrize("name, fn", [
    ("translate", lambda x, g: A.translate(x, 2, g)),
    ("cutout", lambda x, g: A.cutout(x, 8, g)),
    ("affine", lambda x, g: A.affine(x, 15.0, 0.1, 0.1, g)),
])
def test_shapes_ranges_and_determinism(batch, name, fn):
    out = fn(batch, gen(1))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert out.min() >= 0 and out.max() <= 1  # no values invented outside the pixel range
    assert torch.equal(out, fn(batch, gen(1)))  # seeded: reproducible
    assert not torch.equal(out, batch)


def test_translate_is_a_pure_shift(batch):
    out = A.translate(batch, 2, gen(2))
    # every output image's centre 28x28 appears in its input shifted by at most 2 pixels
    for i in range(8):
        found = any(torch.equal(out[i, :, 2:30, 2:30], batch[i, :, 2 + dy:30 + dy, 2 + dx:30 + dx])
                    for dy in range(-2, 3) for dx in range(-2, 3))
        assert found


def test_cutout_zeroes_at_most_a_square(batch):
    out = A.cutout(batch + 0.01, 8, gen(3))
    zeros = (out == 0).all(1).flatten(1).sum(1)
    assert (zeros <= 64).all() and (zeros > 0).all()


def test_affine_with_zero_strength_is_identity(batch):
    assert A.affine(batch, 0, 0, 0, gen()) is batch


def test_alternating_flip_shows_both_sides(small):
    aug = AugmentConfig(flip=True, translate=0)
    tb = TrainBatches(small.train, 100, aug, torch.device("cpu"), seed=0)
    idx = torch.arange(100)
    x = as_float(tb.x[idx])
    e0, e1 = tb.augment(x, idx, 0), tb.augment(x, idx, 1)
    assert torch.equal(e0.flip(-1), e1)  # odd epochs mirror what even epochs showed


def test_train_batches_show_each_image_at_most_once_per_epoch(small):
    def batches():
        return TrainBatches(small.train, 128, AugmentConfig(), torch.device("cpu"), seed=0)
    tb = batches()
    epochs = [torch.cat(list(tb.indices())) for _ in range(2)]
    for idx in epochs:
        assert len(idx) == len(tb) * 128 == len(small.train) // 128 * 128
        assert len(set(idx.tolist())) == len(idx)  # a permutation: no image twice
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled every epoch
    # epoch() serves those indices' images and labels
    same = batches()
    x, y = next(iter(same.epoch(0)))
    assert torch.equal(y, same.y[epochs[0][:128]]) and x.shape == (128, 3, 32, 32)
