"""``python -m mirl_lib evaluate --checkpoint CKPT``: score a checkpoint with the study's
protocol."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from mirl_lib.cli.restore import SUGGESTED_TILE, check_folder
from mirl_lib.core.errors import ConfigError, DataError, NotEnoughMemoryError

DEFAULT_PARAMS = Path("params/paper.yaml")


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


def evaluate_command(args: argparse.Namespace, scoring: Scoring | None = None) -> None:
    """Score ``args.checkpoint`` on the test sets of ``args.params``, write the CSV, print the
    paper's table; ``scoring`` counts the images scored."""
    from mirl_lib.core.config import load_config, model_config
    from mirl_lib.core.device import resolve_device
    from mirl_lib.evaluation.paper_table import format_paper_table, paper_table
    from mirl_lib.evaluation.restore import check_tiling, is_out_of_memory
    from mirl_lib.evaluation.scoring import evaluate_checkpoint

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
        check_folder(args.output.parent)
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
        from mirl_lib.files.atomic import atomic_write_text

        atomic_write_text(scores.to_csv(index=False), args.output)
    how = "whole images" if args.tile == 0 else f"tiles {args.tile}, overlap {args.overlap}"
    print(f"{args.checkpoint} ({scores['format'].iloc[0]}, {expected.preset!r} model) on the test "
          f"sets of {args.params} (data.source {cfg.data.source}, data.root {cfg.data.root}, "
          f"test_seed {cfg.data.test_seed}), {how}, on {device}:")
    print(format_paper_table(paper_table(scores)))
    if args.output is not None:
        print(f"wrote {len(scores)} per-image scores to {args.output}", file=sys.stderr)
