"""Using the installed package from outside Python code: from Cython and from C.

* Cython: a module in a temporary folder does `from mnistnet._kernels cimport dense_forward,
  relu_forward` (reading the .pxd the package ships), is built with setuptools + Cython in a
  subprocess, and its results are checked against mnistnet.reference.
* C: tests/embedding/use_kernels.c is compiled against mnistnet.get_include()/mn_kernels.h
  and linked with the static library in mnistnet.get_library_dir(), run under every SIMD
  path, and its output is checked against NumPy.

Both need a working C compiler and skip without one (e.g. the wheel test run with CC=false).
MNISTNET_REQUIRE=compiler (set by .ci/run) turns those skips into failures, and
MNISTNET_REQUIRE=installed checks that the tests import an installed mnistnet (site-packages),
not the source folder.
"""

from __future__ import annotations

import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tolerances import FORWARD_RTOL, assert_close

import mnistnet
from mnistnet import fast, reference

EMBEDDING = Path(__file__).parent / "embedding"
TIMEOUT = 300  # seconds for one build or run (a loaded 2-core machine compiles slowly)


def required(what: str) -> bool:
    """True if MNISTNET_REQUIRE (comma-separated) lists `what`: skipping it is then a failure."""
    return what in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(",")


def skip_or_fail(what: str, reason: str):
    if required(what):
        pytest.fail(f"{reason} (MNISTNET_REQUIRE={os.environ['MNISTNET_REQUIRE']})")
    pytest.skip(reason)


# ---- the package under test ----------------------------------------------------------------

def test_the_installed_package_is_tested() -> None:
    """With MNISTNET_REQUIRE=installed, mnistnet must come from site-packages: a flat layout
    would otherwise let the uncompiled source folder shadow the installed wheel."""
    package = Path(mnistnet.__file__).resolve().parent
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    installed = package.parent in site
    if required("installed"):
        assert installed, f"mnistnet was imported from {package}, not from {sorted(site)}"
    elif not installed:
        pytest.skip(f"mnistnet is imported from {package} (an editable or in-place build)")
    assert not (package.parent / "pyproject.toml").exists()


def test_the_package_ships_its_c_and_cython_api() -> None:
    package = Path(mnistnet.__file__).parent
    assert (package / "_kernels.pxd").is_file()
    header = Path(mnistnet.get_include()) / "mn_kernels.h"
    assert "mn_dense_forward" in header.read_text()
    source = Path(__file__).resolve().parents[1] / "csrc" / "mn_kernels.h"
    if source.is_file():  # in a checkout or an unpacked sdist: the copy is current
        assert header.read_text() == source.read_text(), f"{header} is stale"
    assert static_library().is_file()


def static_library() -> Path:
    name = "mn_kernels.lib" if sys.platform == "win32" else "libmn_kernels.a"
    return Path(mnistnet.get_library_dir()) / name


# ---- a working C compiler ------------------------------------------------------------------

def c_compiler() -> list[str]:
    """The compiler Python's own extensions are built with ($CC, else sysconfig's CC, else
    cc), as an argv prefix; skips (or fails, see `required`) if it can't build a program."""
    if sys.platform == "win32":
        skip_or_fail("compiler", "the C embedding test drives a Unix-style cc, not MSVC")
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        skip_or_fail("compiler", f"no C compiler: {cc!r} is not on PATH")
    return cc


@pytest.fixture(scope="module")
def cc(tmp_path_factory) -> list[str]:
    compiler = c_compiler()
    tmp = tmp_path_factory.mktemp("cc-probe")
    (tmp / "probe.c").write_text("int main(void) { return 0; }\n")
    probe = subprocess.run([*compiler, "probe.c", "-o", "probe"], cwd=tmp, capture_output=True,
                           text=True, timeout=TIMEOUT)
    if probe.returncode != 0:
        output = (probe.stderr or probe.stdout).strip()[:300]
        skip_or_fail("compiler", f"no working C compiler: `{' '.join(compiler)}` can't build a "
                                 f"program{': ' + output if output else ''}")
    return compiler


# ---- from Cython ---------------------------------------------------------------------------

BUILD_SCRIPT = textwrap.dedent("""\
    import sys
    from Cython.Build import cythonize
    from setuptools import setup

    setup(name="mn_embed", ext_modules=cythonize(["mn_embed.pyx"], include_path=sys.argv[1:]),
          script_args=["build_ext", "--inplace"])
""")


@pytest.fixture(scope="module")
def embedded_module(cc, tmp_path_factory):
    """tests/embedding/mn_embed.pyx built in a temporary folder against the installed package
    and imported."""
    pytest.importorskip("Cython", reason="the Cython embedding test needs Cython (the 'test' "
                                         "extra has it)")
    import importlib.util

    tmp = tmp_path_factory.mktemp("cython-embed")
    shutil.copy(EMBEDDING / "mn_embed.pyx", tmp)
    (tmp / "build_embed.py").write_text(BUILD_SCRIPT)
    # Cython finds `mnistnet/_kernels.pxd` under the folder holding the imported package:
    # site-packages for an installed mnistnet (on sys.path anyway), the checkout for an
    # editable install.
    package_root = str(Path(mnistnet.__file__).resolve().parent.parent)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "build_embed.py", package_root], cwd=tmp, env=env,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"building mn_embed failed:\n{result.stdout}\n{result.stderr}"
    (built,) = tmp.glob("mn_embed*" + sysconfig.get_config_var("EXT_SUFFIX"))
    spec = importlib.util.spec_from_file_location("mn_embed", built)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(("B", "C", "OC"), [(1, 1, 1), (7, 33, 10), (32, 784, 128)])
def test_cython_module_cimports_the_kernels(embedded_module, simd_path, B, C, OC) -> None:
    rng = np.random.default_rng(B * 1000 + C + OC)
    inp = rng.standard_normal((B, C)).astype(np.float32)
    weight = rng.standard_normal((C, OC)).astype(np.float32)
    bias = rng.standard_normal(OC).astype(np.float32)
    out = np.full((B, OC), np.nan, dtype=np.float32)

    got = embedded_module.dense_relu(out, inp, weight, bias)

    want = reference.relu_forward(None, reference.dense_forward(None, inp, weight, bias))
    assert np.shares_memory(np.asarray(got), out)
    assert_close(out, want, FORWARD_RTOL, f"cimported dense_forward+relu_forward {simd_path} "
                                          f"({B}, {C}) x ({C}, {OC})")


def test_cython_module_checks_shapes(embedded_module) -> None:
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="shapes don't fit"):
        embedded_module.dense_relu(np.empty((2, 4), np.float32), x,
                                   np.ones((4, 4), np.float32), np.ones(4, np.float32))


# ---- from C --------------------------------------------------------------------------------

def openmp_link_flags() -> list[str]:
    if not fast.openmp_enabled():
        return []
    if sys.platform != "darwin":
        return ["-fopenmp"]
    roots = [os.environ.get("OpenMP_ROOT", ""), "/opt/homebrew/opt/libomp",
             "/usr/local/opt/libomp"]
    return [f"-L{root}/lib" for root in roots if root and os.path.isdir(root)] + ["-lomp"]


@pytest.fixture(scope="module")
def c_program(cc, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("c-embed")
    exe = tmp / "use_kernels"
    # On macOS, build for the architecture this Python runs as (x86_64 under Rosetta too).
    arch = ["-arch", platform.machine()] if sys.platform == "darwin" else []
    command = [*cc, *arch, "-O2", str(EMBEDDING / "use_kernels.c"), f"-I{mnistnet.get_include()}",
               str(static_library()), *openmp_link_flags(), "-lm", "-o", str(exe)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, (f"{shlex.join(command)} failed:\n"
                                    f"{result.stdout}\n{result.stderr}")
    return exe


def run_c_program(exe: Path, *args: str) -> dict[str, object]:
    result = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{exe.name} {' '.join(args)}: {result.stderr}"
    lines = iter(result.stdout.splitlines())
    info: dict[str, object] = {}
    for line in lines:
        key, _, rest = line.partition(" ")
        if key in ("dense", "sgemm"):
            rows, inner, cols = map(int, rest.split())
            values = np.array(next(lines).split(), dtype=np.float64).reshape(rows, cols)
            info[key] = ((rows, inner, cols), values)
        else:
            info[key] = rest
    return info


def fill(n: int, mul: int, mod: int, scale: float) -> np.ndarray:
    """use_kernels.c's fill(), in NumPy."""
    return ((np.arange(n) * mul) % mod - mod // 2) * scale


def test_c_program_matches_the_extension(c_program) -> None:
    info = run_c_program(c_program)
    assert info["openmp"] == str(int(fast.openmp_enabled()))
    assert info["supported"].split() == [p for p in fast.SIMD_PATHS if fast.simd_supported(p)]
    if not os.environ.get("MNISTNET_SIMD"):
        # Same detection as the extension: the program picks the path mnistnet picked.
        fast.select_simd(None)
        assert info["simd"] == fast.simd_path()


def test_c_program_results(c_program, simd_path) -> None:
    info = run_c_program(c_program, simd_path)
    assert info["simd"] == simd_path

    (B, C, OC), dense = info["dense"]
    inp = fill(B * C, 7, 13, 0.125).reshape(B, C)
    weight = fill(C * OC, 5, 11, 0.0625).reshape(C, OC)
    bias = fill(OC, 1, 3, 0.5)
    # Every value is a small multiple of 1/128: exact in float32 whatever the order of sums.
    np.testing.assert_array_equal(dense, inp @ weight + bias)

    (M, K, N), sgemm = info["sgemm"]
    a = fill(M * K, 3, 9, 0.125).reshape(M, K)
    b = fill(K * N, 11, 7, 0.0625).reshape(K, N)
    np.testing.assert_array_equal(sgemm, a @ b)
    assert np.count_nonzero(sgemm) > sgemm.size // 2  # a check that can fail


def test_c_program_rejects_an_unknown_path(c_program) -> None:
    result = subprocess.run([str(c_program), "mmx"], capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 2
    assert "not available" in result.stderr
