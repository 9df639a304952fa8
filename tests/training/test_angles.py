"""The margin warm-up, the head's angle statistics and the collapse detector."""

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from facetrain.config import HeadConfig, config_from_dict
from facetrain.errors import TrainingError
from facetrain.models.head_math import rival_cosines
from facetrain.models.heads import build_head
from facetrain.training.angles import HeadWatch, MarginSchedule, collapsed_loss, mean_center_cosine, remedies
from facetrain.training.run import train
from facetrain.training.tracking import TensorBoard
from facetrain.training.trainer import Trainer


def test_the_margin_is_held_at_zero_then_ramps_linearly():
    schedule = MarginSchedule(HeadConfig(warm_start_epochs=1, margin_warmup_epochs=2), steps_per_epoch=10)
    assert [schedule.factor(step) for step in (0, 9, 10, 15, 20, 29, 30, 31, 10_000)] == [
        0.0, 0.0, 0.0, 0.25, 0.5, 0.95, 1.0, 1.0, 1.0,
    ]  # fmt: skip
    assert schedule.full_from == 30
    assert MarginSchedule(HeadConfig(margin_warmup_epochs=0), 10).factor(0) == 1.0


@pytest.mark.parametrize(
    ("head_type", "options"),
    [("arcface", {"m": 0.5}), ("cosface", {"m": 0.35}), ("combined", {"m1": 1.2, "m2": 0.3, "m3": 0.2}),
     ("subcenter_arcface", {"m": 0.5}), ("curricularface", {"m": 0.5}), ("adaface", {"m": 0.4})],
)  # fmt: skip
def test_a_margin_factor_is_the_head_with_that_share_of_its_margins(head_type, options):
    torch.manual_seed(0)
    head = build_head(HeadConfig(type=head_type, s=8.0, **options), 6, 5).eval()
    torch.manual_seed(0)
    scaled = {name: (1 + 0.4 * (value - 1) if name == "m1" else 0.4 * value) for name, value in options.items()}
    reference = build_head(HeadConfig(type=head_type, s=8.0, **scaled), 6, 5).eval()
    embeddings, labels = torch.randn(7, 6, generator=torch.Generator().manual_seed(1)), torch.arange(7) % 5
    head.margin_factor = 0.4
    assert torch.allclose(head(embeddings, labels)[0], reference(embeddings, labels)[0], atol=1e-6)
    head.margin_factor = 0.0  # no margin: the logits are the scaled cosines (CurricularFace re-weights its negatives)
    logits, cosine = head(embeddings, labels)
    true = logits.gather(1, labels.view(-1, 1)) / 8.0
    assert torch.allclose(true, cosine.gather(1, labels.view(-1, 1)), atol=1e-6)


def test_the_mean_centre_cosine_is_the_mean_over_distinct_pairs():
    head = build_head(HeadConfig(type="arcface", s=8.0), 16, 50)
    unit = F.normalize(head.class_centers.detach(), dim=1)
    pairwise = unit @ unit.t()
    expected = (pairwise.sum() - pairwise.diagonal().sum()) / (50 * 49)
    assert mean_center_cosine(head) == pytest.approx(float(expected), abs=1e-5)
    with torch.no_grad():
        head.class_centers.copy_(head.class_centers[:1].expand(50, -1) * (torch.rand(50, 1) + 0.5))
    assert mean_center_cosine(head) > 0.99  # every centre one way, whatever its length
    assert mean_center_cosine(head, sample=10) > 0.99  # a sample of the rows says the same


def test_the_collapsed_loss_is_the_loss_of_a_collapsed_head():
    head = build_head(HeadConfig(type="arcface", s=32.0, m=0.5), 8, 28)
    with torch.no_grad():
        head.class_centers.copy_(torch.ones(28, 8))
    logits, _ = head(torch.ones(4, 8), torch.tensor([0, 3, 7, 27]))
    loss = F.cross_entropy(logits, torch.tensor([0, 3, 7, 27])).item()
    assert loss == pytest.approx(collapsed_loss(head, 28), abs=0.01)  # float32 cosines sit a hair below 1
    assert collapsed_loss(head, 28) == pytest.approx(math.log(27) + 32 * (1 - math.cos(0.5)), abs=0.01)


def test_the_rival_is_the_best_other_class():
    scores = torch.tensor([[0.9, 0.5, 0.7], [0.2, 0.8, 0.1], [0.3, 0.3, 0.9]])
    assert rival_cosines(scores, torch.tensor([[0], [0], [2]])).tolist() == pytest.approx([0.7, 0.8, 0.3])
    owned = torch.tensor([[True], [False], [True]])  # a shard that does not hold row 1's class: its best counts
    assert rival_cosines(scores, torch.tensor([[0], [1], [2]]), owned).tolist() == pytest.approx([0.7, 0.8, 0.3])


def watch_for(tmp_path, head, on_collapse="warn", warmup=0.0):
    cfg = config_from_dict({
        "data": {"root": "x"}, "head": {"type": "arcface", "s": 32.0, "margin_warmup_epochs": warmup},
        "train": {"on_collapse": on_collapse},
    })  # fmt: skip
    return HeadWatch(cfg, head, 28, steps_per_epoch=10, tensorboard=TensorBoard(tmp_path, enabled=False))


def collapse(head):
    with torch.no_grad():
        head.class_centers.copy_(torch.randn(1, 8).expand(28, -1) + 1e-4 * torch.randn(28, 8))


def test_a_collapsed_head_is_named_once_with_the_fixes(tmp_path, caplog):
    head = build_head(HeadConfig(type="arcface", s=32.0, m=0.5), 8, 28)
    collapse(head)
    watch = watch_for(tmp_path, head)
    stats = {"loss": 7.3, "accuracy": 0.04}
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        watch.end_epoch(stats, 3, 30, 20, lambda: "")
        watch.end_epoch(stats, 4, 40, 30, lambda: "")
    [record] = caplog.records  # one warning per run
    text = record.getMessage()
    assert "arcface head collapsed by epoch 3" in text and "mean cosine 1.000" in text
    fixes = ("--set head.margin_warmup_epochs=4", "--set head.s=auto", "--set head.warm_start_epochs=1",
             "--set head.m=0.3", "--set train.on_collapse=stop")  # fmt: skip
    positions = [text.index(fix) for fix in fixes]  # each is there, in the order they worked on Yale B
    assert positions == sorted(positions)


def test_the_fixes_fit_the_head():
    def fixes(**head):
        cfg = HeadConfig(s=32.0, margin_warmup_epochs=0.0, **head)
        return remedies(cfg, build_head(cfg, 8, 28))

    assert "margin_warmup_epochs=8" in remedies(  # a run that collapsed with a warm-up: twice as long
        HeadConfig(type="arcface", s=32.0, m=0.5, margin_warmup_epochs=4.0),
        build_head(HeadConfig(type="arcface", s=32.0, m=0.5), 8, 28),
    )
    combined = fixes(type="combined", m1=1.0, m2=0.0, m3=0.35)
    assert "--set head.m3=0.21" in combined and "head.m1" not in combined and "head.m2" not in combined
    assert "smaller margin" not in fixes(type="combined", m1=1.5, m2=0.0, m3=0.0)  # only m1: no additive margin
    auto = HeadConfig(type="arcface", s="auto", m=0.5, margin_warmup_epochs=0.0)
    assert "head.s=auto" not in remedies(auto, build_head(auto, 8, 28))


def test_near_chance_means_little_better_than_guessing_even_with_two_classes(tmp_path, caplog):
    head = build_head(HeadConfig(type="arcface", s=32.0, m=0.5), 8, 2)
    with torch.no_grad():
        head.class_centers.copy_(torch.eye(2, 8))  # apart: only the accuracy and the loss can tell
    cfg = config_from_dict({"data": {"root": "x"}, "head": {"type": "arcface", "s": 32.0, "margin_warmup_epochs": 0}})
    watch = HeadWatch(cfg, head, 2, steps_per_epoch=10, tensorboard=TensorBoard(tmp_path, enabled=False))
    loss = collapsed_loss(head, 2)
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        watch.end_epoch({"loss": loss, "accuracy": 0.9}, 2, 20, 10, lambda: "")  # twice chance would be 1.0
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        watch.end_epoch({"loss": loss, "accuracy": 0.55}, 3, 30, 20, lambda: "")
    assert "collapsed by epoch 3" in caplog.text


def test_stalled_accuracy_at_the_collapsed_loss_is_named_too(tmp_path, caplog):
    head = build_head(HeadConfig(type="arcface", s=32.0, m=0.5), 8, 28)  # centres spread, as initialised
    watch = watch_for(tmp_path, head)
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        watch.end_epoch({"loss": 7.5, "accuracy": 0.03}, 2, 20, 10, lambda: "")
    assert "collapsed by epoch 2" in caplog.text and "collapsed value: 7.214" in caplog.text


def test_a_healthy_head_and_a_head_still_warming_up_are_left_alone(tmp_path, caplog):
    head = build_head(HeadConfig(type="arcface", s=32.0, m=0.5), 8, 28)
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        watch_for(tmp_path, head).end_epoch({"loss": 3.0, "accuracy": 0.6}, 2, 20, 10, lambda: "")
        collapse(head)
        watch_for(tmp_path, head, warmup=2.0).end_epoch({"loss": 7.3, "accuracy": 0.04}, 2, 20, 10, lambda: "")
    assert not caplog.records


def test_stop_raises_with_the_checkpoint_note(tmp_path):
    head = build_head(HeadConfig(type="arcface", s=32.0, m=0.5), 8, 28)
    collapse(head)
    watch = watch_for(tmp_path, head, "stop")
    with pytest.raises(TrainingError, match="collapsed by epoch 3.*; last.pt is kept") as caught:
        watch.end_epoch({"loss": 7.3, "accuracy": 0.04}, 3, 30, 20, lambda: "last.pt is kept")
    assert caught.value.shared


def make_trainer(cfg):
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    return trainer


def test_a_run_whose_head_collapsed_stops_and_keeps_its_checkpoint(faces, tmp_path, caplog):
    cfg = tiny_config(
        faces, tmp_path / "run", head={"margin_warmup_epochs": 0},
        train={"epochs": 3, "lr": 1e-6, "warmup_epochs": 0, "on_collapse": "stop"},
    )  # fmt: skip
    trainer = make_trainer(cfg)
    with caplog.at_level(logging.WARNING, logger="facetrain"):
        trainer.fit(stop_at_epoch=1)  # healthy: nothing said, last.pt written
    assert "collapsed" not in caplog.text
    saved = (tmp_path / "run" / "last.pt").read_bytes()
    collapse_centres = trainer.head.class_centers
    with torch.no_grad():
        collapse_centres.copy_(collapse_centres[:1].expand_as(collapse_centres).clone())
    with pytest.raises(TrainingError, match="head collapsed by epoch 2 .*last.pt, the last checkpoint"):
        trainer.fit()
    assert (tmp_path / "run" / "last.pt").read_bytes() == saved and trainer.epoch == 2


def test_the_demo_sized_run_logs_angles_and_says_nothing_of_collapse(faces, tmp_path, caplog):
    cfg = tiny_config(faces, tmp_path / "run", train={"epochs": 3}, head={"margin_warmup_epochs": 1})
    with caplog.at_level(logging.INFO, logger="facetrain"):
        result = make_trainer(cfg).fit()
    assert "collapsed" not in caplog.text
    assert all(0 < epoch["theta_y"] < 180 for epoch in result.history)
    assert "theta_y" in caplog.text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"histograms": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/center_cosine", "train/theta_y_deg", "train/theta_rival_deg", "train/margin/m",
            "train/margin_factor", "train/accuracy_over_chance"} <= scalars  # fmt: skip
    assert {"angles/theta_y_deg", "angles/theta_rival_deg"} <= set(events.Tags()["histograms"])
    factors = [event.value for event in events.Scalars("train/margin_factor")]
    assert factors[0] < 1.0 and factors[-1] == 1.0  # ramped in over the first epoch
    assert len(events.Histograms("angles/theta_y_deg")) == 3  # one per epoch


def test_a_checkpoint_from_before_the_warm_up_resumes_without_one(faces, tmp_path, caplog):
    cfg = tiny_config(faces, tmp_path / "run", head={"margin_warmup_epochs": 0}, train={"epochs": 1})
    make_trainer(cfg).fit()
    path = tmp_path / "run" / "last.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["head"]["margin_warmup_epochs"]  # as a checkpoint of an earlier facetrain
    torch.save(state, path)
    old = torch.load(path, weights_only=True)
    train(None, resume=path, overrides=["train.epochs=2"], progress=False)
    assert torch.load(path, weights_only=True)["config"]["head"]["margin_warmup_epochs"] == 0.0
    torch.save(old, path)  # again, now with a config file whose warm-up is arcface's default (4 epochs)
    assert tiny_config(faces, tmp_path / "run", train={"epochs": 2}).head.margin_warmup_epochs == 4.0
    with caplog.at_level(logging.INFO, logger="facetrain"):
        train(tiny_config(faces, tmp_path / "run", train={"epochs": 2}), resume=path, progress=False)
    assert torch.load(path, weights_only=True)["config"]["head"]["margin_warmup_epochs"] == 0.0
    assert "trained without a margin warm-up" in caplog.text and "head.margin_warmup_epochs:" not in caplog.text


def test_curricularface_collapses_to_its_own_loss(tmp_path):
    head = build_head(HeadConfig(type="curricularface", s=32.0, m=0.5), 8, 28).train()
    with torch.no_grad():
        head.class_centers.copy_(torch.ones(28, 8))
        head.t.fill_(1.0)  # a collapsed run's running mean of cos(theta_y)
    logits, _ = head(torch.ones(4, 8), torch.tensor([0, 3, 7, 27]))
    loss = F.cross_entropy(logits, torch.tensor([0, 3, 7, 27])).item()
    assert loss == pytest.approx(collapsed_loss(head, 28), abs=0.01)  # hard negatives: cos * (t + cos) = 2


def test_the_warm_up_default_is_per_head_and_saved_resolved():
    def warmup(head_type, **head):
        return config_from_dict({"data": {"root": "x"}, "head": {"type": head_type, **head}}).head.margin_warmup_epochs

    assert warmup("arcface") == 4.0
    assert [warmup(t) for t in ("combined", "cosface", "subcenter_arcface", "curricularface", "adaface")] == [0.0] * 5
    assert warmup("softmax", s=None) == 0.0 and warmup("adaface", margin_warmup_epochs=1.5) == 1.5
