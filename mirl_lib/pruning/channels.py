"""Structured pruning of PromptIR: its coupled channel groups, their importance, removing them.

A *group* is a set of channels that can only go together; one *unit* of a group is what one
removal takes out of every tensor it touches. PromptIR has four kinds:

- ``stream``: a feature map's channel, everywhere it is read or written. A residual stream couples
  the convolution that opens it, every block on it (both LayerNorms, the inputs of ``qkv`` and of
  ``project_in``, the outputs of ``project_out``), the layers that read it, and its place in every
  concatenation that joins it (the skip connections, the prompt blocks' inputs). A downsampling's
  convolution channel is one unit of four stream channels after ``PixelUnshuffle``; an
  upsampling's four convolution channels are one stream channel after ``PixelShuffle``.
- ``ffn``: a gated feed-forward network's hidden channel: its two halves in ``project_in`` and
  ``dwconv`` (the GELU half and the gate) and its column of ``project_out``.
- ``heads``: an attention head: its rows of ``q``, ``k`` and ``v`` (in ``qkv`` and
  ``qkv_dwconv``), its temperature and its columns of ``project_out``. Channels within a head are
  not units: the transposed attention's softmax runs over them, and every head must stay as wide
  as the others.
- ``prompt``: a prompt component's channel (``prompt_param`` and the input of ``conv3x3``).

Each group keeps at least one unit. The six 1x1 convolutions that the published checkpoints hold and
the forward pass never reads (``model.unused_convs``) join no group and keep their size. Removing an
``ffn`` or ``heads`` unit equals zeroing its weights exactly (a zero gate, a head whose values are
zero); a ``stream`` or ``prompt`` channel does not: the LayerNorms average over the channels they
see, so the narrower network is a network of its own, trained as one
(``tests/pruning/test_channels.py`` shows both).

Why not Torch-Pruning's dependency graph: on PromptIR (torch-pruning 1.6) it maps
``PixelUnshuffle``/``PixelShuffle`` channels one to one (they map one to four), and the attention's
reshape into heads merges every ``q``, ``k`` and ``v`` channel of a block into one group; the
groups here follow the network's code and a test checks that they cover every prunable dimension
of every tensor exactly once.

Everything is in the unpruned network's index space. A *selection* maps each group's name to a
boolean tensor over its units (``True`` = removed); ``prune_state`` cuts any full-size state (the
initialization, a trained network) down to it, and ``expand_state`` puts a narrower state back in
place, with zeros where units were removed, so importance is always computed on full-size tensors.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mirl_lib.core.config import ModelConfig
from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.files.tensors import atomic_torch_save, load_tensors
from mirl_lib.net.promptir import PromptIR

Selection = dict[str, torch.Tensor]  # group name -> bool tensor over its units, True = removed
KINDS = ("stream", "ffn", "heads", "prompt")
IMPORTANCE = ("l1", "l2")
METHODS = ("global", "layerwise")


@dataclass(frozen=True)
class Slice:
    """Where the units of a group lie along one dimension of one tensor: unit ``u`` holds the
    indices ``start + u * step`` .. ``+ width - 1``."""

    name: str
    dim: int
    start: int
    step: int
    width: int

    def indices(self, unit: int) -> range:
        first = self.start + unit * self.step
        return range(first, first + self.width)


@dataclass(frozen=True)
class Group:
    """One coupled channel group: its name, kind, number of units and where they lie."""

    name: str
    kind: str
    units: int
    slices: tuple[Slice, ...]

    def indices(self, unit: int) -> dict[tuple[str, int], list[int]]:
        """The indices unit ``unit`` occupies, per (tensor, dimension)."""
        out: dict[tuple[str, int], list[int]] = {}
        for s in self.slices:
            out.setdefault((s.name, s.dim), []).extend(s.indices(unit))
        return out


class _Table:
    """Builds the group list of one PromptIR from its (unpruned) parameter shapes."""

    def __init__(self, net: PromptIR) -> None:
        self.shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
        self.groups: list[Group] = []

    def has(self, name: str) -> bool:
        return name in self.shapes

    def width(self, name: str, dim: int) -> int:
        return self.shapes[name][dim]

    # slices of the standard pieces, each unit at (start + u * step, width)
    def writes(self, conv: str, start: int = 0, step: int = 1, width: int = 1) -> list[Slice]:
        """A layer's outputs (weight rows and bias)."""
        out = [Slice(f"{conv}.weight", 0, start, step, width)]
        if self.has(f"{conv}.bias"):
            out.append(Slice(f"{conv}.bias", 0, start, step, width))
        return out

    def reads(self, layer: str, start: int = 0, step: int = 1, width: int = 1) -> list[Slice]:
        """A layer's inputs (weight columns)."""
        return [Slice(f"{layer}.weight", 1, start, step, width)]

    def block(self, prefix: str, start: int = 0, step: int = 1, width: int = 1) -> list[Slice]:
        """Every place a transformer block touches the stream it sits on."""
        out = []
        for norm in ("norm1", "norm2"):
            out += [Slice(f"{prefix}.{norm}.body.{p}", 0, start, step, width)
                    for p in ("weight", "bias") if self.has(f"{prefix}.{norm}.body.{p}")]
        out += self.reads(f"{prefix}.attn.qkv", start, step, width)
        out += self.writes(f"{prefix}.attn.project_out", start, step, width)
        out += self.reads(f"{prefix}.ffn.project_in", start, step, width)
        out += self.writes(f"{prefix}.ffn.project_out", start, step, width)
        return out

    def blocks(self, prefixes: list[str], start: int = 0, step: int = 1, width: int = 1
               ) -> list[Slice]:
        return [s for p in prefixes for s in self.block(p, start, step, width)]

    def add(self, name: str, kind: str, units: int, slices: list[Slice]) -> None:
        self.groups.append(Group(name, kind, units, tuple(slices)))

    def block_internals(self, prefix: str) -> None:
        """The ffn hidden channels and the attention heads of one transformer block."""
        hidden = self.width(f"{prefix}.ffn.project_out.weight", 1)
        ffn = []
        for half in (0, hidden):
            ffn += self.writes(f"{prefix}.ffn.project_in", half)
            ffn += self.writes(f"{prefix}.ffn.dwconv", half)
        ffn += self.reads(f"{prefix}.ffn.project_out")
        self.add(f"ffn:{prefix}", "ffn", hidden, ffn)
        heads = self.width(f"{prefix}.attn.temperature", 0)
        inner = self.width(f"{prefix}.attn.project_out.weight", 1)
        size = inner // heads
        att = [Slice(f"{prefix}.attn.temperature", 0, 0, 1, 1)]
        for part in range(3):  # q, k, v
            att += self.writes(f"{prefix}.attn.qkv", part * inner, size, size)
            att += self.writes(f"{prefix}.attn.qkv_dwconv", part * inner, size, size)
        att += self.reads(f"{prefix}.attn.project_out", 0, size, size)
        self.add(f"heads:{prefix}", "heads", heads, att)


def _prefixes(net: PromptIR, name: str) -> list[str]:
    return [f"{name}.{i}" for i in range(len(getattr(net, name)))]


def groups(net: PromptIR) -> list[Group]:
    """Every coupled channel group of ``net`` (an unpruned PromptIR; its weights are not read)."""
    cfg: ModelConfig = net.config
    t = _Table(net)
    enc = [_prefixes(net, f"encoder_level{i}") for i in (1, 2, 3)]
    dec = [_prefixes(net, f"decoder_level{i}") for i in (1, 2, 3)]
    latent, refinement = _prefixes(net, "latent"), _prefixes(net, "refinement")
    d = cfg.dim
    w = {"up1": t.width("up2_1.body.0.weight", 0) // 4,
         "up2": t.width("up3_2.body.0.weight", 0) // 4,
         "up3": t.width("up4_3.body.0.weight", 0) // 4,
         "lat": 4 * t.width("down3_4.body.0.weight", 0),
         "d3": t.width("reduce_chan_level3.weight", 0),
         "d2": t.width("reduce_chan_level2.weight", 0)}
    # the encoder: level 1 opens at the patch embedding; the skip joins the decoder's level 1
    t.add("stream:encoder1", "stream", d,
          t.writes("patch_embed.proj") + t.blocks(enc[0]) + t.reads("down1_2.body.0")
          + t.blocks(dec[0] + refinement, w["up1"]) + t.reads("output", w["up1"]))
    # each downsampling: one convolution channel is four channels of the next level
    for level, (conv, blocks, after, skip, skip_at) in enumerate((
            ("down1_2", enc[1], "down2_3", "reduce_chan_level2", w["up2"]),
            ("down2_3", enc[2], "down3_4", "reduce_chan_level3", w["up3"])), start=2):
        units = t.width(f"{conv}.body.0.weight", 0)
        t.add(f"stream:encoder{level}", "stream", units,
              t.writes(f"{conv}.body.0") + t.blocks(blocks, 0, 4, 4)
              + t.reads(f"{after}.body.0", 0, 4, 4) + t.reads(skip, skip_at, 4, 4))
    t.add("stream:latent", "stream", t.width("down3_4.body.0.weight", 0),
          t.writes("down3_4.body.0") + t.blocks(latent, 0, 4, 4)
          + t.reads("prompt3.linear_layer", 0, 4, 4) + t.block("noise_level3", 0, 4, 4)
          + t.reads("reduce_noise_level3", 0, 4, 4))
    # the decoder, level 3 to 1: prompt, its block, the reduction, the upsampling, the skip join
    for level, features, features_at, up, join in (
            (3, "latent", w["lat"], "up4_3", "reduce_chan_level3"),
            (2, "decoder3", w["d3"], "up3_2", "reduce_chan_level2"),
            (1, "decoder2", w["d2"], "up2_1", None)):
        prompt, noise, reduce = (f"prompt{level}", f"noise_level{level}",
                                 f"reduce_noise_level{level}")
        t.add(f"prompt:{prompt}", "prompt", t.width(f"{prompt}.prompt_param", 2),
              [Slice(f"{prompt}.prompt_param", 2, 0, 1, 1)] + t.reads(f"{prompt}.conv3x3"))
        t.add(f"stream:{prompt}", "stream", t.width(f"{prompt}.conv3x3.weight", 0),
              t.writes(f"{prompt}.conv3x3") + t.block(noise, features_at)
              + t.reads(reduce, features_at))
        t.add(f"stream:{reduce}", "stream", t.width(f"{reduce}.weight", 0),
              t.writes(reduce) + t.reads(f"{up}.body.0"))
        upsampled = t.width(f"{up}.body.0.weight", 0) // 4
        if join is not None:
            t.add(f"stream:{up}", "stream", upsampled,
                  t.writes(f"{up}.body.0", 0, 4, 4) + t.reads(join))
            nxt = level - 1
            nxt_prompt = f"prompt{nxt}"
            t.add(f"stream:decoder{level}", "stream", t.width(f"{join}.weight", 0),
                  t.writes(join) + t.blocks(dec[level - 1]) + t.reads(f"{nxt_prompt}.linear_layer")
                  + t.block(f"noise_level{nxt}") + t.reads(f"reduce_noise_level{nxt}"))
        else:
            t.add(f"stream:{up}", "stream", upsampled,
                  t.writes(f"{up}.body.0", 0, 4, 4) + t.blocks(dec[0] + refinement)
                  + t.reads("output"))
    for prefix in enc[0] + enc[1] + enc[2] + latent + dec[2] + dec[1] + dec[0] + refinement + [
            "noise_level3", "noise_level2", "noise_level1"]:
        t.block_internals(prefix)
    return t.groups


# ----- selections: which units are removed -------------------------------------------------------

def empty_selection(table: list[Group]) -> Selection:
    """Nothing removed."""
    return {g.name: torch.zeros(g.units, dtype=torch.bool) for g in table}


def _removed_per_dim(table: list[Group], selection: Selection
                     ) -> dict[tuple[str, int], torch.Tensor]:
    """The removed indices of every (tensor, dimension) the selection touches."""
    out: dict[tuple[str, int], list[torch.Tensor]] = {}
    for g in table:
        units = torch.nonzero(selection[g.name]).flatten()
        for s in g.slices:
            idx = (s.start + units[:, None] * s.step + torch.arange(s.width)[None, :]).flatten()
            out.setdefault((s.name, s.dim), []).append(idx)
    return {k: torch.cat(v) for k, v in out.items()}


def _kept_per_dim(table: list[Group], selection: Selection, shapes: Mapping[str, tuple[int, ...]]
                  ) -> dict[tuple[str, int], torch.Tensor]:
    kept = {}
    for (name, dim), removed in _removed_per_dim(table, selection).items():
        keep = torch.ones(shapes[name][dim], dtype=torch.bool)
        keep[removed] = False
        kept[(name, dim)] = torch.nonzero(keep).flatten()
    return kept


def prune_state(state: Mapping[str, torch.Tensor], table: list[Group], selection: Selection
                ) -> dict[str, torch.Tensor]:
    """A full-size ``state`` cut down to the selection: the narrower network's weights (new
    tensors; ``state`` is not changed)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    kept = _kept_per_dim(table, selection, shapes)
    out = {}
    for name, tensor in state.items():
        for dim in range(tensor.dim()):
            if (name, dim) in kept:
                tensor = tensor.index_select(dim, kept[(name, dim)])
        out[name] = tensor.detach().clone()
    return out


def expand_state(small: Mapping[str, torch.Tensor], table: list[Group], selection: Selection,
                 shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The inverse of ``prune_state``: a narrower state put back in place, zeros where units were
    removed (``shapes``: the unpruned network's)."""
    kept = _kept_per_dim(table, selection, shapes)
    out = {}
    for name, tensor in small.items():
        full = torch.zeros(shapes[name], dtype=tensor.dtype)
        index = []
        for dim, size in enumerate(shapes[name]):
            idx = kept.get((name, dim), torch.arange(size))
            view = [1] * len(shapes[name])
            view[dim] = -1
            index.append(idx.view(view))
        full[tuple(index)] = tensor
        out[name] = full
    return out


def pruned_shapes(table: list[Group], selection: Selection,
                  shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The narrower network's tensor shapes (from the unpruned ``shapes`` alone)."""
    removed = {k: int(v.numel()) for k, v in _removed_per_dim(table, selection).items()}
    return {name: tuple(size - removed.get((name, dim), 0) for dim, size in enumerate(shape))
            for name, shape in shapes.items()}


def count(table: list[Group], selection: Selection, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Parameters of the narrower network (exact, from shapes alone)."""
    return sum(math.prod(shape) for shape in pruned_shapes(table, selection, shapes).values())


def importance(state: Mapping[str, torch.Tensor], table: list[Group], selection: Selection,
               norm: str = "l2") -> dict[str, torch.Tensor]:
    """Each unit's importance: for every tensor the group touches, the unit's L1 (or squared L2)
    norm there divided by the mean over the group's remaining units, averaged over those tensors
    (so layers of different scale compare). Removed units score ``inf``. ``state``: full size."""
    if norm not in IMPORTANCE:
        raise ConfigError(f"prune.channel_importance: {norm!r} is not one of {list(IMPORTANCE)}")
    scores = {}
    for g in table:
        alive = ~selection[g.name]
        parts = []
        for s in g.slices:
            tensor = state[s.name].detach().float()
            idx = s.start + torch.arange(g.units)[:, None] * s.step + torch.arange(s.width)[None, :]
            moved = tensor.movedim(s.dim, 0)[idx.flatten()].reshape(g.units, -1)
            per_unit = moved.abs().sum(1) if norm == "l1" else moved.pow(2).sum(1)
            mean = per_unit[alive].mean() if bool(alive.any()) else torch.tensor(0.0)
            parts.append(per_unit / mean if float(mean) > 0 else torch.zeros_like(per_unit))
        score = torch.stack(parts).mean(0)
        score[~alive] = float("inf")
        scores[g.name] = score
    return scores


def select(scores: Mapping[str, torch.Tensor], table: list[Group], selection: Selection,
           shapes: Mapping[str, tuple[int, ...]], target: int, method: str = "global"
           ) -> Selection:
    """Remove the least important units (beyond ``selection``) until the network has about
    ``target`` parameters: the count nearest ``target`` that removing units in order reaches
    (exact counts). ``global``: one ranking over every group; ``layerwise``: each group gives up
    the same share of its remaining units. Every group keeps at least one unit."""
    if method not in METHODS:
        raise ConfigError(f"prune.channel_method: {method!r} is not one of {list(METHODS)}")
    candidates = []  # (key, group, unit)
    for g in table:
        alive = torch.nonzero(~selection[g.name]).flatten()
        if alive.numel() <= 1:
            continue
        order = alive[torch.argsort(scores[g.name][alive], stable=True)][:-1]  # keep the best
        for rank, unit in enumerate(order.tolist()):
            key = (rank + 1) / alive.numel() if method == "layerwise" else 0.0
            candidates.append((key, float(scores[g.name][unit]), g.name, unit))
    candidates.sort(key=lambda c: (c[0], c[1], c[2], c[3]))

    def removing(k: int) -> Selection:
        out = {n: m.clone() for n, m in selection.items()}
        for _, _, name, unit in candidates[:k]:
            out[name][unit] = True
        return out

    lo, hi = 0, len(candidates)  # smallest k whose count is <= target
    if count(table, removing(hi), shapes) > target:
        raise ConfigError(f"structured pruning cannot reach {target} parameters: removing every "
                          f"removable channel leaves {count(table, removing(hi), shapes)}")
    while lo < hi:
        mid = (lo + hi) // 2
        if count(table, removing(mid), shapes) <= target:
            hi = mid
        else:
            lo = mid + 1
    best = min((k for k in (lo - 1, lo) if k >= 0),
               key=lambda k: abs(count(table, removing(k), shapes) - target))
    return removing(best)


def cut(state: Mapping[str, torch.Tensor], table: list[Group], removed: Selection, target: int,
        norm: str = "l2", method: str = "global") -> Selection:
    """``removed`` and the least important further units of the full-size ``state``, down to
    about ``target`` parameters (``importance``, then ``select``)."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return select(importance(state, table, removed, norm), table, removed, shapes, target, method)


def save_selection(selection: Selection, path: str | Path) -> None:
    """Write a selection atomically (bool tensors by group name)."""
    atomic_torch_save({"format": "mirl-channels", "removed": dict(selection)}, path)


def load_selection(path: str | Path, table: list[Group]) -> Selection:
    """Read a selection and check it against ``table`` (``CheckpointError`` naming the file)."""
    obj = load_tensors(path, kind="channel selection")
    if not isinstance(obj, dict) or obj.get("format") != "mirl-channels":
        raise CheckpointError(f"{path}: not a mirl channel selection")
    removed = obj["removed"]
    want = {g.name: g.units for g in table}
    if set(removed) != set(want) or any(removed[n].numel() != u for n, u in want.items()):
        raise CheckpointError(f"{path}: its groups do not match this network's")
    return {n: removed[n].bool() for n in want}
