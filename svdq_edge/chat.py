"""The chat REPL: template-rendered multi-turn chat that reuses the KV cache between turns."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from . import SvdqError
from .sampling import Sampler

HELP = "commands: /reset (new conversation), /save FILE, /exit (or Ctrl-D); Ctrl-C stops a reply"


def _save(path: Path, messages: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(messages, ensure_ascii=False, indent=1))
    os.replace(tmp, path)


def _load(path: Path) -> list[dict]:
    try:
        msgs = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SvdqError(f"--history {path}: cannot read it ({e})") from None
    if not isinstance(msgs, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in msgs):
        raise SvdqError(f"--history {path}: expected a JSON list of {{role, content}} messages")
    return msgs


def run_chat(model, sampler_params, system: str | None, n_predict: int, history: str | None,
             out=sys.stdout, verbose: bool = False) -> None:
    base = [{"role": "system", "content": system}] if system else []
    hist_path = Path(history) if history else None
    messages = _load(hist_path) if hist_path and hist_path.exists() else list(base)
    sampler = Sampler(sampler_params)
    interactive = sys.stdin.isatty()
    if interactive:
        print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print("\n(/exit or Ctrl-D to quit)", file=sys.stderr)
            continue
        cmd = line.strip()
        if not cmd:
            continue
        if cmd in ("/exit", "/quit", "/bye"):
            break
        if cmd == "/reset":
            messages = list(base)
            model.reset()
            print("(conversation reset)", file=sys.stderr)
            continue
        if cmd.startswith("/save"):
            parts = cmd.split(maxsplit=1)
            if len(parts) < 2:
                print("usage: /save FILE", file=sys.stderr)
                continue
            try:
                _save(Path(parts[1]), messages)
                print(f"(saved {len(messages)} messages to {parts[1]})", file=sys.stderr)
            except OSError as e:
                print(f"cannot save to {parts[1]}: {e.strerror}", file=sys.stderr)
            continue
        if cmd == "/help":
            print(HELP, file=sys.stderr)
            continue
        messages.append({"role": "user", "content": line})
        try:
            ids = model.chat_prompt(messages)
            model.check_fits(len(ids) + 1)
        except SvdqError as e:
            messages.pop()
            print(f"svdq-edge: {e}", file=sys.stderr)
            continue
        reply = []
        last = None
        try:
            for r in model.generate(ids, max_tokens=n_predict, sampler=sampler):
                if r.text:
                    reply.append(r.text)
                    out.write(r.text)
                    out.flush()
                last = r
        except KeyboardInterrupt:
            out.write("\n[stopped]")
        except SvdqError as e:
            print(f"\nsvdq-edge: {e}", file=sys.stderr)
        out.write("\n")
        out.flush()
        messages.append({"role": "assistant", "content": "".join(reply).strip()})
        if hist_path:
            _save(hist_path, messages)
        if verbose and last is not None:
            print(f"[prompt {last.prompt_tokens} tok, {last.prompt_tps:.1f} tok/s | "
                  f"generated {last.generated} tok, {last.gen_tps:.1f} tok/s]", file=sys.stderr)
