"""The ``data`` section: where the faces are, how they are split, cropped, cached and loaded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from facetrain.config.limits import MAX_COUNT, MAX_CROP, MAX_IMAGE_SIZE, MAX_SEED
from facetrain.schema import option


@dataclass(frozen=True)
class DataConfig:
    root: str = option(
        "",
        "Training folder (one sub-folder of images per identity), or an insightface or im2rec `train.rec` "
        "(its `.idx` beside it).",
    )
    val_root: str | None = option(
        None, "Separate folder (or `.rec`) of held-out identities for verification (instead of a split)."
    )
    val_identities: int = option(
        0, "Identities held out of `root` for verification (chosen with `split_seed`).", ge=0, le=MAX_COUNT
    )
    split_seed: int = option(0, "Seed that picks the held-out identities.", ge=0, le=MAX_SEED)
    min_images_per_identity: int = option(
        2, "Identities with fewer images are dropped (the count is logged).", ge=1, le=MAX_COUNT
    )
    image_size: int = option(112, "Square input size in pixels after crop and resize.", ge=16, le=MAX_IMAGE_SIZE)
    center_crop: int | float | None = option(
        None,
        "Centre crop before resizing: pixels (int, square) or a fraction of each side "
        "(float in (0, 1]); null for none.",
        gt=0,
        le=MAX_CROP,
    )
    hflip: bool = option(True, "Random horizontal flip during training.")
    num_workers: int = option(2, "DataLoader worker processes (0 loads in the main process).", ge=0, le=256)
    cache: Literal["none", "ram", "auto"] = option(
        "auto",
        "Keep the decoded, cropped and resized images in memory (uint8, one copy per machine) instead of "
        "decoding them every epoch; also the verification images scored during training. auto: when they fit "
        "within `cache_max_gb`; ram: always (refused when the machine lacks the memory); none: never.",
    )
    cache_max_gb: float | None = option(
        None,
        "Memory budget of `cache: auto` in GB (10^9 bytes), per machine; null: half the memory available "
        "when the run starts.",
        gt=0.0,
        le=1_000_000.0,
    )
