"""Multi-process runs as users start them: torchrun, and ``facetrain train --nproc-per-node``.

Each test starts real processes (2 gloo ranks on CPU), so they are few and small.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, write_tiny_yaml
from typer.testing import CliRunner

from facetrain.checkpoint import load_checkpoint
from facetrain.cli import app
from facetrain.errors import ConfigError

runner = CliRunner()
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def write_config(tmp_path: Path, extra: str = "") -> str:
    head = "{type: subcenter_arcface, s: 16.0, m: 0.2, k: 2}"
    train = "{epochs: 1, batch_size: 4, lr: 0.05, warmup_epochs: 0.5, log_every_steps: 1}"
    return str(write_tiny_yaml(tmp_path, head, train, extra=extra))


def facetrain(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "facetrain", *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout
    )


@pytest.mark.alone  # a launcher and its ranks
def test_torchrun_two_ranks_trains_once_and_every_command_reads_the_checkpoint(tmp_path):
    config = write_config(tmp_path)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*command, "-m", "facetrain", "train", "--config", config, "--report-outliers"],
        capture_output=True, text=True, cwd=REPO, env=ENV, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    for start in ("checkpoint: ", "held-out all-pairs accuracy", "outliers: /"):  # from the main rank alone
        assert sum(line.startswith(start) for line in lines) == 1, result.stdout
    assert "global batch 8 per optimizer step" in result.stderr
    assert result.stderr.count("verification before training") == 1
    assert "rank 1:" not in result.stderr  # the other rank logs warnings only, and there were none

    checkpoint = tmp_path / "run" / "last.pt"
    state = load_checkpoint(checkpoint)
    assert state["world_size"] == 2 and state["head"]["class_centers"].shape == (4 * 2, 16)
    exported, pairs = tmp_path / "model.pt", tmp_path / "pairs.txt"
    same = [f"id0{i}/img00.png id0{i}/img0{j}.png 1" for i in range(4) for j in (1, 2)]
    different = [f"id0{i}/img00.png id0{(i + 1) % 4}/img01.png 0" for i in range(4)] * 2
    pairs.write_text("\n".join(same + different) + "\n")
    for args in (
        [
            "eval",
            "--checkpoint",
            str(checkpoint),
            "--pairs",
            str(pairs),
            "--images",
            str(tmp_path / "faces"),
            "--folds",
            "2",
        ],
        ["export", "--checkpoint", str(checkpoint), "--out", str(exported)],
        ["embed", "--model", str(exported), "--images", str(tmp_path / "faces"), "--out", str(tmp_path / "e.npz")],
        ["outliers", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o.tsv")],
        ["check", "--config", config, "--world-size", "2"],
    ):
        outcome = runner.invoke(app, args)
        assert outcome.exit_code == 0, (args, outcome.output)


def test_config_error_under_nproc_per_node_is_one_line_and_exit_2(tmp_path):
    result = facetrain("train", "--nproc-per-node", "2", "--config", write_config(tmp_path), "--set", "train.epoch=3")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("error:") == 1 and "train.epoch: unknown key" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.alone  # a launcher and its ranks
def test_error_on_the_main_rank_alone_stops_every_rank_with_one_message(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"not ours")  # only rank 0 checks run_dir
    result = facetrain("train", "--nproc-per-node", "2", "--config", config)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("error:") == 1 and "already holds last.pt" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.alone  # a launcher and its ranks
def test_a_data_error_mid_epoch_on_one_rank_is_the_only_message(tmp_path):
    config = write_config(tmp_path)
    (tmp_path / "faces" / "id03" / "img05.png").write_bytes(b"not an image")  # read by one rank, mid-epoch
    result = facetrain("train", "--nproc-per-node", "2", "--config", config, "--set", "data.cache=none")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("error:") == 1, result.stderr[-2000:]
    assert "cannot read image" in result.stderr and "img05.png" in result.stderr
    assert "lost contact" not in result.stderr and "Traceback" not in result.stderr


def _start(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    config = write_config(tmp_path, "eval: {sets: []}\n")
    args = ["--set", "train.epochs=100", "--set", "train.checkpoint_every_steps=1", "--set", "head.type=arcface"]
    args += ["--set", "head.k=null", "--set", "train.dist_timeout=20"]
    process = subprocess.Popen(
        [sys.executable, "-m", "facetrain", "train", "--nproc-per-node", "2", "--config", config, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV, start_new_session=True,
    )  # fmt: skip
    checkpoint = tmp_path / "run" / "last.pt"
    deadline = time.monotonic() + 180
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert checkpoint.exists(), process.communicate(timeout=60)
    time.sleep(1.0)
    return process, checkpoint


def _workers(parent: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


@pytest.mark.alone  # a launcher and its ranks
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the workers through /proc")
def test_sigterm_on_the_launcher_stops_every_rank_and_keeps_the_checkpoint(tmp_path):
    process, checkpoint = _start(tmp_path)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr[-2000:]
    assert stderr.count("terminated") == 1 and "Traceback" not in stderr
    saved = load_checkpoint(checkpoint)
    assert saved["world_size"] == 2
    # Continue it on 3 processes (each reads its slice of the memory-mapped checkpoint) to the next epoch end.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m"]
    more = subprocess.run(  # plain torchrun: 3 processes may be more than this machine's cores
        [*command, "facetrain", "train", "--resume", str(checkpoint), "--set", f"train.epochs={saved['epoch'] + 1}"],
        capture_output=True, text=True, cwd=REPO, env=ENV, timeout=240,
    )  # fmt: skip
    assert more.returncode == 0, more.stderr[-2000:]
    assert "the checkpoint was written by 2 processes, this run has 3" in more.stderr
    final = load_checkpoint(checkpoint)
    assert (final["world_size"], final["epoch"], final["batch_in_epoch"]) == (3, saved["epoch"] + 1, 0)


@pytest.mark.alone  # a launcher and its ranks
@pytest.mark.skipif(not Path("/proc").exists(), reason="finds the workers through /proc")
def test_a_killed_rank_makes_the_others_exit(tmp_path):
    process, checkpoint = _start(tmp_path)
    workers = _workers(process.pid)
    assert len(workers) == 2, workers
    os.kill(max(workers), signal.SIGKILL)
    _, stderr = process.communicate(timeout=120)  # no hang: the agent and the collective's timeout end it
    assert process.returncode != 0
    assert "Traceback" not in stderr
    assert stderr.count("error:") <= 1
    assert re.search(r"rank [01] was killed \(SIGKILL\), and the launcher stopped the others", stderr)  # the cause
    assert f"--resume {tmp_path / 'run' / 'last.pt'} --nproc-per-node N" in stderr
    assert load_checkpoint(checkpoint)["world_size"] == 2


@pytest.mark.alone  # a launcher and its ranks
def test_a_setting_that_cannot_work_on_several_ranks_is_one_line(tmp_path):
    config = write_config(tmp_path)
    result = facetrain("train", "--nproc-per-node", "2", "--config", config, "--set", "model.sync_bn=true")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("error:") == 1
    assert "model.sync_bn: torch's SyncBatchNorm runs on CUDA only" in result.stderr
    assert "Traceback" not in result.stderr
    # More ranks than identities takes 3 processes: plain torchrun starts more than this machine's cores.
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", "-m"]
    result = subprocess.run(
        [*command, "facetrain", "train", "--config", config, "--set", "data.val_identities=4"],
        capture_output=True, text=True, cwd=REPO, env=ENV, timeout=240,
    )  # fmt: skip
    ours = [line for line in result.stderr.splitlines() if line.startswith(("error:", "rank "))]
    assert ours == ["error: 3 ranks but only 2 training identities: each rank holds a slice of the classifier, so "
                    "start at most as many processes as identities"], result.stderr[-2000:]  # fmt: skip


def test_nproc_per_node_above_the_cores_on_cpu_is_refused_before_any_worker_starts(tmp_path):
    from facetrain.cli.launch import check_cores, usable_cores

    with pytest.raises(ConfigError, match="--nproc-per-node 6 is more processes than the 2 CPU cores .*"
                       "use --nproc-per-node 2 or fewer"):  # fmt: skip
        check_cores(6, "cpu", cores=2)
    check_cores(2, "cpu", cores=2)
    check_cores(6, "cuda", cores=2)  # GPU ranks: one per GPU, checked by the ranks themselves
    too_many = str(usable_cores() + 1)
    result = facetrain("train", "--nproc-per-node", too_many, "--config", write_config(tmp_path), "--device", "cpu")
    assert result.returncode == 2
    assert f"--nproc-per-node {too_many} is more processes" in " ".join(result.stderr.split())
    assert not (tmp_path / "run").exists()  # no worker started


def test_nproc_per_node_mistakes_exit_2(tmp_path):
    config = write_config(tmp_path)
    for value, message in (("two", "expected a number of processes"), ("2", "works from the command line")):
        outcome = runner.invoke(app, ["train", "--config", config, "--nproc-per-node", value])  # not a command line
        assert outcome.exit_code == 2 and message in outcome.output, outcome.output


def test_check_plans_for_a_world_size_and_refuses_more_ranks_than_identities(tmp_path):
    config = write_config(tmp_path)
    outcome = runner.invoke(app, ["check", "--config", config, "--world-size", "2"])
    assert outcome.exit_code == 0, outcome.output
    assert "classifier over 2 ranks: 4 classes x 2 sub-centres x 16, 2 classes per rank" in outcome.output
    outcome = runner.invoke(app, ["check", "--config", config, "--world-size", "5"])
    assert outcome.exit_code == 2
    assert "--world-size 5 is more ranks than the 4 training identities" in outcome.output


def test_check_names_the_global_batch_when_the_ranks_make_it_too_large(tmp_path):
    config = write_config(tmp_path)
    outcome = runner.invoke(app, ["check", "--config", config, "--world-size", "4", "--set", "train.batch_size=8"])
    assert outcome.exit_code == 2
    assert (
        "the global batch of 32 (4 ranks x 8) is larger than the training set (24 images): "
        "lower train.batch_size or the number of ranks"
    ) in outcome.output


def test_nproc_per_node_under_torchrun_is_ignored_with_one_warning(monkeypatch, caplog):
    from facetrain.cli.launch import launch_if_asked

    monkeypatch.delenv("FACETRAIN_LAUNCHED", raising=False)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")  # what torchrun sets beside RANK
    monkeypatch.setenv("MASTER_PORT", "29500")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        launch_if_asked("4")  # returns: this process is a rank already
    warnings = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert warnings == ["--nproc-per-node 4 is ignored: torchrun started these 2 processes already"]
    caplog.clear()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("FACETRAIN_LAUNCHED", "1")  # a worker of facetrain's own launcher: nothing to say
    launch_if_asked("4")
    assert not caplog.records


def test_a_worker_killed_by_a_signal_is_named_with_the_way_to_resume():
    from facetrain.cli.launch import killed_message

    message = killed_message(1, 9, "runs/x/last.pt")
    assert message.startswith("rank 1 was killed (SIGKILL), and the launcher stopped the others")
    assert message.endswith("continue with facetrain train --resume runs/x/last.pt --nproc-per-node N")
    assert "(signal 99)" in killed_message(0, 99, None) and "--resume RUN_DIR/last.pt" in killed_message(0, 99, None)
