"""Sparse lottery tickets: surviving weights + packed mask, restored exactly to the dense form.

A ticket (conventionally ``*.mirl``) is one ``torch.save`` file of plain containers, loadable with
``weights_only=True``::

    format: "mirl-ticket", version: 1
    order:  every tensor name of the state_dict, in order
    masked: [[name, shape, dtype], ...] in mask order
    mask_bits: uint8 tensor = zlib(np.packbits(concatenated flattened masks))
    values: float32 tensor, the kept entries of the masked tensors in mask order (C order within)
    dense:  {name: tensor} for the tensors the mask does not cover
    meta:   plain dict of str/int/float/bool/None/list/tuple/dict (model config, strategy, round,
            seed, config hash, ...)
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mirl_lib.core.errors import CheckpointError
from mirl_lib.files.tensors import atomic_torch_save, load_tensors

Mask = dict[str, torch.Tensor]  # name -> bool tensor (True = kept), as in mirl_lib.pruning.masks
FORMAT = "mirl-ticket"
TICKET_SUFFIX = ".mirl"
VERSION = 1


# Dtypes whose values float32 holds exactly.
_DTYPES = {str(t): t for t in (torch.float32, torch.float16, torch.bfloat16)}


def export_ticket(state_dict: Mapping[str, torch.Tensor], mask: Mask, path: str | Path,
                  meta: dict[str, Any]) -> Path:
    """Write the ticket of ``state_dict`` under ``mask`` to ``path`` atomically; returns the
    path."""
    path = Path(path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta must be a dict, got {type(meta).__name__}")
    _check_meta(meta, path)
    masked, values, bits = [], [], []
    for name, keep in mask.items():
        if name not in state_dict:
            raise CheckpointError(f"{path}: masked tensor {name!r} is not in the state_dict")
        tensor = state_dict[name].detach().cpu()
        if tuple(tensor.shape) != tuple(keep.shape) or str(tensor.dtype) not in _DTYPES:
            raise CheckpointError(f"{path}: {name!r} is {tensor.dtype} {tuple(tensor.shape)}, its "
                                  f"mask {tuple(keep.shape)}; need equal shapes and one of "
                                  f"{sorted(_DTYPES)}")
        flat_keep = keep.detach().cpu().reshape(-1)
        masked.append([name, list(tensor.shape), str(tensor.dtype)])
        values.append(tensor.reshape(-1)[flat_keep].to(torch.float32))
        bits.append(flat_keep.numpy())
    packed = np.packbits(np.concatenate(bits)) if bits else np.zeros(0, np.uint8)
    ticket = {
        "format": FORMAT, "version": VERSION,
        "order": list(state_dict),
        "masked": masked,
        "mask_bits": torch.from_numpy(np.frombuffer(zlib.compress(packed.tobytes(), 6),
                                                    dtype=np.uint8).copy()),
        "values": torch.cat(values) if values else torch.zeros(0),
        "dense": {n: t.detach().cpu().contiguous() for n, t in state_dict.items() if n not in mask},
        "meta": meta,
    }
    atomic_torch_save(ticket, path)
    return Path(path)


def load_ticket(path: str | Path) -> tuple[dict[str, torch.Tensor], Mask, dict[str, Any]]:
    """Read a ticket: ``(dense state_dict with pruned entries zero, mask, meta)``."""
    path = Path(path)
    ticket = load_tensors(path, kind="ticket")
    if not isinstance(ticket, dict) or ticket.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a mirl ticket (no format {FORMAT!r})")
    if ticket.get("version") != VERSION:
        raise CheckpointError(f"{path}: ticket version {ticket.get('version')!r}, "
                              f"this mirl reads {VERSION}")
    try:
        return _decode(ticket, path)
    except (KeyError, TypeError, ValueError, RuntimeError, zlib.error) as exc:
        raise CheckpointError(f"{path}: damaged ticket ({type(exc).__name__}: {exc})") from None


def _decode(ticket: dict[str, Any], path: Path) -> tuple[dict[str, torch.Tensor], Mask,
                                                          dict[str, Any]]:
    masked = ticket["masked"]
    sizes = [int(np.prod(shape, dtype=np.int64)) for _, shape, _ in masked]
    packed = np.frombuffer(zlib.decompress(ticket["mask_bits"].numpy().tobytes()), dtype=np.uint8)
    flat = np.unpackbits(packed, count=sum(sizes)).astype(bool)
    if flat.size != sum(sizes):
        raise CheckpointError(f"{path}: mask bits hold {flat.size} entries, expected {sum(sizes)}")
    values = ticket["values"]
    if int(flat.sum()) != values.numel():
        raise CheckpointError(f"{path}: {values.numel()} stored values for {int(flat.sum())} "
                              "kept weights")
    mask, restored = {}, {}
    bit_start = value_start = 0
    for (name, shape, dtype), size in zip(masked, sizes):
        keep = torch.from_numpy(flat[bit_start:bit_start + size].copy())
        kept = int(keep.sum())
        dense = torch.zeros(size, dtype=torch.float32)
        dense[keep] = values[value_start:value_start + kept]
        mask[name] = keep.reshape(shape)
        restored[name] = dense.reshape(shape).to(_DTYPES[dtype])
        bit_start += size
        value_start += kept
    for name, tensor in ticket["dense"].items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{path}: dense entry {name!r} is not a tensor")
        restored[name] = tensor
    missing = [n for n in ticket["order"] if n not in restored]
    if missing:
        raise CheckpointError(f"{path}: tensors {missing[:3]} are missing")
    return {n: restored[n] for n in ticket["order"]}, mask, ticket["meta"]


def _check_meta(meta: Any, path: Path, key: str = "meta") -> None:
    """Meta must be plain data so the ticket loads with ``weights_only=True``."""
    if type(meta) is dict:
        for k, v in meta.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{path}: {key} has a non-string key {k!r}")
            _check_meta(v, path, f"{key}.{k}")
    elif type(meta) in (list, tuple):
        for i, v in enumerate(meta):
            _check_meta(v, path, f"{key}[{i}]")
    elif type(meta) not in (str, int, float, bool, type(None)):
        raise CheckpointError(f"{path}: {key} is a {type(meta).__name__}; meta holds only "
                              "str/int/float/bool/None, lists, tuples and dicts")
