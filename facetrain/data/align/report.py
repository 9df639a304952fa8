"""``align_report.tsv``: the photos that gave no crop, or a crop with a choice made, and why.

While a run goes on, each such row is first appended to a hidden journal beside the report, before
the photo's crops are written; the report is rewritten from both at the end of a run and at the
start of the next. So a crash or a kill never leaves a crop whose note is lost.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from facetrain.files import atomic_write

REPORT, JOURNAL = "align_report.tsv", ".align_journal.tsv"
STATUSES = ("aligned", "multiple_faces", "center_crop", "no_face", "unreadable", "unwritable", "unsupported")
HEADER = ("path", "status", "faces", "crops", "detail")
Row = tuple[str, str, int, int, str]  # (relative path, status, faces found, crops written, detail)
# File names need not be UTF-8 on Linux: their undecodable bytes go through as they came.
_TEXT = {"encoding": "utf-8", "errors": "surrogateescape", "newline": ""}


def _line(row: Row) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, delimiter="\t", lineterminator="\n").writerow(row)
    return buffer.getvalue()


def journal(out: Path, row: Row) -> None:
    """Appends one row to the run's journal (also from worker processes: one short append each)."""
    with open(out / JOURNAL, "a", **_TEXT) as stream:
        stream.write(_line(row))


def read_rows(out: Path, journal_only: bool = False) -> dict[str, Row]:
    """The rows of the report, then of the journal (a later row for a photo wins). Lines that do not
    parse are dropped: the report is notes, not data."""
    rows: dict[str, Row] = {}
    for name in (JOURNAL,) if journal_only else (REPORT, JOURNAL):
        file = out / name
        if not file.exists():
            continue
        with open(file, **_TEXT) as stream:
            for line in csv.reader(stream, delimiter="\t"):
                if len(line) == 5 and line[1] in STATUSES and line[2].isdigit() and line[3].isdigit():
                    rows[line[0]] = (line[0], line[1], int(line[2]), int(line[3]), line[4])
    return rows


def write_report(out: Path, rows: list[Row]) -> None:
    """Writes the report (every row but plain successes, sorted), then drops the journal."""
    notes = sorted(row for row in rows if row[1] != "aligned")
    with atomic_write(out / REPORT, "--out") as temp, open(temp, "w", **_TEXT) as stream:
        stream.write(_line(HEADER))
        stream.writelines(_line(row) for row in notes)
    (out / JOURNAL).unlink(missing_ok=True)
