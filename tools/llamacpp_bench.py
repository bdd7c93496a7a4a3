"""Speed and KV-memory comparison against llama.cpp's llama-bench (DESIGN.md §7, issue 4 item 6).

llama.cpp is built from the llama-cpp-python 0.3.36 source package (llama.cpp commit 0c1e570) in a
git-ignored folder, separate from the project's virtualenv:

    python tools/llamacpp_bench.py setup                  # pip download + cmake, -j2; skipped if built
    python tools/llamacpp_bench.py run qwen               # depths 0,4096,16384,32768 (slow: ~hours)
    python tools/llamacpp_bench.py run gemma -d 0,4096 --ctk f16,q4_0 --reps 1
    python tools/llamacpp_bench.py run qwen -d 16384,32768 --merge   # add to the stored JSON (a
                                                          # configuration run again replaces its rows)
    python tools/llamacpp_bench.py table qwen             # re-print the table / plot from the JSON

`run` alternates, depth by depth, llama-bench (f16 / q8_0 / q4_0 caches, flash attention off and on)
and `svdq-edge bench` (-ctk svdq and f16), 2 threads each, and writes every raw row plus the commands,
machine, date and git commit to tools/results/llamacpp_compare_<model>.json (rewritten after each
step, so an interrupted run keeps what it measured), then prints a markdown table and saves
tools/results/llamacpp_compare_<model>.png (decode tok/s and KV MiB against context; needs matplotlib,
`pip install -e .[tools]`).

Tests: depth 0 is `-p 512 -n 128` (pp512, tg128); a depth D > 0 is `-p 0 -n 32 -d D` (tg32 after D
tokens; llama-bench fills the depth untimed, once per configuration, and restores it for each
repetition). A depth whose test would not fit the model's training context (svdq-edge refuses
-c > n_ctx_train) is lowered to n_ctx_train - n - 64 for both runtimes and recorded as such.

llama.cpp quirks handled here (this version):
  * `-ctk`/`-ctv` lists are crossed, and a configuration whose context cannot be created (quantized V
    with `-fa 0`: "quantized V cache requires flash_attn to be enabled") aborts the whole llama-bench
    process, so each cache type is a separate invocation. A quantized type T runs as K=T,V=T with
    `-fa 1` and, with flash attention off, as K=T,V=f16 (K-only, what llama.cpp allows there).
  * `-d/--n-depth` exists in this version.

llama.cpp's KV MiB is computed, not measured: tokens held x layers x n_kv x head_dim x bits/8 with
f16 = 16, q8_0 = 8.5, q4_0 = 4.5 bits per element (K and V each); Gemma 3's sliding-window layers
hold min(tokens, pad256(n_swa + n_ubatch)) cells, as llama-bench allocates them (swa_full off,
n_ubatch 512). svdq-edge's KV MiB is its own measured `kv_bytes` (codes, scales, basis, f16 window
and sinks, V). Both are for the tokens held at the end of the decode test (depth + n).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "tools" / "results"
BUILD = ROOT / "build" / "llamacpp"               # /build/ is git-ignored
PKG = "llama-cpp-python==0.3.36"
SRC = BUILD / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
BIN = SRC / "build" / "bin"
SVDQ = ROOT / ".venv" / "bin" / "svdq-edge"
MODELS = {"gemma-3-270m": "gemma-3-270m-q4_k_m.gguf", "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"}
DEFAULT_DEPTHS = {"gemma-3-270m": [0, 4096, 16384], "qwen2.5-coder-0.5b": [0, 4096, 16384, 32768]}
BITS = {"f16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "bf16": 16.0, "f32": 32.0, "q5_0": 5.5, "q5_1": 6.0, "q4_1": 5.0}
N_UBATCH = 512
MiB = 1024 * 1024


# ---------------------------------------------------------------------------------------- setup
def sh(cmd: list[str], log=None, **kw) -> None:
    print("+", shlex.join(map(str, cmd)), flush=True)
    subprocess.run(list(map(str, cmd)), check=True, stdout=log, stderr=subprocess.STDOUT if log else None, **kw)


def cmd_setup(a) -> None:
    bench = BIN / "llama-bench"
    if bench.exists() and not a.force:
        print(f"already built: {bench}")
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    sdist = BUILD / "sdist"
    tars = sorted(sdist.glob("llama_cpp_python-0.3.36.tar.gz"))
    if not tars:
        sh([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", PKG, "-d", sdist])
        tars = sorted(sdist.glob("llama_cpp_python-0.3.36.tar.gz"))
    if not SRC.exists():
        with tarfile.open(tars[0]) as tf:
            tf.extractall(BUILD)
    t1 = time.time()
    with open(BUILD / "cmake.log", "a") as log:
        sh(["cmake", "-S", SRC, "-B", SRC / "build", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
            "-DLLAMA_CURL=OFF"], log)
        sh(["cmake", "--build", SRC / "build", f"-j{a.jobs}", "--target", *a.targets.split(",")], log)
    t2 = time.time()
    info = {"package": PKG, "source": str(SRC), "targets": a.targets, "jobs": a.jobs,
            "download_unpack_s": round(t1 - t0, 1), "build_s": round(t2 - t1, 1),
            "date": dt.datetime.now().isoformat(timespec="seconds")}
    (BUILD / "build_info.json").write_text(json.dumps(info, indent=1))
    print(json.dumps(info, indent=1))


# ---------------------------------------------------------------------------------------- shapes
def resolve_model(name: str) -> tuple[str, Path]:
    p = Path(name)
    if p.suffix == ".gguf" and p.exists():
        key = next((k for k, f in MODELS.items() if f == p.name), p.stem)
        return key, p.resolve()
    for k, f in MODELS.items():
        if name.lower() in (k, f) or k.startswith(name.lower()):
            return k, ROOT / "models" / "cache" / f
    raise SystemExit(f"unknown model {name!r}: give a .gguf path or one of {list(MODELS)}")


def model_shapes(path: Path) -> dict:
    # svdq_edge's header parser, not gguf.GGUFReader: that one builds a numpy view per vocabulary
    # entry (~700 MiB for Gemma), and the peak RSS wait4 reports for a child includes the parent's
    # (subprocess vforks, and exec keeps the larger of the two high-water marks)
    from svdq_edge.gguf_io import GGUFFile
    fields = GGUFFile(path).fields

    def get(key, default=None):
        return fields.get(key, default)

    arch = get("general.architecture")
    n_layer = int(get(f"{arch}.block_count"))
    n_head = int(get(f"{arch}.attention.head_count"))
    n_kv = int(get(f"{arch}.attention.head_count_kv", n_head))
    n_embd = int(get(f"{arch}.embedding_length"))
    hk = int(get(f"{arch}.attention.key_length", n_embd // n_head))
    hv = int(get(f"{arch}.attention.value_length", hk))
    n_swa = int(get(f"{arch}.attention.sliding_window", 0) or 0)
    swa = [False] * n_layer
    if arch == "gemma3" and n_swa > 0:               # llama.cpp: load_swa_pattern(ml, 6)
        pat = int(get(f"{arch}.attention.sliding_window_pattern", 6) or 6)
        swa = [il % pat < pat - 1 for il in range(n_layer)]
    else:
        n_swa = 0                                    # qwen2: llama.cpp does not use a window
    return {"arch": arch, "n_layer": n_layer, "n_head": n_head, "n_kv": n_kv, "head_dim_k": hk,
            "head_dim_v": hv, "n_swa": n_swa, "n_swa_layers": sum(swa),
            "n_ctx_train": int(get(f"{arch}.context_length", 0) or 0)}


def llama_kv_bytes(sh_: dict, n_tokens: int, tk: str, tv: str) -> float:
    """Bytes llama.cpp's cache holds for n_tokens: global layers every token, window layers at most
    pad256(n_swa + n_ubatch) cells (llama-bench: swa_full = false)."""
    per_tok = sh_["n_kv"] * (sh_["head_dim_k"] * BITS[tk] + sh_["head_dim_v"] * BITS[tv]) / 8
    n_glob = sh_["n_layer"] - sh_["n_swa_layers"]
    swa_cells = math.ceil((sh_["n_swa"] + N_UBATCH) / 256) * 256 if sh_["n_swa"] else 0
    return per_tok * (n_glob * n_tokens + sh_["n_swa_layers"] * min(n_tokens, swa_cells))


# ---------------------------------------------------------------------------------------- machine
def machine() -> dict:
    m = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)",
                             "L3 cache", "Flags"):
                m[k.strip()] = v.strip() if k.strip() != "Flags" else \
                    " ".join(f for f in v.split() if f.startswith(("avx", "fma", "f16c")))
    except OSError:
        pass
    try:
        m["loadavg_at_start"] = os.getloadavg()
        m["MemTotal"] = next(l.split(":")[1].strip() for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    except OSError:
        pass
    return m


def git_info() -> dict:
    def g(*args):
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()
    dirty = [l[3:] for l in g("status", "--porcelain").splitlines() if l[3:].startswith(("svdq_edge/", "native/"))]
    return {"commit": g("rev-parse", "HEAD"), "describe": g("log", "-1", "--format=%h %s")[:120],
            "uncommitted_runtime_files": dirty}


# ---------------------------------------------------------------------------------------- running
def run_measured(cmd: list[str], cwd=None) -> tuple[str, str, int, float]:
    """Run cmd; its stdout, stderr, exit code and peak RSS in MiB (the child's own ru_maxrss, by
    wait4: mapped model pages it touched included, as for any process)."""
    import tempfile
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        pr = subprocess.Popen(cmd, stdout=fo, stderr=fe, text=True, cwd=cwd)
        _, status, ru = os.wait4(pr.pid, 0)
        pr.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        return fo.read(), fe.read(), pr.returncode, ru.ru_maxrss / 1024.0


def run_llama_bench(model: Path, tk: str, tv: str, fa: list[int], p: int, n: int, depths: list[int],
                    reps: int, threads: int) -> tuple[list[str], list[dict], str]:
    cmd = [str(BIN / "llama-bench"), "-m", str(model), "-p", str(p), "-n", str(n),
           "-d", ",".join(map(str, depths)), "-ctk", tk, "-ctv", tv, "-fa", ",".join(map(str, fa)),
           "-t", str(threads), "-r", str(reps), "-o", "jsonl"]
    print("+", shlex.join(cmd), flush=True)
    t0 = time.time()
    stdout, stderr, rc, rss = run_measured(cmd)
    rows = []
    for line in stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append({**json.loads(line), "rss_peak_mib": rss})
    err = "" if rc == 0 else stderr[-2000:]
    if err:
        print(f"  llama-bench exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    print(f"  {len(rows)} rows, {time.time() - t0:.0f} s, peak RSS {rss:.0f} MiB", flush=True)
    return cmd, rows, err


def run_svdq(model: Path, ctk: str, p: int, n: int, depth: int, reps: int, threads: int,
             extra: list[str]) -> tuple[list[str], list[dict], str]:
    ctx = depth + max(p, n) + 64
    ctk, _, ctv = ctk.partition("/")                     # "svdq/q4_0": -ctk svdq -ctv q4_0
    cmd = [str(SVDQ), "bench", "-m", str(model), "-p", str(p), "-n", str(n), "-d", str(depth),
           "-c", str(ctx), "-ctk", ctk, *(["-ctv", ctv] if ctv else []), "-t", str(threads), "-r", str(reps),
           "--json", *extra]
    print("+", shlex.join(cmd), flush=True)
    t0 = time.time()
    stdout, stderr, rc, rss = run_measured(cmd, cwd=ROOT)
    rows, err = [], ""
    try:
        rows = [{**r, "rss_peak_mib": rss} for r in json.loads(stdout[stdout.index("["):])]
    except ValueError:
        err = (stderr or stdout)[-2000:]
        print(f"  svdq-edge exit {rc}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    print(f"  {len(rows)} rows, {time.time() - t0:.0f} s, peak RSS {rss:.0f} MiB", flush=True)
    return cmd, rows, err


def norm_llama(r: dict, sh_: dict) -> dict:
    n_tok = r["n_depth"] + r["n_prompt"] + r["n_gen"]
    test = f"pp{r['n_prompt']}" if r["n_prompt"] else f"tg{r['n_gen']}"
    return {"runtime": "llama.cpp", "cache": r["type_k"] if r["type_k"] == r["type_v"] else f"{r['type_k']}/{r['type_v']}",
            "fa": int(r["flash_attn"]), "test": test, "depth": r["n_depth"], "tps": r["avg_ts"],
            "tps_std": r["stddev_ts"], "tps_samples": r.get("samples_ts"), "n_tokens": n_tok,
            "kv_mib": llama_kv_bytes(sh_, n_tok, r["type_k"], r["type_v"]) / MiB, "kv_source": "computed",
            "rss_peak_mib": r.get("rss_peak_mib")}


def norm_svdq(r: dict) -> dict:
    test = r["test"].split(" @")[0]
    n = int(test[2:])
    n_tok = r["depth"] + (n if test.startswith("pp") else n + (0 if r["depth"] else 1))
    return {"runtime": "svdq-edge", "cache": r["ctk"] if r["ctk"] == r["ctv"] else f"{r['ctk']}/{r['ctv']}",
            "fa": None, "test": test, "depth": r["depth"], "tps": r["tps"], "tps_std": r["tps_std"],
            "n_tokens": n_tok, "kv_mib": r["kv_bytes"] / MiB, "kv_source": "measured",
            "k_bits_per_elem": r.get("k_bits_per_elem"), "backend": r.get("backend"),
            "rss_peak_mib": r.get("rss_peak_mib")}


def result_path(key: str, tag: str) -> Path:
    """tools/results/llamacpp_compare_<model>[_<tag>].json: a tag keeps another machine's runs apart."""
    return RESULTS / f"llamacpp_compare_{key}{'_' + tag if tag else ''}.json"


def cmd_run(a) -> None:
    key, model = resolve_model(a.model)
    if not (BIN / "llama-bench").exists():
        raise SystemExit("llama-bench not built: run `python tools/llamacpp_bench.py setup` first")
    shp = model_shapes(model)
    depths = [int(x) for x in a.depths.split(",")] if a.depths else DEFAULT_DEPTHS.get(key, [0, 4096])
    ctks = a.ctk.split(",")
    fas = [int(x) for x in a.fa.split(",")]
    out = result_path(key, a.tag)
    RESULTS.mkdir(parents=True, exist_ok=True)
    build_info = BUILD / "build_info.json"
    doc = {"model": key, "file": model.name, "shapes": shp, "date": dt.datetime.now().isoformat(timespec="seconds"),
           "machine": machine(), "git": git_info(), "threads": a.threads,
           "llama_cpp": {"package": PKG, "commit": "0c1e570 (vendored)",
                         "build": json.loads(build_info.read_text()) if build_info.exists() else None},
           "note": a.note, "tool_command": shlex.join([sys.executable, *sys.argv]),
           "kv_note": ("llama.cpp KV MiB computed from shapes (f16 16, q8_0 8.5, q4_0 4.5 bits/elem; "
                       "window layers capped at pad256(n_swa+512) cells); svdq-edge KV MiB measured "
                       "(kv_bytes). Both for tokens held at the end of the test (depth + n)."),
           "steps": [], "rows": []}
    if a.merge and out.exists():
        # keep every stored result; a configuration measured again replaces its old rows (add_rows)
        old = json.loads(out.read_text())
        doc["steps"], doc["rows"] = old["steps"], old["rows"]
        doc["earlier_runs"] = old.get("earlier_runs", []) + [{k: old.get(k) for k in (
            "date", "machine", "git", "note", "tool_command")}]

    def save():
        out.write_text(json.dumps(doc, indent=1))

    def ident(r: dict) -> tuple:
        return r["runtime"], r["depth_requested"], r["cache"], r["fa"], r["test"]

    def add_rows(step: dict, rows: list) -> None:
        """Record one invocation: its rows replace stored rows of the same runtime, depth, cache,
        flash attention and test (a --merge re-run), and its step replaces the same command's."""
        new = {ident(r) for r in rows}
        doc["rows"] = [r for r in doc["rows"] if ident(r) not in new] + rows
        doc["steps"] = [x for x in doc["steps"] if x["command"] != step["command"]] + [step]
        save()

    for depth_req in depths:
        p, n = (a.n_prompt, a.n_gen) if depth_req == 0 else (0, a.n_gen_deep)
        reps = a.reps if depth_req == 0 else a.reps_deep
        depth = depth_req
        if shp["n_ctx_train"] and depth + max(p, n) + 64 > shp["n_ctx_train"]:
            depth = shp["n_ctx_train"] - max(p, n) - 64
            print(f"depth {depth_req} lowered to {depth} (training context {shp['n_ctx_train']})")
        if not a.skip_llama:
            for tk in ctks:
                combos = [(tk, tk, [f for f in fas])] if tk == "f16" else \
                    [(tk, tk, [f for f in fas if f == 1]), (tk, "f16", [f for f in fas if f == 0] if a.konly else [])]
                for ck, cv, fl in combos:
                    if not fl:
                        continue
                    cmd, rows, err = run_llama_bench(model, ck, cv, fl, p, n, [depth], reps, a.threads)
                    add_rows({"runtime": "llama.cpp", "depth_requested": depth_req, "command": shlex.join(cmd),
                              "error": err or None, "raw": rows},
                             [{**norm_llama(r, shp), "depth_requested": depth_req} for r in rows])
        if not a.skip_svdq:
            for ck in a.svdq_ctk.split(","):
                cmd, rows, err = run_svdq(model, ck, p, n, depth, reps, a.threads, shlex.split(a.svdq_args))
                add_rows({"runtime": "svdq-edge", "depth_requested": depth_req, "command": shlex.join(cmd),
                          "error": err or None, "raw": rows},
                         [{**norm_svdq(r), "depth_requested": depth_req} for r in rows])
    doc["machine"]["loadavg_at_end"] = os.getloadavg()
    save()
    print(f"wrote {out.relative_to(ROOT)}")
    report(doc, out)


# ---------------------------------------------------------------------------------------- report
def _label(r: dict) -> tuple:
    fa = "" if r["fa"] is None else ("on" if r["fa"] else "off")
    return (r["runtime"], r["cache"], fa)


def depth_name(d: int) -> str:
    return "short" if d == 0 else (f"{d // 1024}k" if d % 1024 == 0 else str(d))


def table(doc: dict) -> str:
    rows = doc["rows"]
    depths = sorted({r["depth_requested"] for r in rows})
    labels = []
    for r in rows:
        if _label(r) not in labels:
            labels.append(_label(r))
    labels.sort(key=lambda l: (l[0] != "svdq-edge", not l[1].startswith("svdq"), l[1], l[2]))
    pp = sorted({r["test"] for r in rows if r["test"].startswith("pp")})
    cols = [(t, 0, t) for t in pp] + [(None, d, "tg128" if d == 0 else f"tg@{depth_name(d)}") for d in depths]
    kvcols = [(d, f"KV MiB {depth_name(d)}") for d in depths]
    rsscols = [(d, f"peak RSS MiB {depth_name(d)}") for d in depths
               if any(r.get("rss_peak_mib") and r["depth_requested"] == d for r in rows)]
    head = "| runtime | cache K/V | FA | " + " | ".join([c[2] for c in cols] + [c[1] for c in kvcols + rsscols]) + " |"
    lines = [head, "|" + "---|" * (3 + len(cols) + len(kvcols) + len(rsscols))]

    def find(l, test, d):
        for r in rows:
            if _label(r) == l and r["depth_requested"] == d and (r["test"] == test if test else r["test"].startswith("tg")):
                return r
        return None

    for l in labels:
        cells = []
        for test, d, _ in cols:
            r = find(l, test, d)
            cells.append("—" if r is None else f"{r['tps']:.1f} ± {r['tps_std']:.1f}" if r["tps_std"] else f"{r['tps']:.1f}")
        for d, _ in kvcols:
            r = find(l, None, d)
            cells.append("—" if r is None else f"{r['kv_mib']:.1f}" + ("*" if r["kv_source"] == "computed" else ""))
        for d, _ in rsscols:
            r = find(l, None, d)
            cells.append("—" if r is None or not r.get("rss_peak_mib") else f"{r['rss_peak_mib']:.0f}")
        lines.append(f"| {l[0]} | {l[1]} | {l[2] or '—'} | " + " | ".join(cells) + " |")
    lowered = sorted({(r["depth_requested"], r["depth"]) for r in rows if r["depth"] != r["depth_requested"]})
    notes = ["tok/s, mean ± std over repetitions; short = `-p 512 -n 128`, deeper = `-n 32` after the depth; "
             f"{doc['threads']} threads. KV MiB for the tokens held after the decode test; "
             "* = computed from shapes (llama.cpp), else measured (svdq-edge). Peak RSS: the whole "
             "process (ru_maxrss by wait4, weights' mapped pages included) of the invocation that ran the row."]
    notes += [f"depth {a} run as {b} (training context)" for a, b in lowered]
    if any(r["cache"].endswith("/f16") and r["runtime"] == "llama.cpp" for r in rows):
        notes.append("llama.cpp `q*/f16` = quantized K only: quantized V needs flash attention in llama.cpp.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def plot(doc: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e .[tools]): no plot")
        return False
    rows = [r for r in doc["rows"] if r["test"].startswith("tg")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    labels = []
    for r in rows:
        if _label(r) not in labels:
            labels.append(_label(r))
    for l in labels:
        rs = sorted((r for r in rows if _label(r) == l), key=lambda r: r["n_tokens"])
        name = f"{l[0]} {l[1]}" + (f" FA {l[2]}" if l[2] else "")
        style = "-o" if l[0] == "svdq-edge" else "--s"
        ax1.plot([r["n_tokens"] for r in rs], [r["tps"] for r in rs], style, label=name)
        ax2.plot([r["n_tokens"] for r in rs], [r["kv_mib"] for r in rs], style, label=name)
    for ax, yl in ((ax1, "decode tokens/s"), (ax2, "KV cache MiB (llama.cpp: computed)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens held)")
        ax.set_ylabel(yl)
        ax.grid(True, alpha=0.3)
        xs = sorted({r["n_tokens"] for r in rows})
        ax.set_xticks(xs, [str(x) for x in xs], fontsize=7)
        ax.minorticks_off()
    ax2.set_yscale("log")
    ax1.legend(fontsize=7)
    fig.suptitle(f"{doc['file']}: svdq-edge vs llama.cpp 0c1e570, {doc['threads']} threads, "
                 f"{doc['machine'].get('Model name', '')} ({doc['date'][:10]})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def report(doc: dict, out: Path) -> None:
    print()
    print(table(doc))
    png = out.with_suffix(".png")
    if plot(doc, png):
        print(f"plot: {png.relative_to(ROOT)}")


def cmd_table(a) -> None:
    key, _ = resolve_model(a.model)
    out = result_path(key, a.tag)
    if not out.exists():
        raise SystemExit(f"no results yet: {out.relative_to(ROOT)} (run `llamacpp_bench.py run` first)")
    report(json.loads(out.read_text()), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("setup", help="download llama-cpp-python 0.3.36's source and build llama-bench")
    s.add_argument("--jobs", type=int, default=2)
    s.add_argument("--targets", default="llama-bench")
    s.add_argument("--force", action="store_true", help="rebuild even if llama-bench exists")
    r = sub.add_parser("run", help="run llama-bench and svdq-edge bench, write JSON, table, plot")
    r.add_argument("model", help="gemma-3-270m | qwen2.5-coder-0.5b (or a prefix) | path to .gguf")
    r.add_argument("-d", "--depths", default="", help="comma list; default 0,4096,16384 (+32768 for qwen)")
    r.add_argument("--ctk", default="f16,q8_0,q4_0", help="llama.cpp cache types")
    r.add_argument("--fa", default="0,1", help="llama.cpp flash attention settings")
    r.add_argument("--no-konly", dest="konly", action="store_false",
                   help="skip quantized-K/f16-V with flash attention off")
    r.add_argument("--svdq-ctk", default="svdq,f16", help="svdq-edge K cache types, each optionally /V type (svdq,svdq/q4_0,f16)")
    r.add_argument("--svdq-args", default="", help="extra svdq-edge bench flags, e.g. '--svdq-bits 2.0'")
    r.add_argument("-p", "--n-prompt", type=int, default=512)
    r.add_argument("-n", "--n-gen", type=int, default=128)
    r.add_argument("--n-gen-deep", type=int, default=32)
    r.add_argument("-r", "--reps", type=int, default=2, help="repetitions at depth 0")
    r.add_argument("--reps-deep", type=int, default=1, help="repetitions at depth > 0")
    r.add_argument("-t", "--threads", type=int, default=2)
    r.add_argument("--skip-llama", action="store_true")
    r.add_argument("--skip-svdq", action="store_true")
    r.add_argument("--merge", action="store_true",
                   help="keep the stored JSON's rows for runtimes/depths not re-run (long depths run later)")
    r.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    r.add_argument("--tag", default="", help="results file suffix, e.g. the machine: llamacpp_compare_<model>_<tag>.json")
    t = sub.add_parser("table", help="re-print the table and redraw the plot from the stored JSON")
    t.add_argument("model")
    t.add_argument("--tag", default="")
    a = ap.parse_args()
    {"setup": cmd_setup, "run": cmd_run, "table": cmd_table}[a.cmd](a)


if __name__ == "__main__":
    main()
