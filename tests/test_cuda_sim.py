"""--device cuda without a GPU: the CUDA kernels and the GPU runner under Numba's CUDA simulator,
their PTX compilation, and the one-line error when there is no GPU.

The simulator must be enabled before numba is imported, and the rest of the suite imports numba for
the CPU JIT in this process, so the simulator cases (tests/cuda_sim_cases.py) run in a subprocess.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _env(**kw):
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_ENABLE_CUDASIM", "SVDQ_EDGE_BACKEND")}
    env.update(kw)
    return env


@pytest.mark.slow
def test_cuda_kernels_and_runner_under_simulator():
    def run():
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(HERE / "cuda_sim_cases.py")], cwd=ROOT, capture_output=True, text=True,
                              timeout=900, env=_env(NUMBA_ENABLE_CUDASIM="1", SVDQ_EDGE_BACKEND="numpy"))
    r = run()
    tail = (r.stdout + r.stderr)[-4000:]
    if r.returncode != 0:
        # Seen once in CI (2026-11-23): test_matmul_matches_oracle[1-F32] gave wrong sums for some
        # rows and passed on every other run. The simulator runs threads as Python threads; whether
        # this is a race in matmul_k or in the simulator is not settled (issue 5). One rerun, and the
        # first failure is reported as a warning so it stays visible.
        import warnings
        warnings.warn("CUDA simulator cases failed once and were rerun:\n" + tail[-1500:])
        r = run()
        tail = (r.stdout + r.stderr)[-4000:]
    assert r.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail.splitlines()[-1], tail


def test_cuda_kernels_compile_to_ptx():
    r = subprocess.run([sys.executable, str(HERE / "cuda_ptx_check.py")], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, env=_env(PYTHONPATH=str(ROOT)))
    if r.returncode == 2:
        pytest.skip(r.stdout.strip() or "NVVM not available")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def _gpu_present() -> bool:
    r = subprocess.run([sys.executable, "-c", "from svdq_edge.kernels import cuda_backend; cuda_backend()"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=_env())
    return r.returncode == 0


def test_device_cuda_without_gpu_is_one_line(tmp_path):
    if _gpu_present():
        pytest.skip("a CUDA GPU is present")
    from test_gguf_errors import tiny_gguf
    p = tiny_gguf(tmp_path / "tiny.gguf")
    txt = tmp_path / "t.txt"
    txt.write_text("hello world\n")
    for cmd in (["run", "-m", str(p), "-p", "hi", "-n", "1"], ["bench", "-m", str(p), "-p", "8", "-n", "2"],
                ["perplexity", "-m", str(p), "-f", str(txt)], ["chat", str(p)]):
        r = subprocess.run([sys.executable, "-m", "svdq_edge.cli", *cmd, "--device", "cuda"], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=_env(), stdin=subprocess.DEVNULL)
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 1, (cmd, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("svdq-edge: error: --device cuda"), (cmd, r.stderr)


def test_device_argument_validated():
    from svdq_edge import SvdqError
    from svdq_edge.arch.cuda_transformer import check_device
    assert check_device("cpu", None) == "cpu"
    with pytest.raises(SvdqError, match="expected cpu or cuda"):
        check_device("tpu", None)


def test_gpu_svdq_options_drop_what_the_gpu_cache_lacks():
    """The GPU SVDq cache: the default relative frame becomes post-RoPE and the default token
    sparsity is turned off (both said on stderr); other caches and the CPU are left alone."""
    from dataclasses import replace
    from svdq_edge.arch.cuda_transformer import device_cache_options
    from svdq_edge.kvcache.factory import CacheOptions
    o = CacheOptions(ctk="svdq")
    assert o.svdq.topk and o.svdq.rope == "relative"
    g = device_cache_options("cuda", o)
    assert g.svdq.topk is None and g.svdq.rope == "post"
    assert device_cache_options("cpu", o) is o
    post = replace(o, svdq=replace(o.svdq, rope="post", topk=None))
    assert device_cache_options("cuda", post) is post
    assert device_cache_options("cuda", CacheOptions(ctk="f16")).ctk == "f16"
