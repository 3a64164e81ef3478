"""Model files: Model.load on forged, corrupt and special files (issues 5 and 19). Every bad
file is a ValueError naming it (or FileNotFoundError), promptly, without unpickling anything
or allocating what the file asks for; through the CLI, one line.

Special files (issue 19): a device (a symlink to /dev/zero reads without end), a FIFO (whose
open waits for a writer), a regular file larger than the machine's memory, an archive that
would unpack to more: each refused before it is read. Those that could hang or exhaust memory
if the check were missing run in a child process with a time limit (and a memory cap, unless
the sanitizers are preloaded: ASan reserves terabytes of address space).

CI's sanitizer stage runs this file.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import saving
from mnistnet.cli import main
from mnistnet.plan import physical_memory

MIB = 1 << 20
CHILD_TIMEOUT = 60  # seconds: a refusal takes well under one
CHILD_MEMORY = 4 << 30  # bytes of address space for a child (without the sanitizers)


def _valid_arrays() -> dict[str, np.ndarray]:
    """The arrays Model.save writes for a tiny 3 -> Dense(2) model."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "valid.npz"
        mn.Model([mn.Dense(2)], input_dim=3, seed=0).save(path)
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}


VALID = _valid_arrays()
CONFIG = json.loads(str(VALID["config"][()]))


def _config(**changes) -> np.ndarray:
    return np.array(json.dumps({**CONFIG, **changes}))


def _zip_with_raw_member(key: str, content: bytes) -> bytes:
    """An .npz whose member `key` holds `content` instead of an .npy array."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, array in VALID.items():
            member = io.BytesIO()
            np.save(member, array)
            archive.writestr(f"{name}.npy", content if name == key else member.getvalue())
    return buf.getvalue()


class PickleBomb:
    """Unpickling this creates the file `marker`: proof that pickle code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _arrays(**changes) -> dict[str, np.ndarray]:
    return {**VALID, **changes}


# name -> (what to write: a dict of arrays or raw bytes, a fragment of the message)
BAD_MODEL_FILES = {
    "version-999": (_arrays(format_version=np.array(999)),
                    "format version 999 is not supported"),
    "version-0": (_arrays(format_version=np.array(0)), "format version 0 is not supported"),
    "version-float": (_arrays(format_version=np.array(1.0)), "bad format_version"),
    "version-text": (_arrays(format_version=np.array("1")), "bad format_version"),
    "version-array": (_arrays(format_version=np.array([1, 1])), "bad format_version"),
    "config-not-json": (_arrays(config=np.array("{not json")), "bad architecture"),
    "config-a-list": (_arrays(config=np.array("[1, 2]")), "bad architecture"),
    "config-null": (_arrays(config=np.array("null")), "bad architecture"),
    "config-number": (_arrays(config=np.array(7)), "bad architecture"),
    "config-no-layers": (_arrays(config=np.array(json.dumps({"input_dim": 3}))),
                         "bad architecture"),
    "config-unknown-activation": (_arrays(config=_config(
        layers=[{"units": 2, "activation": "swish"}])), "unknown activation 'swish'"),
    "config-zero-units": (_arrays(config=_config(layers=[{"units": 0, "activation": "relu"}])),
                          "units must be >= 1"),
    "config-unknown-loss": (_arrays(config=_config(loss="hinge")), "unknown loss 'hinge'"),
    "config-nan-lr": (_arrays(config=_config(optimizer={"learning_rate": math.nan})),
                      "learning_rate"),
    "config-extra-key": (_arrays(config=_config(layers=[{"units": 2, "activation": "linear",
                                                         "bias": False}])),
                         "bad architecture"),
    "config-deeply-nested": (_arrays(config=np.array("[" * 100_000 + "]" * 100_000)),
                             "bad architecture"),
    "config-width-beyond-int32": (_arrays(config=_config(
        input_dim=10**12, layers=[{"units": 10**12, "activation": "linear"}])),
        "bad architecture|weights"),
    "params-float64": (_arrays(params=VALID["params"].astype(np.float64)),
                       "weights have dtype float64"),
    "params-float16": (_arrays(params=VALID["params"].astype(np.float16)),
                       "weights have dtype float16"),
    "params-int": (_arrays(params=VALID["params"].astype(np.int32)), "weights have dtype int32"),
    "params-short": (_arrays(params=VALID["params"][:-1]), r"shape \(7,\); the architecture "
                                                           r"needs float32 \(8,\)"),
    "params-long": (_arrays(params=np.append(VALID["params"], np.float32(0))), r"shape \(9,\)"),
    "params-2-D": (_arrays(params=VALID["params"].reshape(2, 4)), r"shape \(2, 4\)"),
    "params-scalar": (_arrays(params=np.float32(1)), r"shape \(\)"),
    "params-nan": (_arrays(params=np.full(8, np.nan, np.float32)), "weights contain NaN or Inf"),
    "params-inf": (_arrays(params=np.where(np.arange(8) == 5, np.float32(np.inf),
                                           VALID["params"])), "weights contain NaN or Inf"),
    "params-not-npy": (_zip_with_raw_member("params", b"\x80\x04K\x01."), "params"),
    "config-not-npy": (_zip_with_raw_member("config", b"garbage"), "config|architecture"),
    "version-not-npy": (_zip_with_raw_member("format_version", b""), "format_version"),
}


def _write_model_file(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        np.savez(path, **content)
    return path


@pytest.mark.parametrize("case", BAD_MODEL_FILES)
def test_bad_model_file_is_a_value_error_naming_it(case, tmp_path):
    content, message = BAD_MODEL_FILES[case]
    path = _write_model_file(tmp_path / f"{case}.npz", content)
    with pytest.raises(ValueError, match=message) as raised:
        mn.Model.load(path)
    assert str(raised.value).startswith(f"{path}: ")


def test_model_file_with_a_huge_architecture_allocates_nothing_large(tmp_path):
    """A 2 KB file whose config declares 784 -> 8192 -> 784 (12.8 M weights) must be refused
    from the params array's size alone: today load first builds that model (51 MB of
    weights, 51 MB of gradients, float64 Glorot temporaries: a 180 MB peak), then compares
    shapes."""
    config = _config(input_dim=784, layers=[{"units": 8192, "activation": "relu"},
                                            {"units": 784, "activation": "linear"}])
    path = _write_model_file(tmp_path / "huge.npz", _arrays(config=config))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: "):
            mn.Model.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"loading a {path.stat().st_size}-byte file peaked at {peak} bytes"


@pytest.mark.parametrize("member", ["params", "config", "format_version", "extra"])
def test_object_arrays_are_never_unpickled(member, tmp_path):
    marker = tmp_path / "pickle-code-ran"
    bomb = np.array([PickleBomb(marker)], dtype=object)
    pickle.loads(pickle.dumps(bomb))  # the bomb does work when unpickled ...
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "bomb.npz"
    np.savez(path, **_arrays(**{member: bomb}))
    name = re.escape(str(path))
    with pytest.raises(ValueError, match=f"^{name}: not a mnistnet model file .*Python objects"):
        mn.Model.load(path)
    assert not marker.exists()  # ... and the loader never unpickled it


@pytest.mark.parametrize("kind", ["pickle", "npy-of-objects"])
def test_pickles_that_are_not_archives_are_never_unpickled(kind, tmp_path):
    """np.load on a plain pickle (or an object .npy) would run it with allow_pickle=True."""
    marker = tmp_path / "pickle-code-ran"
    path = tmp_path / "model.npz"
    if kind == "pickle":
        path.write_bytes(pickle.dumps(PickleBomb(marker)))
    else:
        with open(path, "wb") as stream:
            np.save(stream, np.array([PickleBomb(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: not a mnistnet model file"):
        mn.Model.load(path)
    assert not marker.exists()


def test_empty_archive(tmp_path):
    path = tmp_path / "empty.npz"
    with zipfile.ZipFile(path, "w"):
        pass
    with pytest.raises(ValueError, match="missing config, format_version, params"):
        mn.Model.load(path)


def _good_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.npz"
    mn.Model([mn.Dense(2)], input_dim=3, seed=0).save(path)
    return path.read_bytes()


@pytest.mark.parametrize("cut", [0, 1, 4, 30, 100, -100, -22, -1],
                         ids=lambda c: f"cut{c}")
def test_truncated_or_empty_model_file(cut, tmp_path):
    good = _good_bytes(tmp_path)
    path = tmp_path / "cut.npz"
    path.write_bytes(good[:cut])
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: not a mnistnet model file"):
        mn.Model.load(path)


def test_model_file_that_is_a_directory(tmp_path):
    path = tmp_path / "folder.npz"
    path.mkdir()
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: not a mnistnet model file"):
        mn.Model.load(path)


def test_missing_model_file_is_file_not_found_naming_it(tmp_path):
    path = tmp_path / "absent.npz"
    with pytest.raises(FileNotFoundError, match=f"^{re.escape(str(path))}: no such model file"):
        mn.Model.load(path)


@pytest.mark.parametrize("case", BAD_MODEL_FILES)
def test_bad_model_file_through_the_cli_is_one_line(case, tmp_path, capsys):
    content, _ = BAD_MODEL_FILES[case]
    path = _write_model_file(tmp_path / f"{case}.npz", content)
    image = tmp_path / "image.npy"
    np.save(image, np.zeros(3, np.float32))
    code = main(["predict", str(path), str(image)])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnistnet: error: "), err
    assert str(path) in lines[0]




# =========================================================================== special files

def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))


def _in_child(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """argv run by this Python in a child process, with a time limit and (without the
    sanitizers) a memory cap; a child still running at the limit fails the test."""
    sanitized = "libasan" in os.environ.get("LD_PRELOAD", "")
    try:
        return subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT, check=False,
                              preexec_fn=None if sanitized else _cap_memory)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{argv} still ran after {CHILD_TIMEOUT} s")


LOAD = """
import sys
import mnistnet as mn
try:
    mn.Model.load(sys.argv[1])
except ValueError as exc:
    print(exc)
    sys.exit(3)
"""


def _special_file(kind: str, folder: Path) -> Path:
    path = folder / f"{kind}.npz"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(f"/dev/{kind}")
    return path


SPECIAL = {"zero": "a character device", "urandom": "a character device",
           "fifo": "a FIFO or pipe"}


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"),
                    reason="POSIX devices and FIFOs")
@pytest.mark.parametrize("kind", SPECIAL)
def test_a_device_or_fifo_is_refused_promptly(kind, tmp_path):
    """A symlink to /dev/zero was read until memory ran out (then a MemoryError without a
    message); a FIFO without a writer made load wait forever."""
    path = _special_file(kind, tmp_path)
    start = time.monotonic()
    result = _in_child("-c", LOAD, str(path), cwd=tmp_path)
    assert result.returncode == 3, (result.returncode, result.stdout, result.stderr)
    assert result.stdout.strip() == (f"{path}: not a mnistnet model file (it is "
                                     f"{SPECIAL[kind]}, not a regular file)")
    assert time.monotonic() - start < CHILD_TIMEOUT / 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="POSIX FIFOs")
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "demo"])
def test_a_fifo_named_as_a_model_is_one_line_through_the_cli(command, tmp_path):
    """The CLI read a model file's first bytes itself, and its open() of a FIFO waited for a
    writer that never came."""
    path = _special_file("fifo", tmp_path)
    extra = {"predict": ["image.npy"], "evaluate": ["--data", str(tmp_path)],
             "export": ["--onnx", "m.onnx"], "demo": ["--port", "0"]}[command]
    result = _in_child("-m", "mnistnet", command, str(path), *extra, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr == (f"mnistnet: error: {path}: not a mnistnet model file (it is a "
                             "FIFO or pipe, not a regular file)\n")


def _sparse_model_file(path: Path, hole: int) -> Path:
    """A valid model file with a hole of `hole` bytes between its first member and the
    others: a sparse file that takes no room on disk, and loads (zip readers skip the
    space between members)."""
    members = [(name, array) for name, array in VALID.items()]
    with open(path, "wb") as stream, zipfile.ZipFile(stream, "w") as archive:
        for i, (name, array) in enumerate(members):
            member = io.BytesIO()
            np.save(member, array)
            archive.writestr(f"{name}.npy", member.getvalue())
            if i == 0:  # the next member goes after the hole
                archive.start_dir = stream.seek(hole, os.SEEK_CUR)
    return path


def test_a_model_file_larger_than_the_machines_memory_is_refused_unread(tmp_path):
    """Larger than memory, a model file could not be loaded whatever it holds: refused from
    its size, before any read (it used to load, reading its members and skipping the rest)."""
    hole = max(1 << 40, 2 * physical_memory())
    try:
        path = _sparse_model_file(tmp_path / "huge.npz", hole)
    except OSError as exc:  # a file system without sparse files this large
        pytest.skip(f"cannot make a {hole}-byte sparse file: {exc}")
    size = path.stat().st_size
    assert mn.Model.load(_sparse_model_file(tmp_path / "small.npz", 1 << 20))  # loads
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as raised:
            mn.Model.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(raised.value) == (f"{path}: not a mnistnet model file ({size:,} bytes, more "
                                 f"than this machine's memory, {physical_memory():,} bytes)")
    assert peak < MIB


def test_an_archive_that_would_unpack_beyond_the_limit_is_refused_unread(tmp_path,
                                                                         monkeypatch):
    """A compressed archive may be small on disk and unpack to terabytes: its members'
    declared sizes are checked against the limit, from the archive's directory alone."""
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, **VALID, extra=np.zeros(16 * MIB, np.uint8))
    assert path.stat().st_size < MIB
    mn.Model.load(path)  # extra members are ignored ...
    monkeypatch.setattr(saving, "max_model_bytes", lambda: 4 * MIB)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as raised:  # ... but not beyond the limit
            mn.Model.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert re.fullmatch(rf"{re.escape(str(path))}: not a mnistnet model file \(its arrays "
                        rf"would unpack to [\d,]+ bytes, more than this machine's memory, "
                        rf"4,194,304 bytes\)", str(raised.value))
    assert peak < MIB


# =========================================================================== callback state

def _with_state(state: object, **members: np.ndarray) -> dict[str, np.ndarray]:
    text = state if isinstance(state, str) else json.dumps(state)
    return _arrays(callback_state=np.array(text), **members)


GOOD_STOP = {"mode": "min", "wait": 1, "best": 0.5, "best_epoch": 2}
BAD_STATES = {
    "not JSON": (_with_state("{oops"), "bad callback_state"),
    "a list": (_with_state([1]), "not an object of objects"),
    "wait negative": (_with_state({"EarlyStopping:val_loss": {**GOOD_STOP, "wait": -1}}),
                      "callback state 'EarlyStopping:val_loss': wait is -1"),
    "wait a float": (_with_state({"EarlyStopping:val_loss": {**GOOD_STOP, "wait": 1.5}}),
                     "wait is 1.5"),
    "best infinite": (_with_state({"EarlyStopping:val_loss": {**GOOD_STOP, "best": 1e999}}),
                      "best is inf"),
    "mode unknown": (_with_state({"ReduceLROnPlateau:loss": {
        "mode": "up", "best": None, "wait": 0, "cooldown_counter": 0}}), "mode is 'up'"),
    "field missing": (_with_state({"ReduceLROnPlateau:loss": {"mode": "min", "best": None,
                                                              "wait": 0}}),
                      "expected \\['best', 'cooldown_counter', 'mode', 'wait'\\]"),
    "array missing": (_with_state({"EarlyStopping:val_loss": {
        **GOOD_STOP, "best_weights": {"array": "callback_array_0"}}}),
        "names no callback_array_<i> member"),
    "array short": (_with_state({"EarlyStopping:val_loss": {
        **GOOD_STOP, "best_weights": {"array": "callback_array_0"}}},
        callback_array_0=np.zeros(7, np.float32)), r"best_weights must be float32 \(8,\)"),
    "array nan": (_with_state({"EarlyStopping:val_loss": {
        **GOOD_STOP, "best_weights": {"array": "callback_array_0"}}},
        callback_array_0=np.full(8, np.nan, np.float32)), "best_weights contains NaN"),
}


@pytest.mark.parametrize("case", BAD_STATES)
def test_a_bad_callback_state_is_a_value_error_naming_the_file(case, tmp_path):
    content, message = BAD_STATES[case]
    path = _write_model_file(tmp_path / "m.npz", content)
    with pytest.raises(ValueError, match=message) as raised:
        mn.Model.load(path)
    assert str(raised.value).startswith(f"{path}: bad callback_state in the model file (")


def test_callback_state_round_trips_and_stays_in_format_2(tmp_path):
    """The state is optional members of format 2: older readers, which ignore members they
    do not know, read the file as before; this one ignores states of unknown callbacks."""
    model = mn.Model([mn.Dense(2)], input_dim=3, seed=0)
    best = np.arange(8, dtype=np.float32)
    model.callback_state = {"EarlyStopping:loss": {**GOOD_STOP, "best_weights": best},
                            "ReduceLROnPlateau:loss": {"mode": "max", "best": None, "wait": 2,
                                                       "cooldown_counter": 1}}
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as data:
        assert int(data["format_version"]) == 2
        assert {"callback_state", "callback_array_0"} <= set(data.files)
    loaded = mn.Model.load(tmp_path / "m.npz")
    assert loaded.callback_state.keys() == model.callback_state.keys()
    np.testing.assert_array_equal(loaded.callback_state["EarlyStopping:loss"]["best_weights"],
                                  best)
    assert loaded.callback_state["ReduceLROnPlateau:loss"] == model.callback_state[
        "ReduceLROnPlateau:loss"]
    unknown = _write_model_file(tmp_path / "unknown.npz", _with_state(
        {"Future:loss": {"anything": [1, 2]}}))
    assert mn.Model.load(unknown).callback_state == {}
