"""Data sources: bundled split, mirl layout (with its error cases), folder source, TrainSource."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirl_lib import data
from mirl_lib.config import TASKS, DataConfig
from mirl_lib.degrade import image_seed
from mirl_lib.errors import DataError

OFFSET = 100  # paired inputs are their target plus this many 8-bit levels


def _save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _pixels(key: str, h: int = 40, w: int = 36, high: int = 150) -> np.ndarray:
    rng = np.random.default_rng(list(key.encode()))
    return rng.integers(0, high, (h, w, 3), dtype=np.uint8)


def _make_mirl(root: Path) -> Path:
    """A tiny MIR-L layout: 2 clean images per denoise folder, 2 pairs per paired folder."""
    for split, clean_sets in data.MIRL_CLEAN.items():
        for dataset in clean_sets:
            for k in range(2):
                _save(root / split / "denoise" / dataset / f"{dataset}_{k}.png",
                      _pixels(f"{split}{dataset}{k}"))
    for (split, _task), (sub, suffix) in data.MIRL_PAIRED.items():
        for k in range(2):
            target = _pixels(f"{split}{sub}{k}")
            _save(root / split / sub / "target" / f"im{k}_gt.png", target)
            _save(root / split / sub / "input" / f"im{k}{suffix}.png", target + OFFSET)
    return root


@pytest.fixture()
def mirl_root(tmp_path: Path) -> Path:
    return _make_mirl(tmp_path / "mirl")


def _mirl_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="mirl", root=str(root), patch_size=16, **kw)


# ---- bundled ---------------------------------------------------------------------------------

def test_bundled_split_is_disjoint_with_both_motorcycle_views_in_train() -> None:
    assert not set(data.BUNDLED_TRAIN) & set(data.BUNDLED_TEST)
    assert {"motorcycle_left", "motorcycle_right"} <= set(data.BUNDLED_TRAIN)
    for name in data.BUNDLED_TRAIN + data.BUNDLED_TEST:  # every image loads offline as 8-bit RGB
        image = data._bundled_uint8(name)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@pytest.mark.parametrize("view", ["motorcycle_left", "motorcycle_right"])
def test_motorcycle_depth_is_finite_and_normalized(view: str) -> None:
    depth = data._motorcycle_depth(view)
    assert depth.shape == data._bundled_uint8(view).shape[:2]
    assert np.isfinite(depth).all() and depth.min() == 0.0 and depth.max() == 1.0


def test_bundled_test_set_is_seeded_cropped_and_sorted() -> None:
    cfg = DataConfig(test_max_side=72)
    items = data.load_test_set(cfg, seed=3)
    assert len(items) == len(TASKS) * len(data.BUNDLED_TEST)
    keys = [(i.task, i.dataset, i.name) for i in items]
    assert keys == sorted(keys)
    for item in items:
        assert item.clean.shape == item.degraded.shape == (64, 64, 3)
        assert item.degraded.dtype == np.float32 and not np.array_equal(item.clean, item.degraded)
    again = data.load_test_set(cfg, seed=3)
    assert all(np.array_equal(a.degraded, b.degraded) for a, b in zip(items, again))
    other = data.load_test_set(cfg, seed=4)
    assert not np.array_equal(items[0].degraded, other[0].degraded)
    noisy = [i for i in items if i.task == "denoise_25"]
    residuals = [i.degraded - i.clean for i in noisy]
    assert not np.array_equal(residuals[0], residuals[1])


def test_test_per_task_keeps_first_names() -> None:
    items = data.load_test_set(DataConfig(tasks=("denoise_15", "derain"), test_per_task=2,
                                          test_max_side=32), seed=0)
    assert [(i.task, i.name) for i in items] == [
        ("denoise_15", "astronaut"), ("denoise_15", "chelsea"),
        ("derain", "astronaut"), ("derain", "chelsea")]


@pytest.fixture(scope="module")
def bundled_source() -> data.TrainSource:
    return data.build_train_source(DataConfig(), seed=11)


def test_batch_shapes_range_and_balanced_tasks(bundled_source: data.TrainSource) -> None:
    degraded, clean, ids = bundled_source.batch(step=0, batch_size=10)
    assert degraded.shape == clean.shape == (10, 3, 64, 64)
    assert degraded.dtype == clean.dtype == torch.float32 and ids.dtype == torch.long
    assert 0 <= float(clean.min()) and float(degraded.max()) <= 1
    assert ids.tolist() == [0, 1, 2, 3, 4] * 2
    assert bundled_source.tasks == TASKS
    _, _, ids_rank1 = bundled_source.batch(step=1, batch_size=3, rank=1, world_size=2)
    assert ids_rank1.tolist() == [(9 + i) % 5 for i in range(3)]  # global index 1*3*2 + 1*3 + i


def test_batch_is_a_pure_function_of_seed_step_rank(bundled_source: data.TrainSource) -> None:
    first = bundled_source.batch(5, 4)
    bundled_source.batch(6, 4)  # other calls in between change nothing
    for a, b in zip(first, bundled_source.batch(5, 4)):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], bundled_source.batch(6, 4)[1])
    assert not torch.equal(first[1], bundled_source.batch(5, 4, rank=1, world_size=2)[1])
    resumed = data.build_train_source(DataConfig(tasks=TASKS), seed=11)
    assert torch.equal(first[0], resumed.batch(5, 4)[0])


def test_batch_is_fast(bundled_source: data.TrainSource) -> None:
    import time
    start = time.perf_counter()
    for step in range(20):
        bundled_source.batch(step, 8)
    assert (time.perf_counter() - start) / 20 < 0.05


# ---- mirl layout -----------------------------------------------------------------------------

def test_mirl_test_set_reads_pairs_and_synthesizes_noise(mirl_root: Path) -> None:
    items = data.load_test_set(_mirl_cfg(mirl_root), seed=0)
    datasets = {(i.task, i.dataset) for i in items}
    assert ("dehaze", "SOTS") in datasets and ("derain", "Rain100L") in datasets
    assert ("denoise_50", "BSD68") in datasets and ("denoise_50", "Urban100") in datasets
    assert len(items) == 3 * 4 + 2 + 2
    for item in items:
        assert item.clean.shape == (32, 32, 3)
        if item.task in ("derain", "dehaze"):
            np.testing.assert_allclose(item.degraded - item.clean, OFFSET / 255, atol=1e-6)


def test_mirl_noise_seed_is_independent_of_file_order(mirl_root: Path) -> None:
    cfg = _mirl_cfg(mirl_root, tasks=("denoise_25",))
    before = {i.name: i.degraded for i in data.load_test_set(cfg, seed=0)}
    _save(mirl_root / "test/denoise/BSD68/AAA_first.png", _pixels("extra"))
    after = {i.name: i.degraded for i in data.load_test_set(cfg, seed=0)}
    assert set(after) == set(before) | {"AAA_first"}
    for name, degraded in before.items():
        np.testing.assert_array_equal(after[name], degraded)
    item = next(i for i in data.load_test_set(cfg, seed=0) if i.name == "BSD68_1")
    rng = np.random.default_rng(image_seed("BSD68/BSD68_1", "denoise_25", 0))
    expected = np.clip(item.clean * 255.0 + rng.normal(0, 25, item.clean.shape), 0, 255)
    np.testing.assert_array_equal(item.degraded, expected.astype(np.uint8) / np.float32(255))


def test_mirl_train_source_pairs_stay_aligned(mirl_root: Path) -> None:
    source = data.build_train_source(_mirl_cfg(mirl_root), seed=0)
    degraded, clean, ids = source.batch(0, 20)
    assert degraded.shape == (20, 3, 16, 16)
    for i, task_id in enumerate(ids.tolist()):
        if source.tasks[task_id] in ("derain", "dehaze"):
            expected = torch.full_like(clean[i], OFFSET / 255)
            torch.testing.assert_close(degraded[i] - clean[i], expected)


def test_dataset_summary(mirl_root: Path) -> None:
    summary = data.dataset_summary(_mirl_cfg(mirl_root))
    assert list(summary.columns) == ["split", "task", "dataset", "name", "height", "width"]
    assert len(summary) == 2 * (3 * 4 + 2 + 2)
    assert set(summary.height) == {40} and set(summary.width) == {36}
    assert set(summary[summary.split == "train"].dataset) == {"WED", "BSD400", "Rain100L", "OTS"}


def test_missing_folder_is_named(mirl_root: Path) -> None:
    shutil.rmtree(mirl_root / "train/dehaze/OTS")
    with pytest.raises(DataError, match=r"OTS.*folder not found"):
        data.build_train_source(_mirl_cfg(mirl_root), seed=0)
    data.build_train_source(_mirl_cfg(mirl_root, tasks=("derain",)), seed=0)  # not needed: fine


def test_unpaired_file_is_named(mirl_root: Path) -> None:
    (mirl_root / "test/derain/Rain100L/target/im1_gt.png").unlink()
    with pytest.raises(DataError, match=r"im1_rainy\.png.*no target"):
        data.load_test_set(_mirl_cfg(mirl_root), seed=0)


def test_wrong_suffix_is_named(mirl_root: Path) -> None:
    (mirl_root / "test/dehaze/SOTS/input/im0_hazy.png").rename(
        mirl_root / "test/dehaze/SOTS/input/im0.png")
    with pytest.raises(DataError, match=r"im0\.png.*_hazy"):
        data.load_test_set(_mirl_cfg(mirl_root), seed=0)


@pytest.mark.parametrize("write, problem", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n broken"), "not a readable image"),
    (lambda p: Image.fromarray(_pixels("g")[..., 0]).save(p), "grayscale"),
    (lambda p: Image.fromarray(np.dstack([_pixels("a"), _pixels("b")[..., :1]])).save(p), "alpha"),
    (lambda p: Image.fromarray(_pixels("w")[..., 0].astype(np.uint16) * 257).save(p), "16-bit"),
    (lambda p: Image.fromarray(_pixels("s", 12, 40)).save(p), "smaller than data.patch_size"),
])
def test_bad_training_image_is_named(mirl_root: Path, write, problem: str) -> None:
    bad = mirl_root / "train/denoise/WED/bad_one.png"
    write(bad)
    with pytest.raises(DataError, match=problem) as info:
        data.build_train_source(_mirl_cfg(mirl_root), seed=0)
    assert "bad_one.png" in str(info.value)


def test_mismatched_pair_sizes_are_named(mirl_root: Path) -> None:
    _save(mirl_root / "test/dehaze/SOTS/input/im0_hazy.png", _pixels("x", 48, 48))
    with pytest.raises(DataError, match=r"im0_hazy\.png.*differs"):
        data.load_test_set(_mirl_cfg(mirl_root), seed=0)


# ---- folder ----------------------------------------------------------------------------------

def test_folder_source_splits_by_name(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    names = [f"sub/p{k:02d}" if k % 3 == 0 else f"p{k:02d}" for k in range(16)]
    for name in names:
        _save(root / f"{name}.png", _pixels(name, 34, 34, high=256))
    cfg = DataConfig(source="folder", root=str(root), patch_size=16, folder_test_fraction=0.3,
                     test_max_side=20)
    summary = data.dataset_summary(cfg)
    train = set(summary[summary.split == "train"].name)
    test = set(summary[summary.split == "test"].name)
    assert not train & test and train | test == set(names) and train and test
    items = data.load_test_set(cfg, seed=0)
    assert {i.name for i in items} == test and {i.task for i in items} == set(TASKS)
    assert all(i.clean.shape == (16, 16, 3) for i in items)
    _save(root / "zz_new.png", _pixels("new", 34, 34))  # adding a photo moves no other one
    grown = data.dataset_summary(cfg)
    assert set(grown[grown.split == "test"].name) - {"zz_new"} == test
    degraded, clean, ids = data.build_train_source(cfg, seed=1).batch(0, 5)
    assert degraded.shape == (5, 3, 16, 16) and ids.tolist() == [0, 1, 2, 3, 4]


def test_folder_source_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*folder not found"):
        data.load_test_set(DataConfig(source="folder", root=str(tmp_path / "nowhere")), seed=0)
    _save(tmp_path / "one" / "only.png", _pixels("only"))
    cfg = DataConfig(source="folder", root=str(tmp_path / "one"), folder_test_fraction=0.01)
    split = data._folder_side("only", 0.01)
    empty = "test" if split == "train" else "train"
    loader = data.load_test_set if empty == "test" else data.build_train_source
    with pytest.raises(DataError, match=f"one: the {empty} split is empty"):
        loader(cfg, 0)
