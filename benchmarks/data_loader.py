"""Training-data loader throughput next to the model's masked training step.

Builds a generated copy of the published ``mirl`` layout in a temporary folder (``--count`` images
per dataset at realistic sizes: WED, BSD400 and Rain100L about 480x320, OTS-like hazy pairs 550x413
as JPEG), then measures batches/s of ``data.step_batches`` with the published sampling for the
``paper`` patch (64) and batch (8), for 0, 1 and 2 DataLoader workers. The cache is off
(``cache_mb=0``): with the 72,135 OTS pairs of the published data almost every sample is a fresh
decode, which is the case that matters. Beside it, the seconds of one masked training step
(forward, backward, AdamW; half the prunable weights masked) for the current device and preset:
the ``cpu`` preset with 1 thread on CPU, the ``paper`` preset in bf16 on CUDA. ``loader_margin`` =
batches_per_s * step_s: above 1 the loader keeps up with the model. ``load_avg_1min`` is the
machine's load when the row was measured (the figures are only comparable on an otherwise idle
machine).

Run ``python benchmarks/data_loader.py [--count 30] [--batches 40] [--preset cpu]``; writes
``results/benchmarks/data_loader.csv`` and prints a summary.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mirl_lib.core.config import DataConfig  # noqa: E402
from mirl_lib.core.device import device_name, resolve_device  # noqa: E402
from mirl_lib.data.layouts import make_mirl  # noqa: E402
from mirl_lib.data.stream import build_train_source, step_batches  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.net.promptir import build_model, count_parameters  # noqa: E402
from mirl_lib.pruning.masks import MaskEnforcer, full_mask  # noqa: E402
from mirl_lib.pruning.rules import global_magnitude  # noqa: E402

PATCH, BATCH = 64, 8  # params/paper.yaml
SIZES = {"WED": (375, 500), "BSD400": (321, 481), "Rain100L": (321, 481), "OTS": (413, 550),
         "BSD68": (321, 481), "Urban100": (320, 480), "SOTS": (413, 550)}


def photo(key: str, h: int, w: int) -> np.ndarray:
    """A photo-like image: smooth colour fields plus fine texture and noise (compresses like a
    photograph, unlike uniform noise)."""
    rng = np.random.default_rng(list(key.encode()))
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    image = np.stack([0.5 + 0.4 * np.sin(6 * f * xx + 5 * g * yy + c)
                      for f, g, c in rng.uniform(0.3, 3.0, (3, 3))], axis=-1)
    image += 0.05 * np.sin(80 * xx)[..., None] * np.cos(60 * yy)[..., None]
    image += rng.normal(0, 0.02, image.shape)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def loader_rate(source, workers: int, batches: int) -> tuple[float, float]:
    """(batches per second once the first batch arrived, seconds until it arrived)."""
    started = time.perf_counter()
    stream = step_batches(source, range(batches + 1), BATCH, workers=workers,
                          pin_memory=torch.cuda.is_available())
    next(stream)
    first = time.perf_counter()
    for _ in stream:
        pass
    return batches / (time.perf_counter() - first), first - started


def step_seconds(preset: str, device: torch.device, repeats: int) -> float:
    """Median seconds of one masked training step of ``preset`` at batch 8 x 64 x 64."""
    model = build_model(preset, seed=0).to(device).train()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    mask = global_magnitude(model.state_dict(), full_mask(model), 0.5)  # half the prunable weights
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    x = torch.rand(BATCH, 3, PATCH, PATCH, device=device)
    y = torch.rand(BATCH, 3, PATCH, PATCH, device=device)
    times = []
    with MaskEnforcer(model, {k: v.to(device) for k, v in mask.items()}):
        for i in range(repeats + 2):
            start = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.l1_loss(model(x).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if cuda:
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - start)
    print(f"model: {preset} preset ({count_parameters(model):,} parameters) on {device}, "
          f"{torch.get_num_threads()} thread(s): {statistics.median(times):.3f} s a step")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30, help="images per dataset folder")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per setting")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default=None, help="model preset (default: cpu on CPU, "
                                                        "paper on CUDA)")
    parser.add_argument("--repeats", type=int, default=5, help="timed model steps")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "results" / "benchmarks" / "data_loader.csv")
    args = parser.parse_args()
    device = resolve_device("auto")
    preset = args.preset or ("paper" if device.type == "cuda" else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)
    step_s = step_seconds(preset, device, args.repeats)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        cfg = DataConfig(source="mirl", root=tmp, patch_size=PATCH, sampling="published",
                         cache_mb=0)
        make_mirl(Path(tmp), cfg, count=args.count, sizes=SIZES, suffixes={"OTS": ".jpg",
                                                                           "SOTS": ".jpg"},
                  content=photo)
        made = time.perf_counter()
        source = build_train_source(cfg, seed=0)
        built = time.perf_counter() - made
        files = sum(1 for _ in (Path(tmp) / "train").rglob("*.*"))
        print(f"layout: {args.count} images per dataset ({files} training files) written in "
              f"{made - started:.1f} s; source built (headers checked) in {built:.2f} s; "
              f"epoch of {source.epoch_size} samples (published mixture)")
        for workers in args.workers:
            rate, startup = loader_rate(source, workers, args.batches)
            rows.append({"device": device.type, "device_name": device_name(device),
                         "preset": preset, "patch_size": PATCH, "batch_size": BATCH,
                         "sampling": "published", "cache_mb": 0, "workers": workers,
                         "batches_per_s": round(rate, 2), "first_batch_s": round(startup, 3),
                         "step_s": round(step_s, 4), "loader_margin": round(rate * step_s, 2),
                         "batches": args.batches, "cpu_count": os.cpu_count(),
                         "header_check_ms_per_file": round(1000 * built / files, 3),
                         "load_avg_1min": round(os.getloadavg()[0], 2),
                         "torch_version": torch.__version__})
            print(f"workers {workers}: {rate:6.1f} batches/s ({1000 / rate:5.1f} ms a batch, "
                  f"first after {startup:.2f} s); the {preset} step takes {step_s * 1000:.0f} ms, "
                  f"so the loader makes {rate * step_s:.1f} batches per step", flush=True)
    atomic_write_text(pd.DataFrame(rows).to_csv(index=False), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
