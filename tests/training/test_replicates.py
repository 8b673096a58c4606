"""Batched replicates: each replicate's loss and gradients at step 0 equal a separate run's, it
writes the files of a separate run, a batched training resumes bit for bit (batched or alone),
masks and gradient clipping act per replicate, and the switch is checked."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from ddp_worker import FakeSource

from mirl_lib.core.config import TrainConfig, load_config
from mirl_lib.core.errors import ConfigError
from mirl_lib.files.paths import FINAL_FILE, HISTORY_FILE, STATE_FILE, snapshot_file
from mirl_lib.files.tensors import load_tensors
from mirl_lib.net.checkpoints import load_model
from mirl_lib.net.promptir import build_model
from mirl_lib.pruning.masks import full_mask
from mirl_lib.pruning.rules import random_mask
from mirl_lib.training.loop import train
from mirl_lib.training.losses import restoration_loss
from mirl_lib.training.replicates import (
    Replicates,
    batching,
    split_optimizer_state,
    stack_optimizer_states,
    train_replicates,
)

CFG = TrainConfig(steps=6, batch_size=2, lr=1e-3, min_lr=1e-5, warmup_steps=2, device="cpu",
                  checkpoint_every=2, log_every=2, threads=1, ssim_weight=0.5, bf16=False)
SEEDS = [0, 1, 2]


def mask_of(model: torch.nn.Module, seed: int, density: float = 0.5) -> dict[str, torch.Tensor]:
    keep = {n: (torch.arange(m.numel()) < round(density * m.numel())).reshape(m.shape)
            for n, m in full_mask(model, "default").items()}
    return random_mask(keep, seed)


def replicas(seeds=SEEDS) -> tuple[list[torch.nn.Module], list[dict]]:
    models = [build_model("tiny", seed=10 + s) for s in seeds]
    return models, [mask_of(m, s) for m, s in zip(models, seeds)]


def test_step_zero_losses_and_gradients_equal_separate_runs() -> None:
    models, masks = replicas()
    batch = Replicates([build_model("tiny", seed=10 + s) for s in SEEDS], masks)
    data = [FakeSource(seed).batch(0, 2) for seed in SEEDS]
    degraded = torch.stack([d for d, _, _ in data])
    clean = torch.stack([c for _, c, _ in data])
    losses = batch.losses(degraded, clean, CFG)
    losses.sum().backward()
    for i, (model, mask) in enumerate(zip(models, masks)):
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name in mask:
                    param.mul_(mask[name])
        loss = restoration_loss(model(data[i][0]), data[i][1], CFG.ssim_weight)
        loss.backward()
        assert losses[i].item() == pytest.approx(loss.item(), rel=1e-5)
        for name, param in model.named_parameters():
            if param.grad is None:  # the tiny preset's unused convolutions
                assert batch.params[name].grad is None
                continue
            grad = batch.params[name].grad[i]
            if name in mask:
                assert not grad[~mask[name]].any(), name  # pruned entries get no gradient
                reference = param.grad * mask[name]
            else:
                reference = param.grad
            scale = reference.abs().max().item() + 1e-12
            assert (grad - reference).abs().max().item() <= 1e-4 * scale, name
    batch.remove()


def test_grad_clip_is_per_replicate() -> None:
    models, masks = replicas()
    batch = Replicates(models, [None, None, None])
    for i, param in enumerate(batch.parameters()):
        param.grad = torch.ones_like(param) * torch.tensor([1.0, 10.0, 0.001]).view(
            -1, *[1] * (param.dim() - 1))
    norms = batch.clip_grad_norm_(1.0)
    after = torch.stack([g.flatten(1).norm(dim=1) for g in
                         (p.grad for p in batch.parameters())]).norm(dim=0)
    assert norms[1] > norms[0] > 1.0 > norms[2]
    assert after[:2].tolist() == pytest.approx([1.0, 1.0], rel=1e-5)
    assert after[2].item() == pytest.approx(norms[2].item(), rel=1e-6)  # under the limit: kept


def test_optimizer_state_split_and_stack_round_trip() -> None:
    models, masks = replicas()
    batch = Replicates(models, masks)
    optimizer = torch.optim.AdamW(batch.parameters(), lr=1e-3)
    for param in batch.parameters():
        param.grad = torch.randn_like(param)
    optimizer.step()
    state = optimizer.state_dict()
    parts = [split_optimizer_state(state, i) for i in range(len(SEEDS))]
    single = torch.optim.AdamW(build_model("tiny", seed=0).parameters(), lr=1e-3)
    single.load_state_dict(parts[1])  # a separate training's optimizer takes a slice as it is
    back = stack_optimizer_states(parts)
    for key, entry in state["state"].items():
        for name, value in entry.items():
            assert torch.equal(back["state"][key][name], value)


def run_batched(out: Path, **kw):
    models, masks = replicas()
    results = train_replicates(models, CFG, [FakeSource(s) for s in SEEDS],
                               [out / f"seed_{s}" for s in SEEDS], seeds=SEEDS, masks=masks,
                               snapshot_steps=(0, 3), **kw)
    return models, masks, results


@pytest.fixture(scope="module")
def batched(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("batched")
    return out, run_batched(out)


def test_each_replicate_writes_the_files_of_a_separate_run(batched, tmp_path: Path) -> None:
    out, (models, masks, results) = batched
    model = build_model("tiny", seed=10)
    train(model, CFG, FakeSource(0), tmp_path, seed=0, mask=masks[0], snapshot_steps=(0, 3))
    separate = sorted(p.name for p in tmp_path.iterdir())
    for seed, trained, mask, result in zip(SEEDS, models, masks, results):
        folder = out / f"seed_{seed}"
        assert sorted(p.name for p in folder.iterdir()) == separate
        loaded, meta = load_model(folder / FINAL_FILE)
        assert meta["batched_replicates"] == 3 and meta["seed"] == seed
        assert meta["final_step"] == CFG.steps == result.final_step
        state = loaded.state_dict()
        assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())
        for name, keep in mask.items():
            assert not state[name][~keep].any()  # pruned weights stayed at zero
        assert list(result.history["step"]) == [2, 4, 6]
        assert (folder / HISTORY_FILE).read_text().startswith("step,loss,lr")
        step0, _ = load_model(folder / snapshot_file(0))
        assert torch.equal(step0.state_dict()["patch_embed.proj.weight"],
                           build_model("tiny", seed=10 + seed).state_dict()[
                               "patch_embed.proj.weight"] *
                           mask.get("patch_embed.proj.weight", 1))
        assert set(load_tensors(folder / STATE_FILE)) >= {"model", "optimizer", "identity"}
    # replicates are different trainings: different data and initializations give other weights
    assert not torch.equal(models[0].state_dict()["output.weight"],
                           models[1].state_dict()["output.weight"])


def test_replicates_stay_close_to_separate_runs(batched, tmp_path: Path) -> None:
    """After training, a batched replicate's weights differ from its separate run's far less
    than two seeds' weights differ from each other."""
    _, (models, masks, _) = batched
    model = build_model("tiny", seed=11)
    train(model, CFG, FakeSource(1), tmp_path, seed=1, mask=masks[1])
    flat = [torch.cat([p.flatten() for p in m.state_dict().values()]) for m in
            (model, models[1], models[0])]
    own = (flat[0] - flat[1]).norm().item()
    other_seed = (flat[0] - flat[2]).norm().item()
    assert own < 1e-3 * other_seed


def test_interrupted_batched_training_resumes_bit_for_bit(batched, tmp_path: Path) -> None:
    out, (reference, _, _) = batched
    models, _, results = run_batched(tmp_path, stop_after=3)
    assert all(r.final_step == 3 for r in results)
    assert not any((tmp_path / f"seed_{s}" / FINAL_FILE).exists() for s in SEEDS)
    models, _, results = run_batched(tmp_path)
    for model, ref in zip(models, reference):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.state_dict().items())
    for seed in SEEDS:
        assert ((tmp_path / f"seed_{seed}" / HISTORY_FILE).read_text()
                == (out / f"seed_{seed}" / HISTORY_FILE).read_text())


def test_a_batched_state_resumes_alone_and_finished_replicates_are_loaded(batched,
                                                                           tmp_path: Path) -> None:
    """Seed 2 goes on alone from the batched state.pt and seeds 0-1 batched; then a call over
    all three only loads them (no step runs)."""
    _, (reference, _, _) = batched
    run_batched(tmp_path, stop_after=2)
    models, masks = replicas()
    alone = train(models[2], CFG, FakeSource(2), tmp_path / "seed_2", seed=2, mask=masks[2])
    assert alone.final_step == CFG.steps
    ref = reference[2].state_dict()
    diff = max((models[2].state_dict()[k] - v).abs().max().item() for k, v in ref.items())
    assert diff < 1e-3  # other kernels from step 2 on: the last bits, not another training
    models, _, results = run_batched(tmp_path)  # 0 and 1 batched from step 2, 2 loaded
    assert results[2].final_step == CFG.steps
    for model, ref in zip(models[:2], reference[:2]):  # a group of 2, not 3: other kernels
        assert max((model.state_dict()[k] - v).abs().max().item()
                   for k, v in ref.state_dict().items()) < 1e-3
    stamps = {s: (tmp_path / f"seed_{s}" / FINAL_FILE).stat().st_mtime_ns for s in SEEDS}
    run_batched(tmp_path)
    assert stamps == {s: (tmp_path / f"seed_{s}" / FINAL_FILE).stat().st_mtime_ns
                      for s in SEEDS}


def test_replicates_of_other_shapes_are_refused() -> None:
    with pytest.raises(ConfigError, match="same parameter names and shapes"):
        Replicates([build_model("tiny", seed=0), build_model("cpu", seed=0)], [None, None])


def test_the_switch(tmp_path: Path) -> None:
    assert batching(dataclasses.replace(CFG, batch_replicates="batched"))
    assert not batching(dataclasses.replace(CFG, batch_replicates="separate"))
    assert not batching(CFG)  # auto on the CPU: separate (slower batched there)
    assert batching(dataclasses.replace(CFG, batch_replicates="batched"), "slurm")
    if torch.cuda.is_available():
        eager = dataclasses.replace(CFG, device="cuda", step_graph="eager")
        assert batching(eager)  # auto on CUDA with eager steps: batched
        assert not batching(eager, "slurm")
        assert not batching(dataclasses.replace(CFG, device="cuda"))  # graphed steps: separate
    assert CFG.identity() == dataclasses.replace(CFG, batch_replicates="batched").identity()
    for text, problem in (("on", "quote the word"), ("sometimes", "must be auto, batched or")):
        path = tmp_path / "p.yaml"
        path.write_text(f"train:\n  batch_replicates: {text}\n")
        with pytest.raises(ConfigError, match=f"train.batch_replicates.*{problem}"):
            load_config(path)
    with pytest.raises(ConfigError, match="needs train.gpus <= 1"):
        TrainConfig(batch_replicates="batched", gpus=2, batch_size=8)
