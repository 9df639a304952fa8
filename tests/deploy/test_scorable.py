"""Scoring with any model file: facetrain's exports and foreign TorchScript or ONNX embedders.

Foreign models are built here: a TorchScript one that takes NHWC BGR input with its own mean and
std, and ONNX ones (dynamic batch, and a batch of one baked in) exported with torch.onnx, which
need the onnx extra and are skipped without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_faces
from test_cli_fast import run_all
from test_export import make_checkpoint

from facetrain.data import Preprocess
from facetrain.deploy.export import export_model, verify_pair
from facetrain.deploy.model_file import check_model_input, onnx_metadata_keys, pixel_values
from facetrain.deploy.scorable import ONNX_EXTRA, OnnxEmbedder, ScriptEmbedder, load_scorable
from facetrain.errors import CheckpointError, ConfigError, ShapeError
from facetrain.models import ModuleEmbedder, load_model
from facetrain.runtime import Precision

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")
CPU = torch.device("cpu")
HAS_ONNX = all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs the onnx extra: pip install -e '.[onnx]'")
# The foreign TorchScript model's convention: BGR, NHWC, its own per-channel mean and std (0-255 units).
MEAN, STD = (104.0, 117.0, 123.0), (58.0, 57.0, 59.0)
FOREIGN = {"input_size": 20, "mean": "104,117,123", "std": "58 57 59", "channels": "bgr", "layout": "nhwc"}


class NhwcNet(torch.nn.Module):
    """A foreign embedder: (N, H, W, 3) float -> (N, 6), unnormalised."""

    def __init__(self, flat: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 5, 3, stride=2)
        self.fc = torch.nn.Linear(5 * 9 * 9 if flat else 5, 6)  # flat: fits 20x20 inputs only
        self.flat = flat

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images.permute(0, 3, 1, 2))  # (N, H, W, 3) -> (N, 5, h, w)
        return self.fc(features.flatten(1) if self.flat else features.mean((2, 3)))


class NchwNet(torch.nn.Module):
    """An insightface-like embedder: (N, 3, H, W) float in [-1, 1] -> (N, 6), unnormalised."""

    def __init__(self, rows: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = torch.nn.Conv2d(3, 6, 3, stride=2)
        self.rows = rows

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.conv(images).mean((2, 3))
        return features if self.rows else features[:, :, None, None]  # not rows: (N, 6, 1, 1)


def script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.save(torch.jit.script(module.eval()), str(path))
    return path


def pixels(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """(count, 3, size, size) uint8 RGB images."""
    return torch.randint(0, 256, (count, 3, size, size), generator=torch.Generator().manual_seed(seed)).byte()


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    script(NhwcNet(), root / "nhwc.pt")
    script(NhwcNet(flat=True), root / "flat.pt")
    script(NchwNet(rows=False), root / "not_rows.pt")
    return root


def test_a_foreign_torchscript_model_gets_exactly_the_input_its_options_describe(models):
    model = load_scorable(models / "nhwc.pt", CPU, **FOREIGN)
    assert isinstance(model, ScriptEmbedder) and model.metadata is None
    assert (model.embedding_dim, model.normalised, model.preprocess) == (6, False, Preprocess(20))
    images = pixels(5, 20)
    # By hand: RGB -> BGR, per-channel (x - mean) / std, then (N, H, W, C).
    array = images.numpy().astype(np.float32)[:, ::-1]
    array = (array - np.float32(MEAN)[:, None, None]) / np.float32(STD)[:, None, None]
    expected = NhwcNet().eval()(torch.from_numpy(np.ascontiguousarray(array.transpose(0, 2, 3, 1))))
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
        # Another channel order is another input: the features differ.
        rgb = load_scorable(models / "nhwc.pt", CPU, **{**FOREIGN, "channels": "rgb"})
        assert (rgb(images) - expected).abs().max() > 1e-3


def test_a_foreign_model_fed_the_wrong_layout_or_size_is_one_line(models):
    with pytest.raises(ShapeError) as wrong_layout:
        load_scorable(models / "nhwc.pt", CPU, input_size=20)  # NCHW by default
    message = str(wrong_layout.value)
    assert "nhwc.pt' fails on a 2x3x20x20 batch (NCHW): RuntimeError: " in message
    assert message.endswith("check --input-size and --layout, and that it is an embedder of one image batch")
    assert "\n" not in message and "Traceback" not in message
    load_scorable(models / "flat.pt", CPU, input_size=20, layout="nhwc")  # the size its Linear layer fits
    with pytest.raises(ShapeError, match=r"fails on a 2x24x24x3 batch \(NHWC\): .*mat1 and mat2"):
        load_scorable(models / "flat.pt", CPU, input_size=24, layout="nhwc")
    with pytest.raises(ConfigError, match=r"--input-size: model '.*nhwc.pt' is not a facetrain export"):
        load_scorable(models / "nhwc.pt", CPU)


def test_an_output_that_is_not_one_row_per_image_is_one_line(models, tmp_path):
    with pytest.raises(ShapeError, match=r"returns an output of shape \(2, 6, 1, 1\) for 2 images, expected \(2, D\)"):
        load_scorable(models / "not_rows.pt", CPU, input_size=16)

    class Pair(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return images.mean((2, 3)), images.amax((2, 3))

    with pytest.raises(ShapeError, match="returns a tuple, not a tensor"):
        load_scorable(script(Pair(), tmp_path / "pair.pt"), CPU, input_size=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("checkpoint")
    make_faces(root / "faces", identities=3, per_identity=2, size=(24, 24))
    return make_checkpoint(root, center_crop=0.9)[0]


def assert_scores_as_the_checkpoint(path: Path, checkpoint: Path) -> None:
    model = load_scorable(path, CPU)
    assert (model.normalised, model.embedding_dim, model.preprocess) == (True, 8, Preprocess(32, 0.9))
    loaded = load_model(checkpoint, CPU)
    reference = ModuleEmbedder(loaded.embedder, loaded.preprocess, CPU, Precision(None))
    images = pixels(3, 32, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(images), F.normalize(reference(images), dim=1), rtol=0, atol=1e-5)


def test_a_facetrain_export_scores_as_its_checkpoint_and_refuses_input_options(checkpoint, tmp_path):
    exported = export_model(checkpoint, tmp_path / "model.pt", threshold=0.3).path
    assert_scores_as_the_checkpoint(exported, checkpoint)
    assert load_scorable(exported, CPU).metadata.threshold == 0.3
    with pytest.raises(ConfigError, match=r"^'.*model.pt' is a facetrain export and carries its preprocessing: "
                                          r"drop --mean and --channels$"):  # fmt: skip
        load_scorable(exported, CPU, mean=127.5, channels="rgb")


def test_a_training_checkpoint_given_as_a_model_is_one_line(checkpoint):
    with pytest.raises(CheckpointError, match=rf"not an exported model: to score a training checkpoint pass "
                                              rf"--checkpoint {checkpoint} \(eval, embed\)"):  # fmt: skip
        load_scorable(checkpoint, CPU)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, (127.5, 127.5, 127.5)),
        ("128", (128.0, 128.0, 128.0)),
        ("123.7,116.3, 103.5", (123.7, 116.3, 103.5)),
        ("123.7 116.3 103.5", (123.7, 116.3, 103.5)),
        (0, (0.0, 0.0, 0.0)),
        ([1, 2, 3], (1.0, 2.0, 3.0)),
    ],
)
def test_a_mean_is_one_value_or_three_in_pixel_units(value, expected):
    assert pixel_values(value, "--mean") == expected


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--mean", "1,2", "is not one number or three"),
        ("--mean", "abc", "is not one number or three"),
        ("--mean", "nan", "is not one number or three"),
        ("--mean", "300", "is outside 0..255"),
        ("--std", "0", "has a value <= 0"),
        (
            "--mean",
            "0.485,0.456,0.406",
            "looks like 0-1 units, and facetrain takes 0-255 pixel units: give --mean 123.675,116.28,103.53",
        ),
        ("--std", "0.5", "looks like 0-1 units"),
    ],
)
def test_a_bad_mean_or_std_is_one_line(option, value, expected):
    with pytest.raises(ConfigError, match=f"^{option}: ") as error:
        pixel_values(value, option)
    assert expected in str(error.value)
    assert pixel_values("1", "--std") == (1.0, 1.0, 1.0)  # MXNet's models: (x - 0) / 1


def test_onnx_is_told_by_its_content(tmp_path):
    # A ModelProto with ir_version 8, a graph (empty here) and one metadata entry.
    entry = b"\x0a\x0efacetrain.json\x12\x02{}"
    proto = b"\x08\x08" + b"\x3a\x00" + b"\x72" + bytes([len(entry)]) + entry
    (tmp_path / "model.bin").write_bytes(proto)
    assert onnx_metadata_keys(tmp_path / "model.bin") == ["facetrain.json"]
    assert check_model_input(tmp_path / "model.bin").exported
    (tmp_path / "cut.onnx").write_bytes(proto[:-3])  # the entry runs past the end
    (tmp_path / "notes.onnx").write_text("ir_version: 8\n")
    for name in ("cut.onnx", "notes.onnx"):
        assert onnx_metadata_keys(tmp_path / name) is None
        with pytest.raises(CheckpointError, match=f"{name}' is a .*, not an exported model: give a TorchScript or"):
            check_model_input(tmp_path / name)


def test_onnx_without_onnxruntime_says_how_to_install_it(tmp_path, monkeypatch):
    (tmp_path / "model.onnx").write_bytes(b"\x08\x08\x3a\x00")
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # import onnxruntime fails
    with pytest.raises(ConfigError) as error:
        load_scorable(tmp_path / "model.onnx", CPU, input_size=16)
    assert str(error.value) == ONNX_EXTRA and 'pip install -e ".[onnx]"' in ONNX_EXTRA


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory) -> Path:
    """A foreign ONNX embedder with a dynamic batch and one with a batch of 1, both fixed at 24x24."""
    if not HAS_ONNX:
        pytest.skip("needs the onnx extra: pip install -e '.[onnx]'")
    root = tmp_path_factory.mktemp("onnx")
    net = NchwNet().eval()
    names = {"input_names": ["input.1"], "output_names": ["fc1"], "dynamo": True, "verbose": False}
    batch = {"images": {0: torch.export.Dim("batch", min=1)}}  # keyed by forward's argument
    torch.onnx.export(net, (torch.zeros(2, 3, 24, 24),), str(root / "dynamic.onnx"), dynamic_shapes=batch, **names)
    torch.onnx.export(net, (torch.zeros(1, 3, 24, 24),), str(root / "one.onnx"), **names)
    return root


@needs_onnx
@pytest.mark.parametrize(("name", "batch"), [("dynamic.onnx", None), ("one.onnx", 1)])
def test_a_foreign_onnx_model_takes_its_fixed_size_and_batch(onnx_models, name, batch):
    model = load_scorable(onnx_models / name, CPU)  # no --input-size: the graph fixes 24x24
    assert isinstance(model, OnnxEmbedder) and model.input_name == "input.1" and model.output_name == "fc1"
    assert (model.batch, model.spec.size, model.embedding_dim, model.normalised) == (batch, 24, 6, False)
    images = pixels(5, 24)
    expected = NchwNet().eval()((images.float() - 127.5) / 127.5)
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ShapeError) as error:
        load_scorable(onnx_models / name, CPU, input_size=20)
    fixed = "1" if batch else "N"
    assert str(error.value) == (
        f"model '{onnx_models / name}' expects input {fixed}x3x24x24 (NCHW), got Nx3x20x20 from --input-size 20: "
        "use --input-size 24"
    )
    with pytest.raises(ShapeError, match=r"24 channels as NHWC: facetrain feeds 3 channels: use --layout nchw"):
        load_scorable(onnx_models / name, CPU, layout="nhwc")


@needs_onnx
def test_a_facetrain_onnx_export_scores_as_its_checkpoint(checkpoint, tmp_path):
    exported = export_model(checkpoint, tmp_path / "model.onnx", fmt="onnx").path
    assert check_model_input(exported).exported
    assert_scores_as_the_checkpoint(exported, checkpoint)


@needs_onnx
def test_verify_and_embed_with_a_foreign_onnx_model(onnx_models, tmp_path):
    faces = sorted(make_faces(tmp_path / "faces", identities=2, per_identity=2, size=(30, 30)).glob("*/*.png"))
    result = verify_pair(onnx_models / "one.onnx", faces[0], faces[0])
    assert result.score == pytest.approx(1.0, abs=1e-5) and result.threshold_source == "none"
    model = load_scorable(onnx_models / "one.onnx", CPU)
    features = F.normalize(model(torch.stack([model.preprocess.load_pixels(path) for path in faces[:2]])), dim=1)
    other = verify_pair(onnx_models / "one.onnx", faces[0], faces[1])
    assert other.score == pytest.approx(float(features[0] @ features[1]), abs=1e-5)


def test_cli_embed_and_verify_with_a_foreign_torchscript_model(models, tmp_path):
    from typer.testing import CliRunner

    from facetrain.cli import app

    faces = make_faces(tmp_path / "faces", identities=2, per_identity=2, size=(30, 30))
    options = [f"--{key.replace('_', '-')}={value}" for key, value in FOREIGN.items()]
    out = tmp_path / "e.npz"
    runner = CliRunner()
    said = runner.invoke(app, ["embed", "--model", str(models / "nhwc.pt"), "--images", str(faces), "--out", str(out),
                               "--workers", "0", *options])  # fmt: skip
    assert said.exit_code == 0, said.output
    with np.load(out) as data:
        embeddings, paths = data["embeddings"], data["paths"].tolist()
    model = load_scorable(models / "nhwc.pt", CPU, **FOREIGN)
    with torch.no_grad():
        expected = F.normalize(model(torch.stack([model.preprocess.load_pixels(faces / path) for path in paths])))
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-6)

    first, second = (str(faces / path) for path in paths[:2])
    verdict = runner.invoke(app, ["verify", str(models / "nhwc.pt"), first, second, *options, "--threshold", "0.1"])
    assert verdict.exit_code == 0, verdict.output
    score = float(embeddings[0] @ embeddings[1])
    assert verdict.stdout.splitlines()[0] == f"score: {score:.4f}"
    plain = runner.invoke(app, ["verify", str(models / "nhwc.pt"), first, second, *options])
    assert plain.stdout.splitlines()[1] == "no threshold: pass --threshold, or export with --threshold-from EVAL_JSON"
    wrong = runner.invoke(app, ["verify", str(models / "nhwc.pt"), first, second, "--input-size", "20"])
    assert wrong.exit_code == 2 and "fails on a 2x3x20x20 batch (NCHW)" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and "Traceback" not in wrong.output


def test_cli_option_errors_come_before_torch(models, checkpoint, tmp_path):
    """Exit 2, one line, no traceback, and torch never imported: the probe runs in fresh interpreters."""
    faces = make_faces(tmp_path / "faces", identities=2, per_identity=1, size=(16, 16))
    image = str(next(faces.glob("*/*.png")))
    exported = export_model(checkpoint, tmp_path / "model.pt").path
    foreign, embed = str(models / "nhwc.pt"), ["embed", "--images", str(faces), "--out", str(tmp_path / "e.npz")]
    cases = [
        (["verify", foreign, image, image], "--input-size: model '"),
        (["verify", foreign, image, image, "--input-size", "20", "--channels", "grb"], "--channels: unknown value"),
        (["verify", str(exported), image, image, "--std", "128"], "is a facetrain export and carries its prepro"),
        (["verify", str(checkpoint), image, image], "not an exported model: to score a training checkpoint pass"),
        ([*embed, "--model", foreign, "--input-size", "20", "--mean", "0.5"], "--mean: '0.5' looks like 0-1 units"),
        ([*embed, "--model", foreign, "--input-size", "20", "--std", "1,2"], "--std: '1,2' is not one number"),
        ([*embed, "--model", foreign, "--input-size", "20", "--layout", "chw"], "--layout: unknown value 'chw'"),
        ([*embed, "--checkpoint", str(checkpoint), "--layout", "nhwc"], "--layout: the input options describe a"),
        ([*embed, "--model", str(checkpoint)], "not an exported model: to score a training checkpoint pass"),
    ]
    for (args, expected), (code, imported, said) in zip(
        cases, run_all([args for args, _ in cases], tmp_path), strict=True
    ):
        assert code == 2 and expected in said, (args, said)
        assert len(said.strip().splitlines()) == 1 and not imported, (args, said)


@pytest.mark.parametrize(
    "metadata, expected",
    [
        (b"", "facetrain.json is empty: re-export the model"),
        (b"\xff\xfe\x00bad", "facetrain.json is not text"),
        (b'{"image_size": -3}', "is unreadable"),
        (None, "image_size -3 is not a side of 8 to 4096 pixels"),
    ],
)
def test_a_damaged_facetrain_json_is_one_line(metadata, expected, tmp_path):
    """An export's metadata is read from the user's file: damage is a message, never a traceback."""
    from facetrain.deploy.deployed import ModelMetadata

    if metadata is None:
        good = ModelMetadata("resnet18", 8, 32, None).to_json()
        metadata = good.replace('"image_size": 32', '"image_size": -3').encode()
    path = tmp_path / "damaged.pt"
    net = torch.jit.script(_Flat())
    torch.jit.save(net, str(path), _extra_files={"facetrain.json": metadata})
    with pytest.raises(CheckpointError, match=expected):
        load_scorable(path, CPU)


class _Flat(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :8]
