"""``python -m mirl_lib headline RUN`` and ``reproduce RERUN REFERENCE``: a finished run's answer,
and whether a rerun reproduces a reference run.
"""
from __future__ import annotations

import argparse

from mirl_lib.core.errors import DataError
from mirl_lib.files.paths import CONFIG_FILE, METRICS_FILE


def reproduce_command(args: argparse.Namespace) -> None:
    """Print ``report.reproduction.reproduction``'s line for two runs (folders or ``metrics.csv`` files; the
    ``heldout.csv`` beside each is compared too when both exist); write its table to ``-o``."""
    from mirl_lib.files.atomic import atomic_write_text
    from mirl_lib.report.reproduction import reproduction, reproduction_inputs

    paths = []
    for path in (args.rerun, args.reference):
        if path.is_dir():
            path = path / METRICS_FILE
        if not path.is_file():
            raise DataError(f"{path}: no such file (a run's metrics.csv, or its run folder)")
        paths.append(path)
    if args.output is not None and not args.output.parent.is_dir():
        raise DataError(f"{args.output.parent}: no such folder for --output")
    rerun, reference, heldout, analysis = reproduction_inputs(*paths)
    hashes = [sorted(set(t["config_hash"].astype(str))) if "config_hash" in t else []
              for t in (rerun, reference)]
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
    import pandas as pd

    from mirl_lib.core.config import load_config
    from mirl_lib.report.headline import headline

    metrics, config = args.run / METRICS_FILE, args.run / CONFIG_FILE
    for path in (metrics, config):
        if not path.is_file():
            raise DataError(f"{path}: no such file (is {args.run} a finished run folder?)")
    text = headline(pd.read_csv(metrics), load_config(config).analysis)
    print(f"<!-- headline:{args.run.name} -->\n{text}<!-- /headline -->")
