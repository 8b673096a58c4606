"""Before/after viewer of a finished run, and restore-your-own-photo (ipywidgets 8).

``Viewer(run_dir)`` shows one test image of the run restored by one ticket of the catalog: a wipe
between the restored image (left) and the degraded or clean image (right), a zoomed crop of both
around a chosen point and the PSNR/SSIM of what is shown. Nothing is restored until it is shown;
restored images are cached in memory (LRU) and, with ``cache_dir``, on disk as ``.npy``.

``UploadPanel(run_dir)`` restores an uploaded photo with a chosen ticket, the same path as
``python -m mirl_lib restore``, and offers the result as a ``data:`` URI download link.
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np

from mirl_lib.core import protocol
from mirl_lib.core.config import load_config
from mirl_lib.core.errors import ConfigError, DataError, MirlError
from mirl_lib.data import testset
from mirl_lib.files import images
from mirl_lib.files.paths import CONFIG_FILE
from mirl_lib.study import strategies
from mirl_lib.viewer.cache import RestoreCache
from mirl_lib.viewer.catalog import RunCatalog
from mirl_lib.viewer.compose import (
    ZOOM_FACTORS,
    compose_wipe,
    download_link,
    png_bytes,
    preview,
    zoom_box,
    zoom_pair,
)


class Viewer:
    """Before/after viewer over the test set of a run folder and the tickets of its catalog."""

    def __init__(self, run_dir: str | Path, cache_dir: str | Path | None = None,
                 device: str = "auto", tile: int = 256, overlap: int = 32) -> None:
        self.run_dir = Path(run_dir)
        self.catalog = RunCatalog(self.run_dir)
        self.config = load_config(self.run_dir / CONFIG_FILE)
        items = testset.load_test_set(self.config.data, seed=self.config.data.test_seed)
        if not items:
            raise DataError(f"{self.run_dir / CONFIG_FILE}: data section yields no test images")
        self.items: dict[str, list[Any]] = {}
        for item in items:
            self.items.setdefault(item.task, []).append(item)
        self.cache = RestoreCache(cache_dir, device=device, tile=tile, overlap=overlap)
        self._quiet_depth = 0
        self._shown: dict[str, Any] = {}
        self._build_controls()
        self._sync_images()
        self._sync_points()
        self._render()

    # -- widgets -------------------------------------------------------------------------------
    def _build_controls(self) -> None:
        tasks = list(self.items)
        seeds = self.catalog.seeds()
        self.task = widgets.Dropdown(options=tasks, value=tasks[0], description="task")
        self.image = widgets.Dropdown(description="image")
        self.seed = widgets.Dropdown(options=seeds, value=seeds[0], description="seed")
        self.strategy = widgets.Dropdown(description="strategy")
        self.point = widgets.Dropdown(description="ticket", layout=widgets.Layout(width="420px"))
        self.before = widgets.ToggleButtons(options=["degraded", "clean"], value="degraded",
                                            description="compare")
        self.wipe = widgets.IntSlider(value=50, min=0, max=100, description="wipe %",
                                      continuous_update=False)
        self.x = widgets.IntSlider(value=0, min=0, max=0, description="zoom x",
                                   continuous_update=False)
        self.y = widgets.IntSlider(value=0, min=0, max=0, description="zoom y",
                                   continuous_update=False)
        self.zoom = widgets.Dropdown(options=list(ZOOM_FACTORS), value=4, description="zoom")
        self.main_image = widgets.Image(format="png", layout=widgets.Layout(width="512px"))
        self.zoom_image = widgets.Image(format="png", layout=widgets.Layout(width="384px"))
        self.stats = widgets.HTML()
        self.status = widgets.HTML()
        self.main_image.add_class("mirl-viewer-main")
        self.zoom_image.add_class("mirl-viewer-zoom")
        self.wipe.add_class("mirl-viewer-wipe")

        self._observe(self.task, lambda: (self._sync_images(), self._render()))
        self._observe(self.image, lambda: (self._sync_xy(), self._render()))
        self._observe(self.seed, lambda: (self._sync_points(), self._render()))
        self._observe(self.strategy, lambda: (self._sync_points(keep_strategy=True),
                                              self._render()))
        self._observe(self.point, self._render)
        for w in (self.before, self.wipe, self.x, self.y, self.zoom):
            self._observe(w, self._compose)

        zoom_panel = widgets.VBox([
            widgets.HTML("<b>zoom</b>: before | restored"), self.zoom_image,
            self.x, self.y, self.zoom])
        self.widget = widgets.VBox([
            widgets.HBox([self.task, self.image]),
            widgets.HBox([self.seed, self.strategy, self.point]),
            widgets.HBox([self.wipe, self.before]),
            widgets.HTML("left of the wipe: restored; right: the image chosen in <i>compare</i>"),
            widgets.HBox([self.main_image, zoom_panel]),
            self.stats, self.status])
        self.widget.add_class("mirl-viewer")

    def _observe(self, widget: widgets.Widget, action: Callable[[], Any]) -> None:
        def handler(_change: dict[str, Any]) -> None:
            if not self._quiet_depth:
                action()
        widget.observe(handler, names="value")

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """Option updates inside this block do not trigger re-rendering."""
        self._quiet_depth += 1
        try:
            yield
        finally:
            self._quiet_depth -= 1

    def _sync_images(self) -> None:
        items = self.items[self.task.value]
        with self._quiet():
            self.image.options = [(f"{it.dataset}/{it.name}", i) for i, it in enumerate(items)]
            self.image.value = 0
        self._sync_xy()

    def _sync_xy(self) -> None:
        h, w = self._item().clean.shape[:2]
        with self._quiet():
            self.x.max, self.y.max = w - 1, h - 1
            self.x.value, self.y.value = w // 2, h // 2

    def _sync_points(self, keep_strategy: bool = False) -> None:
        with self._quiet():
            if not keep_strategy:
                names = self.catalog.strategies(self.seed.value)
                current = self.strategy.value
                self.strategy.options = names
                trunk = strategies.TRUNK  # open on the MIR-L ticket
                self.strategy.value = current if current in names else (
                    trunk if trunk in names else names[0])
            rows = self.catalog.points(self.seed.value, self.strategy.value)
            self.point.options = [(self.catalog.label(i), i) for i in rows]
            self.point.value = rows[-1]

    def _item(self) -> Any:
        return self.items[self.task.value][self.image.value]

    # -- rendering -----------------------------------------------------------------------------
    def _render(self) -> None:
        """Restore (or fetch from the cache) what the controls select, then compose."""
        item = self._item()
        ticket = self.catalog.ticket_path(self.point.value)
        self.status.value = f"restoring {html.escape(item.name)} with {html.escape(ticket.name)}..."
        try:
            restored = self.cache.restored(ticket, item.degraded)
        except MirlError as exc:
            self.status.value = f'<span style="color:#b00">error: {html.escape(str(exc))}</span>'
            self._shown = {"restored": None, "error": str(exc)}
            self.main_image.value = png_bytes(item.degraded)
            self.zoom_image.value = b""
            return
        self.status.value = ""
        row = self.catalog.row(self.point.value)
        self._shown = {
            "restored": restored, "error": None,
            "psnr_degraded": protocol.psnr(item.degraded, item.clean),
            "ssim_degraded": protocol.ssim(item.degraded, item.clean),
            "psnr_restored": protocol.psnr(restored, item.clean),
            "ssim_restored": protocol.ssim(restored, item.clean),
        }
        s = self._shown
        self.stats.value = (
            f"<b>{html.escape(item.task)}</b> {html.escape(item.dataset)}/{html.escape(item.name)}"
            f" &middot; {html.escape(str(row['strategy']))} round {row['round']}, "
            f"{100 * row['remaining_prunable']:.1f}% remaining"
            f" (run mean PSNR {row['mean_psnr']:.2f} dB)<br>"
            f"degraded vs clean: PSNR {s['psnr_degraded']:.2f} dB, SSIM {s['ssim_degraded']:.4f}"
            f"<br>restored vs clean: PSNR {s['psnr_restored']:.2f} dB, "
            f"SSIM {s['ssim_restored']:.4f}")
        self._compose()

    def _compose(self) -> None:
        restored = self._shown.get("restored")
        if restored is None:
            return
        item = self._item()
        before = item.degraded if self.before.value == "degraded" else item.clean
        composed = compose_wipe(restored, before, self.wipe.value)
        box = zoom_box(composed.shape, self.x.value, self.y.value, self.zoom.value)
        zoomed = zoom_pair(before, restored, box, self.zoom.value)
        self._shown.update(composed=composed, zoomed=zoomed, box=box)
        self.main_image.value = png_bytes(composed)
        self.zoom_image.value = png_bytes(zoomed)

    # -- test/automation API -------------------------------------------------------------------
    def set(self, **controls: Any) -> dict[str, Any]:
        """Set controls by name (task, image, seed, strategy, round, before, wipe, x, y, zoom).

        ``image`` is an image name, ``round`` a round number of the chosen strategy. Returns
        ``state()``.
        """
        order = ("task", "image", "seed", "strategy", "round", "before", "wipe", "x", "y", "zoom")
        unknown = sorted(set(controls) - set(order))
        if unknown:
            raise ConfigError(f"Viewer.set: unknown control(s) {unknown}; known: {list(order)}")
        for name in order:
            if name not in controls:
                continue
            value = controls[name]
            if name == "image":
                names = [it.name for it in self.items[self.task.value]]
                if value not in names:
                    raise ConfigError(f"Viewer.set: image {value!r} not in task "
                                      f"{self.task.value!r}; known: {names}")
                self.image.value = names.index(value)
            elif name == "round":
                rows = {int(self.catalog.row(i)["round"]): i for _, i in self.point.options}
                if value not in rows:
                    raise ConfigError(f"Viewer.set: round {value!r} not in strategy "
                                      f"{self.strategy.value!r}; known: {sorted(rows)}")
                self.point.value = rows[value]
            else:
                widget = getattr(self, name)
                options = getattr(widget, "options", None)
                allowed = None if options is None else [
                    o[1] if isinstance(o, tuple) else o for o in options]
                if allowed is not None and value not in allowed:
                    raise ConfigError(f"Viewer.set: {name}={value!r} is not one of {allowed}")
                widget.value = value
        return self.state()

    def state(self) -> dict[str, Any]:
        """What is displayed: the selection, the metrics, the composed arrays and PNG hashes."""
        item = self._item()
        row = self.catalog.row(self.point.value)
        shown = self._shown
        return {
            "task": item.task, "dataset": item.dataset, "image": item.name,
            "seed": int(row["seed"]), "strategy": str(row["strategy"]), "round": int(row["round"]),
            "remaining_prunable": float(row["remaining_prunable"]),
            "ticket": str(self.catalog.ticket_path(self.point.value)),
            "before": self.before.value, "wipe": self.wipe.value,
            "x": self.x.value, "y": self.y.value, "zoom": self.zoom.value,
            "error": shown.get("error"),
            **{k: shown.get(k) for k in ("psnr_degraded", "ssim_degraded", "psnr_restored",
                                         "ssim_restored", "restored", "composed", "zoomed", "box")},
            "stats_html": self.stats.value,
            "png_sha256": hashlib.sha256(self.main_image.value).hexdigest(),
            "zoom_png_sha256": hashlib.sha256(self.zoom_image.value).hexdigest(),
        }


class UploadPanel:
    """Restore your own photo with a ticket of the run; errors are shown in the panel."""

    def __init__(self, run_dir: str | Path, device: str = "auto", tile: int = 256,
                 overlap: int = 32) -> None:
        self.catalog = RunCatalog(run_dir)
        self.cache = RestoreCache(None, device=device, tile=tile, overlap=overlap, max_images=4)
        rows = list(self.catalog.frame.index)
        self.upload = widgets.FileUpload(accept="image/*", multiple=False, description="photo")
        self.ticket = widgets.Dropdown(
            options=[(self.catalog.label(i, with_strategy=True), int(i)) for i in rows],
            value=int(rows[-1]), description="ticket", layout=widgets.Layout(width="520px"))
        self.wipe = widgets.IntSlider(value=50, min=0, max=100, description="wipe %",
                                      continuous_update=False)
        self.image = widgets.Image(format="png", layout=widgets.Layout(width="512px"))
        self.download = widgets.HTML()
        self.status = widgets.HTML("upload an 8-bit RGB photo (PNG or JPEG)")
        self.image.add_class("mirl-upload-image")
        self._name = ""
        self._data = b""
        self._input: np.ndarray | None = None
        self._restored: np.ndarray | None = None
        self.upload.observe(self._on_upload, names="value")
        self.ticket.observe(lambda _c: self._run(), names="value")
        self.wipe.observe(lambda _c: self._compose(), names="value")
        self.widget = widgets.VBox([
            widgets.HBox([self.upload, self.ticket]), self.wipe,
            widgets.HTML("left of the wipe: restored; right: your photo"),
            self.image, self.download, self.status])
        self.widget.add_class("mirl-upload")

    def _on_upload(self, change: dict[str, Any]) -> None:
        files = change["new"]
        if files:
            self.load_bytes(bytes(files[0]["content"]), files[0]["name"])

    def load_bytes(self, content: bytes, name: str = "upload.png") -> dict[str, Any]:
        """Restore an upload's bytes (read through ``images.read_rgb``); returns ``state()``."""
        self._name, self._data = Path(name).name, content
        self._run()
        return self.state()

    def _run(self) -> None:
        self._input = self._restored = None
        self.download.value = ""
        self.image.value = b""
        if not self._data:
            return
        self.status.value = f"restoring {html.escape(self._name)}..."
        try:
            img = self._read()
            restored = self.cache.restored(self.catalog.ticket_path(self.ticket.value), img)
        except MirlError as exc:
            self.status.value = f'<span style="color:#b00">error: {html.escape(str(exc))}</span>'
            return
        self._input, self._restored = img, restored
        stem = Path(self._name).stem
        row = self.catalog.row(self.ticket.value)
        self.download.value = download_link(
            self._restored, f"{stem}_{row['strategy']}_round{row['round']}.png")
        self.status.value = (f"{html.escape(self._name)}: {img.shape[1]}x{img.shape[0]} restored "
                             f"with {html.escape(self.catalog.label(self.ticket.value, True))}")
        self._compose()

    def _read(self) -> np.ndarray:
        """The upload read by ``images.read_rgb`` (the CLI's validation), named as uploaded."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{Path(self._name).suffix.lower() or '.png'}"
            path.write_bytes(self._data)
            try:
                return images.read_rgb(path)
            except MirlError as exc:
                raise type(exc)(str(exc).replace(str(path), self._name)) from None

    def _compose(self) -> None:
        if self._restored is None or self._input is None:
            return
        self.image.value = png_bytes(preview(compose_wipe(self._restored, self._input,
                                                           self.wipe.value)))

    def state(self) -> dict[str, Any]:
        """The uploaded input, the restored output, the download link HTML and the status text."""
        return {"name": self._name, "input": self._input, "restored": self._restored,
                "download_html": self.download.value, "status_html": self.status.value,
                "png_sha256": hashlib.sha256(self.image.value).hexdigest()}
