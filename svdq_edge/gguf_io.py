"""Open and validate a GGUF file with the `gguf` package; weights stay memory-mapped in their blocks."""
from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from . import SvdqError
from .kernels import QWeight
from .quants import SUPPORTED, row_bytes, type_name

GGUF_MAGIC = b"GGUF"


class _Cut(Exception):
    pass


# metadata never used here, stepped over instead of built: the BPE tokenizer ranks merges by
# token id (tokenizer.py), so Qwen's 151k merge strings would only cost memory (about 12 MiB)
UNREAD_KEYS = frozenset({"tokenizer.ggml.merges"})


# string arrays at least this long stay in the mapping as a StringTable (the vocabularies)
TABLE_MIN = 4096


class StringTable(Sequence):
    """A GGUF string array left in the file's mapping: (n,) start offsets and byte lengths, an item
    decoded (UTF-8, bad bytes replaced, as the parser always did) when it is read. Qwen's 151,936
    token pieces as a list of str cost about 20 MiB of RSS; as a table 2.4 MiB."""

    def __init__(self, buf: np.ndarray, starts: np.ndarray, lens: np.ndarray):
        self._buf = buf                                     # (file bytes,) uint8 mapping
        self._starts, self._lens = starts, lens             # (n,) int64 each

    def __len__(self) -> int:
        return len(self._starts)

    def raw(self, i: int) -> bytes:
        s = int(self._starts[i])
        return bytes(self._buf[s:s + int(self._lens[i])])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.raw(i).decode("utf-8", errors="replace")

    def index_of(self, piece: str) -> int | None:
        """The first index holding exactly piece, or None: compares only the equal-length items."""
        b = np.frombuffer(piece.encode("utf-8"), np.uint8)
        cand = np.flatnonzero(self._lens == len(b))                                   # (c,)
        if len(cand) and len(b):
            rows = self._buf[self._starts[cand][:, None] + np.arange(len(b))]          # (c, len)
            cand = cand[(rows == b).all(axis=1)]
        return int(cand[0]) if len(cand) else None


class _Header:
    """A fast GGUF v2/v3 header parser (metadata + tensor infos). gguf.GGUFReader builds a numpy
    view per array element and takes ~14 s on Gemma's 262k-token vocabulary; this reads the same
    layout (gguf-py's GGUFValueType table) in well under a second. Tensor data stays in the mmap."""

    _SCALARS = {
        GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
        GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
        GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "<u1", GGUFValueType.UINT64: "<u8",
        GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
    }

    def __init__(self, arr: np.ndarray):
        self.arr = arr                                      # (file bytes,) uint8 mapping
        self.buf, self.pos = memoryview(arr), 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise _Cut()
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "little")

    def u64(self) -> int:
        return int.from_bytes(self.take(8), "little")

    def string(self) -> str:
        n = self.u64()
        return bytes(self.take(n)).decode("utf-8", errors="replace")

    def skip(self, vtype: int) -> None:
        """Step over a value without building it (bounds still checked)."""
        if vtype == GGUFValueType.STRING:
            self.take(self.u64())
        elif vtype == GGUFValueType.ARRAY:
            etype, n = self.u32(), self.u64()
            if etype in self._SCALARS:
                self.take(n * np.dtype(self._SCALARS[etype]).itemsize)
            else:
                for _ in range(n):
                    self.skip(etype)
        elif vtype in self._SCALARS:
            self.take(np.dtype(self._SCALARS[vtype]).itemsize)
        else:
            raise ValueError(f"unknown metadata value type {vtype}")

    def value(self, vtype: int):
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            etype, n = self.u32(), self.u64()
            if etype == GGUFValueType.STRING:
                if n < TABLE_MIN:
                    return [self.string() for _ in range(n)]
                starts, lens = [], []
                for _ in range(n):
                    m = self.u64()
                    starts.append(self.pos)
                    lens.append(m)
                    self.take(m)
                return StringTable(self.arr, np.array(starts, np.int64), np.array(lens, np.int64))
            if etype in self._SCALARS:
                dt = np.dtype(self._SCALARS[etype])
                arr = np.frombuffer(self.take(n * dt.itemsize), dtype=dt)
                return arr.astype(bool).tolist() if etype == GGUFValueType.BOOL else arr
            return [self.value(etype) for _ in range(n)]
        if vtype in self._SCALARS:
            dt = np.dtype(self._SCALARS[vtype])
            v = np.frombuffer(self.take(dt.itemsize), dtype=dt)[0]
            return bool(v) if vtype == GGUFValueType.BOOL else v.item()
        raise ValueError(f"unknown metadata value type {vtype}")


class TensorInfo:
    __slots__ = ("name", "shape", "tensor_type", "data_offset", "n_bytes", "n_elements", "data")


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
        self.size = size
        self.mm = np.memmap(p, dtype=np.uint8, mode="r")
        h = _Header(self.mm)
        h.pos = 8
        try:
            n_tensors, n_kv = h.u64(), h.u64()
            if n_tensors > size or n_kv > size:
                raise ValueError(f"implausible counts ({n_tensors} tensors, {n_kv} keys)")
            self.fields = {}
            for _ in range(n_kv):
                key = h.string()
                if key in UNREAD_KEYS:
                    h.skip(h.u32())
                else:
                    self.fields[key] = h.value(h.u32())
            infos = []
            for _ in range(n_tensors):
                t = TensorInfo()
                t.name = h.string()
                nd = h.u32()
                if nd > 4:
                    raise ValueError(f"tensor {t.name} has {nd} dimensions")
                t.shape = tuple(h.u64() for _ in range(nd))
                t.tensor_type = h.u32()
                t.data_offset = h.u64()
                infos.append(t)
        except _Cut:
            raise SvdqError(f"{p}: truncated GGUF header (file is {size} bytes)") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise SvdqError(f"{p}: malformed GGUF header ({e})") from None
        align = int(self.fields.get("general.alignment", 32) or 32)
        data_start = (h.pos + align - 1) // align * align
        self.tensors: dict[str, TensorInfo] = {}
        for t in infos:
            n_el = int(np.prod(t.shape, dtype=np.int64)) if t.shape else 1
            t.n_elements = n_el
            if t.tensor_type in GGML_QUANT_SIZES:
                blk, nb = GGML_QUANT_SIZES[GGMLQuantizationType(t.tensor_type)]
                t.n_bytes = n_el // blk * nb
            else:
                t.n_bytes = 0
            t.data_offset += data_start
            end = t.data_offset + t.n_bytes
            if end > size:
                raise SvdqError(f"{p}: tensor {t.name} data ends at byte {end}, past the end of the "
                                f"file ({size} bytes): the file is truncated")
            t.data = self.mm[t.data_offset:end]
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
        raw = t.data
        if raw.size != rows * rb:
            raise SvdqError(f"{self.path}: tensor {name} holds {raw.size} bytes, expected {rows * rb}")
        return QWeight(name, qtype, rows, cols, raw.reshape(rows, rb))

    def release(self, view: np.ndarray) -> None:
        """Drop the process's mapped pages that lie wholly inside view (a tensor in this file's
        mmap, replaced by a copy): they leave the RSS and would be read again from the page cache
        only if touched."""
        mm = getattr(self.mm, "_mmap", None)
        if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
            return
        base = self.mm.ctypes.data
        start = view.ctypes.data - base
        if start < 0 or start + view.nbytes > self.mm.nbytes:
            raise ValueError("release: the array is not in this file's mapping")
        page = mmap.PAGESIZE
        a, b = -(-start // page) * page, (start + view.nbytes) // page * page
        if b > a:
            mm.madvise(mmap.MADV_DONTNEED, a, b - a)

    def vector(self, name: str, n: int) -> np.ndarray:
        """A 1-D float tensor (norm weights, biases) as float32 (n,)."""
        t = self._tensor(name)
        qtype = int(t.tensor_type)
        ne = tuple(int(x) for x in t.shape)
        if ne != (n,):
            raise SvdqError(f"{self.path}: tensor {name} has shape {list(ne)}, expected [{n}]")
        if qtype == GGMLQuantizationType.F32:
            return np.array(t.data.view(np.float32)).reshape(n)
        if qtype == GGMLQuantizationType.F16:
            return t.data.view(np.float16).astype(np.float32).reshape(n)
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
