"""`svdq-edge` command line, with llama.cpp's flag names where a flag exists there."""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import SvdqError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.print_usage(sys.stderr)
        print(f"svdq-edge: error: {message}", file=sys.stderr)
        sys.exit(1)


def _model_flags(p, positional=False):
    if positional:
        p.add_argument("model", nargs="?", default=None, help="GGUF path or known model name (default: gemma-3-270m)")
    p.add_argument("-m", "--model", dest="model_flag", default=None, help="GGUF path or known model name")
    p.add_argument("-c", "--ctx-size", type=int, default=4096, help="context size in tokens (0 = the model's)")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: all physical cores)")
    p.add_argument("-ctk", "--cache-type-k", default="svdq", help="K cache: svdq | f16 | q8_0 | q4_0")
    p.add_argument("-ctv", "--cache-type-v", default="f16", help="V cache: f16 | q8_0 | q4_0")
    from .kvcache.factory import add_cli_flags
    add_cli_flags(p)
    p.add_argument("--chat-template-file", default=None, help="Jinja chat template to use instead of the GGUF's")


def _device_flag(p):
    # --device cuda (issue 5): the whole decode step on an NVIDIA GPU (Numba CUDA kernels)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs (cuda needs numba-cuda and a GPU)")


def _sampling_flags(p):
    p.add_argument("--temp", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--repeat-last-n", type=int, default=64)
    p.add_argument("-s", "--seed", type=int, default=-1)
    p.add_argument("-n", "--n-predict", type=int, default=-1, help="tokens to generate (-1 = until end of turn)")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="svdq-edge", description="Run GGUF language models with an SVD-compressed K cache.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    p = sub.add_parser("chat", help="chat with a model (default: gemma-3-270m)")
    _model_flags(p, positional=True)
    _device_flag(p)
    _sampling_flags(p)
    p.add_argument("-sys", "--system-prompt", "--system", dest="system", default=None)
    p.add_argument("--history", default=None, help="JSON file the conversation is loaded from and saved to")
    p.add_argument("-v", "--verbose", action="store_true", help="print speed after each reply")

    p = sub.add_parser("run", help="one-shot generation from a prompt")
    _model_flags(p)
    _device_flag(p)
    _sampling_flags(p)
    p.add_argument("-p", "--prompt", default=None)
    p.add_argument("-f", "--file", default=None, help="read the prompt from a file")
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("pull", help="download and verify a known model")
    p.add_argument("name", nargs="?", default=None)
    p.add_argument("--force", action="store_true")
    p.add_argument("--list", action="store_true", help="list known models")

    p = sub.add_parser("perplexity", help="perplexity of a text, llama-perplexity's method")
    _model_flags(p)
    _device_flag(p)
    p.add_argument("-f", "--file", required=True)
    p.add_argument("--chunks", type=int, default=-1, help="max chunks (-1 = all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(ctx_size=512)

    p = sub.add_parser("tokenize", help="print token ids as a JSON list (like llama-tokenize --ids)")
    _model_flags(p)
    p.add_argument("-p", "--prompt", default=None)
    p.add_argument("-f", "--file", default=None)
    p.add_argument("--no-bos", action="store_true")

    p = sub.add_parser("bench", help="prefill and decode speed, memory, KV bytes/token")
    _model_flags(p)
    _device_flag(p)
    p.add_argument("-p", "--n-prompt", type=int, default=512)
    p.add_argument("-n", "--n-gen", type=int, default=128)
    p.add_argument("-d", "--n-depth", type=int, default=0, help="tokens of context before the test")
    p.add_argument("-r", "--repetitions", type=int, default=1)
    p.add_argument("--json", action="store_true")
    p.set_defaults(ctx_size=0)

    p = sub.add_parser("calibrate", help="compute (or show) the SVDq K basis of a model for the given --svdq-* options")
    _model_flags(p)
    p.add_argument("--force", action="store_true", help="recompute even if a cached basis exists")

    p = sub.add_parser("info", help="architecture, sizes, tensor types, template, backend")
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--json", action="store_true")
    return ap


def _load(args, **extra):
    from .kvcache.factory import options_from_args
    from .model import Model
    from .pull import resolve
    opts = options_from_args(args)
    if args.ctx_size < 0:
        raise SvdqError(f"-c {args.ctx_size}: must be >= 0")
    if args.threads is not None and args.threads < 1:
        raise SvdqError(f"-t {args.threads}: must be >= 1")
    name = getattr(args, "model_flag", None) or getattr(args, "model", None)
    # --device is checked before a model is resolved (and perhaps downloaded)
    from .arch.cuda_transformer import check_device
    device = check_device(getattr(args, "device", "cpu"), opts)
    path = resolve(name)
    return Model(path, n_ctx=args.ctx_size, cache_options=opts,
                 chat_template_file=args.chat_template_file, threads=args.threads, device=device, **extra)


def _sampler_params(args):
    from .sampling import SamplerParams
    sp = SamplerParams(temp=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                       repeat_penalty=args.repeat_penalty, repeat_last_n=args.repeat_last_n, seed=args.seed)
    try:
        sp.validate()
    except ValueError as e:
        raise SvdqError(str(e)) from None
    return sp


def _read_prompt(args) -> str:
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                return f.read()
        except OSError as e:
            raise SvdqError(f"-f {args.file}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise SvdqError(f"-f {args.file}: not UTF-8 text") from None
    if args.prompt is None:
        raise SvdqError("no prompt: give -p TEXT or -f FILE")
    return args.prompt


def cmd_chat(args):
    from .chat import run_chat
    sp = _sampler_params(args)
    m = _load(args)
    print(startup_line(m), file=sys.stderr)
    run_chat(m, sp, args.system, args.n_predict, args.history, verbose=args.verbose)


def cmd_run(args):
    sp = _sampler_params(args)
    prompt = _read_prompt(args)
    m = _load(args)
    last = None
    try:
        for r in m.generate(prompt, max_tokens=args.n_predict, temp=sp.temp, top_k=sp.top_k,
                            top_p=sp.top_p, min_p=sp.min_p, repeat_penalty=sp.repeat_penalty,
                            repeat_last_n=sp.repeat_last_n, seed=sp.seed):
            sys.stdout.write(r.text)
            sys.stdout.flush()
            last = r
    except KeyboardInterrupt:
        sys.stdout.write("\n[stopped]")
    sys.stdout.write("\n")
    if args.verbose and last is not None:
        print(f"[prompt {last.prompt_tokens} tok, {last.prompt_tps:.1f} tok/s | "
              f"generated {last.generated} tok, {last.gen_tps:.1f} tok/s]", file=sys.stderr)


def cmd_pull(args):
    from .pull import known_names, pull, registry
    if args.list or not args.name:
        reg = registry()
        for n in known_names():
            m = reg["models"][n]
            print(f"{n:22s} {m['arch']:8s} {m['size'] / 2**20:7.1f} MiB  {m['source']}")
        return
    print(pull(args.name, force=args.force))


def cmd_tokenize(args):
    from .gguf_io import GGUFFile
    from .model import cache_dir_for
    from .pull import resolve
    from .tokenizer import Tokenizer
    text = _read_prompt(args)
    path = resolve(args.model_flag)
    g = GGUFFile(path)
    from .config import args_from_gguf
    args_from_gguf(g)
    tk = Tokenizer.from_gguf(g, cache_dir_for(path))
    ids = tk.encode(text, add_bos=False if args.no_bos else None, parse_special=True)
    print(json.dumps(ids))


def cmd_perplexity(args):
    from .perplexity import perplexity
    text = _read_prompt(args)
    m = _load(args)
    res = perplexity(m, text, args.ctx_size, args.chunks, progress=not args.json)
    if args.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"Final estimate: PPL = {res['ppl']:.4f} +/- {res['ppl_err']:.5f}")


def cmd_bench(args):
    from .bench import bench, print_table
    m = _load(args)
    rows = bench(m, args.n_prompt, args.n_gen, args.n_depth, args.repetitions)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print_table(rows)


def cmd_calibrate(args):
    from .kvcache.factory import CacheOptions, basis_path, options_from_args
    from .model import Model
    from .pull import resolve
    opts = options_from_args(args)
    if opts.ctk != "svdq":
        raise SvdqError(f"calibrate: -ctk {opts.ctk} has no basis (only svdq does)")
    if opts.svdq.basis_source == "prompt":
        raise SvdqError("calibrate: --svdq-basis-source prompt fits its basis to each conversation's "
                        "first keys; there is nothing to calibrate")
    path = resolve(args.model_flag)
    m = Model(path, n_ctx=args.ctx_size, cache_options=CacheOptions(ctk="f16"), threads=args.threads)
    bp = basis_path(m, opts.svdq)
    if args.force and bp.exists():
        bp.unlink()
    m.cache_options = opts
    m.reset()                                   # builds the SVDq caches: calibrates if no basis is cached
    print(f"basis: {bp}")
    print(startup_line(m))
    for c in m.model.caches:
        if hasattr(c, "basis"):
            w = c.basis.widths
            print(f"layer {c.spec.layer:2d}: {c.G} x {c.D}-dim basis, {c.r} latent channels kept, "
                  f"code bits/elem {float(w.sum()) / c.D:.2f}")


def cmd_info(args):
    from .info import info
    info(args.model, as_json=args.json)


def startup_line(m) -> str:
    from . import kernels
    a = m.args
    kv = m.model.caches
    # accounting at a full context: K bits/elem over all layers (all-inclusive) and KV bytes
    glob = [c for c in kv if c.spec.window is None]
    kb = [c.k_bits_per_elem(at=m.n_ctx) for c in glob]
    bits = sum(kb) / max(len(kb), 1)
    local = len(kv) - len(glob)
    kv_mib = m.kv_nbytes_at(m.n_ctx) / 2**20
    pend = [c for c in glob if getattr(c, "pending", False)]
    kdesc = (f"<= {bits:.2f} bits/elem at full ctx, basis fitted to the first {pend[0].cfg.prompt_tokens} keys"
             if pend else f"{bits:.2f} bits/elem at full ctx") + (f" on {len(glob)} global layers, f16 on {local} sliding-window"
                                                    if local else "")
    if m.cache_options.ctk == "svdq":
        cfg = m.cache_options.svdq
        kdesc += f", {cfg.rope} key frame" + (f" ({cfg.rb}-token blocks)" if cfg.rope == "relative" else "")
    return (f"svdq-edge: {m.path.name} | {a.arch}, {a.n_layer} layers, n_embd {a.n_embd} | "
            f"ctx {m.n_ctx} | K cache {m.cache_options.ctk} ({kdesc}), "
            f"V {m.cache_options.ctv} | KV {kv_mib:.1f} MiB at full ctx | template {m.template.name} | "
            f"backend {'cuda' if getattr(m, 'device', 'cpu') == 'cuda' else kernels.backend_name()}")


COMMANDS = {"chat": cmd_chat, "run": cmd_run, "pull": cmd_pull, "tokenize": cmd_tokenize,
            "perplexity": cmd_perplexity, "bench": cmd_bench, "calibrate": cmd_calibrate, "info": cmd_info}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.cmd](args)
    except SvdqError as e:
        print(f"svdq-edge: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsvdq-edge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("svdq-edge: error: out of memory (try a smaller -c)", file=sys.stderr)
        return 1
    except Exception as e:  # anything else is our bug: one line, traceback on request
        if os.environ.get("SVDQ_EDGE_DEBUG"):
            raise
        print(f"svdq-edge: internal error: {type(e).__name__}: {e} (SVDQ_EDGE_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
