"""`mnistnet bench` on a few synthetic rows: the comparison runs for a dense preset and the
convnet, its figures are consistent, and the peers run in processes of their own (or say why
they cannot); each extra section (short epochs, predict against onnxruntime, epochs under
load) and the time to accuracy produce well-formed, consistent output; the peers report per
epoch, stop at a target, and honour label smoothing and EMA. No timing is asserted: speed
targets live in the benchmarks.

The peers' tests run mnistnet/peers.py with $MNISTNET_PEERS_PYTHON (default: this
interpreter); they skip when it imports neither torch nor keras, unless MNISTNET_REQUIRE
lists "peers"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import write_dataset
from test_export import skip_or_fail

import mnistnet as mn
from mnistnet import bench
from mnistnet import time_to_accuracy as tta
from mnistnet.cli import main


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    x = rng.random((256, 784), dtype=np.float32)
    xt = rng.random((64, 784), dtype=np.float32)
    return (x, rng.integers(0, 10, 256)), (xt, rng.integers(0, 10, 64))


@pytest.fixture
def quick(monkeypatch):
    """No settling pauses, a small context GEMM and a short FMA probe."""
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    monkeypatch.setattr(bench, "CONTEXT_GEMM_SIZE", 256)
    monkeypatch.setattr(bench, "FMA_PEAK_SECONDS", 0.02)


def test_comparison_of_a_dense_preset_and_the_convnet(tiny, quick):
    result = bench.run_comparison(["perceptron", "convnet"], data=tiny)
    rows = {row["preset"]: row for row in result["presets"]}
    conv = rows["convnet"]
    assert conv["recipe"]["batch_size"] == 128 and conv["layers"][0] == "Conv2D"
    assert conv["relative_weight_diff"] < 1e-3
    forward, train = mn.preset("convnet").plan.flops_per_sample()
    assert conv["epoch_gflop"] == pytest.approx((256 * train + 64 * forward) / 1e9)
    # About 4.9 MFLOP forward and 14 MFLOP forward + backward per image (design notes).
    assert 4.8e6 < forward < 5.0e6 and 13.5e6 < train < 14.5e6
    for row in rows.values():
        assert row["speedup"] == pytest.approx(row["reference_seconds_per_epoch"]
                                               / row["fast_seconds_per_epoch"])
        assert row["after_reference_over_after_pause"] > 0
        assert row["fast_share_of_fma_peak"] == pytest.approx(
            row["fast_gflops"] / result["context"]["fma_peak_gflops"])
        assert row["fast_share_of_matmul"] == pytest.approx(
            row["fast_gflops"] / result["context"]["numpy_matmul_gflops"])
    report = bench.format_report(result)
    assert "convnet" in report and "after ref" in report and "of peak" in report
    json.dumps(result)  # JSON-serialisable, as --json prints it


def test_a_peer_that_cannot_import_its_framework_says_so(tiny, tmp_path):
    config = tmp_path / "c.json"
    config.write_text(json.dumps(bench.peer_config(mn.preset("perceptron"), 256, 32, 1)))
    (x, y), (xt, yt) = tiny
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    out = bench.run_peer("torch", str(config), str(tmp_path / "d.npz"), 1, 32,
                          sys.executable)
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "unavailable" in out and "torch" in out["unavailable"]
    else:
        assert out["framework"] == "pytorch" and len(out["train_seconds"]) == 1


def test_a_peer_interpreter_that_does_not_exist(tiny, tmp_path):
    out = bench.run_peer("keras", "c.json", "d.npz", 1, 32, str(tmp_path / "no-python"))
    assert "unavailable" in out and "FileNotFoundError" in out["unavailable"]


def test_the_peer_config_follows_the_schedule_step_by_step():
    """The peers get the learning rate of every step: a one-cycle schedule is followed."""
    model = mn.preset("convnet-plus")
    config = bench.peer_config(model, 1000, 128, 2)
    assert len(config["optimizer"]["rates"]) == 2 * 8
    np.testing.assert_array_equal(config["optimizer"]["rates"], model.optimizer.rates(0, 16))
    assert config["optimizer"]["class"] == "Adam" and config["loss"] == {
        "name": "categorical_crossentropy"}
    assert [layer["kind"] for layer in config["layers"]] == [
        type(layer).__name__ for layer in model.layers]


def test_keras_same_padding_is_keras():
    """PyTorch pads "same" convolutions as Keras does: the extra one after."""
    conv = mn.Conv2D(4, 4, padding="same")
    pads = mn.kinds.kind_of(conv).torch(conv, (8, 8, 1), (8, 8, 4))[0]
    assert pads["module"] == "ZeroPad2d" and pads["args"] == [(1, 2, 1, 2)]
    pool = mn.MaxPool2D(2, padding="same")
    pads = mn.kinds.kind_of(pool).torch(pool, (7, 7, 3), (4, 4, 3))[0]
    assert pads["module"] == "ConstantPad2d" and pads["args"][0] == (0, 1, 0, 1)


# ---- the machine's limit -------------------------------------------------------------------

def test_the_context_names_the_cpu_and_measures_the_fma_peak(quick):
    context = bench.machine_context()
    assert context["cpu_model"] == bench.cpu_model() and context["cpu_model"].strip()
    assert context["simd_path"] == mn.fast.simd_path()
    assert context["fma_peak_threads"] == mn.get_num_threads()
    assert context["fma_peak_gflops_one_thread"] > 0 and context["fma_peak_gflops"] > 0
    for name in ("numpy_matmul", "fast_sgemm"):
        assert context[f"{name}_share_of_fma_peak"] == pytest.approx(
            context[f"{name}_gflops"] / context["fma_peak_gflops"])
    lines = bench.format_identity(context)
    assert context["cpu_model"] in lines[0] and context["simd_path"] in lines[0]


def test_the_cpu_model_without_proc_cpuinfo(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("/proc/cpuinfo")

    monkeypatch.setattr("builtins.open", missing)
    monkeypatch.setattr(bench.platform, "processor", lambda: "Some CPU")
    assert bench.cpu_model() == "Some CPU"


# ---- the extra sections --------------------------------------------------------------------

def test_short_epochs_against_the_full_epoch(tiny, quick):
    result = bench.run_comparison(["perceptron"], data=tiny, subset=64, compare=False,
                                  repeats=2)
    assert result["presets"] == [] and result["setup"]["compare"] is False
    (row,) = result["subset"]
    assert (row["subset_rows"], row["full_rows"]) == (64, 256)
    assert row["subset_us_per_image"] == pytest.approx(row["subset_seconds"] / 64 * 1e6)
    assert row["full_us_per_image"] == pytest.approx(row["full_seconds"] / 256 * 1e6)
    assert row["subset_over_full_per_image"] == pytest.approx(
        row["subset_us_per_image"] / row["full_us_per_image"])
    peak = result["context"]["fma_peak_gflops"]
    assert row["subset_share_of_fma_peak"] == pytest.approx(
        bench.preset_flops("perceptron", 64) / row["subset_seconds"] / 1e9 / peak)
    assert "short/full per image" in bench.format_report(result)
    json.dumps(result)


def test_the_busy_loop_runs_in_a_child_and_is_stopped(tmp_path):
    with bench.busy_loop() as child:
        assert child.poll() is None and child.pid != os.getpid()
    assert child.poll() is not None  # stopped (by SIGTERM on POSIX)


def test_epochs_under_load_on_the_team_and_on_one_thread(tiny, quick):
    threads = mn.get_num_threads()
    result = bench.run_comparison(["perceptron"], data=tiny, subset=64, busy_core=True,
                                  compare=False)
    assert mn.get_num_threads() == threads  # the count in effect before is set back
    busy = result["busy_core"]
    assert [(r["preset"], r["rows"]) for r in busy["epochs"]] == [("perceptron", 256),
                                                                 ("perceptron", 64)]
    for row in busy["epochs"]:
        assert row["team_threads"] == mn.fast.available_cores()
        assert row["team_over_one_thread"] == pytest.approx(row["team_seconds"]
                                                            / row["one_thread_seconds"])
    if hasattr(os, "getpriority"):
        assert busy["busy_nice"] == os.getpriority(os.PRIO_PROCESS, 0)
    assert "team/one-thread" in bench.format_report(result)
    json.dumps(result)


def test_predict_against_onnxruntime(tiny, monkeypatch):
    missing = bench._onnxruntime_missing()
    if missing:
        skip_or_fail("onnx", missing)
    monkeypatch.setattr(bench, "ONE_IMAGE_CALLS", 3)
    result = bench.predict_against_onnxruntime(["perceptron", "convnet"], tiny[1][0], 1,
                                               rows=100)
    assert result["available"] and result["threads"] == mn.get_num_threads()
    for row in result["presets"]:
        assert row["rows"] == 100 and row["max_abs_output_diff"] < 1e-4
        assert row["onnxruntime_over_fast"] == pytest.approx(row["onnxruntime_seconds"]
                                                             / row["fast_seconds"])
        assert row["onnxruntime_over_fast_one_image"] == pytest.approx(
            row["onnxruntime_one_image_us"] / row["fast_one_image_us"])
    lines = bench._format_predict(result)
    assert "convnet" in "\n".join(lines) and "onnxruntime" in lines[-1]


def test_predict_without_onnxruntime_says_why(monkeypatch, tiny):
    monkeypatch.setattr(bench, "_onnxruntime_missing", lambda: "onnxruntime is not installed")
    result = bench.predict_against_onnxruntime(["perceptron"], tiny[1][0], 1)
    assert result == {"available": False, "reason": "onnxruntime is not installed"}
    assert "not installed" in bench._format_predict(result)[0]


# ---- the command line ----------------------------------------------------------------------

def test_the_command_line_runs_the_sections_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "CONTEXT_GEMM_SIZE", 128)
    monkeypatch.setattr(bench, "SETTLE_SECONDS", 0.0)
    data = write_dataset(tmp_path / "data", 96, 32)
    code = main(["bench", "--presets", "perceptron", "--skip-comparison", "--subset", "32",
                 "--data", str(data)])
    out = capsys.readouterr().out
    assert code == 0 and "short epoch" in out and "reference s/ep" not in out


def refused(argv: list[str], message: str, capsys) -> None:
    """`mnistnet bench ARGV` exits 2 with `message` on stderr, before running anything."""
    assert main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err


@pytest.mark.parametrize(("argv", "message"), [
    (["--skip-comparison"], "leaves nothing to run"),
    (["--skip-comparison", "--subset", "10", "--peers"], "drop --skip-comparison"),
    (["--subset", "0"], "must be an integer >= 1"),
    (["--presets", "nope"], "unknown preset"),
])
def test_the_command_line_refuses_what_cannot_run(argv, message, capsys):
    refused(argv, message, capsys)


# ---- the peers: per-epoch figures, a target, label smoothing and EMA -----------------------

PEERS_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import peers
configs = json.load(open(sys.argv[2]))
rng = np.random.default_rng(0)
data = {"x_train": rng.random((96, 784), dtype=np.float32), "y_train": rng.integers(0, 10, 96),
        "x_test": rng.random((32, 784), dtype=np.float32), "y_test": rng.integers(0, 10, 32)}
results = {}
for framework, run in peers.RUNNERS.items():
    for name, (config, target) in configs.items():
        try:
            results[f"{framework}/{name}"] = run(config, data, 3, 32, 1, seed=0, target=target)
        except ImportError as exc:
            results[f"{framework}/{name}"] = {"unavailable": str(exc)}
print(json.dumps(results))
"""


def peers_python() -> str:
    return os.environ.get("MNISTNET_PEERS_PYTHON", sys.executable)


def with_changes(config: dict, loss: dict | None = None, optimizer: dict | None = None):
    changed = json.loads(json.dumps(config))
    changed["loss"].update(loss or {})
    changed["optimizer"].update(optimizer or {})
    return changed


@pytest.fixture(scope="module")
def peer_runs(tmp_path_factory):
    """A small convnet trained 3 epochs by each peer, plain and with hand-made label
    smoothing and EMA settings (the presets that use them are not there yet), in one process
    of the peers' interpreter: {"<framework>/<case>": peers.py's result}."""
    model = mn.Model([mn.Conv2D(4, 3, activation="relu"), mn.MaxPool2D(2), mn.Flatten(),
                      mn.Dense(10, activation="softmax")], input_shape=(28, 28, 1),
                     optimizer=mn.Adam(0.003))
    plain = bench.peer_config(model, 96, 32, 3)
    cases = {
        "plain": (plain, None),
        "target": (plain, 0.0),  # reached after the first epoch
        "smoothing": (with_changes(plain, loss={"label_smoothing": 0.1}), None),
        "ema-0": (with_changes(plain, optimizer={"use_ema": True, "ema_momentum": 0.0}), None),
        "ema-0.9": (with_changes(plain, optimizer={"use_ema": True, "ema_momentum": 0.9}),
                    None),
    }
    folder = tmp_path_factory.mktemp("peer-runs")
    (folder / "configs.json").write_text(json.dumps(cases))
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "tensorflow")}
    done = subprocess.run([peers_python(), "-c", PEERS_SCRIPT,
                           str(Path(bench.__file__).parent), str(folder / "configs.json")],
                          capture_output=True, text=True, timeout=900, env=env, check=False)
    if done.returncode != 0:
        pytest.fail(f"the peers' interpreter {peers_python()} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def framework_runs(peer_runs: dict, framework: str) -> dict:
    runs = {key.split("/")[1]: out for key, out in peer_runs.items()
            if key.startswith(framework + "/")}
    if "unavailable" in runs["plain"]:
        skip_or_fail("peers", f"{framework} is not installed for the peers "
                              f"({runs['plain']['unavailable']}); set MNISTNET_PEERS_PYTHON "
                              "to an interpreter that has it")
    return runs


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_peer_reports_every_epoch_and_stops_at_its_target(peer_runs, framework):
    runs = framework_runs(peer_runs, framework)
    plain, stopped = runs["plain"], runs["target"]
    for key in ("train_seconds", "eval_seconds", "accuracy", "val_accuracy", "val_loss"):
        assert len(plain[key]) == 3 and len(stopped[key]) == 1, key
    assert all(t > 0 for t in plain["train_seconds"] + plain["eval_seconds"])
    assert plain["seed"] == 0 and plain["target"] is None and stopped["target"] == 0.0
    assert plain["ema"] is False and plain["label_smoothing"] == 0.0


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_peer_honours_label_smoothing(peer_runs, framework):
    runs = framework_runs(peer_runs, framework)
    assert runs["smoothing"]["label_smoothing"] == pytest.approx(0.1)
    assert runs["smoothing"]["val_loss"] != runs["plain"]["val_loss"]


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_a_peer_evaluates_the_averaged_weights(peer_runs, framework):
    """EMA leaves the training alone (the same training accuracy), and the test set is
    scored on the average: with momentum 0 it is the weights themselves (the same test
    loss), with 0.9 another model (another test loss)."""
    runs = framework_runs(peer_runs, framework)
    plain, same, averaged = runs["plain"], runs["ema-0"], runs["ema-0.9"]
    assert same["ema"] is True and averaged["ema"] is True
    assert averaged["accuracy"] == plain["accuracy"]
    assert same["val_loss"] == plain["val_loss"]
    assert averaged["val_loss"] != plain["val_loss"]


# ---- time to accuracy ----------------------------------------------------------------------

@pytest.fixture
def short_recipe(monkeypatch):
    """The perceptron's recipe cut to 4 epochs (of batch 32)."""
    monkeypatch.setitem(mn.RECIPES, "perceptron", {**mn.RECIPES["perceptron"], "epochs": 4})


def test_time_to_accuracy_reports_the_first_epoch_reaching_the_target(tiny, short_recipe):
    full = tta.time_to_accuracy(1.0, ["perceptron"], [0], data=tiny, full_recipe=True)
    (run,) = full["presets"][0]["runs"]
    assert run["epochs"] == 4 and len(run["train_seconds"]) == len(run["eval_seconds"]) == 4
    accuracies = run["test_accuracy"]
    target = max(accuracies[:2])  # reached by epoch 2 at the latest
    first = next(i for i, a in enumerate(accuracies) if a >= target) + 1
    stopped = tta.time_to_accuracy(target, ["perceptron"], [0], data=tiny)
    (run,) = stopped["presets"][0]["runs"]
    assert run["epochs_to_target"] == run["epochs"] == first  # and training stopped there
    assert run["test_accuracy"] == accuracies[:first]  # the same seed, the same epochs
    assert run["seconds_to_target"] == pytest.approx(sum(run["train_seconds"]))
    summary = stopped["presets"][0]
    assert summary["seeds_reached"] == 1 and summary["mean_seconds_to_target"] == pytest.approx(
        run["seconds_to_target"])
    assert stopped["setup"]["stop_at_target"] and not full["setup"]["stop_at_target"]
    assert "evaluations after each epoch excluded" in stopped["setup"]["clock"]
    json.dumps(stopped)


def test_time_to_accuracy_reports_every_seed_even_those_that_miss(tiny, short_recipe):
    result = tta.time_to_accuracy(1.0, ["perceptron"], [0, 1], data=tiny)
    row = result["presets"][0]
    assert [r["seed"] for r in row["runs"]] == [0, 1]
    for run in row["runs"]:  # random labels: 100% is out of reach, every epoch runs
        assert run["epochs"] == 4 and run["epochs_to_target"] is None
        assert run["seconds_to_target"] is None
    assert row["seeds_reached"] == 0 and row["mean_seconds_to_target"] is None
    assert row["runs"][0]["test_accuracy"] != row["runs"][1]["test_accuracy"]
    report = tta.format_time_to_report(result)
    assert "0/2 seeds reached 1.0" in report and "s to 1.0" in report


def test_the_fit_clock_excludes_the_evaluation(tiny, short_recipe, monkeypatch):
    """On a clock that only the evaluation moves, every second is evaluation's."""
    now = [100.0]
    evaluate = mn.Model.evaluate

    def evaluate_in_5_seconds(self, x, y):
        now[0] += 5.0
        return evaluate(self, x, y)

    monkeypatch.setattr(tta.FitClock, "clock", staticmethod(lambda: now[0]))
    monkeypatch.setattr(mn.Model, "evaluate", evaluate_in_5_seconds)
    (run,) = tta.time_to_accuracy(1.0, ["perceptron"], [0], data=tiny)["presets"][0]["runs"]
    assert run["eval_seconds"] == [5.0] * 4 and run["train_seconds"] == [0.0] * 4


@pytest.mark.parametrize(("text", "seeds"), [("0,1,2", [0, 1, 2]), ("0-3", [0, 1, 2, 3]),
                                             ("0-2, 7", [0, 1, 2, 7]), ("5", [5])])
def test_seeds(text, seeds):
    assert tta.parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1-", "-1", "0,,1"])
def test_bad_seeds(text):
    with pytest.raises(ValueError, match="seeds"):
        tta.parse_seeds(text)


def test_the_command_line_times_a_preset_to_an_accuracy(tmp_path, capsys, short_recipe):
    data = write_dataset(tmp_path / "data", 128, 32)
    code = main(["bench", "--time-to", "0.05", "--presets", "perceptron", "--seeds", "0-1",
                 "--data", str(data), "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["setup"]["target"] == 0.05 and result["setup"]["seeds"] == [0, 1]
    assert [r["epochs_to_target"] for r in result["presets"][0]["runs"]] == [1, 1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--time-to", "0.9", "--repeats", "2"], "--repeats cannot be used --time-to"),
    (["--time-to", "0.9", "--subset", "10"], "--subset cannot be used --time-to"),
    (["--seeds", "0,1"], "--seeds cannot be used without --time-to"),
    (["--full-recipe"], "--full-recipe cannot be used without --time-to"),
    (["--time-to", "1.5"], "must lie in (0, 1]"),
    (["--time-to", "0.9", "--presets", "nope"], "unknown preset"),
])
def test_the_command_line_refuses_what_time_to_cannot_run(argv, message, capsys):
    refused(argv, message, capsys)


def test_time_to_accuracy_with_the_peers(tiny, short_recipe):
    python = peers_python()
    result = tta.time_to_accuracy(0.01, ["perceptron"], [0], data=tiny, peers=True,
                                  peers_python=python)
    peers = result["peers"]
    if peers["message"]:
        skip_or_fail("peers", f"{python} imports neither torch nor keras ({peers['message']})")
    mnistnet_mean = result["presets"][0]["mean_seconds_to_target"]
    for info in peers["frameworks"].values():
        if not info["available"]:
            continue
        run = info["presets"]["perceptron"]
        (seed,) = run["runs"]
        assert seed["epochs"] == seed["epochs_to_target"] == 1  # stopped at the target
        assert run["over_mnistnet"] == pytest.approx(run["mean_seconds_to_target"]
                                                     / mnistnet_mean)
    assert "x mnistnet's time" in tta.format_time_to_report(result)
