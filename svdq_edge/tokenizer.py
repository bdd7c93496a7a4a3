"""Tokenizers built from GGUF metadata alone, producing llama.cpp's token ids.

- `llama` (SentencePiece-style, Gemma): a sentencepiece BPE ModelProto rebuilt from the GGUF's
  tokens/scores/types (cached on disk: building it takes seconds), fed the text between specials.
- `gpt2` (byte-level BPE, Qwen2): a tiktoken Encoding with ranks from the vocabulary and the
  pre-tokenizer regex llama.cpp uses for `tokenizer.ggml.pre`.
Special tokens are split out first as llama.cpp does: control tokens only when parse_special,
user-defined tokens always.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from . import SvdqError

# token types (llama.cpp / gguf-py TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizer regexes by tokenizer.ggml.pre (llama-vocab.cpp)
PRE_REGEX = {
    "qwen2": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "llama3": r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "default": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
}
PRE_REGEX["gpt2"] = PRE_REGEX["default"]


def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's printable-unicode stand-ins for bytes, inverted: char -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


class Tokenizer:
    def __init__(self, g, cache_dir: Path | None):
        f = g.fields
        self.model_type = f.get("tokenizer.ggml.model")
        # pieces: a gguf_io.StringTable (left in the file's mapping) for real vocabularies
        self.tokens = f.get("tokenizer.ggml.tokens") or []
        if not len(self.tokens):
            raise SvdqError(f"{g.path}: no tokenizer.ggml.tokens in the GGUF")
        n = len(self.tokens)
        types = f.get("tokenizer.ggml.token_type")
        self.types = np.asarray(types if types is not None else [NORMAL] * n).astype(np.uint8)     # (n,)
        if len(self.types) != n:
            raise SvdqError(f"{g.path}: {len(self.types)} token types for {n} tokens")
        self.vocab_size = n
        self.bos_id = f.get("tokenizer.ggml.bos_token_id")
        self.eos_id = f.get("tokenizer.ggml.eos_token_id")
        self.unk_id = f.get("tokenizer.ggml.unknown_token_id")
        self.pad_id = f.get("tokenizer.ggml.padding_token_id")
        default_bos = self.model_type == "llama"
        self.add_bos = bool(f.get("tokenizer.ggml.add_bos_token", default_bos)) and self.bos_id is not None
        self.add_space_prefix = bool(f.get("tokenizer.ggml.add_space_prefix", self.model_type == "llama"))
        self._index = None if hasattr(self.tokens, "index_of") else {t: i for i, t in enumerate(self.tokens)}
        # specials, longest first: (text, id, is_control)
        ctl = np.isin(self.types, (CONTROL, UNKNOWN))
        sp = [(t, int(i), bool(ctl[i])) for i in np.flatnonzero(ctl | (self.types == USER_DEFINED))
              if (t := self.tokens[i])]
        sp.sort(key=lambda x: -len(x[0]))
        self._special_all = self._special_re([s for s in sp])
        self._special_user = self._special_re([s for s in sp if not s[2]])
        self._special_id = {t: i for t, i, _ in sp}
        eot = {self.eos_id} if self.eos_id is not None else set()
        for piece in ("<end_of_turn>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"):
            i = self.id_of(piece)
            if i is not None and self.types[i] == CONTROL:
                eot.add(i)
        eot_key = f.get("tokenizer.ggml.eot_token_id")
        if eot_key is not None:
            eot.add(int(eot_key))
        self.eot_ids = frozenset(eot)
        if self.model_type == "llama":
            self._init_spm(g, cache_dir)
        elif self.model_type == "gpt2":
            self._init_bpe(g)
        else:
            raise SvdqError(f"{g.path}: tokenizer model {self.model_type!r} is not supported (llama, gpt2)")

    @staticmethod
    def _special_re(sp):
        if not sp:
            return None
        return re.compile("|".join(re.escape(t) for t, _, _ in sp))

    @classmethod
    def from_gguf(cls, g, cache_dir: Path | None = None) -> "Tokenizer":
        return cls(g, cache_dir)

    # -- SentencePiece-style ----------------------------------------------------------------------
    def _init_spm(self, g, cache_dir):
        import sentencepiece as spm
        scores = g.fields.get("tokenizer.ggml.scores")
        h = hashlib.sha256("\x00".join(self.tokens).encode())
        h.update(bytes(str(list(scores[:64]) if scores is not None else []), "utf8"))
        h.update(bytes(self.types))
        key = h.hexdigest()[:16]
        path = Path(cache_dir) / f"spm-{key}.model" if cache_dir else None
        if path is not None and path.exists():
            data = path.read_bytes()
        else:
            data = self._build_spm_proto(scores)
            if path is not None:
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(data)
        self._byte_ids = {}
        for i in np.flatnonzero(self.types == BYTE):
            t = self.tokens[i]
            if len(t) == 6 and t.startswith("<0x"):
                self._byte_ids[int(i)] = int(t[3:5], 16)

    def _build_spm_proto(self, scores) -> bytes:
        from sentencepiece import sentencepiece_model_pb2 as pb
        m = pb.ModelProto()
        m.trainer_spec.model_type = pb.TrainerSpec.BPE
        m.trainer_spec.vocab_size = self.vocab_size
        m.trainer_spec.byte_fallback = True
        m.trainer_spec.unk_id = self.unk_id if self.unk_id is not None else 0
        m.trainer_spec.bos_id = self.bos_id if self.bos_id is not None else -1
        m.trainer_spec.eos_id = self.eos_id if self.eos_id is not None else -1
        m.trainer_spec.pad_id = self.pad_id if self.pad_id is not None else -1
        for attr, i in (("unk_piece", self.unk_id), ("bos_piece", self.bos_id), ("eos_piece", self.eos_id),
                        ("pad_piece", self.pad_id)):
            if i is not None:
                setattr(m.trainer_spec, attr, self.tokens[i])
        m.normalizer_spec.name = "identity"
        m.normalizer_spec.add_dummy_prefix = self.add_space_prefix
        m.normalizer_spec.remove_extra_whitespaces = False
        m.normalizer_spec.escape_whitespaces = True
        special = {self.unk_id: UNKNOWN, self.bos_id: CONTROL, self.eos_id: CONTROL, self.pad_id: CONTROL}
        for i, t in enumerate(self.tokens):
            p = m.pieces.add()
            ty = int(self.types[i])
            if ty == USER_DEFINED:
                t = t.replace(" ", "\u2581")   # whitespace-run tokens: sentencepiece sees ▁
            p.piece = t
            p.score = float(scores[i]) if scores is not None else 0.0
            p.type = special.get(i, ty if ty in (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE) else NORMAL)
        return m.SerializeToString()

    # -- byte-level BPE ---------------------------------------------------------------------------
    def _init_bpe(self, g):
        import tiktoken
        pre = g.fields.get("tokenizer.ggml.pre") or "default"
        pat = PRE_REGEX.get(pre)
        if pat is None:
            raise SvdqError(f"{g.path}: pre-tokenizer {pre!r} is not supported ({', '.join(sorted(PRE_REGEX))})")
        dec = _gpt2_byte_decoder()
        ranks: dict[bytes, int] = {}
        self._dup_bytes: dict[int, bytes] = {}        # NORMAL pieces whose bytes an earlier id ranks
        for i in np.flatnonzero(self.types == NORMAL).tolist():
            t = self.tokens[i]
            try:
                b = bytes(dec[c] for c in t)
            except KeyError:
                b = t.encode("utf-8")
            if ranks.setdefault(b, i) != i:
                self._dup_bytes[i] = b
        self.enc = tiktoken.Encoding(name=f"gguf-{pre}", pat_str=pat, mergeable_ranks=ranks, special_tokens={})
        # the ranks now live in tiktoken's Rust encoder (which decodes them too); its Python copy is
        # kept only for pickling, about 15 MiB for Qwen's vocabulary
        if isinstance(getattr(self.enc, "_mergeable_ranks", None), dict):
            self.enc._mergeable_ranks = {}

    # -- API --------------------------------------------------------------------------------------
    def id_of(self, piece: str) -> int | None:
        if self._index is None:
            return self.tokens.index_of(piece)
        return self._index.get(piece)

    def is_special(self, i: int) -> bool:
        return self.types[i] in (CONTROL, UNKNOWN, UNUSED)

    def _fragments(self, text: str, parse_special: bool):
        rx = self._special_all if parse_special else self._special_user
        if rx is None:
            yield text, None
            return
        pos = 0
        for m in rx.finditer(text):
            if m.start() > pos:
                yield text[pos:m.start()], None
            yield None, self._special_id[m.group(0)]
            pos = m.end()
        if pos < len(text):
            yield text[pos:], None

    def encode(self, text: str, add_bos: bool | None = None, parse_special: bool = True) -> list[int]:
        ids: list[int] = []
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids.append(self.bos_id)
        for frag, sid in self._fragments(text, parse_special):
            if sid is not None:
                ids.append(sid)
            elif self.model_type == "llama":
                ids.extend(self.sp.encode(frag))
            else:
                ids.extend(self.enc.encode_ordinary(frag))
        return ids

    def token_to_bytes(self, i: int, special: bool = False) -> bytes:
        """The bytes a token stands for; control tokens give b'' unless special."""
        ty = self.types[i]
        if ty in (CONTROL, UNKNOWN, UNUSED):
            return self.tokens[i].encode("utf-8") if special else b""
        if self.model_type == "llama":
            if ty == BYTE:
                return bytes([self._byte_ids[i]])
            return self.tokens[i].replace("\u2581", " ").encode("utf-8")
        if ty == NORMAL:
            return self._dup_bytes[i] if i in self._dup_bytes else self.enc.decode_single_token_bytes(i)
        return self.tokens[i].encode("utf-8")

    def decode(self, ids, special: bool = False) -> str:
        return b"".join(self.token_to_bytes(i, special) for i in ids).decode("utf-8", errors="replace")


class StreamDecoder:
    """Feed token ids one at a time; yields only complete UTF-8 text (never half a character)."""

    def __init__(self, tok: Tokenizer, special: bool = False):
        self.tok, self.special = tok, special
        self.pending = b""

    def feed(self, i: int) -> str:
        self.pending += self.tok.token_to_bytes(i, self.special)
        n = len(self.pending)
        # find the longest prefix that ends on a character boundary
        cut = n
        for back in range(1, min(4, n) + 1):
            b = self.pending[n - back]
            if b & 0xC0 == 0x80:          # continuation byte: keep looking for the lead byte
                continue
            if b & 0x80:                  # a lead byte: is its sequence complete?
                need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
                if back < need:
                    cut = n - back
            break
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out.decode("utf-8", errors="replace")

    def flush(self) -> str:
        out, self.pending = self.pending, b""
        return out.decode("utf-8", errors="replace")
