"""``python -m mirl_lib restore IN -o OUT --checkpoint CKPT``: restore an image or a folder of
images."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirl_lib.core.errors import DataError, NotEnoughMemoryError

SUGGESTED_TILE = 256


@dataclass
class Progress:
    """How far a restore got; printed when Ctrl-C stops it."""

    total: int | None = None
    written: int = 0
    hint = "rerun the same command to continue (existing outputs are kept unless --overwrite)"

    def __str__(self) -> str:
        if self.total is None:
            return "no image written"
        return f"{self.written} of {self.total} images written"


def _jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder."""
    from mirl_lib.files.images import IMAGE_SUFFIXES, WRITE_FORMATS

    def out_name(path: Path) -> str:
        return path.name if path.suffix.lower() in WRITE_FORMATS else f"{path.stem}.png"

    if src.is_file():
        return [(src, dst / out_name(src) if dst.is_dir() else dst)]
    if not src.is_dir():
        raise DataError(f"{src}: input image or folder not found")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"{dst}: output must be a folder when the input {src} is a folder")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    jobs = [(p, dst / out_name(p)) for p in files]
    seen: dict[Path, Path] = {}
    for inp, out in jobs:
        if out in seen:
            raise DataError(f"{out}: both {seen[out].name} and {inp.name} would be written here")
        seen[out] = inp
    return jobs


def _check_outputs(jobs: list[tuple[Path, Path]]) -> None:
    """Refuse, before any work, an output ``write_rgb`` cannot write or a folder it cannot use."""
    from mirl_lib.files.images import output_format

    for _, out in jobs:
        output_format(out)
    for folder in sorted({out.parent for _, out in jobs}):
        check_folder(folder)


def check_folder(folder: Path) -> None:
    """``folder`` exists and is writable, or can be created (as ``write_rgb`` does)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        where = "it is a file" if existing == folder else f"{existing} is a file"
        raise DataError(f"{folder}: cannot be the output folder, {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"{existing}: output folder is not writable")


def _pending(jobs: list[tuple[Path, Path]], overwrite: bool,
             folder: bool) -> list[tuple[Path, Path]]:
    """The jobs to run: all with ``overwrite``; else a folder keeps its existing outputs and a
    single existing output is refused."""
    existing = [out for _, out in jobs if out.exists()]
    if not existing or overwrite:
        return jobs
    if not folder:
        raise DataError(f"{existing[0]}: output exists; pass --overwrite to replace it")
    print(f"note: kept {len(existing)} existing output(s) in {existing[0].parent}; pass "
          f"--overwrite to replace them", file=sys.stderr)
    return [(inp, out) for inp, out in jobs if not out.exists()]


def _memory_error(path: Path, shape: tuple[int, ...], tile: int, overlap: int,
                  device: Any) -> NotEnoughMemoryError:
    """Out of memory restoring ``path``: its size, the tiling used and a tiling that needs less."""
    from mirl_lib.core.config import SIZE_MULTIPLE

    size = f"{shape[1]} x {shape[0]}"  # width x height, as photos are described
    how = "in one piece (--tile 0)" if tile == 0 else f"in {tile} x {tile} tiles (--tile {tile})"
    if tile == 0 or tile > SUGGESTED_TILE:
        hint = f"--tile {SUGGESTED_TILE} (or smaller)"
    else:
        smaller = tile // 2 // SIZE_MULTIPLE * SIZE_MULTIPLE
        if smaller < 2 * SIZE_MULTIPLE:
            return NotEnoughMemoryError(f"{path}: out of memory on {device} even with --tile "
                                        f"{tile}; the model does not fit this device")
        hint = f"--tile {smaller}"
        if overlap > smaller // 2:
            hint += f" --overlap {smaller // 4}"
    return NotEnoughMemoryError(f"{path}: out of memory on {device} restoring this {size} image "
                                f"{how}; run again with {hint}")


def _restore_one(model: Any, inp: Path, out: Path, args: argparse.Namespace, device: Any) -> None:
    """Read, restore and write one image; running out of memory says how to need less."""
    from mirl_lib.evaluation.restore import is_out_of_memory, restore_image
    from mirl_lib.files.images import read_rgb, write_rgb

    img = read_rgb(inp)
    try:
        restored = restore_image(model, img, device=device, tile=args.tile, overlap=args.overlap)
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise _memory_error(inp, img.shape, args.tile, args.overlap, device) from None
    write_rgb(out, restored)


def restore_command(args: argparse.Namespace, progress: Progress | None = None) -> None:
    """Restore every input of ``args`` with the checkpoint's model; ``progress`` counts outputs."""
    from tqdm.auto import tqdm

    from mirl_lib.core.config import model_config
    from mirl_lib.core.device import resolve_device
    from mirl_lib.evaluation.restore import check_tiling
    from mirl_lib.net.checkpoints import load_model

    progress = Progress() if progress is None else progress
    jobs = _jobs(args.input, args.output)
    _check_outputs(jobs)
    check_tiling(args.tile, args.overlap)
    todo = _pending(jobs, args.overwrite, folder=args.input.is_dir())
    progress.total, progress.written = len(jobs), len(jobs) - len(todo)
    if not todo:
        return
    device = resolve_device(args.device)
    expected = model_config(args.preset) if args.preset else None
    model, _ = load_model(args.checkpoint, expected=expected, device=device)
    for inp, out in tqdm(todo, desc="restore", unit="image", disable=len(todo) == 1):
        _restore_one(model, inp, out, args, device)
        progress.written += 1
