"""``facetrain pack`` and ``facetrain unpack``: identity folders to insightface ``.rec`` files and back."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from facetrain.cli.boundary import error_boundary

ProgressOption = Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


@error_boundary
def pack_command(
    root: Annotated[Path, typer.Option("--root", help="Identity folder: one sub-folder of images per identity.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="The .rec to write; its .idx and a property file go beside it.")
    ],
    quality: Annotated[
        int, typer.Option("--quality", min=1, max=100, help="JPEG quality for images that are not JPEG files.")
    ] = 95,
    png: Annotated[
        bool, typer.Option("--png", help="Store images that are not JPEG files as lossless PNG instead.")
    ] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, max=256, help="Processes that read and encode (default: cores).")
    ] = None,
    progress: ProgressOption = None,
) -> None:
    """Pack an identity folder into an insightface train.rec, train.idx and property.

    JPEG files are stored byte for byte; other formats are re-encoded as JPEG (--quality) or PNG (--png).
    Images that cannot be decoded are skipped and listed.

    Example: facetrain pack --root facetrain/assets/orl --out data/orl/train.rec --png
    """
    from facetrain.data import pack_folder

    result = pack_folder(
        root, out, quality=quality, png=png, workers=os.cpu_count() or 1 if workers is None else workers,
        progress=sys.stderr.isatty() if progress is None else progress,
    )  # fmt: skip
    height, width = result.image_size
    reencoded = result.images - result.stored_as_is
    how = f"{result.stored_as_is} stored as they were, {reencoded} re-encoded as {'PNG' if png else f'JPEG q{quality}'}"
    typer.echo(
        f"packed {result.images} images of {result.identities} identities into {result.rec} "
        f"({result.bytes / 2**20:.1f} MiB, {how}; most are {width}x{height}) in {result.seconds:.1f} s"
    )
    _list_skipped(result.skipped, "images")


@error_boundary
def unpack_command(
    rec: Annotated[Path, typer.Argument(help="A .rec (insightface or im2rec layout) with its .idx beside it.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The new folder: one sub-folder per identity.")],
    progress: ProgressOption = None,
) -> None:
    """Write the images of a .rec as identity folders (OUT/<label>/<key>.jpg), byte for byte.

    Example: facetrain unpack data/orl/train.rec --out data/orl_folders
    """
    from facetrain.data import unpack_records

    result = unpack_records(rec, out, progress=sys.stderr.isatty() if progress is None else progress)
    typer.echo(f"unpacked {result.images} images of {result.identities} identities into {result.out}")
    _list_skipped(result.skipped, "records")


def _list_skipped(skipped: list[tuple[str, str]], what: str) -> None:
    if not skipped:
        return
    typer.echo(f"skipped {len(skipped)} {what}:", err=True)
    for _, reason in skipped[:5]:
        typer.echo(f"  {reason}", err=True)
    if len(skipped) > 5:
        typer.echo(f"  and {len(skipped) - 5} more", err=True)
