import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from facetrain.config import (
    HEAD_OPTION_NAMES,
    HEAD_OPTIONS,
    HEAD_TYPES,
    MARGIN_WARMUP_EPOCHS,
    Config,
    all_keys,
    config_from_dict,
    config_to_dict,
    describe_keys,
    head_options,
    load_config,
    resolve_config,
)
from facetrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def problems_of(exc: pytest.ExceptionInfo) -> list[str]:
    return [line.strip() for line in str(exc.value).splitlines()[1:]]


def test_defaults_are_valid():
    cfg = config_from_dict({})
    head = dataclasses.replace(
        Config().head, **HEAD_OPTIONS["arcface"], margin_warmup_epochs=MARGIN_WARMUP_EPOCHS["arcface"]
    )  # a head's options and its margin warm-up are saved resolved
    assert cfg == dataclasses.replace(Config(), head=head)


def test_typo_gets_did_you_mean(tmp_path):
    path = write(tmp_path, "model:\n  embeding_dim: 256\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert problems_of(exc) == ["model.embeding_dim: unknown key (did you mean 'model.embedding_dim'?)"]
    assert str(path) in str(exc.value).splitlines()[0]


def test_key_in_wrong_section_points_to_the_right_one():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"data": {"embedding_dim": 64}})
    assert "did you mean 'model.embedding_dim'?" in str(exc.value)


def test_every_problem_is_listed_at_once():
    raw = {
        "model": {"embedding_dim": "big", "backbon": "resnet18"},
        "train": {"lr": -1, "optimizer": "rmsprop", "epochs": 2.5},
        "data": {"hflip": "yes"},
        "extra": 1,
    }
    with pytest.raises(ConfigError) as exc:
        config_from_dict(raw)
    lines = problems_of(exc)
    assert str(exc.value).splitlines()[0] == "config: 7 problems:"
    assert "model.embedding_dim: must be a whole number, got 'big'" in lines
    assert "model.backbon: unknown key (did you mean 'model.backbone'?)" in lines
    assert "train.lr: must be > 0.0, got -1" in lines
    assert "train.optimizer: must be one of 'sgd', 'adamw', got 'rmsprop'" in lines
    assert "train.epochs: must be a whole number, got 2.5" in lines
    assert "data.hflip: must be true or false, got 'yes'" in lines
    assert any(line.startswith("extra: unknown key") for line in lines)


def test_scientific_notation_without_dot_is_a_number():
    # YAML 1.1 reads `1e-3` as a string; a float key accepts it anyway.
    assert config_from_dict({"train": {"lr": "1e-3"}}).train.lr == pytest.approx(1e-3)


def test_center_crop_accepts_pixels_or_fraction():
    assert config_from_dict({"data": {"center_crop": 150}}).data.center_crop == 150
    assert config_from_dict({"data": {"center_crop": 0.6}}).data.center_crop == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="data.center_crop: a fraction must be <= 1.0"):
        config_from_dict({"data": {"center_crop": 1.5}})


def test_overrides_are_validated_like_the_file(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n")
    cfg = load_config(path, ["train.lr=0.01", "model.embedding_dim=256", "head.easy_margin=true"])
    assert (cfg.train.lr, cfg.model.embedding_dim, cfg.head.easy_margin) == (0.01, 256, True)
    with pytest.raises(ConfigError) as exc:
        load_config(path, ["model.embeding_dim=256", "train.batch_size=0"])
    assert problems_of(exc) == [
        "model.embeding_dim: unknown key (did you mean 'model.embedding_dim'?)",
        "train.batch_size: must be >= 2, got 0",
    ]


@pytest.mark.parametrize("text", ["train.lr", "=3", "train.lr.x=1"])
def test_malformed_overrides(tmp_path, text):
    with pytest.raises(ConfigError):
        load_config(write(tmp_path, "train:\n  lr: 0.1\n"), [text])


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n  epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:\d+:\d+: invalid YAML"):
        load_config(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_cross_checks():
    with pytest.raises(ConfigError, match="data.val_identities: set to 0 when data.val_root"):
        config_from_dict({"data": {"val_root": "x", "val_identities": 3}})
    with pytest.raises(ConfigError, match="train.warmup_epochs"):
        config_from_dict({"train": {"epochs": 2, "warmup_epochs": 3}})


def test_yaml_tags_cannot_run_code(tmp_path):
    path = write(tmp_path, "seed: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.data.root, "every shipped config names its dataset"


def test_shipped_configs_exist_and_r50_is_the_field_default():
    names = {p.name for p in (REPO / "configs").glob("*.yaml")}
    assert {"demo.yaml", "r18.yaml", "r50.yaml", "r100.yaml", "mbf.yaml", "resnet50.yaml", "vgg16.yaml"} <= names
    r50 = load_config(REPO / "configs" / "r50.yaml")  # the field's r50 is insightface's IResNet-50
    assert (r50.model.backbone, r50.data.image_size, r50.model.embedding_dim) == ("iresnet50", 112, 512)
    for name, backbone in (("r18", "iresnet18"), ("r100", "iresnet100"), ("mbf", "mobilefacenet")):
        assert load_config(REPO / "configs" / f"{name}.yaml").model.backbone == backbone


def test_config_page_documents_every_key():
    page = (REPO / "docs" / "config.md").read_text()
    missing = [key for key in all_keys() if f"`{key}`" not in page]
    assert not missing, f"docs/config.md lacks config keys: {missing} (run: python scripts/config_reference.py)"
    check = subprocess.run(
        [sys.executable, "scripts/config_reference.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_on_off_yes_no_stay_strings(tmp_path):
    # YAML 1.1 would read `off` as False, so the documented `amp: off` would be rejected.
    assert load_config(write(tmp_path, "train:\n  amp: off\n")).train.amp == "off"
    assert load_config(write(tmp_path, "{}\n"), ["train.amp=off"]).train.amp == "off"
    with pytest.raises(ConfigError, match="data.hflip: must be true or false, got 'yes'"):
        load_config(write(tmp_path, "data:\n  hflip: yes\n"))


def test_duplicate_keys_are_an_error(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.5\nseed: 1\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"c\.yaml:4:1: invalid YAML \(duplicate key 'train'"):
        load_config(path)


@pytest.mark.parametrize("value", ["nan", ".nan", "inf", "-.inf", "1e999"])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ConfigError, match="train.lr: must be a finite number"):
        load_config(None, [f"train.lr={value}"])


def test_seed_must_fit_the_generators():
    with pytest.raises(ConfigError, match="seed: must be <= 4294967295"):
        config_from_dict({"seed": 10**14})


def test_backbone_typo_is_listed_with_the_other_problems():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["model.backbone=resnet5O", "model.embeding_dim=3"])
    lines = problems_of(exc)
    assert len(lines) == 2
    backbone = next(line for line in lines if line.startswith("model.backbone:"))
    assert backbone.startswith("model.backbone: must be one of 'resnet18'")
    assert backbone.endswith("got 'resnet5O' (did you mean 'resnet50'?)")


def test_backbone_choices_match_the_registry():
    from facetrain.config import BACKBONE_NAMES
    from facetrain.models.backbones import backbone_names

    assert sorted(BACKBONE_NAMES) == backbone_names()


def test_a_directory_is_not_a_config(tmp_path):
    with pytest.raises(ConfigError, match="is a directory: pass a YAML file"):
        load_config(tmp_path)


def test_one_held_out_identity_is_refused():
    with pytest.raises(ConfigError, match="data.val_identities: verification needs 0 or at least 2"):
        config_from_dict({"data": {"val_identities": 1}})


# --------------------------------------------------------------------------- heads


@pytest.mark.parametrize("kind", HEAD_TYPES)
def test_each_head_gets_its_own_defaults_and_saves_them(kind):
    cfg = config_from_dict({"head": {"type": kind}})
    assert head_options(cfg.head) == HEAD_OPTIONS[kind]
    saved = config_to_dict(cfg)["head"]
    for name in HEAD_OPTION_NAMES:  # the saved config states every value the head uses, and only those
        assert saved[name] == HEAD_OPTIONS[kind].get(name), name
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_head_options_set_explicitly_win_over_defaults():
    cfg = config_from_dict({"head": {"type": "cosface", "m": 0.4, "s": 30}})
    assert head_options(cfg.head) == {"s": 30.0, "m": 0.4}


def test_an_option_the_head_does_not_take_is_an_error():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"head": {"type": "softmax", "s": 32, "m": 0.5}})
    assert problems_of(exc) == [
        "head.s: not an option of head.type=softmax (it is taken by every head but softmax): remove it, "
        "or set it to null (--set head.s=null)",
        "head.m: not an option of head.type=softmax (it is taken only by arcface, cosface, subcenter_arcface, "
        "curricularface, adaface): remove it, or set it to null (--set head.m=null)",
    ]
    with pytest.raises(ConfigError, match=r"head.k: not an option of head.type=arcface \(it is taken only by sub"):
        config_from_dict({"head": {"k": 2}})


def test_softmax_has_no_margin_to_warm_up():
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"head": {"type": "softmax", "warm_start_epochs": 1, "margin_warmup_epochs": 2}})
    assert problems_of(exc) == [
        f"head.{name}: head.type=softmax has no margin to warm up: remove it, or set it to 0 (--set head.{name}=0)"
        for name in ("warm_start_epochs", "margin_warmup_epochs")
    ]
    resolved = config_from_dict({"head": {"type": "softmax", "margin_warmup_epochs": 0}})
    assert config_from_dict(config_to_dict(resolved)) == resolved  # a saved softmax config loads again


def test_switching_head_from_the_command_line(tmp_path):
    demo = REPO / "configs" / "demo.yaml"
    assert load_config(demo, ["head.type=cosface"]).head.m == HEAD_OPTIONS["cosface"]["m"]
    assert load_config(demo, ["head.type=softmax", "head.s=null"]).head.type == "softmax"
    with pytest.raises(ConfigError, match="head.s=null"):
        load_config(demo, ["head.type=softmax"])


@pytest.mark.parametrize(
    "head, problem",
    [
        ({"type": "combined", "m1": 0}, "head.m1: must be > 0.0"),
        ({"type": "subcenter_arcface", "k": 0}, "head.k: must be >= 1"),
        ({"type": "adaface", "h": 0}, "head.h: must be > 0.0"),
        ({"type": "curricularface", "ema_alpha": 1.5}, "head.ema_alpha: must be <= 1.0"),
        ({"type": "cosface", "m": 2}, "head.m: must be < 1.57"),
    ],
)
def test_head_option_ranges(head, problem):
    with pytest.raises(ConfigError) as exc:
        config_from_dict({"head": head})
    assert problems_of(exc)[0].startswith(problem)


def test_help_states_each_heads_default():
    helps = {key: help_text for key, _, _, help_text in describe_keys()}
    for kind, options in HEAD_OPTIONS.items():
        for name, default in options.items():
            shown = str(default).lower() if isinstance(default, bool) else f"{default:g}"
            assert shown in helps[f"head.{name}"], (kind, name)
    assert set().union(*HEAD_OPTIONS.values()) == set(HEAD_OPTION_NAMES)


def test_every_size_and_count_has_an_upper_bound():
    """No whole-number key is unbounded: each one sizes an allocation, a loop or a file."""
    import typing

    def int_fields(cls, prefix=""):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            inner = typing.get_args(hint)[0] if typing.get_origin(hint) is tuple else hint
            if dataclasses.is_dataclass(inner):
                yield from int_fields(inner, f"{prefix}{f.name}.")
            elif int in (hint, *typing.get_args(hint)):
                yield prefix + f.name, f.metadata

    fields = dict(int_fields(Config))
    assert "data.image_size" in fields and "train.batch_size" in fields
    unbounded = [key for key, rules in fields.items() if "le" not in rules and "lt" not in rules]
    assert unbounded == []


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.image_size=99999999999999999999", "data.image_size: must be <= 1024, got 99999999999999999999"),
        ("head.s=inf", "head.s: must be a finite number or 'auto' or null, got 'inf'"),
        ("data.root=", "data.root: needs a value, but it is empty"),
        ("data.center_crop=abc", "data.center_crop: must be a whole number or a finite number or null, got 'abc'"),
    ],
)
def test_messages_name_the_rule_broken(override, message):
    with pytest.raises(ConfigError) as caught:
        resolve_config({}, [override], source="config")
    assert message in str(caught.value)
