"""Sweeps on Dask (issue 21): the same table and weight bits on a LocalCluster as in one
process and as `mnistnet train`; a worker killed mid-sweep loses no run and duplicates none;
an interrupted sweep, rerun, trains only the runs missing; GridSearchCV on joblib's Dask
backend chooses as with n_jobs=1; one clear line for each bad input.

Every cluster listens on 127.0.0.1 only and is closed by its test; the data is a small
synthetic MNIST-like set written as IDX files, so nothing here needs the real dataset."""

from __future__ import annotations

import csv
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import cli
from mnistnet.sweep import SweepError, as_float_images, sweep, weights_digest

distributed = pytest.importorskip("distributed")
# Two clusters at once (the module's and a test's own): the second's bare HTTP server moves
# off port 8787, with a warning.
pytestmark = pytest.mark.filterwarnings("ignore:Port .* is already in use")

# Columns that say where and how fast a run went, not what it computed.
PLACE_COLUMNS = {"seconds", "worker", "threads"}


def _idx(array: np.ndarray) -> bytes:
    return (struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            + array.tobytes())


def _images(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Noisy 28x28 images whose label says where a bright square sits."""
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 140, (n, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels, strict=True):
        row, col = 2 + 8 * (label // 4) + rng.integers(-2, 3), 2 + 6 * (label % 4)
        image[max(row, 0):row + 6, col:col + 6] += 100
    return images, labels


def write_mnist(folder: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """The four MNIST files (raw IDX) of a synthetic set in folder."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _images(rng, n)
        (folder / f"{stem}-images-idx3-ubyte").write_bytes(_idx(images))
        (folder / f"{stem}-labels-idx1-ubyte").write_bytes(_idx(labels))
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return write_mnist(tmp_path_factory.mktemp("tiny"), 600, 200)


@pytest.fixture(scope="module")
def client():
    """A LocalCluster of 2 single-threaded process workers on 127.0.0.1, as sweep() makes."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  env={"MNISTNET_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as dask_client:
        yield dask_client


def read_table(path: Path, drop: set[str] = PLACE_COLUMNS) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(stream)]


GRID = {"lr": [0.01, 0.1], "batch-size": [32, 128], "seed": [0, 1]}


# ---- 1. the same table and weights on the cluster as in one process -----------------------

def test_cluster_sweep_gives_the_sequential_table_and_weight_bits(tiny, client, tmp_path):
    here = sweep(GRID, preset="cross-entropy", epochs=2, out=tmp_path / "here.csv", data=tiny,
                 scheduler="sequential", progress=False)
    there = sweep(GRID, preset="cross-entropy", epochs=2, out=tmp_path / "there.csv",
                  data=tiny, client=client, progress=False, json_out=tmp_path / "there.json")
    assert len(here.rows) == 8
    assert read_table(tmp_path / "there.csv") == read_table(tmp_path / "here.csv")
    rows = there.ordered()
    workers = set(client.scheduler_info()["workers"])
    assert {r["worker"] for r in rows} <= workers and all(r["threads"] == 1 for r in rows)
    assert sum(r["best"] for r in rows) == 1
    assert len({r["weights_sha256"] for r in rows}) == 8  # the settings matter
    assert (tmp_path / "there.json").read_text().count('"run_id"') == 8


def test_a_run_is_the_same_bits_as_the_same_settings_trained_alone(tiny, client, tmp_path):
    table = sweep({"lr": [0.03], "seed": [2]}, preset="cross-entropy", epochs=2,
                  out=tmp_path / "t.csv", data=tiny, client=client, progress=False,
                  save_best=tmp_path / "best.npz")
    (row,) = table.ordered()
    (x, y), (x_test, y_test) = mn.load_mnist(tiny)
    alone = mn.preset("cross-entropy", seed=2, learning_rate=0.03)
    alone.fit(x, y, epochs=2, batch_size=32, validation_data=(x_test, y_test), verbose=0)
    assert row["weights_sha256"] == weights_digest(alone)
    assert weights_digest(mn.Model.load(tmp_path / "best.npz")) == row["weights_sha256"]
    # ... and as `mnistnet train` with the same options
    saved = tmp_path / "train.npz"
    assert cli.main(["train", "--preset", "cross-entropy", "--lr", "0.03", "--seed", "2",
                     "--epochs", "2", "--data", str(tiny), "--quiet", "--save",
                     str(saved)]) == 0
    assert weights_digest(mn.Model.load(saved)) == row["weights_sha256"]


def test_a_scheduler_address_is_connected_to_and_used(tiny, client, tmp_path):
    address = client.scheduler.address
    assert address.startswith("tcp://127.0.0.1:")
    table = sweep({"seed": [0, 1]}, preset="perceptron", epochs=1, out=tmp_path / "t.csv",
                  data=tiny, scheduler=address, progress=False)
    workers = set(client.scheduler_info()["workers"])
    assert [r["worker"] in workers for r in table.ordered()] == [True, True]


def test_a_scheduler_without_workers_is_one_clear_error(tiny, tmp_path):
    with distributed.LocalCluster(n_workers=0, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        start = time.monotonic()
        with pytest.raises(SweepError, match=r"has no workers after 1 s; start some: dask "
                                             r"worker tcp://127\.0\.0\.1:"):
            sweep({"seed": [0]}, preset="perceptron", epochs=1, out=tmp_path / "t.csv",
                  data=tiny, scheduler=cluster.scheduler_address, timeout=1, progress=False)
        assert time.monotonic() - start < 15


def test_save_best_of_an_earlier_session_trains_it_again_to_the_same_bits(tiny, tmp_path):
    out = tmp_path / "t.csv"
    first = sweep({"lr": [0.01, 0.1]}, preset="perceptron", epochs=1, out=out, data=tiny,
                  scheduler="sequential", progress=False)
    best = first.best
    again = sweep({"lr": [0.01, 0.1]}, preset="perceptron", epochs=1, out=out, data=tiny,
                  scheduler="sequential", progress=False, save_best=tmp_path / "best.npz",
                  json_out=tmp_path / "t.json")
    assert again.best["run_id"] == best["run_id"]
    assert weights_digest(mn.Model.load(tmp_path / "best.npz")) == best["weights_sha256"]
    assert f'"best": "{best["run_id"]}"' in (tmp_path / "t.json").read_text()


def test_a_table_of_other_data_is_refused_before_training(tiny, tmp_path):
    out = tmp_path / "t.csv"
    sweep({"seed": [0]}, preset="perceptron", epochs=1, out=out, data=tiny,
          scheduler="sequential", progress=False)
    other = write_mnist(tmp_path / "other", 600, 200, seed=7)
    before = out.read_text()
    with pytest.raises(SweepError, match=r"t\.csv holds runs trained on other data \(digest "
                                         r"\w+, now \w+\); write to another table"):
        sweep({"seed": [0, 1]}, preset="perceptron", epochs=1, out=out, data=other,
              scheduler="sequential", progress=False)
    assert out.read_text() == before


def test_scattered_uint8_is_converted_as_load_mnist_converts(tiny):
    (raw, _), (raw_test, _) = mn.load_mnist(tiny, normalize=False)
    (x, _), (x_test, _) = mn.load_mnist(tiny)
    assert raw.dtype == np.uint8
    assert as_float_images(raw).tobytes() == x.tobytes()
    assert as_float_images(raw_test).tobytes() == x_test.tobytes()


def test_validation_split_and_data_read_on_the_workers(tiny, client, tmp_path):
    grid = {"seed": [0, 1]}
    here = sweep(grid, preset="perceptron", epochs=1, out=tmp_path / "a.csv", data=tiny,
                 validation_split=0.25, scheduler="sequential", progress=False)
    there = sweep(grid, preset="perceptron", epochs=1, out=tmp_path / "b.csv", data=tiny,
                  validation_split=0.25, client=client, data_on_workers=True,
                  progress=False)
    assert read_table(tmp_path / "a.csv") == read_table(tmp_path / "b.csv")
    assert all("validation_split=0.25" in r["run_id"] for r in there.ordered())
    # validated on the last quarter of the training rows, not on the test split
    (x, y), _ = mn.load_mnist(tiny)
    model = mn.preset("perceptron", seed=1)
    history = model.fit(x, y, epochs=1, validation_split=0.25, verbose=0)
    assert here.ordered()[1]["val_accuracy"] == history.history["val_accuracy"][-1]


# ---- 2. a worker killed mid-sweep --------------------------------------------------------

def test_a_worker_killed_mid_sweep_loses_no_run_and_duplicates_none(tmp_path):
    data = write_mnist(tmp_path / "data", 6000, 200, seed=1)
    grid = {"seed": [0, 1, 2, 3, 4, 5]}
    layers = "256:relu,256:relu,10:softmax"  # about half a second a run on one thread
    killed: list[tuple[str, list[str]]] = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  env={"MNISTNET_NUM_THREADS": "1"}) as cluster, \
            distributed.Client(cluster) as dask_client:
        pids = dask_client.run(os.getpid)

        def kill_a_busy_worker(finished: int, total: int, row: dict) -> None:
            if killed:
                return
            busy = {w: keys for w, keys in dask_client.processing().items() if keys}
            worker, keys = next(iter(busy.items()))
            os.kill(pids[worker], signal.SIGKILL)
            killed.append((worker, list(keys)))

        table = sweep(grid, layers=layers, epochs=4, out=tmp_path / "t.csv", data=data,
                      client=dask_client, progress=kill_a_busy_worker)
    assert killed and killed[0][1], "no worker was killed with a run of its own"
    rows = read_table(tmp_path / "t.csv", drop=set())
    assert sorted(r["seed"] for r in rows) == ["0", "1", "2", "3", "4", "5"]
    assert len({r["run_id"] for r in rows}) == 6
    # every run, retried or not, has the bits of the same run in this process
    here = sweep(grid, layers=layers, epochs=4, out=tmp_path / "here.csv", data=data,
                 scheduler="sequential", progress=False)
    assert [r["weights_sha256"] for r in table.ordered()] == [
        r["weights_sha256"] for r in here.ordered()]


# ---- 3. resume ---------------------------------------------------------------------------

class Interrupt:
    """A progress callback that raises KeyboardInterrupt after `after` runs, and counts."""

    def __init__(self, after: int | None = None) -> None:
        self.after, self.seen = after, []

    def __call__(self, finished: int, total: int, row: dict) -> None:
        self.seen.append(row["run_id"])
        if self.after is not None and len(self.seen) == self.after:
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["sequential", "cluster"])
def test_an_interrupted_sweep_rerun_trains_only_the_missing_runs(where, tiny, client,
                                                                 tmp_path):
    out = tmp_path / "t.csv"
    place = {"scheduler": "sequential"} if where == "sequential" else {"client": client}
    first = Interrupt(after=3)
    with pytest.raises(KeyboardInterrupt):
        sweep(GRID, preset="cross-entropy", epochs=1, out=out, data=tiny, progress=first,
              **place)
    kept = read_table(out, drop=set())
    assert [r["run_id"] for r in kept] and len(kept) == 3
    second = Interrupt()
    table = sweep(GRID, preset="cross-entropy", epochs=1, out=out, data=tiny, progress=second,
                  **place)
    assert len(second.seen) == 5 and not set(second.seen) & {r["run_id"] for r in kept}
    done = read_table(out, drop=set())
    assert len(done) == 8 == len(table.rows)
    for row in kept:  # the first session's rows, not trained again (same time, same worker)
        again = next(r for r in done if r["run_id"] == row["run_id"])
        assert {k: again[k] for k in row if k != "best"} == {
            k: v for k, v in row.items() if k != "best"}
    third = Interrupt()
    sweep(GRID, preset="cross-entropy", epochs=1, out=out, data=tiny, progress=third, **place)
    assert third.seen == []


def test_ctrl_c_on_the_command_keeps_the_finished_runs_and_a_rerun_completes(tmp_path):
    data = write_mnist(tmp_path / "data", 3000, 100)
    out = tmp_path / "t.csv"
    command = [sys.executable, "-m", "mnistnet", "sweep", "--layers",
               "256:relu,256:relu,10:softmax", "--grid", "seed=0,1,2,3,4,5", "--epochs", "2",
               "--data", str(data), "--out", str(out), "--scheduler", "sequential"]
    env = {**os.environ, "MNISTNET_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env, cwd=tmp_path)
    try:
        for line in process.stdout:
            if line.startswith("[1/6]"):
                process.send_signal(signal.SIGINT)
                break
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert f"{out} holds every finished run" in err
    finished = len(read_table(out))
    assert 1 <= finished < 6
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120,
                           check=False, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    assert f"6 runs: {finished} already in {out}, {6 - finished} to train" in rerun.stdout
    assert len(read_table(out)) == 6


# ---- 4. scikit-learn on joblib's Dask backend --------------------------------------------

def test_grid_search_on_the_dask_backend_chooses_as_with_one_job(client):
    joblib = pytest.importorskip("joblib")
    pytest.importorskip("sklearn")
    from sklearn.model_selection import GridSearchCV

    from mnistnet.sklearn import MNISTNetClassifier

    rng = np.random.default_rng(0)
    images, labels = _images(rng, 300)
    x = images.reshape(300, -1).astype(np.float32) / 255
    params = {"learning_rate": [0.001, 0.03, 0.3], "hidden_layer_sizes": [(16,), (64,)]}
    estimator = MNISTNetClassifier(epochs=2, batch_size=32)
    one = GridSearchCV(estimator, params, cv=3, n_jobs=1).fit(x, labels)
    with joblib.parallel_config("dask"):
        dask = GridSearchCV(estimator, params, cv=3).fit(x, labels)
    assert dask.best_params_ == one.best_params_
    # the bits too: every fold's score is the same number
    np.testing.assert_array_equal(dask.cv_results_["split0_test_score"],
                                  one.cv_results_["split0_test_score"])
    assert len(set(one.cv_results_["mean_test_score"])) > 1  # a choice was made


def test_help_names_the_grid_keys(capsys):
    assert cli.main(["sweep", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mnistnet sweep")
    assert "Grid keys: preset, layers" in " ".join(out.split())


# ---- 6. bad input: one clear line ----------------------------------------------------------

def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    code = cli.main(argv)
    err = capsys.readouterr().err
    return code, err


def assert_one_error_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnistnet: error: "), err
    for part in parts:
        assert part in lines[0], lines[0]


@pytest.mark.parametrize("grid, parts", [
    (["lrr=0.1"], ["unknown grid key 'lrr'", "valid keys: preset, layers", "batch-size"]),
    (["lr="], ["grid key lr has no values"]),
    (["lr=0.1", "lr=0.2"], ["key lr is given twice"]),
    (["lr"], ["--grid 'lr': expected KEY=VALUE"]),
    (["lr=-1"], ["grid key lr: must be a finite number > 0"]),
    (["batch-size=0"], ["grid key batch_size: must be an integer >= 1"]),
    (["optimizer=lbfgs"], ["unknown optimizer 'lbfgs'", "sgd, adam"]),
    (["layers=128:relu,10:softmax/12:bogus"], ["'12:bogus'", "unknown activation"]),
])
def test_bad_grid_is_one_line(grid, parts, tmp_path, capsys):
    code, err = run_cli(["sweep", "--preset", "perceptron", "--out", str(tmp_path / "t.csv"),
                         "--scheduler", "sequential", "--grid", *grid], capsys)
    assert code == 2
    assert_one_error_line(err, *parts)
    assert not (tmp_path / "t.csv").exists()


def test_empty_grid_is_one_line(tmp_path, capsys):
    code, err = run_cli(["sweep", "--preset", "perceptron", "--out", str(tmp_path / "t.csv"),
                         "--grid"], capsys)
    assert code == 2
    assert_one_error_line(err, "--grid: expected at least one argument")
    with pytest.raises(SweepError, match=r"^the grid is empty: give at least one KEY=VALUE"):
        sweep({}, preset="perceptron", out=tmp_path / "t.csv", scheduler="sequential")


@pytest.mark.parametrize("target, parts", [
    ("missing/t.csv", ["--out", "folder", "does not exist"]),
    (".", ["--out .: is a folder"]),
])
def test_unwritable_out_is_one_line_before_any_training(target, parts, tmp_path, capsys,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["sweep", "--preset", "perceptron", "--grid", "seed=0",
                         "--out", target, "--data", str(tmp_path / "nowhere")], capsys)
    assert code == 2
    assert_one_error_line(err, *parts)


def test_a_table_that_is_not_a_sweep_table_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "t.csv"
    out.write_text("a,b\n1,2\n")
    code, err = run_cli(["sweep", "--preset", "perceptron", "--grid", "seed=0", "--out",
                         str(out), "--data", str(tiny), "--scheduler", "sequential"], capsys)
    assert code == 2
    assert_one_error_line(err, f"{out} is not a sweep table", "choose another output file")
    assert out.read_text() == "a,b\n1,2\n"


@pytest.fixture
def silent_server():
    """A socket on 127.0.0.1 that accepts connections (the kernel's backlog) and never
    says a word: what a hung or foreign service looks like to a client."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"


def _closed_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("kind", ["silent", "closed"])
def test_a_scheduler_that_does_not_answer_is_a_timeout_not_a_hang(kind, silent_server, tiny,
                                                                  tmp_path):
    address = silent_server if kind == "silent" else _closed_port()
    start = time.monotonic()
    # In a process of its own, so that a hang fails the test (TimeoutExpired) and ends.
    result = subprocess.run([sys.executable, "-m", "mnistnet", "sweep", "--preset",
                             "perceptron", "--grid", "seed=0", "--out", str(tmp_path / "t.csv"),
                             "--data", str(tiny), "--scheduler", address, "--timeout", "2"],
                            capture_output=True, text=True, timeout=30, check=False,
                            cwd=tmp_path)
    assert time.monotonic() - start < 20
    code, err = result.returncode, result.stderr
    assert code == 2
    if kind == "silent":
        assert_one_error_line(err, f"scheduler {address}: no answer within 2 s",
                              "dask scheduler")
    else:
        assert_one_error_line(err, f"scheduler {address}: cannot connect", "dask scheduler")


def test_missing_dask_says_how_to_install_it(tiny, tmp_path):
    code = ("import sys; sys.modules['distributed'] = None\n"
            "from mnistnet.cli import main\n"
            f"sys.exit(main(['sweep', '--preset', 'perceptron', '--grid', 'seed=0', '--out', "
            f"{str(tmp_path / 't.csv')!r}, '--data', {str(tiny)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=False, cwd=tmp_path)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, 'pip install "mnistnet[dask]"', "sequential")
