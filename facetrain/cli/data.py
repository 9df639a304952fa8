"""``facetrain pack``, ``unpack`` and ``align``: identity folders to ``.rec`` and back; photos to aligned crops."""

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
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out, its .idx and property if they exist.")
    ] = False,
    progress: ProgressOption = None,
) -> None:
    """Pack an identity folder into an insightface train.rec, train.idx and property.

    JPEG files are stored byte for byte; other formats are re-encoded as JPEG (--quality) or PNG (--png).
    Images that cannot be decoded are skipped and listed. An existing .rec, .idx or property is
    refused unless --overwrite is given; it is then replaced only once the new files are whole.

    Example: facetrain pack --root facetrain/assets/orl --out data/orl/train.rec --png
    """
    from facetrain.data import pack_folder

    result = pack_folder(
        root, out, quality=quality, png=png, workers=os.cpu_count() or 1 if workers is None else workers,
        progress=sys.stderr.isatty() if progress is None else progress, overwrite=overwrite,
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

    Records that hold no image facetrain reads are skipped and named by key and byte offset; a .rec
    with no such image at all is refused, and nothing is written.

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


@error_boundary
def align_command(
    source: Annotated[Path, typer.Option("--input", "-i", help="Photos: flat, or one sub-folder per person.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The folder for the crops (same layout, .jpg); a rerun with the same options resumes in it.",
        ),
    ],
    size: Annotated[str, typer.Option("--size", help="Crop size: 112, 224, 128 or 96x112 (WxH).")] = "112",
    all_faces: Annotated[
        bool, typer.Option("--all-faces", help="Keep every face, as NAME_0.jpg, NAME_1.jpg, ...")
    ] = False,
    min_face: Annotated[
        int, typer.Option("--min-face", min=1, help="Smallest face to find, in pixels (12 or more).")
    ] = 20,
    fallback: Annotated[
        str, typer.Option("--fallback", help="none: skip photos without a face; center: write a centre crop.")
    ] = "none",
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers",
            min=0,
            max=256,
            help="Processes on CPU (default: one per core when each gets 1000 photos; else none).",
        ),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    progress: ProgressOption = None,
) -> None:
    """Detect the face in each photo (MTCNN) and warp it onto the ArcFace template: crops ready to train on.

    The output keeps the input's folders, so it trains as it is. A rerun skips photos already aligned.
    Photos with no face, unreadable files and photos where one face was chosen among several are
    listed in OUT/align_report.tsv. Exit code 3 when some photos gave no crop.

    Example: facetrain align --input photos --out data/aligned
    """
    from facetrain.config import check_device
    from facetrain.data import AlignOptions, check_options, parse_size, require_photos

    options = AlignOptions(parse_size(size), all_faces, min_face, fallback)
    check_options(min_face, fallback)
    check_device(device, "--device")
    require_photos(source)
    from facetrain.data import align_folder
    from facetrain.runtime import resolve_device

    result = align_folder(
        source, out, options, device=resolve_device(device, "--device"), workers=workers,
        progress=sys.stderr.isatty() if progress is None else progress,
    )  # fmt: skip
    counts = result.counts
    done = sum(counts.values())
    speed = f", {result.seconds / done * 1000:.0f} ms a photo" if done else ""
    aligned = counts["aligned"] + counts["multiple_faces"]
    typer.echo(
        f"aligned {aligned} of {done} photos into {result.out} ({result.crops} crops{speed}); "
        f"{result.already} already aligned by an earlier run"
    )
    notes = [
        (counts["multiple_faces"], "with several faces, one kept"),
        (counts["center_crop"], "without a face, centre-cropped"),
        (counts["no_face"], "without a face, skipped"),
        (counts["unreadable"], "unreadable, skipped"),
        (counts["unwritable"], "whose crop could not be written, skipped"),
        (result.unsupported, "file{s} of a type facetrain does not read (a .gif, a .heic, ...), skipped"),
    ]
    said = [f"{count} {what.format(s='' if count == 1 else 's')}" for count, what in notes if count]
    if said:
        typer.echo(f"{'; '.join(said)}: see {result.report}", err=True)
    if result.skipped:
        raise typer.Exit(3)
