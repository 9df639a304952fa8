"""Sub-center ArcFace outlier report: the geometry on hand-built angles, and the two CLI routes."""

import math
import shutil

import pytest
import torch
from conftest import make_faces, tiny_config
from typer.testing import CliRunner

from facetrain.checkpoint import load_checkpoint, save_checkpoint
from facetrain.cli import app
from facetrain.config import dump_config
from facetrain.diagnostics.outliers import TSV_COLUMNS, candidate_records, subcenter_angles

runner = CliRunner()
HEADER = "\t".join(TSV_COLUMNS)


def at(*degrees: float, scale: float = 1.0) -> torch.Tensor:
    """(len, 2) vectors at the given angles in the plane, of length ``scale``."""
    radians = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return scale * torch.stack([radians.cos(), radians.sin()], dim=1)


# Class 0: sub-centres at 0 and 90 degrees; class 1: at 180 and 270 (raw, not unit length).
SUBCENTERS = torch.stack([at(0.0, 90.0, scale=3.0), at(180.0, 270.0, scale=0.5)])  # (C=2, K=2, D=2)
# Sample angles and labels. Class 0: four near 0 (sub-centre 0 dominant), one at 60 (nearest 1,
# 60 from the dominant one: a candidate under 75), one at 80 (nearest 1, flagged). Class 1: two near
# 180 and one at 265 (nearest 1, 85 from the dominant one: flagged).
SAMPLE_DEGREES = (10.0, -20.0, 5.0, 30.0, 60.0, 80.0, 190.0, 200.0, 265.0)
LABELS = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 1])


def test_dominant_candidates_and_angles_match_hand_computed_values():
    embeddings = at(*SAMPLE_DEGREES, scale=7.0).float()  # raw float32 embeddings are normalised inside
    angles = subcenter_angles(embeddings, LABELS, SUBCENTERS.float())
    assert angles.nearest.tolist() == [0, 0, 0, 0, 1, 1, 0, 0, 1]
    assert angles.dominant_of_class.tolist() == [0, 0]
    assert angles.candidate.tolist() == [False, False, False, False, True, True, False, False, True]
    assert angles.flagged.tolist() == [False, False, False, False, False, True, False, False, True]
    expected = [10.0, 20.0, 5.0, 30.0, 60.0, 80.0, 10.0, 20.0, 85.0]  # to the dominant sub-centre
    assert angles.angle_to_dominant.tolist() == pytest.approx(expected, abs=1e-4)
    assert angles.subcenter_gap.tolist() == pytest.approx([0, 0, 0, 0, 90, 90, 0, 0, 90], abs=1e-4)

    looser = subcenter_angles(embeddings, LABELS, SUBCENTERS.float(), angle_threshold=50.0)
    assert looser.flagged.tolist() == [False, False, False, False, True, True, False, False, True]


def degrees_between(u: list[float], v: list[float]) -> float:
    """The textbook angle, for reference: acos of the clamped cosine, in float64 Python math."""
    dot = sum(a * b for a, b in zip(u, v, strict=True))
    return math.degrees(math.acos(max(-1.0, min(1.0, dot / (math.hypot(*u) * math.hypot(*v))))))


def test_angles_in_three_dimensions_agree_with_math():
    # One class, K = 3 sub-centres in general position.
    subcenters = torch.tensor([[[1.0, 0.2, -0.1], [0.1, 1.0, 0.3], [-0.4, 0.2, 1.0]]], dtype=torch.float64)
    embeddings = torch.tensor(
        [[2.0, 0.1, 0.0], [1.0, 0.5, -0.3], [3.0, -0.2, 0.4], [0.5, 0.1, 1.0], [-1.0, 0.2, -0.1]], dtype=torch.float64
    )
    angles = subcenter_angles(embeddings, torch.zeros(5, dtype=torch.long), subcenters)

    centers = subcenters[0].tolist()
    table = [[degrees_between(vector, center) for center in centers] for vector in embeddings.tolist()]
    nearest = [row.index(min(row)) for row in table]
    assert nearest == [0, 0, 0, 2, 2]  # the geometry is what the test means it to be
    assert angles.nearest.tolist() == nearest and angles.dominant.tolist() == [0] * 5
    assert angles.angle_to_dominant.tolist() == pytest.approx([row[0] for row in table], abs=1e-4)
    gap = degrees_between(centers[2], centers[0])
    assert angles.subcenter_gap.tolist() == pytest.approx([0, 0, 0, gap, gap], abs=1e-4)
    # Sample 4 points away from sub-centre 0 (over 75 degrees), sample 3 does not.
    assert table[3][0] < 75.0 < table[4][0]
    assert angles.flagged.tolist() == [False, False, False, False, True]


def test_ties_go_to_the_lowest_sub_centre():
    subcenters = at(45.0, -45.0).unsqueeze(0).expand(3, 2, 2)  # three classes, the same two sub-centres
    # Class 0: one sample nearest each sub-centre (count tie -> 0). Class 1: two of three nearest
    # sub-centre 1 (-> 1). Class 2: one sample exactly between them (nearest tie -> 0).
    embeddings = at(40.0, -40.0, -40.0, -30.0, 40.0, 0.0, scale=2.0)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    angles = subcenter_angles(embeddings, labels, subcenters)
    assert angles.nearest.tolist() == [0, 1, 1, 1, 0, 0]
    assert angles.dominant_of_class.tolist() == [0, 1, 0]
    assert angles.candidate.tolist() == [False, True, False, False, True, False]
    assert angles.angle_to_dominant.tolist() == pytest.approx([5, 85, 5, 15, 85, 45], abs=1e-4)
    # A class with no samples still gets a dominant sub-centre (the lowest); a zero embedding is
    # 90 degrees from everything.
    zero = subcenter_angles(torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), subcenters)
    assert zero.dominant_of_class.tolist() == [0, 0, 0]
    assert float(zero.angle_to_dominant[0]) == pytest.approx(90.0, abs=1e-6)


def test_planted_mislabelled_sample_is_the_first_row_and_flagged():
    degrees = (*SAMPLE_DEGREES, 170.0)  # labelled class 0, but it lies across the circle from sub-centre 0
    labels = torch.cat([LABELS, torch.tensor([0])])
    angles = subcenter_angles(at(*degrees), labels, SUBCENTERS)
    paths = [f"faces/id{label}/img{index}.png" for index, label in enumerate(labels.tolist())]
    records = candidate_records(angles, paths, [f"id{label}" for label in labels.tolist()])
    assert [record.path for record in records] == [paths[9], paths[8], paths[5], paths[4]]
    planted = records[0]
    assert planted.flagged and planted.identity == "id0"
    assert (planted.nearest_subcenter, planted.dominant_subcenter) == (1, 0)
    assert planted.angle_to_dominant_deg == pytest.approx(170.0, abs=1e-4)
    assert planted.subcenter_gap_deg == pytest.approx(90.0, abs=1e-4)


# ---------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short subcenter_arcface run with --report-outliers, shared by the CLI tests (not modified)."""
    root = tmp_path_factory.mktemp("outliers")
    faces = make_faces(root / "faces", identities=4, per_identity=8)
    config = tiny_config(faces, root / "run", head={"type": "subcenter_arcface", "k": 2}, train={"epochs": 1})
    path = root / "subcenter.yaml"
    path.write_text(dump_config(config))
    result = runner.invoke(
        app, ["train", "--config", str(path), "--no-progress", "--device", "cpu", "--report-outliers"]
    )
    return root, result


def read_rows(path):
    lines = path.read_text().splitlines()
    return lines[0], [line.split("\t") for line in lines[1:]]


def test_train_with_report_outliers_writes_the_tsv(trained):
    root, result = trained
    assert result.exit_code == 0, result.output
    tsv = root / "run" / "outliers.tsv"
    assert f"outliers: {tsv}" in result.stdout
    header, rows = read_rows(tsv)
    assert header == HEADER
    # The summary's counts describe the file: one row per candidate, flags over 75 degrees.
    summary = next(line for line in result.stdout.splitlines() if line.startswith("outliers: 32 images checked"))
    assert f", {len(rows)} listed (nearest a non-dominant sub-centre, or flagged)" in summary
    assert f", {sum(row[6] == 'true' for row in rows)} flagged over 75 degrees" in summary
    assert rows, "a 1-epoch run with 2 sub-centres per class leaves some images nearest the other one"
    angles = [float(row[4]) for row in rows]
    assert angles == sorted(angles, reverse=True)
    for path, identity, nearest, dominant, angle, gap, flagged in rows:
        assert (root / "faces" / identity / path.rsplit("/", 1)[-1]).is_file()
        assert (nearest != dominant or flagged == "true") and {nearest, dominant} <= {"0", "1"}
        assert (float(gap) > 0.0) == (nearest != dominant) and float(gap) <= 180.0
        assert flagged == ("true" if float(angle) > 75.0 else "false")


def test_outliers_command_gives_the_same_file(trained, tmp_path):
    root, _ = trained
    result = runner.invoke(
        app,
        [
            "outliers",
            "--checkpoint",
            str(root / "run" / "last.pt"),
            "--out",
            str(tmp_path / "again.tsv"),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again.tsv").read_text() == (root / "run" / "outliers.tsv").read_text()
    # Default --out: outliers.tsv beside the checkpoint; --angle 0 flags, and so lists, every image.
    copy = tmp_path / "copy" / "last.pt"
    copy.parent.mkdir()
    shutil.copy(root / "run" / "last.pt", copy)
    result = runner.invoke(app, ["outliers", "--checkpoint", str(copy), "--angle", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    header, rows = read_rows(copy.parent / "outliers.tsv")
    assert header == HEADER and all(row[6] == "true" for row in rows)
    assert f"images checked, {len(rows)} listed" in result.stdout
    assert f"outliers: {len(rows)} images checked" in result.stdout  # every image is over 0 degrees
    first = {row[0]: row[:6] for row in read_rows(root / "run" / "outliers.tsv")[1]}
    assert all(first[row[0]] == row[:6] for row in rows if row[0] in first) and first.keys() <= {r[0] for r in rows}


def test_report_outliers_needs_a_subcenter_head_and_refuses_before_training(faces, tmp_path):
    config = tmp_path / "arcface.yaml"
    config.write_text(dump_config(tiny_config(faces, tmp_path / "run")))
    result = runner.invoke(app, ["train", "--config", str(config), "--report-outliers"])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.output
    assert "head.type is 'arcface'" in result.stderr and "--set head.type=subcenter_arcface" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing was trained


def test_resume_checks_the_head_of_the_checkpoint(trained, tmp_path):
    root, _ = trained
    # A resumed subcenter run reports too (its config comes from the checkpoint).
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(root / "run" / "last.pt", resumed / "last.pt")
    args = ["--set", f"run_dir={resumed}", "--set", "train.epochs=2", "--no-progress", "--report-outliers"]
    result = runner.invoke(app, ["train", "--resume", str(resumed / "last.pt"), *args])
    assert result.exit_code == 0, result.output
    assert "(epoch 2," in result.stdout and read_rows(resumed / "outliers.tsv")[0] == HEADER

    # The same checkpoint claiming an arcface head is refused before training, by both routes.
    state = load_checkpoint(root / "run" / "last.pt")
    state["config"]["head"] = {"type": "arcface", "s": 16.0, "m": 0.2}
    arcface = save_checkpoint(state, tmp_path / "arcface" / "last.pt")
    result = runner.invoke(app, ["train", "--resume", str(arcface), "--set", f"run_dir={tmp_path / 'arcface'}", *args])
    assert result.exit_code == 2, result.output
    assert f"checkpoint '{arcface}': head.type is 'arcface'" in result.stderr
    assert [path.name for path in arcface.parent.iterdir()] == ["last.pt"]  # no training started
    result = runner.invoke(app, ["outliers", "--checkpoint", str(arcface)])
    assert result.exit_code == 2 and "head.type is 'arcface'" in result.stderr
    assert "Traceback" not in result.output


def test_training_folder_that_lost_an_identity_is_refused(trained, tmp_path):
    root, _ = trained
    changed = tmp_path / "faces"
    shutil.copytree(root / "faces", changed)
    shutil.rmtree(changed / "id03")
    state = load_checkpoint(root / "run" / "last.pt")
    state["config"]["data"]["root"] = str(changed)
    checkpoint = save_checkpoint(state, tmp_path / "moved" / "last.pt")
    result = runner.invoke(app, ["outliers", "--checkpoint", str(checkpoint)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.output
    assert f"data.root '{changed}'" in errors[0] and "lacks id03" in errors[0]
    assert not (checkpoint.parent / "outliers.tsv").exists()


def test_outlier_angle_needs_report_outliers(faces, tmp_path):
    config = tmp_path / "arcface.yaml"
    config.write_text(dump_config(tiny_config(faces, tmp_path / "run")))
    result = runner.invoke(app, ["train", "--config", str(config), "--outlier-angle", "60"])
    assert result.exit_code == 2 and "--outlier-angle applies to --report-outliers" in result.output
    assert not (tmp_path / "run").exists()


def test_an_image_far_from_every_subcentre_of_its_class_is_flagged():
    """The paper's rule: over the threshold from the dominant sub-centre, even when that is the nearest."""
    subcenters = torch.stack([at(0.0, 90.0), at(180.0, 270.0)])
    # Class 0: three near 0, and one at -80 (nearest is still sub-centre 0, 80 degrees away).
    embeddings, labels = at(5.0, 10.0, -5.0, -80.0, 180.0), torch.tensor([0, 0, 0, 0, 1])
    angles = subcenter_angles(embeddings, labels, subcenters)
    assert angles.nearest.tolist() == [0, 0, 0, 0, 0] and angles.dominant.tolist() == [0, 0, 0, 0, 0]
    assert angles.flagged.tolist() == [False, False, False, True, False]
    assert angles.candidate.tolist() == [False, False, False, True, False]
    assert angles.subcenter_gap[3].item() == 0.0
    [record] = candidate_records(angles, [f"img{i}" for i in range(5)], ["a"] * 4 + ["b"])
    assert (record.path, record.flagged, record.nearest_subcenter) == ("img3", True, 0)
    assert record.angle_to_dominant_deg == pytest.approx(80.0, abs=1e-9)
