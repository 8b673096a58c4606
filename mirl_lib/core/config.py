"""One typed configuration for the whole study: frozen dataclasses built from YAML.

Every section is a frozen dataclass. ``load_config(path)`` reads a YAML file and fails loudly on an
unknown key, a value of the wrong type or an out-of-range value, naming the file and the key path.
``read_yaml(path)`` is the one reader of params and recorded config files: it refuses an empty file,
a top level that is not a mapping and a key written twice, and reads ``1e-3`` as a float.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from mirl_lib.core import allocator
from mirl_lib.core.errors import ConfigError
from mirl_lib.core.names import DEFAULT_STRATEGIES, TASK_FAMILIES, TASKS, task_family

SAMPLINGS: tuple[str, ...] = ("balanced", "published")


# The bundled source's training photo sets (``mirl_lib.data.photos.BUNDLED_TRAIN_SETS`` lists them).
BUNDLED_TRAIN_SET_NAMES: tuple[str, ...] = ("classic", "natural")
HAZE_DEPTHS: tuple[str, ...] = ("fixed", "per_sample")
# The bundled source's test photos (``mirl_lib.data.photos.bundled_test_photos``).
BUNDLED_TEST_SET_NAMES: tuple[str, ...] = ("classic", "unused")
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


class _Section:
    """Shared by the config sections. ``RUNTIME`` names the fields that do not change any result
    (where and how fast a run goes, how often it logs); every other field is part of the run's
    identity. ``LATER`` names identity fields added after results were first recorded: while such a
    field holds its default it is left out of ``identity()``, so adding it changed no existing
    run's hash, run folder or resumable ``state.pt``."""

    RUNTIME: ClassVar[tuple[str, ...]] = ()
    LATER: ClassVar[tuple[str, ...]] = ()

    def identity(self) -> dict[str, Any]:
        """The fields that change results, as plain JSON-able values (``LATER`` ones at their
        default left out)."""
        values = self._identity_values()
        defaults = {f.name: f.default for f in dataclasses.fields(self) if f.name in self.LATER}
        return {k: v for k, v in values.items()
                if k not in defaults or _plain(getattr(self, k)) != _plain(defaults[k])}

    def _identity_values(self) -> dict[str, Any]:
        """Every field that changes results, defaults included."""
        values = _plain(dataclasses.asdict(self))
        return {k: v for k, v in values.items() if k not in self.RUNTIME}


def _plain(value: Any) -> Any:
    """``value`` as plain JSON values (tuples become lists)."""
    return json.loads(json.dumps(value))


# The multiple of an image's side the network needs (three 2x downsamplings, then
# PixelUnshuffle): inputs are padded to it (``evaluation.restore``), tiles are multiples of it.
SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class ModelConfig(_Section):
    """PromptIR architecture. Every width derives from these fields.

    ``preset`` names a starting point (see ``PRESETS`` below); the other fields, when given
    in YAML, override the preset's values.
    """

    preset: str = "paper"
    dim: int = 48
    num_blocks: tuple[int, ...] = (4, 6, 6, 8)
    num_refinement_blocks: int = 4
    heads: tuple[int, ...] = (1, 2, 4, 8)
    ffn_expansion_factor: float = 2.66
    bias: bool = False
    layernorm_type: str = "WithBias"
    prompt_dims: tuple[int, ...] = (64, 128, 320)
    prompt_len: int = 5
    prompt_sizes: tuple[int, ...] = (64, 32, 16)
    unused_convs: bool = True

    def __post_init__(self) -> None:
        _require(len(self.num_blocks) == 4, "model.num_blocks", "needs 4 entries (levels 1-4)")
        _require(len(self.heads) == 4, "model.heads", "needs 4 entries (levels 1-4)")
        _require(len(self.prompt_dims) == 3, "model.prompt_dims", "needs 3 entries")
        _require(len(self.prompt_sizes) == 3, "model.prompt_sizes", "needs 3 entries")
        _require(self.dim > 0 and self.dim % 2 == 0, "model.dim",
                 f"must be a positive even number, got {self.dim} (each downsampling halves the "
                 f"channels before a 2x2 pixel unshuffle, so an odd width does not add up)")
        _require(self.layernorm_type in ("WithBias", "BiasFree"), "model.layernorm_type",
                 "must be 'WithBias' or 'BiasFree'")
        for level, (width, heads) in enumerate(zip((1, 2, 4, 8), self.heads), start=1):
            _require(self.dim * width % heads == 0, "model.heads",
                     f"level {level} width {self.dim * width} is not divisible by {heads} heads")
        for width, prompt in zip((2, 4, 8), self.prompt_dims):
            _require((self.dim * width + prompt) % self.heads[2] == 0, "model.prompt_dims",
                     f"prompt block width {self.dim * width + prompt} is not divisible by "
                     f"{self.heads[2]} heads")


@dataclass(frozen=True)
class DataConfig(_Section):
    """Where images come from and how they are degraded and cut.

    ``source``: ``bundled`` (photographs shipped in scikit-image and scikit-learn; which ones train:
    ``bundled_train``, ``classic`` or ``natural``, see ``mirl_lib.data.photos.BUNDLED_TRAIN_SETS``),
    ``mirl`` (the published folder layout under
    ``root``) or ``folder`` (any folder of clean photos under ``root``, synthesized into all tasks).
    ``test_seed`` fixes the test degradations (combined with each image's name, never its order);
    it is the same for every training seed so all runs are scored on the same degraded images.

    ``sampling``: ``balanced`` (every task gets the same share of each batch, or, with
    ``task_weights``, one whole number per task of ``tasks``, a share in proportion) or
    ``published`` (the published all-in-one mixture: every noise image 3 times per sigma, Rain100L
    120 times, every haze pair once, shuffled per epoch). ``<family>_<split>``
    (``denoise_train``, ...) list the dataset folders of the ``mirl`` source under
    ``<root>/<split>/<family>/``; the defaults are the published ones. ``workers`` (DataLoader
    processes making training batches, 0 = in the training process) and ``cache_mb`` (decoded images
    each of those processes keeps) are runtime settings.
    ``haze_depth``: the depth behind synthesized training haze where no depth was measured (all but
    the motorcycle views): ``fixed`` (one ``depth_prior`` per photo, seeded by its name) or
    ``per_sample`` (a fresh ``depth_prior`` of the whole photo for every hazy training sample, so
    the network cannot tie haze to a photo's content; the test photos keep their fixed depth).
    ``bundled_test``: the bundled source's test photos: ``classic`` (astronaut, chelsea, coffee)
    or ``unused`` (every bundled colour photograph that neither the training set nor the held-out
    check uses; ``mirl_lib.data.photos.bundled_test_photos``). ``test_crop_grid``: each test photo
    is scored at ``n x n`` disjoint crops of ``test_max_side`` pixels, a grid centred in the photo
    (1: the centre crop alone); a photo's crops are nested in it for the statistics.
    See ``docs/data.md``.
    """

    RUNTIME: ClassVar[tuple[str, ...]] = ("workers", "cache_mb")
    LATER: ClassVar[tuple[str, ...]] = ("sampling", "denoise_train", "denoise_test",
                                        "derain_train", "derain_test", "dehaze_train",
                                        "dehaze_test", "bundled_train", "task_weights",
                                        "haze_depth", "bundled_test", "test_crop_grid")

    source: str = "bundled"
    root: str = "datasets"
    tasks: tuple[str, ...] = TASKS
    patch_size: int = 64
    test_max_side: int = 0
    test_per_task: int = 0
    folder_test_fraction: float = 0.25
    test_seed: int = 0
    sampling: str = "balanced"
    denoise_train: tuple[str, ...] = ("WED", "BSD400")
    denoise_test: tuple[str, ...] = ("BSD68", "Urban100")
    derain_train: tuple[str, ...] = ("Rain100L",)
    derain_test: tuple[str, ...] = ("Rain100L",)
    dehaze_train: tuple[str, ...] = ("OTS",)
    dehaze_test: tuple[str, ...] = ("SOTS",)
    workers: int = 0
    cache_mb: int = 256
    bundled_train: str = "classic"
    task_weights: tuple[int, ...] = ()
    haze_depth: str = "fixed"
    bundled_test: str = "classic"
    test_crop_grid: int = 1

    def __post_init__(self) -> None:
        _require(self.source in ("bundled", "mirl", "folder"), "data.source",
                 "must be one of 'bundled', 'mirl', 'folder'")
        if self.task_weights:
            _require(len(self.task_weights) == len(self.tasks)
                     and all(isinstance(w, int) and w >= 1 for w in self.task_weights),
                     "data.task_weights", f"must be one whole number >= 1 per task of data.tasks "
                     f"({len(self.tasks)}), or empty for equal shares")
            _require(self.sampling == "balanced", "data.task_weights",
                     "applies to data.sampling: balanced only")
        _require(self.haze_depth in HAZE_DEPTHS, "data.haze_depth",
                 f"must be one of {', '.join(map(repr, HAZE_DEPTHS))}")
        _require(self.bundled_test in BUNDLED_TEST_SET_NAMES, "data.bundled_test",
                 f"must be one of {', '.join(map(repr, BUNDLED_TEST_SET_NAMES))}")
        _require(self.test_crop_grid >= 1, "data.test_crop_grid",
                 "must be >= 1 (n: n x n disjoint crops of test_max_side per test photo)")
        _require(self.test_crop_grid == 1 or self.test_max_side > 0, "data.test_crop_grid",
                 f"{self.test_crop_grid} x {self.test_crop_grid} crops need data.test_max_side "
                 f"> 0 (the side of each crop)")
        _require(self.bundled_train in BUNDLED_TRAIN_SET_NAMES, "data.bundled_train",
                 f"must be one of {', '.join(map(repr, BUNDLED_TRAIN_SET_NAMES))}")
        unknown = [t for t in self.tasks if t not in TASKS]
        _require(not unknown and len(self.tasks) > 0, "data.tasks",
                 f"unknown task(s) {unknown}; known: {list(TASKS)}")
        _require(self.patch_size >= 16 and self.patch_size % 8 == 0, "data.patch_size",
                 "must be a multiple of 8, at least 16")
        _require(self.test_max_side >= 0, "data.test_max_side", "must be >= 0 (0 = full size)")
        _require(0.0 < self.folder_test_fraction < 1.0, "data.folder_test_fraction",
                 "must be in (0, 1)")
        _require(self.sampling in SAMPLINGS, "data.sampling",
                 f"must be one of {', '.join(repr(s) for s in SAMPLINGS)}")
        for family in TASK_FAMILIES:
            for split in ("train", "test"):
                key = f"{family}_{split}"
                names = getattr(self, key)
                bad = [n for n in names if not _FOLDER_NAME.fullmatch(n) or set(n) == {"."}]
                _require(not bad, f"data.{key}", f"{bad} are not folder names (letters, digits, "
                         f"'_', '-', '+', '.'; no '/')")
                _require(len(set(names)) == len(names), f"data.{key}", "lists a dataset twice")
                _require(bool(names) or not any(task_family(t) == family for t in self.tasks),
                         f"data.{key}", f"lists no dataset, but data.tasks has {family} tasks")
        _require(self.workers >= 0, "data.workers", "must be >= 0 (0 = in the training process)")
        _require(self.cache_mb >= 0, "data.cache_mb", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig(_Section):
    """One training run (dense, or one pruning round). Schedule: linear warmup then cosine decay.

    Durations are given in optimizer steps (``steps``, ``warmup_steps``) or in epochs of the
    training data (``epochs``, ``warmup_epochs``, as the paper states them), never both. With
    epochs, ``steps`` and ``warmup_steps`` are 0 until ``mirl_lib.training.loop.resolve_steps``
    derives them from the data found on disk (``steps = epochs * ceil(epoch size / batch_size)``); a
    config holding both is such a resolved one and must be consistent.

    ``device``, ``threads``, ``log_every``, ``checkpoint_every`` and ``gpus`` are runtime settings:
    changing them neither refuses a run folder nor stops a training from resuming.

    ``gpus`` > 1 trains every point under ``torchrun --nproc_per_node=gpus`` (DDP, one process per
    GPU, the global ``batch_size`` split over them; on ``device: cpu`` the processes use gloo);
    0 or 1 trains in the calling process.

    The loss is ``L1 + psnr_weight * (-PSNR) + ssim_weight * (1 - SSIM)``
    (``mirl_lib.training.losses.restoration_loss``); both weights 0, the default, is the published
    L1 loss. ``-PSNR`` is the batch mean of each image's ``10 log10(MSE + 1e-8)``: its gradient
    weighs each image by one over its error, so lightly degraded images (noise at sigma 15, rain),
    which L1 lets heavy ones outweigh, count as they count in the mean PSNR that is scored. SSIM is
    the evaluation's.
    ``bf16`` and ``channels_last`` apply on CUDA; ``cpu_channels_last`` lays weights and batches
    out channels-last on the CPU too (faster there, see ``results/benchmarks/train_step.csv``,
    and float results differ slightly from the contiguous layout, so it is part of the identity).

    ``batch_replicates`` (``auto``, ``batched``, ``separate``): whether the seeds of one point
    train together as one batched computation (``mirl_lib.training.replicates``); ``auto``
    batches on CUDA with the local executor and ``step_graph: eager`` only
    (``replicates.batching``; a batched step measured slower than separate ones on the CPU, and
    than separate graphed ones on a GPU, ``results/benchmarks/train_throughput.csv``). A runtime
    setting: each replicate keeps its own initialization, mask, data stream, optimizer state and
    files, and its floats differ from a separate run's only in the last bits (grouped kernels), as
    under another thread count.

    ``step_graph`` (``auto``, ``graph``, ``eager``): whether the training step is captured once
    in a CUDA graph and replayed (``mirl_lib.training.graphed``); ``auto`` captures on CUDA in
    one process (not under ``torchrun``, not for batched replicates). A runtime setting: floats
    differ from an eager run's in the last bits (capturable AdamW).

    ``malloc`` (``auto``, ``system``): ``auto`` sets glibc's allocator, in the process that trains
    and scores, to keep the blocks a step frees for the next step instead of taking fresh pages
    from the kernel every step (``mirl_lib.core.allocator``; faster on the CPU, see
    ``results/benchmarks/train_throughput.csv``); ``system`` leaves it as it comes. A runtime
    setting: the floats are identical either way.
    """

    RUNTIME: ClassVar[tuple[str, ...]] = ("device", "threads", "log_every", "checkpoint_every",
                                          "gpus", "batch_replicates", "step_graph", "malloc")
    LATER: ClassVar[tuple[str, ...]] = ("epochs", "warmup_epochs", "ssim_weight",
                                        "cpu_channels_last", "psnr_weight")

    steps: int = 1000
    batch_size: int = 8
    lr: float = 2e-4
    min_lr: float = 1e-6
    weight_decay: float = 1e-4
    betas: tuple[float, ...] = (0.9, 0.999)
    warmup_steps: int = 100
    grad_clip: float = 0.0
    device: str = "auto"
    bf16: bool = True
    channels_last: bool = True
    checkpoint_every: int = 200
    log_every: int = 20
    threads: int = 0
    gpus: int = 0
    epochs: int = 0
    warmup_epochs: int = 0
    ssim_weight: float = 0.0
    cpu_channels_last: bool = False
    psnr_weight: float = 0.0
    batch_replicates: str = "auto"
    step_graph: str = "auto"
    malloc: str = "auto"

    def __post_init__(self) -> None:
        _require(self.malloc in allocator.MODES, "train.malloc",
                 f"{self.malloc!r}: must be {' or '.join(allocator.MODES)}")
        _require(self.step_graph in ("auto", "graph", "eager"), "train.step_graph",
                 f"{self.step_graph!r}: must be auto, graph or eager")
        _require(self.batch_replicates in ("auto", "batched", "separate"),
                 "train.batch_replicates",
                 f"{self.batch_replicates!r}: must be auto, batched or separate")
        _require(self.batch_replicates != "batched" or self.gpus <= 1, "train.batch_replicates",
                 f"batched: needs train.gpus <= 1 (batched replicates train in one process; "
                 f"train.gpus is {self.gpus})")
        _require(self.psnr_weight >= 0, "train.psnr_weight", "must be >= 0 (0 = no PSNR term)")
        _require(self.batch_size > 0, "train.batch_size", "must be positive")
        _require(self.ssim_weight >= 0, "train.ssim_weight", "must be >= 0 (0 = L1 loss only)")
        _require(self.lr > 0, "train.lr", "must be positive")
        if self.epochs == 0:
            _require(self.warmup_epochs == 0, "train.warmup_epochs",
                     "needs train.epochs (give durations in epochs or in steps, not both)")
            _require(self.steps > 0, "train.steps", "must be positive")
        else:
            _require(self.epochs > 0, "train.epochs", "must be positive (0 = durations in steps)")
            _require(0 <= self.warmup_epochs < self.epochs, "train.warmup_epochs",
                     "must be in [0, epochs)")
            _require(self.steps >= 0, "train.steps", "must be >= 0")
            per_epoch = self.steps // self.epochs
            _require(self.steps % self.epochs == 0
                     and self.warmup_steps == self.warmup_epochs * per_epoch, "train.steps",
                     f"{self.steps} steps and {self.warmup_steps} warmup steps are not "
                     f"train.epochs={self.epochs} and train.warmup_epochs={self.warmup_epochs} "
                     f"epochs of one size; with epochs leave steps and warmup_steps out, or 0 "
                     f"(they are derived from the data)")
        if self.steps > 0:
            _require(0 <= self.warmup_steps < self.steps, "train.warmup_steps",
                     "must be in [0, steps)")
        _require(len(self.betas) == 2, "train.betas", "needs 2 entries")
        _require(self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:"),
                 "train.device", "must be auto, cpu, cuda, cuda:N or mps")
        _require(self.checkpoint_every > 0, "train.checkpoint_every", "must be positive")
        _require(self.log_every > 0, "train.log_every", "must be positive")
        _require(self.gpus >= 0, "train.gpus", "must be >= 0 (0 or 1: one process)")
        _require(self.gpus <= 1 or self.batch_size % self.gpus == 0, "train.gpus",
                 f"batch_size {self.batch_size} is not divisible by {self.gpus} processes")


@dataclass(frozen=True)
class PruneConfig(_Section):
    """Iterative magnitude pruning (the trunk) and how it is applied."""

    LATER: ClassVar[tuple[str, ...]] = ("channel_importance", "channel_method")

    rate: float = 0.2
    rounds: int = 15
    scope: str = "default"
    method: str = "global"
    output_rate_factor: float = 0.5
    late_rewind_step: int = 0
    # structured tickets (pruning.channels): a unit's norm, and one ranking over all groups
    # (global) or the same share of every group (layerwise)
    channel_importance: str = "l2"
    channel_method: str = "global"

    def __post_init__(self) -> None:
        _require(0.0 < self.rate < 1.0, "prune.rate", "must be in (0, 1)")
        _require(self.rounds >= 1, "prune.rounds", "must be >= 1")
        _require(self.scope in ("default", "reference"), "prune.scope",
                 "must be 'default' or 'reference'")
        _require(self.method in ("global", "layerwise"), "prune.method",
                 "must be 'global' or 'layerwise'")
        _require(self.late_rewind_step >= 0, "prune.late_rewind_step", "must be >= 0")
        _require(self.channel_importance in ("l1", "l2"), "prune.channel_importance",
                 "must be 'l1' or 'l2'")
        _require(self.channel_method in ("global", "layerwise"), "prune.channel_method",
                 "must be 'global' or 'layerwise'")


@dataclass(frozen=True)
class StudyConfig(_Section):
    """Which strategies run beside the dense network and the trunk, at which sparsities, with
    which seeds.

    None of it changes the result of a point: seeds are replicates and strategies are further
    points, so a finished study can be extended with either. ``strategies`` names registered
    strategies (``mirl_lib.study.strategies.check_study`` checks them when a study is opened);
    those placed at branch rounds run at the trunk rounds nearest ``branch_remaining`` (fractions of
    all parameters).
    """

    RUNTIME: ClassVar[tuple[str, ...]] = ("name", "seeds", "strategies", "branch_remaining")
    # keys that were renamed: an old params file is told the new name
    RENAMED: ClassVar[dict[str, str]] = {"branches": "strategies"}

    name: str = "default"
    seeds: tuple[int, ...] = (0,)
    strategies: tuple[str, ...] = DEFAULT_STRATEGIES
    branch_remaining: tuple[float, ...] = (0.5, 0.2, 0.1)

    def __post_init__(self) -> None:
        _require(len(set(self.strategies)) == len(self.strategies), "study.strategies",
                 "lists a strategy twice")
        _require(len(set(self.seeds)) == len(self.seeds), "study.seeds", "lists a seed twice")
        _require(len(self.seeds) > 0, "study.seeds", "needs at least one seed")
        _require(all(0.0 < r < 1.0 for r in self.branch_remaining), "study.branch_remaining",
                 "every entry must be in (0, 1)")


# The kinds of primary comparison (``analysis.primary``; ``mirl_lib.report.primary``).
PRIMARY_KINDS: tuple[str, ...] = ("noninferiority", "superiority", "equivalence")


@dataclass(frozen=True)
class AnalysisConfig(_Section):
    """How a finished study is judged; none of it changes a point (every field is a runtime one).

    ``primary``: the comparisons declared before the data, each ``<strategy>:<kind>``: the ticket
    at the deepest branch round against that strategy (the dense network: ``dense``), all-in-one
    PSNR, as ``noninferiority`` (the ticket is not worse by more than ``margin_db``),
    ``superiority`` (it is better) or ``equivalence`` (two one-sided tests: within
    ``±margin_db``). Their p-values are Holm-corrected together at family-wise ``alpha``; every
    other comparison is an exploratory estimate with its interval. ``margin_reason`` says why the
    margin is what it is (the summary quotes it). ``power``: the power a comparison should have;
    the report says how many seeds it needs for it. ``level``: the intervals' confidence.
    ``confirm_seeds``: a confirmatory replication, declared before these seeds are trained: the
    primary comparisons are tested again on them alone (Holm at ``alpha``), with no decision
    until every one of them is scored; the primary comparisons themselves are then tested on the
    other seeds only (the exploration that chose them), and every seed feeds the exploratory
    estimates (``mirl_lib.report.primary.confirmation_table``).
    """

    RUNTIME: ClassVar[tuple[str, ...]] = ("primary", "margin_db", "margin_reason", "alpha",
                                          "power", "level", "confirm_seeds")

    primary: tuple[str, ...] = ("dense:noninferiority", "reinit:superiority",
                                "random_mask:superiority", "small_dense:superiority",
                                "late_rewind:equivalence", "finetune:equivalence")
    margin_db: float = 0.25
    margin_reason: str = ""
    alpha: float = 0.05
    power: float = 0.8
    level: float = 0.95
    confirm_seeds: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(self.margin_db > 0, "analysis.margin_db", "must be positive (dB)")
        _require(len(set(self.confirm_seeds)) == len(self.confirm_seeds),
                 "analysis.confirm_seeds", "lists a seed twice")
        _require(all(s >= 0 for s in self.confirm_seeds), "analysis.confirm_seeds",
                 "seeds are non-negative integers")
        _require(len(self.confirm_seeds) != 1, "analysis.confirm_seeds",
                 "one seed cannot confirm anything (no spread between seeds): declare 2 or more")
        _require(0 < self.alpha < 0.5, "analysis.alpha", "must be in (0, 0.5)")
        _require(0 < self.power < 1, "analysis.power", "must be in (0, 1)")
        _require(0.5 < self.level < 1, "analysis.level", "must be in (0.5, 1)")
        for item in self.primary:
            vs, _, kind = item.partition(":")
            _require(bool(vs) and kind in PRIMARY_KINDS, "analysis.primary",
                     f"{item!r}: write <strategy>:<kind>, kind one of "
                     f"{', '.join(PRIMARY_KINDS)}")
        names = [item.partition(":")[0] for item in self.primary]
        _require(len(set(names)) == len(names), "analysis.primary", "names a strategy twice")

    def comparisons(self) -> list[tuple[str, str]]:
        """``[(strategy, kind), ...]`` in the declared order."""
        return [tuple(item.split(":", 1)) for item in self.primary]  # type: ignore[misc]


EXECUTORS: tuple[str, ...] = ("local", "slurm")
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$|^(\d+)$")


def slurm_minutes(text: str) -> int:
    """A Slurm time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``) in whole minutes
    (rounded up); ``ConfigError`` for another form."""
    match = _SLURM_TIME.match(text.strip())
    if not match:
        raise ConfigError(f"cluster.time: {text!r} is not a Slurm time limit (MM, HH:MM:SS or "
                          f"D-HH:MM:SS)")
    days, hours, minutes, seconds, only = match.groups()
    if only is not None:
        return int(only)
    total = ((int(days or 0) * 24 + int(hours or 0)) * 60 + int(minutes)) * 60 + int(seconds)
    return -(-total // 60)


@dataclass(frozen=True)
class ClusterConfig(_Section):
    """Where the stages run; none of it changes a result (every field is a runtime one).

    ``executor``: ``local`` (child processes of the runner, ``--jobs`` at a time) or ``slurm``
    (each stage one Slurm job through submitit, submitted once the stages it waits for have
    finished; ``mirl_lib.runner.slurm``). For Slurm: ``partition``, ``time`` (the job's time
    limit), ``gpus_per_stage`` (GPUs of one node per stage; with more than one, every training
    runs under torchrun with that many ranks), ``cpus_per_stage``, ``mem`` (e.g. ``64G``),
    ``account``, ``qos``, ``constraint``, ``sbatch`` (further sbatch options, ``key=value`` or a
    bare flag), ``max_timeouts`` (how often a stage reaching its time limit is requeued to resume
    from its checkpoint) and ``poll_seconds`` (how often the driver looks at its jobs).
    """

    RUNTIME: ClassVar[tuple[str, ...]] = ("executor", "partition", "time", "gpus_per_stage",
                                          "cpus_per_stage", "mem", "account", "qos",
                                          "constraint", "sbatch", "max_timeouts", "poll_seconds")

    executor: str = "local"
    partition: str = ""
    time: str = "24:00:00"
    gpus_per_stage: int = 0
    cpus_per_stage: int = 1
    mem: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    sbatch: tuple[str, ...] = ()
    max_timeouts: int = 3
    poll_seconds: float = 5.0

    def __post_init__(self) -> None:
        _require(self.executor in EXECUTORS, "cluster.executor",
                 f"must be one of {', '.join(map(repr, EXECUTORS))}")
        slurm_minutes(self.time)
        _require(self.gpus_per_stage >= 0, "cluster.gpus_per_stage", "must be >= 0")
        _require(self.cpus_per_stage >= 1, "cluster.cpus_per_stage", "must be >= 1")
        _require(self.max_timeouts >= 0, "cluster.max_timeouts", "must be >= 0")
        _require(self.poll_seconds > 0, "cluster.poll_seconds", "must be positive")
        bad = [o for o in self.sbatch if not re.fullmatch(r"[A-Za-z][\w-]*(=.+)?", o)]
        _require(not bad, "cluster.sbatch", f"{bad}: write an sbatch option as key=value or a "
                 f"bare flag, without the leading dashes")

    def sbatch_options(self) -> dict[str, str | bool]:
        """``cluster.sbatch`` as submitit's additional parameters (``key=value`` -> value,
        a bare flag -> True; dashes in keys become underscores)."""
        out: dict[str, str | bool] = {}
        for option in self.sbatch:
            key, sep, value = option.partition("=")
            out[key.replace("-", "_")] = value if sep else True
        return out


@dataclass(frozen=True)
class Config:
    """The whole study configuration."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serializable dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def identity(self) -> dict[str, dict[str, Any]]:
        """Everything that changes a result: each section's fields less its ``RUNTIME`` ones.

        Used by the run folder (a config of another identity is refused) and, through
        ``TrainConfig.identity()``, by training resume. Seeds are not part of it: they are
        replicates, path components of each point.
        """
        sections = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {name: section.identity() for name, section in sections.items()
                if section.identity()}

    def hash(self) -> str:
        """A short stable hash of ``identity()`` (recorded beside every result)."""
        blob = json.dumps(self.identity(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def scored_by(table: Any) -> list[str]:
    """The config hashes a table of scores records (its ``config_hash`` column), sorted; empty
    when it has none. ``table``: a pandas DataFrame."""
    return sorted(set(table["config_hash"].astype(str))) if "config_hash" in table else []


def identity_changes(old: Config, new: Config) -> list[str]:
    """``section.key: old -> new`` for every identity field that differs."""
    sections = [f.name for f in dataclasses.fields(Config)]
    before = {name: getattr(old, name)._identity_values() for name in sections}
    after = {name: getattr(new, name)._identity_values() for name in sections}
    changes = []
    for section in sections:
        a, b = before[section], after[section]
        changes += [f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}"
                    for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]
    return changes


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {problem}")


# Named starting points of the architecture: the published network and two small CPU ones.
PRESETS: dict[str, ModelConfig] = {
    "paper": ModelConfig(preset="paper"),
    "cpu": ModelConfig(
        preset="cpu", dim=16, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 2, 4, 8),
        prompt_dims=(16, 32, 64), prompt_len=5, prompt_sizes=(16, 8, 4), unused_convs=False),
    "tiny": ModelConfig(
        preset="tiny", dim=8, num_blocks=(1, 1, 1, 1), num_refinement_blocks=1, heads=(1, 1, 2, 2),
        prompt_dims=(8, 8, 16), prompt_len=3, prompt_sizes=(8, 4, 2), unused_convs=True),
}


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a dataclass field annotation and convert lists to tuples."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (typing.Union, types.UnionType):
        raise ConfigError(f"{key}: union types are not supported in the config")
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            hint = (" (YAML reads unquoted on/off/yes/no as true/false: quote the word)"
                    if isinstance(value, bool) else "")
            raise ConfigError(f"{key}: expected a string, got {value!r}{hint}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {annotation!r}")


def section_from_dict(cls: type, data: dict[str, Any] | None, prefix: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``data``, starting from ``base`` (or the defaults)."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    renamed = {k: v for k, v in getattr(cls, "RENAMED", {}).items() if k in unknown}
    if renamed:
        old, new = next(iter(renamed.items()))
        raise ConfigError(f"{prefix}.{old}: renamed {prefix}.{new}; write {new}: instead")
    if unknown:
        raise ConfigError(f"{prefix}: unknown key(s) {unknown}; known keys: {names}")
    values = {k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in data.items()}
    return dataclasses.replace(base, **values) if base is not None else cls(**values)


def model_config(preset_or_overrides: str | dict[str, Any] | ModelConfig) -> ModelConfig:
    """A ``ModelConfig`` from a preset name, a dict ``{preset: ..., overrides...}`` or a config."""
    if isinstance(preset_or_overrides, ModelConfig):
        return preset_or_overrides
    spec = {"preset": preset_or_overrides} if isinstance(preset_or_overrides, str) else dict(
        preset_or_overrides)
    preset = spec.get("preset", "paper")
    if preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; known: {sorted(PRESETS)}")
    return section_from_dict(ModelConfig, spec, "model", base=PRESETS[preset])


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> Config:
    """Build the full ``Config``; errors name ``source`` and the key path."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    sections = {f.name: f.type for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - set(sections))
    try:
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; known sections: {list(sections)}")
        hints = typing.get_type_hints(Config)
        built = {"model": model_config(data.get("model") or {})}
        for name in ("data", "train", "prune", "study", "analysis", "cluster"):
            section = _durations(data.get(name)) if name == "train" else data.get(name)
            built[name] = section_from_dict(hints[name], section, name)
        return Config(**built)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _durations(train: Any) -> Any:
    """The ``train`` mapping with its durations in one kind: ``epochs``/``warmup_epochs`` or
    ``steps``/``warmup_steps`` (a key written as 0 counts as not given). With epochs the step
    counts become 0, to be derived from the data (``training.loop.resolve_steps``)."""
    if not isinstance(train, dict):
        return train
    given = {k for k in ("steps", "warmup_steps", "epochs", "warmup_epochs") if train.get(k)}
    in_epochs = sorted(given & {"epochs", "warmup_epochs"})
    in_steps = sorted(given & {"steps", "warmup_steps"})
    if in_epochs and in_steps:
        raise ConfigError(f"train.{in_epochs[0]} and train.{in_steps[0]}: give durations in epochs "
                          f"(epochs, warmup_epochs) or in steps (steps, warmup_steps), not both")
    if in_epochs and "epochs" not in given:
        raise ConfigError("train.warmup_epochs: needs train.epochs")
    return {**train, "steps": 0, "warmup_steps": 0} if in_epochs else train


_MERGE_TAG = "tag:yaml.org,2002:merge"


class _ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice and reads ``1e-3`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot (``1.0e-3``); researchers write ``1e-3``.
    The extra resolver only adds exponent forms; every other scalar resolves as before.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._paths: dict[yaml.Node, str] = {}  # mapping node -> its key path, for messages

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Build one mapping after checking its own keys (merge keys ``<<`` excluded)."""
        prefix = self._paths.get(node, "")
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node)
            path = f"{prefix}.{key}" if prefix else str(key)
            line = key_node.start_mark.line + 1
            if key in first_line:
                raise ConfigError(f"{path}: key written twice (lines {first_line[key]} and "
                                  f"{line}); keep one")
            first_line[key] = line
            self._paths[value_node] = path
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The top-level mapping of a params/config YAML file, read with the config's YAML rules.

    Raises ``ConfigError`` naming the file when it is missing, not valid YAML, empty, not a mapping
    at the top level, or writes a key twice (with the key path and both line numbers).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read this file as UTF-8 text ({exc})") from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({_yaml_problem(exc)})") from None
    if data is None:
        raise ConfigError(f"{path}: the params file is empty; write the sections you change "
                          f"(params/smoke.yaml is a small example), as every default together is "
                          f"the full paper-size study")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections "
                          f"({', '.join(f.name for f in dataclasses.fields(Config))}), "
                          f"got {type(data).__name__}")
    return data


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: the problem and where it is (its message spans lines)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem or exc.context} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a YAML config; ``overrides`` (nested dict) is merged over the file's content."""
    data = read_yaml(path)
    if overrides:
        data = merge(data, overrides)
    return config_from_dict(data, source=str(path))


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge, ``over`` wins."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
