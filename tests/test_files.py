"""facetrain.files: what a user's file is, and atomic writes that fail in one line and keep the old file."""

from __future__ import annotations

import errno
import io
import os
import pickle

import pytest
import torch

from facetrain import files
from facetrain.checkpoint import load_checkpoint, read_tensors, save_checkpoint
from facetrain.errors import CheckpointError, DataError, OutputError


class FaultyStream(io.FileIO):
    """A temp-file stream that fails once ``limit`` bytes are written, as a full disk or a Ctrl-C would."""

    def __init__(self, handle: int, limit: int, fault: BaseException) -> None:
        super().__init__(handle, "wb")
        self.left, self.fault = limit, fault

    def write(self, data) -> int:
        self.left -= len(data)
        if self.left < 0:
            raise self.fault
        return super().write(data)


def inject(monkeypatch, fault: BaseException, limit: int = 1000) -> None:
    monkeypatch.setattr(files, "open_temp_stream", lambda handle: FaultyStream(handle, limit, fault))


def test_ctrl_c_inside_torch_save_stays_an_interrupt_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    target = save_checkpoint({"config": {}, "num_classes": 2, "embedder": {}, "head": {}, "step": 1}, tmp_path / "a.pt")
    inject(monkeypatch, KeyboardInterrupt())
    # torch's zip writer turns the interrupt into RuntimeError("[enforce fail at inline_container.cc ...]").
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"config": {}, "num_classes": 2, "embedder": {"w": torch.zeros(10_000)}, "head": {}}, target)
    assert load_checkpoint(target)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # the temp file is gone


def test_full_disk_is_one_line_that_names_the_folder_and_the_kept_file(tmp_path, monkeypatch):
    target = save_checkpoint({"config": {}, "num_classes": 2, "embedder": {}, "head": {}, "step": 1}, tmp_path / "a.pt")
    inject(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(OutputError) as caught:
        save_checkpoint({"config": {}, "num_classes": 2, "embedder": {"w": torch.zeros(10_000)}, "head": {}}, target)
    message = str(caught.value)
    assert "\n" not in message
    assert f"the disk is full (no space left in '{tmp_path}')" in message
    assert f"the previous '{target}' is intact" in message
    assert "enforce fail" not in message
    assert load_checkpoint(target)["step"] == 1


def test_other_failures_keep_their_type(tmp_path):
    def broken(stream):
        raise ValueError("a bug, not the user's disk")

    def ours(stream):
        try:
            raise OSError(2, "No such file or directory")
        except OSError:
            raise DataError("our own message") from None

    def bug_while_handling(stream):
        try:
            raise OSError(2, "No such file or directory")
        except OSError:
            raise ValueError("a bug raised while handling an OSError")  # noqa: B904

    with pytest.raises(ValueError, match="a bug"):
        files.write_stream(tmp_path / "x.bin", broken, "--out")
    with pytest.raises(DataError, match="our own message"):
        files.write_stream(tmp_path / "x.bin", ours, "--out")
    with pytest.raises(ValueError, match="while handling"):
        files.write_stream(tmp_path / "x.bin", bug_while_handling, "--out")
    assert list(tmp_path.iterdir()) == []


def test_a_refusal_at_temp_file_creation_is_one_line(tmp_path, monkeypatch):
    """The read-only case of the issue: os.access says yes (root), creating the temp file says no."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".x.bin.abcdefgh.tmp"))

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    with pytest.raises(
        OutputError, match=r"--out: cannot write '.*x.bin': read-only file system: .*nothing was written"
    ):
        files.write_text(tmp_path / "x.bin", "x", "--out")


@pytest.mark.parametrize("euid_root", [True, False])
def test_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch, euid_root):
    folder = tmp_path / "ro"
    folder.mkdir()
    if euid_root or os.geteuid() == 0:  # root writes anywhere: emulate the refusal the kernel gives others
        monkeypatch.setattr(files.os, "access", lambda path, mode: False)
    else:
        folder.chmod(0o555)
    with pytest.raises(OutputError, match=r"--out: cannot write into '.*ro' \((permission denied|read-only)"):
        files.write_text(folder / "a.txt", "x", "--out")
    with pytest.raises(OutputError, match="is a folder: give a file name"):
        files.output_path(tmp_path, "--out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot create the folder"):
        files.output_path(tmp_path / "file" / "a.txt", "--out")


def test_stale_temp_files_of_our_naming_are_removed_and_nothing_else(tmp_path):
    target = tmp_path / "last.pt"
    stale = [tmp_path / ".last.pt.ab_cd123.tmp", tmp_path / ".last.pt.zzzzzzzz.tmp"]
    kept = [tmp_path / ".last.pt.short.tmp", tmp_path / ".best.pt.abcdefgh.tmp", tmp_path / "last.pt.abcdefgh.tmp"]
    for path in stale + kept:
        path.write_bytes(b"x" * 10)
    assert files.remove_stale_temps(target) == (2, 20)
    assert all(path.exists() for path in kept) and not any(path.exists() for path in stale)
    stale[0].write_bytes(b"x")
    files.write_text(target, "new", "run_dir")  # every write sweeps its own target's leftovers
    assert not stale[0].exists() and target.read_text() == "new"


def test_describe_names_a_file_by_its_bytes(tmp_path):
    cases = {
        "a.txt": b"run_dir: x\n",
        "empty.pt": b"",
        "junk.bin": bytes(range(256)) * 4,
        "pic.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 20,
        "pic.jpg": b"\xff\xd8\xff\xe0" + b"\0" * 20,
        "cut.txt": "é".encode() * 2047 + b"\xc3",  # 4095 bytes of text, then half a character
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    torch.save({"w": torch.zeros(2)}, tmp_path / "state.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), tmp_path / "model.pt")
    described = {name: files.describe(tmp_path / name) for name in [*cases, "state.pt", "model.pt"]}
    assert described == {
        "a.txt": "a text file",
        "empty.pt": "an empty file",
        "junk.bin": "a binary file of unknown kind",
        "pic.png": "a PNG image",
        "pic.jpg": "a JPEG image",
        "cut.txt": "a text file",
        "state.pt": files.TORCH_ARCHIVE,
        "model.pt": files.TORCHSCRIPT,
    }
    assert files.describe(tmp_path) == "a folder"


def test_require_file_and_folder_say_what_the_path_is(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"\x00\x01")
    with pytest.raises(CheckpointError, match=r"'.*run' is a folder, not a file: did you mean '.*run/last.pt'\?"):
        files.require_file(tmp_path / "run", CheckpointError, "checkpoint", "fix", ("last.pt", "best.pt"))
    with pytest.raises(CheckpointError, match=r"not found: fix"):
        files.require_file(tmp_path / "nope", CheckpointError, "checkpoint", "fix")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(CheckpointError, match=r"not found \(a link to a missing file\)"):
        files.require_file(tmp_path / "link", CheckpointError, "checkpoint", "fix")
    with pytest.raises(DataError, match=r"data.root: '.*last.pt' is a binary file of unknown kind, not a folder: fix"):
        files.require_folder(tmp_path / "run" / "last.pt", DataError, "data.root", "fix")
    with pytest.raises(DataError, match=r"data.root: folder '.*nope' does not exist: fix"):
        files.require_folder(tmp_path / "nope", DataError, "data.root", "fix")


def test_a_legacy_torch_save_file_is_read_even_where_a_read_is_memory_mapped(tmp_path):
    """torch's pre-1.6 format cannot be memory-mapped (model.init_from and multi-rank resume map theirs): it
    is read whole instead, with the same weights-only safety, rather than refused as "a pickle"."""
    legacy = tmp_path / "legacy.pt"
    torch.save({"a": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    for mmap in (False, True):
        state = read_tensors(legacy, CheckpointError, "checkpoint", "fix", mmap=mmap)
        assert torch.equal(state["a"], torch.ones(2))
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"a": [1, 2]}))
    with pytest.raises(CheckpointError, match="it is a Python pickle that is not a torch.save file, or a damaged one"):
        read_tensors(plain, CheckpointError, "checkpoint", "fix", mmap=True)
