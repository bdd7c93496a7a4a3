"""SVDq K-cache configuration: bit schedule, basis choices, window, sparsity. Validated at start."""
from __future__ import annotations

from dataclasses import dataclass

WIDTHS = (8, 4, 2, 1, 0)
# named schedules: widths for 8 equal groups of latent channels in singular-value order
PRESETS = {
    "1.25": (4, 2, 2, 1, 1, 0, 0, 0),   # the paper's headline setting
    "2.0": (8, 4, 2, 1, 1, 0, 0, 0),
    "2.5": (8, 4, 4, 2, 1, 1, 0, 0),
    "3.0": (8, 4, 4, 4, 2, 1, 1, 0),
}


@dataclass(frozen=True)
class SVDqConfig:
    bits: tuple | None = None      # 8 group widths; None -> fitted to the spectrum at `budget`
    budget: float = 1.5            # code bits per element for the fitted allocation
    # 128-token blocks and a 32-token window: at equal all-inclusive bits, 16-21% lower KL
    # divergence at 8k than 64/64 on both models (the scales cost half as much per token)
    block: int = 128               # tokens per scale/min block
    window: int = 32               # recent tokens kept in f16
    sinks: int = 4                 # first tokens kept in f16
    # frame the keys are stored (and the basis fitted) in: "relative" = post-RoPE keys rotated back
    # by the centre of their rot_block-token block (within rot_block/2 positions of pre-RoPE, so
    # the basis sees nearly the compact pre-RoPE spectrum; a query is projected once per block);
    # "post" = absolute post-RoPE (one query projection per step); "pre" = pre-RoPE (every key
    # rebuilt and rotated per step). At 1.5 code bits and 8k tokens, perplexity against f16:
    # relative-128 -0.46% Qwen / +0.51% Gemma, post +2.27% / +1.78% (RESULTS.md 2.5); 128-token
    # rotation blocks cost half the query projections of 64 at nearly the same quality
    rope: str = "relative"
    rot_block: int = 0             # tokens per rotation block of the relative frame (divides block); 0 = block
    per_head: bool = False         # one basis per KV head vs one per layer over all KV heads (default: measured better)
    # calibrated (from the calibration text) | prompt (fitted to the first keys). Calibrated is the
    # default: the prompt basis is 3x better in-sample at 2k but not out of sample at 8k on Gemma
    # (RESULTS.md 2.2.2)
    basis_source: str = "calibrated"
    prompt_tokens: int = 1024      # prompt basis: keys held in f16 before the basis is fitted to them
    rank_by: str = "scores"        # latent channels ranked by score error (key x query energy; post-RoPE only) | keys
    # token sparsity: packed tokens each KV head group keeps (int count, or a fraction below 1; None
    # or 0 = all). 1024: at 8k, KL divergence against f16 0.0372 vs 0.0370 without on Qwen, 0.0142 vs
    # 0.0128 on Gemma; decode at 16k 45.0 -> 33.9 ms/step on Qwen (RESULTS.md 3.000000)
    topk: float | None = 1024
    # fitted widths: budget spent within each layer, or shared by all layers by score error
    # (calibrated basis; a prompt basis is fitted layer by layer, so it always spends per layer)
    alloc: str = "layer"
    # post-RoPE basis: fitted to the keys (and query moment) rotated to this many offsets spread
    # over the context, not only the positions they were seen at (1 = as seen). Slow RoPE
    # channels otherwise leave the basis at long context (RESULTS.md 2.2.3). Relative frame: the
    # query moment only (a query meets blocks at every distance; the keys need no spread)
    spread: int = 16

    @property
    def pre_rope(self) -> bool:
        return self.rope == "pre"

    @property
    def rb(self) -> int:
        """Rotation block of the stored frame: 0 unless the frame is relative."""
        return (self.rot_block or self.block) if self.rope == "relative" else 0

    def validate(self) -> None:
        if self.rope not in ("relative", "post", "pre"):
            raise ValueError(f"--svdq-rope {self.rope}: expected relative, post or pre")
        if self.rope == "relative" and self.rot_block and (self.rot_block < 8 or self.rot_block % 8
                                                           or self.block % self.rot_block):
            raise ValueError(f"--svdq-rot-block {self.rot_block}: must be a multiple of 8 that divides "
                             f"--svdq-block {self.block}")
        if self.bits is not None:
            if len(self.bits) != 8:
                raise ValueError(f"--svdq-bits needs 8 group widths, got {len(self.bits)}")
            bad = [b for b in self.bits if b not in WIDTHS]
            if bad:
                raise ValueError(f"--svdq-bits: widths must be in {WIDTHS}, got {bad}")
            if any(a < b for a, b in zip(self.bits, self.bits[1:])):
                raise ValueError("--svdq-bits: widths must not increase (leading latent channels carry the most energy)")
            if sum(self.bits) == 0:
                raise ValueError("--svdq-bits: all groups dropped; keys would carry no information")
        if not 0.0 < self.budget <= 8.0:
            raise ValueError(f"--svdq-budget {self.budget}: must be in (0, 8]")
        if self.block < 8 or self.block % 8:
            raise ValueError(f"--svdq-block {self.block}: must be a multiple of 8, at least 8")
        if self.window < 0:
            raise ValueError(f"--svdq-window {self.window}: must be >= 0")
        if self.sinks < 0:
            raise ValueError(f"--svdq-sinks {self.sinks}: must be >= 0")
        if self.basis_source not in ("calibrated", "prompt"):
            raise ValueError(f"--svdq-basis-source {self.basis_source}: expected calibrated or prompt")
        if self.basis_source == "prompt" and self.prompt_tokens < 2 * self.block:
            raise ValueError(f"--svdq-prompt-tokens {self.prompt_tokens}: a prompt basis needs at least "
                             f"2 blocks ({2 * self.block} tokens) of keys to fit")
        if self.rank_by not in ("scores", "keys"):
            raise ValueError(f"--svdq-rank {self.rank_by}: expected scores or keys")
        if self.spread < 1:
            raise ValueError(f"--svdq-spread {self.spread}: must be >= 1")
        if self.alloc not in ("layer", "global"):
            raise ValueError(f"--svdq-alloc {self.alloc}: expected layer or global")
        if self.topk is not None and self.topk < 0:
            raise ValueError(f"--svdq-topk {self.topk}: must be >= 0 (a count, a fraction below 1, or 0 for all)")

    @property
    def nominal_bits(self) -> float:
        return sum(self.bits) / 8 if self.bits is not None else self.budget


def parse_bits(s: str) -> tuple | None:
    """'4,2,2,1,1,0,0,0' or a preset name ('1.25', '2.0') or 'auto' (fitted)."""
    s = s.strip()
    if s == "auto":
        return None
    if s in PRESETS:
        return PRESETS[s]
    try:
        return tuple(int(x) for x in s.split(","))
    except ValueError:
        raise ValueError(f"--svdq-bits {s!r}: expected 8 comma-separated widths, 'auto', or one of "
                         f"{', '.join(PRESETS)}") from None
