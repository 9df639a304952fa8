"""Drawing LFW-style verification pairs from identity folders and writing them (``facetrain pairs``)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

from facetrain.data import IMAGE_EXTENSIONS
from facetrain.errors import DataError
from facetrain.files import output_path, write_text

SamePair = tuple[str, int, int]
DifferentPair = tuple[str, int, str, int]
Block = tuple[list[SamePair], list[DifferentPair]]
Numbered = list[tuple[str, list[int]]]  # identity name, sorted image numbers


def _file_number(name: str, path: Path) -> int | None:
    """The number an LFW pairs line uses for ``path``: k from ``{name}_{k:04d}`` or ``{k}``, else None."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None
    for prefix, spelling in ((f"{name}_", "{:04d}"), ("", "{}")):
        digits = path.stem[len(prefix) :] if path.stem.startswith(prefix) else ""
        # Only the exact spelling the reader rebuilds from the number counts (so not 03.jpg).
        if digits.isdigit() and digits.isascii() and int(digits) > 0 and spelling.format(int(digits)) == digits:
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
    write_text(path, "\n".join(lines) + "\n", "--out")


def write_pairs_file(
    out: str | Path, *, root: str | Path | None, config: str | Path | None, folds: int, pairs_per_fold: int, seed: int
) -> Path:
    """``facetrain pairs``: an LFW-format file from an identity folder, or a config's held-out identities."""
    from facetrain.config import load_config
    from facetrain.data import scan_identities, split_identities

    target = output_path(out, "--out")  # before the identities are scanned
    if config is not None:
        _, identities = split_identities(load_config(config).data)
        if not identities:
            raise DataError(f"{config}: holds out no identities: set data.val_identities or data.val_root")
    else:
        identities = scan_identities(root, "--root")
    if not isinstance(identities[0][1], list):
        where = f"{config}: data.root or data.val_root" if config is not None else f"--root '{root}'"
        raise DataError(
            f"{where} is a .rec, and pairs name image files: write its images out with "
            "`facetrain unpack FILE.rec --out FOLDER`, then draw pairs from FOLDER"
        )
    blocks = make_pairs(identities, folds, pairs_per_fold, seed)
    write_lfw_pairs(target, blocks, folds, pairs_per_fold)
    return target
