"""Compile every CUDA kernel to PTX with the argument types the launchers pass (no GPU needed; needs
numba-cuda with NVVM, e.g. `pip install 'numba-cuda[cu12]'`). The simulator runs kernels as Python
and never type-checks them: this catches what would only fail at the first launch on a GPU (typing
errors, float64 creeping into float32 arithmetic).

    python tests/cuda_ptx_check.py        prints one line per kernel; exit 1 on a failure,
                                          exit 2 when NVVM is missing (nothing was checked)
"""
from __future__ import annotations

import os
import re
import sys

os.environ.pop("NUMBA_ENABLE_CUDASIM", None)

from numba import cuda, types  # noqa: E402

from svdq_edge.kernels import cuda_numba as k  # noqa: E402


def A(dt, nd):
    return types.Array(dt, nd, "C")


u8_2, u8_4 = A(types.uint8, 2), A(types.uint8, 4)
f32_1, f32_2, f32_3, f32_4 = (A(types.float32, n) for n in (1, 2, 3, 4))
f16_3 = A(types.float16, 3)
i32_1 = A(types.int32, 1)
I, F, BOOL = types.int64, types.float32, types.boolean

SIGS = {
    "get_rows_k": (u8_2, I, i32_1, I, I, I, F, f32_2),
    "matmul_k": (u8_2, I, I, I, f32_2, I, I, f32_1, I, f32_2, I),
    "rmsnorm_k": (f32_2, I, f32_1, I, F, BOOL, f32_2),
    "rope_k": (f32_2, I, I, I, f32_2, f32_2, I, BOOL),
    "act_mul_k": (f32_2, f32_2, I, I),
    "store_f16_k": (f32_2, I, I, I, I, f16_3),
    "qk_f16_k": (f32_2, I, I, I, I, I, I, I, I, f16_3, I, I, f32_3),
    "softmax_k": (f32_3, I, I, I, I, I, F),
    "av_f16_k": (f32_3, I, I, I, I, I, I, f16_3, I, I, f32_2),
    "svdq_project_k": (f16_3, I, I, I, f32_3, f32_2, f32_4),
    "svdq_pack_k": (f32_4, I, I, I, I, I, u8_4, u8_4, u8_4, u8_4, f16_3, f16_3),
    "svdq_qproj_k": (f32_2, I, I, I, BOOL, f32_3, f32_2, f32_3, f32_2),
    "svdq_score_k": (f32_3, f32_2, I, I, BOOL, I, I, I, I, I, I, u8_4, u8_4, u8_4, u8_4, f16_3, f16_3, f32_3),
}
# kernels whose hot loop must stay in float32 (a float64 op there costs 2-64x on consumer GPUs)
NO_F64 = {"matmul_k", "qk_f16_k", "av_f16_k", "svdq_score_k", "softmax_k", "rmsnorm_k", "act_mul_k",
          "svdq_project_k", "svdq_qproj_k", "rope_k"}


def main() -> int:
    try:
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as e:
        print(f"NVVM not available ({type(e).__name__}): nothing checked")
        return 2
    # device functions compile for the current device's compute capability: with no GPU, name one
    from numba.cuda import dispatcher

    class _NoGPU:
        compute_capability = (7, 5)
    try:
        dispatcher.get_current_device()
    except Exception:
        dispatcher.get_current_device = lambda: _NoGPU()
    bad = 0
    for name, sig in SIGS.items():
        fn = getattr(k, name).py_func
        try:
            ptx, _ = cuda.compile_ptx(fn, sig, cc=(7, 5))
        except Exception as e:
            print(f"FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0]}")
            bad += 1
            continue
        f64 = len(re.findall(r"\.f64", ptx))
        ok = not (name in NO_F64 and f64)
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {len(ptx)} chars of PTX, {f64} f64 instructions")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
