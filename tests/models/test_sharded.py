"""The sharded head on one process: a slice starts as the whole head's rows, and at sample_rate 1 the
whole head's loss and gradients come out (the multi-rank cases run in tests/training/test_distributed.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from facetrain.config import HEAD_OPTIONS, HEAD_TYPES, HeadConfig
from facetrain.models import ShardedHead, build_head, head_math


def _config(kind: str, **options) -> HeadConfig:
    values = {"s": 16.0} if "s" in HEAD_OPTIONS[kind] else {}
    return HeadConfig(type=kind, **values, **options)


@pytest.mark.parametrize("chunk", [4, 65_536])  # several chunks, each from its own generator; one draw
@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_slices_start_as_the_whole_heads_rows(kind, chunk, monkeypatch):
    monkeypatch.setattr(head_math, "INIT_CHUNK_ROWS", chunk)
    torch.manual_seed(3)
    whole = build_head(_config(kind), 8, 11).state_dict()
    parts = []
    for shard in [(0, 4), (4, 5), (5, 11)]:
        torch.manual_seed(3)
        parts.append(build_head(_config(kind), 8, 11, shard=shard).state_dict())
    for key, value in whole.items():
        joined = torch.cat([part[key] for part in parts]) if value.ndim else parts[0][key]
        assert torch.equal(joined, value), key


def test_one_chunk_is_the_standard_initialisation():
    torch.manual_seed(7)
    linear = torch.nn.Linear(8, 11)
    torch.manual_seed(7)
    softmax = build_head(HeadConfig(type="softmax"), 8, 11)
    assert torch.equal(linear.weight, softmax.classifier.weight) and torch.equal(linear.bias, softmax.classifier.bias)
    torch.manual_seed(7)
    expected = torch.nn.init.normal_(torch.empty(11, 8), std=0.01)
    torch.manual_seed(7)
    assert torch.equal(build_head(HeadConfig(type="arcface"), 8, 11).class_centers, expected)


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_one_slice_at_sample_rate_1_is_the_whole_head(kind):
    torch.manual_seed(0)
    whole = build_head(_config(kind), 8, 6).train()
    torch.manual_seed(0)
    sharded = ShardedHead(_config(kind), 8, 6).train()
    embeddings = torch.randn(10, 8)
    labels = torch.randint(0, 6, (10,))
    a, b = embeddings.clone().requires_grad_(), embeddings.clone().requires_grad_()
    logits, scores = whole(a, labels)
    expected = F.cross_entropy(logits, labels)
    expected.backward()
    loss, correct, _ = sharded(b, labels)
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-6)
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    for (name, param), other in zip(whole.named_parameters(), sharded.head.parameters(), strict=True):
        assert torch.allclose(param.grad, other.grad, atol=1e-6), name
    for name, buffer in whole.named_buffers():  # CurricularFace's t, AdaFace's norm statistics
        assert torch.allclose(buffer, dict(sharded.head.named_buffers())[name]), name
    assert int(correct) == int((scores.argmax(dim=1) == labels).sum())


def test_full_state_round_trip_and_row_counts():
    head = ShardedHead(HeadConfig(type="subcenter_arcface", k=3), 4, 5)
    assert head.row_counts() == [15] and head.row_range() == (0, 15)
    state = head.full_state()
    other = ShardedHead(HeadConfig(type="subcenter_arcface", k=3), 4, 5)
    other.load_full_state(state)
    assert torch.equal(other.head.class_centers, head.head.class_centers)
