"""Export every backbone and print its parity with the eager model, export time and file size.

Each backbone gets an untrained checkpoint (weights as torchvision initialises them, BatchNorm
statistics made non-trivial), which is exported and reloaded exactly as `facetrain export` does.
Prints a table and writes the numbers as JSON.

Usage:
  python scripts/bench_export.py --image-size 112
  python scripts/bench_export.py --backbones resnet18 resnet50 --format onnx
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from facetrain.checkpoint import save_checkpoint
from facetrain.config import config_from_dict, config_to_dict
from facetrain.deploy.export import export_model
from facetrain.models import build_embedder, build_head
from facetrain.models.backbones import backbone_names


def make_checkpoint(folder: Path, backbone: str, image_size: int, embedding_dim: int) -> Path:
    config = config_from_dict(
        {"model": {"backbone": backbone, "embedding_dim": embedding_dim}, "data": {"image_size": image_size}}
    )
    torch.manual_seed(0)
    embedder = build_embedder(config.model, image_size)
    with torch.no_grad():  # untrained BatchNorm statistics are 0/1; make them non-trivial
        for module in embedder.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    head = build_head(config.head, embedding_dim, 10)
    state = {"config": config_to_dict(config), "num_classes": 10,
             "embedder": embedder.state_dict(), "head": head.state_dict()}  # fmt: skip
    return save_checkpoint(state, folder / f"{backbone}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="*", default=backbone_names())
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--embedding-dim", type=int, default=512)
    parser.add_argument("--format", default="torchscript", choices=["torchscript", "onnx"])
    parser.add_argument("--json", default="bench_export.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for backbone in args.backbones:
            checkpoint = make_checkpoint(Path(folder), backbone, args.image_size, args.embedding_dim)
            started = time.perf_counter()
            result = export_model(checkpoint, Path(folder) / f"{backbone}.{args.format}", args.format)
            seconds = time.perf_counter() - started
            rows.append({
                "backbone": backbone, "format": args.format, "image_size": args.image_size,
                "max_abs_diff": result.max_abs_diff, "parity_checked": result.parity_checked,
                "export_seconds": round(seconds, 2), "file_mb": round(result.path.stat().st_size / 2**20, 1),
            })  # fmt: skip
            diff = "not checked" if result.max_abs_diff is None else f"{result.max_abs_diff:.2e}"
            print(
                f"{backbone:<10} parity {diff:>11}  export {seconds:6.2f} s  {rows[-1]['file_mb']:7.1f} MB", flush=True
            )
    Path(args.json).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
