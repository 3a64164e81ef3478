"""The documentation's Python runs as written: every ```python block of README.md and of the
pages in docs/, each pasted into a fresh interpreter (its own process, an empty folder as the
working directory) with MNIST available through $MNISTNET_DATA.

A block that imports an optional package (scikit-learn, matplotlib, onnx, onnxruntime)
skips when it is missing, unless MNISTNET_REQUIRE names it ("sklearn", "plot", "onnx").
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

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
