"""facetrain's IJB numbers against insightface's recipe, recomputed independently with scikit-learn.

insightface's IJB scripts (recognition/arcface_torch/eval_ijbc.py, recognition/_evaluation_/ijb/ijb_1n.py)
pool templates with numpy loops, score pairs, take TAR@FAR from scikit-learn's ``roc_curve`` (the
point nearest each FAR on the reversed curve) and, for 1:N, rank with ``np.argsort`` and pool every
non-mate score for their TPIR figure. This script builds a synthetic IJB-format set (meta files and
features, no images), runs facetrain's ``--ijb --features`` path, then recomputes those numbers the
way the scripts do, written out here with loops, and prints both. It needs scikit-learn, which
facetrain does not (``pip install scikit-learn``).

Usage: python scripts/check_ijb_reference.py [--templates 400] [--subjects 60] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import auc, roc_curve

from facetrain.evaluation.ijb.protocol import read_protocol
from facetrain.evaluation.ijb.run import FAR_TARGETS, run_ijb
from facetrain.evaluation.ijb.templates import PoolMode


def write_set(root: Path, templates: int, subjects: int, rng: np.random.Generator) -> None:
    """Meta files (1-6 images in 1-3 media per template; each subject's first template is its gallery
    entry, split over G1 and G2; the rest are probes) and an N x 32 features file."""
    rows, subject_of = [], {}
    for template in range(1, templates + 1):
        subject_of[template] = (template - 1) % subjects
        media_count = int(rng.integers(1, 4))
        for image in range(int(rng.integers(1, 7))):
            rows.append((f"{len(rows) + 1}.jpg", template, 100 * template + image % media_count))
    meta = root / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    scores = rng.uniform(0.3, 1.0, len(rows))
    lines = [f"{n} " + " ".join(["50.0"] * 10) + f" {s:.6f}" for (n, _, _), s in zip(rows, scores, strict=True)]
    (meta / "ijbc_name_5pts_score.txt").write_text("\n".join(lines) + "\n")
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in rows))
    ids = sorted(subject_of)
    pairs = [f"{a} {b} {int(subject_of[a] == subject_of[b])}" for i, a in enumerate(ids) for b in ids[i + 1 :]]
    (meta / "ijbc_template_pair_label.txt").write_text("\n".join(pairs) + "\n")
    half = subjects // 2
    for name, chosen in (("G1", range(1, half + 1)), ("G2", range(half + 1, subjects + 1)),
                         ("probe_mixed", range(subjects + 1, templates + 1))):  # fmt: skip
        file = meta / (f"ijbc_1N_{name}.csv" if name == "probe_mixed" else f"ijbc_1N_gallery_{name}.csv")
        file.write_text("TEMPLATE_ID,SUBJECT_ID\n" + "".join(f"{t},{subject_of[t]}\n" for t in chosen))
    centres = rng.standard_normal((subjects, 32))
    features = [centres[subject_of[t]] * 0.5 + rng.standard_normal(32) for _, t, _ in rows]
    np.save(root / "features.npy", (np.array(features) * rng.uniform(0.3, 2, (len(rows), 1))).astype(np.float32))


def reference_templates(root: Path, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted template ids, normalised features): media means summed, norm kept, detector-weighted."""
    images = read_protocol(root, "IJBC", "11", need_images=False).images
    weighted = np.load(root / "features.npy").astype(np.float64) * images.scores[:, None]
    ids = np.unique(chosen)
    out = np.zeros((len(ids), weighted.shape[1]))
    for i, template in enumerate(ids):
        rows = np.flatnonzero(images.templates == template)
        media = images.medias[rows]
        out[i] = sum(weighted[rows[media == m]].mean(0) for m in np.unique(media))
    return ids, out / np.linalg.norm(out, axis=1, keepdims=True)


def check_11(root: Path) -> None:
    ours = run_ijb(read_protocol(root, "IJBC", "11", need_images=False), features_file=root / "features.npy")
    pairs = read_protocol(root, "IJBC", "11", need_images=False).pairs
    ids, feats = reference_templates(root, np.concatenate([pairs.first, pairs.second]))
    rows = {t: i for i, t in enumerate(ids)}
    scores = np.array([feats[rows[a]] @ feats[rows[b]] for a, b in zip(pairs.first, pairs.second, strict=True)])
    fpr, tpr, _ = roc_curve(pairs.label.astype(int), scores)
    area = auc(fpr, tpr)
    fpr, tpr = fpr[::-1], tpr[::-1]
    print(f"1:1 {ours.pairs} pairs: max |score difference| {np.abs(scores - ours.scores.numpy()).max():.2e}")
    print(f"  ROC AUC: facetrain {ours.roc_auc:.6f}, reference {area:.6f}")
    for key, far in FAR_TARGETS.items():
        _, nearest = min(zip(np.abs(fpr - far), range(len(fpr)), strict=True))
        strict = ours.tar_at_far[key]
        print(f"  FAR {key}: insightface's rule: facetrain {ours.tar_at_far_insightface[key]:.6f}, "
              f"reference {tpr[nearest]:.6f}; strict {'n/a' if strict is None else f'{strict:.6f}'}")  # fmt: skip


def check_1n(root: Path) -> None:
    protocol = read_protocol(root, "IJBC", "1n", need_images=False)
    ours = run_ijb(protocol, features_file=root / "features.npy", mode=PoolMode())
    gallery_t = np.concatenate([g.templates for g in protocol.galleries])
    gallery_s = np.concatenate([g.subjects for g in protocol.galleries])
    order = np.argsort(gallery_t)
    _, gallery = reference_templates(root, gallery_t)
    _, probes = reference_templates(root, protocol.probes.templates)
    subjects = protocol.probes.subjects[np.argsort(protocol.probes.templates)]
    similarity = probes @ gallery.T
    mates = [int(np.flatnonzero(gallery_s[order] == s)[0]) for s in subjects]
    top = np.argsort(-similarity, axis=1)
    print(f"1:N {len(subjects)} probes, {len(gallery_t)} gallery templates")
    for k in (1, 5, 10):
        reference = np.mean([mates[i] in top[i, :k] for i in range(len(mates))])
        print(f"  rank-{k}: facetrain {ours.cmc[f'rank-{k}']:.6f}, reference {reference:.6f}")
    positive = similarity[np.arange(len(mates)), mates]
    masked = similarity.copy()
    masked[np.arange(len(mates)), mates] = -2.0
    negatives = np.sort(masked[masked > -2.0])[::-1]
    for key, far in (("1e-2", 1e-2), ("1e-1", 1e-1)):
        bar = negatives[math.ceil(len(mates) * far) - 1]
        reference = np.sum(positive > bar) / len(mates)
        print(
            f"  pooled TPIR@FPIR={key}: facetrain {ours.tpir_at_fpir_insightface[key]:.6f}, reference {reference:.6f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--templates", type=int, default=400)
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="Keep the synthetic set here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        root = args.out or Path(temp)
        write_set(root, args.templates, args.subjects, np.random.default_rng(args.seed))
        check_11(root)
        check_1n(root)


if __name__ == "__main__":
    main()
