"""Shared fixtures: small synthetic identity folders and tiny configs, so tests need no ../shared."""

from __future__ import annotations

import io
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from facetrain.config import Config, config_from_dict

REPO = Path(__file__).resolve().parents[1]
ORL = REPO / "facetrain" / "assets" / "orl"


def make_faces(
    root: Path, identities: int = 4, per_identity: int = 8, size: tuple[int, int] = (40, 48), seed: int = 0
) -> Path:
    """Writes ``root/idNN/imgNN.png``: each identity a fixed random pattern plus per-image noise."""
    generator = torch.Generator().manual_seed(seed)
    width, height = size
    for identity in range(identities):
        base = torch.rand(3, height, width, generator=generator)
        folder = root / f"id{identity:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_identity):
            noisy = (base + 0.15 * torch.randn(3, height, width, generator=generator)).clamp(0, 1)
            pixels = (noisy * 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(folder / f"img{index:02d}.png")
    return root


def background(width: int, height: int, seed: int = 0) -> torch.Tensor:
    """A (3, H, W) uint8 scene without a face: smooth random colour blobs with a little noise."""
    generator = torch.Generator().manual_seed(seed)
    low = torch.rand(3, height // 32 + 2, width // 32 + 2, generator=generator)
    smooth = torch.nn.functional.interpolate(low[None], size=(height, width), mode="bicubic", align_corners=False)[0]
    return (smooth * 200 + 20 + 8 * torch.randn(3, height, width, generator=generator)).clamp(0, 255).byte()


def paste(canvas: torch.Tensor, face: Path, scale: float, x: int, y: int) -> torch.Tensor:
    """A face photo (say, ORL's) resized by ``scale`` with its top-left corner at (x, y) on ``canvas``
    (edited in place): a raw photo whose face is at a known place."""
    image = Image.open(face).convert("RGB")
    resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
    canvas[:, y : y + resized.height, x : x + resized.width] = torch.from_numpy(np.array(resized)).permute(2, 0, 1)
    return canvas


def tiny_config(data_root: Path, run_dir: Path, **sections: dict) -> Config:
    """A config small enough to train in seconds on a CPU."""
    raw: dict = {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"root": str(data_root), "image_size": 32, "num_workers": 0, "min_images_per_identity": 2},
        "model": {"backbone": "resnet18", "embedding_dim": 16},
        "head": {"s": 16.0, "m": 0.2},
        "train": {
            "epochs": 2,
            "batch_size": 8,
            "lr": 0.05,
            "warmup_epochs": 0.5,
            "log_every_steps": 1,
            "checkpoint_every_steps": 0,
        },
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return config_from_dict(raw)


def write_tiny_yaml(folder: Path, head: str, train: str, per_identity: int = 6, extra: str = "") -> Path:
    """6 small identities (2 held out) under ``folder/faces`` and ``folder/tiny.yaml`` training on them into
    ``folder/run``, for tests that run facetrain as a separate process; ``head`` and ``train`` are YAML maps."""
    faces = make_faces(folder / "faces", identities=6, per_identity=per_identity, size=(24, 24))
    path = folder / "tiny.yaml"
    path.write_text(
        f"run_dir: {folder / 'run'}\n"
        f"data: {{root: {faces}, image_size: 32, num_workers: 0, val_identities: 2}}\n"
        "model: {backbone: resnet18, embedding_dim: 16}\n"
        f"head: {head}\ntrain: {train}\n{extra}"
    )
    return path


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    return make_faces(tmp_path / "faces")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Caches (a .rec's scanned labels) go to a folder of the test session, never to ~/.cache."""
    monkeypatch.setenv("FACETRAIN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _quiet_facetrain_logger():
    logging.getLogger("facetrain").setLevel(logging.INFO)
    yield


def jpeg_bytes(seed: int, size: int = 16, comment: bytes = b"") -> bytes:
    """A small random JPEG; ``comment`` goes in a COM segment right after SOI (its text starts at byte 6)."""
    pixels = (torch.rand(size, size, 3, generator=torch.Generator().manual_seed(seed)) * 255).byte().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    if not comment:
        return data
    return data[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + data[2:]


def write_records(rec: Path, records: list[tuple[int, bytes]]) -> Path:
    """Writes ``(key, payload)`` records in this order to ``rec`` and its ``.idx``, with our RecordWriter."""
    from facetrain.data.recordio import RecordWriter

    rec.parent.mkdir(parents=True, exist_ok=True)
    with rec.open("wb") as stream, rec.with_suffix(".idx").open("w") as index:
        writer = RecordWriter(stream, index)
        for key, payload in records:
            writer.write(key, payload)
    return rec


@pytest.fixture(scope="module")
def orl_checkpoint(tmp_path_factory) -> Path:
    """An (untrained) checkpoint of the demo's shape at 32 px: eval only needs weights and config."""
    from facetrain.training.trainer import Trainer

    run = tmp_path_factory.mktemp("orl") / "run"
    cfg = tiny_config(ORL, run, data={"val_identities": 10, "image_size": 32}, model={"embedding_dim": 32})
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    return trainer.save()
