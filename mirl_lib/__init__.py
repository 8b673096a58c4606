"""mirl: lottery tickets in all-in-one image restoration (PromptIR, MIR-L).

The package namespace is lazy, so ``import mirl_lib.fileio`` (or ``errors``) loads no torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"Config": "mirl_lib.config", "load_config": "mirl_lib.config",
            "MirlError": "mirl_lib.errors", "PromptIR": "mirl_lib.model",
            "build_model": "mirl_lib.model"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mirl_lib' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
