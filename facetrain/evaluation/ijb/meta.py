"""The IJB-B / IJB-C protocol files, read as the benchmark ships them (numpy only, no torch).

``ROOT/meta/`` holds, for target ``ijbc`` (or ``ijbb``; the upper-case spelling is found too):

- ``ijbc_name_5pts_score.txt``: ``image x1 y1 ... x5 y5 score``: the five landmarks and the detector score;
- ``ijbc_face_tid_mid.txt``: ``image template media``, one row per image, in the same order;
- ``ijbc_template_pair_label.txt``: ``template1 template2 label`` (1:1);
- ``ijbc_1N_gallery_G1.csv``, ``..._G2.csv`` (IJB-B: ``S1``, ``S2``) and ``ijbc_1N_probe_mixed.csv``:
  ``template,subject,...`` after a header line, one row per image (1:N).

Fields are separated by spaces or tabs (the CSVs by commas). Every problem is one line naming the
file and its line.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facetrain.errors import ConfigError, DataError
from facetrain.files import require_folder

TARGETS = ("IJBC", "IJBB")
ROOT_FIX = "give the folder that holds meta/ and loose_crop/ (insightface's IJB release layout)"
FEATURES_FIX = "give an N x D float array saved with numpy.save, one row per line of the name_5pts_score file"


@dataclass(frozen=True)
class Images:
    """One row per image of ``name_5pts_score`` (and ``face_tid_mid``, row for row)."""

    names: list[str]
    landmarks: np.ndarray  # (N, 5, 2) float32, pixel coordinates in the loose crop
    scores: np.ndarray  # (N,) float32 detector score
    templates: np.ndarray  # (N,) int64
    medias: np.ndarray  # (N,) int64


@dataclass(frozen=True)
class Pairs:
    first: np.ndarray  # (P,) int64 template ids
    second: np.ndarray
    label: np.ndarray  # (P,) bool, True for a genuine (same subject) pair
    source: str


@dataclass(frozen=True)
class Enrolment:
    """Template and subject of every template of a 1:N gallery or probe file (one row per template)."""

    templates: np.ndarray  # (T,) int64, sorted
    subjects: np.ndarray  # (T,) int64
    source: str


def check_target(target: str) -> str:
    upper = target.upper()
    if upper not in TARGETS:
        raise ConfigError(f"--target: unknown IJB target '{target}': choose IJBC or IJBB")
    return upper


def meta_file(root: str | Path, target: str, suffix: str) -> Path:
    """``ROOT/meta/<target>_<suffix>``, in the release's lower case or in upper case."""
    found = _find(root, target, suffix)
    if found is None:
        expected = Path(root) / "meta" / f"{target.lower()}_{suffix}"
        what = "is a folder, not a file" if expected.is_dir() else "is missing"
        raise DataError(f"--ijb: '{expected}' {what}: {ROOT_FIX}")
    return found


def _find(root: str | Path, target: str, suffix: str) -> Path | None:
    meta = require_folder(Path(root) / "meta", ConfigError, "--ijb", ROOT_FIX)
    for path in (meta / f"{target.lower()}_{suffix}", meta / f"{target.upper()}_{suffix}"):
        if path.is_file():
            return path
    return None


def gallery_files(root: str | Path, target: str) -> tuple[Path, Path]:
    """The two 1:N galleries: IJB-C's G1 and G2, IJB-B's S1 and S2 (either naming is found for both)."""
    namings = [("G1", "G2"), ("S1", "S2")]
    if target.upper() == "IJBB":
        namings.reverse()
    for one, two in namings:
        first, second = _find(root, target, f"1N_gallery_{one}.csv"), _find(root, target, f"1N_gallery_{two}.csv")
        if first is not None and second is not None:
            return first, second
    one, two = namings[0]
    raise DataError(
        f"--ijb: {target.lower()}_1N_gallery_{one}.csv and _{two}.csv are not both in '{Path(root) / 'meta'}': "
        f"1:N needs the two galleries ({ROOT_FIX})"
    )


def _numbers(
    path: Path, columns: int, dtype: type, kind: str, skip: int = 0, delimiter: str | None = None
) -> np.ndarray:
    """A (rows, columns) array of a whitespace- (or ``delimiter``-) separated file; one line on a bad row."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an empty file warns; it is refused below
            table = np.loadtxt(
                path, dtype=dtype, delimiter=delimiter, skiprows=skip, usecols=range(columns), ndmin=2, comments=None,
                encoding="utf-8-sig",
            )  # fmt: skip
    except UnicodeDecodeError:  # a ValueError too: first
        raise _not_utf8(path, kind) from None
    except ValueError as exc:
        detail = str(exc).splitlines()[0]
        found = re.search(r"could not convert string '(.*)' to \w+ at row (\d+), column (\d+)", detail)
        if found:  # numpy counts data rows from 0; people count the file's lines from 1
            line = int(found.group(2)) + 1 + skip
            raise DataError(
                f"{path}, line {line}: field {found.group(3)} '{found.group(1)}' is not a number: each line must "
                f"be {kind}"
            ) from None
        raise DataError(f"{path}: not {kind} ({detail}): each line must be {kind}") from None
    if len(table) == 0:
        raise DataError(f"{path}: no rows: each line must be {kind}")
    return table


def read_images(root: str | Path, target: str) -> Images:
    points_file = meta_file(root, target, "name_5pts_score.txt")
    ids_file = meta_file(root, target, "face_tid_mid.txt")
    names, values = _landmark_rows(points_file)
    ids = _numbers(ids_file, 3, str, "image template media")
    if len(ids) != len(names):
        raise DataError(
            f"{ids_file}: {len(ids)} rows, but {points_file.name} has {len(names)}: the two files list the same "
            "images in the same order"
        )
    mismatch = np.flatnonzero(ids[:, 0] != np.asarray(names, dtype=str))
    if len(mismatch):
        line = int(mismatch[0]) + 1
        raise DataError(
            f"{ids_file}, line {line}: image '{ids[line - 1, 0]}', but line {line} of {points_file.name} is "
            f"'{names[line - 1]}': the two files list the same images in the same order"
        )
    try:
        templates, medias = ids[:, 1].astype(np.int64), ids[:, 2].astype(np.int64)
    except ValueError:
        raise DataError(f"{ids_file}: template and media ids must be whole numbers") from None
    return Images(names, values[:, :10].reshape(-1, 5, 2), values[:, 10].copy(), templates, medias)


def _not_utf8(path: Path, kind: str) -> DataError:
    """The error for a meta file that did not decode: its line and byte, the file read again only now."""
    require_utf8(path)
    return DataError(f"{path}: not a text file: each line must be {kind}")


def require_utf8(path: Path) -> None:
    """One line naming the line and byte of a meta file that is not UTF-8 text (the release's are ASCII)."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}, line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text: re-save the file as UTF-8 (the "
            "release's files are plain ASCII)"
        ) from None


def _landmark_rows(path: Path) -> tuple[list[str], np.ndarray]:
    """(image names, (N, 11) float32: ten landmark coordinates and the score)."""
    names: list[str] = []
    rows: list[list[str]] = []
    kind = "an image name, 10 landmark coordinates (x1 y1 ... x5 y5) and a detector score"
    try:
        with open(path, encoding="utf-8-sig") as file:  # a byte-order mark that an editor added is not a name
            for number, line in enumerate(file, 1):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 12:
                    raise DataError(f"{path}, line {number}: {len(fields)} fields: each line is {kind}")
                names.append(fields[0])
                rows.append(fields[1:])
    except UnicodeDecodeError:
        raise _not_utf8(path, kind) from None
    if not names:
        raise DataError(f"{path}: no rows: each line is an image name, 10 landmark coordinates and a score")
    try:
        values = np.asarray(rows, dtype=np.float32)
    except ValueError:
        bad = next(i for i, row in enumerate(rows) if not _all_numbers(row))
        raise DataError(f"{path}, image '{names[bad]}': a landmark or score is not a number") from None
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])
        raise DataError(f"{path}, image '{names[bad]}': a landmark or score is not finite")
    return names, values


def _all_numbers(row: list[str]) -> bool:
    try:
        [float(value) for value in row]
    except ValueError:
        return False
    return True


def read_pairs(root: str | Path, target: str) -> Pairs:
    path = meta_file(root, target, "template_pair_label.txt")
    table = _numbers(path, 3, np.int64, "three whole numbers: template1 template2 label")
    labels = table[:, 2]
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if len(bad):
        raise DataError(f"{path}, line {int(bad[0]) + 1}: label {labels[bad[0]]}: a label is 1 (same) or 0 (different)")
    return Pairs(table[:, 0].copy(), table[:, 1].copy(), labels == 1, str(path))


def read_enrolment(path: Path) -> Enrolment:
    """A 1:N csv: the first two columns are template and subject ids, one row per image, under the release's
    header line (a file without one loses no row)."""
    kind = "comma-separated whole numbers: template,subject,..."
    try:
        with open(path, encoding="utf-8-sig") as file:
            first_line = file.readline()
    except UnicodeDecodeError:
        raise _not_utf8(path, kind) from None
    skip = 0 if _all_numbers(first_line.split(",")[:2]) else 1
    table = _numbers(path, 2, np.int64, kind, skip, ",")
    templates, first = np.unique(table[:, 0], return_index=True)
    subjects = table[first, 1]
    per_template = table[:, 1] != subjects[np.searchsorted(templates, table[:, 0])]
    if per_template.any():
        row = int(np.flatnonzero(per_template)[0])
        raise DataError(
            f"{path}, line {row + 1 + skip}: template {table[row, 0]} is given subject {table[row, 1]} here but "
            f"{subjects[np.searchsorted(templates, table[row, 0])]} above: a template shows one subject"
        )
    return Enrolment(templates, subjects, str(path))
