"""Time to accuracy behind ``mnistnet bench --time-to``: how soon a preset's recipe has a
model that reaches a test accuracy, seed by seed, and (``--peers``) how soon PyTorch and
Keras 3 reach it training the same net with the same recipe::

    mnistnet bench --time-to 0.992 --presets speedrun --seeds 0-9
    mnistnet bench --time-to 0.992 --presets convnet --seeds 0,1,2 --peers

Each seed trains a fresh model with its preset's recipe (RECIPES[name]: optimizer, learning
rate and schedule over the recipe's epochs of the training rows, batch size) in one fit
call. A callback evaluates the test set after every epoch with the clock stopped: the time
reported is fit's wall time, from its call to the end of the first epoch whose test accuracy
reaches the target, minus the evaluations. Training stops there unless full_recipe (then
every epoch of the recipe runs, and the accuracy after each is reported). Every seed is
reported (no best-of); the means are over the seeds that reached the target.

The peers run mnistnet/peers.py, one process per framework and seed, with the same clock
(their train_seconds exclude the test evaluations).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from mnistnet.bench import (
    PEERS_MISSING,
    Data,
    align_table,
    checked_presets,
    data_classes,
    format_identity,
    load_average,
    load_bench_data,
    machine_identity,
    run_peer,
    write_peer_config,
    write_peer_data,
)
from mnistnet.callbacks import Callback
from mnistnet.model import Model
from mnistnet.presets import PRESETS, RECIPES, preset, recipe_optimizer

__all__ = ["default_presets", "format_time_to_report", "parse_seeds", "time_to_accuracy"]

DEFAULT_SEEDS = (0, 1, 2)
PEER_LABELS = ("torch", "keras")


def default_presets() -> list[str]:
    """The presets --time-to runs when none are named: speedrun where it exists, else the
    convnet."""
    return ["speedrun"] if "speedrun" in PRESETS else ["convnet"]


def parse_seeds(text: str) -> list[int]:
    """Seeds from "0,1,2", "0-9" or a mix ("0-4,7"), in the order given."""
    seeds: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        first, dash, last = item.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise ValueError(f"seeds are whole numbers or ranges as 0,1,2 or 0-9, got {text!r}")
        seeds += range(int(first), int(last) + 1) if dash else [int(first)]
    if not seeds:
        raise ValueError(f"no seeds in {text!r}")
    return seeds


# ---- mnistnet --------------------------------------------------------------------------------

class FitClock(Callback):
    """Times fit without its evaluations. Each epoch's train seconds run from fit's call (for
    the first epoch, `start()` being called just before it) or the end of the previous
    evaluation to on_epoch_end; there the test set is evaluated (eval seconds) with
    model.evaluate, and training stops if the accuracy reached the target (unless
    `stop` is False)."""

    clock = staticmethod(time.perf_counter)  # seconds (a class attribute, for the tests)

    def __init__(self, x_test: np.ndarray, y_test: np.ndarray, target: float,
                 stop: bool = True) -> None:
        super().__init__()
        self.x_test, self.y_test, self.target, self.stop = x_test, y_test, target, stop
        self.train_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.test_accuracy: list[float] = []
        self.mark = self.clock()

    def start(self) -> None:
        """Start the clock (just before calling fit)."""
        self.mark = self.clock()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        now = self.clock()
        self.train_seconds.append(now - self.mark)
        with self.model._averaged_weights():  # with use_ema, what fit ends with
            accuracy = self.model.evaluate(self.x_test, self.y_test)["accuracy"]
        self.test_accuracy.append(accuracy)
        self.mark = self.clock()
        self.eval_seconds.append(self.mark - now)
        if self.stop and accuracy >= self.target:
            self.model.stop_training = True


def recipe_model(name: str, seed: int, rows: int, classes: int = 10) -> Model:
    """A fresh fast model of the preset (`classes` outputs), with its recipe's optimizer for
    `rows` training rows (a schedule spans the recipe's epochs of them)."""
    return preset(name, seed=seed, optimizer=recipe_optimizer(name, rows=rows),
                  classes=classes)


def mnistnet_run(name: str, seed: int, data: Data, target: float,
                 stop: bool = True) -> dict[str, Any]:
    """One seed of the preset's recipe trained by fit, timed by FitClock (run_record's
    keys)."""
    (x_train, y_train), (x_test, y_test) = data
    model = recipe_model(name, seed, x_train.shape[0], data_classes(data))
    clock = FitClock(x_test, y_test, target, stop)
    recipe = RECIPES[name]
    clock.start()
    model.fit(x_train, y_train, epochs=recipe["epochs"], batch_size=recipe["batch_size"],
              verbose=0, callbacks=[clock])
    return run_record(seed, target, clock.train_seconds, clock.eval_seconds,
                      clock.test_accuracy)


def run_record(seed: int, target: float, train_seconds: Sequence[float],
               eval_seconds: Sequence[float], test_accuracy: Sequence[float]) -> dict[str, Any]:
    """One seed's run, whoever trained it: per epoch the training seconds (evaluations
    excluded), the evaluation seconds and the test accuracy; the first epoch (1-based)
    whose accuracy reached the target, and the training seconds up to its end (None, None
    if none did)."""
    reached = next((i for i, a in enumerate(test_accuracy) if a >= target), None)
    return {"seed": seed, "epochs": len(test_accuracy),
            "train_seconds": [float(t) for t in train_seconds],
            "eval_seconds": [float(t) for t in eval_seconds],
            "test_accuracy": [float(a) for a in test_accuracy],
            "epochs_to_target": None if reached is None else reached + 1,
            "seconds_to_target": None if reached is None else float(
                sum(train_seconds[:reached + 1])),
            "final_test_accuracy": float(test_accuracy[-1]) if test_accuracy else None}


def summary(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many seeds reached the target, and the means over those that did (seconds and
    epochs to the target) and over all (the last epoch's test accuracy)."""
    times = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
    epochs = [r["epochs_to_target"] for r in runs if r["epochs_to_target"] is not None]
    finals = [r["final_test_accuracy"] for r in runs if r["final_test_accuracy"] is not None]
    return {"seeds": len(runs), "seeds_reached": len(times),
            "mean_seconds_to_target": float(np.mean(times)) if times else None,
            "mean_epochs_to_target": float(np.mean(epochs)) if epochs else None,
            "mean_final_test_accuracy": float(np.mean(finals)) if finals else None}


def mnistnet_times(name: str, seeds: Sequence[int], data: Data, target: float,
                   stop: bool) -> dict[str, Any]:
    runs = [mnistnet_run(name, seed, data, target, stop) for seed in seeds]
    return {"preset": name, "recipe": RECIPES[name], "runs": runs, **summary(runs)}


# ---- the peers -------------------------------------------------------------------------------

def peer_runs(label: str, name: str, seeds: Sequence[int], data_path: str, folder: str,
              rows: int, target: float, stop: bool, python: str,
              classes: int = 10) -> dict[str, Any]:
    """One framework's runs of the preset's recipe (`classes` outputs), one process per
    seed, in run_record's form; {"available": False, "reason": ...} if it cannot run."""
    recipe = RECIPES[name]
    config = write_peer_config(recipe_model(name, 0, rows, classes), rows,
                               recipe["batch_size"], recipe["epochs"],
                               os.path.join(folder, f"{name}.json"))
    runs, version = [], None
    for seed in seeds:
        out = run_peer(label, config, data_path, recipe["epochs"], recipe["batch_size"],
                       python, seed=seed, target=target if stop else None)
        if "unavailable" in out:
            return {"available": False, "reason": out["unavailable"]}
        version = out["version"]
        runs.append(run_record(seed, target, out["train_seconds"], out["eval_seconds"],
                               out["val_accuracy"]))
    return {"available": True, "version": version, "runs": runs, **summary(runs)}


def peer_times(presets: Sequence[str], seeds: Sequence[int], data: Data, target: float,
               stop: bool, python: str, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per framework and preset, peer_runs, with over_mnistnet: the peer's mean seconds to
    the target over mnistnet's (from `rows`, mnistnet's results), where both have one;
    "message" says so when the interpreter imports neither framework."""
    means = {row["preset"]: row["mean_seconds_to_target"] for row in rows}
    out: dict[str, Any] = {"frameworks": {}, "message": None, "python": python}
    with tempfile.TemporaryDirectory(prefix="mnistnet-time-to-") as folder:
        data_path = write_peer_data(data, folder)
        for label in PEER_LABELS:
            out["frameworks"][label] = _framework_times(
                label, presets, seeds, data_path, folder, data[0][0].shape[0], target, stop,
                python, means, data_classes(data))
    if not any(f["available"] for f in out["frameworks"].values()):
        out["message"] = PEERS_MISSING
    return out


def _framework_times(label: str, presets: Sequence[str], seeds: Sequence[int],
                     data_path: str, folder: str, rows: int, target: float, stop: bool,
                     python: str, means: dict[str, float | None],
                     classes: int = 10) -> dict[str, Any]:
    timings, version = {}, None
    for name in presets:
        run = peer_runs(label, name, seeds, data_path, folder, rows, target, stop, python,
                        classes)
        if not run.pop("available"):
            return {"available": False, "reason": run["reason"]}
        version, peer_mean, ours = run.pop("version"), run["mean_seconds_to_target"], means[name]
        run["over_mnistnet"] = peer_mean / ours if peer_mean and ours else None
        timings[name] = run
    return {"available": True, "version": version, "presets": timings}


# ---- the benchmark ---------------------------------------------------------------------------

def time_to_accuracy(target: float, presets: Sequence[str] | None = None,
                     seeds: Sequence[int] = DEFAULT_SEEDS, *, data: Any = None,
                     peers: bool = False, peers_python: str | None = None,
                     full_recipe: bool = False, dataset: str = "mnist") -> dict[str, Any]:
    """Train each preset's recipe from each seed and time fit until the test accuracy first
    reaches `target` (see the module's docstring).

    Args:
        target: the test accuracy to reach, in (0, 1].
        presets: names from PRESETS (default: default_presets()).
        seeds: one run per seed, each reported.
        data: None (load the dataset the usual way), a folder holding its four files, or
            load_mnist's ((x_train, y_train), (x_test, y_test)).
        dataset: which of mnistnet.datasets.NAMES to load (data None or a folder); the
            presets get one output per class.
        peers: also train the same recipes in PyTorch and Keras 3, each seed in a process
            of its own run by `peers_python` (default: this interpreter).
        full_recipe: train every epoch of the recipe instead of stopping at the target.

    Returns a JSON-serialisable dict: "context" (machine_identity), "setup", "presets" (one
    dict per preset: "runs", one run_record per seed, and their summary) and "peers" when
    asked for."""
    if not 0 < target <= 1:
        raise ValueError(f"the target accuracy must lie in (0, 1], got {target}")
    presets = checked_presets(default_presets() if presets is None else presets)
    seeds = list(seeds)
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"seeds must be one or more whole numbers >= 0, got {seeds}")
    loaded = load_bench_data(data, dataset)
    stop = not full_recipe
    context = machine_identity()
    result: dict[str, Any] = {
        "context": context,
        "setup": {"target": target, "seeds": seeds, "stop_at_target": stop,
                  "dataset": getattr(loaded, "name", None),  # a mnistnet.datasets.Dataset's
                  "train_rows": int(loaded[0][0].shape[0]),
                  "test_rows": int(loaded[1][0].shape[0]),
                  "clock": "fit's wall time from its call to the end of the epoch, the test "
                           "evaluations after each epoch excluded"},
        "presets": [mnistnet_times(name, seeds, loaded, target, stop) for name in presets],
    }
    if peers:
        result["peers"] = peer_times(presets, seeds, loaded, target, stop,
                                     peers_python or sys.executable, result["presets"])
    context["load_average_end"] = load_average()
    return result


# ---- output ----------------------------------------------------------------------------------

def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _run_rows(name: str, who: str, runs: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [[name, who, str(r["seed"]), str(r["epochs_to_target"] or "-"),
             _seconds(r["seconds_to_target"]), f"{sum(r['train_seconds']):.2f}",
             " ".join(f"{a:.4f}" for a in r["test_accuracy"])] for r in runs]


def _summary_line(name: str, who: str, info: dict[str, Any], target: float) -> str:
    mean = info["mean_seconds_to_target"]
    line = (f"{name}, {who}: {info['seeds_reached']}/{info['seeds']} seeds reached {target}"
            + ("" if mean is None else f", mean {mean:.2f} s in {info['mean_epochs_to_target']:.1f}"
               " epochs")
            + f"; mean accuracy after the last epoch trained "
              f"{info['mean_final_test_accuracy']:.4f}")
    if info.get("over_mnistnet"):
        line += f"; {info['over_mnistnet']:.2f}x mnistnet's time"
    return line


def format_time_to_report(result: dict[str, Any]) -> str:
    """The time-to-accuracy runs as an aligned plain-text table, every seed, then a summary
    line per preset and framework (what `mnistnet bench --time-to` prints)."""
    setup, target = result["setup"], result["setup"]["target"]
    lines = [f"mnistnet bench --time-to {target}: each preset's recipe on "
             f"{setup['train_rows']} training rows, tested on {setup['test_rows']} after every "
             f"epoch; seconds = {setup['clock']}"
             + ("" if setup["stop_at_target"] else "; every epoch of the recipe trained"),
             *format_identity(result["context"], numpy_timed=False), ""]
    table = [["preset", "trained by", "seed", "epochs", f"s to {target}", "s trained",
              "test accuracy after each epoch"]]
    summaries = []
    version = f"mnistnet {result['context']['mnistnet_version']}"
    for row in result["presets"]:
        table += _run_rows(row["preset"], version, row["runs"])
        summaries.append(_summary_line(row["preset"], version, row, target))
    peers = result.get("peers")
    notes = []
    if peers:
        for label, info in peers["frameworks"].items():
            if not info["available"]:
                notes.append(f"peers: {label} not available ({info.get('reason')})")
                continue
            for name, run in info["presets"].items():
                table += _run_rows(name, info["version"], run["runs"])
                summaries.append(_summary_line(name, info["version"], run, target))
        if peers["message"]:
            notes = [peers["message"]]
    return "\n".join([*lines, *align_table(table), "", *summaries, *notes])
