"""``benchmarks/reference_step.py``: the published code's mask format and its refusals (the step
itself needs the published checkout and lightning: it runs in ``scripts/gpu_check.sh``)."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
from script_loader import script_fixture

from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.promptir import build_model

ref = script_fixture(CHECKOUT / "benchmarks" / "reference_step.py", "reference_step")


def test_mask_in_the_published_format(ref: ModuleType) -> None:
    model = build_model("tiny", seed=0)
    masks = ref.reference_mask(model, 0.1)
    weights = [p for n, p in model.named_parameters() if "weight" in n]
    assert len(masks) == len(weights)
    assert all(m.shape == p.shape and m.dtype == p.dtype for m, p in zip(masks, weights))
    kept = sum(float(m.sum()) for m in masks) / sum(m.numel() for m in masks)
    assert 0.08 < kept < 0.12
    assert set(masks[0].unique().tolist()) <= {0.0, 1.0}


def test_bad_input_is_one_error_and_keeps_the_csv(ref: ModuleType, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.csv"
    out.write_text(pd.read_csv(CHECKOUT / "results" / "benchmarks" / "train_throughput.csv")
                   .to_csv(index=False))
    before = out.read_text()
    for args, problem in ((["--reference", str(tmp_path)], "no models/MIRLModel.py"),
                          (["--reference", str(tmp_path), "--density", "0"], "--density 0"),
                          (["--reference", str(tmp_path), "--patch", "20"], "multiple of 8")):
        assert ref.main([*args, "--device", "cpu", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and problem in err[0], err
    assert out.read_text() == before
