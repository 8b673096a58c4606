"""Does the dense network learn every task? Train one dense network and score it along the way.

Trains the dense network of a params file (default ``params/default.yaml``) with the patch size,
batch size, learning rate and step count given here, keeps its weights at the ``--at`` steps, and
scores each snapshot and the final network on the bundled test photos and on the held-out check
(``mirl_lib.data.heldout``: unseen photos, out-of-range rain and haze). Appends one row per
(snapshot, set, task) to ``results/benchmarks/dense_probe.csv``: the PSNR gain and the SSIM change
over the degraded input, which is what the full tier's bars are about (>= +3 dB and rising SSIM on
every task of the test photos; beating the input on every held-out task)::

    python benchmarks/dense_probe.py --patch 48 --batch 8 --lr 2e-3 --steps 600 --at 300
    python benchmarks/dense_probe.py --params params/full.yaml --steps 400 --psnr-weight 0.01 \
        --channels-last --out /tmp/probe.csv     # one file per probe when several run at once

Snapshots in the middle of a run are taken at that point of *its* cosine schedule (learning rate
not yet decayed), so they are not the same as a shorter run.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mirl_lib.core.config import load_config  # noqa: E402
from mirl_lib.core.protocol import task_means  # noqa: E402
from mirl_lib.data.heldout import load_heldout_set  # noqa: E402
from mirl_lib.data.stream import build_train_source  # noqa: E402
from mirl_lib.data.testset import load_test_set  # noqa: E402
from mirl_lib.evaluation.scoring import evaluate  # noqa: E402
from mirl_lib.files.atomic import atomic_write_text  # noqa: E402
from mirl_lib.net.checkpoints import load_model  # noqa: E402
from mirl_lib.net.promptir import build_model  # noqa: E402
from mirl_lib.training.loop import train  # noqa: E402

OUT = REPO / "results" / "benchmarks" / "dense_probe.csv"


def probe(params: Path, patch: int, batch: int, lr: float, steps: int, at: list[int],
          seed: int, threads: int, work: Path, ssim_weight: float = 0.0,
          channels_last: bool = False, psnr_weight: float = 0.0,
          bundled_train: str = "classic", task_weights: tuple[int, ...] = (),
          device: str = "cpu", haze_depth: str = "fixed") -> pd.DataFrame:
    torch.set_num_threads(threads)
    cfg = load_config(params, {"data": {"patch_size": patch, "bundled_train": bundled_train,
                                        "task_weights": list(task_weights),
                                        "haze_depth": haze_depth},
                               "train": {"batch_size": batch, "lr": lr, "steps": steps,
                                         "warmup_steps": 30, "checkpoint_every": 10 ** 9,
                                         "log_every": 50, "threads": threads,
                                         "device": device, "bf16": False,
                                         "ssim_weight": ssim_weight,
                                         "cpu_channels_last": channels_last,
                                         "psnr_weight": psnr_weight}})
    model = build_model(cfg.model, seed=seed)
    started = time.time()
    train(model, cfg.train, build_train_source(cfg.data, seed), work, seed=seed,
          snapshot_steps=tuple(at), progress_desc=f"dense p{patch} b{batch} lr{lr:g}")
    seconds = time.time() - started
    sets = {"test": load_test_set(cfg.data, seed=cfg.data.test_seed),
            "heldout": load_heldout_set(cfg.data, seed=cfg.data.test_seed)}
    rows = []
    for step in [*at, steps]:
        net = model if step == steps else load_model(work / f"weights_step{step}.pt",
                                                     expected=cfg.model)[0]
        net.eval()
        for name, items in sets.items():
            for r in task_means(evaluate(net, items)).itertuples():
                rows.append({"params": params.name, "patch": patch, "batch": batch, "lr": lr,
                             "steps": steps, "seed": seed, "at_step": step, "set": name,
                             "task": r.task, "input_psnr": r.input_psnr, "psnr": r.psnr,
                             "gain_db": r.psnr - r.input_psnr, "input_ssim": r.input_ssim,
                             "ssim": r.ssim, "ssim_change": r.ssim - r.input_ssim,
                             "train_seconds": seconds, "threads": threads,
                             "ssim_weight": ssim_weight, "cpu_channels_last": channels_last,
                             "psnr_weight": psnr_weight, "bundled_train": bundled_train,
                             "task_weights": "-".join(map(str, task_weights)),
                             "device": device, "haze_depth": haze_depth})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=REPO / "params" / "default.yaml")
    parser.add_argument("--patch", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--at", type=str, default="", help="snapshot steps, comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ssim-weight", type=float, default=0.0,
                        help="train.ssim_weight: loss = L1 + w * (1 - SSIM)")
    parser.add_argument("--channels-last", action="store_true",
                        help="train.cpu_channels_last: channels-last layout on the CPU")
    parser.add_argument("--psnr-weight", type=float, default=0.0,
                        help="train.psnr_weight: adds w * (-PSNR of each image) to the loss")
    parser.add_argument("--bundled-train", default="classic",
                        help="data.bundled_train: which bundled photos train (classic, natural)")
    parser.add_argument("--task-weights", default="",
                        help="data.task_weights, comma-separated (one per task; empty: equal)")
    parser.add_argument("--haze-depth", default="fixed",
                        help="data.haze_depth: fixed (one depth map per photo) or per_sample")
    parser.add_argument("--device", default="cpu", help="train.device (cuda trains in fp32)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    at = sorted({int(s) for s in args.at.split(",") if s.strip()} - {args.steps})
    if any(not 0 < s < args.steps for s in at):
        parser.error(f"--at: every snapshot step must lie in 1..{args.steps - 1}")
    with tempfile.TemporaryDirectory(prefix="mirl-probe-") as work:
        table = probe(args.params, args.patch, args.batch, args.lr, args.steps, at, args.seed,
                      args.threads, Path(work), args.ssim_weight, args.channels_last,
                      args.psnr_weight, args.bundled_train,
                      tuple(int(w) for w in args.task_weights.split(",") if w.strip()),
                      args.device, args.haze_depth)
    if args.out.exists():
        earlier = pd.read_csv(args.out)
        for column, value in (("ssim_weight", 0.0), ("cpu_channels_last", False),
                              ("psnr_weight", 0.0), ("bundled_train", "classic"),
                              ("task_weights", ""), ("device", "cpu"), ("haze_depth", "fixed")):
            if column not in earlier:  # rows from before the option existed ran without it
                earlier[column] = value
        table = pd.concat([earlier, table], ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table.to_csv(index=False), args.out)
    view = table.tail(len(at + [0]) * 12)
    print(view.pivot_table(index=["set", "task"], columns="at_step",
                           values=["gain_db", "ssim_change"]).round(2).to_string())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
