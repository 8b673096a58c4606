"""Evaluation: per-image protocol metrics and the per-task / all-in-one summary."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mirl_lib.core import protocol
from mirl_lib.evaluation.scoring import evaluate, summarize
from mirl_lib.net.promptir import build_model


@dataclass
class Item:
    task: str
    dataset: str
    name: str
    degraded: np.ndarray
    clean: np.ndarray


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def items() -> list[Item]:
    rng = np.random.default_rng(0)
    out = []
    for i, (task, dataset) in enumerate([("dehaze", "SOTS"), ("denoise_25", "BSD68"),
                                         ("denoise_25", "BSD68")]):
        clean = rng.random((32, 48, 3), dtype=np.float32)
        degraded = np.clip(clean + rng.normal(0, 0.1 * (i + 1), clean.shape), -0.2, 1.2)
        out.append(Item(task, dataset, f"img{i}", degraded.astype(np.float32), clean))
    return out


def test_identity_model_scores_like_its_input() -> None:
    data = items()
    df = evaluate(Identity(), data)
    assert list(df.columns) == ["task", "dataset", "image", "photo", "psnr", "ssim", "input_psnr",
                                "input_ssim"]
    assert list(df["image"]) == ["img0", "img1", "img2"]
    # outputs are clipped to [0, 1]; the protocol clips the input too, so scores agree
    np.testing.assert_allclose(df["psnr"], df["input_psnr"], rtol=1e-6)
    np.testing.assert_allclose(df["ssim"], df["input_ssim"], rtol=1e-5)
    assert df["input_psnr"].iloc[0] == pytest.approx(protocol.psnr(data[0].degraded, data[0].clean))


def test_promptir_scores_and_tiling() -> None:
    model = build_model("tiny", seed=0).train()
    whole = evaluate(model, items())
    assert not model.training
    assert np.isfinite(whole[["psnr", "ssim"]].to_numpy()).all()
    tiled = evaluate(model, items(), tile=16, overlap=4)
    assert (tiled["psnr"] - whole["psnr"]).abs().max() < 1.0
    assert not tiled["psnr"].equals(whole["psnr"])


def test_summary_is_the_mean_of_task_means() -> None:
    df = pd.DataFrame({"task": ["dehaze", "denoise_15", "denoise_15", "denoise_15"],
                       "dataset": ["SOTS", "BSD68", "BSD68", "BSD68"], "image": list("abcd"),
                       "psnr": [30.0, 20.0, 22.0, 24.0], "ssim": [0.9, 0.5, 0.6, 0.7],
                       "input_psnr": [10.0, 11.0, 12.0, 13.0], "input_ssim": [0.1] * 4})
    out = summarize(df).set_index("task")
    assert list(out.index) == ["denoise_15", "dehaze", "all-in-one"]
    assert out.loc["denoise_15", "psnr"] == pytest.approx(22.0)
    assert out.loc["all-in-one", "psnr"] == pytest.approx(26.0)
    assert out.loc["all-in-one", "ssim"] == pytest.approx(0.75)
    assert out["images"].tolist() == [3, 1, 4]
