"""Alignment: the similarity fit, the template, the warp, MTCNN on real and pasted faces, and ``facetrain align``."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ORL, background, paste
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from typer.testing import CliRunner

from facetrain.cli import app
from facetrain.data import scan_identities
from facetrain.data.align import (
    ARCFACE_112,
    Aligner,
    AlignOptions,
    Face,
    FaceDetector,
    align_folder,
    choose_face,
    parse_size,
    template,
    umeyama,
    warp,
)
from facetrain.data.align.aligner import Photo
from facetrain.data.align.geometry import apply
from facetrain.errors import ConfigError, DataError

FACES = [ORL / "s1" / "1.pgm", ORL / "s5" / "3.pgm", ORL / "s12" / "4.pgm", ORL / "s30" / "7.pgm"]


def similarity(scale: float, angle: float, shift: tuple[float, float]) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[scale * cos, -scale * sin, shift[0]], [scale * sin, scale * cos, shift[1]]])


def pixels(path: Path) -> torch.Tensor:
    return TF.pil_to_tensor(Image.open(path).convert("RGB"))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def save(tensor: torch.Tensor, path: Path, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tensor.permute(1, 2, 0).numpy()).save(path, **kwargs)
    return path


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


# --- the fit, the template and the warp ---------------------------------------------------------


@pytest.mark.parametrize("scale, angle", [(1.0, 0.0), (0.37, 0.4), (2.5, -1.2), (0.9, math.pi * 0.9)])
def test_umeyama_recovers_a_known_similarity_exactly(scale: float, angle: float) -> None:
    known = similarity(scale, angle, (13.5, -7.25))
    src = np.random.default_rng(0).uniform(0, 200, (5, 2))
    fitted = umeyama(src, apply(known, src))
    np.testing.assert_allclose(fitted, known, atol=1e-9)


def test_umeyama_is_the_least_squares_fit_and_never_reflects() -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    dst = apply(similarity(1.3, 0.2, (4, 5)), src) + rng.normal(0, 2, (5, 2))
    fitted = umeyama(src, dst)
    best = ((apply(fitted, src) - dst) ** 2).sum()
    for _ in range(200):  # any nearby similarity fits worse
        nudged = similarity(
            1.3 + rng.normal(0, 0.02), 0.2 + rng.normal(0, 0.02), tuple(rng.normal(0, 1, 2) + np.array([4, 5]))
        )
        assert ((apply(nudged, src) - dst) ** 2).sum() >= best - 1e-9
    mirrored = src * [-1, 1]  # the best similarity onto a mirror image is still a rotation
    assert np.linalg.det(umeyama(mirrored, src)[:, :2]) > 0


def test_templates_follow_insightface_sizes() -> None:
    np.testing.assert_allclose(template(112, 112), ARCFACE_112)
    np.testing.assert_allclose(template(224, 224), ARCFACE_112 * 2)
    np.testing.assert_allclose(template(128, 128), ARCFACE_112 + np.array([8, 0]))  # same scale, 8 px margin
    np.testing.assert_allclose(template(256, 256), (ARCFACE_112 + np.array([8, 0])) * 2)
    np.testing.assert_allclose(template(96, 112), ARCFACE_112 - np.array([8, 0]))
    assert parse_size("96x112") == (96, 112) and parse_size(" 224 ") == (224, 224)
    for bad in ("100", "112x96", "abc", "0", "-112"):
        with pytest.raises(ConfigError, match="--size"):
            parse_size(bad)


def test_warp_maps_pixel_centres_as_the_matrix_says() -> None:
    """A bright dot at a source pixel lands where the matrix sends that pixel, also when the crop
    shrinks the image more than 2x (the antialiased pre-downscale must keep the convention)."""
    for scale in (1.0, 0.6, 0.2):
        image = torch.zeros(3, 400, 400, dtype=torch.uint8)
        image[:, 197:204, 247:254] = 255  # a 7x7 dot centred on pixel (250, 200)
        matrix = similarity(scale, 0.3, (0.0, 0.0))
        matrix[:, 2] = [50.3, 60.7] - apply(matrix, [[250.0, 200.0]])[0]  # the dot's centre goes to (50.3, 60.7)
        crop = warp(image, matrix, 112, 112)[0].double()
        ys, xs = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
        centre = np.array([float((crop * xs).sum() / crop.sum()), float((crop * ys).sum() / crop.sum())])
        np.testing.assert_allclose(centre, [50.3, 60.7], atol=0.15)
    identity = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    image = torch.randint(0, 256, (3, 112, 112), dtype=torch.uint8)
    assert torch.equal(warp(image, identity, 112, 112), image)


# --- detection ---------------------------------------------------------------------------------


def test_detects_the_bundled_faces_with_plausible_landmarks(detector: FaceDetector) -> None:
    for path in FACES:
        faces = detector.detect(pixels(path))
        assert len(faces) == 1, path
        face = faces[0]
        assert face.score > 0.95
        (lx, ly), (rx, ry), (nx, ny), (mlx, mly), (mrx, mry) = face.points
        assert lx < nx < rx and mlx < nx < mrx  # left and right in the image
        assert max(ly, ry) < ny < min(mly, mry)  # eyes above the nose above the mouth
        assert 0.25 < (rx - lx) / 92 < 0.6  # eye distance is a fraction of the photo width
        assert face.box[0] < lx and face.box[2] > rx and face.box[1] < ly and face.box[3] > mly


def test_finds_a_pasted_face_at_its_place_and_scale(detector: FaceDetector) -> None:
    """Equivariance: the face found on a busy background is the face found alone, moved and scaled."""
    alone = detector.detect(pixels(FACES[0]))[0]
    for (width, height), scale, (x, y) in [((250, 250), 1.0, (80, 60)), ((640, 480), 0.5, (30, 300)),
                                           ((500, 400), 2.0, (250, 100))]:  # fmt: skip
        scene = paste(background(width, height), FACES[0], scale, x, y)
        faces = detector.detect(scene)
        expected = alone.box * scale + [x, y, x, y]
        best = max(faces, key=lambda face: iou(face.box, expected))
        assert iou(best.box, expected) >= 0.7
        assert np.abs(best.points - (alone.points * scale + [x, y])).max() < 2.5 * scale
    assert detector.detect(background(300, 200, seed=3)) == []


def test_batch_gives_what_single_images_give(detector: FaceDetector) -> None:
    images = [pixels(path) for path in FACES] + [paste(background(250, 250), FACES[1], 1.2, 40, 50)]
    batched = detector.detect_batch(images)
    for image, faces in zip(images, batched, strict=True):
        alone = detector.detect(image)
        assert len(faces) == len(alone)
        for a, b in zip(faces, alone, strict=True):
            np.testing.assert_allclose(a.points, b.points, atol=1e-3)


def test_large_photos_cost_a_downscaled_detection(detector: FaceDetector) -> None:
    scene = paste(background(3000, 2000), FACES[2], 8.0, 1200, 500)  # a 736x896 face
    faces = detector.detect(scene)
    assert len(faces) == 1
    scaled = detector.detect(F.interpolate(scene[None].float(), scale_factor=0.25, antialias=True,
                                           mode="bilinear")[0].round().byte())  # fmt: skip
    np.testing.assert_allclose(faces[0].box / 4, scaled[0].box, atol=3)


def test_choose_face_prefers_the_large_central_one() -> None:
    def face(x1, y1, x2, y2):
        return Face(np.array([x1, y1, x2, y2], float), 0.99, np.zeros((5, 2)))

    central, corner_big, small = face(100, 100, 150, 150), face(0, 0, 70, 70), face(110, 160, 130, 180)
    assert choose_face([corner_big, central, small], 250, 250) == 1
    assert choose_face([small, face(60, 60, 190, 190)], 250, 250) == 1


# --- the aligner and facetrain align -------------------------------------------------------------


def test_aligned_crop_puts_the_landmarks_on_the_template(detector: FaceDetector, tmp_path: Path) -> None:
    aligner = Aligner()
    photo = save(paste(background(300, 260), FACES[3], 1.5, 60, 40), tmp_path / "photo.png")
    result = aligner.align_files([photo])[0]
    assert result.status == "aligned" and len(result.crops) == 1 and result.crops[0].shape == (3, 112, 112)
    again = detector.detect(result.crops[0])  # the detector, run on the crop, finds the template's points
    assert len(again) == 1 and np.abs(again[0].points - ARCFACE_112).mean() < 2.0
    wide = Aligner(size=(96, 112)).align_files([photo])[0].crops[0]
    assert wide.shape == (3, 112, 96)
    torch.testing.assert_close(wide.float(), result.crops[0][:, :, 8:104].float(), atol=3, rtol=0)


def make_photos(root: Path) -> Path:
    """Two people with two photos each, a landscape without a face, a broken file and a two-face photo."""
    for person, faces in (("alice", FACES[:2]), ("bob", FACES[2:])):
        for index, face in enumerate(faces):
            save(
                paste(background(240, 220, seed=index), face, 1.2, 50 + 10 * index, 40), root / person / f"{index}.jpg"
            )
    save(background(200, 150, seed=7), root / "bob" / "landscape.png")
    (root / "bob" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    two = paste(paste(background(420, 260, seed=9), FACES[0], 1.0, 20, 60), FACES[1], 1.6, 200, 40)
    save(two, root / "carol" / "group.png")
    return root


def test_align_folder_report_and_resume(tmp_path: Path) -> None:
    photos, out = make_photos(tmp_path / "raw"), tmp_path / "aligned"
    frames = [Image.new("RGB", (40, 40), color) for color in ("red", "blue")]
    frames[0].save(photos / "alice" / "animated.gif", save_all=True, append_images=frames[1:])  # not read: listed
    (photos / "README.txt").write_text("who is who")  # a note beside the photos, not a photo: passed over silently
    (photos / "bob" / "labels.csv").write_text("0.jpg,bob")
    result = align_folder(photos, out)
    assert (result.images, result.already, result.crops) == (7, 0, 5)
    assert dict(result.counts) == {"aligned": 4, "multiple_faces": 1, "no_face": 1, "unreadable": 1}
    assert result.skipped == 3 and result.unsupported == 1
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert written == ["alice/0.jpg", "alice/1.jpg", "bob/0.jpg", "bob/1.jpg", "carol/group.jpg"]
    assert all(Image.open(out / name).size == (112, 112) for name in written)
    # The output is an identity folder that training reads as it is (the report and options are ignored).
    assert [(name, len(images)) for name, images in scan_identities(out)] == [("alice", 2), ("bob", 2), ("carol", 1)]
    rows = (out / "align_report.tsv").read_text().splitlines()
    assert rows[0] == "path\tstatus\tfaces\tcrops\tdetail"
    statuses = {row.split("\t")[0]: row.split("\t")[1] for row in rows[1:]}
    assert statuses == {
        "alice/animated.gif": "unsupported",
        "bob/broken.jpg": "unreadable",
        "bob/landscape.png": "no_face",
        "carol/group.png": "multiple_faces",
    }
    assert "a .gif file is not an image type facetrain reads: convert it to JPEG" in "\n".join(rows)
    assert "2 faces: kept the one at" in (out / "align_report.tsv").read_text()
    # The larger face of the group photo is the one kept: its crop matches the pasted face's own crop.
    group = np.asarray(Image.open(out / "carol" / "group.jpg").convert("L"), float)
    alone = Aligner().align_files([save(paste(background(300, 300), FACES[1], 1.6, 50, 40), tmp_path / "b.png")])
    assert np.abs(group - alone[0].crops[0][0].numpy()).mean() < 12

    (out / "alice" / "1.jpg").unlink()  # a rerun redoes what is missing and keeps the report
    again = align_folder(photos, out)
    assert (again.already, again.crops, dict(again.counts)) == (4, 1, {"aligned": 1, "no_face": 1, "unreadable": 1})
    assert (out / "align_report.tsv").read_text().splitlines() == rows
    with pytest.raises(ConfigError, match=r"other options \(size differ"):
        align_folder(photos, out, AlignOptions(size=(224, 224)))


def test_align_folder_all_faces_and_centre_fallback(tmp_path: Path) -> None:
    photos, out = make_photos(tmp_path / "raw"), tmp_path / "aligned"
    result = align_folder(photos, out, AlignOptions(all_faces=True, fallback="center", size=(128, 128)))
    assert dict(result.counts) == {"aligned": 5, "center_crop": 1, "unreadable": 1}
    assert (out / "carol" / "group_0.jpg").exists() and (out / "carol" / "group_1.jpg").exists()
    assert Image.open(out / "bob" / "landscape_0.jpg").size == (128, 128)
    assert json.loads((out / "align.json").read_text())["size"] == "128x128"


def make_varied_photos(root: Path, count: int = 18) -> Path:
    """Photos of three sizes with a face each at several scales and places: batches of mixed sizes."""
    sizes = [(240, 220), (320, 260), (200, 200)]
    for index in range(count):
        width, height = sizes[index % 3]
        scale = 0.9 + 0.15 * (index % 5)
        photo = paste(
            background(width, height, seed=index), FACES[index % 4], scale, 15 + 7 * (index % 6), 10 + index % 4
        )
        save(photo, root / f"p{index % 3}" / f"{index:02d}.jpg", quality=92)
    return root


def digests(out: Path) -> dict[str, bytes]:
    return {crop.relative_to(out).as_posix(): crop.read_bytes() for crop in sorted(out.rglob("*.jpg"))}


def test_crops_are_byte_identical_however_the_work_is_split(tmp_path: Path, monkeypatch) -> None:
    """Workers, kernel threads and a resume all give the crops an uninterrupted run gives, to the byte."""
    import facetrain.data.align.folder as folder

    monkeypatch.setattr(folder, "_CHUNK", 4)  # 18 photos in 5 chunks: work for 2 processes, and a resume mid-chunk
    photos = make_varied_photos(tmp_path / "raw")
    first = align_folder(photos, tmp_path / "here", workers=0)
    assert first.crops >= 15, dict(first.counts)
    expected = digests(tmp_path / "here")
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads > 1 else 2)
    try:
        align_folder(photos, tmp_path / "threads", workers=0)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads  # the run gives back the threads it borrowed
    align_folder(photos, tmp_path / "pool", workers=2)
    shutil.copytree(tmp_path / "here", tmp_path / "resumed")
    removed = [name for index, name in enumerate(expected) if index % 3 == 1]  # in every chunk, not whole chunks
    for name in removed:
        (tmp_path / "resumed" / name).unlink()
    again = align_folder(photos, tmp_path / "resumed", workers=0)
    assert again.crops == len(removed)
    for split in ("threads", "pool", "resumed"):
        found = digests(tmp_path / split)
        assert found.keys() == expected.keys()
        assert [name for name in expected if found[name] != expected[name]] == [], split


def test_a_killed_run_keeps_its_notes_through_the_journal(tmp_path: Path) -> None:
    photos, out = make_photos(tmp_path / "raw"), tmp_path / "aligned"
    align_folder(photos, out)
    report = (out / "align_report.tsv").read_text()
    # A run killed after writing the group photo's crop: its note is in the journal, not the report.
    (out / "align_report.tsv").write_text(report.splitlines()[0] + "\n")
    (out / ".align_journal.tsv").write_text(next(line for line in report.splitlines() if "group" in line) + "\n")
    again = align_folder(photos, out)
    assert again.already == 5 and (out / "align_report.tsv").read_text() == report
    assert not (out / ".align_journal.tsv").exists()


def test_odd_names_long_names_and_clashing_names(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    face = paste(background(200, 200), FACES[0], 1.0, 40, 40)
    for name in ("a.jpg", "a.png", "a.jpg.png", "A.bmp"):
        save(face, raw / "p" / name)
    save(background(150, 150), raw / os.fsdecode(b"q/blank\xff.png"))  # not UTF-8: a report row all the same
    long_name = "x" * 240 + ".png"  # the photo is fine; its crop's temporary name is too long for the disk
    save(face, raw / "q" / long_name)
    result = align_folder(raw, tmp_path / "out")
    assert dict(result.counts) == {"aligned": 4, "no_face": 1, "unwritable": 1} and result.skipped == 2
    crops = sorted(p.name for p in (tmp_path / "out" / "p").iterdir())
    assert len(crops) == 4 and len({name.lower() for name in crops}) == 4  # no crop overwrote another
    rows = {row.split("\t")[0]: row.split("\t")[1] for row in read_report_lines(tmp_path / "out")}
    assert rows == {os.fsdecode(b"q/blank\xff.png"): "no_face", f"q/{long_name}": "unwritable"}


def read_report_lines(out: Path) -> list[str]:
    text = (out / "align_report.tsv").read_bytes().decode("utf-8", "surrogateescape")
    return text.splitlines()[1:]


def test_same_stem_photos_keep_their_whole_name(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    save(paste(background(200, 200), FACES[0], 1.0, 40, 40), raw / "p" / "a.png")
    save(paste(background(200, 200), FACES[1], 1.0, 40, 40), raw / "p" / "a.jpg")
    align_folder(raw, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out" / "p").iterdir()) == ["a.jpg.jpg", "a.png.jpg"]


def test_large_jpeg_is_decoded_reduced_and_cropped_from_full_resolution(tmp_path: Path) -> None:
    scene = paste(background(2400, 1800), FACES[2], 1.0, 1100, 800)  # a small face on a large photo
    photo = save(scene, tmp_path / "big.jpg", quality=95)
    assert Photo.open(photo).pixels.shape[-2:] == (900, 1200)  # decoded at half size, for detection
    result = Aligner().align_files([photo])[0]
    full = TF.pil_to_tensor(Image.open(photo).convert("RGB"))
    # The face is small, so the crop is taken from the full decode, at the landmarks scaled back to it.
    assert torch.equal(result.crops[0], warp(full, umeyama(result.points, ARCFACE_112), 112, 112))
    png = Aligner().align_files([save(scene, tmp_path / "big.png")])[0]  # never decoded reduced
    assert np.abs(result.points - png.points).max() < 1.5


def test_refusals(tmp_path: Path) -> None:
    photos = make_photos(tmp_path / "raw")
    with pytest.raises(ConfigError, match="inside --input"):
        align_folder(photos, photos / "aligned")
    with pytest.raises(ConfigError, match="below 12 px"):
        align_folder(photos, tmp_path / "out", AlignOptions(min_face=8))
    with pytest.raises(ConfigError, match="--fallback 'blur'"):
        align_folder(photos, tmp_path / "out", AlignOptions(fallback="blur"))
    with pytest.raises(DataError, match="--input"):
        align_folder(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no images"):
        align_folder(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(DataError, match="no face of at least 20 px found in"):
        Aligner().crop_file(photos / "bob" / "landscape.png")


def test_cli_align_exit_codes(tmp_path: Path) -> None:
    runner = CliRunner()
    photos = make_photos(tmp_path / "raw")
    out = tmp_path / "aligned"
    some = runner.invoke(app, ["align", "--input", str(photos), "--out", str(out), "--workers", "0"])
    assert some.exit_code == 3, some.output
    assert "aligned 5 of 7 photos" in some.stdout and "1 without a face, skipped" in some.stderr
    shutil.rmtree(photos / "bob")
    clean = runner.invoke(app, ["align", "-i", str(photos), "-o", str(tmp_path / "clean"), "--workers", "0"])
    assert clean.exit_code == 0, clean.output
    assert "aligned 3 of 3 photos" in clean.stdout
    for args, message in ((["--size", "100"], "--size 100x100 has no ArcFace template"),
                          (["--min-face", "5"], "below 12 px"), (["--fallback", "x"], "--fallback 'x'")):  # fmt: skip
        bad = runner.invoke(app, ["align", "-i", str(photos), "-o", str(tmp_path / "bad"), *args])
        assert bad.exit_code == 2 and message in bad.stderr and "Traceback" not in bad.output
