"""Pruning masks: which weights are prunable, how dense a mask is, saving it, enforcing it.

A ``Mask`` maps parameter names to boolean tensors of the parameter's shape (``True`` = kept).
Parameters keep their plain names (no ``weight_orig`` / parametrization), so a pruned model's
``state_dict`` stays an ordinary PromptIR ``state_dict``; ``MaskEnforcer`` keeps pruned weights at
exactly zero during training with gradient hooks instead. ``collapse`` reports layer collapse:
empty mask tensors, and whether the mask cuts every path from the input image to the output.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from mirl_lib.core.errors import CheckpointError, ConfigError
from mirl_lib.files.atomic import atomic_write_text
from mirl_lib.files.paths import mask_report_file
from mirl_lib.files.tensors import atomic_torch_save, load_tensors
from mirl_lib.net.promptir import UNUSED_PARAMETER_PREFIXES

Mask = dict[str, torch.Tensor]
SCOPES: tuple[str, ...] = ("default", "reference")


def prunable_names(model: nn.Module, scope: str = "default") -> list[str]:
    """Names of the prunable parameters of ``model`` under ``scope``, in ``state_dict`` order.

    ``default``: weights of the ``Conv2d`` / ``Linear`` layers that the forward pass uses (the six
    unused 1x1 convolutions excluded). ``reference``: every parameter whose name contains
    ``"weight"`` (the published MIR-L choice: LayerNorm scales and unused convolutions included).
    """
    names = [name for name, _ in model.named_parameters()]
    if scope == "reference":
        return [n for n in names if "weight" in n]
    if scope != "default":
        raise ConfigError(f"prune.scope: unknown scope {scope!r}; known: {list(SCOPES)}")
    chosen = {
        f"{mod_name}.weight" for mod_name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
        and not f"{mod_name}.".startswith(UNUSED_PARAMETER_PREFIXES)
    }
    return [n for n in names if n in chosen]


def full_mask(model: nn.Module, scope: str = "default") -> Mask:
    """A mask keeping every prunable weight (CPU tensors)."""
    params = dict(model.named_parameters())
    return {n: torch.ones(params[n].shape, dtype=torch.bool) for n in prunable_names(model, scope)}


def density_report(mask: Mask, model: nn.Module | None = None) -> pd.DataFrame:
    """Per-tensor table: name, shape, kept, total, density, prunable.

    With ``model`` every parameter is listed (unmasked ones as fully kept, ``prunable=False``), so
    the column sums give the whole network's remaining fraction; without it only masked tensors are.
    """
    shapes = ({n: tuple(p.shape) for n, p in model.named_parameters()} if model is not None
              else {n: tuple(m.shape) for n, m in mask.items()})
    rows = []
    for name, shape in shapes.items():
        total = int(torch.Size(shape).numel())
        kept = int(mask[name].sum()) if name in mask else total
        rows.append({"name": name, "shape": "x".join(map(str, shape)), "kept": kept,
                     "total": total, "density": kept / total if total else 1.0,
                     "prunable": name in mask})
    return pd.DataFrame(rows, columns=["name", "shape", "kept", "total", "density", "prunable"])


def sparsity(mask: Mask, model: nn.Module) -> dict[str, float | int]:
    """Remaining fractions: of the prunable weights, and of ALL parameters (unpruned count as
    kept)."""
    check_fits(mask, model)
    kept = sum(int(m.sum()) for m in mask.values())
    prunable = sum(m.numel() for m in mask.values())
    total = sum(p.numel() for p in model.parameters())
    return {"kept": kept, "prunable": prunable, "total": total,
            "remaining_prunable": kept / prunable if prunable else 1.0,
            "remaining_all": (total - prunable + kept) / total}


def check_fits(mask: Mask, model: nn.Module, source: str = "mask") -> None:
    """Raise ``CheckpointError`` unless every mask entry names a parameter of the same shape."""
    params = dict(model.named_parameters())
    for name, keep in mask.items():
        if name not in params:
            raise CheckpointError(f"{source}: {name!r} is not a parameter of the model")
        if tuple(keep.shape) != tuple(params[name].shape):
            raise CheckpointError(f"{source}: {name!r} has shape {tuple(keep.shape)}, the model's "
                                  f"parameter has {tuple(params[name].shape)}")
        if keep.dtype != torch.bool:
            raise CheckpointError(f"{source}: {name!r} is {keep.dtype}, expected torch.bool")


def save_mask(mask: Mask, path: str | Path, model: nn.Module | None = None) -> Path:
    """Save ``mask`` (``torch.save`` of CPU bool tensors) and its density report beside it
    (``paths.mask_report_file``: ``mask.pt`` -> ``mask_report.csv``)."""
    path = Path(path)
    data = {n: m.detach().to("cpu", torch.bool).contiguous() for n, m in mask.items()}
    atomic_torch_save(data, path)
    report = density_report(mask, model)
    atomic_write_text(report.to_csv(index=False), mask_report_file(path))
    return path


def load_mask(path: str | Path) -> Mask:
    """Load a mask saved by ``save_mask``; anything but a dict of bool tensors is a
    ``CheckpointError``."""
    path = Path(path)
    data = load_tensors(path, kind="mask")
    if not isinstance(data, dict) or not data:
        raise CheckpointError(f"{path}: a mask file holds a non-empty dict of bool tensors")
    for name, keep in data.items():
        if (not isinstance(name, str) or not isinstance(keep, torch.Tensor)
                or keep.dtype != torch.bool):
            raise CheckpointError(f"{path}: entry {name!r} is not a bool tensor")
    return data


class MaskEnforcer:
    """Keeps the pruned weights of ``model`` at exactly zero while it trains.

    On creation the pruned weights are zeroed and each masked parameter gets a gradient hook that
    zeroes the gradient of its pruned entries. A zero weight with zero gradient stays exactly zero
    under SGD and AdamW (decoupled decay of zero is zero, Adam moments stay zero), provided the
    optimizer state is fresh or was built under the same mask. Use as a context manager or call
    ``remove()``. Build it after moving the model to its device.
    """

    def __init__(self, model: nn.Module, mask: Mask) -> None:
        check_fits(mask, model)
        params = dict(model.named_parameters())
        self._pruned = {n: ~m.to(params[n].device) for n, m in mask.items()}
        self._params = {n: params[n] for n in mask}
        self._handles = [p.register_hook(_zero_grad_hook(self._pruned[n]))
                         for n, p in self._params.items()]
        self.apply()

    def apply(self) -> None:
        """Zero the pruned weights (again, e.g. after loading new values into the model)."""
        with torch.no_grad():
            for name, param in self._params.items():
                param.masked_fill_(self._pruned[name].to(param.device), 0)

    def remove(self) -> None:
        """Remove the gradient hooks (the weights keep their current values)."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> MaskEnforcer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def _zero_grad_hook(pruned: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad.masked_fill(pruned.to(grad.device), 0)
    return hook
