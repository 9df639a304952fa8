"""Verification pairs lists: LFW ``pairs.txt``, plain ``path1 path2 label`` lists and insightface ``.bin`` files.

Writing new pairs files (``facetrain pairs``) lives in ``facetrain.evaluation.pairgen``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from facetrain.data import IMAGE_EXTENSIONS
from facetrain.errors import ConfigError, DataError
from facetrain.evaluation.binfile import read_bin
from facetrain.files import require_file, require_folder

FORMATS = ("lfw", "list", "bin")
_SAME_LABELS = frozenset({"1", "true", "same"})
_DIFFERENT_LABELS = frozenset({"0", "false", "diff", "different"})
_LABELS = _SAME_LABELS | _DIFFERENT_LABELS


@dataclass(frozen=True)
class PairList:
    """A verification pairs list: unique images, and per pair two indices into them and the answer."""

    name: str
    source: Path
    format: str
    images: list[Path] | list[bytes]
    left: list[int]
    right: list[int]
    is_same: list[bool]
    folds: list[int] | None

    def __len__(self) -> int:
        return len(self.is_same)


def detect_format(path: Path) -> str:
    """``bin`` for a ``.bin`` suffix or pickle magic; ``lfw`` if the first non-empty line is one or two
    whole numbers (the LFW header); otherwise ``list``."""
    path = Path(path)
    if path.suffix.lower() == ".bin":
        return "bin"
    try:
        with path.open("rb") as file:
            head = file.read(2)
            if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
                return "bin"
            file.seek(0)
            for raw in file:
                fields = raw.decode("utf-8-sig", errors="replace").split()
                if fields:
                    return "lfw" if len(fields) <= 2 and all(map(_is_number, fields)) else "list"
    except OSError as exc:
        raise DataError(f"{path}: cannot read the pairs file ({exc.strerror}): check the path") from None
    return "list"


def read_pairs_files(paths: list[Path], images_root: Path | None = None, format: str = "auto") -> list[PairList]:
    """``facetrain eval --pairs``: every file read and checked, before a checkpoint is loaded."""
    if format not in ("auto", *FORMATS):
        raise ConfigError(f"--format: '{format}' is not a pairs format: use one of auto, {', '.join(FORMATS)}")
    return [read_pairs(path, images_root, format) for path in paths]


def require_pairs_file(path: str | Path) -> Path:
    """``path`` if it is a file (what ``read_pairs`` checks first, without reading it); else one DataError."""
    fix = "give an LFW pairs.txt, a `path1 path2 label` list or a .bin"
    return require_file(path, DataError, "pairs file", fix, ("pairs.txt",))


def read_pairs(path: str | Path, images_root: str | Path | None = None, format: str = "auto") -> PairList:
    """Reads a pairs list (``format``: auto, lfw, list or bin) and checks that every image it names exists.

    lfw: LFW ``pairs.txt``. Header ``folds<TAB>pairs_per_fold``: that many blocks of same-person lines
    (``name i j``) then different-person lines (``name1 i name2 j``); header ``n`` (View 1): n same then n
    different lines, no folds. Image i of name is ``ROOT/name/name_%04d.<ext>``, or ``ROOT/name/<i>.<ext>``
    for plainly numbered folders like ORL's ``s1/1.pgm``; the extension is detected.
    list: ``path1 path2 label`` per line, split by tab, comma or spaces; label 1/0, true/false or same/diff.
    bin: an insightface pickle ``(encoded_images, is_same)``; pair i is images 2i and 2i+1 (see ``binfile``).
    ``images_root`` (ROOT) defaults to the pairs file's folder; bin ignores it.

    Raises:
        DataError: the file is malformed or unsafe, or images are missing.
    """
    path = require_pairs_file(path)
    if format not in ("auto", *FORMATS):
        raise DataError(f"unknown pairs format '{format}': use auto, {', '.join(FORMATS)}")
    kind = detect_format(path) if format == "auto" else format
    if kind == "bin":
        bins, is_same = read_bin(path)
        count = 2 * len(is_same)
        return PairList(path.stem, path, kind, bins, list(range(0, count, 2)), list(range(1, count, 2)), is_same, None)

    if images_root is not None:
        require_folder(images_root, DataError, "images root", "give the folder the pairs file's paths start from")
    root = Path(images_root if images_root is not None else path.parent).resolve()
    lines = _text_lines(path)
    if kind == "lfw":
        pairs, folds = _parse_lfw(str(path), lines, root)
    else:
        pairs, folds = _parse_list(str(path), lines, root), None
    # Pairs lists repeat images; index each once so it is embedded once.
    index: dict[Path, int] = {}
    left, right = [], []
    for first, second, _ in pairs:
        left.append(index.setdefault(first, len(index)))
        right.append(index.setdefault(second, len(index)))
    images = list(index)
    _check_present(str(path), images, root)
    return PairList(path.stem, path, kind, images, left, right, [same for _, _, same in pairs], folds)


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _text_lines(path: Path) -> list[tuple[int, str]]:
    """Non-blank lines, stripped, with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(_not_utf8(path, exc)) from None
    except OSError as exc:
        raise DataError(f"pairs file '{path}' cannot be read ({exc.strerror or exc}): check the path") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    """Where the first byte that is not UTF-8 is: its line and column, and the byte."""
    data = exc.object if isinstance(exc.object, bytes) else b""
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    byte = data[exc.start : exc.start + 1].hex() if data else "?"
    return f"{path}, line {line}, column {column}: byte 0x{byte} is not UTF-8: re-save the pairs file as UTF-8"


class _LfwImages:
    """Finds image ``number`` of ``name`` under the root, listing each identity folder once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.last_extension = ".jpg"
        self.folders: dict[str, dict[str, dict[str, Path]]] = {}

    def __call__(self, name: str, number: int) -> Path:
        if name not in self.folders:
            stems: dict[str, dict[str, Path]] = {}
            folder = self.root / name
            if folder.is_dir():
                for file in folder.iterdir():
                    if file.suffix.lower() in IMAGE_EXTENSIONS:
                        stems.setdefault(file.stem, {})[file.suffix.lower()] = file
            self.folders[name] = stems
        for stem in (f"{name}_{number:04d}", str(number)):
            found = self.folders[name].get(stem)
            if found:
                # A data set nearly always uses one extension, so the previous image's wins any tie.
                extension = self.last_extension if self.last_extension in found else min(found)
                self.last_extension = extension
                return found[extension]
        return self.root / name / f"{name}_{number:04d}.jpg"  # does not exist: reported as missing


def _image_number(where: str, line: int, token: str) -> int:
    if not _is_number(token):
        raise DataError(f"{where}:{line}: image number '{token}' is not a whole number")
    if int(token) == 0:
        raise DataError(f"{where}:{line}: image numbers start at 1, got 0")
    return int(token)


def _parse_lfw(where: str, lines: list[tuple[int, str]], root: Path) -> tuple[list[tuple], list[int] | None]:
    if not lines:
        raise DataError(f"{where}: the file is empty: expected an LFW header line, then one pair per line")
    (header_line, header), *body = lines
    counts = header.split()
    if not 1 <= len(counts) <= 2 or not all(_is_number(c) and int(c) > 0 for c in counts):
        raise DataError(
            f"{where}:{header_line}: expected a header 'folds<TAB>pairs_per_fold' or 'pairs', got '{header}'"
        )
    fold_count, per = (int(counts[0]), int(counts[1])) if len(counts) == 2 else (1, int(counts[0]))
    layout = f"{fold_count} folds of {per}+{per} pairs" if len(counts) == 2 else f"{per}+{per} pairs"
    find = _LfwImages(root)
    pairs = []
    for line, text in body:
        fields = text.split()
        if len(fields) not in (3, 4):
            raise DataError(f"{where}:{line}: expected 3 or 4 tab-separated fields, got {len(fields)}")
        i, j = _image_number(where, line, fields[1]), _image_number(where, line, fields[-1])
        same = len(fields) == 3
        fold, offset = divmod(len(pairs), 2 * per)
        if fold < fold_count and same != (offset < per):
            kinds = ("same-person", "different-person") if offset < per else ("different-person", "same-person")
            block = f"fold {fold + 1} of {fold_count}" if len(counts) == 2 else "the file"
            raise DataError(
                f"{where}:{line}: expected a {kinds[0]} line in {block}, got a {kinds[1]} line: the header says "
                f"{layout}, so each block must be {per} same-person lines, then {per} different-person lines"
            )
        pairs.append((find(fields[0], i), find(fields[0] if same else fields[2], j), same))
    if len(pairs) != fold_count * 2 * per:
        raise DataError(
            f"{where}: header says {layout}, found {len(pairs)} pair lines: fix the header or the pair lines"
        )
    return pairs, [p // (2 * per) for p in range(len(pairs))] if len(counts) == 2 else None


def _parse_list(where: str, lines: list[tuple[int, str]], root: Path) -> list[tuple]:
    pairs = []
    for line, text in lines:
        if text.startswith("#"):
            continue
        separator = "\t" if "\t" in text else "," if "," in text else None
        fields = [field.strip() for field in text.split(separator) if field.strip()]
        if len(fields) != 3:
            raise DataError(f"{where}:{line}: expected 'path1 path2 label', got {len(fields)} fields")
        label = fields[2].lower()
        if label not in _LABELS:
            raise DataError(f"{where}:{line}: label must be 1 or 0, got '{fields[2]}'")
        pairs.append(((root / fields[0]).resolve(), (root / fields[1]).resolve(), label in _SAME_LABELS))
    if not pairs:
        raise DataError(f"{where}: no pairs found: expected one 'path1 path2 label' line per pair")
    return pairs


def _check_present(where: str, images: list[Path], root: Path) -> None:
    missing = [image for image in images if not image.is_file()]
    shown = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in missing[:5])
    if missing:
        first = f"first {min(5, len(missing))}: {shown}"
        raise DataError(f"{where}: {len(missing)} images missing under {root} ({first}): check --images")
