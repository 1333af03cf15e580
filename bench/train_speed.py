"""Training and evaluation throughput of the presets on this device.

    python bench/train_speed.py [--presets fast,long,seed] [--repeats 3] [--set KEY=VALUE]
                                [--json F]

For each preset: train on a slice of the real training set (or random images when no data
is found) through the same `train()` loop the CLI uses, discard the first epoch (warm-up:
allocator, oneDNN/cuDNN kernel selection), and report the median images/s of the later
epochs; then time evaluation (no TTA) the same way. Achieved GFLOP/s counts 3x the forward
FLOPs per training image (forward + backward) and 1x per evaluated image.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from cifartune.config import apply, parse_overrides, resolve_config
from cifartune.data import CIFAR10_CLASSES, Dataset, Split, limit, load_dataset
from cifartune.data.loader import to_device
from cifartune.errors import CifartuneError
from cifartune.train import predict_logits, train
from cifartune.train.run import TRAIN_FLOPS_FACTOR, precision_name

# steps per timed epoch: about 30-60 s each on 2 CPU cores
STEPS_PER_EPOCH = {"fast": 5, "long": 5, "seed": 20}


def bench_data(n_train: int) -> Dataset:
    try:
        ds = load_dataset(allow_download=False)
        return limit(ds, train=n_train, test=2000)
    except CifartuneError:
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (n_train + 2000, 32, 32, 3), dtype=np.uint8)
        y = rng.integers(0, 10, n_train + 2000)
        return Dataset(Split(x[:n_train], y[:n_train]), Split(x[n_train:], y[n_train:]),
                       list(CIFAR10_CLASSES), "random images")


def bench_preset(preset: str, repeats: int, overrides: dict | None = None) -> dict:
    config = apply(resolve_config(preset), overrides or {})
    batch = config.train.batch_size
    n_train = batch * STEPS_PER_EPOCH[preset]
    data = bench_data(n_train)
    config = apply(config, {"epochs": 1 + repeats, "eval_batch_size": 1000})
    # Evaluation happens in the loop after each epoch; time it separately below instead.
    result = train(config, replace(data, test=Split(data.test.x[:0], data.test.y[:0])))
    train_ips = statistics.median(h.images_per_second for h in result.history[1:])
    x, _ = to_device(data.test, result.device)
    kwargs = dict(tta=0, batch_size=1000, dtype=result.dtype,
                  channels_last=config.train.channels_last)
    predict_logits(result.model, x, **kwargs)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_logits(result.model, x, **kwargs)
        times.append(time.perf_counter() - start)
    eval_ips = len(x) / statistics.median(times)
    flops = result.stats.flops_per_image
    return {
        "preset": preset, "model": config.model.arch, "device": str(result.device),
        "precision": precision_name(result.dtype),
        "batch_size": batch, "data": data.source, "parameters": result.stats.parameters,
        "gflop_per_image_forward": flops / 1e9,
        "train_images_per_second": train_ips,
        "train_gflops_per_second": train_ips * TRAIN_FLOPS_FACTOR * flops / 1e9,
        "eval_images_per_second": eval_ips,
        "eval_gflops_per_second": eval_ips * flops / 1e9,
        "epoch_images_per_second": [h.images_per_second for h in result.history],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="fast,seed")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs after warm-up")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key for every preset (e.g. precision=fp32)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"cuda={torch.cuda.is_available()}")
    rows = []
    for preset in args.presets.split(","):
        row = bench_preset(preset, args.repeats, parse_overrides(args.set))
        rows.append(row)
        print(f"{preset:5s} {row['model']:6s} {row['device']:5s} {row['precision']:9s} "
              f"batch {row['batch_size']:5d}  {row['gflop_per_image_forward']:.3f} GFLOP/img  "
              f"train {row['train_images_per_second']:7.0f} img/s "
              f"({row['train_gflops_per_second']:5.0f} GFLOP/s)  "
              f"eval {row['eval_images_per_second']:7.0f} img/s "
              f"({row['eval_gflops_per_second']:5.0f} GFLOP/s)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
