"""The int8 C on a microcontroller core, emulated: each generated file, compiled with
arm-none-eabi-gcc -mcpu=cortex-m4 -mthumb -Os (and -std=c99 -Wall -Wextra -Werror -pedantic),
linked with tests/cortex_m/ (vector table, reset handler, linker script for QEMU's
mps2-an386) and newlib's semihosting library, runs under qemu-system-arm on 100 images and
prints the twin's int8 outputs bit for bit; the model's object has no .data or .bss, and
built with -DMNISTNET_NO_FLOAT it needs no soft-float routine at all.

Needs Debian's gcc-arm-none-eabi, libnewlib-arm-none-eabi and qemu-system-arm: without them
the tests skip, naming what is missing; MNISTNET_REQUIRE=cortex-m makes that a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from int8_models import (
    CORTEX_M,
    Case,
    case,
    mnist,
    parse_driver_output,
    run,
    trained_case,
    write_driver,
    write_inputs,
)
from test_export import TIMEOUT, skip_or_fail

from mnistnet import export_int8

N_IMAGES = 100
TOOLS = ("arm-none-eabi-gcc", "arm-none-eabi-size", "arm-none-eabi-nm", "qemu-system-arm")
PACKAGES = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"
ARM = ["-mcpu=cortex-m4", "-mthumb", "-Os"]
STRICT = ["-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic"]
LINK = [*ARM, "--specs=nano.specs", "--specs=rdimon.specs", "-nostartfiles",
        "-T", str(CORTEX_M / "link.ld")]
QEMU = ["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-monitor", "none",
        "-semihosting-config", "enable=on,target=native", "-kernel"]
FLOAT_TOLERANCE = 1e-6  # newlib's expf against NumPy's
SOFT_FLOAT = re.compile(r"__aeabi_([fd]\w+|[ul]*[il]2[fd])$|^(expf|exp)$")


def missing_tools() -> list[str]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if "arm-none-eabi-gcc" not in missing:
        found = subprocess.run(["arm-none-eabi-gcc", *ARM, "-print-file-name=librdimon.a"],
                               capture_output=True, text=True).stdout.strip()
        if not Path(found).is_absolute():
            missing.append("newlib's librdimon.a (libnewlib-arm-none-eabi)")
    if "qemu-system-arm" not in missing:
        machines = subprocess.run(["qemu-system-arm", "-M", "help"], capture_output=True,
                                  text=True).stdout
        if "mps2-an386" not in machines:
            missing.append("a qemu-system-arm with the mps2-an386 machine")
    return missing


@pytest.fixture(scope="module")
def toolchain() -> None:
    missing = missing_tools()
    if missing:
        skip_or_fail("cortex-m", f"the Cortex-M tests need {', '.join(missing)} (Debian: "
                                 f"{PACKAGES})")


def arm_gcc(args: list[str], cwd: Path) -> None:
    result = subprocess.run(["arm-none-eabi-gcc", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"arm-none-eabi-gcc {' '.join(args)}:\n{result.stderr}"


def size(obj: Path) -> dict[str, int]:
    """arm-none-eabi-size's text, data and bss of an object or program."""
    out = subprocess.run(["arm-none-eabi-size", str(obj)], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    text, data, bss = (int(v) for v in out[1].split()[:3])
    return {"text": text, "data": data, "bss": bss}


def undefined(obj: Path) -> set[str]:
    out = subprocess.run(["arm-none-eabi-nm", "-u", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def build_for_cortex_m(c: Case, folder: Path, flags: list[str] = ()) -> tuple[Path, Path]:
    """(model object, program) for the case, built in folder."""
    _, source = c.q.export_c(folder, c.c_name)
    driver = write_driver(folder, c.c_name)
    model = folder / "model.o"
    arm_gcc([*ARM, *STRICT, *flags, "-fstack-usage", "-c", source.name, "-o", model.name],
            folder)
    arm_gcc([*ARM, *STRICT, *flags, "-c", driver.name, "-o", "driver.o"], folder)
    # The startup code converts the stack's address to a vector: not ISO C, so no -pedantic.
    arm_gcc([*ARM, "-std=c99", "-Wall", "-Wextra", "-Werror", "-c",
             str(CORTEX_M / "startup.c"), "-o", "startup.o"], folder)
    program = folder / "program.elf"
    arm_gcc([*LINK, "startup.o", "model.o", "driver.o", "-lm", "-o", program.name], folder)
    return model, program


def run_on_cortex_m(c: Case, program: Path, with_float: bool = True) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    write_inputs(program.parent, c.x_int8[:N_IMAGES], c.x[:N_IMAGES] if with_float else None)
    output = run([*QEMU, program.name], program.parent)
    return parse_driver_output(output, c.q.n_outputs)


def get_case(name: str) -> Case:
    if name.startswith("trained-"):
        if mnist() is None:
            pytest.skip("set MNISTNET_DATA to the MNIST folder: this case trains on it")
        return trained_case(name.removeprefix("trained-"))
    return case(name)


@pytest.mark.parametrize("name", ["perceptron", "cross-entropy", "odd-convnet", "odd-pools",
                                  "odd-lookups", "lenet5", "trained-convnet",
                                  "trained-lenet5"])
def test_cortex_m4_matches_the_twin(name: str, toolchain, tmp_path: Path) -> None:
    c = get_case(name)
    model, program = build_for_cortex_m(c, tmp_path)
    got_int8, got_float = run_on_cortex_m(c, program)
    want = c.q.predict_int8(c.x_int8[:N_IMAGES])
    assert got_int8.shape == (N_IMAGES, c.q.n_outputs)
    assert np.array_equal(got_int8, want), (
        f"{int((got_int8 != want).sum())} int8 outputs differ from the twin's")
    error = np.abs(got_float - c.q.predict(c.x[:N_IMAGES])).max()
    assert error <= FLOAT_TOLERANCE, f"max |Cortex-M4 predict - q.predict| = {error:.3g}"
    sizes = export_int8.c_sizes(c.q)
    model_size = size(model)
    print(f"{name}: model.o {model_size}, program.elf {size(program)}, {sizes}")
    assert model_size["data"] == model_size["bss"] == 0, model_size
    assert model_size["text"] >= sizes["weights_bytes"]


def stack_frames(folder: Path) -> dict[str, int]:
    """-fstack-usage's frame size of each function in model.su."""
    frames = {}
    for line in (folder / "model.su").read_text().splitlines():
        where, frame, _ = line.split("\t")
        frames[where.rsplit(":", 1)[-1]] = int(frame)
    return frames


@pytest.mark.parametrize("name", ["convnet", "lenet5"])
def test_cortex_m4_stack_holds_the_header_figures(name: str, toolchain, tmp_path: Path) -> None:
    """predict_int8's frame is the header's SCRATCH_BYTES and a little more (registers,
    alignment); predict's the int8 input and output and a little more."""
    c = case(name)
    build_for_cortex_m(c, tmp_path)
    frames, sizes = stack_frames(tmp_path), export_int8.c_sizes(c.q)
    frame = frames[f"{c.c_name}_predict_int8"]
    assert sizes["scratch_bytes"] <= frame <= sizes["scratch_bytes"] + 256, (frame, sizes)
    io = sizes["predict_scratch_bytes"] - sizes["scratch_bytes"]
    assert io <= frames[f"{c.c_name}_predict"] <= io + 256


def test_cortex_m4_integer_build_needs_no_float(toolchain, tmp_path: Path) -> None:
    """Soft float: the float build calls the compiler's float routines (the input's
    quantisation, expf); built with -DMNISTNET_NO_FLOAT, the model calls none, and the
    integer entry point still gives the twin's outputs."""
    c = case("cross-entropy")
    model, _ = build_for_cortex_m(c, tmp_path)
    assert {s for s in undefined(model) if SOFT_FLOAT.search(s)} >= {"__aeabi_fdiv", "expf"}
    (tmp_path / "integer").mkdir()
    model, program = build_for_cortex_m(c, tmp_path / "integer", ["-DMNISTNET_NO_FLOAT"])
    assert {s for s in undefined(model) if SOFT_FLOAT.search(s)} == set()
    got_int8, got_float = run_on_cortex_m(c, program, with_float=False)
    assert got_float.size == 0
    assert np.array_equal(got_int8, c.q.predict_int8(c.x_int8[:N_IMAGES]))
