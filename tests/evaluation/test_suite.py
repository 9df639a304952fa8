"""The verification suite (read_suite, format_suite), numpy-array .bin files, and the suite in TensorBoard."""

import io
import os
import pickle
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import ORL, tiny_config
from PIL import Image

from facetrain.config import ModelConfig
from facetrain.data.preprocess import Preprocess
from facetrain.errors import DataError
from facetrain.evaluation import format_suite, read_suite, suite_to_dict
from facetrain.evaluation.embedding import embed_pairs_images
from facetrain.evaluation.evaluate import report_pairs
from facetrain.evaluation.pairs import PairList, read_pairs
from facetrain.models import build_embedder
from facetrain.runtime import Precision
from facetrain.training.trainer import Trainer

CPU = torch.device("cpu")


def encoded(path: Path, kind: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.open(path).convert("RGB").save(buffer, kind)
    return buffer.getvalue()


def orl_pairs(identities: int) -> tuple[list[bytes], list[bool]]:
    """Pairs of ORL faces as a .bin holds them, same and different alternating (so every contiguous fold has
    both): pair 2i is s<i>/1 with s<i>/2, pair 2i+1 is s<i>/1 with s<i+1>/3."""
    images, is_same = [], []
    for i in range(1, identities + 1):
        other = i % identities + 1
        images += [encoded(ORL / f"s{i}" / "1.pgm"), encoded(ORL / f"s{i}" / "2.pgm")]
        images += [encoded(ORL / f"s{i}" / "1.pgm"), encoded(ORL / f"s{other}" / "3.pgm")]
        is_same += [True, False]
    return images, is_same


def faces_pairs(faces: Path, count: int) -> tuple[list[bytes], list[bool]]:
    """``count`` alternating same/different pairs of the ``faces`` fixture's PNGs (4 identities x 8 images)."""
    images, is_same = [], []
    for pair in range(count):
        identity, image = pair % 4, pair // 4 % 4
        same = pair % 2 == 0
        second = faces / f"id{identity if same else (identity + 1) % 4:02d}" / f"img{2 * image + 1:02d}.png"
        images += [(faces / f"id{identity:02d}" / f"img{2 * image:02d}.png").read_bytes(), second.read_bytes()]
        is_same.append(same)
    return images, is_same


def write_bin(path: Path, images: list[bytes], is_same: list[bool], *, as_numpy: bool = False, protocol: int = 2):
    """A .bin as insightface writes it, or (``as_numpy``) as re-saved through numpy: each image a 1-D uint8
    array of its encoded bytes, the answers a bool array."""
    if as_numpy:
        data = ([np.frombuffer(image, dtype=np.uint8) for image in images], np.array(is_same, dtype=bool))
    else:
        data = (images, is_same)
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    return path


def tiny_bin(path: Path) -> Path:
    """A valid .bin whose images are never decoded (reading a suite does not decode)."""
    return write_bin(path, [b"a", b"b", b"c", b"d"], [True, False])


# --- discovery ---------------------------------------------------------------------------------------------------


def test_suite_finds_known_sets_in_the_fields_order_then_the_others_alphabetically(tmp_path):
    for name in ("zeta", "cplfw", "lfw", "Alpha", "agedb_30", "cfp_fp", "calfw", "vgg2_fp", "cfp_ff"):
        tiny_bin(tmp_path / f"{name}.bin")
    (tmp_path / "notes.txt").write_text("not a pairs file\n")
    (tmp_path / "._lfw.bin").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")  # hidden: skipped
    (tmp_path / "nested").mkdir()
    tiny_bin(tmp_path / "nested" / "calfw.bin")  # not recursive
    names = [pairs.name for pairs in read_suite(tmp_path)]
    assert names == ["lfw", "cfp_fp", "cfp_ff", "agedb_30", "calfw", "cplfw", "vgg2_fp", "Alpha", "zeta"]
    assert all(pairs.format == "bin" and pairs.is_same == [True, False] for pairs in read_suite(tmp_path))


def test_suite_folder_problems_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "pairs.txt").write_text("1 2 1\n")
    with pytest.raises(DataError, match=r"--suite: folder '.*empty' holds no \.bin file: give the folder") as caught:
        read_suite(tmp_path / "empty")
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match=r"--suite: folder '.*missing' does not exist: give the folder"):
        read_suite(tmp_path / "missing")
    with pytest.raises(DataError, match=r"--suite: '.*pairs\.txt' is a text file, not a folder"):
        read_suite(tmp_path / "empty" / "pairs.txt")
    (tmp_path / "faces_emore").mkdir()
    tiny_bin(tmp_path / "faces_emore" / "lfw.bin")
    with pytest.raises(DataError, match=r"holds no \.bin file \(its sub-folder 'faces_emore' does: give that folder\)"):
        read_suite(tmp_path)


def test_every_file_is_checked_before_any_embedding(tmp_path):
    tiny_bin(tmp_path / "lfw.bin")
    (tmp_path / "cplfw.bin").write_bytes(b"\x80\x02]q\x00")  # truncated
    with pytest.raises(DataError, match=r"cplfw\.bin: not a readable pairs \.bin"):
        read_suite(tmp_path)


# --- numpy-array .bin files --------------------------------------------------------------------------------------


class Py2Pickler(pickle._Pickler):
    """Writes ``str`` and ``bytes`` as Python 2's byte str (what the published .bin files hold)."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def save_str8(self, obj: str | bytes) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("utf-8")
        self.write(pickle.BINSTRING + len(raw).to_bytes(4, "little") + raw)
        self.memoize(obj)

    dispatch[bytes] = save_str8
    dispatch[str] = save_str8


def python2_numpy_bin(path: Path, images: list[bytes], is_same: list[bool]) -> Path:
    """What numpy on Python 2 wrote: ``numpy.core.multiarray`` globals, strings as byte str, numpy bools."""
    buffer = io.BytesIO()
    data = ([np.frombuffer(image, dtype=np.uint8) for image in images], [np.bool_(same) for same in is_same])
    Py2Pickler(buffer, protocol=2).dump(data)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.", b"numpy.core."))
    return path


def test_numpy_array_bins_read_as_the_bytes_version_and_score_the_same(tmp_path):
    images, is_same = orl_pairs(6)
    plain = read_pairs(write_bin(tmp_path / "lfw.bin", images, is_same))
    variants = [read_pairs(write_bin(tmp_path / f"np{p}.bin", images, is_same, as_numpy=True, protocol=p)) for p in
                (2, 4, 5)] + [read_pairs(python2_numpy_bin(tmp_path / "py2.bin", images, is_same))]  # fmt: skip
    for variant in variants:
        assert variant.images == plain.images and variant.is_same == plain.is_same == is_same
        assert (variant.left, variant.right) == (plain.left, plain.right)
    torch.manual_seed(0)
    embedder = build_embedder(ModelConfig(backbone="resnet18", embedding_dim=16), 32).eval()
    preprocess, fp32 = Preprocess(32), Precision(None)
    reference = embed_pairs_images(embedder, plain, preprocess, CPU, fp32, batch_size=8)
    scored = embed_pairs_images(embedder, variants[-1], preprocess, CPU, fp32, batch_size=8)
    assert torch.equal(scored[0], reference[0]) and torch.equal(scored[1], reference[1])
    same_name = {"name": "lfw", "source": ""}
    expected = report_pairs(plain, *reference, folds=2).to_dict() | same_name
    assert report_pairs(variants[-1], *scored, folds=2).to_dict() | same_name == expected


def test_numpy_bool_and_integer_answers(tmp_path):
    images = [b"a", b"b", b"c", b"d"]
    for name, answers in (("ints", np.array([1, 0])), ("scalars", [np.bool_(True), np.int64(0)])):
        path = tmp_path / f"{name}.bin"
        path.write_bytes(pickle.dumps((images, answers), protocol=2))
        assert read_pairs(path).is_same == [True, False]


def test_decoded_pixel_arrays_are_stored_losslessly(tmp_path):
    pixels = [np.asarray(Image.open(ORL / "s1" / f"{i}.pgm").convert("RGB")) for i in (1, 2)]
    path = tmp_path / "pixels.bin"
    path.write_bytes(pickle.dumps((pixels, [True]), protocol=4))
    pairs = read_pairs(path)
    for image, original in zip(pairs.images, pixels, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(image))), original)


class Calls:
    """Pickles as a call of ``function(*args)``: what a hostile file would do."""

    def __init__(self, function, *args) -> None:
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize(
    ("payload", "asks_for"),
    [
        (lambda marker: Calls(os.system, f"touch {marker}"), r"(posix|os|nt)\.system"),
        (lambda marker: Calls(np.load, str(marker)), r"numpy\.load"),
        (lambda marker: Calls(eval, f"open({str(marker)!r}, 'w')"), r"(builtins|__builtin__)\.eval"),
        (lambda marker: Calls(np.save, str(marker), np.zeros(1)), r"numpy\.save"),
    ],
)
def test_hostile_pickles_are_refused_without_running(tmp_path, payload, asks_for):
    marker = tmp_path / "pwned"
    images = [np.frombuffer(b"jpeg", dtype=np.uint8), payload(marker)]
    (tmp_path / "evil.bin").write_bytes(pickle.dumps((images, np.array([True])), protocol=2))
    with pytest.raises(DataError, match=rf"evil\.bin: refused to load: the pickle asks for {asks_for}, ") as caught:
        read_pairs(tmp_path / "evil.bin")
    assert "\n" not in str(caught.value)
    assert not marker.exists() and not marker.with_suffix(".npy").exists()


def test_numpy_ndarray_itself_cannot_be_called(tmp_path):
    # REDUCE numpy.ndarray((2**40,), "u1"): would allocate a terabyte if the class itself were handed out.
    (tmp_path / "huge.bin").write_bytes(b"\x80\x02cnumpy\nndarray\n(\x8a\x06\x00\x00\x00\x00\x00\x01\x85U\x02u1tR.")
    with pytest.raises(DataError, match=r"huge\.bin: not a readable pairs \.bin \(ValueError: numpy\.ndarray may only"):
        read_pairs(tmp_path / "huge.bin")


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.array([b"jpeg"], dtype=object), "image 1 is a numpy object array, not encoded image bytes"),
        (np.zeros((112, 112, 3), np.float32), "image 1 is a 112x112x3 float32 array, not encoded image bytes"),
        (np.zeros((2, 3), np.uint8), "image 1 is a 2x3 uint8 array, not encoded image bytes"),
        (np.zeros(4, np.int16), "image 1 is a 4 int16 array, not encoded image bytes"),
    ],
)
def test_arrays_that_are_not_images_name_the_record(tmp_path, image, message):
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"jpeg", image], [True]), protocol=4))
    with pytest.raises(DataError, match=rf"odd\.bin: {message}: a \.bin image must be encoded bytes"):
        read_pairs(tmp_path / "odd.bin")


# --- the table ---------------------------------------------------------------------------------------------------


def separable(pairs: PairList, generator: torch.Generator) -> torch.Tensor:
    """Embeddings that score every pair right: a same pair's images share one, a different pair's are random
    (in 64 dimensions their cosine stays far below 1)."""
    rows = []
    for same in pairs.is_same:
        first, second = F.normalize(torch.randn(2, 64, generator=generator), dim=1)
        rows += [first, first if same else second]
    return torch.stack(rows)


def suite_reports(tmp_path: Path, flip: bool = True):
    """Reports on three sets of different sizes: lfw (2000 pairs, enough negatives for TAR at FAR 1e-3)
    scored perfectly, cplfw and agedb_30 (ORL faces) at random."""
    write_bin(tmp_path / "lfw.bin", [b"jpeg"] * 4000, [True, False] * 1000)  # its images are never decoded
    for name, identities in (("cplfw", 20), ("agedb_30", 35)):
        write_bin(tmp_path / f"{name}.bin", *orl_pairs(identities))
    reports = []
    generator = torch.Generator().manual_seed(0)
    for pairs in read_suite(tmp_path):
        if pairs.name == "lfw":
            plain = separable(pairs, generator)
        else:
            plain = F.normalize(torch.randn(len(pairs.images), 64, generator=generator), dim=1)
        reports.append(report_pairs(pairs, plain, plain if flip else None, folds=10))
    return reports


def test_suite_table_shows_each_sets_numbers_and_their_plain_mean(tmp_path):
    reports = suite_reports(tmp_path)
    table = format_suite(reports)
    lines = table.splitlines()
    assert "flip-fused embeddings" in lines[0] and all(len(line) <= 100 for line in lines)
    assert [line.split()[0] for line in lines[2:]] == ["lfw", "agedb_30", "cplfw", "mean"]
    for report, line in zip(reports, lines[2:], strict=False):
        metrics = report.headline
        cells = re.split(r"\s{2,}", line.strip())
        assert cells[:3] == [
            report.name,
            str(report.pairs),
            f"{100 * metrics.accuracy:.2f} ± {100 * metrics.accuracy_std:.2f}",
        ]
        assert cells[-1] == f"{metrics.roc_auc:.4f}"
    assert reports[0].headline.accuracy == 1.0 and lines[2].split()[-2:] == ["100.00", "1.0000"]  # TAR, AUC
    assert "n/a" in lines[3]  # 35 negatives cannot measure TAR at FAR 1e-3
    accuracies = [report.headline.accuracy for report in reports]
    mean = sum(accuracies) / 3
    weighted = sum(r.headline.accuracy * r.pairs for r in reports) / sum(r.pairs for r in reports)
    assert f"{100 * mean:.2f}" != f"{100 * weighted:.2f}"  # the sets differ enough to tell the two means apart
    assert lines[-1].split() == ["mean", f"{100 * mean:.2f}"]
    summary = suite_to_dict(reports)
    assert summary["mean_accuracy"] == pytest.approx(mean) and summary["embeddings"] == "flip-fused"
    assert summary["sets"]["agedb_30"] == {
        "accuracy": reports[1].headline.accuracy, "accuracy_std": reports[1].headline.accuracy_std, "pairs": 70,
    }  # fmt: skip


def test_suite_table_names_plain_embeddings(tmp_path):
    reports = suite_reports(tmp_path, flip=False)
    assert "plain embeddings" in format_suite(reports).splitlines()[0]
    assert suite_to_dict(reports)["embeddings"] == "plain"


# --- TensorBoard -------------------------------------------------------------------------------------------------


def test_training_with_two_sets_logs_the_suite_table_and_mean(faces, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    write_bin(tmp_path / "lfw.bin", *faces_pairs(faces, 20))
    write_bin(tmp_path / "calfw.bin", *faces_pairs(faces, 12), as_numpy=True)
    sets = [{"pairs": str(tmp_path / "lfw.bin")}, {"pairs": str(tmp_path / "calfw.bin")}]
    config = tiny_config(faces, tmp_path / "run", train={"epochs": 1}, eval={"sets": sets, "flip": False})
    trainer = Trainer(config, progress=False)
    trainer.setup()
    trainer.fit()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    means = events.Scalars("eval/suite_mean_accuracy")
    lfw, calfw = events.Scalars("eval/lfw/accuracy"), events.Scalars("eval/calfw/accuracy")
    assert [event.step for event in means] == [event.step for event in lfw] == [event.step for event in calfw]
    assert len(means) == 2  # before training and at the end
    for mean, first, second in zip(means, lfw, calfw, strict=True):
        assert mean.value == pytest.approx((first.value + second.value) / 2, abs=1e-6)
    texts = events.Tensors("eval/suite/text_summary")
    assert [text.step for text in texts] == [mean.step for mean in means]
    table = texts[-1].tensor_proto.string_val[0].decode()
    assert "plain embeddings" in table and f"{100 * means[-1].value:.2f}" in table.splitlines()[-1]
    rows = [line.split() for line in table.splitlines()]
    assert [row[0] for row in rows[2:]] == ["lfw", "calfw", "mean"] and rows[3][1] == "12"
    assert all(line.startswith("    ") for line in table.splitlines())  # a markdown code block
