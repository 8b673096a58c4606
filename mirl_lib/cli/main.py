"""Command line: ``python -m mirl_lib restore`` restores images, ``evaluate`` scores a checkpoint,
``headline``, ``sizes``, ``report`` and ``reproduce`` read finished runs, ``stages`` runs the study
(``./run_all.sh``).

``python -m mirl_lib stages run|list|points PARAMS``: the stage runner (``mirl_lib.cli.stages``).

``python -m mirl_lib restore IN -o OUT --checkpoint CKPT``: IN is an image or a folder of images
(then OUT is a folder; each output keeps its input's name, with ``.png`` for formats ``write_rgb``
cannot write). Every output is written atomically, with the permissions an ordinary new file gets
(the umask). An existing output file is refused unless ``--overwrite``; for a folder, outputs
already there are kept unless ``--overwrite``, so rerunning an interrupted command finishes the
rest. The outputs and the tiling are checked before the checkpoint is read.

``python -m mirl_lib evaluate --checkpoint CKPT [--params params/X.yaml] [-o scores.csv]``: scores
the checkpoint on the test sets of a params file with the study's protocol
(``mirl_lib.evaluation.scoring.evaluate_checkpoint``), writes the per-image scores to ``-o``
(atomically, replacing it) and prints the paper's table. The output folder and the tiling are
checked before the checkpoint is read.

``python -m mirl_lib report RUN [--params PARAMS]``: derives a finished run's statistics again from
its tables (``comparisons.csv``, ``primary.csv``, ``summary.md``, the two statistical figures), with
the analysis settings of PARAMS (same identity as the run) or of the run's ``config.yaml``.

``python -m mirl_lib reproduce RERUN REFERENCE [-o reproduction.csv]``: does a rerun (its run
folder or its ``metrics.csv``, e.g. from another machine or thread count) reproduce a reference run
(e.g. the committed one) within noise, on the test photos and, when both runs have a
``heldout.csv``, on the held-out photos? Prints ``report.reproduction.reproduction``'s verdict line
and writes its table. Exit code 0 either way; 2 when a file is missing or the two runs share no
comparison.

Errors (out of memory and a full disk included) print one ``error:`` line, exit code 2; Ctrl-C
prints one line saying how to continue, exit code 130.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mirl_lib.cli.evaluate import DEFAULT_PARAMS, Scoring, evaluate_command
from mirl_lib.cli.restore import SUGGESTED_TILE, Progress, restore_command
from mirl_lib.cli.results import (
    headline_command,
    report_command,
    reproduce_command,
    sizes_command,
)
from mirl_lib.core.errors import MirlError
from mirl_lib.files.paths import BENCHMARK_RESULTS, TICKET_SPEED_FILE


def _parser() -> argparse.ArgumentParser:
    from mirl_lib.core.config import SIZE_MULTIPLE

    parser = argparse.ArgumentParser(prog="python -m mirl_lib",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("stages", help="run, list or train the study's stages "
                                       "(python -m mirl_lib stages --help)")
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
    sizes = commands.add_parser(
        "sizes", help="print a finished run's networks of the same size, quality and CPU speed "
                      "side by side (the README's table)")
    sizes.add_argument("run", type=Path, help="run folder holding metrics.csv, e.g. "
                                              "results/structured")
    sizes.add_argument("--speed", type=Path, default=BENCHMARK_RESULTS / TICKET_SPEED_FILE,
                       help="benchmarks/ticket_speed.py's CSV (default: %(default)s)")
    sizes.add_argument("--params-file", default=None,
                       help="the params file name whose speed rows to use (default: the run "
                            "folder's name + .yaml)")
    sizes.add_argument("--compact", action="store_true",
                       help="one row per round for each same-size pair besides the ticket's "
                            "(the README's short table)")
    report = commands.add_parser(
        "report", help="derive a finished run's statistics, summary and statistical figures again "
                       "from its tables (no networks needed)")
    report.add_argument("run", type=Path, help="run folder holding metrics.csv and config.yaml")
    report.add_argument("--params", type=Path, default=None,
                        help="params file whose analysis settings to use (same identity as the "
                             "run; default: the run's config.yaml)")
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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code: 2 on any ``MirlError`` or ``OSError`` (one
    ``error:`` line), 130 on Ctrl-C (one line saying how to continue)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["stages"]:
        from mirl_lib.cli.stages import main as stages_main

        return stages_main(argv[1:])
    evaluating = argv[:1] == ["evaluate"]
    progress: Progress | Scoring = Scoring() if evaluating else Progress()
    try:
        args = _parser().parse_args(argv)
        if evaluating:
            evaluate_command(args, progress)
        elif args.command == "headline":
            headline_command(args)
        elif args.command == "sizes":
            sizes_command(args)
        elif args.command == "report":
            report_command(args)
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
