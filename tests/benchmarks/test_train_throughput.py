"""``benchmarks/train_throughput.py``: its rows, its CSV merge, failing options, its imports."""
from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest
import torch
from script_loader import script_fixture

from mirl_lib.core import allocator
from mirl_lib.core.device import device_name
from mirl_lib.files.paths import CHECKOUT

ROOT = CHECKOUT
SCRIPT = ROOT / "benchmarks" / "train_throughput.py"
bench = script_fixture(SCRIPT, "train_throughput")


@pytest.fixture()
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the benchmark sets --threads for the whole process


def tiny_run(out: Path, *extra: str) -> list[str]:
    return ["--device", "cpu", "--preset", "tiny", "--batch", "2", "--patch", "32", "--steps", "2",
            "--warmup", "1", "--threads", "1", "--out", str(out), *extra]


def test_rows_and_merge_keep_other_devices(bench: ModuleType, tmp_path: Path, one_thread: None,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.csv"
    facts = {"device": "cuda", "device_name": "Some GPU", "torch": "2.11.0+cu130",
             "preset": "tiny", "parameters": 1, "batch": 2, "patch": 32, "option": "fp32",
             "step_ms": 1.0, "images_per_s": 2000.0, "peak_mem_mb": 10.0,
             "mem_kind": "torch.cuda.max_memory_allocated", "threads": 1, "note": ""}
    cpu_name = device_name(torch.device("cpu"))
    now = allocator.apply("auto")  # what the run's rows will say (tuned on glibc)
    other = allocator.SYSTEM if now == allocator.TUNED else allocator.TUNED
    capability = torch.backends.cpu.get_cpu_capability()
    cpu = {**facts, "device": "cpu", "device_name": cpu_name, "note": "old", "malloc": now,
           "cpu_capability": capability}
    old = pd.DataFrame([{**facts, "malloc": now, "cpu_capability": "not applicable"},  # a GPU
                        {**cpu, "option": "fp32"},  # the same device and settings: replaced
                        {**cpu, "option": "fp32", "malloc": other},  # another allocator: kept
                        {**cpu, "option": "bf16"},  # another option: kept
                        {**cpu, "option": "channels_last", "threads": 2},  # other threads: kept
                        # the same model name, another instruction set: another machine, kept
                        {**cpu, "option": "fp32", "cpu_capability": "NOT_" + capability}])
    old.to_csv(out, index=False)
    assert bench.main(tiny_run(out, "--options", "fp32,channels_last")) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(table.columns) == list(bench.COLUMNS)
    assert list(table["option"]) == ["fp32", "fp32", "bf16", "channels_last", "fp32", "fp32",
                                     "channels_last"]
    assert table["cpu_capability"].tolist()[-3:] == ["NOT_" + capability, capability, capability]
    assert list(table["malloc"]) == [now, other, now, now, now, now, now]
    assert list(table["device_name"][:5]) == ["Some GPU"] + [cpu_name] * 4
    assert list(table["threads"][:5]) == [1, 1, 1, 2, 1] and set(table["note"][1:5]) == {"old"}
    new = table.iloc[5:]
    assert (new["page_faults"] >= 0).all()
    assert set(new["device"]) == {"cpu"} and set(new["preset"]) == {"tiny"}
    assert set(new["threads"]) == {1} and set(new["batch"]) == {2} and set(new["patch"]) == {32}
    assert set(new["torch"]) == {torch.__version__}
    assert (new["parameters"] == sum(p.numel() for p in
                                     bench.build_model("tiny").parameters())).all()
    assert (new["step_ms"] > 0).all() and (new["peak_mem_mb"] > 0).all()
    for row in new.itertuples():
        assert row.images_per_s == pytest.approx(2 / row.step_ms * 1000, rel=0.01)
        assert row.mem_kind.startswith("process peak RSS") and "first step" in row.note
    assert "where train.cpu_channels_last is set" in new["note"].iloc[1]
    # when and on how fast a machine: each new row probed, the rows from before the columns not
    assert (new["gemm_gflops"] > 0).all()
    assert new["measured"].str.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\dZ").all()
    assert table["gemm_gflops"][:5].isna().all() and table["measured"][:5].isna().all()
    # a CSV from before the allocator column: its rows had glibc's allocator as it comes
    old.drop(columns=["malloc"]).to_csv(out, index=False)
    assert set(bench.merge(new, out)["malloc"].iloc[:5]) == {allocator.SYSTEM}
    # from before the instruction-set column: a CPU row's is unknown, so a rerun keeps it
    old.drop(columns=["cpu_capability"]).to_csv(out, index=False)
    merged = bench.merge(new, out)
    assert merged["cpu_capability"].tolist() == [
        "not applicable", *["not recorded"] * 5, capability, capability]
    assert "fp32" in printed and "channels_last" in printed and str(out) in printed


def test_a_failing_option_is_recorded(bench: ModuleType, tmp_path: Path, one_thread: None,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(model: torch.nn.Module, **kwargs: object) -> torch.nn.Module:
        raise RuntimeError("inductor needs a C++ compiler\nsecond line of the log")

    monkeypatch.setattr(bench.torch, "compile", no_compiler)
    out = tmp_path / "throughput.csv"
    assert bench.main(tiny_run(out, "--options", "fp32+compile,fp32+fused_adamw")) == 0
    table = pd.read_csv(out)
    failed, fused = table.iloc[0], table.iloc[1]
    assert failed["option"] == "fp32+compile" and math.isnan(failed["step_ms"])
    assert failed["note"] == ("failed: RuntimeError: inductor needs a C++ compiler second line "
                              "of the log")
    assert fused["step_ms"] > 0 and "AdamW(f" in fused["note"]


def test_the_mask_is_kept(bench: ModuleType) -> None:
    model = bench.build_model("tiny", seed=0)
    mask = bench.benchmark_mask(model)
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert kept == pytest.approx(bench.DENSITY, abs=0.01)
    for option in (bench.Option("fp32"), bench.Option("batched", batched=True)):
        got = bench.measure(option, [model, bench.build_model("tiny", seed=1)], mask,
                            torch.device("cpu"), 2, 16, 1, 1)
        assert got.step_ms > 0 and "2 replicates" in got.note


def test_a_row_names_the_variables_that_chose_its_kernels(
        bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A row measured under ``ONEDNN_MAX_CPU_ISA`` and the like says so: its ``cpu_capability``
    alone would read as a CPU without the wider instructions."""
    model = bench.build_model("tiny", seed=0)
    mask = bench.benchmark_mask(model)
    plain = bench.measure(bench.Option("fp32"), [model], mask, torch.device("cpu"), 2, 16, 1, 1)
    here = bench.kernel_env()  # usually none is set
    assert ("kernels chosen by" in plain.note) == bool(here)
    monkeypatch.setattr(bench, "kernel_env",
                        lambda: "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2")
    capped = bench.measure(bench.Option("fp32"), [model], mask, torch.device("cpu"), 2, 16, 1, 1)
    assert "kernels chosen by ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2" in capped.note


def test_replicate_rows_and_rows_written_before_the_column(bench: ModuleType, tmp_path: Path,
                                                          one_thread: None) -> None:
    """Each option at each replicate count; a committed row without ``replicates`` stands for
    one training, and a rerun at 1 replicate replaces it."""
    out = tmp_path / "throughput.csv"
    cpu = {"device": "cpu", "device_name": device_name(torch.device("cpu")), "torch": "2.0",
           "preset": "tiny", "parameters": 1, "batch": 2, "patch": 32, "option": "fp32",
           "step_ms": 1.0, "images_per_s": 2000.0, "peak_mem_mb": 10.0, "mem_kind": "",
           "threads": 1, "note": "old", "malloc": allocator.apply("auto"),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    pd.DataFrame([cpu, {**cpu, "option": "bf16"}]).to_csv(out, index=False)
    assert bench.main(tiny_run(out, "--options", "fp32,batched", "--replicates", "1,3")) == 0
    table = pd.read_csv(out, keep_default_na=False, na_values=[""])
    assert list(table["option"]) == ["bf16", "fp32", "batched", "fp32", "batched"]
    assert list(table["replicates"]) == [1, 1, 1, 3, 3]
    new = table.iloc[1:]
    forward = bench.forward_gflop("tiny", 2, 32)
    for row in new.itertuples():
        assert row.images_per_s == pytest.approx(2 * row.replicates / row.step_ms * 1000, rel=0.01)
        assert row.gflop_per_step == pytest.approx(3 * forward * row.replicates, rel=1e-3)
        assert row.achieved_tflops == pytest.approx(row.gflop_per_step / row.step_ms, rel=0.01)
        assert math.isnan(row.peak_share)  # no known peak for this CPU
    assert table["gflop_per_step"].iloc[0] == pytest.approx(3 * forward, rel=1e-3)  # filled in
    assert "3 replicates in one batched step" in new["note"].iloc[3]
    assert "3 replicates stepped one after the other" in new["note"].iloc[2]
    assert bench.known_peak("NVIDIA H200") == 989.4 and math.isnan(bench.known_peak("AMD EPYC"))


@pytest.mark.parametrize("argv, problem", [
    (["--options", "fp32,turbo"], "unknown option(s) ['turbo']"),
    (["--patch", "20"], "--patch 20: must be a multiple of 8"),
    (["--steps", "0"], "--steps 0: must be at least 1"),
    (["--replicates", "1,x"], "--replicates '1,x': must be positive integers"),
    (["--peak-tflops", "0"], "--peak-tflops 0.0: must be positive"),
])
def test_bad_arguments_are_one_line(bench: ModuleType, tmp_path: Path, argv: list[str],
                                    problem: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.csv"
    assert bench.main(["--device", "cpu", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and problem in err[0]
    assert not out.exists()


def test_foreign_csv_is_refused(bench: ModuleType, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.csv"
    out.write_text("operation,seconds\nglobal_round,1.2\n")
    assert bench.main(tiny_run(out)) == 2
    assert f"error: {out}: not a train_throughput CSV" in capsys.readouterr().err
    assert out.read_text() == "operation,seconds\nglobal_round,1.2\n"


@pytest.mark.slow
def test_imports_no_notebook_tooling() -> None:
    """The benchmark runs on a GPU image without the notebook stack (scikit-image and scipy, which
    the training data source needs, are there)."""
    code = (f"import sys; sys.argv = ['x']; sys.path.insert(0, {str(SCRIPT.parent)!r}); "
            f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='not_main'); "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'papermill', 'jupyter', "
            "'jupyter_client', 'ipywidgets', 'IPython', 'nbformat', 'nbconvert', 'ipykernel', "
            "'matplotlib', 'seaborn'}); print(bad)")
    env = {**os.environ, "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=ROOT.parent, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_pointwise_as_gemm_keeps_the_network_and_its_parameter_names(bench: ModuleType) -> None:
    from mirl_lib.net.promptir import build_model

    model = build_model("tiny", seed=1).eval()
    before = dict(model.named_parameters())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    replaced = bench.pointwise_as_gemm(model)
    assert replaced == sum(1 for m in build_model("tiny").modules()
                           if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
                           and m.groups == 1)
    assert not any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1) and m.groups == 1
                   for m in model.modules())
    after = dict(model.named_parameters())
    assert list(after) == list(before) and all(after[n] is before[n] for n in before)
    with torch.no_grad():
        assert torch.allclose(model(x), expected, atol=1e-5)
