"""Verification pairs lists: LFW ``pairs.txt``, plain ``path1 path2 label`` lists and insightface ``.bin`` files.

Also draws LFW-style pairs from identity folders and writes them, for ``facetrain pairs``.
"""

from __future__ import annotations

import itertools
import pickle
import random
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from facetrain.errors import DataError
from facetrain.preprocess import IMAGE_EXTENSIONS

SamePair = tuple[str, int, int]
DifferentPair = tuple[str, int, str, int]
Block = tuple[list[SamePair], list[DifferentPair]]
Numbered = list[tuple[str, list[int]]]  # identity name, sorted image numbers

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


def read_pairs(path: str | Path, images_root: str | Path | None = None, format: str = "auto") -> PairList:
    """Reads a pairs list (``format``: auto, lfw, list or bin) and checks that every image it names exists.

    lfw: LFW ``pairs.txt``. Header ``folds<TAB>pairs_per_fold``: that many blocks of same-person lines
    (``name i j``) then different-person lines (``name1 i name2 j``); header ``n`` (View 1): n same then n
    different lines, no folds. Image i of name is ``ROOT/name/name_%04d.<ext>``, or ``ROOT/name/<i>.<ext>``
    for plainly numbered folders like ORL's ``s1/1.pgm``; the extension is detected.
    list: ``path1 path2 label`` per line, split by tab, comma or spaces; label 1/0, true/false or same/diff.
    bin: an insightface pickle ``(encoded_images, is_same)``; pair i is images 2i and 2i+1.
    ``images_root`` (ROOT) defaults to the pairs file's folder; bin ignores it.

    Raises:
        DataError: the file is malformed or unsafe, or images are missing.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"pairs file '{path}' is a directory: give the pairs file inside it")
    if not path.is_file():
        raise DataError(f"pairs file '{path}' does not exist: check the path")
    if format not in ("auto", *FORMATS):
        raise DataError(f"unknown pairs format '{format}': use auto, {', '.join(FORMATS)}")
    kind = detect_format(path) if format == "auto" else format
    if kind == "bin":
        bins, is_same = _read_bin(path)
        count = 2 * len(is_same)
        return PairList(path.stem, path, kind, bins, list(range(0, count, 2)), list(range(1, count, 2)), is_same, None)

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
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file: give a pairs .txt, or name a pickled .bin '*.bin'") from None
    except OSError as exc:
        raise DataError(f"pairs file '{path}' cannot be read ({exc.strerror or exc}): check the path") from None
    return [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


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


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only plain data: every class or function reference is refused, so nothing in the file runs."""

    def __init__(self, file: BinaryIO, where: str) -> None:
        super().__init__(file, encoding="bytes")  # the published files come from Python 2, whose str is bytes
        self.where = where

    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("_codecs", "encode"):
            # Python 3 writes bytes at protocol 2 as _codecs.encode(text, "latin1"); rebuild them ourselves.
            return _latin1_bytes
        raise DataError(
            f"{self.where}: refused to load: the pickle asks for {module}.{name}, "
            "and a pairs .bin may hold only bytes, lists, tuples and bools"
        )


def _latin1_bytes(text: object, encoding: object = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("only _codecs.encode(str, 'latin1') is allowed")
    return text.encode("latin-1")


def _read_bin(path: Path) -> tuple[list[bytes], list[bool]]:
    where = str(path)
    try:
        with path.open("rb") as file:
            data = _PlainDataUnpickler(file, where).load()
    except DataError:
        raise
    except Exception as exc:  # any failure on untrusted bytes is the file's fault, never a bug here
        raise DataError(f"{where}: not a readable pairs .bin ({type(exc).__name__}: {exc}): re-create it") from None
    shape = "expected a pickled (images, is_same) pair: a list of encoded images and a list of bools"
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise DataError(f"{where}: {shape}, got {type(data).__name__}: this is not a pairs .bin")
    bins, is_same = data
    if not isinstance(bins, (list, tuple)) or not all(isinstance(item, (bytes, bytearray)) for item in bins):
        raise DataError(f"{where}: {shape}, but the images are not all bytes: this is not a pairs .bin")
    if not isinstance(is_same, (list, tuple)) or not all(isinstance(item, int) and item in (0, 1) for item in is_same):
        raise DataError(f"{where}: {shape}, but is_same is not all bools: this is not a pairs .bin")
    if not is_same or len(bins) != 2 * len(is_same):
        raise DataError(f"{where}: {len(bins)} images for {len(is_same)} pairs: a pairs .bin has 2 images per pair")
    return [bytes(item) for item in bins], [bool(item) for item in is_same]


def _file_number(name: str, path: Path) -> int | None:
    """The number an LFW pairs line uses for ``path``: k from ``{name}_{k:04d}`` or ``{k}``, else None."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    for prefix, spelling in ((f"{name}_", "{:04d}"), ("", "{}")):
        digits = path.stem[len(prefix) :] if path.stem.startswith(prefix) else ""
        # Only the exact spelling the reader rebuilds from the number counts (so not 03.jpg).
        if _is_number(digits) and int(digits) > 0 and spelling.format(int(digits)) == digits:
            return int(digits)
    return None


def _lfw_numbers(name: str, paths: list[Path]) -> list[int]:
    """Sorted image numbers of an identity, or a DataError when an LFW pairs line cannot name each image."""
    fix = "rename them name_0001.jpg, name_0002.jpg, ... or 1.jpg, 2.jpg, ..."
    if name.split() != [name]:
        raise DataError(f"identity folder '{name}': an LFW pairs file cannot hold whitespace in names: rename it")
    numbers = []
    for path in paths:
        number = _file_number(name, path)
        if number is None:
            raise DataError(f"'{path}': the files of '{name}' are not named {name}_0001.jpg or 1.jpg: {fix}")
        numbers.append(number)
    if len(set(numbers)) != len(numbers):
        raise DataError(f"identity '{name}': two images share a number, so a pairs line is ambiguous: {fix}")
    return sorted(numbers)


def lfw_addressable(name: str, paths: list[Path]) -> bool:
    """True when an LFW pairs line can name each image: ``{name}_{k:04d}.<ext>`` or ``{k}.<ext>``, k unique.

    The number comes from the file name, not the sorted position (``10.pgm`` sorts before ``2.pgm``).
    """
    try:
        _lfw_numbers(name, paths)
    except DataError:
        return False
    return True


def make_pairs(identities: list[tuple[str, list[Path]]], folds: int, pairs_per_fold: int, seed: int) -> list[Block]:
    """Draws ``folds`` blocks of ``pairs_per_fold`` same-person and different-person pairs.

    Same pairs are ``(name, i, j)`` with i < j, different pairs ``(name1, i, name2, j)``; i and j are the
    numbers in the file names, so ``write_lfw_pairs`` then ``read_pairs`` gives back the same files. No pair
    appears twice, same pairs are spread evenly over identities with 2+ images, and a seed gives one result.

    Raises:
        DataError: files are not numbered, or there are too few distinct pairs.
    """
    if folds < 1 or pairs_per_fold < 1:
        raise DataError(f"need at least 1 fold and 1 pair per fold, got {folds} and {pairs_per_fold}")
    numbered = [(name, _lfw_numbers(name, paths)) for name, paths in identities]
    rng = random.Random(seed)
    needed = folds * pairs_per_fold
    same = _same_pairs(numbered, needed, folds, rng)
    different = _different_pairs(numbered, needed, folds, rng)
    blocks = []
    for start in range(0, needed, pairs_per_fold):
        end = start + pairs_per_fold
        blocks.append((sorted(same[start:end]), sorted(different[start:end])))
    return blocks


def _too_few(kind: str, possible: int, needed: int, folds: int) -> DataError:
    fix = f"use --pairs-per-fold {possible // folds} or fewer" if possible >= folds else "add identities"
    return DataError(f"only {possible} distinct {kind} pairs are possible, but {needed} are needed: {fix}")


def _same_pairs(numbered: Numbered, needed: int, folds: int, rng: random.Random) -> list[SamePair]:
    eligible = [(name, numbers) for name, numbers in numbered if len(numbers) >= 2]
    capacity = [len(numbers) * (len(numbers) - 1) // 2 for _, numbers in eligible]
    if sum(capacity) < needed:
        raise _too_few("same-person", sum(capacity), needed, folds)
    # Share the pairs out evenly (in random order) so a few large identities cannot dominate.
    order = list(range(len(eligible)))
    rng.shuffle(order)
    quota = [0] * len(eligible)
    remaining = needed
    while remaining:
        open_ = [k for k in order if quota[k] < capacity[k]]
        share = max(1, remaining // len(open_))
        for k in open_:
            take = min(share, capacity[k] - quota[k], remaining)
            quota[k] += take
            remaining -= take
    pairs = []
    for k, (name, numbers) in enumerate(eligible):
        # Sampling pair ranks draws distinct pairs without listing all m(m-1)/2 of them.
        for rank in rng.sample(range(capacity[k]), quota[k]):
            first = 0
            while rank >= len(numbers) - 1 - first:
                rank -= len(numbers) - 1 - first
                first += 1
            pairs.append((name, numbers[first], numbers[first + 1 + rank]))
    rng.shuffle(pairs)
    return pairs


def _different_pairs(numbered: Numbered, needed: int, folds: int, rng: random.Random) -> list[DifferentPair]:
    sizes = [len(numbers) for _, numbers in numbered]
    possible = (sum(sizes) ** 2 - sum(size * size for size in sizes)) // 2
    if possible < needed:
        raise _too_few("different-person", possible, needed, folds)
    if 2 * needed > possible:
        # A dense request: list them all so the draw cannot stall on repeats.
        identities = itertools.combinations(range(len(numbered)), 2)
        every = [(a, i, b, j) for a, b in identities for i, j in itertools.product(numbered[a][1], numbered[b][1])]
        chosen = rng.sample(every, needed)
    else:
        seen: set[tuple[int, int, int, int]] = set()
        chosen = []
        while len(chosen) < needed:
            a, b = sorted(rng.sample(range(len(numbered)), 2))
            pair = (a, rng.choice(numbered[a][1]), b, rng.choice(numbered[b][1]))
            if pair not in seen:
                seen.add(pair)
                chosen.append(pair)
    return [(numbered[a][0], i, numbered[b][0], j) for a, i, b, j in chosen]


def write_lfw_pairs(path: Path, blocks: list[Block], folds: int, pairs_per_fold: int) -> None:
    """Writes ``make_pairs`` blocks as an LFW ``pairs.txt``: header ``folds<TAB>pairs_per_fold``, then fold
    after fold its same-person lines followed by its different-person lines, tab-separated."""
    if len(blocks) != folds or any(len(s) != pairs_per_fold or len(d) != pairs_per_fold for s, d in blocks):
        raise ValueError(f"blocks do not hold {folds} folds of {pairs_per_fold}+{pairs_per_fold} pairs")
    lines = [f"{folds}\t{pairs_per_fold}"]
    for same, different in blocks:
        lines += ["\t".join(map(str, pair)) for pair in [*same, *different]]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_pairs_file(
    out: str | Path, *, root: str | Path | None, config: str | Path | None, folds: int, pairs_per_fold: int, seed: int
) -> Path:
    """``facetrain pairs``: an LFW-format file from an identity folder, or a config's held-out identities."""
    from facetrain.config import load_config
    from facetrain.data import scan_identities, split_identities

    if config is not None:
        _, identities = split_identities(load_config(config).data)
        if not identities:
            raise DataError(f"{config}: holds out no identities: set data.val_identities or data.val_root")
    else:
        identities = scan_identities(root, "--root")
    blocks = make_pairs(identities, folds, pairs_per_fold, seed)
    target = Path(out)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_lfw_pairs(target, blocks, folds, pairs_per_fold)
    except OSError as exc:
        raise DataError(f"--out: cannot write '{target}' ({exc.strerror or exc}): choose another path") from None
    return target
