import codecs
import io
import os
import pickle
from pathlib import Path

import pytest
from PIL import Image

from facetrain.data.identities import scan_identities
from facetrain.errors import DataError
from facetrain.evaluation.pairgen import lfw_addressable, make_pairs, write_lfw_pairs
from facetrain.evaluation.pairs import detect_format, read_pairs


def save_image(path: Path) -> Path:
    """A tiny 8x8 image in whatever format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L" if path.suffix == ".pgm" else "RGB", (8, 8), 128).save(path)
    return path


def png_bytes(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def lfw_root(tmp_path: Path) -> Path:
    """LFW-named images with mixed extensions: Ann (jpg, png, jpg), Bob (pgm), Cy (png)."""
    root = tmp_path / "lfw"
    for name in ("Ann_0001.jpg", "Ann_0002.png", "Ann_0003.jpg"):
        save_image(root / "Ann" / name)
    for name in ("Bob_0001.pgm", "Bob_0002.pgm"):
        save_image(root / "Bob" / name)
    for name in ("Cy_0001.png", "Cy_0002.png"):
        save_image(root / "Cy" / name)
    return root.resolve()


def test_lfw_with_folds_header(tmp_path, lfw_root):
    text = (
        "2\t3\n"
        "Ann\t1\t2\nAnn 2 3\nBob\t1\t2\n"
        "Ann\t1\tBob\t1\nAnn\t3\tCy\t1\nBob  2  Cy  2 \n"
        "Ann\t1\t3\nCy\t1\t2\nBob\t1\t2\n"
        "Ann\t2\tCy\t2\nBob\t1\tCy\t1\nAnn\t1\tCy\t1\n"
        "\n\n"
    )
    (tmp_path / "pairs.txt").write_text(text)
    pairs = read_pairs(tmp_path / "pairs.txt", lfw_root)
    assert (pairs.name, pairs.format, len(pairs)) == ("pairs", "lfw", 12)
    assert pairs.folds == [0] * 6 + [1] * 6
    assert pairs.is_same == [True, True, True, False, False, False] * 2
    named = [
        (pairs.images[a].relative_to(lfw_root).as_posix(), pairs.images[b].name)
        for a, b in zip(pairs.left, pairs.right, strict=True)
    ]
    assert named[0] == ("Ann/Ann_0001.jpg", "Ann_0002.png")
    assert named[2] == ("Bob/Bob_0001.pgm", "Bob_0002.pgm")
    assert named[5] == ("Bob/Bob_0002.pgm", "Cy_0002.png")
    assert named[7] == ("Cy/Cy_0001.png", "Cy_0002.png")
    # 7 distinct files, each indexed once however often pairs repeat it.
    assert len(pairs.images) == 7 and len(set(pairs.images)) == 7
    assert pairs.left[0] == pairs.left[3] and pairs.right[2] == pairs.right[8]


def test_view1_single_count_header(tmp_path, lfw_root):
    text = "3\nAnn 1 2\nAnn 1 3\nCy 1 2\nAnn 1 Bob 2\nBob 1 Cy 1\nAnn 3 Cy 2\n"
    (tmp_path / "pairsDevTest.txt").write_text(text)
    pairs = read_pairs(tmp_path / "pairsDevTest.txt", lfw_root)
    assert pairs.folds is None and pairs.name == "pairsDevTest"
    assert pairs.is_same == [True, True, True, False, False, False]
    assert pairs.images[pairs.right[3]] == lfw_root / "Bob" / "Bob_0002.pgm"


def test_orl_numbered_files_and_default_root(tmp_path):
    for index in (1, 3, 10):
        save_image(tmp_path / "s1" / f"{index}.pgm")
        save_image(tmp_path / "s2" / f"{index}.pgm")
    (tmp_path / "pairs.txt").write_text("1\ns1\t3\t10\ns1\t1\ts2\t3\n")
    pairs = read_pairs(tmp_path / "pairs.txt")  # images_root defaults to the file's folder
    root = tmp_path.resolve()
    assert [pairs.images[i] for i in (*pairs.left, *pairs.right)] == [
        root / "s1" / "3.pgm",
        root / "s1" / "1.pgm",
        root / "s1" / "10.pgm",
        root / "s2" / "3.pgm",
    ]


def test_plain_list_separators_comments_and_labels(tmp_path):
    for name in ("a/1.png", "a/2.jpg", "b/1.png", "c d/1.png"):
        save_image(tmp_path / "img" / name)
    absolute = (tmp_path / "img" / "b" / "1.png").resolve()
    text = (
        "# path1 path2 label\n\n"
        "a/1.png\ta/2.jpg\t1\n"
        "a/1.png   b/1.png   0\n"
        "a/2.jpg, c d/1.png, false\n"
        f"c d/1.png\t{absolute}\ttrue\n"
        "  # trailing comment\n"
        "b/1.png,a/2.jpg,Same\n"
    )
    (tmp_path / "list.txt").write_text(text)
    pairs = read_pairs(tmp_path / "list.txt", tmp_path / "img")
    assert (pairs.format, pairs.folds, len(pairs)) == ("list", None, 5)
    assert pairs.is_same == [True, False, False, True, True]
    root = (tmp_path / "img").resolve()
    assert pairs.images == [root / "a/1.png", root / "a/2.jpg", root / "b/1.png", root / "c d/1.png"]
    assert pairs.left == [0, 0, 1, 3, 2] and pairs.right == [1, 2, 3, 2, 1]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("pairs.txt", "1\nAnn 1 2\nAnn 1\nAnn 1 Bob 1\n", "pairs.txt:3: expected 3 or 4 tab-separated fields, got 2"),
        ("pairs.txt", "1\nAnn\t1\tx\nAnn 1 Bob 1\n", "pairs.txt:2: image number 'x' is not a whole number"),
        ("pairs.txt", "1\nAnn 1 2\n", "pairs.txt: header says 1+1 pairs, found 1 pair lines"),
        (
            "pairs.txt",
            "2\t1\nAnn 1 2\nAnn 1 Bob 1\n",
            "pairs.txt: header says 2 folds of 1+1 pairs, found 2 pair lines",
        ),
        (
            "pairs.txt",
            "2\t1\nAnn 1 2\nAnn 1 Bob 1\nBob 1 2\nCy 1 2\n",
            "pairs.txt:5: expected a different-person line in fold 2 of 2, got a same-person line",
        ),
        ("pairs.txt", "10 x\nAnn 1 2\n", "pairs.txt:1: expected a header"),
        ("pairs.txt", "1\nAnn 1 2\nAnn 1 Bob 1\nAnn 2 3\n", "pairs.txt: header says 1+1 pairs, found 3 pair lines"),
        ("pairs.txt", "1\nAnn 1 Bob 1\nAnn 1 2\n", "pairs.txt:2: expected a same-person line in the file, got a diff"),
        ("list.txt", "a.png b.png 1\n\n# c\na.png b.png maybe\n", "list.txt:4: label must be 1 or 0, got 'maybe'"),
        ("list.txt", "a.png b.png 1\na.png\tb.png\n", "list.txt:2: expected 'path1 path2 label', got 2 fields"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, monkeypatch, lfw_root, name, text, message):
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(text)
    with pytest.raises(DataError) as caught:
        read_pairs(name, lfw_root, format="lfw" if name == "pairs.txt" else "list")
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="pairs file '.*nope.txt' not found"):
        read_pairs(tmp_path / "nope.txt")
    (tmp_path / "pairs.txt").write_text("1\nAnn 1 2\nAnn 1 Bob 1\n")
    with pytest.raises(DataError, match="unknown pairs format 'csv': use auto, lfw, list, bin"):
        read_pairs(tmp_path / "pairs.txt", format="csv")


def test_exact_field_count_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("pairs.txt").write_text("1\nAnn\t1\t2\nAnn\t1\n")
    with pytest.raises(DataError) as caught:
        read_pairs("pairs.txt")
    assert str(caught.value) == "pairs.txt:3: expected 3 or 4 tab-separated fields, got 2"


def test_missing_images_counted_with_first_five(tmp_path, lfw_root):
    text = "1\t4\nAnn 1 9\nZed 1 2\nZed 3 4\nAnn 1 2\nAnn 1 Bob 7\nAnn 2 Cy 1\nBob 1 Cy 2\nAnn 3 Cy 1\n"
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(DataError) as caught:
        read_pairs(tmp_path / "pairs.txt", lfw_root)
    first = "Ann/Ann_0009.jpg, Zed/Zed_0001.jpg, Zed/Zed_0002.jpg, Zed/Zed_0003.jpg, Zed/Zed_0004.jpg"
    assert str(caught.value) == (
        f"{tmp_path / 'pairs.txt'}: 6 images missing under {lfw_root} (first 5: {first}): check --images"
    )


@pytest.mark.parametrize("protocol", [2, 4])
def test_bin_pairs_are_consecutive_images(tmp_path, protocol):
    bins = [png_bytes(shade) for shade in (10, 20, 30, 40, 50, 60)]
    (tmp_path / "lfw.bin").write_bytes(pickle.dumps((bins, [True, False, 1]), protocol=protocol))
    pairs = read_pairs(tmp_path / "lfw.bin")
    assert (pairs.name, pairs.format, pairs.folds) == ("lfw", "bin", None)
    assert pairs.images == bins and pairs.is_same == [True, False, True]
    assert pairs.left == [0, 2, 4] and pairs.right == [1, 3, 5]
    assert Image.open(io.BytesIO(pairs.images[pairs.right[1]])).getpixel((0, 0)) == (40, 0, 0)


def test_python2_bin(tmp_path):
    # What Python 2 wrote for ([b"abc", b"def"], [True]): str items as SHORT_BINSTRING.
    (tmp_path / "agedb_30.bin").write_bytes(b"\x80\x02]q\x00(U\x03abcq\x01U\x03defq\x02e]q\x03\x88a\x86q\x04.")
    pairs = read_pairs(tmp_path / "agedb_30.bin")
    assert (pairs.images, pairs.is_same) == ([b"abc", b"def"], [True])


class Encodes:
    """Pickles as _codecs.encode(text, codec): allowed only as the latin1 bytes trick."""

    def __reduce__(self):
        return codecs.encode, ("x", "rot13")


def test_bin_codecs_encode_only_for_latin1(tmp_path):
    (tmp_path / "odd.bin").write_bytes(pickle.dumps(([b"a", Encodes()], [True]), protocol=2))
    with pytest.raises(DataError, match=r"odd\.bin: not a readable pairs \.bin \(ValueError"):
        read_pairs(tmp_path / "odd.bin")


class RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_bin_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = ([png_bytes(1), RunsShell(f"touch {marker}")], [True])
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(DataError, match=r"evil\.bin: refused to load: the pickle asks for \w+\.system"):
        read_pairs(tmp_path / "evil.bin")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"images": [b"x", b"y"], "issame": [True]}, "got dict"),
        ([[b"x", "y"], [True]], "not all bytes"),
        ([[b"x", b"y"], [2]], "not all bools"),
        ([[b"x", b"y", b"z"], [True]], "3 images for 1 pairs"),
    ],
)
def test_bin_with_wrong_structure(tmp_path, data, message):
    (tmp_path / "bad.bin").write_bytes(pickle.dumps(data, protocol=2))
    with pytest.raises(DataError, match=rf"bad\.bin: .*{message}"):
        read_pairs(tmp_path / "bad.bin")


def test_truncated_bin(tmp_path):
    whole = pickle.dumps(([png_bytes(1), png_bytes(2)], [True]), protocol=2)
    (tmp_path / "cut.bin").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match=r"cut\.bin: not a readable pairs \.bin"):
        read_pairs(tmp_path / "cut.bin")


def test_detect_format(tmp_path):
    files = {
        "lfw.bin": b"anything",
        "pairs.pkl": pickle.dumps(([b"a", b"b"], [True]), protocol=2),
        "pairs.txt": b"10\t300\nAnn\t1\t2\n",
        "pairsDevTrain.txt": b"\n1100 \n",
        "list.txt": b"# comment\na.jpg b.jpg 1\n",
        "two.txt": b"a.jpg b.jpg\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    found = {name: detect_format(tmp_path / name) for name in files}
    assert found == {
        "lfw.bin": "bin",
        "pairs.pkl": "bin",
        "pairs.txt": "lfw",
        "pairsDevTrain.txt": "lfw",
        "list.txt": "list",
        "two.txt": "list",
    }


@pytest.fixture
def numbered_root(tmp_path: Path) -> Path:
    """s1 numbered 1..10 (10.pgm sorts before 2.pgm), s2 with gaps, s3 LFW-named, s4 a single image."""
    root = tmp_path / "faces"
    for index in range(1, 11):
        save_image(root / "s1" / f"{index}.pgm")
    for index in (1, 5, 12):
        save_image(root / "s2" / f"{index}.pgm")
    for index in (1, 2, 3):
        save_image(root / "s3" / f"s3_{index:04d}.jpg")
    save_image(root / "s4" / "1.png")
    return root


def test_lfw_addressable(numbered_root):
    identities = dict(scan_identities(numbered_root))
    assert all(lfw_addressable(name, paths) for name, paths in identities.items())
    assert not lfw_addressable("x", [Path("x/img00.png")])
    assert not lfw_addressable("x", [Path("x/1.jpg"), Path("x/1.png")])  # same number twice
    assert not lfw_addressable("x", [Path("x/01.jpg")])  # the reader would look for 1.jpg
    assert not lfw_addressable("a b", [Path("a b/1.jpg")])


def test_make_pairs_is_deterministic_balanced_and_unique(numbered_root):
    identities = scan_identities(numbered_root)
    blocks = make_pairs(identities, folds=3, pairs_per_fold=6, seed=0)
    assert blocks == make_pairs(identities, folds=3, pairs_per_fold=6, seed=0)
    assert blocks != make_pairs(identities, folds=3, pairs_per_fold=6, seed=1)
    assert len(blocks) == 3 and all(len(same) == 6 and len(different) == 6 for same, different in blocks)
    same = [pair for block in blocks for pair in block[0]]
    different = [pair for block in blocks for pair in block[1]]
    assert all(i < j for _, i, j in same)
    assert all(first != second for first, _, second, _ in different)
    assert len(set(same)) == 18
    assert len({frozenset([(a, i), (b, j)]) for a, i, b, j in different}) == 18
    # Numbers come from file names: s2 only has 1, 5 and 12.
    numbers = {i for name, i, j in same if name == "s2"} | {j for name, i, j in same if name == "s2"}
    assert numbers <= {1, 5, 12}


def test_make_pairs_needs_enough_same_pairs(numbered_root):
    identities = scan_identities(numbered_root)  # 45 + 3 + 3 same pairs possible
    with pytest.raises(DataError, match="only 51 distinct same-person pairs .* --pairs-per-fold 25 or fewer"):
        make_pairs(identities, folds=2, pairs_per_fold=26, seed=0)


def test_make_pairs_refuses_unnumbered_files(tmp_path):
    save_image(tmp_path / "id00" / "img00.png")
    with pytest.raises(DataError, match="not named id00_0001.jpg or 1.jpg"):
        make_pairs(scan_identities(tmp_path), folds=1, pairs_per_fold=1, seed=0)


def test_written_pairs_read_back_to_the_chosen_files(tmp_path, numbered_root):
    identities = scan_identities(numbered_root)
    blocks = make_pairs(identities, folds=2, pairs_per_fold=8, seed=3)
    write_lfw_pairs(tmp_path / "made.txt", blocks, folds=2, pairs_per_fold=8)
    assert (tmp_path / "made.txt").read_text().splitlines()[0] == "2\t8"
    pairs = read_pairs(tmp_path / "made.txt", numbered_root)

    def path(name: str, number: int) -> Path:
        stem = f"s3_{number:04d}.jpg" if name == "s3" else f"{number}.{'png' if name == 's4' else 'pgm'}"
        return (numbered_root / name / stem).resolve()

    expected = []
    for same, different in blocks:
        expected += [(path(n, i), path(n, j)) for n, i, j in same]
        expected += [(path(a, i), path(b, j)) for a, i, b, j in different]
    assert [(pairs.images[a], pairs.images[b]) for a, b in zip(pairs.left, pairs.right, strict=True)] == expected
    assert pairs.folds == [0] * 16 + [1] * 16
    assert pairs.is_same == ([True] * 8 + [False] * 8) * 2


def test_a_pairs_file_that_is_not_utf8_names_its_line_and_byte(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_bytes("s1/1.pgm s1/2.pgm 1\ns1/1.pgm s2/1.pgm 0\ns1/3.pgm s\xe9/1.pgm 0\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"pairs.txt, line 3, column 11: byte 0xe9 is not UTF-8: re-save") as info:
        read_pairs(path, tmp_path)
    assert ".bin" not in str(info.value)
