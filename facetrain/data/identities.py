"""The identities of a training source: folders scanned (or a ``.rec``'s read), small ones dropped,
verification identities held out. Nothing here decodes an image or needs torch.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import TYPE_CHECKING

from facetrain.config import DataConfig
from facetrain.data.sources import IMAGE_EXTENSIONS, require_source
from facetrain.errors import DataError

if TYPE_CHECKING:
    from facetrain.data.records import RecordImages

log = logging.getLogger("facetrain")

# (identity name, its images): image paths for a folder, record positions for a .rec
Identity = tuple[str, "list[Path] | RecordImages"]


def scan_identities(root: str | Path, key: str = "data.root") -> list[Identity]:
    """Lists ``root/<identity>/<image>`` as (identity, sorted image paths), sorted by name; or the
    identities of a ``.rec`` (insightface or im2rec layout), in label order.

    Links that lead nowhere or back into a folder above them are skipped with one warning.
    """
    source = require_source(root, key)
    if source.is_file():  # require_source let through a folder, or a .rec with its .idx
        from facetrain.data.layouts import scan_records  # reads records in every process: torch.distributed

        return scan_records(source, key)  # type: ignore[return-value]
    folder = source
    identities, bad_links = [], []
    for sub in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if _bad_link(sub, folder):
            bad_links.append(sub)
            continue
        if not sub.is_dir():
            continue
        images = []
        for path in sorted(sub.iterdir()):
            if path.name.startswith(".") or path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if path.is_file():  # one stat for an ordinary image; links are looked at only when it fails
                images.append(path)
            elif path.is_symlink() and not path.exists():
                bad_links.append(path)
        if images:
            identities.append((sub.name, images))
    if bad_links:
        shown = ", ".join(str(link.relative_to(folder)) for link in bad_links[:3])
        more = f" and {len(bad_links) - 3} more" if len(bad_links) > 3 else ""
        log.warning("%s: skipped %d links that lead nowhere or in a loop: %s%s", key, len(bad_links), shown, more)
    if not identities:
        shipped = folder / "train.rec"
        if shipped.is_file():
            raise DataError(f"{key}: '{folder}' holds a RecordIO dataset, not identity folders: set {key}: {shipped}")
        raise DataError(
            f"{key}: no identity folders with images in '{folder}': expected {folder}/<identity>/<image> "
            f"with extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )
    return identities


def _bad_link(path: Path, root: Path) -> bool:
    """A link that is broken, loops on itself, or leads back to ``root`` or a folder above it."""
    if not path.is_symlink():
        return False
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing target, or a loop of links
        return True
    real_root = root.resolve()
    return target == real_root or target in real_root.parents


def drop_small(identities: list[Identity], minimum: int, where: str) -> list[Identity]:
    kept = [item for item in identities if len(item[1]) >= minimum]
    dropped = len(identities) - len(kept)
    if dropped:
        log.info(
            "%s: dropped %d of %d identities with fewer than %d images (data.min_images_per_identity)",
            where,
            dropped,
            len(identities),
            minimum,
        )
    return kept


def num_classes_problem(wanted: int | None, found: int) -> str | None:
    """The message when ``head.num_classes`` is set and disagrees with the training identities found."""
    if wanted is None or wanted == found:
        return None
    return (
        f"head.num_classes is {wanted} but data.root has {found} training identities: "
        f"set head.num_classes: {found} or remove it"
    )


def split_identities(cfg: DataConfig, scanned: list[Identity] | None = None) -> tuple[list[Identity], list[Identity]]:
    """(training identities, held-out identities) after filtering, by split or from ``val_root``.

    ``scanned``: ``scan_identities(cfg.root)`` when the caller has it already.
    """
    scanned = scan_identities(cfg.root) if scanned is None else scanned
    identities = drop_small(scanned, cfg.min_images_per_identity, "data.root")
    held_out: list[Identity] = []
    if cfg.val_root is not None:
        held_out = drop_small(
            scan_identities(cfg.val_root, "data.val_root"), cfg.min_images_per_identity, "data.val_root"
        )
    elif cfg.val_identities:
        if cfg.val_identities > len(identities) - 2 and cfg.val_identities <= len(scanned) - 2:
            raise DataError(
                f"data.root: only {len(identities)} of the {len(scanned)} identities in '{cfg.root}' have "
                f"data.min_images_per_identity={cfg.min_images_per_identity} images or more, too few to hold out "
                f"{cfg.val_identities} and train on 2: add images, or lower data.min_images_per_identity"
            )
        if cfg.val_identities > len(identities) - 2:
            raise DataError(
                f"data.val_identities={cfg.val_identities} leaves fewer than 2 of the {len(identities)} "
                f"identities in '{cfg.root}' for training: lower data.val_identities"
            )
        chosen = set(random.Random(cfg.split_seed).sample(range(len(identities)), cfg.val_identities))
        held_out = [item for i, item in enumerate(identities) if i in chosen]
        identities = [item for i, item in enumerate(identities) if i not in chosen]
    _check_held_out(held_out, identities, "data.val_root" if cfg.val_root is not None else "data.val_identities")
    if len(identities) < 2:
        raise DataError(
            f"data.root: '{cfg.root}' has {len(identities)} usable identities; training needs at least 2 "
            "(check data.min_images_per_identity)"
        )
    return identities, held_out


def _check_held_out(held_out: list[Identity], training: list[Identity], key: str) -> None:
    if not held_out:
        return
    if len(held_out) < 2:
        raise DataError(
            f"{key}: {len(held_out)} held-out identity left after filtering; verification needs at least 2 "
            "(add identities or lower data.min_images_per_identity)"
        )
    if all(len(paths) < 2 for _, paths in held_out):
        raise DataError(
            f"{key}: no held-out identity has 2 images, so there are no same-person pairs to verify: "
            "use identities with at least 2 images"
        )
    shared = sorted({name for name, _ in held_out} & {name for name, _ in training})
    if shared and isinstance(held_out[0][1], list) and isinstance(training[0][1], list):  # .rec names are numbers
        log.warning(
            "data.val_root: %d held-out identity names also appear in data.root (e.g. %s); "
            "held-out people should be different people",
            len(shared), shared[0],
        )  # fmt: skip
