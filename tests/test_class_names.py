"""Class names follow the model (issue 23), and every command takes --dataset NAME.

- a model's class names (and its dataset) are saved in its file and read back; a file
  without them (older ones) reads as digits "0".."9";
- they reach the demo page, the pictures (confusion matrix, mistakes, the perceptron's
  templates) and predict's lines ("FILE[i]: Trouser (p=0.97)"; digits stay "digit 7");
- the commands read a dataset of the family by name, default to the model's own, and say
  clearly what is wrong: an unknown name (listing the known ones), a folder missing files,
  a model whose outputs do not fit the dataset's classes.

Synthetic IDX folders (tests/test_cli.py's write_dataset): no download, no real dataset.
"""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from test_cli import write_dataset

import mnistnet as mn
from mnistnet import bench, datasets, demo, plot
from mnistnet.cli import main
from mnistnet.sweep import sweep

FASHION = datasets.class_names("fashion-mnist")


def fashion_model(seed: int = 0, **preset_options) -> mn.Model:
    model = mn.preset("perceptron", seed=seed, **preset_options)
    model.class_names, model.dataset = FASHION, "fashion-mnist"
    return model


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 784), dtype=np.float32)


# ---- the model and its file ------------------------------------------------------------------

def test_class_names_and_dataset_survive_save_and_load(tmp_path) -> None:
    model = fashion_model()
    model.save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz") as data:
        config = json.loads(str(data["config"][()]))
        assert int(data["format_version"]) == 2  # readable by older mnistnet (keys ignored)
    assert config["class_names"] == list(FASHION) and config["dataset"] == "fashion-mnist"
    loaded = mn.Model.load(tmp_path / "model.npz")
    assert loaded.class_names == FASHION and loaded.dataset == "fashion-mnist"
    assert loaded.class_names_given and not loaded.reads_digits


def test_a_file_without_class_names_reads_as_digits(tmp_path) -> None:
    mn.preset("perceptron").save(tmp_path / "model.npz")
    with np.load(tmp_path / "model.npz") as data:
        assert "class_names" not in json.loads(str(data["config"][()]))
    loaded = mn.Model.load(tmp_path / "model.npz")
    assert loaded.class_names == tuple("0123456789") and loaded.dataset is None
    assert loaded.reads_digits and not loaded.class_names_given


def test_class_names_are_checked() -> None:
    with pytest.raises(ValueError, match="3 class_names for a model of 10 outputs"):
        mn.Model([mn.Dense(10)], input_dim=784, class_names=["a", "b", "c"])
    with pytest.raises(TypeError, match="class_names must all be strings"):
        mn.Model([mn.Dense(2)], input_dim=784, class_names=[0, 1])
    with pytest.raises(TypeError, match="sequence of strings, got str"):
        mn.Model([mn.Dense(2)], input_dim=784, class_names="ab")


def test_a_copy_keeps_the_names() -> None:
    import pickle

    copy = pickle.loads(pickle.dumps(fashion_model()))
    assert copy.class_names == FASHION and copy.dataset == "fashion-mnist"


# ---- the demo page ---------------------------------------------------------------------------

def fetch(server: demo.DemoServer, path: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url.rstrip("/") + path, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as reply:
        return reply.read()


def page_classes(html: str) -> dict:
    block = html.split('<script id="classes" type="application/json">')[1]
    return json.loads(block.split("</script>")[0])


def test_the_demo_page_shows_the_model_class_names() -> None:
    with demo.serve(fashion_model(), port=0, log=None) as server:
        html = fetch(server, "/").decode()
        answer = json.loads(fetch(server, "/predict", {"pixels": [0.5] * 784}))
    assert "<h1>Draw a piece of clothing</h1>" in html and "digit in the black" not in html
    assert page_classes(html) == {"names": list(FASHION), "subject": "piece of clothing"}
    assert 'aria-label="the 10 outputs"' in html
    assert answer["label"] == FASHION[answer["class"]] and answer["digit"] == answer["class"]


def test_the_demo_page_of_digits_says_digit() -> None:
    with demo.serve(mn.preset("perceptron"), port=0, log=None) as server:
        html = fetch(server, "/index.html").decode()
    assert "<h1>Draw a digit</h1>" in html
    assert page_classes(html)["names"] == list("0123456789")


def test_a_class_name_cannot_break_out_of_the_page() -> None:
    model = mn.Model([mn.Dense(2, activation="softmax")], input_dim=784,
                     loss="categorical_crossentropy", class_names=["</script><b>x", "a&b"])
    with demo.serve(model, port=0, log=None) as server:
        html = fetch(server, "/").decode()
    assert "</script><b>" not in html
    assert page_classes(html)["names"] == ["</script><b>x", "a&b"]


def test_the_demo_gives_a_rescaling_model_pixels_0_to_255() -> None:
    model = fashion_model(input_dtype="uint8")
    pixels = np.random.default_rng(3).random(784).astype(np.float32)
    with demo.serve(model, port=0, log=None) as server:
        answer = json.loads(fetch(server, "/predict", {"pixels": pixels.tolist()}))
    want = model.predict(pixels.reshape(1, -1) * np.float32(255))[0]
    np.testing.assert_array_equal(np.float32(answer["probabilities"]), want)


# ---- the pictures ----------------------------------------------------------------------------

def titles(figure) -> list[str]:
    return [ax.get_title() for ax in figure.axes if ax.get_title()]


def test_the_pictures_read_the_class_names() -> None:
    pytest.importorskip("matplotlib")
    model = fashion_model()
    x = images(300)
    y = np.random.default_rng(1).integers(0, 10, 300)
    confusion = plot.confusion(model, x, y)
    matrix = confusion.axes[0]
    assert [t.get_text() for t in matrix.get_xticklabels()] == list(FASHION)
    assert [t.get_text() for t in matrix.get_yticklabels()] == list(FASHION)
    assert matrix.get_xlabel() == "predicted class" and matrix.get_ylabel() == "true class"
    mistakes = titles(plot.mistakes(model, x, y, n=6))
    assert len(mistakes) == 6
    for title in mistakes:  # "#12: Trouser, read Bag\np = 0.71"
        true, read = title.split("\n")[0].split(": ", 1)[1].split(", read ")
        assert true in FASHION and read in FASHION
    assert titles(plot.weights(model)) == list(FASHION)


def test_the_pictures_of_digits_say_digit() -> None:
    pytest.importorskip("matplotlib")
    model = mn.preset("perceptron")
    assert titles(plot.weights(model)) == [f"digit {d}" for d in range(10)]
    x, y = images(100), np.arange(100) % 10
    assert plot.confusion(model, x, y).axes[0].get_xlabel() == "predicted digit"


def test_mistakes_draw_uint8_images_on_their_scale() -> None:
    pytest.importorskip("matplotlib")
    model = fashion_model(input_dtype="uint8")
    x = np.random.default_rng(0).integers(0, 256, (100, 784)).astype(np.uint8)
    figure = plot.mistakes(model, x, np.arange(100) % 10, n=3)
    assert figure.axes[0].images[0].get_clim() == (0, 255)


# ---- the command line ------------------------------------------------------------------------

def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def no_default_data(monkeypatch, tmp_path):
    """Nothing found but what a test points at: an empty cache, no environment folders."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MNISTNET_DATA", raising=False)
    monkeypatch.delenv("MNISTNET_DATASETS", raising=False)


def test_predict_prints_the_class_names(capsys, tmp_path) -> None:
    fashion_model().save(tmp_path / "fashion.npz")
    mn.preset("perceptron").save(tmp_path / "digits.npz")
    np.save(tmp_path / "x.npy", images(2))
    code, out, _ = run(capsys, "predict", tmp_path / "fashion.npz", tmp_path / "x.npy")
    assert code == 0
    for i, line in enumerate(out.splitlines()):
        name, p = line.split(f"x.npy[{i}]: ")[1].rsplit(" (p=", 1)
        assert name in FASHION and p.endswith(")")
    code, out, _ = run(capsys, "predict", tmp_path / "digits.npz", tmp_path / "x.npy")
    assert out.splitlines()[0].split(": ")[1].startswith("digit ")


def test_predict_names_an_older_model_by_its_dataset(capsys, tmp_path) -> None:
    mn.preset("perceptron").save(tmp_path / "old.npz")
    np.save(tmp_path / "x.npy", images(1))
    code, out, _ = run(capsys, "predict", tmp_path / "old.npz", tmp_path / "x.npy",
                       "--dataset", "fashion-mnist")
    assert code == 0 and out.split(": ")[1].rsplit(" (p=")[0] in FASHION
    fashion_model().save(tmp_path / "fashion.npz")
    code, _, err = run(capsys, "predict", tmp_path / "fashion.npz", tmp_path / "x.npy",
                       "--dataset", "kmnist")
    assert code == 2 and "trained on fashion-mnist" in err and "not kmnist's" in err


def test_predict_gives_a_rescaling_model_uint8_pixels_as_they_are(capsys, tmp_path) -> None:
    model = fashion_model(input_dtype="uint8")
    model.save(tmp_path / "model.npz")
    x = np.random.default_rng(2).integers(0, 256, (3, 28, 28)).astype(np.uint8)
    np.save(tmp_path / "x.npy", x)
    code, out, _ = run(capsys, "predict", tmp_path / "model.npz", tmp_path / "x.npy")
    assert code == 0
    outputs = model.predict(x.reshape(3, -1))
    for line, row in zip(out.splitlines(), outputs, strict=True):
        assert line.endswith(f"{FASHION[int(row.argmax())]} (p={row.max():.3f})")


@pytest.mark.parametrize("command", ["train", "evaluate", "plot", "bench", "sweep", "predict",
                                     "demo"])
def test_an_unknown_dataset_lists_the_known_ones(capsys, tmp_path, command) -> None:
    args = {"train": ["--preset", "perceptron"], "evaluate": ["m.npz"], "plot": ["m.npz",
            "--out", tmp_path], "bench": [], "sweep": ["--grid", "seed=0", "--out",
            tmp_path / "s.csv"], "predict": ["m.npz", "x.npy"], "demo": ["m.npz"]}[command]
    code, _, err = run(capsys, command, *args, "--dataset", "fashion")
    assert code == 2
    assert "unknown dataset 'fashion' (did you mean 'fashion-mnist'?)" in err
    assert "known datasets: mnist, fashion-mnist, kmnist, emnist-digits" in err


def test_a_dataset_folder_missing_files_is_named(capsys, tmp_path) -> None:
    folder = write_dataset(tmp_path / "fashion", 64, 32)
    (folder / "t10k-labels-idx1-ubyte").unlink()
    fashion_model().save(tmp_path / "model.npz")
    code, _, err = run(capsys, "evaluate", tmp_path / "model.npz", "--data", folder)
    assert code == 2 and "missing t10k-labels-idx1-ubyte[.gz]" in err
    code, _, err = run(capsys, "train", "--preset", "perceptron", "--epochs", "1",
                       "--dataset", "fashion-mnist", "--data", folder)
    assert code == 2 and "missing t10k-labels-idx1-ubyte[.gz]" in err


def test_a_model_whose_outputs_do_not_fit_the_dataset_is_refused(capsys, tmp_path) -> None:
    mn.preset("perceptron").save(tmp_path / "model.npz")
    code, _, err = run(capsys, "evaluate", tmp_path / "model.npz", "--dataset",
                       "emnist-letters")
    assert code == 2
    assert "the model has 10 outputs but emnist-letters has 26 classes" in err


def test_train_on_a_dataset_keeps_its_names_and_evaluate_finds_it_again(
        capsys, tmp_path, monkeypatch, no_default_data) -> None:
    """train --dataset fashion-mnist --uint8 (from $MNISTNET_DATASETS/fashion-mnist), the
    same weights as the float route; evaluate and plot then read Fashion-MNIST by
    themselves, and the model file names its classes."""
    root = tmp_path / "datasets"
    write_dataset(root / "fashion-mnist", 96, 40, seed=7)
    monkeypatch.setenv("MNISTNET_DATASETS", str(root))
    for route, extra in (("bytes", ["--uint8"]), ("floats", [])):
        code, out, err = run(capsys, "train", "--preset", "perceptron", "--epochs", "2",
                             "--dataset", "fashion-mnist", "--quiet", "--save",
                             tmp_path / f"{route}.npz", *extra)
        assert code == 0, err
    as_bytes, as_floats = (mn.Model.load(tmp_path / f"{r}.npz") for r in ("bytes", "floats"))
    assert type(as_bytes.layers[0]) is mn.Rescaling
    np.testing.assert_array_equal(as_bytes.params, as_floats.params)
    assert as_bytes.class_names == FASHION and as_bytes.dataset == "fashion-mnist"
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    code, out, err = run(capsys, "evaluate", tmp_path / "bytes.npz")
    assert code == 0, err
    assert float(out.split("accuracy: ")[1]) == pytest.approx(accuracy, abs=1e-4)


def test_resume_goes_on_with_the_model_dataset(capsys, tmp_path, no_default_data) -> None:
    folder = write_dataset(tmp_path / "fashion", 64, 32)
    fashion_model().save(tmp_path / "model.npz")
    code, _, err = run(capsys, "train", "--resume", tmp_path / "model.npz", "--epochs", "1",
                       "--dataset", "kmnist", "--data", folder)
    assert code == 2 and "--resume model was trained on fashion-mnist" in err
    code, _, err = run(capsys, "train", "--resume", tmp_path / "model.npz", "--epochs", "1",
                       "--data", folder, "--quiet")
    assert code == 0, err


def test_sweep_trains_on_a_dataset_and_names_the_best_model(tmp_path) -> None:
    folder = write_dataset(tmp_path / "fashion", 64, 32)
    table = sweep({"seed": [0, 1]}, out=tmp_path / "sweep.csv", preset="perceptron", epochs=1,
                  data=folder, dataset="fashion-mnist", scheduler="sequential",
                  save_best=tmp_path / "best.npz", progress=False)
    assert len(table.ordered()) == 2
    best = mn.Model.load(tmp_path / "best.npz")
    assert best.class_names == FASHION and best.dataset == "fashion-mnist"


def test_bench_on_a_dataset_with_the_uint8_route(tmp_path) -> None:
    folder = write_dataset(tmp_path / "fashion", 96, 32)
    result = bench.run_comparison(["perceptron"], data=str(folder), dataset="fashion-mnist",
                                  uint8=True)
    assert result["setup"]["dataset"] == "fashion-mnist"
    (row,) = result["uint8"]
    assert row["same_weights"] and row["uint8_fit_peak_mb"] > 0
    assert "uint8 through Rescaling" in bench.format_report(result)
