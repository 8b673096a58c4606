"""``python -m mirl_lib headline RUN``, ``report RUN`` and ``reproduce RERUN REFERENCE``: a
finished run's answer, its statistics derived again from its tables, and whether a rerun reproduces
a reference run.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mirl_lib.core.errors import DataError
from mirl_lib.files.paths import CONFIG_FILE, METRICS_FILE, TICKET_SPEED_COLUMNS


def finished_run(run: Path) -> tuple[Path, Path]:
    """A finished run folder's ``metrics.csv`` and ``config.yaml``; ``DataError`` naming the one
    missing."""
    paths = (run / METRICS_FILE, run / CONFIG_FILE)
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file (is {run} a finished run folder?)")
    return paths


def reproduce_command(args: argparse.Namespace) -> None:
    """Print ``report.reproduction.reproduction``'s line for two runs (folders or ``metrics.csv``
    files; the ``heldout.csv`` beside each is compared too when both exist); write its table to
    ``-o``."""
    paths = []
    for path in (args.rerun, args.reference):
        if path.is_dir():
            path = path / METRICS_FILE
        if not path.is_file():
            raise DataError(f"{path}: no such file (a run's metrics.csv, or its run folder)")
        paths.append(path)
    if args.output is not None and not args.output.parent.is_dir():
        raise DataError(f"{args.output.parent}: no such folder for --output")
    # the paths are checked before torch is imported: a refusal takes a fraction of a second
    from mirl_lib.files.atomic import atomic_write_text
    from mirl_lib.report.reproduction import reproduction, reproduction_inputs

    rerun, reference, heldout, analysis = reproduction_inputs(*paths)
    from mirl_lib.core.config import scored_by

    hashes = [scored_by(t) for t in (rerun, reference)]
    if hashes[0] != hashes[1]:
        raise DataError(f"{paths[0]}: config hash {', '.join(hashes[0]) or 'none'} differs from "
                        f"{paths[1]}'s {', '.join(hashes[1]) or 'none'}: not a rerun of the "
                        f"same study")
    table, line = reproduction(rerun, reference, analysis, heldout=heldout)
    comp = table[table["kind"] == "estimate"]
    if not (comp["reference_difference"].notna() & comp["rerun_difference"].notna()).any():
        raise DataError(f"{paths[0]} and {paths[1]} share no comparison")
    if args.output is not None:
        atomic_write_text(table.to_csv(index=False), args.output)
    print(line)


def headline_command(args: argparse.Namespace) -> None:
    """Print ``report.headline.headline`` of ``<run>/metrics.csv`` between the README's markers,
    with the analysis settings of the run's ``config.yaml`` (its primary comparisons, margin)."""
    metrics, config = finished_run(args.run)
    import pandas as pd

    from mirl_lib.core.config import load_config
    from mirl_lib.report.headline import headline

    text = headline(pd.read_csv(metrics), load_config(config).analysis)
    print(f"<!-- headline:{args.run.name} -->\n{text}<!-- /headline -->")


def sizes_command(args: argparse.Namespace) -> None:
    """Print ``report.sizes.sizes_block`` of a finished run between markers: its networks of the
    same size with their quality (``metrics.csv``, ``heldout.csv``, ``comparisons.csv``) and their
    CPU speed (``--speed``'s rows for ``--params-file``); with ``--compact``,
    ``report.sizes.compact_block`` (the README's short table)."""
    _, config = finished_run(args.run)
    if not args.speed.is_file():
        raise DataError(f"{args.speed}: no such file (benchmarks/ticket_speed.py writes it)")
    import pandas as pd

    speed = pd.read_csv(args.speed)
    missing = [c for c in TICKET_SPEED_COLUMNS if c not in speed]
    if missing:
        raise DataError(f"{args.speed}: no column(s) {missing}; rerun benchmarks/ticket_speed.py")
    from mirl_lib.core.config import load_config
    from mirl_lib.report.comparisons import load_comparisons
    from mirl_lib.report.primary import visible_scores
    from mirl_lib.report.sizes import compact_block, sizes_block, speed_rows

    name = args.params_file or f"{args.run.name}.yaml"
    rows = speed_rows(speed, name)
    if rows.empty:
        raise DataError(f"{args.speed}: no CPU rows for {name}; run benchmarks/ticket_speed.py "
                        f"--params params/{name} --run {args.run}")
    metrics, heldout = visible_scores(args.run)  # a pending confirmation's seeds held back
    comps, level = load_comparisons(args.run, metrics), load_config(config).analysis.level
    if args.compact:
        text = compact_block(metrics, rows, comps, level)
        if not text:
            raise DataError(f"{args.run}: no pair of strategies of the same size besides the "
                            f"ticket's (a strategy's compared_with) ran; --compact has no table")
        print(f"<!-- sizes-compact:{args.run.name} -->\n{text}<!-- /sizes -->")
        return
    text = sizes_block(metrics, heldout, rows, comps, level)
    print(f"<!-- sizes:{args.run.name} -->\n{text}<!-- /sizes -->")


def report_command(args: argparse.Namespace) -> None:
    """Derive a finished run's statistics again from its tables (``report.stages.analyse_run`` and
    ``draw_statistics``): ``comparisons.csv``, ``primary.csv``, ``summary.md`` and the two
    statistical figures, with the analysis settings of ``--params`` (whose identity must be the
    run's; its ``config.yaml`` is updated to it) or else of the run's ``config.yaml``. Networks
    are not needed: a run copied back from a cluster, or a committed one, is enough."""
    import pandas as pd

    from mirl_lib.core.config import load_config, scored_by

    metrics_path, config_path = finished_run(args.run)
    metrics = pd.read_csv(metrics_path)
    cfg = load_config(args.params if args.params is not None else config_path)
    made = scored_by(metrics)
    if made != [cfg.hash()]:
        source = args.params if args.params is not None else config_path
        raise DataError(f"{metrics_path}: scored by config {', '.join(made) or 'none'}, not by "
                        f"{source} (hash {cfg.hash()}); analyse a run with its own params file")
    # checked before torch and the figures are imported: a refusal takes a fraction of a second
    from mirl_lib.report.stages import analyse_run, draw_statistics
    from mirl_lib.study.study import Study

    if args.params is not None:
        Study(cfg, args.run).prepare()  # refuses another identity; records the analysis settings
    primary, summary = analyse_run(args.run, cfg, metrics)
    drawn = draw_statistics(args.run, cfg.analysis)
    print(f"{args.run}: {len(primary)} primary comparisons; wrote {summary.name}, "
          f"comparisons.csv, primary.csv, {', '.join(p.name for p in drawn)}")
