"""The before/after viewer, its run catalog, the upload panel and the notebook's HTML export."""
from __future__ import annotations

import base64
import datetime
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from mirl_lib.core import protocol
from mirl_lib.core.errors import ConfigError, DataError
from mirl_lib.evaluation import restore
from mirl_lib.files import images
from mirl_lib.files.paths import CHECKOUT
from mirl_lib.net import checkpoints
from mirl_lib.viewer.catalog import RunCatalog
from mirl_lib.viewer.compose import png_bytes
from mirl_lib.viewer.widgets import UploadPanel, Viewer

REPO = CHECKOUT


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count checkpoints.load_model and restore.restore_image calls made by the viewer."""
    counts = {"load_model": 0, "restore_image": 0}
    load, run = checkpoints.load_model, restore.restore_image

    def counted_load(*args, **kwargs):
        counts["load_model"] += 1
        return load(*args, **kwargs)

    def counted_restore(*args, **kwargs):
        counts["restore_image"] += 1
        return run(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_model", counted_load)
    monkeypatch.setattr(restore, "restore_image", counted_restore)
    return counts


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def expected_restored(run: Path, ticket: str, img: np.ndarray) -> np.ndarray:
    model, _ = checkpoints.load_model(run / ticket)
    return np.clip(restore.restore_image(model, img), 0, 1)


def test_catalog_reads_orders_and_labels(viewer_run: Path) -> None:
    cat = RunCatalog(viewer_run)
    assert cat.seeds() == [0, 1]
    assert cat.strategies(0) == ["dense", "rewind", "finetune"]
    rows = cat.points(0, "rewind")
    assert [int(cat.row(i)["round"]) for i in rows] == [1, 2]
    assert cat.ticket_path(rows[0]).is_file()
    percent = f"{100 * cat.row(rows[0])['remaining_prunable']:.1f}% remaining"
    assert cat.label(rows[0]).startswith(f"round 1 - {percent}")


def test_catalog_offers_only_points_whose_ticket_is_on_disk(viewer_run: Path) -> None:
    (viewer_run / "seed_0" / "rewind" / "round_01" / "ticket.mirl").unlink()
    cat = RunCatalog(viewer_run)
    assert [int(cat.row(i)["round"]) for i in cat.points(0, "rewind")] == [2]
    for ticket in viewer_run.glob("seed_*/*/round_*/ticket.mirl"):
        ticket.unlink()
    with pytest.raises(DataError, match="none of the catalog's ticket files exist"):
        RunCatalog(viewer_run)


def test_a_pending_confirmations_seeds_are_not_offered(viewer_run: Path) -> None:
    """Seeds of a declared confirmation stay out of the viewer until all of them are scored."""
    config = viewer_run / "config.yaml"
    declared = yaml.safe_load(config.read_text())

    def declare(seeds: list[int]) -> None:
        declared["analysis"]["confirm_seeds"] = seeds
        config.write_text(yaml.safe_dump(declared, sort_keys=False))

    declare([1, 2])  # seed 1 scored, seed 2 not yet
    assert RunCatalog(viewer_run).seeds() == [0]
    declare([0, 1])  # all scored: the confirmation's one look has come
    assert RunCatalog(viewer_run).seeds() == [0, 1]
    declare([0, 1, 2])
    with pytest.raises(DataError, match="pending confirmation's seeds"):
        RunCatalog(viewer_run)


def test_catalog_errors_name_file_and_column(tmp_path: Path, viewer_run: Path) -> None:
    with pytest.raises(DataError, match="catalog.csv: catalog not found"):
        RunCatalog(tmp_path / "nowhere")
    frame = pd.read_csv(viewer_run / "catalog.csv").drop(columns=["remaining_prunable"])
    frame.to_csv(viewer_run / "catalog.csv", index=False)
    with pytest.raises(DataError,
                       match=r"catalog.csv: missing column\(s\) \['remaining_prunable'\]"):
        RunCatalog(viewer_run)
    frame.assign(remaining_prunable="lots").to_csv(viewer_run / "catalog.csv", index=False)
    with pytest.raises(DataError, match="wrong type"):
        RunCatalog(viewer_run)


def test_wipe_before_and_metrics(viewer_run: Path, calls: dict[str, int]) -> None:
    v = Viewer(viewer_run)
    assert calls == {"load_model": 1, "restore_image": 1}  # only what is shown
    s = v.set(wipe=0)
    item = v._item()
    assert np.array_equal(s["composed"], item.degraded)
    assert np.array_equal(decode_png(v.main_image.value), images.to_uint8(item.degraded))
    s = v.set(wipe=100)
    v.set(before="clean", wipe=70)
    s = v.set(before="degraded", wipe=100)
    assert calls == {"load_model": 1, "restore_image": 1}  # wipe/compare never restore again
    restored = expected_restored(viewer_run, str(v.catalog.row(v.point.value)["ticket"]),
                                 item.degraded)
    np.testing.assert_allclose(s["restored"], restored, atol=1e-6)
    assert np.array_equal(s["composed"], s["restored"])
    assert np.array_equal(decode_png(v.main_image.value), images.to_uint8(s["restored"]))
    s = v.set(wipe=0, before="clean")
    assert np.array_equal(s["composed"], item.clean)
    s = v.set(wipe=25, before="degraded")
    w = item.clean.shape[1]
    split = round(w * 0.25)
    assert np.array_equal(s["composed"][:, :split], s["restored"][:, :split])
    assert np.array_equal(s["composed"][:, split + 1:], item.degraded[:, split + 1:])
    assert np.all(s["composed"][:, split] == 1.0)
    assert s["psnr_restored"] == pytest.approx(protocol.psnr(restored, item.clean), abs=1e-4)
    assert s["psnr_degraded"] == protocol.psnr(item.degraded, item.clean)
    assert s["ssim_degraded"] == protocol.ssim(item.degraded, item.clean)
    assert f"PSNR {s['psnr_degraded']:.2f} dB" in s["stats_html"]
    assert f"PSNR {s['psnr_restored']:.2f} dB" in s["stats_html"]
    assert f"SSIM {s['ssim_restored']:.4f}" in s["stats_html"]


def test_zoom_crop_is_source_region_upscaled(viewer_run: Path) -> None:
    v = Viewer(viewer_run)
    h, w = v._item().clean.shape[:2]
    s = v.set(x=5, y=h - 3, zoom=4)
    top, left, side = s["box"]
    assert (top, left, side) == (h - side, 0, min(h, w) // 4)  # clamped inside the image
    region = v._item().degraded[top:top + side, left:left + side]
    up = np.repeat(np.repeat(region, 4, axis=0), 4, axis=1)
    assert np.array_equal(s["zoomed"][:, :side * 4], up)
    restored = s["restored"][top:top + side, left:left + side]
    assert np.array_equal(s["zoomed"][:, -side * 4:], np.repeat(np.repeat(restored, 4, 0), 4, 1))
    assert np.array_equal(decode_png(v.zoom_image.value), images.to_uint8(s["zoomed"]))
    moved = v.set(x=w // 2, y=h // 2, zoom=2)
    assert moved["box"] != s["box"] and moved["zoom_png_sha256"] != s["zoom_png_sha256"]
    assert moved["zoomed"].shape[0] == (min(h, w) // 2) * 2
    clean = v.set(before="clean")
    top, left, side = clean["box"]
    assert np.array_equal(clean["zoomed"][:, :side * 2],
                          np.repeat(np.repeat(v._item().clean[top:top + side, left:left + side],
                                              2, 0), 2, 1))


def test_every_control_changes_what_is_shown(viewer_run: Path) -> None:
    v = Viewer(viewer_run)
    first = v.state()
    # opens on the sparsest MIR-L ticket
    assert (first["task"], first["seed"], first["strategy"], first["round"]) == (
        "denoise_25", 0, "rewind", 2)
    s = v.set(image=v.items["denoise_25"][1].name)
    assert s["image"] != first["image"] and s["png_sha256"] != first["png_sha256"]
    s = v.set(task="derain")
    assert s["task"] == "derain" and s["image"] == v.items["derain"][0].name
    assert not np.array_equal(s["restored"], first["restored"])
    dense = v.set(strategy="dense")
    assert dense["round"] == 0 and not np.array_equal(dense["restored"], s["restored"])
    s = v.set(strategy="rewind")
    assert (s["strategy"], s["round"]) == ("rewind", 2)  # the sparsest point by default
    assert [label for label, _ in v.point.options][0].startswith("round 1 - 50")
    r1 = v.set(round=1)
    assert r1["round"] == 1 and not np.array_equal(r1["restored"], s["restored"])
    assert r1["ticket"].endswith("seed_0/rewind/round_01/ticket.mirl")
    s = v.set(seed=1)
    assert (s["seed"], s["strategy"]) == (1, "dense") and list(v.strategy.options) == ["dense"]
    s = v.set(seed=0, strategy="finetune")
    assert s["strategy"] == "finetune" and s["round"] == 2
    with pytest.raises(ConfigError, match="unknown control"):
        v.set(brightness=3)
    with pytest.raises(ConfigError, match="round 7 not in strategy 'finetune'"):
        v.set(round=7)
    with pytest.raises(ConfigError, match="strategy='nope'"):
        v.set(strategy="nope")


def test_cache_memory_and_disk(viewer_run: Path, tmp_path: Path, calls: dict[str, int]) -> None:
    cache = tmp_path / "cache"
    v = Viewer(viewer_run, cache_dir=cache)
    names = [it.name for it in v.items["denoise_25"]]
    first = v.state()
    v.set(image=names[1])
    again = v.set(image=names[0])
    assert calls == {"load_model": 1, "restore_image": 2}  # model kept; image 0 from memory
    assert again["png_sha256"] == first["png_sha256"]
    assert len(list(cache.glob("*.npy"))) == 2
    v2 = Viewer(viewer_run, cache_dir=cache)
    v2.set(image=names[1])
    assert calls == {"load_model": 1, "restore_image": 2}  # both read back from disk
    assert np.array_equal(v2.set(image=names[0])["restored"], first["restored"])


def test_missing_ticket_is_shown_not_raised(viewer_run: Path) -> None:
    v = Viewer(viewer_run)
    (viewer_run / "seed_0" / "finetune" / "round_02" / "ticket.mirl").unlink()
    s = v.set(strategy="finetune")
    assert s["restored"] is None and "ticket.mirl: ticket file not found" in s["error"]
    assert "error" in v.status.value


def test_upload_restores_and_links_download(viewer_run: Path, tmp_path: Path) -> None:
    panel = UploadPanel(viewer_run)
    photo = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    s = panel.load_bytes(png_bytes(photo), "my photo.png")
    assert s["input"].shape == (37, 53, 3) and np.array_equal(images.to_uint8(s["input"]), photo)
    ticket = panel.catalog.row(panel.ticket.value)["ticket"]
    np.testing.assert_allclose(s["restored"], expected_restored(viewer_run, ticket, s["input"]),
                               atol=1e-6)
    link = re.search(r'download="([^"]+)" href="data:image/png;base64,([^"]+)"', s["download_html"])
    assert link and link.group(1) == "my photo_dense_round0.png"
    assert np.array_equal(decode_png(base64.b64decode(link.group(2))),
                          images.to_uint8(s["restored"]))
    assert decode_png(panel.image.value).shape == (37, 53, 3)
    panel.ticket.value = panel.catalog.points(0, "rewind")[-1]
    assert not np.array_equal(panel.state()["restored"], s["restored"])
    wiped = panel.state()["png_sha256"]
    panel.wipe.value = 0
    assert np.array_equal(decode_png(panel.image.value), photo) and \
        panel.state()["png_sha256"] != wiped
    # the FileUpload widget's value (ipywidgets 8 format) goes through the same path
    panel.upload.value = ({"name": "up.png", "type": "image/png", "size": 10,
                           "content": memoryview(png_bytes(photo[:20, :24])),
                           "last_modified": datetime.datetime.now(datetime.timezone.utc)},)
    assert panel.state()["restored"].shape == (20, 24, 3)


def test_upload_errors_are_shown_in_the_panel(viewer_run: Path) -> None:
    panel = UploadPanel(viewer_run)
    s = panel.load_bytes(b"not an image at all", "broken.png")
    assert s["restored"] is None and s["download_html"] == ""
    assert "error" in s["status_html"] and "broken.png" in s["status_html"]
    gray = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(gray, format="PNG")
    s = panel.load_bytes(gray.getvalue(), "gray.png")
    assert s["restored"] is None and "gray.png" in s["status_html"]


@pytest.mark.slow
def test_notebook_executes_and_exports_widget_state(viewer_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    papermill = pytest.importorskip("papermill")
    from nbconvert import HTMLExporter

    monkeypatch.setenv("PYTHONPATH", str(REPO))
    nb_dir = tmp_path / "notebooks"
    nb_dir.mkdir()
    shutil.copy(REPO / "notebooks" / "viewer.ipynb", nb_dir / "viewer.ipynb")
    out = nb_dir / "viewer.out.ipynb"
    nb = papermill.execute_notebook(
        str(nb_dir / "viewer.ipynb"), str(out), cwd=str(nb_dir), progress_bar=False,
        kernel_name="python3", parameters={"cache_dir": str(tmp_path / "cache")})
    assert list((tmp_path / "cache").glob("*.npy")), "default run_dir ../results/default not used"
    body, _ = HTMLExporter().from_notebook_node(nb)
    scripts = re.findall(
        r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', body, re.S)
    assert scripts, "exported HTML has no widget state"
    state = json.loads(scripts[0])["state"]
    pngs = [base64.b64decode(buf["data"]) for m in state.values()
            if m["model_name"] == "ImageModel" for buf in m.get("buffers", [])]
    assert any(p.startswith(b"\x89PNG") and decode_png(p).shape[0] == 64 for p in pngs)
    assert 'application/vnd.jupyter.widget-view+json' in body


def test_a_structured_ticket_restores_in_the_viewer_like_any_ticket(tmp_path: Path) -> None:
    """A narrower PromptIR (``channel_rewind``'s ticket) loads in the viewer's cache at its own
    widths and restores what the network itself restores."""
    import torch

    from mirl_lib.files import tickets
    from mirl_lib.net import structured
    from mirl_lib.net.promptir import build_model
    from mirl_lib.pruning import channels, masks
    from mirl_lib.viewer.cache import RestoreCache

    net = build_model("cpu", seed=5)
    table, state = channels.groups(net), net.state_dict()
    removed = channels.cut(state, table, channels.empty_selection(table),
                           sum(v.numel() for v in state.values()) // 3)
    narrow = structured.build(net.config, channels.prune_state(state, table, removed)).eval()
    ticket = tmp_path / "ticket.mirl"
    tickets.export_ticket(narrow.state_dict(), masks.full_mask(narrow), ticket,
                          {"model_config": {**narrow.config.__dict__}, structured.STRUCTURED: True})
    img = np.random.default_rng(0).random((40, 48, 3)).astype(np.float32)
    shown = RestoreCache(device="cpu", tile=0).restored(ticket, img)
    direct = np.clip(restore.restore_image(narrow, img, device=torch.device("cpu"), tile=0), 0, 1)
    assert shown.shape == img.shape and np.array_equal(shown, direct)
    assert not np.array_equal(shown, np.clip(img, 0, 1))
