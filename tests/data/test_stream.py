"""Streaming training data: DataLoader workers, resume, bounded memory, published sampling, epochs,
and params/paper.yaml on a generated copy of the published layout."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from mirl_lib.core.config import DataConfig, TrainConfig, load_config
from mirl_lib.core.errors import DataError
from mirl_lib.data import stream
from mirl_lib.data.layouts import make_folder, make_mirl
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.checkpoints import load_model
from mirl_lib.net.promptir import build_model
from mirl_lib.training.loop import resolve_steps, train

ROOT = CHECKOUT
CFG = TrainConfig(steps=8, batch_size=2, lr=1e-3, min_lr=1e-5, warmup_steps=2, device="cpu",
                  checkpoint_every=3, log_every=2, threads=1)
# the generated layout (count=2): 4 clean images (WED, BSD400), 2 rain pairs, 2 haze pairs
BALANCED_EPOCH = 3 * 4 + 2 + 2
PUBLISHED_EPOCH = 3 * 3 * 4 + 120 * 2 + 2


def _mirl_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="mirl", root=str(root), patch_size=16, **kw)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mirl(tmp_path_factory.mktemp("mirl"))


@pytest.mark.parametrize("sampling", ["balanced", "published"])
def test_loader_batches_are_the_pure_ones_whatever_the_workers(layout: Path, sampling: str) -> None:
    cfg = _mirl_cfg(layout, sampling=sampling)
    source = stream.build_train_source(cfg, seed=3)
    steps = range(3, 9)
    for rank in (0, 1):
        pure = [source.batch(step, 4, rank, 2) for step in steps]
        for workers in (0, 1, 2):
            fresh = stream.build_train_source(cfg, seed=3)  # nothing decoded yet
            loaded = list(stream.step_batches(fresh, steps, 4, rank, 2, workers=workers))
            assert len(loaded) == len(pure), (rank, workers)
            for got, want in zip(loaded, pure):
                assert all(torch.equal(a, b) for a, b in zip(got, want)), (rank, workers)
    other_rank = source.batch(3, 4, 1, 2)
    assert not torch.equal(source.batch(3, 4, 0, 2)[1], other_rank[1])


def test_published_epoch_visits_the_mixture_once_across_ranks(layout: Path) -> None:
    source = stream.build_train_source(_mirl_cfg(layout, sampling="published"), seed=0)
    assert source.epoch_size == PUBLISHED_EPOCH
    batch, world = 4, 2
    seen: Counter = Counter()
    for step in range(-(-PUBLISHED_EPOCH // (batch * world))):
        for rank in range(world):
            first = step * batch * world + rank * batch
            for g in range(first, min(first + batch, PUBLISHED_EPOCH)):
                task_id, sample = source._pick(g, np.random.default_rng(0))
                assert source.tasks[task_id] == sample.entry.task
                seen[(sample.entry.task, sample.entry.dataset, sample.entry.name)] += 1
    repeats = {task: count for (task, _, _), count in seen.items()}
    assert repeats == stream.PUBLISHED_REPEATS
    assert len(seen) == BALANCED_EPOCH and sum(seen.values()) == PUBLISHED_EPOCH
    ids = torch.cat([source.batch(s, 8)[2] for s in range(6)])  # rain dominates the mixture
    assert (ids == source.tasks.index("derain")).float().mean() > 0.6
    next_epoch = [source._pick(PUBLISHED_EPOCH + g, None)[1] for g in range(20)]
    assert next_epoch != [source._pick(g, None)[1] for g in range(20)]  # reshuffled


def _source(root: Path, workers: int) -> stream.TrainSource:
    return stream.build_train_source(DataConfig(source="folder", root=str(root), patch_size=16,
                                              workers=workers), seed=0)


def test_interrupted_run_resumes_bit_exact_with_workers(tmp_path: Path) -> None:
    photos = make_folder(tmp_path / "photos", count=12, size=40)
    reference = build_model("tiny", seed=1)
    ref = train(reference, CFG, _source(photos, 0), tmp_path / "straight", seed=0)
    model = build_model("tiny", seed=1)
    part = train(model, CFG, _source(photos, 2), tmp_path / "run", seed=0, stop_after=5)
    assert part.final_step == 5 and not (tmp_path / "run/final.pt").exists()
    model = build_model("tiny", seed=1)
    result = train(model, CFG, _source(photos, 2), tmp_path / "run", seed=0)
    assert result.final_step == CFG.steps and result.history.equals(ref.history)
    a, b = model.state_dict(), reference.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_file_broken_inside_a_worker_fails_with_one_line_naming_it(tmp_path: Path) -> None:
    cfg = _mirl_cfg(tmp_path, tasks=("derain",), workers=2)
    make_mirl(tmp_path, cfg, count=1)
    source = stream.build_train_source(cfg, seed=0)
    bad = tmp_path / "train/derain/Rain100L/target/im0_gt.png"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError) as info:
        train(build_model("tiny", seed=1), CFG, source, tmp_path / "run", seed=0)
    assert str(info.value).startswith(f"{bad}: image file is truncated or corrupt")
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value)


_PEAK_RSS = """
import json, resource, sys
from mirl_lib.core.config import DataConfig, TrainConfig
from mirl_lib.data.stream import build_train_source
from mirl_lib.net.promptir import build_model
from mirl_lib.training.loop import train
from mirl_lib.files.paths import CHECKOUT
cfg = DataConfig(source="folder", root=sys.argv[1], patch_size=32, workers=1, cache_mb=16)
train(build_model("tiny", seed=0), TrainConfig(steps=4, batch_size=4, warmup_steps=1, device="cpu",
      threads=1), build_train_source(cfg, seed=0), sys.argv[2], seed=0)
print(json.dumps({who: resource.getrusage(getattr(resource, who)).ru_maxrss // 1024
                  for who in ("RUSAGE_SELF", "RUSAGE_CHILDREN")}))
"""


def _peak_rss_mb(photos: Path, out: Path) -> dict[str, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(photos), str(out)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_memory_does_not_grow_with_the_dataset(tmp_path: Path) -> None:
    """Peak RSS of the training process and of its DataLoader worker, training on 2,000 photos of
    128 px, stays within 64 MB of the same run on 200. Holding the extra ~1,350 decoded training
    photos (3/4 of 1,800) with the depth maps of their haze entries would take about 150 MB."""
    side = 128
    small = _peak_rss_mb(make_folder(tmp_path / "small", 200, side), tmp_path / "run_small")
    large = _peak_rss_mb(make_folder(tmp_path / "large", 2000, side), tmp_path / "run_large")
    for who in small:
        assert large[who] - small[who] < 64, (who, small, large)


def test_epochs_convert_to_the_documented_step_count(layout: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    assert stream.epoch_size(_mirl_cfg(layout)) == BALANCED_EPOCH
    assert stream.epoch_size(_mirl_cfg(layout, sampling="published")) == PUBLISHED_EPOCH
    in_epochs = TrainConfig(epochs=3, warmup_epochs=1, steps=0, warmup_steps=0, batch_size=8)
    resolved = resolve_steps(in_epochs, PUBLISHED_EPOCH)  # ceil(278 / 8) = 35 steps an epoch
    assert (resolved.steps, resolved.warmup_steps, resolved.epochs) == (105, 35, 3)
    assert "3 epochs of 278 samples at batch 8 (35 steps each) = 105 steps, warmup 1 epochs = " \
           "35 steps" in capsys.readouterr().err
    assert resolve_steps(CFG, 10**6) is CFG  # in steps: unchanged
    # train() derives the steps from the source itself and records them
    cfg = dataclasses.replace(CFG, epochs=2, warmup_epochs=1, steps=0, warmup_steps=0,
                              batch_size=8)
    result = train(build_model("tiny", seed=0), cfg,
                   stream.build_train_source(_mirl_cfg(layout), 0), tmp_path, seed=0)
    assert result.final_step == 2 * 2  # ceil(16 / 8) = 2 steps an epoch
    _, meta = load_model(tmp_path / "final.pt")
    assert meta["epoch_size"] == BALANCED_EPOCH
    assert (meta["train_config"]["steps"], meta["train_config"]["warmup_steps"]) == (4, 2)
    assert meta["train_config"]["epochs"] == 2
    assert "= 4 steps, warmup 1 epochs = 2 steps" in capsys.readouterr().err


def test_paper_params_plan_and_start_training_on_a_published_layout(tmp_path: Path) -> None:
    from mirl_lib.study.graph import stage_list
    from mirl_lib.study.study import Study

    cfg = load_config(ROOT / "params" / "paper.yaml", overrides={
        "model": {"preset": "tiny"}, "data": {"root": str(tmp_path / "datasets"), "workers": 1},
        "train": {"device": "cpu", "threads": 1}})
    make_mirl(tmp_path / "datasets", cfg.data, size=(72, 68))
    assert (cfg.train.epochs, cfg.train.warmup_epochs, cfg.train.steps) == (120, 15, 0)
    study = Study(cfg, tmp_path / "run")
    assert len(study.plan()) == cfg.prune.rounds + 1
    names = [stage.name for stage in stage_list(study)]
    assert names[:2] == ["data", "dense"] and names[-2:] == ["evaluate", "figures"]
    assert "round_15" in names
    study.prepare()
    folder = study.point_dir(0, "dense", 0)
    folder.mkdir(parents=True)
    model, mask, start, _ = study.start(0, "dense", 0)
    result = train(model, cfg.train, stream.build_train_source(cfg.data, 0), folder, seed=0,
                   mask=mask, start_step=start, stop_after=2)
    assert result.final_step == 2
    state = torch.load(folder / "state.pt", weights_only=True)
    per_epoch = -(-PUBLISHED_EPOCH // 8)  # the published mixture of this layout, batch 8
    assert (state["identity"]["steps"], state["identity"]["warmup_steps"]) == (
        120 * per_epoch, 15 * per_epoch)
