"""Checks facetrain's insightface import and export against insightface's own arcface_torch code.

The exactness figures of docs/backbones.md come from here. insightface's code is not part of facetrain: give the
folder of a checkout of its ``recognition/arcface_torch`` (the one that holds ``backbones/``). For each
network, insightface's ``get_model(name, num_features=D)`` is given random weights and random
BatchNorm statistics and saved as a ``backbone.pth``; then the real ``facetrain import`` reads it and
``load_model`` embeds two 112 px inputs, and ``facetrain export --format insightface`` writes it back
for insightface's model to load with ``strict=True``. Printed: the largest absolute difference of the
L2-normalised embeddings each way (eval, float32, CPU), and the cosine between the two inputs'
embeddings (below 1: the embeddings depend on the input).

Usage (from the repository root):
  .venv/bin/python scripts/check_insightface.py --arcface-torch ~/src/insightface/recognition/arcface_torch
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from facetrain.models import load_model

# Weight scale of the random networks (times 1/sqrt(fan-in)): insightface's own init with random BatchNorm
# statistics overflows float32 in r100 and r200, and a zero vector would compare equal to anything.
GAIN = 1.0
FACETRAIN = str(Path(sys.executable).with_name("facetrain"))
NAMES = ("r18", "r34", "r50", "r100", "r200", "mbf")


def randomise(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.02)
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.02)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                # insightface's init (normal, std 0.1) overflows float32 past ~50 blocks once BN stats are
                # random; fan-in scaled weights keep r100/r200 finite and the output input-dependent.
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=g) * (GAIN / fan_in**0.5))
            if isinstance(module, torch.nn.PReLU):
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) * 0.5)
            elif isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)


def run(*args: str) -> str:
    proc = subprocess.run([FACETRAIN, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.strip()


def measure(get_model: Any, name: str, dim: int, folder: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    theirs = get_model(name, num_features=dim).eval()
    randomise(theirs, 1)
    source = folder / f"{name}_{dim}_backbone.pth"
    torch.save(theirs.state_dict(), source)
    # Low-frequency patterns (7x7 noise upsampled) plus pixel noise, in [-1, 1]: two clearly different inputs.
    g = torch.Generator().manual_seed(2)
    coarse = F.interpolate(torch.rand(2, 3, 7, 7, generator=g), size=112, mode="bilinear", align_corners=False)
    images = (0.8 * coarse + 0.2 * torch.rand(2, 3, 112, 112, generator=g)) * 2 - 1
    with torch.no_grad():
        expected = F.normalize(theirs(images).float(), dim=1)
    assert expected.isfinite().all(), name
    assert torch.allclose(expected.norm(dim=1), torch.ones(2), atol=1e-4), name  # no overflow to a zero vector
    cosine = float(expected[0] @ expected[1])  # not degenerate: two inputs, two different embeddings
    ckpt = folder / f"{name}_{dim}.pt"
    said = run("import", "--insightface", str(source), "--arch", name, "--out", str(ckpt))
    ours = load_model(ckpt, torch.device("cpu")).embedder
    with torch.no_grad():
        got = F.normalize(ours(images), dim=1)
    import_diff = float((got - expected).abs().max())
    back = folder / f"{name}_{dim}_export.pth"
    run("export", "--format", "insightface", "--checkpoint", str(ckpt), "--out", str(back))
    again = get_model(name, num_features=dim).eval()
    again.load_state_dict(torch.load(back, weights_only=True), strict=True)
    with torch.no_grad():
        round_trip = F.normalize(again(images).float(), dim=1)
    export_diff = float((round_trip - expected).abs().max())
    print(
        f"{name:5s} D={dim}: import max abs diff {import_diff:.3g}; export -> insightface strict load, "
        f"max abs diff {export_diff:.3g}; cos(image0, image1) {cosine:.3f}",
        flush=True,
    )
    return {"name": name, "embedding_dim": dim, "import_max_abs_diff": import_diff,
            "export_max_abs_diff": export_diff, "cosine_between_inputs": cosine, "import_said": said}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arcface-torch", type=Path, required=True, help="insightface's recognition/arcface_torch")
    parser.add_argument("--names", nargs="+", default=list(NAMES), choices=NAMES)
    parser.add_argument("--json", type=Path, default=Path("runs/check_insightface.json"))
    args = parser.parse_args()
    if not (args.arcface_torch / "backbones" / "__init__.py").is_file():
        parser.error(f"{args.arcface_torch} has no backbones/__init__.py: give insightface's recognition/arcface_torch")
    sys.path.insert(0, str(args.arcface_torch))
    warnings.filterwarnings("ignore")  # insightface's torch.cuda.amp deprecation notices
    from backbones import get_model  # insightface's, from the folder given

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            results.append(measure(get_model, name, 512, Path(tmp)))
        results.append(measure(get_model, "r18", 128, Path(tmp)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
