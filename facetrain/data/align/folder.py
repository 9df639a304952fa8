"""``facetrain align``: a folder of photos to a folder of aligned crops, same layout, resumable.

Each photo ``RAW/<identity>/<name>.<ext>`` becomes ``OUT/<identity>/<name>.jpg`` (``<name>_<k>.jpg``
for every face with ``all_faces``). A photo whose crop exists is skipped, so a rerun resumes. Photos
that gave no crop, and those where one face was chosen among several, are listed in
``OUT/align_report.tsv``; ``OUT/align.json`` keeps the options, so a rerun cannot mix two kinds of crop.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import signal
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from facetrain.data.align.aligner import Aligned, Aligner, check_options
from facetrain.data.align.geometry import template
from facetrain.data.preprocess import find_images
from facetrain.errors import ConfigError, DataError, OutputError
from facetrain.files import atomic_write, require_folder, write_text

REPORT, SETTINGS = "align_report.tsv", "align.json"
STATUSES = ("aligned", "multiple_faces", "center_crop", "no_face", "unreadable")
_CHUNK = 8  # photos per batch through the detector
# A worker process costs about 2 s to start (it imports torch). On 2 cores, 2 processes aligned 2000
# photos of 250x250 at 91/s against 84/s in one process, and 600 photos more slowly (bench_align.py).
PHOTOS_PER_WORKER = 1000
_QUALITY = 95


@dataclass(frozen=True)
class AlignOptions:
    size: tuple[int, int] = (112, 112)  # width, height
    all_faces: bool = False
    min_face: int = 20
    fallback: str = "none"


@dataclass
class AlignResult:
    out: Path
    report: Path
    images: int = 0  # photos found under the input
    already: int = 0  # skipped: aligned by an earlier run
    crops: int = 0  # crops written by this run
    counts: Counter = field(default_factory=Counter)  # this run's photos by status
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        """Photos that gave no crop (no face, or unreadable)."""
        return self.counts["no_face"] + self.counts["unreadable"]


Row = tuple[str, str, int, int, str]  # (relative path, status, faces found, crops written, detail)


def align_folder(
    source: str | Path,
    out: str | Path,
    options: AlignOptions = AlignOptions(),
    *,
    device: torch.device | str = "cpu",
    workers: int | None = None,
    progress: bool = False,
) -> AlignResult:
    """Aligns every photo under ``source`` into ``out``; see the module docstring.

    ``workers``: processes that align on CPU; None picks one per core when there are at least
    ``PHOTOS_PER_WORKER`` photos per process to amortise its start-up, else none (torch's threads).
    """
    check_options(options.min_face, options.fallback)
    template(*options.size)
    root = require_folder(source, DataError, "--input", "give a folder of photos, flat or one sub-folder per person")
    paths, _ = find_images(root)
    if not paths:
        raise DataError(f"--input '{root}' has no images: expected {root}/<person>/<photo> or {root}/<photo>")
    out = _check_out(root, Path(out))
    _claim(out, options)
    result = AlignResult(out=out, report=out / REPORT, images=len(paths))
    bases = _targets(root, out, paths)
    old_rows = _read_report(out / REPORT)
    kept: list[Row] = []  # report rows of photos aligned by an earlier run
    rows: list[Row] = []  # this run's
    jobs = []
    for path, base in zip(paths, bases, strict=True):
        relative = path.relative_to(root).as_posix()
        if _first_crop(base, options).exists():
            result.already += 1
            if relative in old_rows:
                kept.append(old_rows[relative])
        else:
            jobs.append((str(path), str(base), relative))
    if workers is None:
        cores = os.cpu_count() or 1
        workers = min(cores, len(jobs) // PHOTOS_PER_WORKER) if torch.device(device).type == "cpu" else 0
    start = time.perf_counter()
    try:
        with tqdm(total=len(jobs), unit="img", desc="align", disable=not progress, dynamic_ncols=True) as bar:
            for chunk_rows in _run(jobs, options, device, workers):
                rows.extend(chunk_rows)
                bar.update(len(chunk_rows))
    finally:  # also after Ctrl-C: the report covers what was done
        _write_report(out / REPORT, kept + rows)
    result.seconds = time.perf_counter() - start
    result.counts = Counter(row[1] for row in rows)
    result.crops = sum(row[3] for row in rows)
    return result


def _check_out(root: Path, out: Path) -> Path:
    inside = out.resolve() == root.resolve() or root.resolve() in out.resolve().parents
    if inside:
        raise ConfigError(
            f"--out '{out}' is inside --input '{root}': the crops would be read back as photos; give a folder "
            "beside it, such as data/aligned"
        )
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out '{out}' is a file: give a folder for the crops")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create --out '{out}' ({exc.strerror}): check the path and its permissions") from None
    return out


def _claim(out: Path, options: AlignOptions) -> None:
    """Writes the options to ``out/align.json``, or refuses when an earlier run used others."""
    wanted = {**asdict(options), "size": f"{options.size[0]}x{options.size[1]}", "template": "arcface"}
    file = out / SETTINGS
    if file.exists():
        try:
            earlier = json.loads(file.read_text())
        except (OSError, ValueError):
            earlier = None
        if earlier != wanted:
            differ = sorted(k for k in wanted if not isinstance(earlier, dict) or earlier.get(k) != wanted[k])
            raise ConfigError(
                f"--out '{out}' holds crops made with other options ({', '.join(differ)} differ; see {file}): "
                "rerun with the same options to resume, or give a new --out"
            )
        return
    write_text(file, json.dumps(wanted, indent=2) + "\n", "--out")


def _targets(root: Path, out: Path, paths: list[Path]) -> list[Path]:
    """Each photo's crop path without suffix; ``a.png`` beside ``a.jpg`` keeps its whole name."""
    stems = Counter((path.parent, path.stem.lower()) for path in paths)
    bases = []
    for path in paths:
        name = path.stem if stems[(path.parent, path.stem.lower())] == 1 else path.name
        bases.append(out / path.relative_to(root).parent / name)
    return bases


def _first_crop(base: Path, options: AlignOptions) -> Path:
    """The crop written last for a photo: when it exists, the photo is done."""
    return base.with_name(base.name + ("_0.jpg" if options.all_faces else ".jpg"))


def _run(jobs: list[tuple[str, str, str]], options: AlignOptions, device, workers: int):
    """Yields the rows of each chunk of jobs, aligned here or in ``workers`` processes (CPU only)."""
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    if workers <= 1 or torch.device(device).type != "cpu" or len(chunks) <= 1:
        aligner = Aligner(device, options.size, options.min_face, options.all_faces, options.fallback)
        for chunk in chunks:
            yield _align_chunk(aligner, chunk)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    pool = ProcessPoolExecutor(min(workers, len(chunks)), mp_context=context, initializer=_start_worker,
                               initargs=(options,))  # fmt: skip
    try:
        yield from pool.map(_worker_chunk, chunks)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_worker_aligner: Aligner | None = None


def _start_worker(options: AlignOptions) -> None:
    global _worker_aligner
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    torch.set_num_threads(1)  # the processes are the parallelism
    _worker_aligner = Aligner("cpu", options.size, options.min_face, options.all_faces, options.fallback)


def _worker_chunk(chunk: list[tuple[str, str, str]]) -> list[Row]:
    assert _worker_aligner is not None
    return _align_chunk(_worker_aligner, chunk)


def _align_chunk(aligner: Aligner, chunk: list[tuple[str, str, str]]) -> list[Row]:
    results = aligner.align_files([Path(path) for path, _, _ in chunk])
    return [_save(result, Path(base), relative, aligner.all_faces) for (_, base, relative), result in
            zip(chunk, results, strict=True)]  # fmt: skip


def _save(result: Aligned, base: Path, relative: str, all_faces: bool) -> Row:
    """Writes a photo's crops, each atomically; with several, the first one last (it marks the photo done)."""
    if result.crops:
        base.parent.mkdir(parents=True, exist_ok=True)
    names = [f"{base.name}_{k}.jpg" for k in range(len(result.crops))] if all_faces else [f"{base.name}.jpg"]
    for name, crop in reversed(list(zip(names, result.crops, strict=False))):
        grey = bool((crop[0] == crop[1]).all() and (crop[1] == crop[2]).all())
        image = Image.fromarray((crop[0] if grey else crop.permute(1, 2, 0)).contiguous().numpy())
        with atomic_write(base.with_name(name), "--out") as temp:
            image.save(temp, format="JPEG", quality=_QUALITY)
    detail = result.detail.replace("\t", " ").replace("\n", " ")
    return relative, result.status, result.faces, len(result.crops), detail


def _read_report(file: Path) -> dict[str, Row]:
    """An earlier run's report rows by photo (unreadable lines are dropped: they are only notes)."""
    rows: dict[str, Row] = {}
    if not file.exists():
        return rows
    with open(file, newline="", encoding="utf-8") as stream:
        for line in csv.reader(stream, delimiter="\t"):
            if len(line) == 5 and line[1] in STATUSES and line[2].isdigit() and line[3].isdigit():
                rows[line[0]] = (line[0], line[1], int(line[2]), int(line[3]), line[4])
    return rows


def _write_report(file: Path, rows: list[Row]) -> None:
    notes = sorted(row for row in rows if row[1] != "aligned")
    with atomic_write(file, "--out") as temp, open(temp, "w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream, delimiter="\t", lineterminator="\n")
        writer.writerow(["path", "status", "faces", "crops", "detail"])
        writer.writerows(notes)
