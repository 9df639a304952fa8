"""IJB-format test sets: the release's file layout, built in a test from the bundled ORL faces.

``build_faces``: loose crops (ORL faces pasted on a background), their landmarks and scores from
facetrain's MTCNN (as ``facetrain align`` finds them), templates of several media, all template
pairs for 1:1, two galleries and mated and non-mated probes for 1:N.

``build_layout``: the same files for many templates without images, for ``--features`` runs.

``direct_*``: the protocol computed the slow way (Python loops, numpy's sort), to check against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from conftest import ORL, background, paste
from PIL import Image

from facetrain.data.align.detect import FaceDetector

# Per subject: template "a" = ORL images 1-5 as media {1, 2}, {3}, {4, 5}; template "b" = 6-10 as {6, 7, 8}, {9}, {10}.
MEDIA = {"a": [[1, 2], [3], [4, 5]], "b": [[6, 7, 8], [9], [10]]}


@dataclass
class Layout:
    root: Path
    rows: list[tuple[str, int, int]]  # (image name, template, media) per row of the meta files
    subject_of: dict[int, int]  # template -> subject
    scores: np.ndarray  # detector score per row


def write_meta(root: Path, target: str, rows, points: np.ndarray, scores: np.ndarray, subject_of: dict[int, int],
               galleries: tuple[list[int], list[int]], probes: list[int]) -> None:  # fmt: skip
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    t = target.lower()
    with open(meta / f"{t}_name_5pts_score.txt", "w") as file:
        for (name, _, _), row, score in zip(rows, points, scores, strict=True):
            file.write(" ".join([name, *(f"{v:.2f}" for v in row.reshape(-1)), f"{score:.6f}"]) + "\n")
    # Tab-separated here, space-separated there: the release mixes them and both must be read.
    (meta / f"{t}_face_tid_mid.txt").write_text("".join(f"{n}\t{tid}\t{mid}\n" for n, tid, mid in rows))
    templates = sorted(subject_of)
    with open(meta / f"{t}_template_pair_label.txt", "w") as file:
        for i, first in enumerate(templates):
            for second in templates[i + 1 :]:
                file.write(f"{first} {second} {int(subject_of[first] == subject_of[second])}\n")
    names = ("G1", "G2") if t == "ijbc" else ("S1", "S2")
    for name, chosen in zip(names, galleries, strict=True):
        _write_csv(meta / f"{t}_1N_gallery_{name}.csv", chosen, rows, subject_of)
    _write_csv(meta / f"{t}_1N_probe_mixed.csv", probes, rows, subject_of)


def _write_csv(path: Path, templates: list[int], rows, subject_of: dict[int, int]) -> None:
    lines = ["TEMPLATE_ID,SUBJECT_ID,FILENAME"]
    lines += [f"{tid},{subject_of[tid]},{name}" for name, tid, _ in rows if tid in templates]
    path.write_text("\n".join(lines) + "\n")


def build_faces(root: Path, target: str = "ijbc", subjects: int = 8, unenrolled: int = 2) -> Layout:
    """``subjects`` people with templates a and b; a's split over G1 and G2, b's are probes; ``unenrolled``
    more people with a probe only (non-mated everywhere). Subject 0 also has a one-image template."""
    crops = root / "loose_crop"
    crops.mkdir(parents=True)
    detector = FaceDetector()
    rows, points, scores, subject_of = [], [], [], {}
    plan = [(s, part) for s in range(subjects) for part in "ab"] + [
        (s, "b") for s in range(subjects, subjects + unenrolled)
    ]
    plan.append((0, "single"))
    for template, (subject, part) in enumerate(plan, start=1):
        subject_of[template] = subject
        groups = [[1]] if part == "single" else MEDIA[part]
        for media_index, group in enumerate(groups):
            for image in group:
                name = f"{len(rows) + 1}.jpg"
                scene = paste(background(150, 170, seed=len(rows)), ORL / f"s{subject + 1}" / f"{image}.pgm",
                              1.0 + 0.05 * (image % 3), 20 + 3 * (image % 4), 15)  # fmt: skip
                Image.fromarray(scene.permute(1, 2, 0).numpy()).save(crops / name, quality=95)
                faces = detector.detect(scene)
                best = max(faces, key=lambda face: face.score)
                rows.append((name, template, 1000 * template + media_index))
                points.append(best.points)
                scores.append(best.score)
    half = subjects // 2
    a_templates = [t for t, (s, part) in enumerate(plan, start=1) if part == "a"]
    probes = [t for t, (s, part) in enumerate(plan, start=1) if part in ("b", "single")]
    write_meta(root, target, rows, np.array(points), np.array(scores), subject_of,
               (a_templates[:half], a_templates[half:]), probes)  # fmt: skip
    return Layout(root, rows, subject_of, np.array(scores, dtype=np.float32))


def build_layout(root: Path, templates: int = 160, subjects: int = 40, seed: int = 0) -> Layout:
    """Meta files of ``templates`` templates (1-6 images in 1-3 media each), no images."""
    rng = np.random.default_rng(seed)
    rows, subject_of = [], {}
    for template in range(1, templates + 1):
        subject_of[template] = (template - 1) % subjects
        for image in range(int(rng.integers(1, 7))):
            rows.append((f"{len(rows) + 1}.jpg", template, 100 * template + image % int(rng.integers(1, 4))))
    scores = rng.uniform(0.3, 1.0, len(rows)).astype(np.float32)
    points = rng.uniform(30, 80, (len(rows), 5, 2))
    gallery = list(range(1, subjects + 1))  # each subject's first template, split over G1 and G2
    probes = list(range(subjects + 1, templates + 1))
    write_meta(
        root, "ijbc", rows, points, scores, subject_of, (gallery[: subjects // 2], gallery[subjects // 2 :]), probes
    )
    return Layout(root, rows, subject_of, scores)


def direct_templates(
    layout: Layout, features: np.ndarray, norm: bool = True, detector: bool = True
) -> dict[int, np.ndarray]:
    """insightface's recipe, one template at a time."""
    feats = features.astype(np.float64)
    if not norm:
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    if detector:
        feats = feats * layout.scores[:, None]
    out = {}
    for template in sorted(layout.subject_of):
        medias: dict[int, list[np.ndarray]] = {}
        for row, (_, tid, mid) in enumerate(layout.rows):
            if tid == template:
                medias.setdefault(mid, []).append(feats[row])
        total = sum(np.mean(group, axis=0) for group in medias.values())
        out[template] = total / np.linalg.norm(total)
    return out


def direct_tar(scores: list[float], labels: list[bool], far: float) -> tuple[float | None, float]:
    """(strict, nearest) TAR at ``far`` by trying every threshold. The nearest rule picks from the
    points scikit-learn's ``roc_curve`` keeps: it drops a point whose steps to both neighbours are
    equal (``np.diff(counts, 2) == 0``), then puts (0, 0) first; insightface's search over the reversed
    curve takes, of equally near points, the later one."""
    positives, negatives = sum(labels), len(labels) - sum(labels)
    counts = []
    for threshold in sorted(set(scores), reverse=True):
        accepted = [label for score, label in zip(scores, labels, strict=True) if score >= threshold]
        counts.append((len(accepted) - sum(accepted), sum(accepted)))
    points = [(fp / negatives, tp / positives) for fp, tp in [(0, 0), *counts]]
    strict = max(tar for f, tar in points if f <= far + 1e-12) if negatives * far >= 1 else None
    kept = [(0, 0)] + [
        counts[i] for i in range(len(counts))
        if i in (0, len(counts) - 1)
        or counts[i + 1][0] - counts[i][0] != counts[i][0] - counts[i - 1][0]
        or counts[i + 1][1] - counts[i][1] != counts[i][1] - counts[i - 1][1]
    ]  # fmt: skip
    corners = [(fp / negatives, tp / positives) for fp, tp in kept]
    best = min(range(len(corners)), key=lambda i: (abs(corners[i][0] - far), -i))
    return strict, corners[best][1]


def direct_identification(layout: Layout, templates: dict[int, np.ndarray], galleries, probes, far: float):
    """({k: rank-k share} over the union, per-gallery standard TPIR, insightface's pooled TPIR) the slow way."""
    union = [t for g in galleries for t in g]
    sims = np.array([[templates[p] @ templates[g] for g in union] for p in probes])
    ranks = []
    for i, probe in enumerate(probes):
        order = np.argsort(-sims[i], kind="stable")
        mates = [k for k, g in enumerate(union) if layout.subject_of[g] == layout.subject_of[probe]]
        ranks.append(1 + min(int(np.flatnonzero(order == k)[0]) for k in mates) if mates else 0)
    cmc = {k: sum(1 <= r <= k for r in ranks) / len(probes) for k in (1, 5, 10)}
    standard = []
    for gallery in galleries:
        best_nm, mated = [], []
        for probe in probes:
            s = {g: templates[probe] @ templates[g] for g in gallery}
            mates = [g for g in gallery if layout.subject_of[g] == layout.subject_of[probe]]
            if not mates:
                best_nm.append(max(s.values()))
            else:
                mate = max(s[g] for g in mates)
                mated.append((mate, all(mate > v for g, v in s.items() if g not in mates)))
        candidates = sorted({*best_nm, *(m for m, _ in mated), math.inf})
        threshold = min(t for t in candidates if sum(b >= t for b in best_nm) / len(best_nm) <= far + 1e-12)
        standard.append(sum(first and m >= threshold for m, first in mated) / len(mated))
    negatives = sorted((sims[i, k] for i, p in enumerate(probes) for k, g in enumerate(union)
                        if layout.subject_of[g] != layout.subject_of[p]), reverse=True)  # fmt: skip
    bar = negatives[math.ceil(len(probes) * far) - 1]
    mate_scores = [max([sims[i, k] for k, g in enumerate(union) if layout.subject_of[g] == layout.subject_of[p]],
                       default=-math.inf) for i, p in enumerate(probes)]  # fmt: skip
    pooled = sum(m > bar for m in mate_scores) / len(probes)
    return cmc, standard, pooled
