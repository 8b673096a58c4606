"""Command line: ``python -m mirl_lib restore`` restores images, ``evaluate`` scores a checkpoint.

``python -m mirl_lib restore IN -o OUT --checkpoint CKPT``: IN is an image or a folder of images
(then OUT is a folder; each output keeps its input's name, with ``.png`` for formats ``write_rgb``
cannot write). Every output is written atomically, with the permissions an ordinary new file gets
(the umask). An existing output file is refused unless ``--overwrite``; for a folder, outputs
already there are kept unless ``--overwrite``, so rerunning an interrupted command finishes the
rest. The outputs and the tiling are checked before the checkpoint is read.

``python -m mirl_lib evaluate --checkpoint CKPT [--params params/X.yaml] [-o scores.csv]``: scores
the checkpoint on the test sets of a params file with the study's protocol
(``mirl_lib.evaluate.evaluate_checkpoint``), writes the per-image scores to ``-o`` (atomically,
replacing it) and prints the paper's table. The output folder and the tiling are checked before
the checkpoint is read.

``python -m mirl_lib reproduce RERUN REFERENCE [-o reproduction.csv]``: does a rerun (its run
folder or its ``metrics.csv``, e.g. from another machine or thread count) reproduce a reference run
(e.g. the committed one) within noise, on the test photos and, when both runs have a
``heldout.csv``, on the held-out photos? Prints ``report.reproduction``'s verdict line and writes
its table. Exit code 0 either way; 2 when a file is missing or the two runs share no comparison.

Errors (out of memory and a full disk included) print one ``error:`` line, exit code 2; Ctrl-C
prints one line saying how to continue, exit code 130.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirl_lib.errors import ConfigError, DataError, MirlError, NotEnoughMemoryError

SUGGESTED_TILE = 256
DEFAULT_PARAMS = Path("params/paper.yaml")


def _parser() -> argparse.ArgumentParser:
    from mirl_lib.model import SIZE_MULTIPLE

    parser = argparse.ArgumentParser(prog="python -m mirl_lib",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    restore = commands.add_parser("restore", help="restore an image or a folder of images")
    restore.add_argument("input", type=Path, help="image file or folder of images")
    restore.add_argument("-o", "--output", type=Path, required=True,
                         help="output image, .png/.jpg/.jpeg (or folder when INPUT is a folder)")
    restore.add_argument("--checkpoint", type=Path, required=True,
                         help="PromptIR/MIR-L checkpoint, mirl weights file or *.mirl ticket")
    restore.add_argument("--preset", default=None,
                         help="architecture of a plain state_dict or Lightning checkpoint "
                              "(default: paper)")
    restore.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    restore.add_argument("--tile", type=int, default=SUGGESTED_TILE,
                         help=f"tile side in pixels, a positive multiple of {SIZE_MULTIPLE}, or 0 "
                              f"for the whole image at once (memory grows with the image) "
                              f"(default: %(default)s)")
    restore.add_argument("--overlap", type=int, default=32,
                         help="tile overlap in pixels, at most half the tile "
                              "(default: %(default)s)")
    restore.add_argument("--overwrite", action="store_true", help="replace existing outputs")

    evaluate = commands.add_parser(
        "evaluate", help="score a checkpoint on the test sets of a params file (the paper's table)")
    evaluate.add_argument("--checkpoint", type=Path, required=True,
                          help="PromptIR/MIR-L checkpoint, mirl weights file or *.mirl ticket")
    evaluate.add_argument("--params", type=Path, default=DEFAULT_PARAMS,
                          help="params file whose data section names the test sets and whose "
                               "model is the expected architecture (default: %(default)s)")
    evaluate.add_argument("--data-root", type=Path, default=None,
                          help="dataset folder, instead of the params file's data.root")
    evaluate.add_argument("--preset", default=None,
                          help="architecture of the checkpoint when it differs from the params "
                               "file's model (a ticket or weights file must match it)")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    evaluate.add_argument("-o", "--output", type=Path, default=None,
                          help="per-image scores CSV to write (replaced if it exists)")
    evaluate.add_argument("--tile", type=int, default=0,
                          help=f"tile side in pixels, a positive multiple of {SIZE_MULTIPLE}, or 0 "
                               f"for whole images as the study scores them (default: %(default)s)")
    evaluate.add_argument("--overlap", type=int, default=32,
                          help="tile overlap in pixels, at most half the tile "
                               "(default: %(default)s)")
    headline = commands.add_parser(
        "headline", help="print a finished run's answer (the README's headline) from its verdicts")
    headline.add_argument("run", type=Path, help="run folder holding metrics.csv, e.g. "
                                                 "results/default")
    reproduce = commands.add_parser(
        "reproduce", help="compare a rerun with a reference run, within noise")
    reproduce.add_argument("rerun", type=Path,
                           help="the rerun: its run folder or its metrics.csv (a heldout.csv "
                                "beside it is compared too when the reference has one)")
    reproduce.add_argument("reference", type=Path,
                           help="the reference (committed) run: its folder or its metrics.csv")
    reproduce.add_argument("-o", "--output", type=Path, default=None,
                           help="write the comparison table here (atomically)")
    return parser


def reproduce_command(args: argparse.Namespace) -> None:
    """Print ``report.reproduction``'s line for two runs (folders or ``metrics.csv`` files; the
    ``heldout.csv`` beside each is compared too when both exist); write its table to ``-o``."""
    from mirl_lib.fileio import atomic_write_text
    from mirl_lib.report import reproduction, reproduction_inputs

    paths = []
    for path in (args.rerun, args.reference):
        if path.is_dir():
            path = path / "metrics.csv"
        if not path.is_file():
            raise DataError(f"{path}: no such file (a run's metrics.csv, or its run folder)")
        paths.append(path)
    if args.output is not None and not args.output.parent.is_dir():
        raise DataError(f"{args.output.parent}: no such folder for --output")
    rerun, reference, heldout, replication = reproduction_inputs(*paths)
    hashes = [sorted(set(t["config_hash"].astype(str))) if "config_hash" in t else []
              for t in (rerun, reference)]
    if hashes[0] != hashes[1]:
        raise DataError(f"{paths[0]}: config hash {', '.join(hashes[0]) or 'none'} differs from "
                        f"{paths[1]}'s {', '.join(hashes[1]) or 'none'}: not a rerun of the "
                        f"same study")
    table, line = reproduction(rerun, reference, heldout=heldout, replication=replication)
    comp = table[table["kind"] == "comparison"]
    if not (comp["reference_difference"].notna() & comp["rerun_difference"].notna()).any():
        raise DataError(f"{paths[0]} and {paths[1]} share no comparison")
    if args.output is not None:
        atomic_write_text(table.to_csv(index=False), args.output)
    print(line)


def headline_command(args: argparse.Namespace) -> None:
    """Print ``report.headline`` of ``<run>/metrics.csv`` between the README's markers, with the
    ``replication.csv`` the evaluation stage wrote beside it (simulated afresh when absent)."""
    import pandas as pd

    from mirl_lib.report import headline, read_optional

    metrics = args.run / "metrics.csv"
    if not metrics.is_file():
        raise DataError(f"{metrics}: no such file (is {args.run} a finished run folder?)")
    text = headline(pd.read_csv(metrics), replication=read_optional(args.run / "replication.csv"))
    print(f"<!-- headline:{args.run.name} -->\n{text}<!-- /headline -->")


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


@dataclass
class Scoring:
    """How far an evaluation got; printed when Ctrl-C stops it."""

    total: int | None = None
    scored: int = 0
    hint = "nothing written; rerun the same command to score again"

    def __str__(self) -> str:
        if self.total is None:
            return "no image scored"
        return f"{self.scored} of {self.total} images scored"

    def update(self, done: int, total: int) -> None:
        self.scored, self.total = done, total


def _jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder."""
    from mirl_lib.images import IMAGE_SUFFIXES, WRITE_FORMATS

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
    from mirl_lib.images import output_format

    for _, out in jobs:
        output_format(out)
    for folder in sorted({out.parent for _, out in jobs}):
        _check_folder(folder)


def _check_folder(folder: Path) -> None:
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
    from mirl_lib.model import SIZE_MULTIPLE

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
    from mirl_lib.images import read_rgb, write_rgb
    from mirl_lib.restore import is_out_of_memory, restore_image

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

    from mirl_lib.checkpoints import load_model
    from mirl_lib.config import model_config
    from mirl_lib.device import resolve_device
    from mirl_lib.restore import check_tiling

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


def evaluate_command(args: argparse.Namespace, scoring: Scoring | None = None) -> None:
    """Score ``args.checkpoint`` on the test sets of ``args.params``, write the CSV, print the
    paper's table; ``scoring`` counts the images scored."""
    from mirl_lib.config import load_config, model_config
    from mirl_lib.device import resolve_device
    from mirl_lib.evaluate import evaluate_checkpoint, format_paper_table, paper_table
    from mirl_lib.restore import check_tiling, is_out_of_memory

    scoring = Scoring() if scoring is None else scoring
    if args.params == DEFAULT_PARAMS and not args.params.is_file():
        raise ConfigError(f"{args.params}: params file not found in the current folder; name one "
                          f"with --params")
    overrides = ({"data": {"root": str(args.data_root.resolve())}}  # relative to this shell
                 if args.data_root is not None else None)
    cfg = load_config(args.params, overrides)
    expected = model_config(args.preset) if args.preset else cfg.model
    if args.output is not None:
        if args.output.is_dir():
            raise DataError(f"{args.output}: is a folder; name the CSV file to write")
        _check_folder(args.output.parent)
    check_tiling(args.tile, args.overlap)
    device = resolve_device(args.device)
    try:
        scores = evaluate_checkpoint(args.checkpoint, cfg, expected=expected, device=device,
                                     tile=args.tile, overlap=args.overlap, progress=True,
                                     on_image=scoring.update)
    except DataError as exc:
        raise DataError(f"{exc} (test sets of {args.params}, data.source {cfg.data.source}, "
                        f"data.root {cfg.data.root}; --data-root reads another folder)") from None
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        hint = (f"--tile {SUGGESTED_TILE} (tiled scores differ slightly from the study's "
                f"whole-image ones)" if args.tile == 0 else "a smaller --tile")
        raise NotEnoughMemoryError(f"{args.checkpoint}: out of memory on {device} after "
                                   f"{scoring}; run again with {hint}") from None
    if args.output is not None:
        from mirl_lib.fileio import atomic_write_text

        atomic_write_text(scores.to_csv(index=False), args.output)
    how = "whole images" if args.tile == 0 else f"tiles {args.tile}, overlap {args.overlap}"
    print(f"{args.checkpoint} ({scores['format'].iloc[0]}, {expected.preset!r} model) on the test "
          f"sets of {args.params} (data.source {cfg.data.source}, data.root {cfg.data.root}, "
          f"test_seed {cfg.data.test_seed}), {how}, on {device}:")
    print(format_paper_table(paper_table(scores)))
    if args.output is not None:
        print(f"wrote {len(scores)} per-image scores to {args.output}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code: 2 on any ``MirlError`` or ``OSError`` (one
    ``error:`` line), 130 on Ctrl-C (one line saying how to continue)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    evaluating = argv[:1] == ["evaluate"]
    progress: Progress | Scoring = Scoring() if evaluating else Progress()
    try:
        args = _parser().parse_args(argv)  # imports torch: Ctrl-C may come already
        if evaluating:
            evaluate_command(args, progress)
        elif args.command == "headline":
            headline_command(args)
        elif args.command == "reproduce":
            reproduce_command(args)
        else:
            restore_command(args, progress)
    except KeyboardInterrupt:
        print(f"interrupted: {progress}; {progress.hint}", file=sys.stderr)
        return 130
    except (MirlError, OSError) as exc:  # OSError: a folder or file the system refused to write
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
