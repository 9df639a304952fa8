"""``facetrain export``, ``facetrain import``, ``facetrain verify`` and ``facetrain embed``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from facetrain.cli.boundary import error_boundary
from facetrain.cli.options import ChannelsOption, InputSizeOption, LayoutOption, MeanOption, StdOption
from facetrain.errors import ConfigError, DataError


@error_boundary
def export_command(
    checkpoint: Annotated[
        Path, typer.Option("--checkpoint", help="A last.pt or best.pt from facetrain train, or a facetrain import.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The model file to write (an existing one is replaced).")],
    out_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="torchscript, onnx (needs facetrain[onnx]), or insightface (a backbone.pth state dict for "
            "insightface's get_model; face backbones only).",
        ),
    ] = "torchscript",
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Verification threshold to store in the metadata.")
    ] = None,
    threshold_from: Annotated[
        Path | None, typer.Option("--threshold-from", help="Take the threshold from a `facetrain eval --json` file.")
    ] = None,
    parity_images: Annotated[
        Path | None, typer.Option("--parity-images", help="Folder of real images for the parity check.")
    ] = None,
) -> None:
    """Export the embedder (never the margin head) with its preprocessing metadata, then check parity.

    --format insightface writes a face backbone's weights as the state dict insightface's get_model loads.

    Example: facetrain export --checkpoint runs/demo/best.pt --out runs/demo/model.pt
    """
    from facetrain.deploy import check_export, threshold_from_eval_json

    if threshold is not None and threshold_from is not None:
        raise ConfigError("give --threshold or --threshold-from, not both")
    if out_format == "insightface":
        given = [name for name, value in (("--threshold-from", threshold_from), ("--parity-images", parity_images))
                 if value is not None]  # fmt: skip
        if given:
            them = " and ".join(given)
            raise ConfigError(
                f"{them} appl{'y' if len(given) > 1 else 'ies'} to torchscript and onnx exports; --format insightface "
                f"writes weights only: drop {'them' if len(given) > 1 else 'it'}"
            )
        _export_insightface(checkpoint, out, threshold)
        return
    if threshold_from is not None:
        threshold = threshold_from_eval_json(threshold_from, checkpoint)
    check_export(checkpoint, out, out_format, threshold)
    samples = None
    if parity_images is not None:
        from facetrain.data import find_images
        from facetrain.files import require_folder

        samples = find_images(
            require_folder(parity_images, DataError, "--parity-images", "give a folder of face images")
        )[0][:8]
        if not samples:
            raise DataError(f"--parity-images: no images in '{parity_images}': give a folder of face images")
    from facetrain.deploy import export_model

    result = export_model(checkpoint, out, out_format, threshold=threshold, sample_images=samples)
    meta = result.metadata
    typer.echo(
        f"exported: {result.path} ({result.format}; embedder only: {meta.backbone}, "
        f"{meta.image_size}x{meta.image_size} input, {meta.embedding_dim}-d L2-normalised output)"
    )
    if result.parity_checked:
        typer.echo(f"parity: max abs difference {result.max_abs_diff:.2e} vs the checkpoint ({result.note})")
    else:
        typer.echo(f"parity: {result.note}")


def _export_insightface(checkpoint: Path, out: Path, threshold: float | None) -> None:
    from facetrain.deploy import check_export

    check_export(checkpoint, out, "insightface", threshold)
    from facetrain.deploy import export_insightface

    result = export_insightface(checkpoint, out)
    typer.echo(
        f"exported: {result.path} (insightface state dict: {result.backbone}, {result.embedding_dim}-d embeddings; "
        f"read back and re-imported: max abs difference {result.max_abs_diff:.1e})"
    )
    typer.echo(
        f'load it with insightface\'s arcface_torch: get_model("{result.insightface_name}", '
        f'num_features={result.embedding_dim}).load_state_dict(torch.load("{result.path}", weights_only=True))'
    )


@error_boundary
def import_command(
    insightface: Annotated[
        Path, typer.Option("--insightface", help="insightface's backbone.pth (an arcface_torch state dict).")
    ],
    arch: Annotated[
        str,
        typer.Option(
            "--arch", help="Its architecture: iresnet18/34/50/100/200 or mobilefacenet, or insightface's r18 ... mbf."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The facetrain checkpoint to write.")],
    embedding_dim: Annotated[
        int | None,
        typer.Option("--embedding-dim", min=2, max=8192, help="Expected embedding size (default: read from the file)."),
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace --out if it exists.")] = False,
) -> None:
    """Import insightface's released weights as a facetrain checkpoint (the embedder only; strict loading).

    The checkpoint works with eval, embed, export and model.init_from; it holds no margin head, so it
    cannot be resumed. A file of another architecture or embedding size is named for what it holds.

    Example: facetrain import --insightface backbone.pth --arch r50 --out r50.pt
    """
    from facetrain.deploy import check_import

    check_import(insightface, arch, out, overwrite)  # before torch
    from facetrain.deploy import import_insightface

    result = import_insightface(insightface, arch, out, embedding_dim, overwrite)
    typer.echo(
        f"imported: {result.path} ({result.backbone}, insightface's {result.insightface_name}; "
        f"{result.embedding_dim}-d embeddings; {result.parameters:,} parameters; embedder only) from {insightface}"
    )


AlignFlag = Annotated[bool, typer.Option("--align", help="Detect and align each face first (raw photos, not crops).")]
AlignSize = Annotated[
    str, typer.Option("--align-size", help="With --align: the crop the model was trained on (as align --size).")
]


@error_boundary
def verify_command(
    model: Annotated[
        Path,
        typer.Argument(help="A TorchScript or ONNX embedder: facetrain's export, or a foreign one (see --input-size)."),
    ],
    image1: Annotated[Path, typer.Argument(help="First face image.")],
    image2: Annotated[Path, typer.Argument(help="Second face image.")],
    threshold: Annotated[
        float | None, typer.Option("--threshold", help="Decision threshold (default: the one stored in the model).")
    ] = None,
    align: AlignFlag = False,
    align_size: AlignSize = "112",
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    channels: ChannelsOption = None,
    layout: LayoutOption = None,
) -> None:
    """Cosine score of two face images with a model file, and same/different at a threshold.

    The model is facetrain's export (it carries its preprocessing and maybe a threshold), or a foreign
    TorchScript or ONNX embedder fed as --input-size, --mean, --std, --channels and --layout say.
    With --align, each image is a raw photo: its face is detected and aligned onto the ArcFace crop
    (112x112, or --align-size), then gets the model's preprocessing.

    Example: facetrain verify runs/demo/model.pt facetrain/assets/orl/s1/1.pgm facetrain/assets/orl/s1/2.pgm
    """
    from facetrain.deploy import InputOptions, check_verify

    crop = _align(align, align_size)
    inputs = InputOptions(input_size, mean, std, channels, layout)
    check_verify(model, image1, image2, threshold, inputs)
    from facetrain.deploy import verify_pair

    result = verify_pair(model, image1, image2, threshold, align=crop, inputs=inputs)
    typer.echo(f"score: {result.score:.4f}")
    if result.same is None:
        typer.echo("no threshold: pass --threshold, or export with --threshold-from EVAL_JSON")
    else:
        verdict = "same person" if result.same else "different people"
        source = {"argument": "from --threshold", "model metadata": "stored in the model"}[result.threshold_source]
        typer.echo(f"{verdict} (threshold {result.threshold:.4f}, {source})")


@error_boundary
def embed_command(
    images: Annotated[Path, typer.Option("--images", help="Folder of images: flat, or one sub-folder per identity.")],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Output file (.npz, or .csv with --format csv); an existing one is replaced."),
    ],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", help="A facetrain training checkpoint.")] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", help="A TorchScript or ONNX embedder: facetrain's export, or a foreign one."),
    ] = None,
    out_format: Annotated[str, typer.Option("--format", help="npz or csv.")] = "npz",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=65_536, help="Images per batch.")] = 64,
    workers: Annotated[int, typer.Option("--workers", min=0, max=256, help="DataLoader worker processes.")] = 2,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = None,
    align: AlignFlag = False,
    align_size: AlignSize = "112",
    input_size: InputSizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    channels: ChannelsOption = None,
    layout: LayoutOption = None,
) -> None:
    """Embed every image of a folder: L2-normalised embeddings, relative paths and identity labels.

    --model takes facetrain's export, or a foreign TorchScript or ONNX embedder fed as --input-size,
    --mean, --std, --channels and --layout say. Exit code 3 when some files could not be read (they
    are listed and skipped). With --align, each image is a raw photo whose face is detected and
    aligned first; photos without one are skipped.

    Example: facetrain embed --checkpoint runs/demo/best.pt --images facetrain/assets/orl --out orl.npz
    """
    from facetrain.config import check_device
    from facetrain.deploy import InputOptions, check_embed

    crop = _align(align, align_size)
    check_device(device, "--device")
    inputs = InputOptions(input_size, mean, std, channels, layout)
    checked = check_embed(images, out, checkpoint, model, out_format, inputs)  # before the model, and torch
    from facetrain.deploy import embed_folder
    from facetrain.runtime import resolve_device

    result = embed_folder(
        images, out, checkpoint=checkpoint, model=model, fmt=out_format, batch_size=batch_size,
        device=resolve_device(device, "--device"), num_workers=workers,
        progress=sys.stderr.isatty() if progress is None else progress, align=crop, checked=checked, inputs=inputs,
    )  # fmt: skip
    for path, reason in result.skipped:
        typer.echo(f"skipped: {path}: {reason}", err=True)
    typer.echo(f"embeddings: {result.out} ({result.count} images, {result.images_per_sec:.1f} images/s)")
    if result.skipped:
        what = "files skipped (unreadable, or no face found)" if align else "unreadable files skipped"
        typer.echo(f"{len(result.skipped)} {what}", err=True)
        raise typer.Exit(3)


def _align(align: bool, size: str) -> tuple[int, int] | None:
    """The crop size for --align (checked even without it, so a typo is not silently ignored)."""
    from facetrain.data import parse_size

    parsed = parse_size(size, "--align-size")
    return parsed if align else None
