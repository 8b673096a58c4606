"""Training loop: schedule, exact resume after interruption or crash, snapshots, stage skipping."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from ddp_worker import FakeSource

from mirl_lib.core.config import TrainConfig
from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.net.checkpoints import load_model
from mirl_lib.net.promptir import build_model
from mirl_lib.training.loop import lr_factor, train

CFG = TrainConfig(steps=8, batch_size=2, lr=1e-3, min_lr=1e-5, warmup_steps=2, device="cpu",
                  checkpoint_every=3, log_every=2, threads=1)


class CrashingSource(FakeSource):
    """Raises once when asked for ``crash_at``, like a run killed mid-way."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at, self.calls = crash_at, []

    def batch(self, step: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.calls.append(step)
        if step == self.crash_at:
            self.crash_at = -1
            raise KeyboardInterrupt
        return super().batch(step, batch_size, rank, world_size)


def run(out: Path, cfg: TrainConfig = CFG, source: FakeSource | None = None, **kw):
    model = build_model("tiny", seed=1)
    return model, train(model, cfg, source or FakeSource(), out, seed=0, **kw)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory):
    return run(tmp_path_factory.mktemp("ref"))


def assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_schedule_warmup_then_cosine(reference) -> None:
    assert [lr_factor(s, CFG) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(CFG.steps, CFG) == pytest.approx(CFG.min_lr / CFG.lr)
    mid = CFG.warmup_steps + (CFG.steps - CFG.warmup_steps) / 2
    assert lr_factor(int(mid), CFG) == pytest.approx((1 + CFG.min_lr / CFG.lr) / 2)
    _, result = reference
    history = result.history
    assert list(history["step"]) == [2, 4, 6, 8]
    # lr logged at step s is the one used for global step s - 1
    expected = [CFG.lr * lr_factor(s - 1, CFG) for s in history["step"]]
    assert history["lr"].tolist() == pytest.approx(expected, rel=1e-9)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    assert result.final_step == CFG.steps and result.seconds > 0


def test_outputs_and_stage_skipping(tmp_path: Path, reference) -> None:
    model, result = run(tmp_path, snapshot_steps=(0, 5))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["final.pt", "history.csv", "state.pt", "weights_step0.pt", "weights_step5.pt"]
    assert_same(model, reference[0])
    assert_same(load_model(tmp_path / "weights_step0.pt")[0], build_model("tiny", seed=1))
    final, meta = load_model(tmp_path / "final.pt")
    assert_same(final, model) and meta["final_step"] == CFG.steps
    source = CrashingSource(crash_at=0)
    again, skipped = run(tmp_path, source=source)
    assert source.calls == []
    assert_same(again, model)
    assert skipped.history.equals(result.history) and skipped.final_step == CFG.steps
    # the writes are timed: five files this time, none when a finished training is only loaded
    assert 0 < result.checkpoint_seconds < result.seconds + 10 and skipped.checkpoint_seconds == 0


def test_interrupted_run_resumes_bit_identically(tmp_path: Path, reference) -> None:
    model, partial = run(tmp_path, stop_after=5)
    assert partial.final_step == 5 and not (tmp_path / "final.pt").exists()
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 5
    source = CrashingSource(crash_at=-1)
    model, result = run(tmp_path, source=source)
    assert source.calls == [5, 6, 7]
    assert_same(model, reference[0])
    assert result.history.equals(reference[1].history)


def test_crashed_run_resumes_from_last_checkpoint(tmp_path: Path, reference) -> None:
    source = CrashingSource(crash_at=4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, source=source)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["step"] == 3
    source.calls.clear()
    model, result = run(tmp_path, source=source)
    assert source.calls == [3, 4, 5, 6, 7]
    assert_same(model, reference[0])
    assert result.history.equals(reference[1].history)


def test_late_rewind_start_step(tmp_path: Path) -> None:
    source = CrashingSource(crash_at=-1)
    _, result = run(tmp_path, source=source, start_step=4)
    assert source.calls == [4, 5, 6, 7]
    assert result.history["lr"].iloc[0] == pytest.approx(CFG.lr * lr_factor(5, CFG))


def test_resume_refuses_a_changed_run(tmp_path: Path) -> None:
    run(tmp_path, stop_after=3)
    with pytest.raises(CheckpointError, match=r"state\.pt.*lr="):
        run(tmp_path, cfg=dataclasses.replace(CFG, lr=5e-4))


def test_resume_ignores_runtime_settings(tmp_path: Path) -> None:
    """threads, log_every, checkpoint_every and device are not part of a run's identity."""
    reference = run(tmp_path / "straight")
    run(tmp_path / "resumed", stop_after=3)
    changed = dataclasses.replace(CFG, log_every=4, checkpoint_every=5, device="cpu")
    model, result = run(tmp_path / "resumed", cfg=changed)
    assert result.final_step == CFG.steps
    assert_same(model, reference[0])  # same weights, bit for bit
    run(tmp_path / "threads", stop_after=3)
    _, result = run(tmp_path / "threads", cfg=dataclasses.replace(CFG, threads=2))
    assert result.final_step == CFG.steps


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="start_step"):
        run(tmp_path, start_step=CFG.steps)
    with pytest.raises(ConfigError, match="log_every"):
        run(tmp_path, cfg=dataclasses.replace(CFG, log_every=0))
    assert not any(tmp_path.iterdir())


def test_mask_keeps_pruned_weights_zero(tmp_path: Path) -> None:
    model = build_model("tiny", seed=1)
    mask = {name: torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) > 0.5
            for name, p in model.named_parameters() if p.dim() == 4}
    train(model, dataclasses.replace(CFG, steps=4), FakeSource(), tmp_path, seed=0, mask=mask)
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        assert torch.count_nonzero(params[name].detach()[~keep]) == 0, name
    assert math.isfinite(float(params["output.weight"].detach().abs().sum()))


def test_ssim_term_is_skimage_ssim() -> None:
    """The loss's SSIM equals the reported metric (skimage, 7x7 window) on the same images."""
    import numpy as np
    from skimage.metrics import structural_similarity

    from mirl_lib.training.losses import restoration_loss, ssim_map

    rng = np.random.default_rng(0)
    clean = rng.random((40, 52, 3))
    noisy = np.clip(clean + rng.normal(0, 0.1, clean.shape), 0, 1)
    expected = structural_similarity(clean, noisy, data_range=1.0, channel_axis=-1)
    as_batch = lambda a: torch.from_numpy(a).permute(2, 0, 1)[None]  # noqa: E731
    assert ssim_map(as_batch(noisy), as_batch(clean)).mean().item() == pytest.approx(expected,
                                                                                     abs=1e-9)
    l1 = float(np.abs(noisy - clean).mean())
    assert restoration_loss(as_batch(noisy), as_batch(clean)).item() == pytest.approx(l1)
    assert restoration_loss(as_batch(noisy), as_batch(clean), 0.5).item() == pytest.approx(
        l1 + 0.5 * (1 - expected))


def test_psnr_term_is_minus_each_images_psnr() -> None:
    """``psnr_weight``'s term is the batch mean of minus each image's PSNR as skimage scores it,
    so a lightly degraded image weighs as much as a heavily degraded one (under L1 it weighs
    less)."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio

    from mirl_lib.training.losses import restoration_loss

    rng = np.random.default_rng(1)
    clean = rng.uniform(0.2, 0.8, (2, 24, 20, 3))
    restored = clean + rng.normal(0, 1, clean.shape) * np.array([0.01, 0.1])[:, None, None, None]
    psnrs = [peak_signal_noise_ratio(c, r, data_range=1.0) for c, r in zip(clean, restored)]
    as_batch = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    l1 = float(np.abs(restored - clean).mean())
    loss = restoration_loss(as_batch(restored), as_batch(clean), psnr_weight=0.1)
    assert loss.item() == pytest.approx(l1 - 0.1 * np.mean(psnrs), abs=1e-4)  # the 1e-8 guard
    with_ssim = restoration_loss(as_batch(restored), as_batch(clean), 0.5, 0.1).item()
    assert loss.item() < with_ssim < loss.item() + 0.5
    # each image's gradient is its error over its MSE: the light image (errors ten times
    # smaller) pulls with a hundred times the weight per unit of error of the heavy one
    x = as_batch(restored).clone().requires_grad_(True)
    restoration_loss(x, as_batch(clean), psnr_weight=1e6).backward()  # the L1 term negligible
    light, heavy = (x.grad[i].abs().sum() / (x.detach()[i] - as_batch(clean)[i]).abs().sum()
                    for i in (0, 1))
    assert float(light / heavy) == pytest.approx(100.0, rel=0.1)


def test_ssim_weight_and_cpu_layout_change_training_but_not_old_hashes(tmp_path: Path) -> None:
    """Both options train (and differ from the L1 / contiguous run); at their defaults they leave
    the identity of every earlier run unchanged."""

    assert "ssim_weight" not in CFG.identity() and "cpu_channels_last" not in CFG.identity()
    assert "psnr_weight" not in CFG.identity()
    assert dataclasses.replace(CFG, psnr_weight=0.01).identity()["psnr_weight"] == 0.01
    with pytest.raises(ConfigError, match="train.psnr_weight"):
        dataclasses.replace(CFG, psnr_weight=-1.0)
    assert dataclasses.replace(CFG, ssim_weight=0.5).identity()["ssim_weight"] == 0.5
    with pytest.raises(ConfigError, match="train.ssim_weight"):
        dataclasses.replace(CFG, ssim_weight=-1.0)
    short = dataclasses.replace(CFG, steps=3, checkpoint_every=3)
    base, _ = run(tmp_path / "l1", cfg=short)
    for name, cfg in (("ssim", dataclasses.replace(short, ssim_weight=0.5)),
                      ("psnr", dataclasses.replace(short, psnr_weight=0.01)),
                      ("layout", dataclasses.replace(short, cpu_channels_last=True))):
        model, result = run(tmp_path / name, cfg=cfg)
        assert result.final_step == 3
        state = model.state_dict()
        assert all(torch.isfinite(v).all() for v in state.values()), name
        assert all(v.is_contiguous() for v in state.values()), name  # layout restored after
        if name in ("ssim", "psnr"):
            assert not all(torch.equal(state[k], base.state_dict()[k]) for k in state)


def test_loss_formula_names_every_term() -> None:
    from mirl_lib.report.summary import loss_formula

    assert loss_formula(CFG) == "L1"
    both = dataclasses.replace(CFG, psnr_weight=0.01, ssim_weight=0.5)
    assert loss_formula(both) == "L1 + 0.01 (-PSNR) + 0.5 (1 - SSIM)"
