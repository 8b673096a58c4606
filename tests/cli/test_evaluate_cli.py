"""``python -m mirl_lib evaluate``: any checkpoint on the configured test sets, the study's scores,
the paper's table, one error line per failure."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from mirl_lib.cli.main import main
from mirl_lib.core.config import DataConfig, load_config
from mirl_lib.core.protocol import task_means
from mirl_lib.data.catalogs import PAIRED_SUFFIX, TARGET_SUFFIX, mirl_datasets
from mirl_lib.data.testset import load_test_set
from mirl_lib.evaluation.paper_table import AVERAGE, format_paper_table, paper_table
from mirl_lib.evaluation.scoring import METRICS, evaluate
from mirl_lib.files import tickets
from mirl_lib.files.images import write_rgb
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net.checkpoints import save_weights
from mirl_lib.net.promptir import PromptIR, build_model
from mirl_lib.pruning import masks
from mirl_lib.pruning.rules import random_mask

ROOT = CHECKOUT
SIGMAS = (15, 25, 50)


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """A smooth photo-like image (gradients plus a little texture), float32 in [0, 1]."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([0.3 + 0.4 * x, 0.2 + 0.5 * y, 0.6 - 0.3 * x * y], axis=-1)
    return np.clip(base + 0.05 * rng.random((h, w, 3)), 0, 1).astype(np.float32)


def make_layout(root: Path) -> Path:
    """A tiny copy of the published MIR-L test layout (the default ``data.*_test`` folders):
    two clean images per denoising test set, one rain pair and two haze pairs; odd sizes, so the
    protocol's crop to multiples of 16 is exercised."""
    seed = 0
    defaults = DataConfig()
    for dataset in mirl_datasets(defaults, "denoise", "test"):
        for name in ("a", "b"):
            seed += 1
            write_rgb(root / "test" / "denoise" / dataset / f"{name}.png", photo(37, 50, seed))
    for family, suffix in PAIRED_SUFFIX.items():
        for dataset in mirl_datasets(defaults, family, "test"):
            folder = root / "test" / family / dataset
            for name in (("r1",) if family == "derain" else ("h1", "h2")):
                seed += 1
                clean = photo(35, 49, seed)
                write_rgb(folder / "target" / f"{name}{TARGET_SUFFIX}.png", clean)
                write_rgb(folder / "input" / f"{name}{suffix}.png",
                          np.clip(0.7 * clean + 0.25, 0, 1))
    return root


def write_params(path: Path, preset: str, root: Path | str) -> Path:
    path.write_text(yaml.safe_dump({"model": {"preset": preset},
                                    "data": {"source": "mirl", "root": str(root)},
                                    "train": {"device": "cpu"}}))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these tiny models gain nothing from more, and on a busy 2-core machine
    two threads waiting on each other made this module 8x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_layout(tmp_path_factory.mktemp("mirl_layout") / "data")


@pytest.fixture(scope="module")
def dense() -> PromptIR:
    return build_model("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, dense: PromptIR) -> dict[str, Path]:
    """A ticket (half of every prunable tensor kept), a plain state_dict, a mirl weights file and
    a Lightning-style checkpoint of the tiny model."""
    tmp = tmp_path_factory.mktemp("checkpoints")
    half = {n: (torch.arange(m.numel()) < m.numel() // 2).reshape(m.shape)
            for n, m in masks.full_mask(dense).items()}
    mask = random_mask(half, seed=3)
    state = {n: t * mask[n] if n in mask else t for n, t in dense.state_dict().items()}
    tickets.export_ticket(state, mask, tmp / "tiny.mirl", {"model_config": asdict(dense.config)})
    torch.save(dense.state_dict(), tmp / "plain.pt")
    torch.save({"epoch": 3, "state_dict": {f"net.{k}": v for k, v in dense.state_dict().items()}},
               tmp / "lightning.ckpt")
    torch.save(state, tmp / "masked_state.pt")
    save_weights(dense, tmp / "weights.pt")
    return {"ticket": tmp / "tiny.mirl", "plain": tmp / "plain.pt", "weights": tmp / "weights.pt",
            "lightning": tmp / "lightning.ckpt", "masked_state": tmp / "masked_state.pt"}


def masked_model(files: dict[str, Path]) -> PromptIR:
    model = build_model("tiny")
    model.load_state_dict(torch.load(files["masked_state"], weights_only=True))
    return model.eval()


def read_scores(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def expected_columns(items: list) -> list[str]:
    """The paper's column order for the generated layout."""
    noisy = list(dict.fromkeys(i.dataset for i in items if i.task.startswith("denoise_")))
    return (["dehaze SOTS", "derain Rain100L"]
            + [f"{d} sigma{s}" for d in noisy for s in SIGMAS] + [AVERAGE])


def restored_cells(stdout: str) -> list[str]:
    line = next(line for line in stdout.splitlines() if line.startswith("restored "))
    return line.split()[1:]


# ---------------------------------------------------------------------------------------------
# The command on a generated copy of the published layout


@pytest.mark.parametrize("kind", ["ticket", "plain", "weights", "lightning"])
def test_scores_equal_evaluate_on_the_same_model(
        kind: str, tmp_path: Path, layout: Path, files: dict[str, Path], dense: PromptIR,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the plain state_dict is scored with a params file of another preset, so --preset decides
    params = write_params(tmp_path / "p.yaml", "cpu" if kind == "plain" else "tiny", layout)
    extra = ["--preset", "tiny"] if kind == "plain" else []
    out = tmp_path / "scores.csv"
    assert main(["evaluate", "--checkpoint", str(files[kind]), "--params", str(params),
                 "--device", "cpu", "-o", str(out), *extra]) == 0
    stdout = capsys.readouterr().out

    cfg = load_config(params)
    items = load_test_set(cfg.data, seed=cfg.data.test_seed)
    model = masked_model(files) if kind == "ticket" else dense
    direct = evaluate(model, items)
    got = read_scores(out)
    fmt = {"ticket": "ticket", "plain": "state_dict", "weights": "mirl-weights",
           "lightning": "lightning"}[kind]
    assert list(got.columns) == ["checkpoint", "format", *direct.columns]
    assert set(got["checkpoint"]) == {str(files[kind])} and set(got["format"]) == {fmt}
    pd.testing.assert_frame_equal(got[list(direct.columns)], direct)
    assert {"BSD68", "Urban100", "Rain100L", "SOTS"} <= set(got["dataset"])

    header = next(line for line in stdout.splitlines() if "dehaze SOTS" in line)
    columns = expected_columns(items)
    assert [header.index(c) for c in columns] == sorted(header.index(c) for c in columns)
    table = paper_table(direct)
    assert list(table.columns) == columns
    assert restored_cells(stdout) == [f"{table.at['psnr', c]:.2f}/{table.at['ssim', c]:.3f}"
                                      for c in columns]
    average = task_means(direct).set_index("task").loc["all-in-one"]
    assert restored_cells(stdout)[-1] == f"{average['psnr']:.2f}/{average['ssim']:.3f}"


def test_ticket_scores_its_masked_weights(tmp_path: Path, layout: Path, files: dict[str, Path],
                                          dense: PromptIR) -> None:
    params = write_params(tmp_path / "p.yaml", "tiny", layout)
    for kind in ("ticket", "plain"):
        assert main(["evaluate", "--checkpoint", str(files[kind]), "--params", str(params),
                     "--device", "cpu", "-o", str(tmp_path / f"{kind}.csv")]) == 0
    ticket, plain = read_scores(tmp_path / "ticket.csv"), read_scores(tmp_path / "plain.csv")
    assert list(ticket["image"]) == list(plain["image"])
    assert (ticket["psnr"] - plain["psnr"]).abs().max() > 1e-3  # the mask changed the network
    pd.testing.assert_series_equal(ticket["input_psnr"], plain["input_psnr"])


def test_a_structured_ticket_is_scored_at_its_own_widths(tmp_path: Path, layout: Path,
                                                         dense: PromptIR) -> None:
    """A ticket of a physically narrower network (``net.structured``) needs nothing else."""
    from mirl_lib.net import structured
    from mirl_lib.pruning import channels

    table = channels.groups(dense)
    state = dense.state_dict()
    removed = channels.cut(state, table, channels.empty_selection(table),
                           sum(v.numel() for v in state.values()) // 2)
    narrow = structured.build(dense.config, channels.prune_state(state, table, removed)).eval()
    tickets.export_ticket(narrow.state_dict(), masks.full_mask(narrow), tmp_path / "narrow.mirl",
                          {"model_config": asdict(dense.config), structured.STRUCTURED: True})
    params = write_params(tmp_path / "p.yaml", "tiny", layout)
    assert main(["evaluate", "--checkpoint", str(tmp_path / "narrow.mirl"), "--params",
                 str(params), "--device", "cpu", "-o", str(tmp_path / "narrow.csv")]) == 0
    scores = read_scores(tmp_path / "narrow.csv")
    direct = evaluate(narrow, load_test_set(load_config(params).data, seed=0))
    np.testing.assert_allclose(scores["psnr"], direct["psnr"], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_data_root_and_tiles(tmp_path: Path, layout: Path, files: dict[str, Path],
                             dense: PromptIR) -> None:
    params = write_params(tmp_path / "p.yaml", "tiny", tmp_path / "elsewhere")
    out = tmp_path / "tiled.csv"
    assert main(["evaluate", "--checkpoint", str(files["plain"]), "--params", str(params),
                 "--data-root", str(layout), "--tile", "16", "--overlap", "4", "--device", "cpu",
                 "-o", str(out)]) == 0
    cfg = load_config(params, {"data": {"root": str(layout)}})
    items = load_test_set(cfg.data, seed=cfg.data.test_seed)
    got = read_scores(out)
    pd.testing.assert_frame_equal(got[["task", "dataset", "image", "photo", *METRICS]],
                                  evaluate(dense, items, tile=16, overlap=4))
    assert not np.allclose(got["psnr"], evaluate(dense, items)["psnr"])  # whole images differ


def test_bundled_smoke_params(tmp_path: Path, files: dict[str, Path],
                              capsys: pytest.CaptureFixture[str]) -> None:
    smoke = ROOT / "params" / "smoke.yaml"
    out = tmp_path / "smoke.csv"
    assert main(["evaluate", "--checkpoint", str(files["ticket"]), "--params", str(smoke),
                 "--device", "cpu", "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    cfg = load_config(smoke)
    direct = evaluate(masked_model(files), load_test_set(cfg.data, seed=cfg.data.test_seed))
    pd.testing.assert_frame_equal(read_scores(out)[list(direct.columns)], direct)
    table = paper_table(direct)
    assert list(table.columns) == ["dehaze bundled", "derain bundled", "bundled sigma15",
                                   "bundled sigma25", "bundled sigma50", AVERAGE]
    assert restored_cells(stdout) == [f"{table.at['psnr', c]:.2f}/{table.at['ssim', c]:.3f}"
                                      for c in table.columns]


# ---------------------------------------------------------------------------------------------
# Failures: one error line, exit 2; Ctrl-C: one line, exit 130


def test_missing_dataset_folder(tmp_path: Path, layout: Path, files: dict[str, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    partial = shutil.copytree(layout, tmp_path / "data")
    shutil.rmtree(partial / "test" / "dehaze" / "SOTS")
    params = write_params(tmp_path / "p.yaml", "tiny", partial)
    out = tmp_path / "scores.csv"
    assert main(["evaluate", "--checkpoint", str(files["ticket"]), "--params", str(params),
                 "--device", "cpu", "-o", str(out)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert str(partial / "test" / "dehaze" / "SOTS") in line and str(params) in line
    assert "--data-root" in line and not out.exists()


@pytest.mark.parametrize("kind, preset, problem", [
    ("ticket", "cpu", "checkpoint holds a 'tiny' model but a 'cpu' model was expected"),
    ("plain", "cpu", "does not fit the 'cpu' model"),
    ("lightning", "paper", "it looks like preset 'tiny'"),
])
def test_checkpoint_of_another_preset(tmp_path: Path, layout: Path, files: dict[str, Path],
                                      capsys: pytest.CaptureFixture[str], kind: str, preset: str,
                                      problem: str) -> None:
    params = write_params(tmp_path / "p.yaml", preset, layout)
    assert main(["evaluate", "--checkpoint", str(files[kind]), "--params", str(params),
                 "--device", "cpu"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {files[kind]}: ") and problem in line


def test_ticket_refuses_a_preset_it_does_not_hold(tmp_path: Path, layout: Path,
                                                  files: dict[str, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    params = write_params(tmp_path / "p.yaml", "tiny", layout)
    assert main(["evaluate", "--checkpoint", str(files["ticket"]), "--params", str(params),
                 "--preset", "cpu", "--device", "cpu"]) == 2
    assert "'cpu' model was expected" in one_error_line(capsys.readouterr().err)


def test_bad_inputs_are_one_line(tmp_path: Path, layout: Path, files: dict[str, Path],
                                 capsys: pytest.CaptureFixture[str]) -> None:
    params = write_params(tmp_path / "p.yaml", "tiny", layout)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  preset: tiny\ndata:\n  source: mirl\n  colour: red\n")
    (tmp_path / "blocker").write_text("a file")
    cases = [
        (["--checkpoint", str(tmp_path / "absent.mirl"), "--params", str(params)],
         f"{tmp_path / 'absent.mirl'}: ticket file not found"),
        (["--checkpoint", str(files["plain"]), "--params", str(bad)], f"{bad}: data: unknown key"),
        (["--checkpoint", str(files["plain"]), "--params", str(tmp_path / "none.yaml")],
         f"{tmp_path / 'none.yaml'}: "),
        (["--checkpoint", str(files["plain"]), "--params", str(params), "--tile", "20"],
         "tile=20"),
        (["--checkpoint", str(files["plain"]), "--params", str(params), "-o",
          str(tmp_path / "blocker" / "s.csv")], "blocker: cannot be the output folder"),
        (["--checkpoint", str(files["plain"]), "--params", str(params), "-o", str(tmp_path)],
         f"{tmp_path}: is a folder"),
        (["--checkpoint", str(files["plain"]), "--params", str(params), "--preset", "huge"],
         "unknown preset 'huge'"),
    ]
    for argv, problem in cases:
        assert main(["evaluate", *argv, "--device", "cpu"]) == 2, argv
        assert problem in one_error_line(capsys.readouterr().err), argv


@pytest.mark.slow
def test_subprocess_error_is_one_line_exit_2(tmp_path: Path, files: dict[str, Path]) -> None:
    params = write_params(tmp_path / "p.yaml", "tiny", tmp_path / "no_data")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mirl_lib", "evaluate", "--checkpoint",
                           str(files["ticket"]), "--params", str(params), "--device", "cpu"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 2 and done.stdout == ""
    assert str(tmp_path / "no_data" / "test") in one_error_line(done.stderr)


def test_ctrl_c_is_one_line(tmp_path: Path, layout: Path, files: dict[str, Path],
                            monkeypatch: pytest.MonkeyPatch,
                            capsys: pytest.CaptureFixture[str]) -> None:
    import mirl_lib.evaluation.scoring

    real, calls = mirl_lib.evaluation.scoring.restore_image, []

    def stop_at_third(*args: object, **kwargs: object) -> np.ndarray:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr("mirl_lib.evaluation.scoring.restore_image", stop_at_third)
    params = write_params(tmp_path / "p.yaml", "tiny", layout)
    out = tmp_path / "scores.csv"
    try:
        code = main(["evaluate", "--checkpoint", str(files["ticket"]), "--params", str(params),
                     "--device", "cpu", "-o", str(out)])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main()")
    assert code == 130 and not out.exists()
    err = capsys.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    total = len(load_test_set(load_config(params).data, seed=0))
    assert err.strip().splitlines()[-1] == (
        f"interrupted: 2 of {total} images scored; nothing written; rerun the same command to "
        f"score again")


def test_out_of_memory_says_how_to_need_less(tmp_path: Path, layout: Path,
                                             files: dict[str, Path],
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:

    def no_memory(*args: object, **kwargs: object) -> np.ndarray:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("mirl_lib.evaluation.scoring.restore_image", no_memory)
    params = write_params(tmp_path / "p.yaml", "tiny", layout)
    assert main(["evaluate", "--checkpoint", str(files["ticket"]), "--params", str(params),
                 "--device", "cpu"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the cleared progress bar
    total = len(load_test_set(load_config(params).data, seed=0))
    assert last == (f"error: {files['ticket']}: out of memory on cpu after 0 of {total} images "
                    f"scored; run again with --tile 256 (tiled scores differ slightly from the "
                    f"study's whole-image ones)")


# ---------------------------------------------------------------------------------------------
# The paper's table


def scores_frame(rows: list[tuple[str, str, float, float]]) -> pd.DataFrame:
    return pd.DataFrame([{"task": t, "dataset": d, "image": f"i{n}", "psnr": p, "ssim": s,
                          "input_psnr": p - 5, "input_ssim": s / 2}
                         for n, (t, d, p, s) in enumerate(rows)])


def test_paper_table_order_and_average() -> None:
    # scores in load_test_set's order (task, dataset, name); two denoising test sets
    rows = [("dehaze", "SOTS", 30.0, 0.90), ("dehaze", "SOTS", 32.0, 0.94)]
    for sigma, base in zip(SIGMAS, (34.0, 31.0, 28.0)):
        rows += [(f"denoise_{sigma}", "BSD68", base, 0.9), (f"denoise_{sigma}", "Urban100",
                                                            base + 2, 0.8),
                 (f"denoise_{sigma}", "Urban100", base + 4, 0.8)]
    rows += [("derain", "Rain100L", 36.0, 0.97)]
    df = scores_frame(rows)
    table = paper_table(df)
    assert list(table.columns) == ["dehaze SOTS", "derain Rain100L", "BSD68 sigma15",
                                   "BSD68 sigma25", "BSD68 sigma50", "Urban100 sigma15",
                                   "Urban100 sigma25", "Urban100 sigma50", AVERAGE]
    assert list(table.index) == ["images", *METRICS]
    assert table.at["psnr", "dehaze SOTS"] == pytest.approx(31.0)
    assert table.at["psnr", "Urban100 sigma25"] == pytest.approx(34.0)
    assert table.at["images", "Urban100 sigma50"] == 2 and table.at["images", AVERAGE] == 12
    # the average is the study's all-in-one: a task's test sets pooled by image, tasks equal
    all_in_one = task_means(df).set_index("task").loc["all-in-one"]
    for metric in METRICS:
        assert table.at[metric, AVERAGE] == pytest.approx(all_in_one[metric])
    denoise_15 = np.mean([34.0, 36.0, 38.0])
    assert table.at["psnr", AVERAGE] == pytest.approx(
        np.mean([31.0, 36.0, denoise_15, np.mean([31, 33, 35]), np.mean([28, 30, 32])]))


def test_paper_average_is_the_column_mean_with_one_test_set_per_task() -> None:
    rows = [("denoise_50", "BSD68", 26.0, 0.7), ("denoise_15", "BSD68", 33.0, 0.92),
            ("denoise_15", "BSD68", 35.0, 0.94), ("denoise_25", "BSD68", 30.0, 0.85),
            ("derain", "Rain100L", 36.0, 0.97), ("dehaze", "SOTS", 30.0, 0.95)]
    table = paper_table(scores_frame(rows))
    assert list(table.columns) == ["dehaze SOTS", "derain Rain100L", "BSD68 sigma15",
                                   "BSD68 sigma25", "BSD68 sigma50", AVERAGE]
    columns = table.drop(columns=AVERAGE)
    assert table.at["psnr", AVERAGE] == pytest.approx(columns.loc["psnr"].mean())
    assert table.at["ssim", AVERAGE] == pytest.approx(columns.loc["ssim"].mean())


def test_format_paper_table() -> None:
    rows = [("dehaze", "SOTS", 30.123, 0.9124), ("derain", "Rain100L", 36.0, 0.97)]
    text = format_paper_table(paper_table(scores_frame(rows)), name="ticket")
    lines = text.splitlines()
    assert lines[0].split() == ["dehaze", "SOTS", "derain", "Rain100L", "average"]
    assert lines[1].split() == ["images", "1", "1", "2"]
    assert lines[2].split() == ["ticket", "30.12/0.912", "36.00/0.970", "33.06/0.941"]
    assert lines[3].split() == ["degraded", "input", "25.12/0.456", "31.00/0.485", "28.06/0.471"]
    assert "mean of the per-task means" in lines[4]
    with pytest.raises(ValueError, match="no scores"):
        paper_table(scores_frame([]))
