"""Model export: parity with the eager model, metadata, loading without facetrain, and verify."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_faces, tiny_config
from PIL import Image

from facetrain import __version__
from facetrain.checkpoint import save_checkpoint
from facetrain.config import config_to_dict
from facetrain.data.preprocess import Preprocess
from facetrain.deploy.deployed import METADATA_NAME, load_exported
from facetrain.deploy.export import ExportResult, export_model, verify_pair
from facetrain.deploy.inputs import threshold_from_eval_json
from facetrain.errors import ConfigError, DataError, ShapeError
from facetrain.models import build_embedder, build_head
from facetrain.models.backbones import backbone_names
from facetrain.models.embedder import Embedder

# The tests load exported files with torch.jit.load themselves; its deprecation notice is noise here.
pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
NUM_CLASSES = 3
# Runs in a fresh interpreter that sees torch but not facetrain: -I ignores PYTHONPATH and the user
# site, -S skips site-packages and its .pth files, and with them facetrain's editable-install finder.
LOAD_WITHOUT_FACETRAIN = """
import json, sys
site_dir, model_path, inputs_path, outputs_path = sys.argv[1:]
sys.path.insert(0, site_dir)
try:
    import facetrain
except ImportError:
    pass
else:
    raise SystemExit(f"facetrain is importable from {facetrain.__file__}")
import torch
extra = {"facetrain.json": ""}
model = torch.jit.load(model_path, _extra_files=extra)
metadata = json.loads(extra["facetrain.json"])
images = torch.load(inputs_path, weights_only=True)
with torch.no_grad():
    torch.save(model(images), outputs_path)
assert "facetrain" not in sys.modules, "loading the model imported facetrain"
print(json.dumps(metadata))
"""


def make_checkpoint(
    root: Path, backbone: str = "resnet18", head: dict | None = None, **data: object
) -> tuple[Path, Embedder]:
    """An untrained checkpoint (embedding_dim 8, 32 px) and its embedder in eval mode."""
    config = tiny_config(
        root / "faces",
        root / "run",
        model={"backbone": backbone, "embedding_dim": 8},
        data={"image_size": 32, **data},
        **({"head": head} if head else {}),
    )
    # Built on the meta device, then given real weights: torchvision would first initialise VGG's
    # 120M-parameter classifier, which the embedder drops, and that dominated this file's run time.
    with torch.device("meta"):
        embedder = build_embedder(config.model, config.data.image_size)
    embedder.to_empty(device="cpu")
    torch.manual_seed(0)
    for module in embedder.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        # Fresh BatchNorm statistics are 0 and 1, which makes eval and training mode look alike;
        # other values make an export in the wrong mode fail parity.
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0.0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    assert all(value.isfinite().all() for value in embedder.state_dict().values())
    head = build_head(config.head, config.model.embedding_dim, NUM_CLASSES)
    state = {
        "config": config_to_dict(config),
        "num_classes": NUM_CLASSES,
        "embedder": embedder.state_dict(),
        "head": head.state_dict(),
    }
    return save_checkpoint(state, root / "run" / "last.pt"), embedder.eval()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Runs this module's many small forward passes on one intra-op thread.

    With two threads, every one of ResNet-152's ~500 ops waits at a barrier for the other thread, and
    on a busy two-core machine that wait is a scheduler time slice: the test took 5 to 25 s.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def eager(embedder: Embedder, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(embedder(images), dim=1)


@dataclass
class Exported:
    checkpoint: Path
    embedder: Embedder
    faces: list[Path]
    model: Path
    result: ExportResult


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """A resnet18 checkpoint with a 0.9 centre crop, exported with threshold 0.3."""
    root = tmp_path_factory.mktemp("export")
    faces = sorted(make_faces(root / "faces", identities=3, per_identity=4, size=(40, 48)).glob("*/*.png"))
    checkpoint, embedder = make_checkpoint(root, center_crop=0.9)
    result = export_model(checkpoint, root / "out" / "model.pt", threshold=0.3, sample_images=faces[:5])
    return Exported(checkpoint, embedder, faces, result.path, result)


@pytest.mark.parametrize("backbone", backbone_names())
def test_every_backbone_exports_with_parity_and_dynamic_batch(tmp_path: Path, backbone: str) -> None:
    checkpoint, embedder = make_checkpoint(tmp_path, backbone)
    result = export_model(checkpoint, tmp_path / "model.pt")
    assert result.parity_checked and result.max_abs_diff is not None
    assert result.max_abs_diff <= 1e-4
    print(f"{backbone}: max abs diff {result.max_abs_diff:.3g}")  # shown with pytest -s
    model = torch.jit.load(str(result.path))
    for batch in (5, 1):  # neither size was used by the export's own check
        images = torch.rand(batch, 3, 32, 32) * 2 - 1
        with torch.no_grad():
            output = model(images)
        assert output.shape == (batch, 8) and output.dtype == torch.float32
        torch.testing.assert_close(output.norm(dim=1), torch.ones(batch))
        assert (output - eager(embedder, images)).abs().max() <= 1e-4


def test_the_head_does_not_change_what_export_returns(tmp_path: Path) -> None:
    """AdaFace reads the embedding's norm in training; the exported model still returns unit vectors."""
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    outputs = {}
    for kind in ("arcface", "adaface", "softmax"):
        head = {"type": kind, **({"s": None, "m": None} if kind == "softmax" else {})}
        checkpoint, embedder = make_checkpoint(tmp_path / kind, head=head)
        model = torch.jit.load(str(export_model(checkpoint, tmp_path / kind / "model.pt").path))
        with torch.no_grad():
            outputs[kind] = model(images)
        assert (outputs[kind] - eager(embedder, images)).abs().max() <= 1e-4
    assert torch.equal(outputs["arcface"], outputs["adaface"]) and torch.equal(outputs["arcface"], outputs["softmax"])


def test_head_is_not_exported(exported: Exported) -> None:
    model = torch.jit.load(str(exported.model))
    names = list(model.state_dict())
    assert not any("class_centers" in name for name in names)
    assert all(name.startswith("embedder.") for name in names)
    own = sum(p.numel() for p in exported.embedder.parameters())
    assert sum(p.numel() for p in model.parameters()) == own


def test_metadata_round_trip(exported: Exported) -> None:
    _, metadata = load_exported(exported.model)
    assert metadata == exported.result.metadata
    assert (metadata.backbone, metadata.embedding_dim, metadata.image_size) == ("resnet18", 8, 32)
    assert metadata.center_crop == 0.9 and metadata.threshold == 0.3
    assert metadata.facetrain_version == __version__
    assert exported.result.parity_checked and exported.result.max_abs_diff <= 1e-4


def test_exported_model_runs_without_facetrain(exported: Exported, tmp_path: Path) -> None:
    images = torch.stack([Preprocess(32, 0.9).load(path) for path in exported.faces[:6]])
    torch.save(images, tmp_path / "inputs.pt")
    site_dir = os.path.dirname(os.path.dirname(torch.__file__))
    args = [site_dir, str(exported.model), str(tmp_path / "inputs.pt"), str(tmp_path / "outputs.pt")]
    child = subprocess.run(
        [sys.executable, "-I", "-S", "-c", LOAD_WITHOUT_FACETRAIN, *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr + child.stdout
    metadata = json.loads(child.stdout.strip().splitlines()[-1])
    assert (metadata["image_size"], metadata["center_crop"], metadata["embedding_dim"]) == (32, 0.9, 8)
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert (outputs - eager(exported.embedder, images)).abs().max() <= 1e-5


class Shifted(torch.nn.Module):
    """A reloaded model that has drifted from the eager one."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.inner(images) + 1e-3


def test_parity_failure_removes_the_file(exported: Exported, tmp_path: Path, monkeypatch) -> None:
    real_load = torch.jit.load
    monkeypatch.setattr("facetrain.deploy.export.torch.jit.load", lambda *a, **k: Shifted(real_load(*a, **k)))
    out = tmp_path / "model.pt"
    with pytest.raises(ShapeError, match=r"max abs difference 0\.001 > 0\.0001.*file removed"):
        export_model(exported.checkpoint, out)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # A failed export leaves an earlier file at the same path as it was.
    out.write_bytes(b"earlier export")
    with pytest.raises(ShapeError):
        export_model(exported.checkpoint, out)
    assert out.read_bytes() == b"earlier export" and list(tmp_path.iterdir()) == [out]


def test_unknown_format(exported: Exported, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="torchscript, onnx"):
        export_model(exported.checkpoint, tmp_path / "model.bin", fmt="tflite")
    assert list(tmp_path.iterdir()) == []


def test_verify_same_image_and_threshold_sources(exported: Exported) -> None:
    face = exported.faces[0]
    given = verify_pair(exported.model, face, face, threshold=0.5)
    assert given.score == pytest.approx(1.0, abs=1e-5)
    assert (given.same, given.threshold, given.threshold_source) == (True, 0.5, "argument")
    stored = verify_pair(exported.model, face, exported.faces[-1])
    assert (stored.threshold, stored.threshold_source) == (0.3, "model metadata")
    assert stored.same == (stored.score >= 0.3)
    # The score is the dot product of the training-preprocessed images' embeddings.
    images = torch.stack([Preprocess(32, 0.9).load(path) for path in (face, exported.faces[-1])])
    expected = eager(exported.embedder, images)
    assert stored.score == pytest.approx(float(expected[0] @ expected[1]), abs=1e-5)


def test_verify_without_any_threshold(exported: Exported, tmp_path: Path) -> None:
    plain = export_model(exported.checkpoint, tmp_path / "plain.pt").path
    result = verify_pair(plain, exported.faces[0], exported.faces[1])
    assert (result.threshold, result.same, result.threshold_source) == (None, None, "none")
    assert -1.0 - 1e-6 <= result.score <= 1.0 + 1e-6


def test_verify_unreadable_image_names_it(exported: Exported, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        verify_pair(exported.model, exported.faces[0], broken)


def test_threshold_from_eval_json(tmp_path: Path) -> None:
    report = {
        "checkpoint": "run/last.pt",
        "sets": [
            {"name": "val", "flip": {"threshold": 0.41, "accuracy": 0.9}, "plain": {"threshold": 0.37}},
            {"name": "other", "flip": None, "plain": {"threshold": 0.2}},
        ],
    }
    good = tmp_path / "eval.json"
    good.write_text(json.dumps(report))
    assert threshold_from_eval_json(good) == 0.37  # plain, not flip: the exported model embeds one image
    garbled = tmp_path / "garbled.json"
    garbled.write_text('{"sets": [{"plain": ')
    with pytest.raises(DataError, match=r"garbled.json' is not valid JSON \(line 1, column 21\)"):
        threshold_from_eval_json(garbled)
    other = tmp_path / "other.json"
    other.write_text('{"sets": []}')
    with pytest.raises(DataError, match=r"other.json' has no sets\[0\].plain.threshold"):
        threshold_from_eval_json(other)
    with pytest.raises(DataError, match="missing.json"):
        threshold_from_eval_json(tmp_path / "missing.json")
    report["sets"][0]["plain"] = {"threshold": "high"}
    good.write_text(json.dumps(report))
    with pytest.raises(DataError, match="not a finite number"):
        threshold_from_eval_json(good)


def test_onnx_export_with_onnxruntime_parity(exported: Exported, tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    result = export_model(exported.checkpoint, tmp_path / "model.onnx", fmt="onnx", threshold=0.3)
    assert result.parity_checked and result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    props = {entry.key: entry.value for entry in onnx.load(str(result.path)).metadata_props}
    assert json.loads(props[METADATA_NAME])["threshold"] == 0.3
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    for batch in (5, 1):
        images = torch.rand(batch, 3, 32, 32) * 2 - 1
        (output,) = session.run(["embeddings"], {"images": images.numpy()})
        assert output.shape == (batch, 8)
        assert (torch.from_numpy(output) - eager(exported.embedder, images)).abs().max() <= 1e-4


@pytest.mark.parametrize("backbone", ["iresnet18", "mobilefacenet"])
def test_face_backbones_export_to_onnx_with_parity(tmp_path: Path, backbone: str) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    checkpoint, _ = make_checkpoint(tmp_path, backbone)
    result = export_model(checkpoint, tmp_path / "model.onnx", fmt="onnx")
    assert result.parity_checked and result.max_abs_diff is not None and result.max_abs_diff <= 1e-4


def test_onnx_without_onnxruntime_skips_parity(exported: Exported, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    result = export_model(exported.checkpoint, tmp_path / "model.onnx", fmt="onnx")
    assert result.path.is_file() and not result.parity_checked and result.max_abs_diff is None
    assert result.note == "parity not checked: onnxruntime is not installed"


def test_onnx_without_the_onnx_package(exported: Exported, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ConfigError, match=r"pip install 'facetrain\[onnx\]'"):
        export_model(exported.checkpoint, tmp_path / "model.onnx", fmt="onnx")
    assert list(tmp_path.iterdir()) == []


def test_cli_export_and_verify(exported: Exported, tmp_path: Path) -> None:
    from conftest import ORL
    from typer.testing import CliRunner

    from facetrain.cli import app

    runner = CliRunner()
    out = tmp_path / "cli_model.pt"
    result = runner.invoke(app, ["export", "--checkpoint", str(exported.checkpoint), "--out", str(out),
                                 "--threshold", "0.25", "--parity-images", str(ORL)])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"exported: {out} (torchscript; embedder only: resnet18" in result.stdout
    assert "parity: max abs difference" in result.stdout and "batches of 8 and 7" in result.stdout
    image = str(ORL / "s1" / "1.pgm")
    verdict = runner.invoke(app, ["verify", str(out), image, image])
    assert verdict.exit_code == 0, verdict.output
    assert verdict.stdout.splitlines() == ["score: 1.0000", "same person (threshold 0.2500, stored in the model)"]
    bad = runner.invoke(app, ["export", "--checkpoint", str(exported.checkpoint), "--out", str(out), "--format", "tf"])
    assert bad.exit_code == 2 and "unknown format 'tf'" in bad.stderr
    missing = runner.invoke(app, ["verify", str(tmp_path / "none.pt"), image, image])
    assert missing.exit_code == 2 and "not found" in missing.stderr


def test_verify_align_scores_the_aligned_faces(exported: Exported, tmp_path: Path) -> None:
    from conftest import ORL, background, paste

    from facetrain.data import Aligner

    photos = []
    for index, (x, scale) in enumerate(((20, 1.0), (120, 1.8))):  # the same face, elsewhere and larger
        scene = paste(background(300, 260, seed=index), ORL / "s3" / "2.pgm", scale, x, 30)
        photos.append(tmp_path / f"{index}.png")
        Image.fromarray(scene.permute(1, 2, 0).numpy()).save(photos[-1])
    aligned = verify_pair(exported.model, photos[0], photos[1], align=(112, 112))
    crops = [Aligner().crop_file(photo) for photo in photos]
    expected = eager(exported.embedder, torch.stack([Preprocess(32, 0.9)(crop) for crop in crops]))
    assert aligned.score == pytest.approx(float(expected[0] @ expected[1]), abs=1e-5)
    plain = verify_pair(exported.model, photos[0], photos[1])
    assert aligned.score > plain.score  # aligned, the two photos of one face agree far better
    empty = tmp_path / "empty.png"
    Image.fromarray(background(120, 120).permute(1, 2, 0).numpy()).save(empty)
    with pytest.raises(DataError, match="no face of at least 20 px found in .*empty.png"):
        verify_pair(exported.model, photos[0], empty, align=(112, 112))
    from typer.testing import CliRunner

    from facetrain.cli import app

    said = CliRunner().invoke(app, ["verify", str(exported.model), str(photos[0]), str(photos[1]), "--align"])
    assert said.exit_code == 0 and said.stdout.startswith(f"score: {aligned.score:.4f}"), said.output
    refused = CliRunner().invoke(app, ["verify", str(exported.model), str(photos[0]), str(empty), "--align"])
    assert refused.exit_code == 2 and "leave out --align" in refused.stderr and "Traceback" not in refused.output
