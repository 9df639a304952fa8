"""Errors that need no model are answered before torch is imported.

The command line runs in a fresh interpreter, as a user runs it, and reports after each command its
exit code and whether ``torch`` has been imported. That is structural, not a timing: importing torch
is what costs a typo seconds, so these hold on any machine. The cases share interpreters: one runs
them in turn until a case imports torch, and a fresh one goes on from the next case.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ORL, make_faces

# Runs each command line of the JSON list in argv[1] in turn, as `facetrain ARGS...`; prints one JSON
# line per command (exit code, whether torch is imported, what it printed), and stops after the first
# command that imported torch, so it cannot hide the next one's import.
PROBE = """
import contextlib, io, json, sys
from facetrain.cli import main
for args in json.loads(sys.argv[1]):
    sys.argv = ["facetrain", *args]
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code
    print(json.dumps({"code": code, "torch": "torch" in sys.modules, "said": said.getvalue()}), flush=True)
    if "torch" in sys.modules:
        break
"""


def run_all(commands: list[list[str]], cwd: Path) -> list[tuple[int, bool, str]]:
    """(exit code, whether torch was imported by then, what it printed) for each command line."""
    outcomes: list[tuple[int, bool, str]] = []
    while len(outcomes) < len(commands):
        left = commands[len(outcomes) :]
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, json.dumps(left)], capture_output=True, text=True, cwd=cwd, timeout=300
        )
        lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, proc.stderr[-2000:]
        outcomes += [(line["code"], line["torch"], line["said"]) for line in lines]
    return outcomes


def run(*args: str | Path, cwd: Path) -> tuple[int, bool, str]:
    """One command line in a fresh interpreter."""
    return run_all([[str(arg) for arg in args]], cwd)[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with what the cases point at: a config, a checkpoint-shaped file, a TorchScript-less
    archive, a malformed pairs list, an empty folder, a text file and a YAML syntax error."""
    root = tmp_path_factory.mktemp("inputs")
    faces = make_faces(root / "faces", identities=4, per_identity=3, size=(16, 16))
    (root / "good.yaml").write_text(
        f"run_dir: {root / 'run'}\ndata: {{root: {faces}, image_size: 32}}\nmodel: {{backbone: resnet18}}\n"
    )
    (root / "broken.yaml").write_text("data: {root: [unclosed\n")
    torch.save({"not": "a checkpoint, but a torch.save archive"}, root / "archive.pt")
    (root / "notes.txt").write_text("not a model\n")
    (root / "bad_pairs.txt").write_text("only two\n")
    (root / "empty").mkdir()
    (root / "old").mkdir()
    (root / "old" / "train.rec").write_bytes(b"an earlier pack")
    return root


# The start of an insightface export, and of an import, of inputs' archive.pt, for the cases below.
TO_INSIGHTFACE = ["export", "--checkpoint", "{i}/archive.pt", "--out", "{i}/b.pth", "--format", "insightface"]
IMPORT = ["import", "--insightface", "{i}/archive.pt"]
# (arguments, a piece of the one error line). {i} is the inputs folder.
CASES = [
    # Bad options: typer's own usage errors, and the ones a command checks itself.
    (["train", "--no-such-option"], "No such option"),
    (["eval"], "give the model to score: --checkpoint RUN/best.pt or --model FILE"),
    (["eval", "--ijb", "{i}/nowhere", "--features", "{i}/notes.txt"], "{i}/nowhere"),
    (["pack", "--root", "{i}/faces", "--out", "{i}/old/train.rec"], "exists: give another path, or --overwrite"),
    (["pairs", "--root", "{i}/faces", "--out", "{i}/notes.txt"], "exists: give another path, or --overwrite"),
    (["eval", "--ijb", "{i}", "--features", "{i}/notes.txt", "--target", "IJBA"], "unknown IJB target 'IJBA'"),
    (["eval", "--ijb", "{i}", "--features", "{i}/notes.txt"], "{i}/meta"),
    (["eval", "--ijb", "{i}", "--features", "{i}/no.npy"], "--features '{i}/no.npy' not found"),
    (["eval", "--ijb", "{i}", "--features", "{i}/notes.txt", "--no-flip"], "always adds the mirror's features"),
    (["eval", "--ijb", "{i}", "--protocol", "1:1", "--features", "{i}/notes.txt"], "unknown protocol '1:1'"),
    (["eval", "--checkpoint", "{i}/archive.pt", "--suite", "{i}/empty"], "--suite"),
    (["eval", "--checkpoint", "{i}/archive.pt", "--features", "{i}/notes.txt"], "--features goes with --ijb"),
    (["train"], "give --config FILE, or --resume CHECKPOINT"),
    (["train", "--config", "{i}/good.yaml", "--outlier-angle", "30"], "--outlier-angle applies to --report-outliers"),
    (["train", "--config", "{i}/good.yaml", "--nproc-per-node", "two"], "--nproc-per-node: expected a number"),
    (["train", "--config", "{i}/good.yaml", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["eval", "--checkpoint", "{i}/archive.pt", "--format", "csv"], "--format: 'csv' is not a pairs format"),
    (["export", "--checkpoint", "{i}/archive.pt", "--out", "{i}/m.pt", "--format", "zip"], "--format: unknown format"),
    (["export", "--checkpoint", "{i}/archive.pt", "--out", "{i}/m.pt", "--threshold", "3"], "outside [-1, 1]"),
    ([*TO_INSIGHTFACE, "--threshold", "0.3"], "--threshold: --format insightface writes weights only"),
    ([*TO_INSIGHTFACE, "--parity-images", "{i}/faces"], "--parity-images applies to torchscript and onnx exports"),
    ([*IMPORT, "--arch", "r51", "--out", "{i}/x.pt"], "--arch: unknown architecture 'r51'"),
    ([*IMPORT, "--arch", "r50", "--out", "{i}/x.pt", "--embedding-dim", "1"], "--embedding-dim"),
    (["embed", "--images", "{i}/faces", "--out", "{i}/e.npz"], "give exactly one of --checkpoint or --model"),
    (["embed", "--images", "{i}/faces", "--out", "{i}/e.txt", "--checkpoint", "{i}/archive.pt"], "not a .npz file"),
    (["verify", "{i}/m.pt", "a.png", "b.png", "--align-size", "7"], "--align-size 7x7 has no ArcFace template"),
    (["align", "--input", "{i}/faces", "--out", "{i}/out", "--fallback", "blur"], "--fallback 'blur' is not one"),
    (["align", "--input", "{i}/faces", "--out", "{i}/out", "--size", "big"], "--size 'big' is not a size"),
    (["check", "--config", "{i}/good.yaml", "--num-classes", "4", "--world-size", "8"], "--world-size 8 is more"),
    (["train", "--config", "{i}/good.yaml", "--report-outliers"], "the outlier report reads the sub-centres"),
    # A missing or wrong-kind file or folder.
    (["train", "--config", "{i}/missing.yaml"], "config file '{i}/missing.yaml' not found"),
    (["train", "--config", "{i}/empty"], "is a directory: pass a YAML file"),
    (["train", "--config", "{i}/good.yaml", "--set", "data.root={i}/nowhere"], "data.root: folder '{i}/nowhere'"),
    (["train", "--config", "{i}/good.yaml", "--set", "data.val_root={i}/notes.txt"], "data.val_root: '{i}/notes.txt'"),
    (["train", "--config", "{i}/good.yaml", "--set", "run_dir={i}/notes.txt"], "run_dir: '{i}/notes.txt' is a file"),
    (["train", "--config", "{i}/good.yaml", "--set", "eval.sets=[{pairs: {i}/no.txt}]"], "pairs file '{i}/no.txt'"),
    (["train", "--resume", "{i}/notes.txt"], "it is a text file"),
    (["train", "--config", "{i}/good.yaml", "--set", "model.init_from={i}/no.pt"], "model.init_from: checkpoint"),
    (["train", "--config", "{i}/good.yaml", "--set", "model.init_from={i}/notes.txt"], "'{i}/notes.txt' cannot be"),
    (
        ["train", "--config", "{i}/good.yaml", "--set", "model.init_from={i}/archive.pt", "--resume", "{i}/archive.pt"],
        "give --resume alone",
    ),
    (["train", "--config", "{i}/good.yaml", "--set", "head.init=imprint"], "head.init: imprint"),
    (["eval", "--checkpoint", "{i}/missing.pt"], "checkpoint '{i}/missing.pt' not found"),
    (["eval", "--checkpoint", "{i}/notes.txt"], "it is a text file"),
    (["eval", "--checkpoint", "{i}/archive.pt", "--pairs", "{i}/no.txt"], "pairs file '{i}/no.txt' not found"),
    (["export", "--checkpoint", "{i}/missing.pt", "--out", "{i}/m.pt"], "checkpoint '{i}/missing.pt' not found"),
    (["export", "--checkpoint", "{i}/archive.pt", "--out", "{i}/empty"], "--out: '{i}/empty' is a folder"),
    (["import", "--insightface", "{i}/no.pth", "--arch", "r50", "--out", "{i}/x.pt"], "weights '{i}/no.pth' not found"),
    (["import", "--insightface", "{i}/notes.txt", "--arch", "mbf", "--out", "{i}/x.pt"], "it is a text file"),
    ([*IMPORT, "--arch", "r50", "--out", "{i}/archive.pt"], "--out: '{i}/archive.pt' is also an input"),
    ([*IMPORT, "--arch", "r50", "--out", "{i}/notes.txt"], "'{i}/notes.txt' exists: give another path, or --overwrite"),
    ([*IMPORT, "--arch", "r50", "--out", "{i}/empty"], "--out: '{i}/empty' is a folder"),
    (["verify", "{i}/missing.pt", "a.png", "b.png"], "model '{i}/missing.pt' not found"),
    (["verify", "{i}/archive.pt", "a.png", "b.png"], "not an exported model"),
    (["embed", "--images", "{i}/nowhere", "--out", "{i}/e.npz", "--checkpoint", "{i}/archive.pt"], "--images"),
    (["embed", "--images", "{i}/empty", "--out", "{i}/e.npz", "--checkpoint", "{i}/archive.pt"], "no images in"),
    (["outliers", "--checkpoint", "{i}/missing.pt"], "checkpoint '{i}/missing.pt' not found"),
    (["align", "--input", "{i}/nowhere", "--out", "{i}/out"], "--input: folder '{i}/nowhere' does not exist"),
    (["pairs", "--root", "{i}/nowhere", "--out", "{i}/p.txt"], "--root: folder '{i}/nowhere' does not exist"),
    (["pack", "--root", "{i}/nowhere", "--out", "{i}/x.rec"], "--root: folder '{i}/nowhere' does not exist"),
    (["unpack", "{i}/nowhere.rec", "--out", "{i}/unpacked"], "'{i}/nowhere.rec' not found"),
    # YAML and config errors, and --set typos.
    (["train", "--config", "{i}/broken.yaml"], "broken.yaml"),
    (["train", "--config", "{i}/good.yaml", "--set", "model.embeding_dim=3"], "did you mean 'model.embedding_dim'"),
    (["train", "--config", "{i}/good.yaml", "--nproc-per-node", "2", "--set", "train.epoch=3"], "train.epoch"),
    (["train", "--config", "{i}/good.yaml", "--set", "train.lr=-1"], "train.lr"),
    (["check", "--config", "{i}/good.yaml", "--set", "model.embeding_dim=3"], "did you mean 'model.embedding_dim'"),
    (["eval", "--checkpoint", "{i}/archive.pt", "--set", "eval.flp=1"], "did you mean 'eval.flip'"),
    (["train", "--resume", "{i}/archive.pt", "--set", "train.epoch=3"], "did you mean 'train.epochs'"),
    (["check", "--config", "{i}/good.yaml", "--set", "head.type=arcfcae"], "head.type"),
    (["eval", "--checkpoint", "{i}/archive.pt", "--config", "{i}/good.yaml", "--set", "eval.flp=1"], "eval.flp"),
    (["pairs", "--config", "{i}/broken.yaml", "--out", "{i}/p.txt"], "broken.yaml"),
    # An unreadable pairs file.
    (["eval", "--checkpoint", "{i}/archive.pt", "--pairs", "{i}/bad_pairs.txt"], "bad_pairs.txt:1"),
    (["eval", "--checkpoint", "{i}/archive.pt", "--pairs", "{i}/notes.txt", "--format", "lfw"], "notes.txt"),
]


@pytest.fixture(scope="module")
def outcomes(inputs) -> list[tuple[int, bool, str]]:
    return run_all([[arg.replace("{i}", str(inputs)) for arg in args] for args, _ in CASES], cwd=inputs)


@pytest.mark.parametrize("case", range(len(CASES)), ids=[" ".join(args)[:60] for args, _ in CASES])
def test_an_error_that_needs_no_model_is_answered_without_torch(inputs, outcomes, case):
    code, imported, said = outcomes[case]
    assert code == 2, said
    assert CASES[case][1].replace("{i}", str(inputs)) in said, said
    assert "Traceback" not in said, said
    assert not imported, f"torch was imported before this error: {said}"


def test_help_and_version_import_no_torch(inputs):
    for args in (["--help"], ["--version"], ["train", "--help"], ["version"]):
        code, imported, said = run(*args, cwd=inputs)
        assert code == 0 and not imported, (args, said)
    assert run("--version", cwd=inputs)[2].strip() == __import__("facetrain").__version__


def test_a_command_that_gets_past_its_checks_does_import_torch(inputs):
    """The probe can tell: a run that reaches the model imports torch (and fails on the fake checkpoint)."""
    code, imported, said = run("eval", "--checkpoint", inputs / "archive.pt", "--pairs", inputs / "empty", cwd=inputs)
    assert code == 2 and not imported, said  # a folder as the pairs file: still before torch
    pairs = inputs / "pairs.txt"
    pairs.write_text(f"{ORL}/s1/1.pgm {ORL}/s1/2.pgm 1\n{ORL}/s1/1.pgm {ORL}/s2/1.pgm 0\n")
    code, imported, said = run("eval", "--checkpoint", inputs / "archive.pt", "--pairs", pairs, cwd=inputs)
    assert code == 2 and imported, said
    assert "checkpoint" in said


def test_the_cases_cover_every_command():
    from facetrain.cli import app

    commands = {command.name or command.callback.__name__ for command in app.registered_commands}
    covered = {args[0] for args, _ in CASES}
    assert commands - {"version"} <= covered, sorted(commands - covered)
    assert "train" in commands and "align" in commands
