"""The documentation runs as written, README.md and the pages in docs/:

- every ```python block, each pasted into a fresh interpreter (its own process, an empty
  folder as the working directory) with MNIST available through $MNISTNET_DATA;
- the shell commands of each page's ```bash blocks, a page's in its own fresh folder, in their
  order, as a user would type them after installing: every `mnistnet` command but `bench`
  (a benchmark), `cc` and a program an earlier command built (`./main`); the setup commands
  around them (venv, pip, cd, ...) are left out, and ```sh blocks (building wheels, the C
  API, benchmarks) are not run. A ```c block whose first line is `/* NAME.c */` is written
  to NAME.c first. Trainings are shortened: `--epochs` becomes $MNISTNET_DOCS_EPOCHS (default
  1) on the first 6,000 training images; `mnistnet demo` gets `--port 0`, is asked for its
  page, then stopped with Ctrl-C.

A block that imports an optional package (scikit-learn, matplotlib, onnx, onnxruntime)
skips when it is missing, unless MNISTNET_REQUIRE names it ("sklearn", "plot", "onnx").
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
# module a block imports -> (package to check, MNISTNET_REQUIRE name)
OPTIONAL = {"sklearn": ("sklearn", "sklearn"), "mnistnet.sklearn": ("sklearn", "sklearn"),
            "matplotlib": ("matplotlib", "plot"), "mnistnet.plot": ("matplotlib", "plot"),
            "onnxruntime": ("onnxruntime", "onnx"), "onnx": ("onnx", "onnx")}


def blocks() -> list[tuple[str, int, str]]:
    """(page, block number, code) of every Python block."""
    found = []
    for page in PAGES:
        if page.exists():
            for i, code in enumerate(BLOCK.findall(page.read_text(encoding="utf-8")), 1):
                found.append((page.relative_to(ROOT).as_posix(), i, code))
    return found


def required(what: str) -> bool:
    return what in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(",")


def missing_optional(code: str) -> str | None:
    """The MNISTNET_REQUIRE name of an optional package the code imports and that is not
    installed, or None."""
    imported = re.findall(r"^\s*(?:import|from)\s+([\w.]+)", code, re.MULTILINE)
    for module in imported:
        package, name = OPTIONAL.get(module, (None, None))
        if package and importlib.util.find_spec(package) is None:
            return name
    return None


BLOCKS = blocks()


def test_the_pages_have_python_to_check():
    pages = {page for page, _, _ in BLOCKS}
    assert {"README.md", "docs/tutorial.md"} <= pages, pages


@pytest.mark.parametrize(("page", "number", "code"), BLOCKS,
                         ids=[f"{page}-{number}" for page, number, _ in BLOCKS])
def test_python_block_runs_as_written(page, number, code, tmp_path):
    if not os.environ.get("MNISTNET_DATA"):
        pytest.skip("set MNISTNET_DATA to the MNIST folder: the examples load MNIST")
    missing = missing_optional(code)
    if missing and not required(missing):
        pytest.skip(f"{page} block {number} needs the optional {missing} packages")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (f"{page} block {number} failed:\n{code}\n--- stderr:\n"
                                  f"{done.stderr[-3000:]}")


# --------------------------------------------------------------------------- shell commands

SHELL_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
C_FILE_BLOCK = re.compile(r"^```c\n/\* (\w+\.c) \*/\n(.*?)^```", re.MULTILINE | re.DOTALL)
DOCS_TRAIN_ROWS = 6_000
SHELL_TIMEOUT = 900  # seconds for one command (a convnet epoch on a busy machine)


def shell_commands(page: Path) -> list[list[str]]:
    """The commands of the page's ```bash blocks a user runs after installing, in order, each
    as its arguments (see the module's docstring)."""
    found = []
    for block in SHELL_BLOCK.findall(page.read_text(encoding="utf-8")):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and _run_by_the_test(words):
                    found.append(words)
    return found


def _run_by_the_test(words: list[str]) -> bool:
    if words[0] == "mnistnet":
        return words[1:2] != ["bench"]
    return words[0] == "cc" or words[0].startswith("./")


def c_files(page: Path) -> dict[str, str]:
    """{"main.c": its text} for the page's ```c blocks that name their file."""
    return dict(C_FILE_BLOCK.findall(page.read_text(encoding="utf-8")))


def shortened(words: list[str]) -> list[str]:
    """A `mnistnet train` (not a --resume) with --epochs $MNISTNET_DOCS_EPOCHS."""
    if words[:2] != ["mnistnet", "train"] or "--resume" in words:
        return words
    if "--epochs" in words:
        at = words.index("--epochs")
        words = words[:at] + words[at + 2:]
    return [*words, "--epochs", os.environ.get("MNISTNET_DOCS_EPOCHS", "1")]


@pytest.fixture(scope="module")
def short_mnist(tmp_path_factory) -> Path:
    """MNIST's first 6,000 training images and its whole test set, as IDX files."""
    path = os.environ.get("MNISTNET_DATA")
    if not path:
        pytest.skip("set MNISTNET_DATA to the MNIST folder: the commands train on it")
    import mnistnet as mn

    (x, y), (xt, yt) = mn.load_mnist(path, normalize=False)
    folder = tmp_path_factory.mktemp("mnist-short")
    for name, array in (("train-images-idx3-ubyte", x[:DOCS_TRAIN_ROWS]),
                        ("train-labels-idx1-ubyte", y[:DOCS_TRAIN_ROWS]),
                        ("t10k-images-idx3-ubyte", xt), ("t10k-labels-idx1-ubyte", yt)):
        images = array.reshape(len(array), 28, 28) if array.ndim == 2 else array
        header = bytes([0, 0, 8, images.ndim]) + b"".join(
            d.to_bytes(4, "big") for d in images.shape)
        (folder / name).write_bytes(header + np.ascontiguousarray(images).tobytes())
    return folder


def run_command(words: list[str], cwd: Path, env: dict[str, str]) -> str:
    """Run one command of a page (mnistnet through this interpreter); its output."""
    if words[0] == "mnistnet":
        if words[1] == "demo":
            return serve_and_stop([*words, "--port", "0"], cwd, env)
        argv = [sys.executable, "-m", "mnistnet", *shortened(words)[1:]]
    elif words[0] == "cc" and shutil.which("cc") is None:
        if required("compiler"):
            pytest.fail("no C compiler (cc) for the documented C commands")
        pytest.skip("no C compiler (cc) for the documented C commands")
    else:
        argv = words
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=SHELL_TIMEOUT, check=False)
    assert done.returncode == 0, (f"`{shlex.join(words)}` failed ({done.returncode}):\n"
                                  f"{done.stdout[-2000:]}\n--- stderr:\n{done.stderr[-3000:]}")
    return done.stdout


def serve_and_stop(words: list[str], cwd: Path, env: dict[str, str]) -> str:
    """`mnistnet demo ...`: wait for its URL, ask for the page, stop it with Ctrl-C."""
    process = subprocess.Popen([sys.executable, "-m", *words], cwd=cwd, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        assert " at http://" in line, f"`{shlex.join(words)}` printed {line!r}"
        with urllib.request.urlopen(line.split(" at ", 1)[1].split()[0], timeout=30) as reply:
            assert b'<canvas id="pad"' in reply.read()
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, process.returncode
    return line


SHELL_PAGES = [page for page in PAGES if shell_commands(page)]


def test_the_readme_and_the_tutorial_have_commands_to_run():
    names = {page.relative_to(ROOT).as_posix() for page in SHELL_PAGES}
    assert {"README.md", "docs/tutorial.md"} <= names, names
    readme = {" ".join(words[:2]) for words in shell_commands(ROOT / "README.md")}
    assert {"mnistnet train", "mnistnet plot", "mnistnet export", "mnistnet demo",
            "mnistnet evaluate"} <= readme, readme


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX commands and signals")
@pytest.mark.parametrize("page", SHELL_PAGES, ids=[p.relative_to(ROOT).as_posix()
                                                   for p in SHELL_PAGES])
def test_shell_commands_run_as_written(page, short_mnist, tmp_path):
    for package, name in (("matplotlib", "plot"), ("onnx", "onnx")):
        if importlib.util.find_spec(package) is None and not required(name):
            pytest.skip(f"{page.name}'s commands need the optional {package}")
    env = {**os.environ, "MNISTNET_DATA": str(short_mnist), "MPLBACKEND": "Agg"}
    for name, text in c_files(page).items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    for words in shell_commands(page):
        run_command(words, tmp_path, env)


def test_the_readme_saves_the_model_its_next_commands_use():
    """README command 1 trains and saves model.npz, which plot, export and demo then read."""
    first = shell_commands(ROOT / "README.md")[0]
    assert first[:2] == ["mnistnet", "train"] and first[first.index("--save") + 1] == "model.npz"


def test_the_tutorials_steps_draw_into_folders_of_their_own():
    plots = [words for words in shell_commands(ROOT / "docs" / "tutorial.md")
             if words[:2] == ["mnistnet", "plot"]]
    folders = {}
    for words in plots:
        model, out = words[2], words[words.index("--out") + 1]
        folders.setdefault(out, set()).add(model)
    assert all(len(models) == 1 for models in folders.values()), folders


def test_the_tutorial_works_outside_the_clone():
    text = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    assert "shadow" in text and "outside the clone" in text


# --------------------------------------------------------------------------- the README's words


def readme_words() -> str:
    return " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())


def test_the_readme_says_cpu_only_and_how_figures_vary():
    words = readme_words()
    assert "CPU only" in words
    assert "fourth decimal" in words and "bit-identical" in words


def test_the_readmes_onnx_example_shows_a_convnets_input():
    onnx_section = readme_words().split("**ONNX**", 1)[1].split("**C**", 1)[0]
    assert "reshape(-1, 28, 28, 1)" in onnx_section
