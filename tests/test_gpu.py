"""CUDA and AMP paths. Skipped without a GPU; run them on a CUDA machine with `pytest -m gpu`."""

import pytest
import torch
from conftest import tiny_config

from facetrain.models.heads import ArcFace
from facetrain.train import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_amp_training_runs_and_loss_falls(faces, tmp_path, amp):
    cfg = tiny_config(faces, tmp_path / amp, train={"epochs": 4, "device": "cuda", "amp": amp})
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    assert trainer.precision.name == amp and trainer.scaler.is_enabled() == (amp == "fp16")
    history = trainer.fit().history
    assert history[-1]["loss"] < history[0]["loss"]
    state = torch.load(tmp_path / amp / "last.pt", weights_only=True)
    assert bool(state["scaler"]) == (amp == "fp16")


def test_head_is_float32_under_cuda_autocast():
    head = ArcFace(16, 10, s=32.0, m=0.5, easy_margin=False).cuda()
    embeddings = torch.randn(8, 16, device="cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        logits, _ = head(embeddings.half(), torch.arange(8, device="cuda"))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
