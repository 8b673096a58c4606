"""Which (task, image) entries a split holds, for each source (``DataConfig.source``).

- ``bundled``: the photographs of ``photos.BUNDLED_TRAIN_SETS`` / ``photos.bundled_test_photos``;
  every task is synthesized.
- ``mirl``: the published MIR-L folder layout under ``DataConfig.root``: for each task family and
  split, the dataset folders the config lists (``DataConfig.denoise_train`` ...); noise is
  synthesized, rain and haze pairs are read from disk.
- ``folder``: any folder of clean photos under ``root``, split by a hash of each name; every task
  is synthesized.

``entries(cfg, split)`` lists them sorted by (task, dataset, name); ``dataset_summary`` tabulates
them with their sizes. See ``docs/data.md``.
"""
from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mirl_lib.core.config import DataConfig
from mirl_lib.core.errors import DataError
from mirl_lib.core.names import TASK_FAMILIES, task_family
from mirl_lib.data.photos import BUNDLED_TRAIN_SETS, bundled_test_photos, image_size, photo_name
from mirl_lib.files.images import IMAGE_SUFFIXES
from mirl_lib.files.paths import CHECKOUT

BUNDLED_DATASET = "bundled"
FOLDER_DATASET = "folder"


# mirl layout: ``<root>/<split>/<family>/<dataset>/`` for every dataset that ``DataConfig``'s
# ``<family>_<split>`` field lists. Clean-image families (denoise) hold photos; paired families hold
# ``input/X<suffix>.*`` and ``target/X_gt.*``.
PAIRED_SUFFIX: dict[str, str] = {"derain": "_rainy", "dehaze": "_hazy"}
TARGET_SUFFIX = "_gt"


@dataclass(frozen=True, slots=True)
class Entry:
    """One (task, image) of a split; ``clean``/``degraded`` are paths or bundled photos
    (``<package>:<name>``)."""

    task: str
    dataset: str
    name: str
    clean: str
    degraded: str | None = None


# ---------------------------------------------------------------------------------------------
# Catalogues: which (task, image) entries a split holds


def _synthetic(tasks: tuple[str, ...], dataset: str, images: list[tuple[str, str]]
               ) -> list[Entry]:
    return [Entry(task, dataset, name, ref) for task in tasks for name, ref in images]


def _bundled_entries(cfg: DataConfig, split: str) -> list[Entry]:
    refs = (BUNDLED_TRAIN_SETS[cfg.bundled_train] if split == "train"
            else bundled_test_photos(cfg.bundled_train, cfg.bundled_test))
    return _synthetic(cfg.tasks, BUNDLED_DATASET, [(photo_name(r), r) for r in refs])


def _images_in(folder: Path, recursive: bool = False) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def _keyed(files: list[Path], suffix: str, folder: Path) -> dict[str, Path]:
    """Map ``stem minus suffix`` to file; a missing suffix or a repeated key is an error."""
    keyed: dict[str, Path] = {}
    for path in files:
        if not path.stem.endswith(suffix):
            raise DataError(f"{path}: file name must end with '{suffix}' (before the extension) "
                            f"in {folder}")
        key = path.stem[: -len(suffix)]
        if key in keyed:
            raise DataError(f"{path}: same name as {keyed[key]}; keep one of them")
        keyed[key] = path
    return keyed


def _pairs(folder: Path, input_suffix: str) -> list[tuple[str, Path, Path]]:
    """(name, input, target) of ``folder/input/X{input_suffix}.*`` and ``folder/target/X_gt.*``."""
    inputs = _keyed(_images_in(folder / "input"), input_suffix, folder / "input")
    targets = _keyed(_images_in(folder / "target"), TARGET_SUFFIX, folder / "target")
    for key, path in inputs.items():
        if key not in targets:
            raise DataError(f"{path}: no target '{key}{TARGET_SUFFIX}.*' in {folder / 'target'}")
    for key, path in targets.items():
        if key not in inputs:
            raise DataError(f"{path}: no input '{key}{input_suffix}.*' in {folder / 'input'}")
    return [(key, inputs[key], targets[key]) for key in sorted(inputs)]


def data_root(cfg: DataConfig) -> Path:
    """``cfg.root`` as an absolute folder. A relative root is read from the checkout (where
    ./run_all.sh runs), whatever the current folder of the process: stage notebooks run in
    notebooks/, the CLI anywhere."""
    root = Path(cfg.root).expanduser()
    return root if root.is_absolute() else CHECKOUT / root


def mirl_datasets(cfg: DataConfig, family: str, split: str) -> tuple[str, ...]:
    """The dataset folders of a task family (``denoise``, ``derain``, ``dehaze``) and split that
    the ``mirl`` source reads: ``cfg.<family>_<split>``."""
    return getattr(cfg, f"{family}_{split}")


def _dataset_folder(cfg: DataConfig, split: str, family: str, dataset: str) -> Path:
    """``<root>/<split>/<family>/<dataset>``; a missing one names the config key and the folders
    that are there."""
    folder = data_root(cfg) / split / family / dataset
    if not folder.is_dir():
        parent = folder.parent
        there = sorted(p.name for p in parent.iterdir() if p.is_dir() and not
                       p.name.startswith(".")) if parent.is_dir() else []
        found = f"folders in {parent}: {', '.join(there)}" if there else f"{parent} has no folders"
        raise DataError(f"{folder}: folder not found (data.{family}_{split} lists {dataset!r}; "
                        f"{found})")
    return folder


def _mirl_entries(cfg: DataConfig, split: str) -> list[Entry]:
    entries: list[Entry] = []
    for family in TASK_FAMILIES:
        tasks = tuple(t for t in cfg.tasks if task_family(t) == family)
        for dataset in mirl_datasets(cfg, family, split) if tasks else ():
            folder = _dataset_folder(cfg, split, family, dataset)
            try:
                if family in PAIRED_SUFFIX:
                    entries += [Entry(task, dataset, key, str(target), str(inp))
                                for key, inp, target in _pairs(folder, PAIRED_SUFFIX[family])
                                for task in tasks]
                else:
                    images = [(p.stem, str(p)) for p in _images_in(folder)]
                    entries += _synthetic(tasks, dataset, images)
            except DataError as exc:
                raise DataError(f"{exc} (data.{family}_{split} lists {dataset!r})") from None
    return entries


def _folder_side(name: str, test_fraction: float) -> str:
    """``test`` when the CRC32 of the name falls below ``test_fraction`` of the 32-bit range."""
    return "test" if zlib.crc32(f"split:{name}".encode()) < test_fraction * 2**32 else "train"


def _folder_entries(cfg: DataConfig, split: str) -> list[Entry]:
    root = data_root(cfg)
    files = _images_in(root, recursive=True)
    named: dict[str, Path] = {}
    for path in files:
        name = path.relative_to(root).with_suffix("").as_posix()
        if name in named:
            raise DataError(f"{path}: same name as {named[name]}; keep one of them")
        named[name] = path
    chosen = [(n, str(p)) for n, p in named.items()
              if _folder_side(n, cfg.folder_test_fraction) == split]
    if not chosen:
        raise DataError(f"{root}: the {split} split is empty ({len(named)} images, "
                        f"data.folder_test_fraction={cfg.folder_test_fraction}); add images")
    return _synthetic(cfg.tasks, FOLDER_DATASET, chosen)


_CATALOGUES: dict[str, Callable[[DataConfig, str], list[Entry]]] = {
    "bundled": _bundled_entries, "mirl": _mirl_entries, "folder": _folder_entries}


def entries(cfg: DataConfig, split: str) -> list[Entry]:
    return sorted(_CATALOGUES[cfg.source](cfg, split), key=lambda e: (e.task, e.dataset, e.name))


def dataset_summary(cfg: DataConfig) -> pd.DataFrame:
    """One row per (split, task, image): split, task, dataset, name, height, width (full size)."""
    rows = []
    for split in ("train", "test"):
        for e in entries(cfg, split):
            height, width = image_size(e.clean)
            rows.append({"split": split, "task": e.task, "dataset": e.dataset, "name": e.name,
                         "height": height, "width": width})
    return pd.DataFrame(rows, columns=["split", "task", "dataset", "name", "height", "width"])
