"""IJB 1:1 and 1:N: the release's files, template pooling, both TAR@FAR rules, CMC and TPIR@FPIR,
checked against the slow direct computation of ``ijb_set``; and ``facetrain eval --ijb`` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from ijb_set import (
    build_faces,
    build_layout,
    direct_identification,
    direct_tar,
    direct_templates,
)
from PIL import Image
from typer.testing import CliRunner

from facetrain.cli import app
from facetrain.data import Aligner, crop_with_landmarks
from facetrain.data.align.geometry import umeyama, warp
from facetrain.data.align.options import template
from facetrain.errors import DataError
from facetrain.evaluation.ijb.features import LooseCrops
from facetrain.evaluation.ijb.protocol import read_protocol
from facetrain.evaluation.ijb.run import FAR_TARGETS, run_ijb
from facetrain.evaluation.ijb.templates import PoolMode, pool_templates

runner = CliRunner()


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    return build_layout(tmp_path_factory.mktemp("ijb_layout"), templates=64, subjects=16)


@pytest.fixture(scope="module")
def features(layout) -> Path:
    """Per-image features: a subject direction plus noise, with norms that vary (so the norm weights)."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((16, 24))
    rows = [centres[layout.subject_of[tid]] * 0.6 + rng.standard_normal(24) for _, tid, _ in layout.rows]
    array = np.array(rows, dtype=np.float32) * rng.uniform(0.2, 3.0, (len(rows), 1)).astype(np.float32)
    path = layout.root / "features.npy"
    np.save(path, array)
    return path


def pair_scores(layout, templates: dict[int, np.ndarray]) -> tuple[list[float], list[bool]]:
    ids = sorted(layout.subject_of)
    scores, labels = [], []
    for i, first in enumerate(ids):
        for second in ids[i + 1 :]:
            scores.append(float(templates[first] @ templates[second]))
            labels.append(layout.subject_of[first] == layout.subject_of[second])
    return scores, labels


@pytest.mark.parametrize("norm,detector", [(True, True), (False, False), (True, False)])
def test_11_matches_the_direct_computation_under_both_rules(layout, features, norm, detector):
    protocol = read_protocol(layout.root, "IJBC", "11", need_images=False)
    report = run_ijb(protocol, features_file=features, mode=PoolMode(norm, detector))
    scores, labels = pair_scores(layout, direct_templates(layout, np.load(features), norm, detector))
    assert torch.allclose(report.scores.double(), torch.tensor(scores, dtype=torch.float64), atol=1e-5)
    assert report.impostor == len(labels) - sum(labels) and report.genuine == sum(labels)
    measured = 0
    for key, far in FAR_TARGETS.items():
        strict, nearest = direct_tar(report.scores.tolist(), labels, far)
        assert report.tar_at_far[key] == pytest.approx(strict) if strict is not None else report.tar_at_far[key] is None
        assert report.tar_at_far_insightface[key] == pytest.approx(nearest)
        measured += strict is not None
    assert measured == 3  # 1e-3 .. 1e-1 from ~2000 impostor pairs; 1e-4 and finer are n/a
    assert report.tar_at_far["1e-4"] is None


def test_the_norm_and_score_switches_change_the_templates(layout, features):
    protocol = read_protocol(layout.root, "IJBC", "11", need_images=False)
    kept = run_ijb(protocol, features_file=features, mode=PoolMode(True, True)).scores
    normalised = run_ijb(protocol, features_file=features, mode=PoolMode(False, True)).scores
    assert (kept - normalised).abs().max() > 1e-3


def test_single_image_templates_and_media(layout, features):
    """A one-image template's feature is its image's, normalised; a one-image media is that image."""
    array = torch.from_numpy(np.load(features))
    images = read_protocol(layout.root, "IJBC", "11", need_images=False).images
    pooled = pool_templates(array, images.templates, images.medias, images.scores, PoolMode())
    counts = np.bincount(images.templates)
    single = int(np.flatnonzero(counts == 1)[0])
    row = int(np.flatnonzero(images.templates == single)[0])
    expected = torch.nn.functional.normalize(array[row : row + 1], dim=1)[0]
    assert torch.allclose(pooled.features[np.searchsorted(pooled.ids, single)], expected, atol=1e-6)


def test_1n_matches_the_direct_computation(layout, features):
    protocol = read_protocol(layout.root, "IJBC", "1n", need_images=False)
    report = run_ijb(protocol, features_file=features)
    templates = direct_templates(layout, np.load(features))
    galleries = [list(g.templates) for g in protocol.galleries]
    probes = list(protocol.probes.templates)
    for key, far in (("1e-1", 0.1), ("1e-2", 0.01)):
        cmc, standard, pooled = direct_identification(layout, templates, galleries, probes, far)
        assert [report.cmc[f"rank-{k}"] for k in (1, 5, 10)] == pytest.approx([cmc[1], cmc[5], cmc[10]])
        assert report.tpir_at_fpir_insightface[key] == pytest.approx(pooled)  # pools 48 x 16 non-mate scores
        if far * 24 < 1:  # each gallery leaves 24 probes non-mated: FPIR 1e-2 is not measurable
            assert report.tpir_at_fpir["G1"][key] is None and report.tpir_at_fpir["mean"][key] is None
            continue
        assert [report.tpir_at_fpir[g][key] for g in ("G1", "G2")] == pytest.approx(standard)
        assert report.tpir_at_fpir["mean"][key] == pytest.approx(sum(standard) / 2)
    assert report.cmc["rank-1"] <= report.cmc["rank-5"] <= report.cmc["rank-10"] <= 1.0
    assert report.probes_without_mate == 0 and report.probes == len(probes)


def copy_meta(source: Path, root: Path) -> Path:
    (root / "meta").mkdir(parents=True)
    for path in (source / "meta").iterdir():
        (root / "meta" / path.name).write_text(path.read_text())
    return root / "meta"


def test_duplicate_gallery_subjects_rank_by_the_best_mate(tmp_path, layout, features):
    """Templates 17 and 18 (subjects 0 and 1) move from the probes to G1: two gallery templates each."""
    meta = copy_meta(layout.root, tmp_path / "dup")
    probes_file, g1 = meta / "ijbc_1N_probe_mixed.csv", meta / "ijbc_1N_gallery_G1.csv"
    lines = probes_file.read_text().splitlines()
    moved = [line for line in lines[1:] if line.split(",")[0] in ("17", "18")]
    probes_file.write_text("\n".join(line for line in lines if line not in moved) + "\n")
    g1.write_text(g1.read_text() + "\n".join(moved) + "\n")
    protocol = read_protocol(tmp_path / "dup", "IJBC", "1n", need_images=False)
    assert 17 not in protocol.probes.templates and len(protocol.galleries[0].templates) == 10
    report = run_ijb(protocol, features_file=features)
    templates = direct_templates(layout, np.load(features))
    galleries = [list(g.templates) for g in protocol.galleries]
    cmc, standard, pooled = direct_identification(layout, templates, galleries, list(protocol.probes.templates), 0.1)
    assert report.cmc["rank-1"] == pytest.approx(cmc[1]) and report.cmc["rank-10"] == pytest.approx(cmc[10])
    assert report.tpir_at_fpir["G1"]["1e-1"] == pytest.approx(standard[0])
    assert report.tpir_at_fpir_insightface["1e-1"] == pytest.approx(pooled)  # the best mate is the positive
    assert report.probes == 46


def test_ties_count_against_the_probe(layout, tmp_path):
    """A model that says nothing (every feature equal) must not rank anyone first."""
    same = tmp_path / "same.npy"
    np.save(same, np.ones((len(layout.rows), 8), np.float32))
    report = run_ijb(read_protocol(layout.root, "IJBC", "1n", need_images=False), features_file=same)
    assert report.cmc["rank-1"] == 0.0 and report.tpir_at_fpir["G1"]["1e-1"] == 0.0


def cli(*args: str | Path):
    return runner.invoke(app, ["eval", *map(str, args)])


def test_cli_features_gives_the_direct_numbers(layout, features, tmp_path):
    out = tmp_path / "ijb.json"
    result = cli("--ijb", layout.root, "--features", features, "--json", out, "--plot", tmp_path / "roc.png")
    assert result.exit_code == 0, result.output
    assert "IJBC 1:1 verification" in result.stdout and "insightface (nearest FAR)" in result.stdout
    assert "n/a" in result.stdout and "feature norm kept" in result.stdout
    data = json.loads(out.read_text())["ijb"]
    scores, labels = pair_scores(layout, direct_templates(layout, np.load(features)))
    strict, nearest = direct_tar(scores, labels, 1e-2)
    assert data["tar_at_far"]["1e-2"] == pytest.approx(strict, abs=1e-9)
    assert data["tar_at_far_insightface"]["1e-2"] == pytest.approx(nearest, abs=1e-9)
    assert (tmp_path / "roc.png").stat().st_size > 10_000
    result = cli("--ijb", layout.root, "--features", features, "--protocol", "1n", "--no-norm")
    assert result.exit_code == 0, result.output
    assert "closed set (G1 ∪ G2): rank-1" in result.stdout and "insightface (pooled non-mates)" in result.stdout
    assert "image features normalised" in result.stdout


def one_line(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_bad_protocol_files_are_one_line(layout, features, tmp_path):
    root = tmp_path / "bad"
    (root / "meta").mkdir(parents=True)
    for path in (layout.root / "meta").iterdir():
        (root / "meta" / path.name).write_text(path.read_text())
    meta = root / "meta"
    pairs = meta / "ijbc_template_pair_label.txt"
    original = pairs.read_text()
    pairs.write_text(original + "1 99999 0\n")
    one_line(cli("--ijb", root, "--features", features), "template 99999 has no images in the face_tid_mid file")
    pairs.write_text("1 2 7\n")
    one_line(cli("--ijb", root, "--features", features), "line 1: label 7")
    pairs.write_text("1 2 0\n1 3 0\n")
    one_line(cli("--ijb", root, "--features", features), "0 genuine and 2 impostor pairs: 1:1 verification needs both")
    pairs.write_text(original)
    points = meta / "ijbc_name_5pts_score.txt"
    lines = points.read_text().splitlines()
    points.write_text("\n".join([lines[0], "2.jpg 1 2 3", *lines[2:]]) + "\n")
    one_line(cli("--ijb", root, "--features", features), "ijbc_name_5pts_score.txt, line 2: 4 fields")
    points.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")
    one_line(cli("--ijb", root, "--features", features), "line 1: image '1.jpg'", "same order")
    points.write_text("\n".join(lines) + "\n")
    one_line(cli("--ijb", root, "--features", features, "--target", "IJBA"), "unknown IJB target 'IJBA'")
    one_line(cli("--ijb", root, "--features", features, "--target", "IJBB"), "ijbb_name_5pts_score.txt' is missing")
    one_line(cli("--ijb", root, "--features", features, "--protocol", "1n", "--plot", tmp_path / "p.png"),
             "--plot draws the 1:1 ROC")  # fmt: skip
    one_line(cli("--ijb", root), "give the model to score")
    ids = meta / "ijbc_face_tid_mid.txt"
    ids_text = ids.read_text()
    ids.write_bytes(ids_text.encode().replace(b"\n", b"\n\xe9", 1))
    one_line(cli("--ijb", root, "--features", features), "face_tid_mid.txt, line 2: byte 0xe9 is not UTF-8 text")
    ids.write_text(ids_text)
    points.write_bytes(b"\xef\xbb\xbf" + points.read_bytes())  # a byte-order mark an editor added: read past
    assert cli("--ijb", root, "--features", features).exit_code == 0
    pairs.unlink()
    pairs.mkdir()
    one_line(cli("--ijb", root, "--features", features), "template_pair_label.txt' is a folder, not a file")
    one_line(cli("--ijb", tmp_path / "nowhere", "--features", features), "--ijb")


def test_bad_features_files_are_one_line(layout, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 8), np.float32))
    n = len(layout.rows)
    one_line(cli("--ijb", layout.root, "--features", wrong), f"has 3 rows, but the meta files list {n} images")
    cube = tmp_path / "cube.npy"
    np.save(cube, np.ones((n, 4, 2), np.float32))  # the right count of rows, but not one row per image
    one_line(cli("--ijb", layout.root, "--features", cube), f"has shape ({n}, 4, 2), not one row of features per image")
    zeros = tmp_path / "zeros.npy"
    np.save(zeros, np.zeros((n, 8), np.float32))  # every score would tie
    one_line(cli("--ijb", layout.root, "--features", zeros), "zeros.npy' holds only zeros")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}] * len(layout.rows), dtype=object), allow_pickle=True)
    one_line(cli("--ijb", layout.root, "--features", objects), "holds Python objects")
    text = tmp_path / "text.npy"
    text.write_text("not numpy\n")
    one_line(cli("--ijb", layout.root, "--features", text), "text.npy' is not a .npy file (numpy.save writes one)")
    archive = tmp_path / "archive.npz"
    np.savez(archive, features=np.zeros((len(layout.rows), 8), np.float32))
    one_line(cli("--ijb", layout.root, "--features", archive), "is an .npz archive, not one array")
    empty = tmp_path / "empty.npy"
    empty.write_bytes(b"")
    one_line(cli("--ijb", layout.root, "--features", empty), "is empty")
    one_line(cli("--ijb", layout.root, "--features", tmp_path / "missing.npy"), "--features", "missing.npy")


@pytest.fixture(scope="module")
def faces_set(tmp_path_factory):
    return build_faces(tmp_path_factory.mktemp("ijb_faces"))


def test_loose_crops_are_aligned_as_facetrain_align_crops(faces_set):
    images = read_protocol(faces_set.root, "IJBC", "11", need_images=True).images
    from facetrain.data import Preprocess

    crops = LooseCrops(faces_set.root / "loose_crop", images, Preprocess(112))
    aligned = Aligner().align_files([faces_set.root / "loose_crop" / images.names[0]])[0].crops[0]
    difference = (crops[0].float() - aligned.float()).abs()
    assert difference.mean() < 2.0  # the same warp; landmarks found on the JPEG vs the scene differ slightly


def test_cli_end_to_end_on_faces_and_saved_features_agree(faces_set, orl_checkpoint, tmp_path):
    checkpoint = orl_checkpoint
    saved, first, second = tmp_path / "f.npy", tmp_path / "a.json", tmp_path / "b.json"
    result = cli("--checkpoint", checkpoint, "--ijb", faces_set.root, "--save-features", saved, "--json", first)
    assert result.exit_code == 0, result.output
    assert np.load(saved).shape == (len(faces_set.rows), 32)
    again = cli("--ijb", faces_set.root, "--features", saved, "--json", second)
    assert again.exit_code == 0, again.output
    a, b = json.loads(first.read_text())["ijb"], json.loads(second.read_text())["ijb"]
    assert a["tar_at_far"] == b["tar_at_far"] and a["roc_auc"] == b["roc_auc"]
    assert a["templates"] == 19 and a["genuine"] == 10  # 8 x (a, b); subject 0 has a third, one-image template
    result = cli("--checkpoint", checkpoint, "--ijb", faces_set.root, "--protocol", "1n")
    assert result.exit_code == 0, result.output
    assert "2 probes have no mate in the galleries" in result.stdout


def test_options_that_do_not_apply_and_clashing_outputs_are_one_line(layout, features, tmp_path):
    base = ("--ijb", layout.root, "--features", features)
    one_line(cli(*base, "--no-flip"), "always adds the mirror's features")
    one_line(cli(*base, "--folds", "3"), "--folds applies to pairs lists")
    one_line(cli(*base, "--images", tmp_path), "--images applies to pairs lists")
    one_line(cli(*base, "--workers", "2"), "which --features skips")
    one_line(cli(*base, "--json", tmp_path / "x", "--plot", tmp_path / "x"), "name the same file")
    one_line(cli("--pairs", features, "--checkpoint", features, "--no-norm"), "--norm/--no-norm goes with --ijb")


def test_a_bad_number_names_its_line(layout, tmp_path):
    meta = copy_meta(layout.root, tmp_path / "lines")
    pairs = meta / "ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    pairs.write_text("\n".join([*lines[:4], "1 two 0", *lines[5:]]) + "\n")
    with pytest.raises(DataError, match=r"template_pair_label.txt, line 5: field 2 'two' is not a number"):
        read_protocol(tmp_path / "lines", "IJBC", "11", need_images=False)
    g2 = meta / "ijbc_1N_gallery_G2.csv"
    rows = g2.read_text().splitlines()
    g2.write_text("\n".join([*rows[:3], "x,1", *rows[3:]]) + "\n")
    with pytest.raises(DataError, match=r"gallery_G2.csv, line 4: field 1 'x' is not a number"):
        read_protocol(tmp_path / "lines", "IJBC", "1n", need_images=False)


def test_a_missing_loose_crop_is_found_before_the_model_loads(faces_set, tmp_path):
    root = tmp_path / "ijb"
    shutil.copytree(faces_set.root, root)
    (root / "loose_crop" / faces_set.rows[40][0]).unlink()
    (root / "loose_crop" / faces_set.rows[41][0]).unlink()
    with pytest.raises(DataError, match=r"image '41.jpg' \(line 41 of the name_5pts_score file\) .*, nor is 1 more:"):
        read_protocol(root, "IJBC", "11", need_images=True)
    shutil.copy(faces_set.root / "loose_crop" / faces_set.rows[41][0], root / "loose_crop")
    alone = r"image '41.jpg' \(line 41 of the name_5pts_score file\) is not in '[^']*': give"
    with pytest.raises(DataError, match=alone):  # one image missing: nothing said of others
        read_protocol(root, "IJBC", "11", need_images=True)


def test_a_large_photo_decoded_small_crops_as_the_full_decode(tmp_path):
    """A big JPEG is decoded at 1/2 or 1/4 of its size; its odd sides must not shift the landmarks."""
    for width, height in ((2001, 1501), (4001, 3001)):
        low = torch.rand(3, height // 40, width // 40, generator=torch.Generator().manual_seed(width))
        pixels = torch.nn.functional.interpolate(low[None], size=(height, width), mode="bicubic")[0]
        path = tmp_path / f"{width}.jpg"
        Image.fromarray(pixels.clamp(0, 1).mul(255).byte().permute(1, 2, 0).numpy()).save(path, quality=95)
        points = np.array([[0.45, 0.45], [0.55, 0.45], [0.5, 0.52], [0.46, 0.6], [0.54, 0.6]]) * [width, height]
        full = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        expected = warp(full, umeyama(points, template(112, 112)), 112, 112)
        difference = (crop_with_landmarks(path, points).float() - expected.float()).abs().mean()
        assert difference < 0.8, (width, float(difference))  # a 1-px shift of the landmarks gives several


def test_a_gallery_csv_without_its_header_loses_no_row(tmp_path):
    from facetrain.evaluation.ijb.meta import read_enrolment

    rows = "1,10,a.jpg\n2,20,b.jpg\n"
    with_header, without = tmp_path / "with.csv", tmp_path / "without.csv"
    with_header.write_text("TEMPLATE_ID,SUBJECT_ID,FILENAME\n" + rows)
    without.write_text(rows)
    for path in (with_header, without):
        enrolment = read_enrolment(path)
        assert enrolment.templates.tolist() == [1, 2] and enrolment.subjects.tolist() == [10, 20], path
