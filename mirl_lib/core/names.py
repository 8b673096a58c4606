"""The names that code without torch needs: the tasks, the all-in-one score, the dense network and
the trunk, the degraded input.

The strategy registry (``mirl_lib.study.strategies``) names every other strategy; its dense and
trunk strategies take their names from here, so the statistics and the report (which import no
network code) and the registry agree by construction. No torch, no pandas.
"""
from __future__ import annotations

from collections.abc import Iterable

# The five all-in-one tasks, in the order every table lists them.
TASKS: tuple[str, ...] = ("denoise_15", "denoise_25", "denoise_50", "derain", "dehaze")
# Task families: the three noise levels share their clean images (and dataset folders).
TASK_FAMILIES: tuple[str, ...] = ("denoise", "derain", "dehaze")
# The all-in-one score of a network: the mean of its five task means (``core.protocol.task_means``).
ALL_IN_ONE = "all-in-one"
# The dense network (round 0 of every seed) and the MIR-L trunk (prune, rewind to init, retrain).
DENSE = "dense"
TRUNK = "rewind"
# The degraded input, as the ``b`` of a dense-gain comparison.
INPUT = "input"
# The strategies a study runs beside the dense network and the trunk when its params file does not
# say (``study.strategies``): every ablation and control that branches at the trunk's rounds.
DEFAULT_STRATEGIES: tuple[str, ...] = ("late_rewind", "finetune", "oneshot", "reinit",
                                       "random_mask", "small_dense")


def task_family(task: str) -> str:
    """``denoise`` for the three noise levels, else the task itself."""
    return "denoise" if task.startswith("denoise") else task


def task_order(tasks: Iterable[str]) -> list[str]:
    """``tasks`` (repeats allowed) once each, in ``TASKS`` order, unknown ones after by name and
    ``ALL_IN_ONE`` last: the order of every table and figure."""
    rank = {t: i for i, t in enumerate(TASKS)}
    return sorted(set(tasks), key=lambda t: (t == ALL_IN_ONE, rank.get(t, len(rank)), t))
