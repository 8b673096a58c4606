"""Data sources: bundled split, mirl layout (with its error cases), folder source, TrainSource."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mirl_lib.core.config import DataConfig
from mirl_lib.core.errors import ConfigError, DataError
from mirl_lib.core.names import TASKS
from mirl_lib.data import catalogs, photos, stream, testset
from mirl_lib.data.degrade import image_seed
from mirl_lib.data.layouts import OFFSET, make_mirl, pixels, save


@pytest.fixture()
def mirl_root(tmp_path: Path) -> Path:
    return make_mirl(tmp_path / "mirl")


def _mirl_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="mirl", root=str(root), patch_size=16, **kw)


# ---- bundled ---------------------------------------------------------------------------------

@pytest.mark.parametrize("chosen", sorted(photos.BUNDLED_TRAIN_SETS))
def test_bundled_split_is_disjoint_with_both_motorcycle_views_in_train(chosen: str) -> None:
    train = photos.BUNDLED_TRAIN_SETS[chosen]
    names = {photos.photo_name(r) for r in train}
    assert not names & {photos.photo_name(r) for r in photos.BUNDLED_TEST}
    assert {"motorcycle_left", "motorcycle_right"} <= names and len(names) == len(train)
    for ref in train + photos.BUNDLED_TEST:  # every image loads offline as 8-bit RGB
        image = photos.bundled_photo(ref)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert min(image.shape[:2]) >= 256, ref


def test_bundled_training_sets_are_chosen_by_the_config() -> None:
    """``data.bundled_train`` picks the photos (and is an identity field that leaves the classic
    set's hashes alone); an unknown set or photo source is one error naming it."""
    for chosen, expected in (("classic", {"hubble_deep_field", "retina"}),
                             ("natural", {"china", "flower"})):
        cfg = DataConfig(patch_size=32, bundled_train=chosen)
        names = set(catalogs.dataset_summary(cfg).query("split == 'train'")["name"])
        assert expected <= names and names == {photos.photo_name(r)
                                               for r in photos.BUNDLED_TRAIN_SETS[chosen]}
    assert "bundled_train" not in DataConfig().identity()
    assert DataConfig(bundled_train="natural").identity()["bundled_train"] == "natural"
    with pytest.raises(ConfigError, match="data.bundled_train: must be one of 'classic'"):
        DataConfig(bundled_train="vacation")
    with pytest.raises(DataError, match="pypi:cat.png: not a bundled photo"):
        photos.bundled_photo("pypi:cat.png")


@pytest.mark.parametrize("view", ["motorcycle_left", "motorcycle_right"])
def test_motorcycle_depth_is_finite_and_normalized(view: str) -> None:
    depth = photos._motorcycle_depth(view)
    assert depth.shape == photos.bundled_photo(f"skimage:{view}").shape[:2]
    assert np.isfinite(depth).all() and depth.min() == 0.0 and depth.max() == 1.0


def test_bundled_test_set_is_seeded_cropped_and_sorted() -> None:
    cfg = DataConfig(test_max_side=72)
    items = testset.load_test_set(cfg, seed=3)
    assert len(items) == len(TASKS) * len(photos.BUNDLED_TEST)
    keys = [(i.task, i.dataset, i.name) for i in items]
    assert keys == sorted(keys)
    for item in items:
        assert item.clean.shape == item.degraded.shape == (64, 64, 3)
        assert item.degraded.dtype == np.float32 and not np.array_equal(item.clean, item.degraded)
    again = testset.load_test_set(cfg, seed=3)
    assert all(np.array_equal(a.degraded, b.degraded) for a, b in zip(items, again))
    other = testset.load_test_set(cfg, seed=4)
    assert not np.array_equal(items[0].degraded, other[0].degraded)
    noisy = [i for i in items if i.task == "denoise_25"]
    residuals = [i.degraded - i.clean for i in noisy]
    assert not np.array_equal(residuals[0], residuals[1])


def test_test_per_task_keeps_first_names() -> None:
    items = testset.load_test_set(DataConfig(tasks=("denoise_15", "derain"), test_per_task=2,
                                          test_max_side=32), seed=0)
    assert [(i.task, i.name) for i in items] == [
        ("denoise_15", "astronaut"), ("denoise_15", "chelsea"),
        ("derain", "astronaut"), ("derain", "chelsea")]


@pytest.fixture(scope="module")
def bundled_source() -> stream.TrainSource:
    return stream.build_train_source(DataConfig(), seed=11)


def test_batch_shapes_range_and_balanced_tasks(bundled_source: stream.TrainSource) -> None:
    degraded, clean, ids = bundled_source.batch(step=0, batch_size=10)
    assert degraded.shape == clean.shape == (10, 3, 64, 64)
    assert degraded.dtype == clean.dtype == torch.float32 and ids.dtype == torch.long
    assert 0 <= float(clean.min()) and float(degraded.max()) <= 1
    assert ids.tolist() == [0, 1, 2, 3, 4] * 2
    assert bundled_source.tasks == TASKS
    _, _, ids_rank1 = bundled_source.batch(step=1, batch_size=3, rank=1, world_size=2)
    assert ids_rank1.tolist() == [(9 + i) % 5 for i in range(3)]  # global index 1*3*2 + 1*3 + i


def test_batch_is_a_pure_function_of_seed_step_rank(bundled_source: stream.TrainSource) -> None:
    first = bundled_source.batch(5, 4)
    bundled_source.batch(6, 4)  # other calls in between change nothing
    for a, b in zip(first, bundled_source.batch(5, 4)):
        assert torch.equal(a, b)
    assert not torch.equal(first[1], bundled_source.batch(6, 4)[1])
    assert not torch.equal(first[1], bundled_source.batch(5, 4, rank=1, world_size=2)[1])
    resumed = stream.build_train_source(DataConfig(tasks=TASKS), seed=11)
    assert torch.equal(first[0], resumed.batch(5, 4)[0])


# sha256 (first 16 hex digits) of the clean patches and task ids that TrainSource.batch returned
# before training data was streamed (images decoded up front), for the bundled source with
# patch_size=32 and seed 11. The clean patches are exact crops, so these digests do not depend on
# the CPU's floating point; they pin the draws of task, image, crop and flip, and (since the
# generator is shared) how many draws each degradation makes.
PINNED_BATCHES = {(5, 6, 0, 1): "f833fc2a2f4ea56b", (2, 3, 1, 2): "a457517f851fead5"}


def test_streamed_batches_equal_the_decoded_up_front_ones() -> None:
    source = stream.build_train_source(DataConfig(patch_size=32), seed=11)
    for (step, size, rank, world), digest in PINNED_BATCHES.items():
        _, clean, ids = source.batch(step, size, rank, world)
        got = hashlib.sha256(clean.numpy().tobytes() + ids.numpy().tobytes()).hexdigest()
        assert got[:16] == digest, (step, size, rank, world)


# ---- mirl layout -----------------------------------------------------------------------------

def test_mirl_test_set_reads_pairs_and_synthesizes_noise(mirl_root: Path) -> None:
    items = testset.load_test_set(_mirl_cfg(mirl_root), seed=0)
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
    before = {i.name: i.degraded for i in testset.load_test_set(cfg, seed=0)}
    save(mirl_root / "test/denoise/BSD68/AAA_first.png", pixels("extra"))
    after = {i.name: i.degraded for i in testset.load_test_set(cfg, seed=0)}
    assert set(after) == set(before) | {"AAA_first"}
    for name, degraded in before.items():
        np.testing.assert_array_equal(after[name], degraded)
    item = next(i for i in testset.load_test_set(cfg, seed=0) if i.name == "BSD68_1")
    rng = np.random.default_rng(image_seed("BSD68/BSD68_1", "denoise_25", 0))
    expected = np.clip(item.clean * 255.0 + rng.normal(0, 25, item.clean.shape), 0, 255)
    np.testing.assert_array_equal(item.degraded, expected.astype(np.uint8) / np.float32(255))


def test_mirl_train_source_pairs_stay_aligned(mirl_root: Path) -> None:
    source = stream.build_train_source(_mirl_cfg(mirl_root), seed=0)
    degraded, clean, ids = source.batch(0, 20)
    assert degraded.shape == (20, 3, 16, 16)
    for i, task_id in enumerate(ids.tolist()):
        if source.tasks[task_id] in ("derain", "dehaze"):
            expected = torch.full_like(clean[i], OFFSET / 255)
            torch.testing.assert_close(degraded[i] - clean[i], expected)


def test_dataset_summary(mirl_root: Path) -> None:
    summary = catalogs.dataset_summary(_mirl_cfg(mirl_root))
    assert list(summary.columns) == ["split", "task", "dataset", "name", "height", "width"]
    assert len(summary) == 2 * (3 * 4 + 2 + 2)
    assert set(summary.height) == {40} and set(summary.width) == {36}
    assert set(summary[summary.split == "train"].dataset) == {"WED", "BSD400", "Rain100L", "OTS"}


def test_missing_folder_is_named(mirl_root: Path) -> None:
    shutil.rmtree(mirl_root / "train/dehaze/OTS")
    with pytest.raises(DataError, match=r"OTS.*folder not found"):
        stream.build_train_source(_mirl_cfg(mirl_root), seed=0)
    stream.build_train_source(_mirl_cfg(mirl_root, tasks=("derain",)), seed=0)  # not needed: fine


def test_unpaired_file_is_named(mirl_root: Path) -> None:
    (mirl_root / "test/derain/Rain100L/target/im1_gt.png").unlink()
    with pytest.raises(DataError, match=r"im1_rainy\.png.*no target"):
        testset.load_test_set(_mirl_cfg(mirl_root), seed=0)


def test_wrong_suffix_is_named(mirl_root: Path) -> None:
    (mirl_root / "test/dehaze/SOTS/input/im0_hazy.png").rename(
        mirl_root / "test/dehaze/SOTS/input/im0.png")
    with pytest.raises(DataError, match=r"im0\.png.*_hazy"):
        testset.load_test_set(_mirl_cfg(mirl_root), seed=0)


@pytest.mark.parametrize("write, problem", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n broken"), "not a readable image"),
    (lambda p: Image.fromarray(pixels("g")[..., 0]).save(p), "grayscale"),
    (lambda p: Image.fromarray(np.dstack([pixels("a"), pixels("b")[..., :1]])).save(p), "alpha"),
    (lambda p: Image.fromarray(pixels("w")[..., 0].astype(np.uint16) * 257).save(p), "16-bit"),
    (lambda p: Image.fromarray(pixels("s", 12, 40)).save(p), "smaller than data.patch_size"),
])
def test_bad_training_image_is_named(mirl_root: Path, write, problem: str) -> None:
    bad = mirl_root / "train/denoise/WED/bad_one.png"
    write(bad)
    with pytest.raises(DataError, match=problem) as info:
        stream.build_train_source(_mirl_cfg(mirl_root), seed=0)
    assert "bad_one.png" in str(info.value)


def test_mismatched_pair_sizes_are_named(mirl_root: Path) -> None:
    save(mirl_root / "test/dehaze/SOTS/input/im0_hazy.png", pixels("x", 48, 48))
    with pytest.raises(DataError, match=r"im0_hazy\.png.*differs"):
        testset.load_test_set(_mirl_cfg(mirl_root), seed=0)


@pytest.mark.parametrize("names", [
    {"denoise_test": ("CBSD68", "Kodak24", "McMaster"), "derain_test": ("Rain100H",)},
    {"denoise_train": ("BSD400",), "dehaze_train": ("OTS", "ITS")},
])
def test_dataset_folders_come_from_the_config(tmp_path: Path, names: dict) -> None:
    cfg = _mirl_cfg(tmp_path, **names)
    make_mirl(tmp_path, cfg)
    summary = catalogs.dataset_summary(cfg)
    for key, datasets in names.items():
        family, split = key.split("_")
        found = summary[(summary.split == split) & summary.task.str.startswith(family)]
        assert set(found.dataset) == set(datasets), key
    expected = {d for family in ("denoise", "derain", "dehaze")
                for d in names.get(f"{family}_test", getattr(DataConfig(), f"{family}_test"))}
    assert {i.dataset for i in testset.load_test_set(cfg, seed=0)} == expected
    source = stream.build_train_source(cfg, seed=0)
    assert source.epoch_size == len(summary[summary.split == "train"])


def test_unknown_dataset_names_the_folder_the_key_and_what_is_there(mirl_root: Path) -> None:
    cfg = _mirl_cfg(mirl_root, denoise_test=("BSD68", "Kodak"))
    with pytest.raises(DataError) as info:
        testset.load_test_set(cfg, seed=0)
    assert str(info.value) == (f"{mirl_root / 'test/denoise/Kodak'}: folder not found "
                               f"(data.denoise_test lists 'Kodak'; folders in "
                               f"{mirl_root / 'test/denoise'}: BSD68, Urban100)")
    stream.build_train_source(cfg, seed=0)  # the training side does not read test folders
    (mirl_root / "train/derain/Rain100H/input").mkdir(parents=True)
    with pytest.raises(DataError, match=r"Rain100H/input: no images .* \(data\.derain_train "
                                        r"lists 'Rain100H'\)"):
        stream.build_train_source(_mirl_cfg(mirl_root, derain_train=("Rain100L", "Rain100H")), 0)


def test_truncated_pixels_fail_when_read_naming_the_file(tmp_path: Path) -> None:
    cfg = _mirl_cfg(tmp_path, tasks=("derain",))
    make_mirl(tmp_path, cfg, count=1)
    bad = tmp_path / "train/derain/Rain100L/input/im0_rainy.png"
    bad.write_bytes(bad.read_bytes()[:200])  # header intact, pixel data cut
    source = stream.build_train_source(cfg, seed=0)  # headers are all it reads up front
    with pytest.raises(DataError, match="im0_rainy.png: image file is truncated or corrupt"):
        source.batch(0, 2)


# ---- folder ----------------------------------------------------------------------------------

def test_folder_source_splits_by_name(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    names = [f"sub/p{k:02d}" if k % 3 == 0 else f"p{k:02d}" for k in range(16)]
    for name in names:
        save(root / f"{name}.png", pixels(name, 34, 34, high=256))
    cfg = DataConfig(source="folder", root=str(root), patch_size=16, folder_test_fraction=0.3,
                     test_max_side=20)
    summary = catalogs.dataset_summary(cfg)
    train = set(summary[summary.split == "train"].name)
    test = set(summary[summary.split == "test"].name)
    assert not train & test and train | test == set(names) and train and test
    items = testset.load_test_set(cfg, seed=0)
    assert {i.name for i in items} == test and {i.task for i in items} == set(TASKS)
    assert all(i.clean.shape == (16, 16, 3) for i in items)
    save(root / "zz_new.png", pixels("new", 34, 34))  # adding a photo moves no other one
    grown = catalogs.dataset_summary(cfg)
    assert set(grown[grown.split == "test"].name) - {"zz_new"} == test
    degraded, clean, ids = stream.build_train_source(cfg, seed=1).batch(0, 5)
    assert degraded.shape == (5, 3, 16, 16) and ids.tolist() == [0, 1, 2, 3, 4]


def test_folder_source_errors_name_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*folder not found"):
        testset.load_test_set(DataConfig(source="folder", root=str(tmp_path / "nowhere")), seed=0)
    save(tmp_path / "one" / "only.png", pixels("only"))
    cfg = DataConfig(source="folder", root=str(tmp_path / "one"), folder_test_fraction=0.01)
    split = catalogs._folder_side("only", 0.01)
    empty = "test" if split == "train" else "train"
    loader = testset.load_test_set if empty == "test" else stream.build_train_source
    with pytest.raises(DataError, match=f"one: the {empty} split is empty"):
        loader(cfg, 0)


def test_relative_data_root_is_read_from_the_checkout(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Stage notebooks run in notebooks/ and the CLI anywhere: a relative data.root means the
    same folder for all of them (inside the checkout), an absolute one is kept."""
    from mirl_lib.data.catalogs import data_root
    from mirl_lib.files.paths import CHECKOUT

    monkeypatch.chdir(tmp_path)
    assert data_root(DataConfig(root="datasets")) == CHECKOUT / "datasets"
    assert (CHECKOUT / "mirl_lib" / "data" / "catalogs.py").is_file()
    assert data_root(DataConfig(root=str(tmp_path / "x"))) == tmp_path / "x"


def test_task_weights_give_each_task_its_share_of_every_cycle() -> None:
    assert stream.task_cycle((1, 2, 3)) == (0, 1, 2, 1, 2, 2)
    assert stream.task_cycle((1, 1)) == (0, 1)
    cfg = DataConfig(patch_size=16, task_weights=(2, 1, 1, 3, 3))
    source = stream.build_train_source(cfg, seed=0)
    ids = torch.cat([source.batch(step, 10)[2] for step in range(10)])
    assert torch.bincount(ids, minlength=5).tolist() == [20, 10, 10, 30, 30]
    equal = stream.build_train_source(DataConfig(patch_size=16), seed=0)
    assert (torch.bincount(torch.cat([equal.batch(s, 10)[2] for s in range(10)])).tolist()
            == [20] * 5)
    assert "task_weights" not in DataConfig().identity()
    for bad, message in ((dict(task_weights=(1, 2)), "one whole number >= 1 per task"),
                         (dict(task_weights=(1, 0, 1, 1, 1)), "one whole number >= 1 per task"),
                         (dict(task_weights=(1,) * 5, sampling="published"), "balanced only")):
        with pytest.raises(ConfigError, match=f"data.task_weights: .*{message}"):
            DataConfig(**bad)


def test_per_sample_haze_depth_draws_a_new_map_for_each_hazy_sample() -> None:
    """``haze_depth: per_sample`` changes only the hazy samples of photos without measured depth
    (up to the first such one, batches are those of ``fixed``); it stays a pure function of
    (seed, step), and it is an identity field that leaves ``fixed`` configs' hashes alone."""
    fixed = stream.build_train_source(DataConfig(patch_size=48, bundled_train="natural"), seed=0)
    fresh_cfg = DataConfig(patch_size=48, bundled_train="natural", haze_depth="per_sample")
    fresh = stream.build_train_source(fresh_cfg, seed=0)
    assert "haze_depth" not in DataConfig().identity()
    assert fresh_cfg.identity()["haze_depth"] == "per_sample"
    dehaze = TASKS.index("dehaze")
    changed = 0
    for step in range(12):
        a, b = fixed.batch(step, 10), fresh.batch(step, 10)
        assert torch.equal(a[2], b[2])  # the same task order
        first = [i for i in range(10) if not torch.equal(a[0][i], b[0][i])]
        if first:  # the first sample that differs is a hazy one
            assert int(a[2][first[0]]) == dehaze
            changed += 1
        again = stream.build_train_source(fresh_cfg, seed=0).batch(step, 10)
        assert all(torch.equal(x, y) for x, y in zip(b, again))
    assert changed >= 6
    with pytest.raises(ConfigError, match="data.haze_depth: must be one of 'fixed', 'per_sample'"):
        DataConfig(haze_depth="random")
