"""Build mnistnet's compiled extensions.

Two Cython modules: mnistnet._kernels (the kernels, linked with the C core in csrc/) and
mnistnet.fast (their Python wrappers, which cimport _kernels). The C core's GEMM exists once
per instruction set; each of those files is compiled with its own ISA flags and the right one
is picked at run time (csrc/mn_dispatch.c), so no file is built for the build machine's CPU
and nothing uses -march=native.

Environment switches (for development and CI):
  MNISTNET_SANITIZE=1      AddressSanitizer + UndefinedBehaviorSanitizer build (gcc/clang)
  MNISTNET_CYTHON_DEBUG=1  Cython boundscheck/wraparound/initializedcheck on
  MNISTNET_NO_OPENMP=1     build without OpenMP even where the compiler has it
"""

import os
import platform
import shutil
import sys
import sysconfig
import tempfile

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CSRC = "csrc"
COMMON_C = ["mn_dispatch.c", "mn_dense.c", "mn_gemm_scalar.c"]


def env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def target_arch():
    """'x86_64', 'arm64' or 'other': the architecture being built for."""
    plat = sysconfig.get_platform().lower()
    machine = platform.machine().lower()
    arch_flags = os.environ.get("ARCHFLAGS", "")  # set by macOS cross builds (cibuildwheel)
    if arch_flags:
        return "arm64" if "arm64" in arch_flags else "x86_64"
    if plat.endswith(("arm64", "aarch64")) or machine in ("arm64", "aarch64"):
        return "arm64"
    if plat.endswith(("x86_64", "amd64")) or machine in ("x86_64", "amd64"):
        return "x86_64"
    return "other"


# Per-ISA GEMM files: (file, macro that enables it, flags by compiler family).
ISA_FILES = {
    "x86_64": [
        ("mn_gemm_sse2.c", "MN_HAVE_SSE2", {"unix": [], "msvc": []}),
        ("mn_gemm_avx2.c", "MN_HAVE_AVX2", {"unix": ["-mavx2", "-mfma"], "msvc": ["/arch:AVX2"]}),
        ("mn_gemm_avx512.c", "MN_HAVE_AVX512",
         {"unix": ["-mavx512f", "-mavx2", "-mfma"], "msvc": ["/arch:AVX512"]}),
    ],
    "arm64": [("mn_gemm_neon.c", "MN_HAVE_NEON", {"unix": [], "msvc": []})],
    "other": [],
}


class BuildExt(build_ext):
    """Per-compiler flags, OpenMP when it links, and per-ISA objects for _kernels."""

    def build_extensions(self):
        family = "msvc" if self.compiler.compiler_type == "msvc" else "unix"
        self.family = family
        self.base_flags = base_compile_flags(family)
        self.omp_compile, self.omp_link = ([], []) if env_flag("MNISTNET_NO_OPENMP") else (
            openmp_flags(self.compiler, family))
        san = sanitizer_flags(family)
        for ext in self.extensions:
            ext.extra_compile_args = self.base_flags + self.omp_compile + san
            ext.extra_link_args = self.omp_link + san
        super().build_extensions()

    def build_extension(self, ext):
        if ext.name == "mnistnet._kernels":
            isa = ISA_FILES[target_arch()]
            ext.define_macros = list(ext.define_macros) + [(m, "1") for _, m, _ in isa]
            ext.extra_objects = list(ext.extra_objects) + self.compile_isa_objects(ext, isa)
        super().build_extension(ext)

    def compile_isa_objects(self, ext, isa):
        objects = []
        for filename, _, flags in isa:
            objects += self.compiler.compile(
                [os.path.join(CSRC, filename)],
                output_dir=self.build_temp,
                macros=[(m, "1") for _, m, _ in isa],
                include_dirs=[CSRC],
                extra_postargs=ext.extra_compile_args + flags[self.family],
                debug=self.debug,
            )
        return objects


def base_compile_flags(family):
    if family == "msvc":
        return ["/O2", "/fp:precise"]
    # No FMA contraction behind our back: every path's rounding is what its code says, so
    # results are bit-identical across thread counts.
    return ["-O3", "-ffp-contract=off", "-fno-strict-aliasing", "-Wno-unused-function"]


def sanitizer_flags(family):
    if not env_flag("MNISTNET_SANITIZE"):
        return []
    if family == "msvc":
        return ["/fsanitize=address"]
    return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g"]


def openmp_flags(compiler, family):
    """(compile flags, link flags) for OpenMP, or ([], []) if a test program won't build."""
    if family == "msvc":
        return ["/openmp"], []
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":  # Apple clang: libomp from Homebrew or the wheel's vendoring
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
    for cflags, lflags in candidates:
        if compiles_and_links(compiler, "#include <omp.h>\nint main(void)"
                              "{ return omp_get_num_procs() > 0 ? 0 : 1; }\n", cflags, lflags):
            return cflags, lflags
    print("mnistnet: OpenMP not available, building single-threaded", file=sys.stderr)
    return [], []


def compiles_and_links(compiler, source, cflags, lflags):
    tmp = tempfile.mkdtemp(prefix="mnistnet-omp-")
    try:
        path = os.path.join(tmp, "check.c")
        with open(path, "w") as f:
            f.write(source)
        with open(os.devnull, "w") as devnull:
            old_out, old_err = os.dup(1), os.dup(2)
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            try:
                objs = compiler.compile([path], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "check", output_dir=tmp, extra_postargs=lflags)
            finally:
                os.dup2(old_out, 1)
                os.dup2(old_err, 2)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def kernel_directives():
    """_kernels.pyx indexes only raw pointers it has checked; the debug build turns every
    Cython check back on."""
    debug = env_flag("MNISTNET_CYTHON_DEBUG")
    return {"language_level": 3, "boundscheck": debug, "wraparound": debug,
            "initializedcheck": debug, "cdivision": not debug}


kernels = Extension(
    "mnistnet._kernels",
    sources=["mnistnet/_kernels.pyx"] + [os.path.join(CSRC, f) for f in COMMON_C],
    include_dirs=[CSRC],
    depends=[os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith((".h", ".c"))],
)
# fast.pyx is argument checking around kernel calls: Cython's default checks stay on.
wrappers = Extension("mnistnet.fast", sources=["mnistnet/fast.pyx"])
force = env_flag("MNISTNET_CYTHON_DEBUG")

setup(
    ext_modules=cythonize([kernels], compiler_directives=kernel_directives(), force=force)
    + cythonize([wrappers], compiler_directives={"language_level": 3}, force=force),
    cmdclass={"build_ext": BuildExt},
)
