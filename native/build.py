"""cffi out-of-line API build of the native kernels. svdq_edge/kernels/cpu_c.py runs it on first
import into a per-user cache directory keyed by the sources' hash; a failure there only means
the Numba backend is used."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ["kernels.c"]
HEADERS = ["svdq_edge.h", "kernels_impl.h", "kernels_attn.h", "kernels_neon.h"]
CFLAGS = ["-O3", "-fopenmp", "-fno-math-errno", "-std=gnu11"]


def ffibuilder(module_name: str = "_svdq_native"):
    from cffi import FFI
    ffi = FFI()
    header = (HERE / "svdq_edge.h").read_text()
    ffi.cdef("\n".join(ln for ln in header.splitlines() if not ln.lstrip().startswith(("/*", "*"))))
    ffi.set_source(module_name, '#include "svdq_edge.h"',
                   sources=[str(HERE / s) for s in SOURCES], include_dirs=[str(HERE)],
                   extra_compile_args=CFLAGS, extra_link_args=["-fopenmp"])
    return ffi


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "_build"
    out.mkdir(parents=True, exist_ok=True)
    print(ffibuilder().compile(tmpdir=str(out), verbose=True))
