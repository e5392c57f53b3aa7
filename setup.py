"""Builds fastconv._core: the Cython bindings, the C drivers (baseline flags, OpenMP when the
compiler has it) and the micro-kernels, compiled once per instruction set with that set's flags.

Environment:
  FASTCONV_NO_OPENMP=1   build without OpenMP (single-threaded kernels)
  FASTCONV_SANITIZE=address,undefined
                         build with those GCC/Clang sanitizers (compile and link flags of the
                         extension and the kernels); for .ci/sanitize, never for a release
"""
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

BASE_FLAGS = ["-O3", "-std=gnu11", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"]
OPENMP_FLAG = "-fopenmp"
INCLUDE = ["src/include"]
DRIVERS = [
    "src/runtime/isa.c",
    "src/runtime/threads.c",
    "src/runtime/memory.c",
    "src/runtime/fpmode.c",
    "src/ops/gemm.c",
    "src/ops/conv2d.c",
    "src/ops/dwconv.c",
    "src/ops/chain.c",
    "src/ops/winograd.c",
    "src/ops/pool2d.c",
    "src/ops/window.c",
    "src/ops/elementwise.c",
]
VECTOR_SOURCES = [
    "src/kernels/f32-vector/f32-vector.c",
    "src/kernels/f32-window/f32-window.c",
    "src/kernels/f32-winograd/f32-winograd.c",
    "src/kernels/f32-gemv/f32-gemv.c",
    "src/kernels/f32-dwconv/f32-dwconv.c",
]
# Per instruction set: the flags its kernels are compiled with, and the kernels that exist only
# for it. The vector sources are compiled for every set, with -DFC_ISA naming the copy.
ISA_KERNELS = {
    "scalar": ([], ["src/kernels/f32-gemm/f32-gemm-4x8-minmax-scalar.c"]),
    "avx2": (["-mavx2", "-mfma"], ["src/kernels/f32-gemm/f32-gemm-6x16-minmax-avx2.c"]),
    "avx512f": (
        ["-mavx512f", "-mfma", "-mprefer-vector-width=512"],
        ["src/kernels/f32-gemm/f32-gemm-8x32-minmax-avx512f.c"],
    ),
}
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64")

OPENMP_PROBE = textwrap.dedent(
    """
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
      int n = 0;
    #pragma omp parallel reduction(+:n)
      n += 1;
      printf("%d\\n", n > 0);
      return 0;
    }
    """
)


def sanitizer_flags():
    """Flags for the sanitizers named in FASTCONV_SANITIZE (e.g. "address,undefined"): debug
    info and frame pointers for readable reports, and no recovery, so a report stops the run."""
    names = [n.strip() for n in os.environ.get("FASTCONV_SANITIZE", "").split(",") if n.strip()]
    if not names:
        return []
    return ["-fsanitize=" + ",".join(names), "-fno-sanitize-recover=all", "-fno-omit-frame-pointer",
            "-g"]


def openmp_works(compiler):
    """Compiles, links and runs a tiny OpenMP program with the build's own compiler."""
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(OPENMP_PROBE)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=[OPENMP_FLAG])
        exe = os.path.join(tmp, "probe")
        compiler.link_executable(objs, exe, extra_postargs=[OPENMP_FLAG])
        return subprocess.run([exe], capture_output=True, text=True).stdout.strip() == "1"
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    def build_extensions(self):
        use_openmp = os.environ.get("FASTCONV_NO_OPENMP", "0") in ("", "0")
        if use_openmp and not openmp_works(self.compiler):
            use_openmp = False
            warnings.warn(
                "fastconv: the compiler cannot build OpenMP programs; building single-threaded "
                "kernels. Install an OpenMP runtime (e.g. libgomp) and rebuild for threads."
            )
            print("WARNING: fastconv is built WITHOUT OpenMP (single-threaded)", file=sys.stderr)
        omp = [OPENMP_FLAG] if use_openmp else []
        sanitize = sanitizer_flags()
        # Without OpenMP the pragmas, and the thread counts computed for them, go unused.
        quiet = [] if use_openmp else ["-Wno-unknown-pragmas", "-Wno-unused-variable"]
        isas = ISA_KERNELS if IS_X86_64 else {"scalar": ISA_KERNELS["scalar"]}
        compiler_name = " ".join(self.compiler.compiler_so[:1])
        for ext in self.extensions:
            ext.extra_compile_args = BASE_FLAGS + omp + sanitize + quiet
            ext.extra_link_args = omp + sanitize
            flags = " ".join(BASE_FLAGS + omp + sanitize)
            ext.define_macros += [
                ("FC_BUILD_COMPILER", '"%s"' % compiler_name),
                ("FC_BUILD_FLAGS", '"%s"' % flags),
            ]
            if IS_X86_64:
                ext.define_macros.append(("FC_HAVE_X86_KERNELS", "1"))
            ext.extra_objects = self.compile_kernels(isas, sanitize)
        super().build_extensions()

    def compile_kernels(self, isas, sanitize):
        objects = []
        for isa, (flags, sources) in isas.items():
            objects += self.compiler.compile(
                sources + VECTOR_SOURCES,
                output_dir=os.path.join(self.build_temp, "kernels", isa),
                macros=[("FC_ISA", isa)],
                include_dirs=INCLUDE,
                extra_postargs=BASE_FLAGS + flags + sanitize,
                depends=["src/include/fc_kernels.h", "src/include/fc_portable_simd.h"],
            )
        return objects


core = Extension(
    "fastconv._core",
    sources=["src/_core.pyx"] + DRIVERS,
    include_dirs=INCLUDE + [numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    # The kernel objects are linked in as extra objects: listing their sources here makes an
    # edit to a kernel alone rebuild and relink the extension.
    depends=["src/include/fastconv.h", "src/include/fc_internal.h", "src/include/fc_kernels.h",
             "src/include/fc_portable_simd.h"] + VECTOR_SOURCES
    + [source for _, sources in ISA_KERNELS.values() for source in sources],
)

setup(
    ext_modules=cythonize([core], compiler_directives={"language_level": 3}),
    cmdclass={"build_ext": BuildExt},
)
