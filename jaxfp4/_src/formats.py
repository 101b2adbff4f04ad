"""The 4-bit formats: code tables, thresholds and their static description.

Every table is written as float32 bit patterns so that no decimal -> float64 ->
float32 double rounding can creep in. Sources:

* bitsandbytes NF4 / FP4 tables and quantization thresholds: bitsandbytes 0.50.2
  ``csrc/kernels.cu`` (``nf4_dequantization_lut``, ``fp4_dequantization_lut``,
  ``dQuantizeNF4``, ``dQuantizeFP4``) and ``functional.get_4bit_type``, with the
  float32 patterns as nvcc compiles them (shared/docs/bnb_format.md §1.1-1.4).
* bitsandbytes 8-bit dynamic map for double quantization:
  ``functional.create_dynamic_map(signed=True)`` (bnb_format.md Appendix A).
* E2M1: OCP Microscaling Formats (MX) v1.0, §5.3.3 Table 5 (values, no Inf/NaN).
"""

from __future__ import annotations

import dataclasses

import numpy as np


def _f32(hex_words: str) -> np.ndarray:
  """Parses whitespace-separated float32 hex bit patterns."""
  words = [int(w, 16) for w in hex_words.split()]
  return np.array(words, dtype=np.uint32).view(np.float32)


# --- bitsandbytes NF4 --------------------------------------------------------
# Nibble order is ascending value; 7 negative values, zero, 8 positive values.
NF4_CODE = _f32("""
    bf800000 bf3239b1 bf066b30 beca32a0 be91a24d be3d353f bdba7871 00000000
    3da2faff 3e24cae3 3e7c04dd 3ead033a 3ee1a4b8 3f1007ab 3f3913b3 3f800000""")

# dQuantizeNF4 is a balanced tree of strict ``s > T_k``; it equals
# ``nibble = #{k : s > T_k}``. These are the literals of kernels.cu rounded once
# to float32 (four of them differ by 1 ulp from float32(float64(literal))).
NF4_THRESHOLDS = _f32("""
    bf591cd9 bf1c5270 beeb8480 beadea76 be703cec be0d38bc bd3a7871
    3d22faff 3df64863 3e5067e0 3e9582d4 3ec753f9 3f006d03 3f248daf 3f5c89d9""")

# --- bitsandbytes FP4 (not OCP E2M1) ----------------------------------------
# bit 3 = sign, bits 2..0 = a magnitude code that is not monotonic.
# get_4bit_type("fp4") stores +0.0 at nibble 8 (Python ``-0`` is the integer 0);
# this is what checkpoints carry as ``weight.quant_map``.
FP4_CODE = _f32("""
    00000000 3baaaaab 3f2aaaab 3f800000 3eaaaaab 3f000000 3e2aaaab 3e800000
    00000000 bbaaaaab bf2aaaab bf800000 beaaaaab bf000000 be2aaaab be800000""")

# The CUDA dequantization kernel computes ``lut[v & 7] * (1 - 2 * sign)``, so
# nibble 8 decodes to -0.0 there. Decoding uses this table.
FP4_DECODE = FP4_CODE.copy()
FP4_DECODE[8] = np.float32(-0.0)

# dQuantizeFP4: c = #{k : |s| > T_k}, nibble = FP4_MAGNITUDE_ORDER[c] + 8 * (s < 0).
FP4_THRESHOLDS = _f32("3b2aaab9 3db00000 3e555555 3e955555 3ed55556 3f155550 3f555555")
FP4_MAGNITUDE_ORDER = np.array([0, 1, 6, 7, 4, 5, 2, 3], dtype=np.int32)

# --- OCP E2M1 -----------------------------------------------------------------
# Nibble = the E2M1 bit pattern S.EE.M (OCP MX v1.0 Table 5); values are
# monotonic in bits 2..0, so round-to-nearest-even is a count of thresholds.
E2M1_VALUES = np.array(
    [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6],
    dtype=np.float32)
E2M1_MAX = 6.0
# Round-to-nearest-even on |s|: a tie goes to the code with an even mantissa,
# i.e. up at 0.75, 1.75, 3.5 (``>=``) and down at 0.25, 1.25, 2.5, 5 (``>``).
E2M1_RNE_THRESHOLDS = ((0.25, False), (0.75, True), (1.25, False), (1.75, True),
                       (2.5, False), (3.5, True), (5.0, False))

# --- bitsandbytes 8-bit dynamic map (nested absmax) ------------------------------
DYNAMIC_MAP_8BIT = _f32("""
    bf7e3333 bf7a999a bf770000 bf736666 bf6fcccd bf6c3333 bf68999a bf650000
    bf616666 bf5dcccd bf5a3333 bf56999a bf530000 bf4f6666 bf4bcccd bf483333
    bf44999a bf410000 bf3d6666 bf39cccd bf363334 bf32999a bf2f0000 bf2b6666
    bf27cccd bf243334 bf20999a bf1d0000 bf196666 bf15cccd bf123334 bf0e999a
    bf0b0000 bf076666 bf03cccc bf003333 bef93332 bef20000 beeacccc bee3999a
    bedc6666 bed53333 bece0000 bec6cccc bebf999a beb86666 beb13333 beaa0000
    bea2cccc be9b999a be946666 be8d3334 be860000 be7d9999 be6f3333 be60cccd
    be526666 be440000 be35999a be273333 be18cccd be0a6666 bdf80000 bddb3334
    bdc9eb85 bdc428f7 bdbe6667 bdb8a3d7 bdb2e148 bdad1eb8 bda75c2a bda1999a
    bd9bd70a bd96147b bd9051eb bd8a8f5d bd84cccd bd7e147b bd728f5d bd670a3d
    bd5b851f bd500000 bd447ae1 bd38f5c3 bd2d70a3 bd21eb85 bd166667 bd0ae148
    bcfeb852 bce7ae15 bcd0a3d7 bcb9999a bca28f5d bc8b851f bc68f5c3 bc3ae148
    bc1f3b64 bc160418 bc0ccccd bc039581 bbf4bc6a bbe24dd3 bbcfdf3b bbbd70a4
    bbab020d bb989374 bb8624dd bb676c8a bb428f5c bb1db22d baf1a9fc baa7ef9d
    ba7765ff ba59e83e ba3c6a80 ba1eecc1 ba016f01 b9c7e283 b98ce705 b923d70b
    b8ba1f4b b88aefb3 b8378034 b7b24206 b70205ff b65a1a94 b513a3b7 00000000
    3513a3b7 365a1a94 370205ff 37b24206 38378034 388aefb3 38ba1f4b 3923d70b
    398ce705 39c7e283 3a016f01 3a1eecc1 3a3c6a80 3a59e83e 3a7765ff 3aa7ef9d
    3af1a9fc 3b1db22d 3b428f5c 3b676c8a 3b8624dd 3b989374 3bab020d 3bbd70a4
    3bcfdf3b 3be24dd3 3bf4bc6a 3c039581 3c0ccccd 3c160418 3c1f3b64 3c3ae148
    3c68f5c3 3c8b851f 3ca28f5d 3cb9999a 3cd0a3d7 3ce7ae15 3cfeb852 3d0ae148
    3d166667 3d21eb85 3d2d70a3 3d38f5c3 3d447ae1 3d500000 3d5b851f 3d670a3d
    3d728f5d 3d7e147b 3d84cccd 3d8a8f5d 3d9051eb 3d96147b 3d9bd70a 3da1999a
    3da75c2a 3dad1eb8 3db2e148 3db8a3d7 3dbe6667 3dc428f7 3dc9eb85 3ddb3334
    3df80000 3e0a6666 3e18cccd 3e273333 3e35999a 3e440000 3e526666 3e60cccd
    3e6f3333 3e7d9999 3e860000 3e8d3334 3e946666 3e9b999a 3ea2cccc 3eaa0000
    3eb13333 3eb86666 3ebf999a 3ec6cccc 3ece0000 3ed53333 3edc6666 3ee3999a
    3eeacccc 3ef20000 3ef93332 3f003333 3f03cccc 3f076666 3f0b0000 3f0e999a
    3f123334 3f15cccd 3f196666 3f1d0000 3f20999a 3f243334 3f27cccd 3f2b6666
    3f2f0000 3f32999a 3f363334 3f39cccd 3f3d6666 3f410000 3f44999a 3f483333
    3f4bcccd 3f4f6666 3f530000 3f56999a 3f5a3333 3f5dcccd 3f616666 3f650000
    3f68999a 3f6c3333 3f6fcccd 3f736666 3f770000 3f7a999a 3f7e3333 3f800000""")

NESTED_BLOCKSIZE = 256  # bitsandbytes hard-codes the double-quantization block.

BNB_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
INPUT_DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True, kw_only=True)
class QuantFormat:
  """Static description of one 4-bit format.

  Attributes:
    name: the ``quant_type`` string.
    code: the 16 values stored as the state's ``code`` (bitsandbytes'
      ``quant_map`` for nf4/fp4).
    decode_lut: the values a nibble decodes to before the block scale.
    blocksizes: allowed block sizes.
    default_blocksize: used when ``blocksize=None``.
    scale_kind: ``"absmax"`` (float32 max |x| per block), ``"e8m0"`` (OCP MX
      power-of-two scale) or ``"e4m3"`` (NVFP4 block scale + per-tensor scale).
    bitsandbytes: whether bitsandbytes can read the format.
  """

  name: str
  code: tuple[float, ...]
  decode_lut: tuple[float, ...]
  blocksizes: tuple[int, ...]
  default_blocksize: int
  scale_kind: str
  bitsandbytes: bool

  @property
  def supports_double_quant(self) -> bool:
    return self.scale_kind == "absmax"


def _tuple(a: np.ndarray) -> tuple[float, ...]:
  return tuple(float(v) for v in a)


FORMATS: dict[str, QuantFormat] = {
    "nf4": QuantFormat(
        name="nf4", code=_tuple(NF4_CODE), decode_lut=_tuple(NF4_CODE),
        blocksizes=BNB_BLOCKSIZES, default_blocksize=64, scale_kind="absmax",
        bitsandbytes=True),
    "fp4": QuantFormat(
        name="fp4", code=_tuple(FP4_CODE), decode_lut=_tuple(FP4_DECODE),
        blocksizes=BNB_BLOCKSIZES, default_blocksize=64, scale_kind="absmax",
        bitsandbytes=True),
    # E2M1 elements with a float32 absmax per block: decoded as
    # E2M1 * (absmax * 1/6) so that the block maximum maps to +-6.
    "e2m1": QuantFormat(
        name="e2m1", code=_tuple(E2M1_VALUES), decode_lut=_tuple(E2M1_VALUES),
        blocksizes=BNB_BLOCKSIZES, default_blocksize=64, scale_kind="absmax",
        bitsandbytes=False),
    # OCP MX v1.0 §5.2 Table 1: MXFP4 = E2M1 elements, k = 32, E8M0 scale.
    "mxfp4": QuantFormat(
        name="mxfp4", code=_tuple(E2M1_VALUES), decode_lut=_tuple(E2M1_VALUES),
        blocksizes=(32,), default_blocksize=32, scale_kind="e8m0",
        bitsandbytes=False),
    # NVFP4 (arXiv 2509.25149 §2): E2M1, 16-element blocks, E4M3 block scale,
    # one float32 per-tensor scale.
    "nvfp4": QuantFormat(
        name="nvfp4", code=_tuple(E2M1_VALUES), decode_lut=_tuple(E2M1_VALUES),
        blocksizes=(16,), default_blocksize=16, scale_kind="e4m3",
        bitsandbytes=False),
}

QUANT_TYPES = tuple(FORMATS)


def get_format(quant_type: str) -> QuantFormat:
  """Returns the format named ``quant_type`` or raises a ValueError."""
  fmt = FORMATS.get(quant_type) if isinstance(quant_type, str) else None
  if fmt is None:
    raise ValueError(
        f"`quant_type` must be one of {QUANT_TYPES}, got {quant_type!r}.")
  return fmt


def resolve_blocksize(fmt: QuantFormat, blocksize: int | None) -> int:
  """Returns the block size to use, or raises a ValueError naming the allowed."""
  if blocksize is None:
    return fmt.default_blocksize
  if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)):
    raise ValueError(
        f"`blocksize` must be an int in {fmt.blocksizes} for quant_type="
        f"{fmt.name!r}, got {blocksize!r}.")
  if int(blocksize) not in fmt.blocksizes:
    raise ValueError(
        f"`blocksize` must be one of {fmt.blocksizes} for quant_type="
        f"{fmt.name!r}, got {blocksize}.")
  return int(blocksize)
