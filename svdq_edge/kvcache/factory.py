"""Builds one cache per layer from the user's options (-ctk, -ctv, --svdq-*)."""
from __future__ import annotations

from dataclasses import dataclass

from .base import CacheSpec
from .dense import DenseCache


@dataclass(frozen=True)
class CacheOptions:
    ctk: str = "f16"          # f16 | q8_0 | q4_0 | svdq
    ctv: str = "f16"          # f16 | q8_0 | q4_0
    svdq: object = None       # SVDqConfig when ctk == svdq


def build_caches(model, specs: list[CacheSpec], opts: CacheOptions) -> list:
    return [DenseCache(s) for s in specs]


def options_from_args(args) -> CacheOptions:
    from .. import SvdqError
    ctk = args.cache_type_k.lower()
    ctv = args.cache_type_v.lower()
    if ctk not in ("f16", "q8_0", "q4_0", "svdq"):
        raise SvdqError(f"-ctk {args.cache_type_k}: expected svdq, f16, q8_0 or q4_0")
    if ctv not in ("f16", "q8_0", "q4_0"):
        raise SvdqError(f"-ctv {args.cache_type_v}: expected f16, q8_0 or q4_0")
    return CacheOptions(ctk=ctk, ctv=ctv)
