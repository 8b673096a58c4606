"""The study's strategies: one registered object each, the one place that says what a strategy is.

Every trained network of a study is a *point* ``(seed, strategy, round)``. A strategy declares, in
its class and nowhere else:

- ``name``, ``label`` and ``order`` (display order in tables, figures and the viewer);
- ``role``: ``dense``, ``trunk`` (the MIR-L chain itself), ``ablation`` or ``control``;
- ``placement``: the rounds it runs at (``dense``: round 0; ``every_round``: every trunk round;
  ``chain``: rounds 1 .. the deepest branch round; ``branch_rounds``: the trunk rounds closest to
  ``study.branch_remaining``), see ``Strategy.rounds``;
- ``requires(rnd)``: the points (same seed) it reads; the runner schedules from these and a point
  may read nothing else (``PointContext`` refuses undeclared reads);
- ``mask(ctx, rnd)``: its pruning mask, a pure function of the points it requires;
- ``start(ctx, rnd)``: its starting weights, the schedule step it starts at and what it records;
- ``reads_dense_steps`` / ``snapshot_steps``: intermediate weights it reads / keeps;
- ``model_config(cfg, rnd)``: the architecture it trains (the study's, except for the small-dense
  control, a narrowed PromptIR of the ticket's parameter count); ``network(cfg, rnd, state)``
  builds it around its starting weights (the structured ticket: a physically narrower PromptIR);
- ``stage(rnd)``: the notebook stage that trains it;
- ``compared_with``: other strategies it is compared with besides the ticket (the structured
  ticket with the small dense network of its size).

Two kinds of ablation. *Chains* (``late_rewind_chain``, ``finetune_chain``) run their own iterative
pruning down to the deepest branch round, so their masks come from their own training: faithful,
but as costly as the trunk. *Branches on the ticket's mask* (``late_rewind``, ``finetune``) take the
trunk's mask at a branch round and change only where training starts (dense weights after k steps;
the trunk's trained weights of the round before, no rewind): the same mask, so the comparison with
the ticket isolates the starting point, at a fraction of the cost. The embedded tiers run the
branches; a params file may list the chains instead.

The stage graph (``mirl_lib.study.graph``), ``Study`` (``mirl_lib.study.study``), the report, the
figures and the viewer read names, order and dependencies from ``REGISTRY``. Adding a strategy is
one new class decorated with ``@register`` (plus its test).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from mirl_lib.core.errors import ConfigError
from mirl_lib.core.names import DENSE, TRUNK
from mirl_lib.files.paths import CHANNELS_FILE, FINAL_FILE, INIT_FILE, MASK_FILE, snapshot_file
from mirl_lib.net import structured
from mirl_lib.net.checkpoints import save_weights
from mirl_lib.net.sizing import narrowed, skeleton
from mirl_lib.pruning import channels, masks, rules
from mirl_lib.pruning.plan import plan_table

if TYPE_CHECKING:
    from mirl_lib.core.config import Config, ModelConfig, StudyConfig


Point = tuple[str, int]  # (strategy, round), within one seed
DENSE_POINT: Point = (DENSE, 0)
REINIT_SEED_OFFSET = 10_000
RANDOM_MASK_SEED_OFFSET = 20_000
SMALL_DENSE_SEED_OFFSET = 30_000
ROLES = ("dense", "trunk", "ablation", "control")


@dataclass(frozen=True)
class Schedule:
    """The rounds a study runs: ``trunk_rounds`` pruning rounds; branches at ``branch_rounds``."""

    trunk_rounds: int
    branch_rounds: tuple[int, ...]

    @property
    def deepest(self) -> int:
        """The sparsest branch round: the chains run down to it."""
        return max(self.branch_rounds)


@dataclass(frozen=True)
class Start:
    """Where a point's training starts: weights, global schedule step, and what to record."""

    state: dict[str, torch.Tensor]
    step: int = 0
    record: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageSpec:
    """The notebook stage that trains a point: stage name, notebook file, injected parameters."""

    name: str
    notebook: str
    parameters: tuple[tuple[str, Any], ...] = ()


class PointContext:
    """What a strategy may read while it builds one point's mask and starting weights.

    ``trained``, ``mask_of``, ``initial`` and ``snapshot`` refuse points that the strategy did not
    declare in ``requires`` (a programming error: the schedule would not wait for them) and points
    that are not finished yet (a ``ConfigError``: the stages ran out of order).
    """

    def __init__(self, study: Any, seed: int, strategy: Strategy, rnd: int, folder: Path) -> None:
        self.study, self.seed, self.strategy, self.round, self.folder = (
            study, seed, strategy, rnd, folder)
        self.cfg: Config = study.cfg
        self.requires = tuple(strategy.requires(rnd))

    def check_ready(self) -> None:
        """Raise ``ConfigError`` naming the first required point that has not finished."""
        for point in self.requires:
            if not self.study.is_done(self.seed, *point):
                raise ConfigError(f"{self.study.point_dir(self.seed, *point)}: this stage has not "
                                  f"been run yet; run the stages in order (./run_all.sh does)")

    def _allowed(self, point: Point) -> Path:
        if point not in self.requires:
            raise RuntimeError(f"strategy {self.strategy.name!r} round {self.round} reads {point}, "
                               f"which its requires() does not declare")
        self.check_ready()
        return self.study.point_dir(self.seed, *point)

    def model(self, init_seed: int) -> torch.nn.Module:
        """A freshly initialized network of the study's architecture (seeded)."""
        return self.study.new_model(init_seed)

    def full_mask(self) -> masks.Mask:
        """A mask keeping every prunable weight of the study's scope."""
        return masks.full_mask(self.study.skeleton(), self.cfg.prune.scope)

    def trained(self, point: Point) -> dict[str, torch.Tensor]:
        """The final trained weights of a required point."""
        return self.study.load_state(self._allowed(point) / FINAL_FILE)

    def initial(self) -> dict[str, torch.Tensor]:
        """The dense network's weights at initialization (this seed)."""
        return self.study.load_state(self._allowed(DENSE_POINT) / INIT_FILE)

    def snapshot(self, step: int) -> dict[str, torch.Tensor]:
        """The dense network's weights after ``step`` training steps."""
        return self.study.load_state(self._allowed(DENSE_POINT) / snapshot_file(step))

    def mask_of(self, point: Point) -> masks.Mask:
        """The saved mask of a required point (the dense point's is the full mask)."""
        folder = self._allowed(point)
        return self.full_mask() if point == DENSE_POINT else masks.load_mask(folder / MASK_FILE)


class Strategy:
    """Base class: see the module docstring for what each attribute and method declares."""

    name: ClassVar[str]
    label: ClassVar[str]
    order: ClassVar[int]
    role: ClassVar[str]
    placement: ClassVar[str]
    description: ClassVar[str]
    # strategies this one is also compared with, at every round both ran (exploratory estimates
    # beside the ticket's; ``report.comparisons``)
    compared_with: ClassVar[tuple[str, ...]] = ()

    def rounds(self, schedule: Schedule) -> tuple[int, ...]:
        """The rounds this strategy runs at, in the order they must run."""
        if self.placement == "dense":
            return (0,)
        if self.placement == "every_round":
            return tuple(range(1, schedule.trunk_rounds + 1))
        if self.placement == "chain":
            return tuple(range(1, schedule.deepest + 1))
        if self.placement == "branch_rounds":
            return tuple(schedule.branch_rounds)
        raise ValueError(f"strategy {self.name!r}: unknown placement {self.placement!r}")

    def requires(self, rnd: int) -> tuple[Point, ...]:
        """The points (same seed) this strategy's round ``rnd`` reads."""
        raise NotImplementedError

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        """The pruning mask of round ``rnd`` (saved as ``mask.pt`` with its density report)."""
        raise NotImplementedError

    def start(self, ctx: PointContext, rnd: int) -> Start:
        """Starting weights, schedule step and the record entries of round ``rnd``."""
        raise NotImplementedError

    def reads_dense_steps(self, cfg: Config) -> tuple[int, ...]:
        """Steps of the dense training whose weights this strategy reads (``ctx.snapshot``)."""
        return ()

    def model_config(self, cfg: Config, rnd: int) -> ModelConfig:
        """The architecture this strategy trains at round ``rnd`` (default: the study's)."""
        return cfg.model

    def network(self, cfg: Config, rnd: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        """The network of round ``rnd`` holding ``state`` (its starting weights): PromptIR of
        ``model_config`` (a structured strategy: a narrower one, at the widths of ``state``)."""
        from mirl_lib.net.promptir import build_model

        model = build_model(self.model_config(cfg, rnd))
        model.load_state_dict(state)
        return model

    def snapshot_steps(self, cfg: Config) -> tuple[int, ...]:
        """Steps of this strategy's own training whose weights are kept as
        ``weights_step<k>.pt``."""
        return ()

    def stage(self, rnd: int) -> StageSpec:
        """The notebook stage that trains round ``rnd`` (branches: one stage per round, so a
        branch at an early round starts as soon as the trunk round it reads is done)."""
        return StageSpec(f"branch_{self.name}_{rnd:02d}", "03_branch.ipynb",
                         (("strategy", self.name), ("round", rnd)))


REGISTRY: dict[str, Strategy] = {}


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: add one instance of ``cls`` to ``REGISTRY`` (kept in display order)."""
    strategy = cls()
    if strategy.name in REGISTRY:
        raise ValueError(f"strategy {strategy.name!r} is registered twice")
    if strategy.role not in ROLES:
        raise ValueError(f"strategy {strategy.name!r}: role {strategy.role!r} not in {ROLES}")
    REGISTRY[strategy.name] = strategy
    ordered = sorted(REGISTRY.values(), key=lambda s: (s.order, s.name))
    REGISTRY.clear()
    REGISTRY.update((s.name, s) for s in ordered)
    return cls


def ordered(names: Iterable[str] | None = None) -> list[str]:
    """Strategy names in display order (all registered ones, or those among ``names``)."""
    chosen = set(REGISTRY) if names is None else set(names)
    return [n for n in REGISTRY if n in chosen] + sorted(chosen - set(REGISTRY))


def labels() -> dict[str, str]:
    """Display label of every registered strategy."""
    return {name: s.label for name, s in REGISTRY.items()}


def with_role(*roles: str) -> list[str]:
    """Names of the registered strategies with one of ``roles``, in display order."""
    return [name for name, s in REGISTRY.items() if s.role in roles]


def optional_names() -> list[str]:
    """Strategies a params file may list in ``study.strategies`` (the dense network and the trunk
    always run)."""
    return with_role("ablation", "control")


def check_study(study: StudyConfig) -> None:
    """``study.strategies`` names registered optional strategies (``ConfigError`` otherwise)."""
    known = optional_names()
    unknown = [b for b in study.strategies if b not in known]
    if unknown:
        raise ConfigError(f"study.strategies: unknown strategy(ies) {unknown}; known: {known}")


def check_analysis(cfg: Config) -> None:
    """``analysis.primary`` names the dense network or registered optional strategies
    (``ConfigError`` otherwise). One the study does not run is left out of the tests."""
    known = [DENSE, *optional_names()]
    unknown = [vs for vs, _ in cfg.analysis.comparisons() if vs not in known]
    if unknown:
        raise ConfigError(f"analysis.primary: unknown strategy(ies) {unknown}; known: {known}")


def in_study(study: StudyConfig) -> list[Strategy]:
    """The strategies a study runs (dense and the trunk always), in display order."""
    chosen = {*with_role("dense", "trunk"), *study.strategies}
    return [s for name, s in REGISTRY.items() if name in chosen]


def previous(strategy: str, rnd: int) -> Point:
    """The point a chain's round starts from: the dense network for round 1."""
    return DENSE_POINT if rnd == 1 else (strategy, rnd - 1)


# ----- the strategies ---------------------------------------------------------------------------

@register
class Dense(Strategy):
    name, label, order, role, placement = DENSE, "dense", 0, "dense", "dense"
    description = "the dense network, trained from its seeded initialization (round 0)"

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return ()

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        return ctx.full_mask()

    def start(self, ctx: PointContext, rnd: int) -> Start:
        # init.pt is what every rewinding strategy returns to; written once, before training
        model = ctx.model(ctx.seed)
        if not (ctx.folder / INIT_FILE).exists():
            save_weights(model, ctx.folder / INIT_FILE, {"seed": ctx.seed})
        return Start(model.state_dict(), 0, {"init_seed": ctx.seed})

    def snapshot_steps(self, cfg: Config) -> tuple[int, ...]:
        # every registered strategy's needs, so a branch added to a finished study finds them
        return tuple(sorted({k for s in REGISTRY.values() for k in s.reads_dense_steps(cfg)}))

    def stage(self, rnd: int) -> StageSpec:
        return StageSpec("dense", "01_dense.ipynb")


class _Chain(Strategy):
    """Iterative pruning: round r prunes the trained weights of round r - 1 of the same chain."""

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return tuple(dict.fromkeys((DENSE_POINT, previous(self.name, rnd))))

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        before = previous(self.name, rnd)
        prev_mask = ctx.mask_of(before)
        weights = ctx.trained(before)
        return rules.prune({n: weights[n] for n in prev_mask}, prev_mask, ctx.cfg.prune)


@register
class Rewind(_Chain):
    name, label, order, role, placement = (TRUNK, "ticket (rewind to init)", 1, "trunk",
                                           "every_round")
    description = ("MIR-L: prune 20% of the previous round's trained weights (one global "
                   "threshold), rewind the survivors to their initialization, retrain")

    def start(self, ctx: PointContext, rnd: int) -> Start:
        return Start(ctx.initial(), 0, {"init_seed": ctx.seed})

    def stage(self, rnd: int) -> StageSpec:
        return StageSpec(f"round_{rnd:02d}", "02_prune_round.ipynb", (("round", rnd),))


class _FromLateRewind(Strategy):
    """Starts from the dense weights after ``prune.late_rewind_step`` steps, the schedule resumed
    there (both late-rewind strategies)."""

    def start(self, ctx: PointContext, rnd: int) -> Start:
        step = ctx.cfg.prune.late_rewind_step
        return Start(ctx.snapshot(step), step, {"init_seed": ctx.seed, "rewind_step": step})

    def reads_dense_steps(self, cfg: Config) -> tuple[int, ...]:
        return (cfg.prune.late_rewind_step,)


@register
class LateRewindChain(_FromLateRewind, _Chain):
    name, label, order, role, placement = ("late_rewind_chain", "late rewind (own chain)", 8,
                                           "ablation", "chain")
    description = ("an iterative chain of its own, rewinding to the dense weights after "
                   "prune.late_rewind_step steps; the learning-rate schedule resumes from that "
                   "step")


@register
class FinetuneChain(_Chain):
    name, label, order, role, placement = ("finetune_chain", "fine-tune (own chain)", 9,
                                           "ablation", "chain")
    description = "an iterative chain of its own without rewinding: survivors keep trained values"

    def start(self, ctx: PointContext, rnd: int) -> Start:
        return Start(ctx.trained(previous(self.name, rnd)), 0, {"init_seed": ctx.seed})


class _OnTicketMask(Strategy):
    """A branch at a trunk round that trains the ticket's own mask from another starting point."""

    placement = "branch_rounds"

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        return ctx.mask_of((TRUNK, rnd))


@register
class LateRewind(_FromLateRewind, _OnTicketMask):
    name, label, order, role = "late_rewind", "late rewind", 2, "ablation"
    description = ("the ticket's mask, rewound to the dense weights after prune.late_rewind_step "
                   "steps instead of initialization; the learning-rate schedule resumes there")

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return (DENSE_POINT, (TRUNK, rnd))


@register
class Finetune(_OnTicketMask):
    name, label, order, role = "finetune", "fine-tune (no rewind)", 3, "ablation"
    description = ("the ticket's mask without rewinding: the trunk's trained weights of the round "
                   "before (the ones this mask pruned) keep training, schedule restarted")

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return tuple(dict.fromkeys((DENSE_POINT, (TRUNK, rnd), previous(TRUNK, rnd))))

    def start(self, ctx: PointContext, rnd: int) -> Start:
        return Start(ctx.trained(previous(TRUNK, rnd)), 0, {"init_seed": ctx.seed})


@register
class OneShot(Strategy):
    name, label, order, role, placement = "oneshot", "one-shot", 4, "ablation", "branch_rounds"
    description = ("the trained dense network pruned straight to a trunk round's sparsity, "
                   "rewound to initialization, retrained")

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return (DENSE_POINT, (TRUNK, rnd))

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        full = ctx.full_mask()
        weights = ctx.trained(DENSE_POINT)
        trunk = ctx.mask_of((TRUNK, rnd))
        target = sum(int(m.sum()) for m in trunk.values()) / sum(m.numel() for m in trunk.values())
        return rules.oneshot_mask({n: weights[n] for n in full}, full, target,
                                    ctx.cfg.prune.method, ctx.cfg.prune.output_rate_factor)

    def start(self, ctx: PointContext, rnd: int) -> Start:
        return Start(ctx.initial(), 0, {"init_seed": ctx.seed})


@register
class Reinit(Strategy):
    name, label, order, role, placement = "reinit", "random re-init", 5, "control", "branch_rounds"
    description = "the trunk's mask with a fresh random initialization (seed + 10000)"

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return ((TRUNK, rnd),)

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        return ctx.mask_of((TRUNK, rnd))

    def start(self, ctx: PointContext, rnd: int) -> Start:
        init_seed = ctx.seed + REINIT_SEED_OFFSET
        return Start(ctx.model(init_seed).state_dict(), 0, {"init_seed": init_seed})


@register
class RandomMask(Strategy):
    name, label, order, role, placement = ("random_mask", "random mask", 6, "control",
                                           "branch_rounds")
    description = ("a random mask with the trunk mask's per-layer counts, rewound to "
                   "initialization (mask seed seed + 20000 + round)")

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return (DENSE_POINT, (TRUNK, rnd))

    @staticmethod
    def mask_seed(seed: int, rnd: int) -> int:
        return seed + RANDOM_MASK_SEED_OFFSET + rnd

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        return rules.random_mask(ctx.mask_of((TRUNK, rnd)), seed=self.mask_seed(ctx.seed, rnd))

    def start(self, ctx: PointContext, rnd: int) -> Start:
        return Start(ctx.initial(), 0, {"init_seed": ctx.seed,
                                        "mask_seed": self.mask_seed(ctx.seed, rnd)})


@register
class SmallDense(Strategy):
    name, label, order, role, placement = ("small_dense", "small dense (same size)", 7,
                                           "control", "branch_rounds")
    description = ("a PromptIR narrowed (width and prompts, ``net.sizing.narrowed``) to the "
                   "ticket's total parameter count (within 5%), trained dense from scratch with "
                   "the same schedule (init seed seed + 30000): is a ticket better than a small "
                   "network?")

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return ()  # the ticket's count is exact before any training (``Study.plan``)

    def model_config(self, cfg: Config, rnd: int) -> ModelConfig:
        plan = plan_table(cfg.model, cfg.prune).set_index("round")
        target = int(plan.at[rnd, "total"] - plan.at[rnd, "prunable"] + plan.at[rnd, "kept"])
        return narrowed(cfg.model, target)

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        return masks.full_mask(skeleton(self.model_config(ctx.cfg, rnd)), ctx.cfg.prune.scope)

    def start(self, ctx: PointContext, rnd: int) -> Start:
        from mirl_lib.net.promptir import build_model

        init_seed = ctx.seed + SMALL_DENSE_SEED_OFFSET
        net = build_model(self.model_config(ctx.cfg, rnd), seed=init_seed)
        return Start(net.state_dict(), 0, {"init_seed": init_seed})


@register
class ChannelRewind(Strategy):
    name, label, order, role, placement = ("channel_rewind", "structured ticket (channels)", 10,
                                           "ablation", "chain")
    compared_with = (SmallDense.name,)
    description = ("MIR-L with whole channels: each round removes the least important coupled "
                   "channel groups (pruning.channels; prune.channel_importance, "
                   "prune.channel_method) of the previous round's trained network until it has the "
                   "trunk's parameter count of this round, rewinds the survivors to their "
                   "initialization and retrains a physically narrower PromptIR")

    def requires(self, rnd: int) -> tuple[Point, ...]:
        return tuple(dict.fromkeys((DENSE_POINT, previous(self.name, rnd))))

    @staticmethod
    def target(cfg: Config, rnd: int) -> int:
        """The trunk's total parameter count at round ``rnd`` (exact, ``plan_table``)."""
        plan = plan_table(cfg.model, cfg.prune).set_index("round")
        return int(plan.at[rnd, "total"] - plan.at[rnd, "prunable"] + plan.at[rnd, "kept"])

    def selection(self, ctx: PointContext, rnd: int) -> channels.Selection:
        """The channel units removed at round ``rnd`` (made once, saved as ``channels.pt``)."""
        table = channels.groups(ctx.study.skeleton())
        path = ctx.folder / CHANNELS_FILE
        if path.exists():
            return channels.load_selection(path, table)
        before = previous(self.name, rnd)
        if before == DENSE_POINT:
            kept = channels.empty_selection(table)
            trained = ctx.trained(DENSE_POINT)
        else:
            kept = channels.load_selection(
                ctx.study.point_dir(ctx.seed, *before) / CHANNELS_FILE, table)
            trained = channels.expand_state(ctx.trained(before), table, kept, _shapes(ctx))
        chosen = channels.cut(trained, table, kept, self.target(ctx.cfg, rnd),
                              ctx.cfg.prune.channel_importance, ctx.cfg.prune.channel_method)
        channels.save_selection(chosen, path)
        return chosen

    def network(self, cfg: Config, rnd: int, state: dict[str, torch.Tensor]) -> torch.nn.Module:
        return structured.build(cfg.model, state)

    def mask(self, ctx: PointContext, rnd: int) -> masks.Mask:
        # nothing is masked: every weight of the narrower network (its shapes alone)
        table = channels.groups(ctx.study.skeleton())
        narrow = channels.pruned_shapes(table, self.selection(ctx, rnd), _shapes(ctx))
        return masks.full_mask(structured.shaped(ctx.cfg.model, narrow, device="meta"),
                               ctx.cfg.prune.scope)

    def start(self, ctx: PointContext, rnd: int) -> Start:
        table = channels.groups(ctx.study.skeleton())
        removed = self.selection(ctx, rnd)
        return Start(channels.prune_state(ctx.initial(), table, removed), 0,
                     {"init_seed": ctx.seed,
                      "channels_removed": int(sum(int(m.sum()) for m in removed.values()))})


def _shapes(ctx: PointContext) -> dict[str, tuple[int, ...]]:
    """The study network's unpruned tensor shapes."""
    return {k: tuple(v.shape) for k, v in ctx.study.skeleton().state_dict().items()}
