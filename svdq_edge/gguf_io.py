"""Open and validate a GGUF file with the `gguf` package; weights stay memory-mapped in their blocks."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType

from . import SvdqError
from .kernels import QWeight
from .quants import SUPPORTED, row_bytes, type_name

GGUF_MAGIC = b"GGUF"


class GGUFFile:
    """A validated GGUF: metadata fields as Python values and tensors as QWeight views into the mmap."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        p = self.path
        if not p.exists():
            raise SvdqError(f"{p}: no such file")
        if p.is_dir():
            raise SvdqError(f"{p}: is a directory, expected a .gguf file")
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
        if len(head) < 8 or head[:4] != GGUF_MAGIC:
            raise SvdqError(f"{p}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
        version = int.from_bytes(head[4:8], "little")
        if version not in (2, 3):
            raise SvdqError(f"{p}: GGUF version {version} is not supported (expected 2 or 3)")
        try:
            self.reader = GGUFReader(p, "r")
        except Exception as e:  # the gguf package raises many kinds on a cut or corrupt header
            raise SvdqError(f"{p}: truncated or malformed GGUF header ({type(e).__name__}: {e})") from None
        self.size = size
        self.fields = {}
        for k, f in self.reader.fields.items():
            try:
                self.fields[k] = f.contents()
            except Exception:
                raise SvdqError(f"{p}: metadata key {k!r} is malformed") from None
        self.tensors: dict[str, object] = {}
        for t in self.reader.tensors:
            end = int(t.data_offset) + int(t.n_bytes)
            if end > size:
                raise SvdqError(f"{p}: tensor {t.name} data ends at byte {end}, past the end of the "
                                f"file ({size} bytes): the file is truncated")
            self.tensors[t.name] = t

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        a = self.fields.get("general.architecture")
        if not isinstance(a, str):
            raise SvdqError(f"{self.path}: missing general.architecture")
        return a

    def get(self, key: str, default=None):
        return self.fields.get(key, default)

    def require(self, key: str):
        if key not in self.fields:
            raise SvdqError(f"{self.path}: missing metadata key {key}")
        return self.fields[key]

    # -- tensors ----------------------------------------------------------------------------------
    def has(self, name: str) -> bool:
        return name in self.tensors

    def weight(self, name: str, shape: tuple[int, ...]) -> QWeight:
        """A 2-D weight (rows, cols) in its GGML blocks; shape is checked against the config."""
        t = self._tensor(name)
        qtype = int(t.tensor_type)
        if qtype not in SUPPORTED:
            raise SvdqError(f"{self.path}: tensor {name} has unsupported type {type_name(qtype)} "
                            f"(supported: {', '.join(sorted(type_name(q) for q in SUPPORTED))})")
        ne = tuple(int(x) for x in t.shape)            # ggml order: (cols, rows)
        rows, cols = shape if len(shape) == 2 else (1, shape[0])
        if ne != (cols, rows) and not (len(shape) == 1 and ne == (cols,)):
            raise SvdqError(f"{self.path}: tensor {name} has shape {list(ne)}, expected {[cols, rows]}")
        try:
            rb = row_bytes(qtype, cols)
        except ValueError as e:
            raise SvdqError(f"{self.path}: tensor {name}: {e}") from None
        raw = np.asarray(t.data).view(np.uint8).reshape(-1)
        if raw.size != rows * rb:
            raise SvdqError(f"{self.path}: tensor {name} holds {raw.size} bytes, expected {rows * rb}")
        return QWeight(name, qtype, rows, cols, raw.reshape(rows, rb))

    def vector(self, name: str, n: int) -> np.ndarray:
        """A 1-D float tensor (norm weights, biases) as float32 (n,)."""
        t = self._tensor(name)
        qtype = int(t.tensor_type)
        ne = tuple(int(x) for x in t.shape)
        if ne != (n,):
            raise SvdqError(f"{self.path}: tensor {name} has shape {list(ne)}, expected [{n}]")
        if qtype == GGMLQuantizationType.F32:
            return np.asarray(t.data, dtype=np.float32).reshape(n)
        if qtype == GGMLQuantizationType.F16:
            return np.asarray(t.data).view(np.float16).astype(np.float32).reshape(n)
        raise SvdqError(f"{self.path}: tensor {name} has type {type_name(qtype)}, expected F32 or F16")

    def _tensor(self, name: str):
        t = self.tensors.get(name)
        if t is None:
            raise SvdqError(f"{self.path}: missing tensor {name}")
        return t

    def sha256(self) -> str:
        """sha256 of the file, cached beside it by (size, mtime) so it is computed once."""
        st = self.path.stat()
        stamp = f"{st.st_size}-{int(st.st_mtime)}"
        side = self.path.with_name(self.path.name + ".sha256")
        try:
            txt = side.read_text().split()
            if len(txt) == 2 and txt[1] == stamp:
                return txt[0]
        except OSError:
            pass
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        digest = h.hexdigest()
        try:
            side.write_text(f"{digest} {stamp}\n")
        except OSError:
            pass
        return digest
