"""ArcFace logits at known angles, checked against the formula computed by hand with ``math``."""

import math

import pytest
import torch

from facetrain.models.heads import ArcFace, safe_sine

S, M = 10.0, 0.5


def head_with_axes(dtype: torch.dtype, easy_margin: bool = False, center_norm: float = 1.0) -> ArcFace:
    """Two classes whose centres are the x and y axes (centre norms deliberately not 1)."""
    head = ArcFace(embedding_dim=2, num_classes=2, s=S, m=M, easy_margin=easy_margin).to(dtype)
    with torch.no_grad():
        head.class_centers.copy_(torch.tensor([[center_norm, 0.0], [0.0, center_norm]], dtype=dtype))
    return head


def at_angle(theta: float, dtype: torch.dtype, norm: float = 3.0) -> torch.Tensor:
    return torch.tensor([[norm * math.cos(theta), norm * math.sin(theta)]], dtype=dtype)


def expected_target(theta: float, easy_margin: bool = False) -> float:
    if easy_margin:
        return math.cos(theta + M) if math.cos(theta) > 0 else math.cos(theta)
    if theta + M <= math.pi:
        return math.cos(theta + M)
    return math.cos(theta) - M * math.sin(M)  # the fallback past pi - m


BOUNDARY = math.pi - M
ANGLES = [0.0, 0.3, math.pi / 2, BOUNDARY - 0.05, BOUNDARY - 1e-3, BOUNDARY + 1e-3, BOUNDARY + 0.05, 3.0]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("theta", ANGLES)
def test_target_logit_at_known_angles(dtype, tol, theta):
    head = head_with_axes(dtype, center_norm=2.5)
    logits, cosine = head(at_angle(theta, dtype), torch.tensor([0]))
    assert logits.dtype == dtype
    assert logits[0, 0].item() == pytest.approx(S * expected_target(theta), abs=tol * S)
    # The non-target class gets no margin: cos(pi/2 - theta) = sin(theta).
    assert logits[0, 1].item() == pytest.approx(S * math.sin(theta), abs=tol * S)
    assert cosine[0, 0].item() == pytest.approx(math.cos(theta), abs=tol)


def test_both_sides_of_pi_minus_m_use_different_formulas():
    below, above = BOUNDARY - 1e-3, BOUNDARY + 1e-3
    head = head_with_axes(torch.float64)
    logit = lambda t: head(at_angle(t, torch.float64), torch.tensor([0]))[0][0, 0].item() / S  # noqa: E731
    assert logit(below) == pytest.approx(math.cos(below + M), abs=1e-12)
    assert logit(above) == pytest.approx(math.cos(above) - M * math.sin(M), abs=1e-12)
    # cos(theta + m) would turn back up past pi; the fallback keeps decreasing.
    assert logit(above) < logit(below)


@pytest.mark.parametrize("theta", [0.2, 1.2, math.pi / 2 + 0.3, 2.9])
def test_easy_margin(theta):
    head = head_with_axes(torch.float64, easy_margin=True)
    logits, _ = head(at_angle(theta, torch.float64), torch.tensor([0]))
    assert logits[0, 0].item() == pytest.approx(S * expected_target(theta, easy_margin=True), abs=1e-10)


def test_class_centres_are_not_normalised_in_place():
    head = head_with_axes(torch.float32, center_norm=2.5)
    before = head.class_centers.detach().clone()
    logits, _ = head(at_angle(0.4, torch.float32), torch.tensor([1]))
    logits.sum().backward()
    assert torch.equal(head.class_centers.detach(), before)
    assert head.class_centers.norm(dim=1).tolist() == pytest.approx([2.5, 2.5])


@pytest.mark.parametrize("theta", [0.0, math.pi])
def test_gradients_are_finite_on_and_opposite_the_centre(theta):
    head = head_with_axes(torch.float32)
    embedding = at_angle(theta, torch.float32).requires_grad_(True)
    logits, _ = head(embedding, torch.tensor([0]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0])).backward()
    assert torch.isfinite(embedding.grad).all()
    assert torch.isfinite(head.class_centers.grad).all()


def test_safe_sine_is_exact_and_has_finite_gradient():
    cosine = torch.tensor([-1.0, -0.6, 0.0, 0.8, 1.0], dtype=torch.float64, requires_grad=True)
    sine = safe_sine(cosine)
    assert sine.tolist() == pytest.approx([0.0, 0.8, 1.0, 0.6, 0.0], abs=1e-12)
    sine.sum().backward()
    assert torch.isfinite(cosine.grad).all()


def test_margin_math_stays_float32_under_autocast():
    head = ArcFace(embedding_dim=8, num_classes=5, s=S, m=M, easy_margin=False)
    embeddings = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, cosine = head(embeddings, torch.tensor([0, 1, 2, 3]))
    assert logits.dtype == torch.float32 and cosine.dtype == torch.float32


def test_zero_embedding_gives_finite_logits():
    head = head_with_axes(torch.float32)
    logits, _ = head(torch.zeros(1, 2), torch.tensor([0]))
    assert torch.isfinite(logits).all()
