"""The hostile battery: bad inputs and faults across every command, each one message and a documented exit code.

Every case asserts: the exit code (2 for bad input, 130 for Ctrl-C, 143 for SIGTERM, 0 where the
input is usable and a warning is the right answer), no traceback, exactly one ``error:`` line (or
the ``problem:`` lines of ``check``, or click's usage error), and the words that name what is wrong
and where. docs/diagnostics.md's "Errors and exit codes" promises what this file checks.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import REPO, make_faces
from PIL import Image
from typer.testing import CliRunner

from facetrain import files
from facetrain.checkpoint import load_checkpoint, save_checkpoint
from facetrain.cli import app
from facetrain.config import load_config
from facetrain.errors import ConfigError

runner = CliRunner()


@dataclass
class World:
    """One small trained run, shared by the cases: faces, a config, last.pt, an exported model, a pairs list."""

    root: Path
    faces: Path
    config: Path
    checkpoint: Path
    model: Path
    pairs: Path
    state: dict

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.root / "cases" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def tampered(self, name: str, **fields) -> Path:
        """A copy of the checkpoint with some resume fields replaced."""
        state = {k: v for k, v in self.state.items() if k not in ("format_version", "facetrain_version")}
        return save_checkpoint({**state, **fields}, self.root / "cases" / name)


def config_text(root: Path, faces: Path, run_dir: Path) -> str:
    return (
        f"run_dir: {run_dir}\n"
        f"data: {{root: {faces}, image_size: 32, num_workers: 0, val_identities: 2}}\n"
        "model: {backbone: resnet18, embedding_dim: 16}\n"
        "head: {s: 16.0, m: 0.2}\n"
        "train: {epochs: 1, batch_size: 8, lr: 0.05, warmup_epochs: 0.5, device: cpu, checkpoint_every_steps: 0}\n"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("hostile")
    faces = make_faces(root / "faces", identities=6, per_identity=6)
    config = root / "tiny.yaml"
    config.write_text(config_text(root, faces, root / "run"))
    trained = runner.invoke(app, ["train", "--config", str(config), "--no-progress"])
    assert trained.exit_code == 0, trained.output
    checkpoint = root / "run" / "last.pt"
    model = root / "model.pt"
    exported = runner.invoke(app, ["export", "--checkpoint", str(checkpoint), "--out", str(model)])
    assert exported.exit_code == 0, exported.output
    pairs = root / "pairs.txt"
    same = [f"faces/id0{i}/img00.png faces/id0{i}/img01.png 1" for i in range(4)]
    different = [f"faces/id0{i}/img00.png faces/id0{i + 1}/img00.png 0" for i in range(4)]
    pairs.write_text("\n".join(same + different) + "\n")
    state = load_checkpoint(checkpoint)
    return World(root, faces, config, checkpoint, model, pairs, state)


# ---------------------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Case:
    argv: Callable[[World], list[str]]
    needles: tuple[str, ...]
    kind: str = "error"  # error: one "error:" line; problem: check's lines; usage: click's; warning: exit 0
    code: int = 2


def check(*sets: str) -> Callable[[World], list[str]]:
    return lambda w: ["check", "--config", str(w.config), *[arg for s in sets for arg in ("--set", s)]]


def bomb_png(w: World) -> Path:
    folder = w.root / "cases" / "bomb_faces"
    make_faces(folder, identities=4, per_identity=3)
    Image.new("L", (9000, 9000)).save(folder / "id00" / "huge.png")  # about 80 KB on disk, 81 Mpx decoded
    return folder


def looped_faces(w: World) -> Path:
    folder = make_faces(w.root / "cases" / "looped", identities=6, per_identity=6)
    (folder / "loop").symlink_to(folder)
    (folder / "id00" / "gone.png").symlink_to(folder / "nowhere.png")
    return folder


def one_image_faces(w: World) -> Path:
    return make_faces(w.root / "cases" / "single", identities=6, per_identity=1)


def other_identities(w: World) -> Path:
    """The same faces with the checkpoint's first training identity renamed."""
    folder = make_faces(w.root / "cases" / "others", identities=6, per_identity=6)
    (folder / w.state["class_names"][0]).rename(folder / "zz_new")
    return folder


ALIAS_BOMB = "x0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]\n" for i in range(1, 9)
) + f"seed: [{', '.join(['*a8'] * 9)}]\n"  # fmt: skip
EVIL_YAML = "seed: !!python/object/apply:os.system ['touch {marker}']\n"

CASES: dict[str, Case] = {
    # -- config values
    "image_size_huge_int": Case(check("data.image_size=99999999999999999999"), ("data.image_size: must be <= 1024",)),
    "image_size_100000": Case(check("data.image_size=100000"), ("data.image_size: must be <= 1024", "got 100000")),
    "embedding_dim_huge": Case(check("model.embedding_dim=100000000000"), ("model.embedding_dim: must be <= 8192",)),
    "batch_input_too_big": Case(check("train.batch_size=65536", "data.image_size=1024"), ("GiB of input",)),
    "workers_huge": Case(check("data.num_workers=100000"), ("data.num_workers: must be <= 256",)),
    "projection_too_big": Case(
        check("model.backbone=resnet50", "data.image_size=1024", "model.pool_size=32", "model.embedding_dim=8192"),
        ("over the 268M limit: lower model.pool_size or model.embedding_dim",),
        "problem",
    ),
    "epochs_huge": Case(check("train.epochs=99999999999999"), ("train.epochs: must be <= 100000",)),
    "head_s_inf": Case(check("head.s=inf"), ("head.s: must be a finite number or 'auto' or null", "'inf'")),
    "empty_root": Case(check("data.root="), ("data.root: needs a value, but it is empty",)),
    "string_for_int": Case(check("train.batch_size=many"), ("train.batch_size: must be a whole number", "'many'")),
    "huge_string_value": Case(check("data.hflip=" + "y" * 100_000), ("data.hflip: must be true or false", "...")),
    "unknown_key": Case(check("model.embeding_dim=8"), ("did you mean 'model.embedding_dim'?",)),
    "set_without_equals": Case(check("train.lr"), ("--set 'train.lr': expected KEY=VALUE",)),
    "set_through_a_value": Case(check("data.root.x=1"), ("'data.root' is a value, not a section",)),
    "alias_bomb": Case(
        lambda w: ["check", "--config", str(w.file("bomb.yaml", ALIAS_BOMB))],
        ("anchors and aliases expand to more than 100,000 values",),
    ),
    "recursive_alias": Case(
        lambda w: ["check", "--config", str(w.file("loop.yaml", "a: &a [1, *a]\n"))], ("expands forever",)
    ),
    "deep_nesting": Case(
        lambda w: ["check", "--config", str(w.file("deep.yaml", "seed: " + "[" * 3000 + "]" * 3000))],
        ("nested too deeply",),
    ),
    "duplicate_key": Case(
        lambda w: ["check", "--config", str(w.file("dup.yaml", "seed: 1\nseed: 2\n"))], ("duplicate key 'seed'",)
    ),
    "config_is_a_list": Case(
        lambda w: ["check", "--config", str(w.file("list.yaml", "- 1\n- 2\n"))], ("the top level must be a mapping",)
    ),
    "config_is_binary": Case(
        lambda w: ["check", "--config", str(w.file("bin.yaml", b"\x00\xff\xfe\x81"))],
        ("cannot read config file", "bin.yaml"),
    ),
    "config_is_latin1": Case(
        lambda w: ["check", "--config", str(w.file("latin.yaml", "seed: 1\n# caf\xe9\n".encode("latin-1")))],
        ("latin.yaml': line 2: byte 0xe9 is not UTF-8: re-save the file as UTF-8",),
    ),
    "config_is_a_folder": Case(lambda w: ["check", "--config", str(w.faces)], ("is a directory",)),
    # -- paths of the wrong kind
    "checkpoint_is_a_folder": Case(
        lambda w: ["eval", "--checkpoint", str(w.checkpoint.parent)],
        ("is a folder, not a file: did you mean", "last.pt'?"),
    ),
    "resume_a_folder": Case(lambda w: ["train", "--resume", str(w.checkpoint.parent)], ("is a folder, not a file",)),
    "checkpoint_is_text": Case(lambda w: ["eval", "--checkpoint", str(w.config)], ("it is a text file",)),
    "checkpoint_is_empty": Case(
        lambda w: ["eval", "--checkpoint", str(w.file("empty.pt", b""))], ("it is an empty file",)
    ),
    "checkpoint_is_exported": Case(
        lambda w: ["eval", "--checkpoint", str(w.model)], ("it is an exported TorchScript model",)
    ),
    "checkpoint_truncated": Case(
        lambda w: ["eval", "--checkpoint", str(w.file("cut.pt", w.checkpoint.read_bytes()[:50_000]))],
        ("cut.pt' cannot be used", "damaged"),
    ),
    "checkpoint_runs_code": Case(
        lambda w: ["eval", "--checkpoint", str(torch_save_evil(w))],
        ("holds Python objects (", "system), which facetrain never unpickles"),
    ),
    "checkpoint_is_a_device": Case(lambda w: ["eval", "--checkpoint", "/dev/null"], ("is not a regular file",)),
    "verify_training_checkpoint": Case(
        lambda w: ["verify", str(w.checkpoint), *images(w)], ("not an exported model", "facetrain export --checkpoint")
    ),
    "verify_text_file": Case(
        lambda w: ["verify", str(w.config), *images(w)], ("is a text file, not an exported model",)
    ),
    "embed_images_is_a_file": Case(
        lambda w: ["embed", "--model", str(w.model), "--images", images(w)[0], "--out", str(w.root / "e.npz")],
        ("--images: '", "is a PNG image, not a folder"),
    ),
    "data_root_is_a_file": Case(check("data.root={config}"), ("data.root", "is a text file, not a folder"), "problem"),
    "pairs_is_a_folder": Case(
        lambda w: ["eval", "--checkpoint", str(w.checkpoint), "--pairs", str(w.faces)],
        ("pairs file", "is a folder, not a file"),
    ),
    "pairs_images_is_a_file": Case(
        lambda w: ["eval", "--checkpoint", str(w.checkpoint), "--pairs", str(w.pairs), "--images", str(w.config)],
        ("images root", "is a text file, not a folder"),
    ),
    # -- the key named is the one typed
    "eval_device_bogus": Case(
        lambda w: ["eval", "--checkpoint", str(w.checkpoint), "--device", "tpu9"], ("--device: unknown device 'tpu9'",)
    ),
    "train_device_bogus": Case(
        lambda w: [
            "train",
            "--config",
            str(w.config),
            "--device",
            "tpu9",
            "--set",
            f"run_dir={w.root / 'cases' / 'dev'}",
        ],
        ("--device: unknown device",),
    ),
    # -- thresholds and angles
    "export_threshold_5": Case(
        lambda w: ["export", "--checkpoint", str(w.checkpoint), "--out", str(w.root / "t.pt"), "--threshold", "5"],
        ("--threshold: 5 is outside [-1, 1]",),
    ),
    "verify_threshold_minus_5": Case(
        lambda w: ["verify", str(w.model), *images(w), "--threshold", "-5"], ("--threshold: -5 is outside [-1, 1]",)
    ),
    "verify_threshold_nan": Case(
        lambda w: ["verify", str(w.model), *images(w), "--threshold", "nan"],
        ("--threshold: nan is not a finite number",),
    ),
    "threshold_from_bad_json": Case(
        lambda w: [
            "export",
            "--checkpoint",
            str(w.checkpoint),
            "--out",
            str(w.root / "t.pt"),
            "--threshold-from",
            str(w.file("eval.json", '{"sets": [{"plain": {"threshold": 7}}]}')),
        ],
        ("is outside [-1, 1]",),
    ),
    "outliers_angle_nan": Case(
        lambda w: ["outliers", "--checkpoint", str(w.checkpoint), "--angle", "nan"],
        ("'--angle'",),
        "usage",  # typer refuses NaN itself; find_outliers refuses it too, for library callers
    ),
    "eval_batch_size_huge": Case(
        lambda w: evaluate(w, "--batch-size", "99999999999999999999"),
        ("--batch-size",),
        "usage",
    ),
    # -- outputs
    "export_out_under_a_file": Case(
        lambda w: ["export", "--checkpoint", str(w.checkpoint), "--out", str(w.config / "m.pt")],
        ("--out: cannot create the folder",),
    ),
    "embed_out_is_a_folder": Case(
        lambda w: ["embed", "--model", str(w.model), "--images", str(w.faces), "--out", str(w.faces)],
        ("--out: '", "is a folder: give a file name"),
    ),
    "pairs_out_under_a_file": Case(
        lambda w: ["pairs", "--root", str(w.faces), "--out", str(w.config / "p.txt")],
        ("--out: cannot create the folder",),
    ),
    # -- data
    "decompression_bomb": Case(
        lambda w: check(f"data.root={bomb_png(w)}", "data.val_identities=0")(w),
        ("81 Mpx", "over the 64 Mpx limit", "huge.png"),
        "problem",
    ),
    "symlink_loops": Case(
        lambda w: check(f"data.root={looped_faces(w)}")(w),
        ("skipped 2 links that lead nowhere or in a loop", "id00/gone.png", "loop"),
        "warning",
        0,
    ),
    "one_image_identities": Case(
        lambda w: check(f"data.root={one_image_faces(w)}")(w), ("lower data.min_images_per_identity",), "problem"
    ),
    # -- checkpoints given to --resume
    "resume_malformed_scheduler": Case(
        lambda w: resume(w, w.tampered("s.pt", scheduler={"step_count": "x"})), ("scheduler must hold",)
    ),
    "resume_malformed_rng": Case(lambda w: resume(w, w.tampered("r.pt", rng={"python": 1})), ("rng must hold",)),
    "resume_rng_wrong_size": Case(
        lambda w: resume(w, w.tampered("r2.pt", rng={**w.state["rng"], "torch": torch.zeros(3, dtype=torch.uint8)})),
        ("rng does not hold valid random states",),
    ),
    "resume_malformed_epoch": Case(
        lambda w: resume(w, w.tampered("e.pt", epoch="3")), ("epoch must be a whole number",)
    ),
    "resume_other_identities": Case(
        lambda w: [
            "train",
            "--resume",
            str(w.checkpoint),
            "--set",
            f"data.root={other_identities(w)}",
            "--set",
            "data.val_identities=0",
        ],
        ("'zz_new'", "not in the checkpoint", "missing from the data"),
    ),
    # -- found by a second hostile pass
    "name_too_long": Case(check("data.root=/tmp/" + "a" * 300), ("file name too long",)),
    "nan_weights_export": Case(
        lambda w: ["export", "--checkpoint", str(nan_checkpoint(w)), "--out", str(w.root / "nan.pt")],
        ("holds NaN or infinite values (the run diverged)",),
    ),
    "nan_weights_eval": Case(
        lambda w: ["eval", "--checkpoint", str(nan_checkpoint(w)), "--pairs", str(w.pairs)], ("holds NaN",)
    ),
    "export_over_its_checkpoint": Case(
        lambda w: ["export", "--checkpoint", str(w.tampered("self.pt")), "--out", str(w.root / "cases" / "self.pt")],
        ("is also an input of this command",),
    ),
    "eval_json_over_the_pairs": Case(
        lambda w: ["eval", "--checkpoint", str(w.checkpoint), "--pairs", str(w.pairs), "--json", str(w.pairs)],
        ("--json:", "is also an input of this command"),
    ),
    # A re-made output (a report, an export) never replaces a checkpoint, a model or a record file of another
    # kind: before, --json over a run's last.pt replaced it with JSON, and export --out with a model.
    "eval_json_over_another_checkpoint": Case(
        lambda w: [
            "eval",
            "--checkpoint",
            str(w.checkpoint),
            "--pairs",
            str(w.pairs),
            "--json",
            str(w.tampered("o.pt")),
        ],
        (
            "--json:",
            "o.pt' is a torch.save archive (a checkpoint or weights file), which a JSON report would replace",
        ),
    ),
    "eval_plot_over_a_model": Case(
        lambda w: ["eval", "--checkpoint", str(w.checkpoint), "--pairs", str(w.pairs), "--plot", str(w.model)],
        ("--plot:", "is an exported TorchScript model", "which a plot would replace: give another path"),
    ),
    "export_over_another_checkpoint": Case(
        lambda w: ["export", "--checkpoint", str(w.checkpoint), "--out", str(w.tampered("other.pt"))],
        ("--out:", "other.pt' is a torch.save archive", "which an exported TorchScript model"),
    ),
    "embed_format_mismatch": Case(
        lambda w: embed(w, "--format", "csv"),
        ("is not a .csv file name, and --format is csv: pass --format npz",),
    ),
    "embed_out_is_an_image": Case(
        lambda w: ["embed", "--model", str(w.model), "--images", str(w.faces), "--out", images(w)[0]],
        ("is not a .npz file name",),
    ),
    "verify_missing_image": Case(
        lambda w: ["verify", str(w.model), str(w.root / "missing.png"), images(w)[0]],
        ("image '", "missing.png' not found: check the path"),
    ),
    "resume_a_moved_run": Case(
        lambda w: ["train", "--resume", str(moved_checkpoint(w))], ("was saved with run_dir", "add --set run_dir=")
    ),
    "min_images_too_many": Case(
        check("data.min_images_per_identity=1000"), ("lower data.min_images_per_identity",), "problem"
    ),
    "eval_folds_huge": Case(
        lambda w: evaluate(w, "--folds", "99999999999999999999"),
        ("--folds",),
        "usage",
    ),
    "embed_workers_huge": Case(
        lambda w: embed(w, "--workers", "100000"),
        ("--workers",),
        "usage",
    ),
    # -- pack and unpack (issue 30): an earlier dataset is never replaced silently
    "pack_over_an_existing_rec": Case(
        lambda w: ["pack", "--root", str(w.faces), "--out", str(packed(w)), "--no-progress"],
        ("--out: '", "cases/packed/train.rec' exists: give another path, or --overwrite to replace it"),
    ),
    "pack_over_an_existing_property": Case(
        lambda w: ["pack", "--root", str(w.faces), "--out", str(packed(w).with_name("val.rec")), "--no-progress"],
        ("cases/packed/property' exists (written beside 'val.rec'): give another path, or --overwrite",),
    ),
    "unpack_a_folder": Case(
        lambda w: ["unpack", str(packed(w).parent), "--out", str(w.root / "cases" / "unpacked")],
        ("cases/packed' is a folder, not a file: did you mean '", "cases/packed/train.rec'?"),
    ),
    "unpack_no_image_records": Case(
        lambda w: ["unpack", str(imageless_rec(w)), "--out", str(w.root / "cases" / "unpacked")],
        ("imageless/train.rec': none of its 2 image records holds an image", "record key 1 at byte 0", "unpacked"),
    ),
    "pairs_over_an_existing_file": Case(
        lambda w: ["pairs", "--root", str(w.faces), "--out", str(w.pairs)],
        ("--out:", "exists: give another path, or --overwrite to replace it"),
    ),
    "pairs_not_utf8": Case(
        lambda w: evaluate_list(
            w, w.file("latin1.txt", "id00/img00.png id00/img01.png 1\nid00/\xe9.png x 0\n".encode("latin-1"))
        ),
        ("latin1.txt, line 2, column 6: byte 0xe9 is not UTF-8: re-save the pairs file as UTF-8",),
    ),
    "threshold_from_malformed_json": Case(
        lambda w: threshold_from(w, "bad.json", '{"sets": [\n'), ("bad.json' is not valid JSON (line 2, column 1)",)
    ),
    "threshold_from_an_ijb_report": Case(
        lambda w: threshold_from(w, "ijb.json", '{"model": "m.pt", "ijb": {"protocol": "1:1", "threshold": {}}}'),
        ("ijb.json' is an IJB report (eval --ijb --json): its thresholds are for template scores",),
    ),
    "verify_a_folder": Case(
        lambda w: ["verify", str(w.model), str(w.faces), images(w)[0]], ("is a folder, not an image",)
    ),
    "resume_weights_that_do_not_fit": Case(
        lambda w: ["train", "--resume", str(misfit_checkpoint(w))],
        ("does not fit this model (embedder: backbone.0.weight: (3,) vs", "start a new run"),
    ),
    "align_an_animated_gif": Case(
        lambda w: ["align", "--input", str(gif_photos(w)), "--out", str(w.root / "cases" / "gif_out")],
        ("1 file of a type facetrain does not read (a .gif, a .heic, ...), skipped: see", "align_report.tsv"),
        "warning",
        3,
    ),
    "align_only_a_gif": Case(
        lambda w: ["align", "--input", str(gif_photos(w) / "alice"), "--out", str(w.root / "cases" / "gif_out2")],
        ("has no image of a type facetrain reads, only 1 other file (first: 'animated.gif'): convert",),
    ),
    "check_global_batch_over_the_set": Case(
        lambda w: ["check", "--config", str(w.config), "--world-size", "8"],
        ("the global batch of 64 (8 ranks x 8) is larger than the training set (24 images)",),
        "problem",
    ),
    "nproc_above_the_cores": Case(
        lambda w: [
            *["train", "--config", str(w.config), "--nproc-per-node", "1024", "--device", "cpu"],
            *["--set", f"run_dir={w.root / 'cases' / 'nproc_run'}"],
        ],
        ("--nproc-per-node 1024 is more processes than the", "use --nproc-per-node"),
    ),
    "nproc_with_a_missing_config": Case(
        lambda w: ["train", "--config", str(w.root / "cases" / "missing.yaml"), "--nproc-per-node", "2"],
        ("missing.yaml", "not found"),
    ),
    "model_returns_nan": Case(
        lambda w: [
            "eval",
            "--model",
            str(nan_model(w)),
            "--input-size",
            "32",
            "--pairs",
            str(w.pairs),
            "--json",
            str(w.root / "cases" / "nan.json"),
        ],
        ("nan_model.pt returned NaN or infinite embeddings (first for image 1 of this evaluation)",),
    ),
}


class _NaNEmbedder(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :8] * float("nan")


def nan_model(w: World) -> Path:
    """Someone else's TorchScript embedder that returns NaN for every image."""
    path = w.root / "cases" / "nan_model.pt"
    if not path.exists():
        torch.jit.script(_NaNEmbedder()).save(str(path))
    return path


def gif_photos(w: World) -> Path:
    """A folder of photos holding only an animated GIF, a type facetrain does not read."""
    folder = w.root / "cases" / "gif_photos" / "alice"
    if not folder.exists():
        make_faces(folder.parent, identities=1, per_identity=2)  # 24 px: too small for a face, but images
        folder.mkdir(parents=True, exist_ok=True)
        frames = [Image.new("RGB", (40, 40), color) for color in ("red", "blue")]
        frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    return folder.parent


def evaluate_list(w: World, pairs: Path) -> list[str]:
    return ["eval", "--checkpoint", str(w.checkpoint), "--pairs", str(pairs), "--images", str(w.faces)]


def misfit_checkpoint(w: World) -> Path:
    """The run's last.pt with its first embedder weight of another shape, in a copy of its run folder."""
    import shutil

    run = w.root / "cases" / "misfit_run"
    if not run.exists():
        shutil.copytree(w.checkpoint.parent, run)
    state = {k: v for k, v in w.state.items() if k not in ("format_version", "facetrain_version")}
    embedder = dict(state["embedder"])
    embedder[next(iter(embedder))] = torch.zeros(3)
    config = {**state["config"], "run_dir": str(run)}
    return save_checkpoint({**state, "config": config, "embedder": embedder}, run / "last.pt")


def evaluate(w: World, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(w.checkpoint), "--pairs", str(w.pairs), *extra]


def threshold_from(w: World, name: str, text: str) -> list[str]:
    """export with --threshold-from a JSON file of the given text."""
    out = str(w.root / "cases" / "t.pt")
    return ["export", "--checkpoint", str(w.checkpoint), "--out", out, "--threshold-from", str(w.file(name, text))]


def embed(w: World, *extra: str) -> list[str]:
    return ["embed", "--model", str(w.model), "--images", str(w.faces), "--out", str(w.root / "e.npz"), *extra]


def nan_checkpoint(w: World) -> Path:
    embedder = dict(w.state["embedder"])
    first = next(iter(embedder))
    embedder[first] = torch.full_like(embedder[first], float("nan"))
    return w.tampered("nan.pt", embedder=embedder)


def moved_checkpoint(w: World) -> Path:
    moved = w.root / "cases" / "moved" / "last.pt"
    moved.parent.mkdir(parents=True, exist_ok=True)
    moved.write_bytes(w.checkpoint.read_bytes())
    return moved


def resume(w: World, checkpoint: Path) -> list[str]:
    return ["train", "--resume", str(checkpoint), "--set", f"run_dir={w.root / 'cases' / ('run_' + checkpoint.stem)}"]


def images(w: World) -> list[str]:
    return [str(w.faces / "id00" / "img00.png"), str(w.faces / "id00" / "img01.png")]


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def torch_save_evil(w: World) -> Path:
    path = w.root / "cases" / "evil.pt"
    torch.save({"config": _Evil(str(w.root / "cases" / "pwned"))}, path)
    return path


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(world, name):
    case = CASES[name]
    argv = [arg.replace("{config}", str(world.config)) for arg in case.argv(world)]
    if argv[0] == "train":
        argv.append("--no-progress")
    result = runner.invoke(app, argv)
    assert_one_message(result, case)


def assert_one_message(result, case: Case) -> None:
    output = result.stdout + result.stderr
    assert result.exit_code == case.code, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    if case.kind == "error":
        assert len(errors) == 1, result.stderr
        message = result.stderr[result.stderr.index("error:") :]
    elif case.kind == "problem":
        assert not errors and "problem: " in result.stderr, output
        message = result.stderr
    elif case.kind == "usage":
        assert not errors and "Invalid value" in output, output
        message = output
    else:
        assert not errors, output
        message = output
    for needle in case.needles:
        assert needle in message, message
    assert "weights_only" not in output and "corrupted" not in output and "enforce fail" not in output


def test_a_rank_left_in_the_environment_is_one_line(world, tmp_path):
    """RANK and WORLD_SIZE from another job, without torchrun's rendezvous address: not a launch."""
    argv = ["train", "--config", str(world.config), "--set", f"run_dir={tmp_path / 'run'}", "--no-progress"]
    for extra in ([], ["--nproc-per-node", "4"]):
        result = runner.invoke(app, argv + extra, env={"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": ""})
        assert_one_message(result, Case(lambda w: [], ("RANK=0 and WORLD_SIZE=2 are set, but MASTER_ADDR", "unset")))
        assert "is ignored" not in result.stderr and not (tmp_path / "run").exists()


def test_json_reports_write_what_is_not_finite_as_null():
    from facetrain.evaluation.report import json_text

    assert json.loads(json_text({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 0.5}})) == {
        "a": None,
        "b": [1.0, None],
        "c": {"d": 0.5},
    }


def test_the_battery_is_forty_cases_or_more():
    assert len(CASES) + len(FAULTS) >= 40


# ---------------------------------------------------------------------------------------- alone


def test_no_yaml_tag_or_checkpoint_runs_code(world, tmp_path):
    marker = tmp_path / "pwned"
    config = world.file("evil.yaml", EVIL_YAML.format(marker=marker))
    result = runner.invoke(app, ["check", "--config", str(config)])
    assert_one_message(result, Case(lambda w: [], ("could not determine a constructor",)))
    assert not marker.exists()
    evil = tmp_path / "evil.pt"
    torch.save({"config": _Evil(str(marker))}, evil)
    result = runner.invoke(app, ["eval", "--checkpoint", str(evil)])
    assert_one_message(result, Case(lambda w: [], ("holds Python objects (",)))
    assert not marker.exists()


def test_alias_bomb_is_refused_in_bounded_memory(world):
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="anchors and aliases"):
            load_config(world.file("bomb2.yaml", ALIAS_BOMB))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # expanded, the value would be 9**9 = 387M list items


@pytest.mark.parametrize("command", ["export", "embed", "pairs", "eval --json", "outliers"])
def test_a_read_only_output_folder_is_one_line_for_every_writer(world, tmp_path, monkeypatch, command):
    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access
    # Root writes anywhere, so the refusal a read-only mount or chmod gives is emulated for this folder.
    monkeypatch.setattr(files.os, "access", lambda path, mode: Path(path) != read_only and real_access(path, mode))
    out = str(read_only / "out.file")
    argv = {
        "export": ["export", "--checkpoint", str(world.checkpoint), "--out", out],
        "embed": ["embed", "--model", str(world.model), "--images", str(world.faces), "--out", out],
        "pairs": ["pairs", "--root", str(REPO / "facetrain" / "assets" / "orl"), "--out", out],
        "eval --json": ["eval", "--checkpoint", str(world.checkpoint), "--pairs", str(world.pairs), "--json", out],
        "outliers": ["outliers", "--checkpoint", str(world.checkpoint), "--out", out],
    }[command]
    flag = "--json" if command == "eval --json" else "--out"
    result = runner.invoke(app, argv)
    assert_one_message(result, Case(lambda w: [], (f"{flag}: cannot write into '{read_only}' (permission denied)",)))


def test_find_outliers_refuses_a_nan_angle(world):
    from facetrain.diagnostics import find_outliers

    with pytest.raises(ConfigError, match=r"--angle: must be a number of degrees in \[0, 180\], got nan"):
        find_outliers(world.checkpoint, torch.device("cpu"), float("nan"))


# ---------------------------------------------------------------------------------------- faults


class Faulty:
    """Replaces the temp-file stream: the first ``good`` streams work, then every write raises ``fault``."""

    def __init__(self, fault: BaseException, good: int) -> None:
        self.fault, self.good = fault, good

    def __call__(self, handle: int) -> io.FileIO:
        self.good -= 1
        stream = io.FileIO(handle, "wb")
        if self.good < 0:
            stream.write = self.raise_fault  # torch.save writes through it, inside its C++ zip writer
        return stream

    def raise_fault(self, data: bytes) -> int:
        raise self.fault


def run_faulty_training(world: World, tmp_path: Path, monkeypatch, fault: BaseException):
    config = tmp_path / "c.yaml"
    config.write_text(config_text(tmp_path, world.faces, tmp_path / "run"))
    # config.yaml, then last.pt after step 1 are written; the save after step 2 hits the fault.
    monkeypatch.setattr(files, "open_temp_stream", Faulty(fault, good=2))
    args = ["train", "--config", str(config), "--no-progress", "--set", "train.checkpoint_every_steps=1"]
    return runner.invoke(app, [*args, "--set", "data.val_identities=0"]), tmp_path / "run" / "last.pt"


def test_ctrl_c_during_a_checkpoint_write(world, tmp_path, monkeypatch):
    result, last = run_faulty_training(world, tmp_path, monkeypatch, KeyboardInterrupt())
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.stderr and "Traceback" not in result.output
    assert load_checkpoint(last)["step"] == 1
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_full_disk_during_a_checkpoint_write(world, tmp_path, monkeypatch):
    import errno

    result, last = run_faulty_training(world, tmp_path, monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    assert_one_message(result, Case(lambda w: [], ("run_dir: cannot write", "the disk is full",
                                                   f"the last good checkpoint is {last}")))  # fmt: skip
    assert load_checkpoint(last)["step"] == 1


def test_overwrite_leaves_nothing_of_the_old_run(world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt", "config.yaml"):
        (run / name).write_bytes((world.checkpoint.parent / name).read_bytes())
    (run / "outliers.tsv").write_text("old\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1.old").write_bytes(b"old")
    (run / "model.pt").write_bytes(b"a user's own file")
    config = tmp_path / "c.yaml"
    config.write_text(config_text(tmp_path, world.faces, run))
    args = ["train", "--config", str(config), "--overwrite", "--no-progress", "--set", "data.val_identities=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "best checkpoint" not in result.stdout
    assert not (run / "best.pt").exists() and not (run / "outliers.tsv").exists()
    assert not (run / "tensorboard" / "events.out.tfevents.1.old").exists()
    assert "set the previous run's last.pt, best.pt, config.yaml, outliers.tsv, tensorboard/" in result.stderr
    assert not (run / ".previous").exists()  # deleted once the new run wrote its first last.pt
    assert "also holds model.pt" in result.stderr and (run / "model.pt").exists()


def test_overwrite_destroys_nothing_when_the_new_run_dies_before_its_first_checkpoint(world, tmp_path, monkeypatch):
    import errno

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(world.checkpoint.read_bytes())
    config = tmp_path / "c.yaml"
    config.write_text(config_text(tmp_path, world.faces, run))
    monkeypatch.setattr(files, "open_temp_stream", Faulty(OSError(errno.ENOSPC, "No space left on device"), good=1))
    args = ["train", "--config", str(config), "--overwrite", "--no-progress", "--set", "data.val_identities=0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "the disk is full" in result.stderr, result.output
    assert load_checkpoint(run / ".previous" / "last.pt")["step"] == world.state["step"]


def test_overwrite_never_removes_the_checkpoint_it_resumes_from(world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt"):
        (run / name).write_bytes((world.checkpoint.parent / name).read_bytes())
    args = ["train", "--resume", str(run / "best.pt"), "--overwrite", "--no-progress", "--set", f"run_dir={run}"]
    result = runner.invoke(app, [*args, "--set", "train.epochs=2"])
    assert result.exit_code == 0, result.output
    removed = next(line for line in result.stderr.splitlines() if "set the previous run's" in line)
    assert "last.pt" in removed and "best.pt" not in removed  # resumed from it: kept (or improved on)
    assert (run / "best.pt").is_file()


def test_stale_temp_files_are_swept_on_resume(world, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    last = run / "last.pt"
    last.write_bytes(world.checkpoint.read_bytes())
    stale = run / ".last.pt.k3j_x9q2.tmp"
    stale.write_bytes(b"\0" * 2_000_000)
    result = runner.invoke(app, ["train", "--resume", str(last), "--no-progress", "--set", "train.epochs=2",
                                 "--set", f"run_dir={run}"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert "removed 1 temporary file(s) (2.0 MB) left by an interrupted write" in result.stderr


# ---------------------------------------------------------------------------------------- real processes


def facetrain(*args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "FACETRAIN_DEBUG": "0"}
    return subprocess.Popen([sys.executable, "-m", "facetrain", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)  # fmt: skip


@pytest.mark.alone  # a real signal, timed against a running process
@pytest.mark.parametrize(
    ("sig", "code", "word", "workers"),
    [
        (signal.SIGINT, 130, "interrupted", 0),
        (signal.SIGTERM, 143, "terminated", 0),
        (signal.SIGTERM, 143, "terminated", 2),
    ],
    ids=["SIGINT", "SIGTERM", "SIGTERM-to-the-group-with-workers"],
)
def test_a_real_signal_mid_training(world, tmp_path, sig, code, word, workers):
    config = tmp_path / "c.yaml"
    config.write_text(config_text(tmp_path, world.faces, tmp_path / "run"))
    last = tmp_path / "run" / "last.pt"
    # Ctrl-C's default action in the child, even when these tests were started in the background
    # (a shell's background job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt).
    proc = facetrain("train", "--config", str(config), "--no-progress", "--set", "train.epochs=200",
                     "--set", "train.checkpoint_every_steps=1", "--set", "data.val_identities=0",
                     "--set", f"data.num_workers={workers}", start_new_session=True,
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # into the next steps: the signal may land mid-write, which is the point
    if workers:  # as Slurm's scancel or systemd does: the whole process group, DataLoader workers too
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert word in stderr and "Traceback" not in stderr
    assert load_checkpoint(last)["step"] >= 1
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_warnings_of_torch_and_pillow_never_reach_the_user(world):
    pickle = world.file("plain.pkl", b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.")
    proc = facetrain("eval", "--checkpoint", str(pickle))
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "a Python pickle that is not a torch.save file" in stderr
    assert "Detected pickle protocol" not in stderr and "Warning" not in stderr
    folder = bomb_png(world)
    proc = facetrain("check", "--config", str(world.config), "--set", f"data.root={folder}")
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "over the 64 Mpx limit" in stderr
    assert "DecompressionBomb" not in stderr and "Warning" not in stderr


# Cases that are not rows of CASES (faults, signals, writers), counted towards the battery's size.
FAULTS = [
    test_ctrl_c_during_a_checkpoint_write,
    test_full_disk_during_a_checkpoint_write,
    test_overwrite_leaves_nothing_of_the_old_run,
    test_stale_temp_files_are_swept_on_resume,
    test_overwrite_never_removes_the_checkpoint_it_resumes_from,
    test_overwrite_destroys_nothing_when_the_new_run_dies_before_its_first_checkpoint,
    test_no_yaml_tag_or_checkpoint_runs_code,
    test_alias_bomb_is_refused_in_bounded_memory,
    test_a_read_only_output_folder_is_one_line_for_every_writer,
    test_find_outliers_refuses_a_nan_angle,
    "test_a_real_signal_mid_training[SIGINT]",
    "test_a_real_signal_mid_training[SIGTERM]",
    test_warnings_of_torch_and_pillow_never_reach_the_user,
]


def packed(w: World) -> Path:
    """``w.faces`` packed once into cases/packed/train.rec (with its .idx and property)."""
    from facetrain.data import pack_folder

    rec = w.root / "cases" / "packed" / "train.rec"
    if not rec.exists():
        pack_folder(w.faces, rec, workers=0, progress=False)
    return rec


def imageless_rec(w: World) -> Path:
    """An insightface .rec of one identity whose two image records hold text, not images."""
    from facetrain.data.recordio import RecordWriter, pack_payload

    rec = w.root / "cases" / "imageless" / "train.rec"
    rec.parent.mkdir(parents=True, exist_ok=True)
    with open(rec, "wb") as data, open(rec.with_suffix(".idx"), "w", encoding="ascii") as index:
        writer = RecordWriter(data, index)
        for key in (1, 2):
            writer.write(key, pack_payload(0.0, b"not an image", id=key))
        writer.write(3, pack_payload([1, 3], b""))  # identity 0: image keys [1, 3)
        writer.write(0, pack_payload([3, 4], b""))  # header: identity records [3, 4)
    (rec.parent / "property").write_text("1,20,20\n")
    return rec
