import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_faces, tiny_config

from facetrain.data import find_images
from facetrain.deploy.deployed import METADATA_NAME, ModelMetadata
from facetrain.deploy.embed import embed_folder
from facetrain.errors import ConfigError, DataError
from facetrain.models import load_model
from facetrain.training.trainer import Trainer

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    """(identity-folder tree of 3 x 3 images, an untrained resnet18 checkpoint), shared by the module."""
    base = tmp_path_factory.mktemp("embed")
    faces = make_faces(base / "faces", identities=3, per_identity=3, size=(32, 32))
    trainer = Trainer(tiny_config(faces, base / "run", model={"embedding_dim": 8}), progress=False)
    trainer.setup()
    return faces, trainer.save()


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """The .npz of the shared tree (9 images in batches of 4: one partial batch), embedded once."""
    faces, checkpoint = setup
    out = tmp_path_factory.mktemp("reference") / "new" / "dir" / "emb.npz"
    result = embed_folder(faces, out, checkpoint=checkpoint, batch_size=4, device=CPU)
    assert result.out == out and result.count == 9 and result.skipped == []
    assert result.images_per_sec > 0
    return out, load_npz(out)


def test_identity_tree_writes_sorted_relative_rows_equal_to_the_embedder(setup, reference):
    faces, checkpoint = setup
    out, data = reference
    assert [p.name for p in out.parent.iterdir()] == ["emb.npz"]  # no temp file left behind
    assert data["embeddings"].shape == (9, 8) and data["embeddings"].dtype == np.float32
    paths = data["paths"].tolist()
    assert paths == sorted(paths) and paths[0] == "id00/img00.png" and paths[-1] == "id02/img02.png"
    assert data["labels"].tolist() == [p.split("/")[0] for p in paths]
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-5)

    loaded = load_model(checkpoint, CPU)
    for row in (0, 5):
        with torch.no_grad():
            direct = F.normalize(loaded.embedder(loaded.preprocess.load(faces / paths[row])[None]), dim=1)
        np.testing.assert_allclose(data["embeddings"][row], direct[0].numpy(), atol=1e-5)


def test_flat_folder_has_no_labels(setup, tmp_path):
    faces, checkpoint = setup
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(faces.glob("id0[01]/img00.png")):
        shutil.copy(path, flat / f"{path.parent.name}.png")
    (flat / ".hidden.png").write_bytes(b"ignored")
    (flat / "notes.txt").write_text("ignored")

    assert find_images(flat) == ([flat / "id00.png", flat / "id01.png"], False)
    result = embed_folder(flat, tmp_path / "flat.npz", checkpoint=checkpoint, device=CPU)
    data = load_npz(result.out)
    assert "labels" not in data
    assert data["paths"].tolist() == ["id00.png", "id01.png"]


def test_csv_matches_npz(setup, reference, tmp_path):
    faces, checkpoint = setup
    npz = reference[1]
    # The reference's batch size: the same batches give the same floats, and 9 digits round-trip them.
    result = embed_folder(faces, tmp_path / "e.csv", checkpoint=checkpoint, fmt="csv", batch_size=4, device=CPU)

    with result.out.open(newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["path", "label"] + [f"e{i}" for i in range(8)]
    assert len(rows) == 1 + 9
    assert [r[0] for r in rows[1:]] == npz["paths"].tolist()
    assert [r[1] for r in rows[1:]] == npz["labels"].tolist()
    values = np.array([[float(v) for v in r[2:]] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(values, npz["embeddings"])


def test_unreadable_file_is_skipped_and_reported(setup, reference, tmp_path):
    faces, checkpoint = setup
    clean = reference[1]
    copy = shutil.copytree(faces, tmp_path / "faces")
    (copy / "id00" / "broken.png").write_bytes(b"not an image")

    result = embed_folder(copy, tmp_path / "e.npz", checkpoint=checkpoint, batch_size=2, device=CPU)
    assert result.count == 9
    assert len(result.skipped) == 1
    path, reason = result.skipped[0]
    assert path == "id00/broken.png" and "broken.png" in reason
    data = load_npz(result.out)
    assert data["paths"].tolist() == clean["paths"].tolist()
    # Other batches than the reference's (the skipped file leaves a gap): float32 rounding differs by
    # about 1e-6 on some CPUs, so compare as the direct check above does.
    np.testing.assert_allclose(data["embeddings"], clean["embeddings"], atol=1e-5)


def test_folder_of_only_unreadable_files_is_an_error(setup, tmp_path):
    _, checkpoint = setup
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="none of the 1 images"):
        embed_folder(tmp_path / "bad", tmp_path / "e.npz", checkpoint=checkpoint, device=CPU)
    assert not (tmp_path / "e.npz").exists()


def test_exactly_one_model_source_and_a_known_format(setup, tmp_path):
    faces, checkpoint = setup
    with pytest.raises(ConfigError, match="exactly one"):
        embed_folder(faces, tmp_path / "e.npz", device=CPU)
    with pytest.raises(ConfigError, match="exactly one"):
        embed_folder(faces, tmp_path / "e.npz", checkpoint=checkpoint, model=checkpoint, device=CPU)
    with pytest.raises(ConfigError, match="unknown output format 'parquet'"):
        embed_folder(faces, tmp_path / "e.npz", checkpoint=checkpoint, fmt="parquet", device=CPU)


def test_missing_or_empty_folder_is_a_data_error(setup, tmp_path):
    _, checkpoint = setup
    with pytest.raises(DataError, match="does not exist"):
        embed_folder(tmp_path / "nope", tmp_path / "e.npz", checkpoint=checkpoint, device=CPU)
    empty = tmp_path / "empty"
    (empty / "id00").mkdir(parents=True)
    (empty / "id00" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no images in '.*empty'.*\.png"):
        embed_folder(empty, tmp_path / "e.npz", checkpoint=checkpoint, device=CPU)


class Normalised(torch.nn.Module):
    """What an exported model computes: the embedder followed by L2 normalisation."""

    def __init__(self, embedder: torch.nn.Module) -> None:
        super().__init__()
        self.embedder = embedder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embedder(images), dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit.*:FutureWarning")
def test_exported_model_gives_the_checkpoint_embeddings(setup, reference, tmp_path):
    faces, checkpoint = setup
    loaded = load_model(checkpoint, CPU)
    exported = tmp_path / "model.ts"
    scripted = torch.jit.script(Normalised(loaded.embedder).eval())
    metadata = ModelMetadata.from_config(loaded.config).to_json()
    torch.jit.save(scripted, str(exported), _extra_files={METADATA_NAME: metadata})

    from_checkpoint = reference[1]
    from_model = load_npz(embed_folder(faces, tmp_path / "b.npz", model=exported, device=CPU).out)
    assert from_model["paths"].tolist() == from_checkpoint["paths"].tolist()
    np.testing.assert_allclose(from_model["embeddings"], from_checkpoint["embeddings"], atol=1e-5)


def test_cli_embed_and_its_exit_code_for_skipped_files(setup, tmp_path):
    from typer.testing import CliRunner

    from facetrain.cli import app

    faces, checkpoint = setup
    runner = CliRunner()
    ok = runner.invoke(app, ["embed", "--checkpoint", str(checkpoint), "--images", str(faces),
                             "--out", str(tmp_path / "e.npz"), "--workers", "0"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert f"embeddings: {tmp_path / 'e.npz'} (" in ok.stdout and "images/s" in ok.stdout
    broken = tmp_path / "broken"
    shutil.copytree(faces, broken)
    (broken / "id00" / "zz.png").write_bytes(b"not an image")
    partial = runner.invoke(app, ["embed", "--checkpoint", str(checkpoint), "--images", str(broken),
                                  "--out", str(tmp_path / "p.npz"), "--workers", "0"])  # fmt: skip
    assert partial.exit_code == 3
    assert "skipped: id00/zz.png" in partial.stderr and "1 unreadable files skipped" in partial.stderr
    assert load_npz(tmp_path / "p.npz")["embeddings"].shape[0] == load_npz(tmp_path / "e.npz")["embeddings"].shape[0]


def test_embed_align_detects_aligns_and_skips_photos_without_a_face(setup, tmp_path):
    from conftest import ORL, background, paste
    from PIL import Image
    from typer.testing import CliRunner

    from facetrain.cli import app
    from facetrain.data import Aligner

    _, checkpoint = setup
    photos = tmp_path / "photos"
    for name, (face, x) in {"a": (ORL / "s1" / "1.pgm", 30), "b": (ORL / "s2" / "1.pgm", 90)}.items():
        (photos / name).mkdir(parents=True)
        scene = paste(background(260, 220, seed=x), face, 1.3, x, 40)
        Image.fromarray(scene.permute(1, 2, 0).numpy()).save(photos / name / "1.png")
    Image.fromarray(background(200, 200).permute(1, 2, 0).numpy()).save(photos / "a" / "empty.png")
    result = CliRunner().invoke(app, ["embed", "--checkpoint", str(checkpoint), "--images", str(photos),
                                      "--out", str(tmp_path / "e.npz"), "--workers", "0", "--align"])  # fmt: skip
    assert result.exit_code == 3, result.output
    assert "skipped: a/empty.png: no face of at least 20 px found" in result.stderr
    assert "1 files skipped (unreadable, or no face found)" in result.stderr
    data = load_npz(tmp_path / "e.npz")
    assert data["paths"].tolist() == ["a/1.png", "b/1.png"]
    # Each row is the embedding of the aligned 112x112 crop under the model's own preprocessing.
    loaded = load_model(checkpoint, CPU)
    crop = Aligner().crop_file(photos / "b" / "1.png")
    with torch.no_grad():
        direct = F.normalize(loaded.embedder(loaded.preprocess(crop)[None]), dim=1)
    np.testing.assert_allclose(data["embeddings"][1], direct[0].numpy(), atol=1e-5)
    unaligned = embed_folder(photos / "b", tmp_path / "u.npz", checkpoint=checkpoint, device=CPU)
    assert unaligned.count == 1 and not np.allclose(load_npz(tmp_path / "u.npz")["embeddings"][0], direct[0].numpy())
