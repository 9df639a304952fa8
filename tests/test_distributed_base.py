"""The base of multi-process runs without a process group: splits, device choice, error reporting."""

from __future__ import annotations

import pytest
import torch

from facetrain import distributed
from facetrain.cli import boundary
from facetrain.cli.launch import process_count, without_option
from facetrain.errors import ConfigError, DataError

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in TORCHRUN:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("count", "parts"), [(10, 3), (2, 2), (7, 1), (5, 8), (1_000_003, 8)])
def test_split_covers_every_item_once_in_order(count, parts):
    ranges = [distributed.split(count, part, parts) for part in range(parts)]
    assert ranges[0][0] == 0 and ranges[-1][1] == count
    assert all(ranges[i][1] == ranges[i + 1][0] for i in range(parts - 1))
    sizes = [end - start for start, end in ranges]
    assert max(sizes) - min(sizes) <= 1


def test_one_process_needs_no_group(no_torchrun):
    assert not distributed.launched() and not distributed.active()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    tensor = torch.arange(3.0)
    assert distributed.all_reduce(tensor) is tensor and torch.equal(distributed.all_gather(tensor), tensor)
    assert distributed.gather_with_grad(tensor) is tensor and distributed.sum_across(tensor) is tensor
    assert torch.equal(distributed.gather_rows_to_main(tensor, [3]), tensor)
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    distributed.settle(None)
    with pytest.raises(DataError, match="bad"):
        distributed.settle(DataError("bad"))
    with distributed.process_group(torch.device("cpu"), 10):
        assert not distributed.active()


def test_more_processes_than_gpus_is_refused_on_every_rank(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="4 processes on this machine, which has 2 GPUs: .*--nproc-per-node 2"):
        distributed.device_for(torch.device("cuda"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert distributed.device_for(torch.device("cuda")) == torch.device("cuda", 1)
    assert distributed.device_for(torch.device("cpu")) == torch.device("cpu")


def _said(monkeypatch, capsys, rank: str, local: str, started: bool, shared: bool) -> str:
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local)
    monkeypatch.setattr(distributed, "_started", started)
    boundary._say("error: x", shared)
    return capsys.readouterr().err


def test_each_message_is_shown_once_per_run(monkeypatch, capsys):
    assert _said(monkeypatch, capsys, "0", "0", started=False, shared=False) == "error: x\n"
    assert _said(monkeypatch, capsys, "1", "1", started=False, shared=False) == ""  # same inputs, same error
    assert _said(monkeypatch, capsys, "2", "0", started=False, shared=False) == "error: x\n"  # another machine
    assert _said(monkeypatch, capsys, "1", "1", started=True, shared=True) == ""  # rank 0 says it
    assert _said(monkeypatch, capsys, "0", "0", started=True, shared=True) == "error: x\n"
    assert _said(monkeypatch, capsys, "1", "1", started=True, shared=False) == "rank 1: error: x\n"  # its own


def test_one_process_always_speaks(no_torchrun, capsys):
    boundary._say("error: x", shared=True)
    assert capsys.readouterr().err == "error: x\n"


def test_launch_helpers():
    assert without_option(["train", "--nproc-per-node", "2", "--config", "c.yaml"], "--nproc-per-node") == [
        "train", "--config", "c.yaml",
    ]  # fmt: skip
    assert without_option(["train", "--nproc-per-node=auto", "-c", "x"], "--nproc-per-node") == ["train", "-c", "x"]
    assert process_count("3") == 3
    assert process_count("auto") == max(torch.cuda.device_count(), 1)
    for bad in ("0", "two", "-1"):
        with pytest.raises(Exception, match="--nproc-per-node"):
            process_count(bad)
