"""Launch configuration of the dequantize kernel: dataclass, heuristic, candidates."""

from __future__ import annotations

import dataclasses
import jax.numpy as jnp

from pallas_kernels._src import tuning

LOOKUPS = ("select", "gather")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DequantizeConfig:
  """Launch parameters of the Triton dequantize kernel.

  Attributes:
    block_rows: quantization blocks per program (power of two).
    num_warps: warps per program.
    num_stages: software-pipelining depth.
    lookup: ``"select"`` (tree of selects on the nibble bits) or ``"gather"``
      (load from a 16-entry table in global memory, L1-resident).
  """

  block_rows: int = 128
  num_warps: int = 4
  num_stages: int = 1
  lookup: str = "gather"

  def __post_init__(self):
    tuning.check_powers_of_two(self, ("block_rows", "num_warps"))
    if self.lookup not in LOOKUPS:
      raise ValueError(f"`lookup` must be one of {LOOKUPS}, got {self.lookup!r}.")


SUPPORTED_DTYPES = ("float32", "bfloat16", "float16")


def can_use_kernel(numel: int, blocksize: int, out_dtype) -> bool:
  """The kernel needs whole blocks (no tail) and a supported output dtype."""
  return (numel > 0 and numel % blocksize == 0 and blocksize >= 16
          and blocksize & (blocksize - 1) == 0
          and jnp.dtype(out_dtype).name in SUPPORTED_DTYPES)



def get_config(blocksize: int, out_dtype, device_kind: str | None = None) -> DequantizeConfig:
  """Measured config for this device kind if recorded, else a heuristic."""
  entry = tuning.tuned_entry("dequantize_4bit", device_kind,
                             f"{jnp.dtype(out_dtype).name}/{blocksize}")
  if entry:
    return DequantizeConfig(**entry)
  # H100, 8192x8192 bf16 (docs/benchmarks.md): the L1-resident table gather
  # beats the select tree 2x; ~8K elements per program is at the copy roofline.
  return DequantizeConfig(block_rows=max(1, 8192 // blocksize), num_warps=4, lookup="gather")


def candidate_configs(blocksize: int) -> list[DequantizeConfig]:
  """The bounded search space swept by the benchmark."""
  # "select" measured 2x slower than "gather" on an H100 at every size
  # (docs/benchmarks.md), so the sweep spends its time on gather variants.
  out = []
  for elems in (4096, 8192, 16384):
    for warps in (4, 8):
      out.append(DequantizeConfig(block_rows=max(1, elems // blocksize), num_warps=warps))
  return out
