"""Weights files and checkpoint loading (every write atomic, see ``mirl_lib.files.atomic``).

``load_model`` reads, always with ``torch.load(..., weights_only=True)``:

- a plain PromptIR ``state_dict`` (the architecture is ``expected``, or the ``paper`` preset),
- a MIR-L / PromptIR PyTorch-Lightning checkpoint (weights under ``state_dict``, keys prefixed
  ``net.``),
- a mirl weights file written by ``save_weights`` (it records its ``ModelConfig``),
- a sparse ticket ``*.mirl`` (via ``mirl_lib.files.tickets.load_ticket``).

A weights file or ticket whose meta says ``structured: true`` holds a narrower network of its
``ModelConfig`` (``mirl_lib.net.structured``): it is built at its tensors' own widths and checked
by ``structured.misfit`` instead of against the config's shapes.

Every failure is a ``CheckpointError`` whose message names the file.
"""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch

from mirl_lib.core.config import PRESETS, ModelConfig, model_config
from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.files.tensors import atomic_torch_save, cpu_state_dict, load_tensors
from mirl_lib.files.tickets import TICKET_SUFFIX, load_ticket
from mirl_lib.net import structured
from mirl_lib.net.promptir import PromptIR, build_model
from mirl_lib.net.sizing import skeleton

WEIGHTS_FORMAT = "mirl-weights"
LIGHTNING_PREFIX = "net."


def save_weights(model: PromptIR, path: str | Path, meta: dict[str, Any] | None = None) -> None:
    """Save a mirl weights file: format tag, ``model_config`` (a dict), ``state_dict`` and ``meta``.

    ``meta`` must hold plain values (numbers, strings, lists, dicts, tensors) so it loads with
    ``weights_only=True``.
    """
    net = getattr(model, "module", model)
    meta = dict(meta or {})
    if structured.is_structured(net):
        meta[structured.STRUCTURED] = True
    atomic_torch_save({"format": WEIGHTS_FORMAT, "model_config": dataclasses.asdict(net.config),
                       "state_dict": cpu_state_dict(net), "meta": meta}, path)


def _read(path: Path, expected: ModelConfig | None
          ) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported file: (architecture, state_dict, meta with a ``format`` entry)."""
    if path.suffix == TICKET_SUFFIX:
        if not path.is_file():
            raise CheckpointError(f"{path}: ticket file not found")
        state, mask, meta = load_ticket(path)
        cfg = _stored_config(path, meta.get("model_config"))
        return cfg, state, {**meta, "format": "ticket", "mask": mask}
    obj = load_tensors(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: unknown checkpoint format (a {type(obj).__name__}, "
                              "not a dict)")
    if "format" in obj:
        if obj["format"] != WEIGHTS_FORMAT:
            raise CheckpointError(f"{path}: unknown checkpoint format {obj['format']!r}")
        cfg = _stored_config(path, obj.get("model_config"))
        return cfg, _tensor_dict(path, obj.get("state_dict")), {**obj.get("meta", {}),
                                                                "format": WEIGHTS_FORMAT}
    if isinstance(obj.get("state_dict"), dict):
        state = {k.removeprefix(LIGHTNING_PREFIX): v for k, v in obj["state_dict"].items()}
        return expected or PRESETS["paper"], _tensor_dict(path, state), {"format": "lightning"}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return expected or PRESETS["paper"], obj, {"format": "state_dict"}
    raise CheckpointError(f"{path}: unknown checkpoint format (a dict with keys "
                          f"{sorted(map(str, obj))[:6]}; expected a PromptIR state_dict, a "
                          "Lightning checkpoint, a mirl weights file or a *.mirl ticket)")


def _stored_config(path: Path, stored: Any) -> ModelConfig:
    if not isinstance(stored, dict):
        raise CheckpointError(f"{path}: the file records no model_config")
    try:
        return model_config(stored)
    except ConfigError as exc:
        raise CheckpointError(f"{path}: recorded model_config is invalid: {exc}") from None


def _tensor_dict(path: Path, state: Any) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: 'state_dict' is not a mapping of tensors")
    return state


@functools.lru_cache(maxsize=16)
def _shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of PromptIR(cfg), built on the meta device (no memory)."""
    return {k: tuple(v.shape) for k, v in skeleton(cfg).state_dict().items()}


def _misfit(cfg: ModelConfig, state: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not fit PromptIR(cfg), or None when names and shapes all match."""
    want = _shapes(cfg)
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    wrong = [k for k in want if k in state and tuple(state[k].shape) != want[k]]
    problems = []
    if wrong:
        k = wrong[0]
        problems.append(f"{len(wrong)} shape mismatch(es), first {k}: checkpoint "
                        f"{tuple(state[k].shape)} vs model {want[k]}")
    if missing:
        problems.append(f"{len(missing)} missing key(s), first {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s), first {unexpected[:3]}")
    return "; ".join(problems) or None


def _check_fit(path: Path, cfg: ModelConfig, state: dict[str, torch.Tensor],
               meta: dict[str, Any] | None = None) -> None:
    if (meta or {}).get(structured.STRUCTURED):
        problem = structured.misfit(cfg, state)
        if problem is not None:
            raise CheckpointError(f"{path}: not a structured {cfg.preset!r} network: {problem}")
        return
    problem = _misfit(cfg, state)
    if problem is None:
        return
    like = [name for name, preset in PRESETS.items() if _misfit(preset, state) is None]
    guess = f"it looks like preset {like[0]!r}" if like else "it matches no known preset"
    raise CheckpointError(f"{path}: checkpoint does not fit the {cfg.preset!r} model ({problem}); "
                          f"{guess}")


def _same_architecture(a: ModelConfig, b: ModelConfig) -> bool:
    return dataclasses.replace(a, preset=b.preset) == b


def _check_expected(path: Path, stored: ModelConfig, expected: ModelConfig | None) -> None:
    if expected is None or _same_architecture(stored, expected):
        return
    diff = [f.name for f in dataclasses.fields(ModelConfig)
            if f.name != "preset" and getattr(stored, f.name) != getattr(expected, f.name)]
    raise CheckpointError(f"{path}: checkpoint holds a {stored.preset!r} model but a "
                          f"{expected.preset!r} model was expected (differs in {diff})")


def load_into(model: PromptIR, path: str | Path) -> dict[str, Any]:
    """Load any supported file into ``model`` (strict); returns its meta (see ``load_model``)."""
    path = Path(path)
    net = getattr(model, "module", model)
    cfg, state, meta = _read(path, net.config)
    _check_expected(path, cfg, net.config)
    _check_fit(path, net.config, state, meta)
    have = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    wrong = [k for k in have if k in state and tuple(state[k].shape) != have[k]]
    if wrong:  # a structured file into a network of other widths
        raise CheckpointError(f"{path}: {wrong[0]} is {tuple(state[wrong[0]].shape)}, the network "
                              f"it is loaded into has {have[wrong[0]]}")
    net.load_state_dict(state, strict=True)
    return {**meta, "model_config": net.config}


def load_model(path: str | Path, expected: ModelConfig | None = None,
               device: str | torch.device = "cpu") -> tuple[PromptIR, dict[str, Any]]:
    """Build PromptIR from a checkpoint file and load its weights (strict), in eval mode.

    Returns ``(model, meta)``: ``meta`` holds the file's own meta, ``format`` (``state_dict``,
    ``lightning``, ``mirl-weights`` or ``ticket``), ``model_config`` and, for tickets, ``mask``.
    """
    path = Path(path)
    cfg, state, meta = _read(path, expected)
    _check_expected(path, cfg, expected)
    _check_fit(path, cfg, state, meta)
    if meta.get(structured.STRUCTURED):
        model = structured.build(cfg, state)
    else:
        model = build_model(cfg)
        model.load_state_dict(state, strict=True)
    return model.to(device).eval(), {**meta, "model_config": cfg}
