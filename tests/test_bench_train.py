"""``scripts/bench_train.py``: its reference loop is the textbook ArcFace, and the script runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from facetrain.config import HeadConfig, ModelConfig
from facetrain.models import build_embedder, build_head

sys.path.insert(0, str(REPO / "scripts"))
from bench_train import TextbookArcFace, reference_network


def test_the_reference_arcface_gives_facetrains_arcface_logits():
    """The loop it is compared with computes the same loss, so the comparison is of speed alone."""
    ours = build_head(HeadConfig(type="arcface", s=64.0, m=0.5), 16, 10)
    ours.margin_factor = 1.0  # the whole margin, as the reference has from its first step
    reference = TextbookArcFace(16, 10, s=64.0, m=0.5)
    with torch.no_grad():
        reference.weight.copy_(ours.class_centers)
    embeddings = torch.randn(32, 16)
    labels = torch.randint(0, 10, (32,))
    embeddings[0] = ours.class_centers[labels[0]].detach() * -3.0  # theta near pi: the fallback branch
    logits, _ = ours(embeddings, labels)
    torch.testing.assert_close(reference(embeddings, labels), logits, rtol=1e-4, atol=1e-4)


def test_bench_train_times_both_loops_and_the_rec_pipeline_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_train.py", "--device", "cpu", "--image-size", "32", "--batch-size", "4",
         "--num-classes", "20", "--steps", "1", "--rounds", "2", "--warmup", "1", "--reference", "--pipeline",
         "--sources", "rec", "--pipeline-images", "80", "--workers", "0", "--cache", str(tmp_path / "cache"),
         "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert {"facetrain", "reference", "pipeline_rec"} <= figures.keys()
    assert figures["ratio_vs_reference"] == round(
        figures["facetrain"]["images_per_sec"] / figures["reference"]["images_per_sec"], 3
    )
    assert figures["pipeline_rec_vs_synthetic"] > 0 and figures["channels_last"] is True  # auto


@pytest.mark.parametrize("backbone", ["iresnet18", "mobilefacenet"])
def test_the_reference_face_network_is_facetrains_embedder_layer_for_layer_at_112_px(backbone):
    """The plain loop trains the same architecture: facetrain's weights, loaded in order, give its embeddings."""
    torch.manual_seed(0)
    ours = build_embedder(ModelConfig(backbone=backbone, embedding_dim=512), 112).eval()
    reference = reference_network(backbone, 112).eval()
    ours_state, reference_state = ours.state_dict(), reference.state_dict()
    assert [value.shape for value in ours_state.values()] == [value.shape for value in reference_state.values()]
    reference.load_state_dict(dict(zip(reference_state, ours_state.values(), strict=True)))
    trainable = [(p.shape, p.requires_grad) for p in ours.parameters()]
    assert trainable == [(p.shape, p.requires_grad) for p in reference.parameters()]  # iresnet's fixed BN1d scale
    images = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(reference(images), ours(images), rtol=1e-4, atol=1e-4)


def test_bench_train_times_a_face_backbone_against_its_reference(tmp_path):
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "scripts/bench_train.py", "--device", "cpu", "--backbone", "mobilefacenet",
         "--image-size", "32", "--batch-size", "4", "--num-classes", "20", "--steps", "1", "--rounds", "1",
         "--warmup", "1", "--reference", "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["backbone"] == "mobilefacenet" and {"facetrain", "reference"} <= figures.keys()
