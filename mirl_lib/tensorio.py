"""Ground-floor tensor files: atomic ``torch.save`` and the one ``torch.load(weights_only=True)``.

Imports torch but no model code, so masks, tickets, checkpoints and training can all use it without
importing each other.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mirl_lib.errors import CheckpointError
from mirl_lib.fileio import atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def load_tensors(path: str | Path, map_location: str | torch.device = "cpu",
                 kind: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; a missing or unreadable file raises
    ``CheckpointError`` naming the file and the ``kind`` of file expected."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: {kind} file not found")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt, truncated or foreign files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable {kind} (corrupt, truncated, or holding objects that "
            f"weights_only=True refuses): {reason}") from None


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of the state of ``model`` (unwrapping DDP)."""
    model = getattr(model, "module", model)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
