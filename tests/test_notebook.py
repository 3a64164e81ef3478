"""mnistnet in a Jupyter notebook, run through nbclient on an IPython kernel: a figure is shown
inline without `%matplotlib inline`, and what prints (model.summary(), mn.show_config()) is
shown once, never again as an escaped string.

Needs nbclient, nbformat and ipykernel (the `test` extra) and matplotlib; skips without them,
except that MNISTNET_REQUIRE=notebook makes that a failure.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

NEEDED = ("nbclient", "nbformat", "ipykernel", "matplotlib")
TIMEOUT = 300  # seconds for the whole notebook (a kernel starts slowly on a busy machine)

CELLS = [
    "import mnistnet as mn\nfrom mnistnet import plot",
    "model = mn.preset('perceptron')\nmodel.summary()",
    "mn.show_config()",
    "plot.weights(model)",
    "print(model.loss)",
]


def required(what: str) -> bool:
    """True if MNISTNET_REQUIRE (comma-separated) lists `what`: skipping it is then a failure."""
    return what in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(",")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> list[list[dict]]:
    """Each cell's outputs, after running CELLS as one notebook on a fresh kernel."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        reason = f"the notebook test needs {', '.join(missing)} (pip install \".[test]\")"
        if required("notebook"):
            pytest.fail(f"{reason} (MNISTNET_REQUIRE={os.environ['MNISTNET_REQUIRE']})")
        pytest.skip(reason)
    import nbclient
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
    client = nbclient.NotebookClient(
        notebook, timeout=TIMEOUT, kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path_factory.mktemp("notebook"))}})
    _use_this_interpreter(client)
    client.execute()
    return [cell.outputs for cell in notebook.cells]


def _use_this_interpreter(client) -> None:
    """Start the kernel with sys.executable (the one that has mnistnet), whatever other
    'python3' kernel spec the machine has."""
    from jupyter_client.kernelspec import KernelSpec

    spec = KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f",
                            "{connection_file}"], display_name="mnistnet test",
                      language="python")

    class ThisInterpreter(client.kernel_manager_class):
        @property
        def kernel_spec(self):
            return spec

    client.kernel_manager_class = ThisInterpreter


def texts(cell_outputs: list[dict]) -> list[str]:
    """Every piece of text a cell showed: streams and the text of results."""
    shown = []
    for output in cell_outputs:
        if output["output_type"] == "stream":
            shown.append(output["text"])
        elif "data" in output and "text/plain" in output["data"]:
            shown.append(output["data"]["text/plain"])
    return shown


def results(cell_outputs: list[dict]) -> list[dict]:
    return [o for o in cell_outputs if o["output_type"] in ("execute_result", "display_data")]


def test_a_figure_shows_inline(outputs) -> None:
    figure = results(outputs[3])
    assert len(figure) == 1, outputs[3]
    assert "image/png" in figure[0]["data"], figure[0]["data"].keys()


def test_summary_is_printed_once_and_returns_nothing(outputs) -> None:
    assert results(outputs[1]) == [], outputs[1]  # no repr of a returned string
    (printed,) = texts(outputs[1])
    assert "loss mse" in printed and "\\n" not in printed


def test_show_config_is_printed_once_and_returns_nothing(outputs) -> None:
    assert results(outputs[2]) == [], outputs[2]
    (printed,) = texts(outputs[2])
    assert printed.startswith("mnistnet ") and "simd path:" in printed and "{" not in printed


def test_no_cell_failed(outputs) -> None:
    assert texts(outputs[4]) == ["mse\n"]
    assert not [o for cell in outputs for o in cell if o["output_type"] == "error"]
