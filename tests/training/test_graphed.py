"""CUDA-graph training steps (``mirl_lib.training.graphed``, ``train.step_graph``).

The switch, the portable optimizer state and the refusals run on the CPU. The tests marked
``gpu`` need a CUDA device (deselected elsewhere, see ``tests/conftest.py``; on a GPU machine:
``python -m pytest -m gpu tests``): a graphed training against an eager one from the same start,
an interrupted graphed training resumed, masks kept, and the benchmark's graph options.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
from ddp_worker import FakeSource
from script_loader import script_fixture
from torch.optim import AdamW

from mirl_lib.core.config import TrainConfig, load_config
from mirl_lib.core.errors import ConfigError
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.files.tensors import load_tensors
from mirl_lib.net.promptir import build_model
from mirl_lib.training.graphed import (
    GraphedStep,
    graphing,
    make_capturable,
    portable_optimizer_state,
)
from mirl_lib.training.loop import train

CFG = TrainConfig(steps=12, batch_size=4, lr=1e-3, min_lr=1e-5, warmup_steps=3, device="cpu",
                  checkpoint_every=4, log_every=2, threads=1)
CUDA = dataclasses.replace(CFG, device="cuda", bf16=False)
bench = script_fixture(CHECKOUT / "benchmarks" / "train_throughput.py", "train_throughput")


def test_the_switch(tmp_path: Path) -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert graphing(CFG, cuda) and not graphing(CFG, cpu)  # auto
    assert not graphing(CFG, cuda, world_size=2)  # auto under torchrun: eager
    assert not graphing(dataclasses.replace(CFG, step_graph="eager"), cuda)
    assert graphing(dataclasses.replace(CFG, step_graph="graph"), cuda)
    for device, world, why in ((cpu, 1, "runs on cpu"), (cuda, 2, "in 2 processes")):
        with pytest.raises(ConfigError, match=f"train.step_graph=graph.*{why}"):
            graphing(dataclasses.replace(CFG, step_graph="graph"), device, world)
    assert CFG.identity() == dataclasses.replace(CFG, step_graph="eager").identity()
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  step_graph: always\n")
    with pytest.raises(ConfigError, match="train.step_graph.*must be auto, graph or eager"):
        load_config(path)


def test_a_graph_on_the_cpu_is_refused(tmp_path: Path) -> None:
    model = build_model("tiny", seed=0)
    with pytest.raises(ConfigError, match="train.step_graph=graph"):
        train(model, dataclasses.replace(CFG, step_graph="graph"), FakeSource(), tmp_path,
              seed=0)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    optimizer = AdamW(model.parameters())
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedStep(lambda x: x.sum(), optimizer)(torch.zeros(2))


def test_the_step_mode_is_recorded(tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, steps=2, warmup_steps=1)
    first = train(build_model("tiny", seed=0), cfg, FakeSource(), tmp_path, seed=0)
    again = train(build_model("tiny", seed=0), cfg, FakeSource(), tmp_path, seed=0)  # finished
    assert first.step_graph == again.step_graph == "eager"
    assert load_tensors(tmp_path / "final.pt")["meta"]["step_graph"] == "eager"


def test_capturable_state_loads_into_an_eager_optimizer_and_back() -> None:
    model = build_model("tiny", seed=0)
    optimizer = AdamW(model.parameters(), lr=3e-4, weight_decay=1e-4)
    model(torch.rand(1, 3, 16, 16)).sum().backward()
    optimizer.step()
    make_capturable(optimizer)
    group = optimizer.param_groups[0]
    assert group["capturable"] and isinstance(group["lr"], torch.Tensor)
    assert float(group["lr"]) == pytest.approx(3e-4)
    saved = portable_optimizer_state(optimizer)
    assert saved["param_groups"][0]["lr"] == pytest.approx(3e-4)
    assert saved["param_groups"][0]["capturable"] is False
    assert isinstance(optimizer.param_groups[0]["lr"], torch.Tensor)  # the live one is unchanged
    eager = AdamW(build_model("tiny", seed=1).parameters(), lr=1.0)
    eager.load_state_dict(saved)
    assert eager.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert not eager.param_groups[0]["capturable"]
    first = next(iter(optimizer.state.values()))
    loaded = next(iter(eager.state.values()))
    assert torch.equal(first["exp_avg"], loaded["exp_avg"])
    assert float(loaded["step"]) == 1.0


# ---------------------------------------------------------------------------------------------
# On a CUDA device


def _mask(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {n: torch.rand(p.shape, generator=gen) > 0.7
            for n, p in model.named_parameters() if p.dim() == 4}


def _train(out: Path, cfg: TrainConfig, **kw) -> tuple[torch.nn.Module, object]:
    model = build_model("tiny", seed=1)
    mask = _mask(model)
    result = train(model, cfg, FakeSource(), out, seed=0, mask=mask, **kw)
    return model.cpu(), result


def _distance(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return math.sqrt(sum(float((sa[k].float() - sb[k].float()).pow(2).sum()) for k in sa))


@pytest.mark.gpu
def test_graphed_training_follows_the_eager_one(tmp_path: Path) -> None:
    for bf16 in (False, True):
        cfg = dataclasses.replace(CUDA, bf16=bf16)
        graphed, g = _train(tmp_path / f"graph{bf16}", dataclasses.replace(cfg, step_graph="graph"))
        eager, e = _train(tmp_path / f"eager{bf16}", dataclasses.replace(cfg, step_graph="eager"))
        other_seed = build_model("tiny", seed=2)
        start = build_model("tiny", seed=1)
        moved = _distance(eager, start)
        assert moved > 0
        # the same training up to float rounding: far closer than how far training moved them
        assert _distance(graphed, eager) < 1e-2 * moved, (bf16, _distance(graphed, eager), moved)
        assert _distance(graphed, eager) < 1e-3 * _distance(eager, other_seed)
        assert list(g.history["lr"]) == pytest.approx(list(e.history["lr"]), rel=1e-12)
        assert list(g.history["loss"]) == pytest.approx(list(e.history["loss"]), rel=2e-2)
        params = dict(graphed.named_parameters())
        for name, keep in _mask(build_model("tiny", seed=1)).items():
            assert torch.count_nonzero(params[name].detach()[~keep]) == 0, name


@pytest.mark.gpu
def test_interrupted_graphed_training_resumes(tmp_path: Path) -> None:
    cfg = dataclasses.replace(CUDA, step_graph="graph")
    straight, _ = _train(tmp_path / "straight", cfg)
    out = tmp_path / "cut"
    _train(out, cfg, stop_after=6)
    state = load_tensors(out / "state.pt")
    assert state["step"] == 6
    group = state["optimizer"]["param_groups"][0]
    assert isinstance(group["lr"], float) and group["capturable"] is False  # eager format
    resumed, result = _train(out, cfg)
    assert result.final_step == 12 and result.step_graph == "graph"
    assert _distance(resumed, straight) < 1e-3 * _distance(straight, build_model("tiny", seed=1))
    # and an eager run resumes a graphed one's state
    out2 = tmp_path / "cut_eager"
    _train(out2, cfg, stop_after=6)
    eager, _ = _train(out2, dataclasses.replace(cfg, step_graph="eager"))
    assert _distance(eager, straight) < 1e-2 * _distance(straight, build_model("tiny", seed=1))


@pytest.mark.gpu
def test_benchmark_graph_options(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "throughput.csv"
    options = "fp32,fp32+cuda_graph,bf16+channels_last+cuda_graph,bf16+batched+cuda_graph"
    assert bench.main(["--device", "cuda", "--preset", "tiny", "--batch", "2", "--patch", "32",
                       "--steps", "3", "--warmup", "5", "--options", options,
                       "--replicates", "1,2", "--out", str(out)]) == 0
    rows = pd.read_csv(out).set_index(["option", "replicates"])
    for option in ("fp32+cuda_graph", "bf16+channels_last+cuda_graph"):
        for count in (1, 2):
            row = rows.loc[(option, count)]
            assert row["step_ms"] > 0 and "failed" not in row["note"], (option, count, row["note"])
