"""Ground-floor tensor files: atomic ``torch.save`` and the one ``torch.load(weights_only=True)``.

Imports torch but no model code, so masks, tickets, checkpoints and training can all use it without
importing each other.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mirl_lib.core.errors import CheckpointError
from mirl_lib.files.atomic import atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically. Saved through an open file, so the archive's
    folder is torch's fixed ``archive`` rather than the random temporary file's name: the same
    object gives the same bytes (files written before 5 December 2026 name their temporary file
    there; they load the same). A full disk is a ``DiskFullError`` naming ``path``: torch
    reports a failed write to an open file as a ``RuntimeError`` ("unexpected pos"), the
    ``OSError`` behind it is what is raised."""
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        try:
            torch.save(obj, handle)
        except RuntimeError as exc:
            if isinstance(exc.__context__, OSError):
                raise exc.__context__ from None
            raise


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
        raise CheckpointError(
            f"{path}: not a readable {kind} (corrupt, truncated, or holding objects that "
            f"weights_only=True refuses): {_refusal_reason(exc)}") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"unsupported global:? (?:global )?([\w.]+)", re.IGNORECASE)
_UNPICKLER = re.compile(r"WeightsUnpickler error: ([^.\n]*)")


def _refusal_reason(exc: Exception) -> str:
    """The first line of torch's reason, unless it is about the weights-only unpickler.

    torch's weights-only refusal advises retrying with ``weights_only=False``, which would run
    whatever code an untrusted file holds; that advice is never repeated, only what was refused.
    """
    text = _ANSI.sub("", str(exc)).strip()
    first = text.splitlines()[0].strip() if text else type(exc).__name__
    if not re.search(r"weights[ _]only", text, re.IGNORECASE):
        return first
    found = _GLOBAL.search(text) or _UNPICKLER.search(text)
    held = f" ({found.group(1).strip()})" if found and "weights_only" not in found.group(1) else ""
    return (f"it holds Python objects other than tensors and plain containers{held}, which mirl "
            f"never unpickles")


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies of the state of ``model`` (unwrapping DDP)."""
    model = getattr(model, "module", model)
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
