"""A stage of the study: one notebook execution (``Stage``), in a module without torch, so that a
stage's Slurm job can run it from its description alone (``runner.papermill.run_described``)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Stage:
    """One notebook execution: its name, notebook file and injected parameters; the points it
    trains, for ``seeds`` (``None``: every seed of the study)."""

    name: str
    notebook: str
    parameters: dict = field(default_factory=dict)
    points: tuple[tuple[str, int], ...] = ()
    seeds: tuple[int, ...] | None = None

    def describe(self) -> str:
        """The stage as JSON (``Stage.described`` reads it back)."""
        return json.dumps(asdict(self))

    @staticmethod
    def described(text: str) -> Stage:
        """The stage ``describe`` wrote."""
        spec = json.loads(text)
        points = tuple(tuple(point) for point in spec.pop("points"))
        seeds = spec.pop("seeds")
        return Stage(**spec, points=points, seeds=None if seeds is None else tuple(seeds))
