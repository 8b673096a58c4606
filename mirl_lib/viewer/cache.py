"""Restored test images, computed on demand and cached in memory (LRU) and on disk
(``RestoreCache``).
"""
from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from mirl_lib.core.device import resolve_device
from mirl_lib.core.errors import DataError
from mirl_lib.evaluation import restore
from mirl_lib.files import atomic
from mirl_lib.net import checkpoints


class RestoreCache:
    """Restored images keyed by ticket file, input image and tiling: memory LRU, ``.npy`` on disk.

    Models are loaded lazily (``checkpoints.load_model``) and the last few are kept in memory.
    """

    def __init__(self, cache_dir: str | Path | None = None, device: str = "auto",
                 tile: int = 256, overlap: int = 32, max_images: int = 64,
                 max_models: int = 2) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.device, self.tile, self.overlap = resolve_device(device), tile, overlap
        self.max_images, self.max_models = max_images, max_models
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._models: OrderedDict[Path, Any] = OrderedDict()

    def key(self, ticket: Path, img: np.ndarray) -> str:
        """A stable key of the ticket file (path, size, mtime), the image content and the tiling."""
        try:
            st = ticket.stat()
        except OSError:
            raise DataError(f"{ticket}: ticket file not found") from None
        blob = json.dumps({"ticket": str(ticket.resolve()), "size": st.st_size,
                           "mtime_ns": st.st_mtime_ns, "shape": list(img.shape),
                           "image": hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest(),
                           "tile": self.tile, "overlap": self.overlap,
                           "device": self.device.type}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def restored(self, ticket: Path, img: np.ndarray) -> np.ndarray:
        """``img`` restored by ``ticket``, clipped to [0, 1], from the cache when possible."""
        key = self.key(ticket, img)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        disk = self.cache_dir / f"{key}.npy" if self.cache_dir is not None else None
        if disk is not None and disk.is_file():
            out = np.load(disk, allow_pickle=False)
        else:
            out = np.clip(restore.restore_image(self.model(ticket), img, device=self.device,
                                                tile=self.tile, overlap=self.overlap),
                          0.0, 1.0).astype(np.float32)
            if disk is not None:
                with atomic.atomic_write(disk) as tmp:
                    np.save(tmp, out)
        self._images[key] = out
        while len(self._images) > self.max_images:
            self._images.popitem(last=False)
        return out

    def model(self, ticket: Path) -> Any:
        """The network of ``ticket``, loaded once and kept while recently used."""
        if ticket in self._models:
            self._models.move_to_end(ticket)
            return self._models[ticket]
        model, _ = checkpoints.load_model(ticket, device=self.device)
        self._models[ticket] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model
