"""Every head's logits at known angles, checked against its paper's formula computed by hand with ``math``.

Geometry: class 0's centre is the x axis and class 1's the y axis (centre norms deliberately not 1);
an embedding at angle theta (norm deliberately not 1) has cos theta with class 0 and sin theta with
class 1. Each head is checked in float32 and float64, on both sides of each of its branch points.
"""

import math

import pytest
import torch

from facetrain.config import HEAD_OPTIONS, HEAD_TYPES, HeadConfig
from facetrain.models.head_math import angle
from facetrain.models.heads import (
    HEADS,
    AdaFace,
    ArcFace,
    CombinedMargin,
    CosFace,
    CurricularFace,
    Softmax,
    SubcenterArcFace,
    build_head,
    safe_sine,
)

S = 10.0
TOLERANCE = {torch.float32: 2e-5, torch.float64: 1e-12}
DTYPES = [torch.float32, torch.float64]
CENTER_NORM = 2.5


def set_axes(head: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Class 0's centre (every sub-centre) on the x axis, class 1's on the y axis."""
    head = head.to(dtype)
    axes = torch.tensor([[CENTER_NORM, 0.0], [0.0, CENTER_NORM]], dtype=dtype)
    with torch.no_grad():
        head.class_centers.copy_(axes.repeat_interleave(head.centers_per_class, dim=0))
    return head


def at_angle(theta: float, dtype: torch.dtype, norm: float = 3.0) -> torch.Tensor:
    return torch.tensor([[norm * math.cos(theta), norm * math.sin(theta)]], dtype=dtype)


def logits_at(head: torch.nn.Module, theta: float, dtype: torch.dtype, norm: float = 3.0) -> list[float]:
    logits, _ = head(at_angle(theta, dtype, norm), torch.tensor([0]))
    assert logits.dtype == dtype
    return [value / S for value in logits[0].tolist()]


def assert_logits(got: list[float], target: float, other: float, dtype: torch.dtype) -> None:
    tol = TOLERANCE[dtype]
    assert got[0] == pytest.approx(target, abs=tol), "true class"
    assert got[1] == pytest.approx(other, abs=tol), "other class"


# --------------------------------------------------------------------------- ArcFace

M = 0.5
ARC_BOUNDARY = math.pi - M  # theta + m = pi
ARC_ANGLES = [0.0, 0.3, math.pi / 2, ARC_BOUNDARY - 0.05, ARC_BOUNDARY - 1e-3, ARC_BOUNDARY + 1e-3, 3.0, math.pi]


def arcface_by_hand(theta: float, m: float = M, easy_margin: bool = False) -> float:
    if easy_margin:
        return math.cos(theta + m) if math.cos(theta) > 0 else math.cos(theta)
    if theta + m <= math.pi:
        return math.cos(theta + m)
    return math.cos(theta) - m * math.sin(m)  # the fallback past pi - m


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", ARC_ANGLES)
def test_arcface_at_known_angles(dtype, theta):
    head = set_axes(ArcFace(2, 2, s=S, m=M), dtype)
    assert_logits(logits_at(head, theta, dtype), arcface_by_hand(theta), math.sin(theta), dtype)


def test_arcface_fallback_keeps_the_target_decreasing_past_pi_minus_m():
    head = set_axes(ArcFace(2, 2, s=S, m=M), torch.float64)
    below, above = (logits_at(head, ARC_BOUNDARY + d, torch.float64)[0] for d in (-1e-3, 1e-3))
    assert below == pytest.approx(math.cos(ARC_BOUNDARY - 1e-3 + M), abs=1e-12)
    assert above == pytest.approx(math.cos(ARC_BOUNDARY + 1e-3) - M * math.sin(M), abs=1e-12)
    assert above < below  # cos(theta + m) itself would turn back up past pi


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", [0.2, math.pi / 2 - 1e-3, math.pi / 2 + 1e-3, 2.9])
def test_arcface_easy_margin_on_both_sides_of_cos_zero(dtype, theta):
    head = set_axes(ArcFace(2, 2, s=S, m=M, easy_margin=True), dtype)
    assert_logits(logits_at(head, theta, dtype), arcface_by_hand(theta, easy_margin=True), math.sin(theta), dtype)


# --------------------------------------------------------------------------- CosFace


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", [0.0, 0.7, math.pi / 2, 2.5, math.pi])
def test_cosface_at_known_angles(dtype, theta):
    head = set_axes(CosFace(2, 2, s=S, m=0.35), dtype)
    assert_logits(logits_at(head, theta, dtype), math.cos(theta) - 0.35, math.sin(theta), dtype)


# --------------------------------------------------------------------------- combined


def combined_by_hand(theta: float, m1: float, m2: float, m3: float) -> float:
    if m1 == 1.0:
        return arcface_by_hand(theta, m2) - m3
    phi = m1 * theta + m2
    k = math.floor(phi / math.pi)
    return (-1) ** k * math.cos(phi) - 2 * k - m3


SPHERE = (2.0, 0.3, 0.2)  # m1 > 1: SphereFace-style; phi = m1 * theta + m2 passes pi and 2 pi before theta = pi
CM2 = (0.9, 0.4, 0.15)  # m1 < 1: the ArcFace paper's combined setting CM2; phi passes pi once, near theta = 3.05


def branch_angles(margins: tuple[float, float, float]) -> list[float]:
    """Both sides of every theta in [0, pi] where m1 * theta + m2 is a multiple of pi."""
    m1, m2, _ = margins
    branches = [(k * math.pi - m2) / m1 for k in range(1, 9) if (k * math.pi - m2) / m1 < math.pi]
    return [0.0, 0.6, math.pi] + [b + d for b in branches for d in (-1e-3, 1e-3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "margins,theta", [(m, theta) for m in (SPHERE, CM2) for theta in branch_angles(m)], ids=lambda value: f"{value}"
)
def test_combined_with_m1_not_one_at_known_angles(dtype, margins, theta):
    head = set_axes(CombinedMargin(2, 2, S, *margins), dtype)
    assert_logits(logits_at(head, theta, dtype), combined_by_hand(theta, *margins), math.sin(theta), dtype)


def test_branch_angles_cover_every_branch():
    assert len(branch_angles(SPHERE)) == 3 + 4 and len(branch_angles(CM2)) == 3 + 2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", ARC_ANGLES)
def test_combined_all_three_margins_at_known_angles(dtype, theta):
    head = set_axes(CombinedMargin(2, 2, S, 1.0, M, 0.1), dtype)
    assert_logits(logits_at(head, theta, dtype), arcface_by_hand(theta) - 0.1, math.sin(theta), dtype)


@pytest.mark.parametrize("margins", [SPHERE, CM2])
def test_combined_past_pi_is_continuous_and_decreasing(margins):
    head = set_axes(CombinedMargin(2, 2, S, *margins), torch.float64)
    thetas = torch.linspace(0.0, math.pi, 2001, dtype=torch.float64)
    embeddings = torch.stack([thetas.cos(), thetas.sin()], dim=1)
    target = head(embeddings, torch.zeros(len(thetas), dtype=torch.long))[0][:, 0] / S
    steps = target[1:] - target[:-1]
    assert (steps < 0).all()  # decreasing in theta, through both branch points
    assert steps.abs().max() < 0.01  # no jumps: psi is continuous where k changes
    assert target[-1].item() == pytest.approx(combined_by_hand(math.pi, *margins), abs=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_combined_reduces_to_arcface_and_cosface_exactly(dtype):
    torch.manual_seed(0)
    embeddings = torch.randn(64, 8, dtype=dtype)
    embeddings[0] = 0.0  # zero norm
    labels = torch.randint(0, 5, (64,))
    pairs = [
        (CombinedMargin(8, 5, S, 1.0, M, 0.0), ArcFace(8, 5, S, M)),
        (CombinedMargin(8, 5, S, 1.0, 0.0, 0.35), CosFace(8, 5, S, 0.35)),
    ]
    for combined, reference in pairs:
        combined, reference = combined.to(dtype), reference.to(dtype)
        reference.load_state_dict(combined.state_dict())
        # Put some embeddings on a centre and opposite one (cos = +-1), and past pi - m.
        centers = combined.class_centers.detach()
        embeddings[1], embeddings[2] = centers[labels[1]], -centers[labels[2]]
        for got, want in zip(combined(embeddings, labels), reference(embeddings, labels), strict=True):
            assert torch.equal(got, want)


# --------------------------------------------------------------------------- sub-center ArcFace


def subcenter_axes(dtype: torch.dtype, alpha: float, easy_margin: bool = False) -> SubcenterArcFace:
    """Class 0: sub-centres at angles 0 and alpha; class 1: at +-pi/2."""
    head = SubcenterArcFace(2, 2, s=S, m=M, easy_margin=easy_margin, k=2).to(dtype)
    rows = [[CENTER_NORM, 0.0], [math.cos(alpha), math.sin(alpha)], [0.0, CENTER_NORM], [0.0, -1.0]]
    with torch.no_grad():
        head.class_centers.copy_(torch.tensor(rows, dtype=dtype))
    return head


# (alpha, theta): both sides of the switch between sub-centres at alpha/2; and, with alpha = 0.2, the
# nearest sub-centre's angle theta - alpha on both sides of ArcFace's branch point pi - m.
SUBCENTER_CASES = [(1.0, t) for t in (0.0, 0.5 - 1e-3, 0.5 + 1e-3, 1.4, 3.0)] + [
    (0.2, ARC_BOUNDARY + 0.2 + d) for d in (-1e-3, 1e-3)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("easy_margin", [False, True])
@pytest.mark.parametrize("alpha,theta", SUBCENTER_CASES)
def test_subcenter_arcface_uses_the_nearest_subcentre(dtype, easy_margin, alpha, theta):
    theta_y = min(abs(theta), abs(theta - alpha))  # the nearest of class 0's sub-centres
    head = subcenter_axes(dtype, alpha, easy_margin)
    want = arcface_by_hand(theta_y, easy_margin=easy_margin)
    assert_logits(logits_at(head, theta, dtype), want, abs(math.sin(theta)), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_subcenter_arcface_with_one_subcentre_is_arcface_exactly(dtype):
    torch.manual_seed(1)
    sub, arc = SubcenterArcFace(8, 5, S, M, k=1).to(dtype), ArcFace(8, 5, S, M).to(dtype)
    arc.load_state_dict(sub.state_dict())
    embeddings = torch.randn(32, 8, dtype=dtype)
    embeddings[0] = sub.class_centers.detach()[3]
    labels = torch.randint(0, 5, (32,))
    labels[0] = 3
    out_sub, out_arc = sub(embeddings, labels), arc(embeddings, labels)
    assert all(torch.equal(a, b) for a, b in zip(out_sub, out_arc, strict=True))
    out_sub[0].logsumexp(1).sum().backward()
    out_arc[0].logsumexp(1).sum().backward()
    assert torch.equal(sub.class_centers.grad, arc.class_centers.grad)


# --------------------------------------------------------------------------- CurricularFace

T0 = 0.3
CURRICULAR_SWITCH = (math.pi / 2 - M) / 2  # where class 1's sin(theta) equals the target cos(theta + m)


def curricular_by_hand(theta: float, t: float) -> tuple[float, float]:
    target = arcface_by_hand(theta)
    other = math.sin(theta)
    return target, other if other <= target else other * (t + other)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", [0.1, CURRICULAR_SWITCH - 1e-3, CURRICULAR_SWITCH + 1e-3, 1.2, ARC_BOUNDARY + 0.1])
def test_curricularface_at_known_angles_in_eval_mode(dtype, theta):
    head = set_axes(CurricularFace(2, 2, s=S, m=M, ema_alpha=0.01), dtype).eval()
    head.t.fill_(T0)
    assert_logits(logits_at(head, theta, dtype), *curricular_by_hand(theta, T0), dtype)
    assert head.t.item() == pytest.approx(T0)  # eval mode never moves t


@pytest.mark.parametrize("dtype", DTYPES)
def test_curricularface_updates_t_before_using_it(dtype):
    head = set_axes(CurricularFace(2, 2, s=S, m=M, ema_alpha=0.01), dtype).train()
    head.t.fill_(T0)
    thetas = [1.1, 1.3]
    embeddings = torch.cat([at_angle(t, dtype) for t in thetas])
    logits, _ = head(embeddings, torch.tensor([0, 0]))
    t = 0.99 * T0 + 0.01 * sum(math.cos(x) for x in thetas) / 2
    assert head.t.item() == pytest.approx(t, abs=TOLERANCE[dtype])
    for row, theta in enumerate(thetas):
        assert_logits([v / S for v in logits[row].tolist()], *curricular_by_hand(theta, t), dtype)


# --------------------------------------------------------------------------- AdaFace

ADA_M, ADA_H, MEAN, STD = 0.4, 0.333, 10.0, 2.0


def adaface_quality(norm: float) -> float:
    return min(1.0, max(-1.0, ADA_H * (norm - MEAN) / (STD + 0.001)))


def adaface_by_hand(theta: float, norm: float) -> float:
    q = adaface_quality(norm)
    return math.cos(min(math.pi, max(0.0, theta - ADA_M * q))) - (ADA_M + ADA_M * q)


def ada_head(dtype: torch.dtype) -> AdaFace:
    head = set_axes(AdaFace(2, 2, s=S, m=ADA_M, h=ADA_H, ema_alpha=0.01), dtype).eval()
    head.norm_mean.fill_(MEAN)
    head.norm_std.fill_(STD)
    return head


NORM_AT_Q1 = MEAN + (STD + 0.001) / ADA_H  # q reaches +1 here, and -1 at the mirror image below MEAN
ADA_CASES = [
    (1.0, MEAN),  # q = 0: no margin
    (1.0, 12.0),
    (1.0, 7.0),
    (1.0, NORM_AT_Q1 - 0.01),  # both sides of the clip q = +1
    (1.0, NORM_AT_Q1 + 0.01),
    (1.0, 2 * MEAN - NORM_AT_Q1 + 0.01),  # both sides of the clip q = -1
    (1.0, 2 * MEAN - NORM_AT_Q1 - 0.01),
    (ADA_M - 1e-3, 40.0),  # q = 1: both sides of theta - m*q = 0 (clamped at 0)
    (ADA_M + 1e-3, 40.0),
    (math.pi - ADA_M - 1e-3, 0.5),  # q = -1: both sides of theta + m = pi (clamped at pi)
    (math.pi - ADA_M + 1e-3, 0.5),
    (0.0, 0.0),  # zero norm: treated as 0.001
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta,norm", ADA_CASES)
def test_adaface_at_known_angles_and_norms(dtype, theta, norm):
    head = ada_head(dtype)
    if norm == 0.0:
        logits, _ = head(torch.zeros(1, 2, dtype=dtype), torch.tensor([0]))
        got = [v / S for v in logits[0].tolist()]
        theta = math.pi / 2  # a zero embedding has cosine 0 with every centre
        assert_logits(got, adaface_by_hand(theta, 0.001), 0.0, dtype)
        return
    assert_logits(logits_at(head, theta, dtype, norm), adaface_by_hand(theta, norm), math.sin(theta), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_adaface_running_norm_statistics(dtype):
    head = ada_head(dtype).train()
    norms = [6.0, 9.0, 15.0]
    embeddings = torch.cat([at_angle(0.8, dtype, n) for n in norms])
    logits, _ = head(embeddings, torch.tensor([0, 0, 0]))
    mean = sum(norms) / 3
    std = math.sqrt(sum((n - mean) ** 2 for n in norms) / 2)  # unbiased, as torch.std
    new_mean, new_std = 0.99 * MEAN + 0.01 * mean, 0.99 * STD + 0.01 * std
    assert head.norm_mean.item() == pytest.approx(new_mean, abs=TOLERANCE[dtype] * 10)
    assert head.norm_std.item() == pytest.approx(new_std, abs=TOLERANCE[dtype] * 10)
    for row, norm in enumerate(norms):  # the updated statistics are the ones used
        q = min(1.0, max(-1.0, ADA_H * (norm - new_mean) / (new_std + 0.001)))
        want = math.cos(0.8 - ADA_M * q) - (ADA_M + ADA_M * q)
        assert logits[row, 0].item() / S == pytest.approx(want, abs=TOLERANCE[dtype] * 10)
    head(embeddings[:1], torch.tensor([0]))  # one sample: its spread is undefined, the std is kept
    assert head.norm_std.item() == pytest.approx(new_std, abs=TOLERANCE[dtype] * 10)


def test_adaface_reads_the_norm_and_arcface_does_not():
    ada, arc = ada_head(torch.float64), set_axes(ArcFace(2, 2, S, M), torch.float64)
    assert logits_at(ada, 1.0, torch.float64, norm=4.0) != logits_at(ada, 1.0, torch.float64, norm=16.0)
    assert logits_at(arc, 1.0, torch.float64, norm=4.0) == pytest.approx(logits_at(arc, 1.0, torch.float64, 16.0))


# --------------------------------------------------------------------------- softmax


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", [0.0, 1.0, math.pi])
def test_softmax_is_a_plain_linear_layer(dtype, theta):
    head = Softmax(2, 2).to(dtype)
    with torch.no_grad():
        head.classifier.weight.copy_(torch.tensor([[CENTER_NORM, 0.0], [0.0, CENTER_NORM]], dtype=dtype))
        head.classifier.bias.copy_(torch.tensor([0.1, -0.2], dtype=dtype))
    logits, scores = head(at_angle(theta, dtype), torch.tensor([0]))
    want = [CENTER_NORM * 3.0 * math.cos(theta) + 0.1, CENTER_NORM * 3.0 * math.sin(theta) - 0.2]
    assert logits[0].tolist() == pytest.approx(want, abs=TOLERANCE[dtype] * 10)
    assert torch.equal(logits, scores) and logits.dtype == dtype


# --------------------------------------------------------------------------- every head


def default_head(kind: str, embedding_dim: int = 2, num_classes: int = 2) -> torch.nn.Module:
    return build_head(HeadConfig(type=kind), embedding_dim, num_classes)


def test_registry_matches_config_and_options():
    assert tuple(HEADS) == HEAD_TYPES
    for kind in HEAD_TYPES:
        head = default_head(kind)
        for name, value in HEAD_OPTIONS[kind].items():
            assert getattr(head, {"k": "centers_per_class"}.get(name, name)) == value, (kind, name)


# Every head with its defaults, plus the option values that take other code paths.
VARIANTS = [(kind, {}) for kind in HEAD_TYPES] + [
    ("arcface", {"easy_margin": True}),
    ("combined", {"m1": 2.0, "m2": 0.3, "m3": 0.2}),
    ("combined", {"m1": 0.9, "m2": 0.4, "m3": 0.15}),
    ("subcenter_arcface", {"easy_margin": True}),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind,options", VARIANTS, ids=lambda value: str(value))
@pytest.mark.parametrize("where", ["on the centre", "opposite the centre", "on the other centre", "zero norm"])
def test_gradients_are_finite_where_cos_is_plus_or_minus_one(kind, options, where, dtype):
    head = build_head(HeadConfig(type=kind, **options), 2, 2).to(dtype).train()
    if hasattr(head, "class_centers"):
        set_axes(head, dtype)
    embedding = {
        "on the centre": torch.tensor([[3.0, 0.0]], dtype=dtype),
        "opposite the centre": torch.tensor([[-3.0, 0.0]], dtype=dtype),
        "on the other centre": torch.tensor([[0.0, 3.0]], dtype=dtype),
        "zero norm": torch.zeros(1, 2, dtype=dtype),
    }[where].requires_grad_(True)
    logits, scores = head(embedding, torch.tensor([0]))
    assert torch.isfinite(logits).all() and torch.isfinite(scores).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0])).backward()
    assert torch.isfinite(embedding.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(kind):
    torch.manual_seed(0)
    embedder = torch.nn.Linear(16, 8)
    head = default_head(kind, embedding_dim=8, num_classes=4)
    images, labels = torch.randn(32, 16), torch.arange(32) % 4
    optimizer = torch.optim.SGD([*embedder.parameters(), *head.parameters()], lr=0.01)
    head.train()  # running statistics move before they are used: the eval pass below sees the same ones
    before = torch.nn.functional.cross_entropy(head(embedder(images), labels)[0], labels)
    before.backward()
    optimizer.step()
    head.eval()
    with torch.no_grad():
        after = torch.nn.functional.cross_entropy(head(embedder(images), labels)[0], labels)
    assert after.item() < before.item()


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_checkpoint_round_trip_keeps_the_head_state(kind, tmp_path):
    from facetrain.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    head = default_head(kind, embedding_dim=8, num_classes=4).train()
    for _ in range(3):  # move the running statistics away from their initial values
        head(torch.randn(16, 8) * 5, torch.arange(16) % 4)
    path = save_checkpoint(
        {"config": {}, "num_classes": 4, "embedder": {}, "head": head.state_dict()}, tmp_path / "c.pt"
    )
    fresh = default_head(kind, embedding_dim=8, num_classes=4)
    fresh.load_state_dict(load_checkpoint(path)["head"])
    saved, loaded = head.state_dict(), fresh.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    buffers = dict(default_head(kind, 8, 4).named_buffers())
    for name, value in buffers.items():  # EMA buffers are saved with their moved values
        assert not torch.equal(loaded[name], value), name
    head.eval(), fresh.eval()
    probe, labels = torch.randn(8, 8), torch.arange(8) % 4
    assert torch.equal(head(probe, labels)[0], fresh(probe, labels)[0])


def test_ema_heads_have_their_buffers():
    assert set(dict(default_head("curricularface").named_buffers())) == {"t"}
    assert set(dict(default_head("adaface").named_buffers())) == {"norm_mean", "norm_std"}


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_math_stays_float32_under_autocast(kind):
    head = default_head(kind, embedding_dim=8, num_classes=5)
    embeddings = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, scores = head(embeddings, torch.tensor([0, 1, 2, 3]))
    assert logits.dtype == torch.float32 and scores.dtype == torch.float32


@pytest.mark.parametrize("kind", [k for k in HEAD_TYPES if k != "softmax"])
def test_class_centres_are_not_normalised_in_place(kind):
    head = default_head(kind, embedding_dim=8, num_classes=4)
    with torch.no_grad():
        head.class_centers.mul_(2.5)
    before = head.class_centers.detach().clone()
    head(torch.randn(4, 8), torch.arange(4))[0].sum().backward()
    assert torch.equal(head.class_centers.detach(), before)


# --------------------------------------------------------------------------- helpers


def test_safe_sine_is_exact_and_has_finite_gradient():
    cosine = torch.tensor([-1.0, -0.6, 0.0, 0.8, 1.0], dtype=torch.float64, requires_grad=True)
    sine = safe_sine(cosine)
    assert sine.tolist() == pytest.approx([0.0, 0.8, 1.0, 0.6, 0.0], abs=1e-12)
    sine.sum().backward()
    assert torch.isfinite(cosine.grad).all()


def test_angle_is_exact_at_the_ends_and_has_finite_gradient():
    cosine = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
    theta = angle(cosine)
    assert theta.tolist() == pytest.approx([math.pi, 2 * math.pi / 3, math.pi / 2, math.pi / 3, 0.0], abs=1e-12)
    theta.sum().backward()
    assert torch.isfinite(cosine.grad).all()
