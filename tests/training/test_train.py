import os

import pytest
import torch
from conftest import tiny_config

from facetrain.checkpoint import load_checkpoint, save_checkpoint
from facetrain.config import config_from_dict
from facetrain.data.preprocess import Preprocess
from facetrain.errors import CheckpointError, ConfigError, DataError
from facetrain.training.trainer import Trainer


def make_trainer(cfg, **kwargs) -> Trainer:
    trainer = Trainer(cfg, progress=False, **kwargs)
    trainer.setup()
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        **{f"e.{k}": v for k, v in trainer.embedder.state_dict().items()},
        **{f"h.{k}": v for k, v in trainer.head.state_dict().items()},
    }


def test_tiny_run_loss_falls_and_checkpoint_is_complete(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", train={"epochs": 4})
    trainer = make_trainer(cfg)
    result = trainer.fit()
    losses = [epoch["loss"] for epoch in result.history]
    assert losses[-1] < 0.7 * losses[0], losses
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for key in ("embedder", "head", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config"):
        assert key in state
    assert state["epoch"] == 4 and state["step"] == 4 * 4  # 32 images / batch 8
    assert state["config"]["model"]["embedding_dim"] == 16
    # The saved config alone reproduces the exact preprocessing (for eval, embed and export).
    saved = config_from_dict(state["config"])
    assert saved == cfg and Preprocess.from_config(saved.data) == trainer.data.train.preprocess
    assert (tmp_path / "run" / "config.yaml").read_text().count("embedding_dim: 16") == 1
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_resume_is_exact(faces, tmp_path):
    straight = make_trainer(tiny_config(faces, tmp_path / "a"))
    straight.fit()
    first = make_trainer(tiny_config(faces, tmp_path / "b"))
    first.fit(stop_at_epoch=1)
    resumed = make_trainer(tiny_config(faces, tmp_path / "b"), resume=tmp_path / "b" / "last.pt")
    assert (resumed.epoch, resumed.step) == (1, 4)
    resumed.fit()
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert straight.scheduler.step_count == resumed.scheduler.step_count == 8


@pytest.mark.parametrize("head", ["arcface", "curricularface", "adaface"])
def test_mid_epoch_resume_is_exact(faces, tmp_path, head):
    # The EMA heads' running statistics (buffers) must come back too, or the resumed run drifts.
    head_section = {"type": head} if head == "arcface" else {"type": head, "s": 16.0, "m": 0.2}
    overrides = {"train": {"checkpoint_every_steps": 3}, "model": {"dropout": 0.2}, "head": head_section}
    straight = make_trainer(tiny_config(faces, tmp_path / "a", **overrides))
    straight.fit()
    # Keep the checkpoint written at step 3 (mid-epoch 1), as if the run had died right after it.
    interrupted = make_trainer(tiny_config(faces, tmp_path / "b", **overrides))
    saved = []
    original_save = interrupted.save
    interrupted.save = lambda: saved.append(interrupted.step) or original_save() if interrupted.step <= 3 else None
    interrupted.fit(stop_at_epoch=1)
    assert saved == [3]
    assert load_checkpoint(tmp_path / "b" / "last.pt")["batch_in_epoch"] == 3
    resumed = make_trainer(tiny_config(faces, tmp_path / "b", **overrides), resume=tmp_path / "b" / "last.pt")
    resumed.fit()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    for name, initial in type(resumed.head)(**_head_args(resumed)).named_buffers():
        assert not torch.equal(b[f"h.{name}"], initial), name  # the statistics moved, and match


def _head_args(trainer: Trainer) -> dict:
    from facetrain.config import head_options

    return {"embedding_dim": 16, "num_classes": trainer.data.num_classes, **head_options(trainer.config.head)}


def test_gradient_accumulation_matches_one_big_batch(faces, tmp_path):
    """Two micro-batches of 4 with the loss halved give the step of one batch of 8."""
    big = make_trainer(tiny_config(faces, tmp_path / "a", train={"batch_size": 8, "grad_clip": None}))
    small = make_trainer(
        tiny_config(faces, tmp_path / "b", train={"batch_size": 4, "grad_accum_steps": 2, "grad_clip": None})
    )
    assert small.steps_per_epoch == big.steps_per_epoch == 4
    images = torch.stack([big.data.train[i][0] for i in range(8)])
    labels = torch.tensor([big.data.train[i][1] for i in range(8)])
    for trainer in (big, small):  # BatchNorm in eval mode: batch statistics would differ by design
        trainer.embedder.eval()
    big.train_step(iter([(images, labels)]), 1, ())
    small.train_step(iter([(images[:4], labels[:4]), (images[4:], labels[4:])]), 2, ())
    a, b = weights(big), weights(small)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_existing_run_is_not_overwritten_without_consent(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", train={"epochs": 1})
    make_trainer(cfg).fit()
    with pytest.raises(ConfigError, match="already holds last.pt.*--resume.*--overwrite"):
        make_trainer(cfg)
    make_trainer(cfg, overwrite=True)


def test_num_classes_mismatch_names_both_numbers(faces, tmp_path):
    with pytest.raises(ConfigError, match="head.num_classes is 10 but .* has 4 training identities"):
        make_trainer(tiny_config(faces, tmp_path / "run", head={"num_classes": 10}))


def test_resume_refuses_a_structurally_different_config(faces, tmp_path):
    make_trainer(tiny_config(faces, tmp_path / "run", train={"epochs": 1})).fit()
    changed = tiny_config(faces, tmp_path / "run", model={"embedding_dim": 32})
    with pytest.raises(
        CheckpointError,
        match=r"has model.embedding_dim 16, config says 32, which cannot change: set model.embedding_dim: 16",
    ):
        make_trainer(changed, resume=tmp_path / "run" / "last.pt")


def test_resume_refuses_changed_identities(faces, tmp_path):
    make_trainer(tiny_config(faces, tmp_path / "run", train={"epochs": 1})).fit()
    (faces / "id99").mkdir()
    for i in range(2):
        (faces / "id00" / f"img{i:02d}.png").rename(faces / "id99" / f"img{i:02d}.png")
    with pytest.raises(DataError, match="trained on 4 identities, data.root now has 5"):
        make_trainer(tiny_config(faces, tmp_path / "run"), resume=tmp_path / "run" / "last.pt")


def test_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"config": {}, "num_classes": 2, "embedder": {}, "head": {}, "step": 1}, path)

    def broken_save(obj, stream):
        stream.write(b"partial")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"config": {}, "num_classes": 2, "embedder": {}, "head": {}, "step": 2}, path)
    assert load_checkpoint(path)["step"] == 1
    assert os.listdir(tmp_path) == ["last.pt"]


def test_unsafe_checkpoint_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "config": {}, "num_classes": 2, "embedder": Payload(), "head": {}}, path)
    with pytest.raises(CheckpointError, match=r"cannot be used: it holds Python objects \(posix.system\)"):
        load_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="cannot be used: it is a text file"):
        load_checkpoint(tmp_path / "junk.pt")


def test_batch_larger_than_dataset(faces, tmp_path):
    with pytest.raises(DataError, match="train.batch_size=64 is larger than the 32 training images"):
        make_trainer(tiny_config(faces, tmp_path / "run", train={"batch_size": 64}))


def test_resume_applies_changed_hyperparameters(faces, tmp_path):
    make_trainer(tiny_config(faces, tmp_path / "run", train={"epochs": 1})).fit()
    changed = tiny_config(faces, tmp_path / "run", train={"weight_decay": 0.01, "momentum": 0.5})
    resumed = make_trainer(changed, resume=tmp_path / "run" / "last.pt")
    groups = resumed.optimizer.param_groups
    # (embedder decayed, embedder not decayed, head decayed, head not decayed)
    assert [(g["weight_decay"], g["momentum"]) for g in groups] == [(0.01, 0.5), (0.0, 0.5)] * 2
    assert len(resumed.optimizer.state) > 0  # the momentum buffers themselves were restored


def test_resume_refuses_another_optimizer(faces, tmp_path):
    make_trainer(tiny_config(faces, tmp_path / "run", train={"epochs": 1})).fit()
    with pytest.raises(CheckpointError, match="has train.optimizer sgd, config says adamw"):
        make_trainer(
            tiny_config(faces, tmp_path / "run", train={"optimizer": "adamw", "lr": 1e-3}),
            resume=tmp_path / "run" / "last.pt",
        )


def test_resume_refuses_a_new_batch_size_mid_epoch(faces, tmp_path):
    trainer = make_trainer(tiny_config(faces, tmp_path / "run", train={"checkpoint_every_steps": 1}))
    trainer.train_step(iter(trainer.loader), 1, ())
    trainer.batch_in_epoch = 1
    trainer.save()
    with pytest.raises(CheckpointError, match="train.batch_size 8, config says 4, which cannot change in the middle"):
        make_trainer(tiny_config(faces, tmp_path / "run", train={"batch_size": 4}), resume=tmp_path / "run" / "last.pt")


def test_center_crop_pixels_and_fraction_differ():
    from facetrain.checkpoint import config_differences

    assert config_differences({"data": {"center_crop": 1}}, {"data": {"center_crop": 1.0}}) == [
        ("data.center_crop", 1, 1.0)
    ]


def test_resume_into_another_runs_folder_is_refused(faces, tmp_path):
    make_trainer(tiny_config(faces, tmp_path / "a", train={"epochs": 1})).fit()
    make_trainer(tiny_config(faces, tmp_path / "b", train={"epochs": 1})).fit()
    with pytest.raises(ConfigError, match="'.*b' already holds last.pt"):
        make_trainer(tiny_config(faces, tmp_path / "b"), resume=tmp_path / "a" / "last.pt")


def test_run_dir_that_is_a_file(faces, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="run_dir: '.*file' is a file, not a folder"):
        make_trainer(tiny_config(faces, tmp_path / "file"))


def test_checkpoint_without_training_state_cannot_resume(faces, tmp_path):
    path = tmp_path / "weights.pt"
    save_checkpoint({"config": {}, "num_classes": 4, "embedder": {}, "head": {}}, path)
    with pytest.raises(CheckpointError, match="lacks class_names, optimizer.*cannot be used as a training checkpoint"):
        make_trainer(tiny_config(faces, tmp_path / "run"), resume=path)
    torch.save({"format_version": "1", "config": {}, "num_classes": 4, "embedder": {}, "head": {}}, path)
    with pytest.raises(CheckpointError, match="malformed header"):
        load_checkpoint(path)


def test_checkpoint_file_mode_follows_the_umask(tmp_path):
    path = save_checkpoint({"config": {}, "num_classes": 2, "embedder": {}, "head": {}}, tmp_path / "last.pt")
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def faces_pairs(faces, path):
    """A plain pairs list over the synthetic faces: 8 same and 8 different pairs."""
    lines = [f"id{i % 4:02d}/img0{i // 4}.png id{i % 4:02d}/img0{i // 4 + 2}.png 1" for i in range(8)]
    lines += [f"id{i % 4:02d}/img0{i // 4}.png id{(i + 1) % 4:02d}/img0{i // 4}.png 0" for i in range(8)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pairs_evaluation_keeps_best_and_resume_stays_exact(faces, tmp_path):
    pairs = faces_pairs(faces, tmp_path / "pairs.txt")
    overrides = {"eval": {"sets": [{"pairs": str(pairs), "images": str(faces), "name": "toy"}], "folds": 2,
                          "every_steps": 3, "best_metric": "roc_auc"}}  # fmt: skip
    straight = make_trainer(tiny_config(faces, tmp_path / "a", **overrides))
    result = straight.fit()
    assert result.best == tmp_path / "a" / "best.pt" and result.after.label == "toy 2-fold accuracy"
    best = load_checkpoint(result.best)
    assert best["best_value"] == straight.best_value and 0.0 <= best["best_value"] <= 1.0
    assert best["step"] <= straight.step
    assert any((tmp_path / "a" / "tensorboard").iterdir())

    first = make_trainer(tiny_config(faces, tmp_path / "b", **overrides))
    first.fit(stop_at_epoch=1)
    # last.pt is written after the epoch's evaluation, so it knows the best value best.pt holds:
    # a resumed run then replaces best.pt only with a better model.
    saved_best = load_checkpoint(tmp_path / "b" / "best.pt")["best_value"]
    assert load_checkpoint(tmp_path / "b" / "last.pt")["best_value"] == saved_best is not None
    resumed = make_trainer(tiny_config(faces, tmp_path / "b", **overrides), resume=tmp_path / "b" / "last.pt")
    resumed.fit()
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.best_value == straight.best_value
    assert load_checkpoint(tmp_path / "b" / "best.pt")["step"] == load_checkpoint(tmp_path / "a" / "best.pt")["step"]


def test_a_bad_pairs_file_fails_before_training(faces, tmp_path):
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("id00/img00.png id00/img01.png maybe\n")
    cfg = tiny_config(faces, tmp_path / "run", eval={"sets": [{"pairs": str(pairs), "images": str(faces)}]})
    with pytest.raises(DataError, match="pairs.txt:1: label must be 1 or 0"):
        make_trainer(cfg)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"model": {"backbone": "resnet34"}}, "has model.backbone resnet18, config says resnet34"),
        ({"data": {"image_size": 48}}, "has data.image_size 32, config says 48"),
    ],
)
def test_resume_names_what_the_checkpoint_has(faces, tmp_path, change, message):
    make_trainer(tiny_config(faces, tmp_path / "run", train={"epochs": 1})).fit()
    with pytest.raises(CheckpointError, match=message):
        make_trainer(tiny_config(faces, tmp_path / "run", **change), resume=tmp_path / "run" / "last.pt")


def test_resume_names_a_head_type_change_before_the_options_it_implies():
    from facetrain.checkpoint import check_resumable
    from facetrain.config import config_to_dict

    saved = config_to_dict(config_from_dict({"head": {"type": "arcface"}}))
    current = config_to_dict(config_from_dict({"head": {"type": "subcenter_arcface"}}))
    with pytest.raises(CheckpointError) as exc:
        check_resumable("last.pt", saved, current, mid_epoch=False)
    assert "has head.type arcface, config says subcenter_arcface, which cannot change: set head.type: arcface" in str(
        exc.value
    )
    k3, k2 = (config_to_dict(config_from_dict({"head": {"type": "subcenter_arcface", "k": k}})) for k in (3, 2))
    with pytest.raises(CheckpointError, match="has head.k 3, config says 2, which cannot change: set head.k: 3"):
        check_resumable("last.pt", k3, k2, mid_epoch=False)


def test_a_key_added_since_the_checkpoint_is_not_a_change_on_resume(tmp_path):
    """A checkpoint from before train.embedder_lr_scale existed ran with its default: nothing changed."""
    from facetrain.checkpoint import check_resumable
    from facetrain.config import config_to_dict

    current = config_to_dict(tiny_config(tmp_path / "faces", tmp_path / "run"))
    saved = {**current, "train": {k: v for k, v in current["train"].items() if k != "embedder_lr_scale"}}
    assert check_resumable("last.pt", saved, current, mid_epoch=False) == []
    changed = {**current, "train": {**current["train"], "embedder_lr_scale": 0.5}}
    assert check_resumable("last.pt", saved, changed, mid_epoch=False) == ["train.embedder_lr_scale: 1.0 -> 0.5"]


@pytest.mark.parametrize(
    "damage, expected",
    [
        (
            lambda emb, key: emb.__setitem__(key, torch.zeros(3)),
            r"embedder: backbone.0.weight: \(3,\) vs \(64, 3, 7, 7\)",
        ),
        (lambda emb, key: emb.pop(key), r"embedder: missing backbone.0.weight"),
        (lambda emb, key: emb.__setitem__("extra.weight", torch.zeros(1)), r"embedder: unexpected extra.weight"),
    ],
)
def test_resume_with_weights_that_do_not_fit_names_the_first_one(faces, tmp_path, damage, expected):
    cfg = tiny_config(faces, tmp_path / "run", train={"epochs": 1})
    trainer = Trainer(cfg, progress=False)
    trainer.setup()
    path = trainer.save()
    state = {k: v for k, v in load_checkpoint(path).items() if k not in ("format_version", "facetrain_version")}
    embedder = dict(state["embedder"])
    damage(embedder, "backbone.0.weight")
    save_checkpoint({**state, "embedder": embedder}, path)
    with pytest.raises(CheckpointError, match=rf"does not fit this model \({expected}\): start a new run"):
        Trainer(cfg, progress=False, resume=path).setup()


def test_each_epoch_line_shows_its_phases_and_tensorboard_gets_them(faces, tmp_path, caplog, monkeypatch):
    from facetrain.training.phases import PHASES, PhaseClock, format_phases

    cfg = tiny_config(faces, tmp_path / "run", data={"val_identities": 2, "cache": "none"}, train={"epochs": 2})
    trainer = make_trainer(cfg)
    logged: dict[str, list[float]] = {}
    scalars = trainer.tensorboard.scalars
    monkeypatch.setattr(
        trainer.tensorboard, "scalars",
        lambda values, step: [logged.setdefault(k, []).append(v) for k, v in values.items()] and scalars(values, step),
    )  # fmt: skip
    with caplog.at_level("INFO", logger="facetrain"):
        result = trainer.fit()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and all(" s (train " in line for line in lines)  # a phase under 0.05 s is not shown
    assert len(result.phases) == 2
    for seconds in result.phases:
        assert seconds["total"] == pytest.approx(sum(seconds[name] for name in PHASES), rel=1e-6)
        assert seconds["verify"] > 0 and seconds["save"] > 0 and seconds["data wait"] > 0  # decoded as read
    assert len(logged["time/verify_s"]) == 2 and len(logged["time/data_wait_s"]) == 2
    seconds = {"total": 121.0, "train": 114.2, "data wait": 0.41, "verify": 6.1, "save": 0.9, "log": 0.01}
    expected = "121 s (train 114 s, data wait 0.41 s, verify 6.1 s, save 0.90 s)"  # a phase of no time left out
    assert format_phases(seconds) == expected
    assert set(PhaseClock(torch.device("cpu")).read()) == {"total", *PHASES}


def test_best_pt_is_the_same_file_as_last_pt_when_they_hold_one_state(faces, tmp_path):
    cfg = tiny_config(faces, tmp_path / "run", data={"val_identities": 2}, train={"epochs": 1})
    make_trainer(cfg).fit()
    last, best = tmp_path / "run" / "last.pt", tmp_path / "run" / "best.pt"
    assert best.stat().st_ino == last.stat().st_ino  # written once, linked
    before = best.read_bytes()
    more = make_trainer(tiny_config(faces, tmp_path / "run", data={"val_identities": 2}, train={"epochs": 2}),
                        resume=last)  # fmt: skip
    more.fit()
    assert load_checkpoint(last)["epoch"] == 2
    if load_checkpoint(best)["epoch"] == 2:  # improved: linked to the new last.pt
        assert best.stat().st_ino == last.stat().st_ino
    else:  # last.pt's next write replaced its own name only: the earlier best.pt is as it was
        assert best.stat().st_ino != last.stat().st_ino and best.read_bytes() == before
