"""Build mnistnet's compiled extensions and the C API that ships with them.

Two Cython modules: mnistnet._kernels (the kernels, linked with the C core in csrc/) and
mnistnet.fast (their Python wrappers, which cimport _kernels). The C core's GEMM exists once
per instruction set; each of those files is compiled with its own ISA flags and the right one
is picked at run time (csrc/mn_dispatch.c), so no file is built for the build machine's CPU
and nothing uses -march=native.

The package also gets the C core for C programs, next to the extensions:
  mnistnet/include/mn_kernels.h      the public header (copied from csrc/, its one source)
  mnistnet/lib/libmn_kernels.a       the same C objects the extension links, as a static
                                     library (mn_kernels.lib with MSVC)
and the .pxd files (package data) for `from mnistnet._kernels cimport ...`.

Cython runs when the extensions are built, not when setup.py is imported: an sdist holds the
.pyx sources and never generated C.

Compiler flags per family: gcc/clang get -O3 and -ffp-contract=off, OpenMP through -fopenmp
(Apple clang: -Xpreprocessor -fopenmp -lomp, with Homebrew's libomp if installed); MSVC gets
/O2 /fp:precise and /openmp (the runtime is vcomp140.dll; wheels vendor it with delvewheel).
ISA files: -mavx2 -mfma / -mavx512f (MSVC /arch:AVX2, /arch:AVX512) on x86-64; on AArch64
only the NEON file, which needs no flag.

Environment switches (for development and CI):
  MNISTNET_SANITIZE=1      AddressSanitizer + UndefinedBehaviorSanitizer build (gcc/clang)
  MNISTNET_CYTHON_DEBUG=1  Cython boundscheck/wraparound/initializedcheck on; the generated C
                           goes to build/cython-debug/, never over the release C
  MNISTNET_NO_OPENMP=1     build without OpenMP even where the compiler has it
"""

import os
import platform
import shutil
import sys
import sysconfig
import tempfile

import numpy
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.modified import newer_group

CSRC = "csrc"
COMMON_C = ["mn_dispatch.c", "mn_dense.c", "mn_window.c", "mn_gemm_scalar.c"]
KERNELS = "mnistnet._kernels"
PUBLIC_HEADER = "mn_kernels.h"
STATIC_LIB = "mn_kernels"  # libmn_kernels.a, or mn_kernels.lib with MSVC


def env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def target_arch():
    """'x86_64', 'arm64' or 'other': the architecture being built for."""
    plat = sysconfig.get_platform().lower()
    machine = platform.machine().lower()
    arch_flags = os.environ.get("ARCHFLAGS", "")  # set by macOS cross builds (cibuildwheel)
    if arch_flags:
        if "arm64" in arch_flags and "x86_64" in arch_flags:
            # One compile for two architectures can't pick per-ISA files: build each
            # architecture on its own (cibuildwheel's archs = ["x86_64", "arm64"]).
            sys.exit("mnistnet: universal2 builds are not supported; set ARCHFLAGS to one "
                     "architecture")
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
    """Cythonize, then per-compiler flags, OpenMP when it links, per-ISA objects for
    _kernels, and the C API (header + static library) into the package."""

    def run(self):
        cythonize_extensions(self.extensions, force=self.force)
        super().run()

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
        # setuptools relinks only when a source is newer than the built module, so after a
        # switch (say a sanitizer build, then a normal one) it would keep the other variant's
        # module: a change of flags since the last build in this folder rebuilds everything.
        variant = " ".join(self.base_flags + self.omp_compile + self.omp_link + san
                           + [f"cython-debug={int(env_flag('MNISTNET_CYTHON_DEBUG'))}"])
        stamp = os.path.join(self.build_temp, "mnistnet-build-variant.txt")
        if not self.force:
            try:
                with open(stamp) as f:
                    self.force = f.read() != variant
            except OSError:  # no stamp: built before it existed, or never
                self.force = True
        super().build_extensions()
        os.makedirs(self.build_temp, exist_ok=True)
        with open(stamp, "w") as f:
            f.write(variant)

    def build_extension(self, ext):
        if ext.name != KERNELS:
            super().build_extension(ext)
            return
        # The C core is compiled here, not as extension sources, so that the same objects go
        # into the extension and into the static library C programs link.
        isa = ISA_FILES[target_arch()]
        macros = [(m, "1") for _, m, _ in isa]
        ext.define_macros = list(ext.define_macros) + macros
        groups = [(COMMON_C, [])] + [([f], flags[self.family]) for f, _, flags in isa]
        objects = self.compiler.object_filenames(
            [os.path.join(CSRC, f) for files, _ in groups for f in files],
            output_dir=self.build_temp)
        up_to_date = not (self.force or newer_group(ext.sources + ext.depends,
                                                    self.get_ext_fullpath(ext.name)))
        if not (up_to_date and all(os.path.exists(o) for o in objects)):
            objects = [o for files, flags in groups
                       for o in self.compile_c(files, ext, macros, flags)]
        ext.extra_objects = list(ext.extra_objects) + objects
        super().build_extension(ext)
        self.install_c_api(os.path.dirname(self.get_ext_fullpath(ext.name)), objects)

    def compile_c(self, filenames, ext, macros, flags):
        return self.compiler.compile(
            [os.path.join(CSRC, f) for f in filenames],
            output_dir=self.build_temp,
            macros=macros,
            include_dirs=[CSRC],
            extra_postargs=ext.extra_compile_args + flags,
            depends=ext.depends,
            debug=self.debug,
        )

    def install_c_api(self, package_dir, objects):
        """mn_kernels.h into <package>/include, the C core into <package>/lib."""
        include_dir, lib_dir = c_api_dirs(package_dir)
        os.makedirs(include_dir, exist_ok=True)
        os.makedirs(lib_dir, exist_ok=True)
        self.copy_file(os.path.join(CSRC, PUBLIC_HEADER), include_dir)
        library = self.compiler.library_filename(STATIC_LIB)
        if os.path.exists(os.path.join(lib_dir, library)):
            os.remove(os.path.join(lib_dir, library))  # `ar` would add to a stale archive
        self.compiler.create_static_lib(objects, STATIC_LIB, output_dir=lib_dir,
                                        debug=self.debug)

    def c_api_outputs(self, package_dir):
        include_dir, lib_dir = c_api_dirs(package_dir)
        compiler = self.compiler if hasattr(self.compiler, "library_filename") else None
        library = (compiler.library_filename(STATIC_LIB) if compiler
                   else f"{STATIC_LIB}.lib" if sys.platform == "win32" else f"lib{STATIC_LIB}.a")
        return [os.path.join(include_dir, PUBLIC_HEADER), os.path.join(lib_dir, library)]

    def copy_extensions_to_source(self):
        """--inplace (and editable installs): the C API goes next to the extensions too."""
        super().copy_extensions_to_source()
        for built, dest in self.c_api_mapping():
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            self.copy_file(built, dest, level=self.verbose)

    def c_api_mapping(self):
        """(file in build_lib, its place in the source package) for the C API."""
        source_dir = self.get_finalized_command("build_py").get_package_dir("mnistnet")
        built = self.c_api_outputs(os.path.join(self.build_lib, "mnistnet"))
        return list(zip(built, self.c_api_outputs(source_dir), strict=True))

    def get_outputs(self):
        if self.inplace:  # setuptools lists the in-place files via get_output_mapping
            return super().get_outputs()
        built = self.c_api_outputs(os.path.join(self.build_lib, "mnistnet"))
        return sorted(super().get_outputs() + built)

    def get_output_mapping(self):
        mapping = dict(super().get_output_mapping())
        if self.inplace:
            mapping.update(self.c_api_mapping())
        return dict(sorted(mapping.items()))


def c_api_dirs(package_dir):
    return os.path.join(package_dir, "include"), os.path.join(package_dir, "lib")


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
    # -O1 (after the base -O3, so it wins): what ASan's documentation advises; it builds in
    # half the time and keeps stack traces readable.
    return ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer", "-g", "-O1"]


def openmp_flags(compiler, family):
    """(compile flags, link flags) for OpenMP, or ([], []) if a test program won't build."""
    if family == "msvc":
        return ["/openmp"], []
    candidates = [(["-fopenmp"], ["-fopenmp"])]
    if sys.platform == "darwin":  # Apple clang has no -fopenmp driver flag: libomp directly
        candidates.append((["-Xpreprocessor", "-fopenmp"], ["-lomp"]))
        for prefix in libomp_prefixes():
            candidates.append((["-Xpreprocessor", "-fopenmp", f"-I{prefix}/include"],
                               [f"-L{prefix}/lib", "-lomp"]))
    for cflags, lflags in candidates:
        if compiles_and_links(compiler, "#include <omp.h>\nint main(void)"
                              "{ return omp_get_num_procs() > 0 ? 0 : 1; }\n", cflags, lflags):
            return cflags, lflags
    print("mnistnet: OpenMP not available, building single-threaded", file=sys.stderr)
    return [], []


def libomp_prefixes():
    """Where a keg-only libomp may live on macOS: $OpenMP_ROOT, then Homebrew's two prefixes."""
    roots = [os.environ.get("OpenMP_ROOT", ""), "/opt/homebrew/opt/libomp",
             "/usr/local/opt/libomp"]
    return [r for r in roots if r and os.path.exists(os.path.join(r, "include", "omp.h"))]


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


def cython_directives(ext_name, debug):
    """_kernels.pyx indexes only raw pointers it has checked; the debug build turns every
    Cython check back on. fast.pyx is argument checking around kernel calls: Cython's default
    checks stay on there."""
    if ext_name != KERNELS:
        return {"language_level": 3}
    return {"language_level": 3, "boundscheck": debug, "wraparound": debug,
            "initializedcheck": debug, "cdivision": not debug}


def cythonize_extensions(extensions, force=False):
    """Turn each extension's .pyx source into generated C, in place (setuptools has already
    finalized these Extension objects, so they are updated rather than replaced)."""
    from Cython.Build import cythonize

    debug = env_flag("MNISTNET_CYTHON_DEBUG")
    # Cython regenerates C only when the .pyx is newer, so the debug build's C lives apart
    # and can never stand in for the release C (or the other way round).
    build_dir = os.path.join("build", "cython-debug") if debug else None
    for ext in extensions:
        (generated,) = cythonize([ext], compiler_directives=cython_directives(ext.name, debug),
                                 force=force, build_dir=build_dir)
        ext.sources = generated.sources


kernels = Extension(
    KERNELS,
    sources=["mnistnet/_kernels.pyx"],
    include_dirs=[CSRC],
    depends=sorted([os.path.join(CSRC, f) for f in os.listdir(CSRC) if f.endswith((".h", ".c"))]
                   + [os.path.join("mnistnet", f) for f in os.listdir("mnistnet")
                      if f.endswith((".pxi", ".pxd"))]),
)
wrappers = Extension(
    "mnistnet.fast",
    sources=["mnistnet/fast.pyx"],
    include_dirs=[numpy.get_include()],  # its argument checks use NumPy's C API
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
)

setup(ext_modules=[kernels, wrappers], cmdclass={"build_ext": BuildExt})
