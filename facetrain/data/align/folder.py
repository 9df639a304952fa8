"""``facetrain align``: a folder of photos to a folder of aligned crops, same layout, resumable.

Each photo ``RAW/<identity>/<name>.<ext>`` becomes ``OUT/<identity>/<name>.jpg`` (``<name>_<k>.jpg``
for every face with ``all_faces``). A photo whose crop exists is skipped, so a rerun resumes. Photos
that gave no crop, and those where one face was chosen among several, are listed in
``OUT/align_report.tsv``; ``OUT/align.json`` keeps the options, so a rerun cannot mix two kinds of crop.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from facetrain.data.align.aligner import Aligned, Aligner
from facetrain.data.align.options import AlignOptions, check_folders, check_options
from facetrain.data.align.report import REPORT, Row, journal, read_rows, write_report
from facetrain.data.images import quiet_pillow
from facetrain.data.sources import unsupported_files
from facetrain.errors import ConfigError, OutputError
from facetrain.files import atomic_write, write_text

SETTINGS = "align.json"
_CHUNK = 8  # photos per batch through the detector
Job = tuple[str, str, str, bool]  # a photo's path, its crop's path without suffix, its report name, whether to do it
# A worker process costs about 2 s to start (it imports torch). On 2 cores, 2 processes aligned 2000
# photos of 250x250 at 91/s against 84/s in one process, and 600 photos more slowly (bench_align.py).
PHOTOS_PER_WORKER = 1000
_QUALITY = 95
SHOWN_TYPES = ("JPEG", "PNG", "BMP", "TIFF", "WebP", "PGM/PPM")  # what the report tells a user to convert to


@dataclass
class AlignResult:
    out: Path
    report: Path
    images: int = 0  # photos found under the input
    already: int = 0  # skipped: aligned by an earlier run
    crops: int = 0  # crops written by this run
    counts: Counter = field(default_factory=Counter)  # this run's photos by status
    seconds: float = 0.0
    unsupported: int = 0  # files of a type facetrain does not read (a .gif, a .heic): listed in the report

    @property
    def skipped(self) -> int:
        """Photos that gave no crop (no face, unreadable, or the crop could not be written), and files of a
        type facetrain does not read."""
        return self.counts["no_face"] + self.counts["unreadable"] + self.counts["unwritable"] + self.unsupported


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
    root, paths, out = check_folders(source, out)
    # Loads the weights here: a worker that failed to would be restarted forever.
    aligner = Aligner(device, options.size, options.min_face, options.all_faces, options.fallback)
    _claim(out, options)
    result = AlignResult(out=out, report=out / REPORT, images=len(paths))
    earlier = read_rows(out)  # an earlier run's report, and the journal of one that was killed
    write_report(out, list(earlier.values()))
    kept: list[Row] = []  # report rows of photos aligned by an earlier run
    jobs: list[Job] = []
    others = _unsupported_rows(root)
    for path, base in zip(paths, _targets(root, out, paths), strict=True):
        relative = path.relative_to(root).as_posix()
        done = _first_crop(base, options).exists()
        if done:
            result.already += 1
            kept.extend([earlier[relative]] if relative in earlier else [])
        jobs.append((str(path), str(base), relative, not done))
    chunks = _chunks(jobs)
    todo = sum(job[3] for job in jobs)
    if workers is None:
        cores = os.cpu_count() or 1
        workers = min(cores, todo // PHOTOS_PER_WORKER) if torch.device(device).type == "cpu" else 0
    rows: list[Row] = []  # this run's
    start = time.perf_counter()
    try:
        # closing(): on Ctrl-C the pool is shut down here, its pending chunks cancelled, before the report.
        with (
            tqdm(total=todo, unit="img", desc="align", disable=not progress, dynamic_ncols=True) as bar,
            closing(_run(chunks, out, aligner, options, workers)) as results,
        ):
            for chunk_rows in results:
                rows.extend(chunk_rows)
                bar.update(len(chunk_rows))
    finally:  # also after Ctrl-C: the report covers what was done, with the journal's rows of chunks cut short
        unfinished = {relative: earlier[relative] for _, _, relative, wanted in jobs if wanted and relative in earlier}
        latest = {**unfinished, **{row[0]: row for row in rows}, **read_rows(out, journal_only=True)}
        write_report(out, [*kept, *latest.values(), *others])
    result.seconds = time.perf_counter() - start
    result.counts = Counter(row[1] for row in rows)
    result.crops = sum(row[3] for row in rows)
    result.unsupported = len(others)
    return result


def _unsupported_rows(root: Path) -> list[Row]:
    """A report row for each file under ``root`` that is not of an image type facetrain reads."""
    rows = []
    for path in unsupported_files(root):
        kind = f"a {path.suffix.lower()} file" if path.suffix else "a file without an extension"
        reason = f"{kind} is not an image type facetrain reads: convert it to {', '.join(SHOWN_TYPES)}"
        rows.append((path.relative_to(root).as_posix(), "unsupported", 0, 0, reason))
    return rows


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
    """Each photo's crop path without suffix: its stem, or its whole name (``a.png`` beside ``a.jpg``),
    or, should that clash too, its whole name and a number. Case is ignored, as some disks do."""
    stems = Counter((path.parent, path.stem.lower()) for path in paths)
    names = [path.stem if stems[(path.parent, path.stem.lower())] == 1 else path.name for path in paths]
    taken = Counter((path.parent, name.lower()) for path, name in zip(paths, names, strict=True))
    bases, used = [], set()
    for path, name in zip(paths, names, strict=True):
        if taken[(path.parent, name.lower())] > 1:
            name = next(
                f"{name}~{k}" for k in range(1, len(paths) + 1) if (path.parent, f"{name}~{k}".lower()) not in used
            )
        used.add((path.parent, name.lower()))
        bases.append(out / path.relative_to(root).parent / name)
    return bases


def _first_crop(base: Path, options: AlignOptions) -> Path:
    """The crop written last for a photo: when it exists, the photo is done."""
    return base.with_name(base.name + ("_0.jpg" if options.all_faces else ".jpg"))


def _chunks(jobs: list[Job]) -> list[list[Job]]:
    """The batches through the detector: fixed runs of ``_CHUNK`` photos of the whole listing, whatever an
    earlier run did, so a photo is always detected beside the same others; those with nothing to do go."""
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    return [chunk for chunk in chunks if any(wanted for *_, wanted in chunk)]


def _run(chunks: list[list[Job]], out: Path, aligner: Aligner, options: AlignOptions, workers: int):
    """Yields the rows of each chunk, aligned here or in ``workers`` processes (CPU only).

    On a CPU, every chunk is detected with one kernel thread, in a worker process or in a thread of
    this one: a convolution's sums can come out in another order with another thread count (or
    batch), which moves a landmark by 1e-4 px and a crop's pixel by one grey level. So the crops are
    byte for byte the same however the run is split: workers, threads, or a resume.
    """
    if aligner.detector.device.type != "cpu":
        for chunk in chunks:
            yield _align_chunk(aligner, chunk, out)
        return
    if workers <= 1 or len(chunks) <= 1:
        yield from _threaded(chunks, out, aligner)
        return
    pool = _pool(min(workers, len(chunks)), options)
    try:
        yield from pool.imap(_worker_chunk, [(chunk, out) for chunk in chunks])
        pool.close()
    except BaseException:  # Ctrl-C, or the caller stopped early: stop the workers now, not after every chunk
        pool.terminate()  # a crop is renamed into place whole or not at all, so killing a worker is safe
        raise
    finally:
        pool.join()


def _threaded(chunks: list[list[Job]], out: Path, aligner: Aligner):
    """The chunks aligned by as many threads of this process as torch had kernel threads, one kernel
    thread each (chunks in parallel rather than each kernel split: the same speed, or better, on CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    executor = ThreadPoolExecutor(max(1, min(threads, len(chunks))), thread_name_prefix="align")
    with quiet_pillow():  # for the threads' decodes, which cannot set warning filters themselves
        try:
            yield from executor.map(lambda chunk: _align_chunk(aligner, chunk, out), chunks)
        finally:  # Ctrl-C, or the caller stopped early: chunks not started are dropped, running ones finish
            executor.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)


def _pool(processes: int, options: AlignOptions) -> multiprocessing.pool.Pool:
    """Worker processes, started with SIGINT ignored: Ctrl-C is the main process's alone, even while
    they still import torch (no traceback from each child)."""
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return context.Pool(processes, initializer=_start_worker, initargs=(options,))
    finally:
        signal.signal(signal.SIGINT, interrupt)


_worker_aligner: Aligner | None = None


def _start_worker(options: AlignOptions) -> None:
    global _worker_aligner
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    torch.set_num_threads(1)  # the processes are the parallelism
    _worker_aligner = Aligner("cpu", options.size, options.min_face, options.all_faces, options.fallback)


def _worker_chunk(job: tuple[list[Job], Path]) -> list[Row]:
    chunk, out = job
    assert _worker_aligner is not None
    return _align_chunk(_worker_aligner, chunk, out)


def _align_chunk(aligner: Aligner, chunk: list[Job], out: Path) -> list[Row]:
    """Detects the whole chunk (photos done by an earlier run too: they shape the batch) and writes the
    crops of the photos still to do."""
    results = aligner.align_files([Path(path) for path, *_ in chunk])
    return [_save(result, Path(base), relative, aligner.all_faces, out) for (_, base, relative, wanted), result in
            zip(chunk, results, strict=True) if wanted]  # fmt: skip


def _save(result: Aligned, base: Path, relative: str, all_faces: bool, out: Path) -> Row:
    """Writes a photo's crops, each atomically; with several, the first one last (it marks the photo done).

    A note goes to the journal before any crop: a crop on disk never lacks its note.
    """
    row = (relative, result.status, result.faces, len(result.crops), " ".join(result.detail.split()))
    if result.status != "aligned":
        journal(out, row)
    names = [f"{base.name}_{k}.jpg" for k in range(len(result.crops))] if all_faces else [f"{base.name}.jpg"]
    try:
        if result.crops:
            base.parent.mkdir(parents=True, exist_ok=True)
        for name, crop in reversed(list(zip(names, result.crops, strict=False))):
            grey = bool((crop[0] == crop[1]).all() and (crop[1] == crop[2]).all())
            image = Image.fromarray((crop[0] if grey else crop.permute(1, 2, 0)).contiguous().numpy())
            with atomic_write(base.with_name(name), "--out") as temp:
                image.save(temp, format="JPEG", quality=_QUALITY)
    except (OutputError, OSError) as exc:  # this photo's crop alone (a name too long, say): the run goes on
        row = (relative, "unwritable", result.faces, 0, " ".join(str(exc).split()))
        journal(out, row)
    return row
