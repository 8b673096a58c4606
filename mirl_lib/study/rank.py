"""One point's training as a rank of ``torchrun``: ``python -m mirl_lib.study.rank RUN SEED
STRATEGY ROUND``, started by ``Study.run_point`` when ``train.gpus`` > 1.

Each rank reads the run folder's recorded ``config.yaml``, builds the point's starting weights and
mask exactly as a single-process run would (``Study.start``; the mask was already saved by the
launching process) and calls ``train``, which detects ``torchrun``'s environment, wraps the model
in DistributedDataParallel and splits the global batch over the ranks; rank 0 writes
``state.pt``, ``history.csv`` and ``final.pt``. Every rank dies with its parent.
"""
from __future__ import annotations

import sys
from pathlib import Path

from mirl_lib.core.config import load_config
from mirl_lib.core.processes import die_with_parent
from mirl_lib.files.paths import CONFIG_FILE
from mirl_lib.study.study import Study


def main(argv: list[str]) -> None:
    die_with_parent()
    run_dir, seed, strategy, rnd = Path(argv[0]), int(argv[1]), argv[2], int(argv[3])
    study = Study(load_config(run_dir / CONFIG_FILE), run_dir)
    study.train_point(seed, strategy, rnd)


if __name__ == "__main__":
    main(sys.argv[1:])
