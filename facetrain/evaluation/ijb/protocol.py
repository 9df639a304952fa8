"""One IJB run's protocol: its meta files read and checked, before any model is loaded (no torch)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.errors import ConfigError, DataError
from facetrain.evaluation.ijb.meta import (
    ROOT_FIX,
    Enrolment,
    Images,
    Pairs,
    check_target,
    gallery_files,
    meta_file,
    read_enrolment,
    read_images,
    read_pairs,
)
from facetrain.files import require_folder

PROTOCOLS = ("11", "1n")


@dataclass(frozen=True)
class Protocol:
    """The meta files of one run, read and checked."""

    root: Path
    target: str
    protocol: str
    images: Images
    pairs: Pairs | None = None
    galleries: tuple[Enrolment, Enrolment] | None = None
    probes: Enrolment | None = None


def read_protocol(root: str | Path, target: str, protocol: str, need_images: bool) -> Protocol:
    """Every meta file the run needs, checked; ``need_images``: the loose crops will be embedded."""
    target = check_target(target)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"--protocol: unknown protocol '{protocol}': choose 11 (1:1) or 1n (1:N)")
    folder = require_folder(root, ConfigError, "--ijb", ROOT_FIX)
    if need_images:
        require_folder(folder / "loose_crop", ConfigError, "--ijb", ROOT_FIX + " (or give --features FILE.npy)")
    images = read_images(folder, target)
    if need_images:
        require_crops(folder / "loose_crop", images.names)
    known = np.unique(images.templates)
    if protocol == "11":
        pairs = read_pairs(folder, target)
        genuine = int(pairs.label.sum())
        if genuine == 0 or genuine == len(pairs.label):
            raise DataError(
                f"{pairs.source}: {genuine} genuine and {len(pairs.label) - genuine} impostor pairs: 1:1 "
                "verification needs both kinds (is the file complete?)"
            )
        for ids in (pairs.first, pairs.second):
            require_templates(ids, known, pairs.source)
        return Protocol(folder, target, protocol, images, pairs=pairs)
    first, second = gallery_files(folder, target)
    probes = read_enrolment(meta_file(folder, target, "1N_probe_mixed.csv"))
    galleries = (read_enrolment(first), read_enrolment(second))
    for enrolment in (*galleries, probes):
        require_templates(enrolment.templates, known, enrolment.source)
    return Protocol(folder, target, protocol, images, galleries=galleries, probes=probes)


def require_templates(ids: np.ndarray, known: np.ndarray, source: str) -> None:
    """One line naming the first template of ``source`` that has no image in the face_tid_mid file."""
    missing = ~np.isin(ids, known)
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        where = f"template {int(ids[row])}" if source.endswith(".csv") else f"line {row + 1}: template {int(ids[row])}"
        raise DataError(
            f"{source}, {where} has no images in the face_tid_mid file ({int(missing.sum())} such entries): "
            "use the meta files of one IJB release"
        )


def require_crops(folder: Path, names: list[str]) -> None:
    """One line naming the first image of name_5pts_score missing from ``folder`` (before any embedding)."""
    present = set(os.listdir(folder))
    missing = [i for i, name in enumerate(names) if name not in present and not (folder / name).is_file()]
    if missing:
        first, more = missing[0], len(missing) - 1
        others = f", nor {'is 1 more' if more == 1 else f'are {more:,} more'}" if more else ""
        raise DataError(
            f"--ijb: image '{names[first]}' (line {first + 1} of the name_5pts_score file) is not in '{folder}'"
            f"{others}: give the release's complete loose_crop folder, or --features FILE.npy"
        )
