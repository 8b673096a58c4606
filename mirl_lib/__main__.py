"""Command line: ``python -m mirl_lib restore IN -o OUT --checkpoint CKPT``.

IN is an image or a folder of images (then OUT is a folder; each output keeps its input's name,
with ``.png`` for formats ``write_rgb`` cannot write). Existing outputs are kept unless
``--overwrite``; every output is written atomically. Errors print one ``error:`` line, exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm.auto import tqdm

from mirl_lib.errors import DataError, MirlError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mirl_lib", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    restore = commands.add_parser("restore", help="restore an image or a folder of images")
    restore.add_argument("input", type=Path, help="image file or folder of images")
    restore.add_argument("-o", "--output", type=Path, required=True,
                         help="output image (or folder when INPUT is a folder)")
    restore.add_argument("--checkpoint", type=Path, required=True,
                         help="PromptIR/MIR-L checkpoint, mirl weights file or *.mirl ticket")
    restore.add_argument("--preset", default=None,
                         help="architecture of a plain state_dict or Lightning checkpoint "
                              "(default: paper)")
    restore.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    restore.add_argument("--tile", type=int, default=256, help="tile side, 0 = whole image")
    restore.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    restore.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return parser


def _jobs(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs for a file or a folder."""
    from mirl_lib.images import IMAGE_SUFFIXES, WRITE_FORMATS

    def out_name(path: Path) -> str:
        return path.name if path.suffix.lower() in WRITE_FORMATS else f"{path.stem}.png"

    if src.is_file():
        return [(src, dst / out_name(src) if dst.is_dir() else dst)]
    if not src.is_dir():
        raise DataError(f"{src}: input image or folder not found")
    if dst.exists() and not dst.is_dir():
        raise DataError(f"{dst}: output must be a folder when the input {src} is a folder")
    files = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    jobs = [(p, dst / out_name(p)) for p in files]
    seen: dict[Path, Path] = {}
    for inp, out in jobs:
        if out in seen:
            raise DataError(f"{out}: both {seen[out].name} and {inp.name} would be written here")
        seen[out] = inp
    return jobs


def restore_command(args: argparse.Namespace) -> None:
    """Restore every input of ``args`` with the checkpoint's model."""
    from mirl_lib.checkpoints import load_model
    from mirl_lib.config import model_config
    from mirl_lib.device import resolve_device
    from mirl_lib.images import read_rgb, write_rgb
    from mirl_lib.restore import restore_image

    jobs = _jobs(args.input, args.output)
    existing = [out for _, out in jobs if out.exists()]
    if existing and not args.overwrite:
        raise DataError(f"{existing[0]}: output exists ({len(existing)} in all); pass --overwrite "
                        f"to replace")
    device = resolve_device(args.device)
    expected = model_config(args.preset) if args.preset else None
    model, _ = load_model(args.checkpoint, expected=expected, device=device)
    for inp, out in tqdm(jobs, desc="restore", unit="image", disable=len(jobs) == 1):
        restored = restore_image(model, read_rgb(inp), device=device, tile=args.tile,
                                 overlap=args.overlap)
        write_rgb(out, restored)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (2 on any ``MirlError``)."""
    args = _parser().parse_args(argv)
    try:
        restore_command(args)
    except MirlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
