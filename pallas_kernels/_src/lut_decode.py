"""Decode of packed 4-bit codes in registers: warp-shuffle and byte-permute tables.

The kernels read the weight as uint32 words of 8 codes (bitsandbytes' bytes:
byte ``b`` of a word holds element ``2b`` in its high nibble and ``2b + 1`` in
its low one) and decode each element with inline PTX, never with a memory
gather or a tree of selects (docs/kernels.md §7):

* ``shfl`` (the default): lane ``i`` of each half-warp holds ``table[i]`` as
  float32, and ``shfl.sync.idx`` with segment mask 0x10 reads the lane named by
  the low 4 bits of its index (PTX ISA, "shfl.sync"), so one shift and one
  shuffle give the exact float32 table value. 2 instructions per code.
* ``prmt``: the 16 entries rounded to bf16/fp16 live in eight 32-bit words,
  ``LO[i]`` holding the low bytes of entries ``4i..4i+3`` and ``HI[i]`` their
  high bytes. ``prmt.b32 d, a, b, sel`` picks for each byte of ``d`` one of the
  eight bytes of ``{a, b}`` by a 3-bit selector nibble (bit 3 set: replicate
  the chosen byte's sign instead), so one ``prmt`` looks up four codes in an
  8-entry half table and a ``lop3`` on the sign-replicated bit 3 picks the half:

    s   = word & 0x7777                  selectors: the low 3 bits of four codes
    m   = prmt(word << 4, word, MSEL)    per code 0xFF if bit 3 is set
    lo  = lop3(prmt(LO0, LO1, s), prmt(LO2, LO3, s), m)   low bytes of 4 values
    hi  = lop3(prmt(HI0, HI1, s), prmt(HI2, HI3, s), m)   high bytes
    out = prmt(lo, hi, 0x5140), prmt(lo, hi, 0x7362)       16-bit pairs

  About 2.6 instructions per code before the conversion to float32.

Pallas runs one asm per element of a word; ptxas merges the lookups the eight
programs share. ``plgpu.elementwise_inline_asm`` runs PTX only on a GPU: in the
interpreter (every CPU test) the same values come from a tree of selects, and
:func:`emulate_ptx` executes the exact program text in numpy so that the
constants, selectors and the shuffle's lane rule are tested on the CPU too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from pallas_kernels._src import numerics

TABLE_DTYPES = ("bfloat16", "float16")
# prmt selectors of the sign-replicated mask for the codes of bytes 0-1 / 2-3:
# bytes of (word << 4) carry bit 3 of the low nibbles, bytes of word of the high.
_MASK_SELECTOR = (0xD9C8, 0xFBEA)
_PAIR_SELECTORS = (0x5140, 0x7362)
_SELECT_LOP3 = 0xD8


def table_bits(lut: tuple[float, ...], table_dtype) -> np.ndarray:
  """uint16 bit patterns of the 16 table values rounded to ``table_dtype``."""
  name = jnp.dtype(table_dtype).name
  if name not in TABLE_DTYPES:
    raise ValueError(f"`table_dtype` must be one of {TABLE_DTYPES}, got {name}.")
  np_dtype = ml_dtypes.bfloat16 if name == "bfloat16" else np.float16
  return np.asarray(lut, np.float32).astype(np_dtype).view(np.uint16)


def table_words(lut: tuple[float, ...], table_dtype) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """(LO, HI): four uint32 words each, byte ``j`` of word ``i`` = entry ``4i + j``."""
  bits = table_bits(lut, table_dtype).astype(np.uint32)
  lo = tuple(int(sum(int(bits[4 * i + j] & 0xFF) << (8 * j) for j in range(4)))
             for i in range(4))
  hi = tuple(int(sum(int(bits[4 * i + j] >> 8) << (8 * j) for j in range(4)))
             for i in range(4))
  return lo, hi


def decode_ptx(lut: tuple[float, ...] | None, table_dtype, half: int, *, word: str = "$2",
               table_operands: tuple[str, ...] | None = None) -> str:
  """PTX of the byte-permute lookup of 4 codes of ``word``: ``$0, $1`` = 16-bit pairs.

  ``half`` 0 decodes the codes of bytes 0-1 (elements 1, 0, 3, 2 of the word),
  1 those of bytes 2-3 (elements 5, 4, 7, 6). ``table_operands`` names the
  eight table words ``LO[0..3], HI[0..3]`` (registers or immediates; default:
  immediates from ``lut``).
  """
  if table_operands is None:
    if lut is None:
      raise ValueError("decode_ptx needs `lut` when `table_operands` is None.")
    lo, hi = table_words(lut, table_dtype)
    t = tuple(f"{v:#x}" for v in lo + hi)
  else:
    t = table_operands
  sel = (f"and.b32 s, {word}, 0x7777;" if half == 0 else
         f"shr.b32 s, {word}, 16;\n  and.b32 s, s, 0x7777;")
  return f"""{{
  .reg .b32 q, s, m, p, r, lo, hi;
  shl.b32 q, {word}, 4;
  {sel}
  prmt.b32 m, q, {word}, {_MASK_SELECTOR[half]:#x};
  prmt.b32 p, {t[0]}, {t[1]}, s;
  prmt.b32 r, {t[2]}, {t[3]}, s;
  lop3.b32 lo, p, r, m, 0xD8;
  prmt.b32 p, {t[4]}, {t[5]}, s;
  prmt.b32 r, {t[6]}, {t[7]}, s;
  lop3.b32 hi, p, r, m, 0xD8;
  prmt.b32 $0, lo, hi, {_PAIR_SELECTORS[0]:#x};
  prmt.b32 $1, lo, hi, {_PAIR_SELECTORS[1]:#x};
}}"""
# lop3 immediate (PTX ISA: the function applied to a = 0xF0, b = 0xCC, c = 0xAA):
# ``(c & b) | (~c & a)`` = 0xD8 takes the upper half table (b) where the mask c is set.


# --- numpy execution of the PTX program (CPU tests of the constants) ---------------


def _prmt(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
  """PTX ``prmt.b32`` default mode, elementwise on uint32 arrays."""
  a, b, c = (np.asarray(v, np.uint64) for v in (a, b, c))
  src = a | (b << np.uint64(32))  # bytes 0-3 from a, 4-7 from b
  out = np.zeros(np.broadcast(a, b, c).shape, np.uint64)
  for i in range(4):
    sel = (c >> np.uint64(4 * i)) & np.uint64(0xF)
    byte = (src >> (np.uint64(8) * (sel & np.uint64(7)))) & np.uint64(0xFF)
    sign = np.where(byte & np.uint64(0x80), np.uint64(0xFF), np.uint64(0))
    out |= np.where(sel & np.uint64(8), sign, byte) << np.uint64(8 * i)
  return out.astype(np.uint32)


def _lop3(a, b, c, imm: int) -> np.ndarray:
  """PTX ``lop3.b32``: bit ``(a<<2 | b<<1 | c)`` of ``imm`` per bit position."""
  a, b, c = (np.asarray(v, np.uint32) for v in (a, b, c))
  out = np.zeros(np.broadcast(a, b, c).shape, np.uint32)
  for idx in range(8):
    if (imm >> idx) & 1:
      ta = a if idx & 4 else ~a
      tb = b if idx & 2 else ~b
      tc = c if idx & 1 else ~c
      out |= ta & tb & tc
  return out


def emulate_ptx(ptx: str, inputs: dict[str, np.ndarray], *, lane_values=None) -> dict:
  """Interprets one of this module's PTX programs in numpy (CPU tests of the kernels' asm).

  ``inputs`` maps operands (``"$1"``, ``"$2"``, ...) to uint32 arrays; the result
  maps every register written, ``"$0"``/``"$1"`` included, to its value. Known
  instructions: ``shl shr and prmt lop3 mov.b32 {lo, hi} cvt.f32.f16
  shfl.sync.idx``. A shuffle reads ``lane_values(source_lane)`` (the value the
  table operand holds in that lane) with the source lane computed as PTX ISA
  "shfl.sync" specifies, for a thread in lane 0 and one in lane 16 (the two
  half-warps; both must agree). Anything else raises, so a changed program
  cannot pass untested.
  """
  regs = {k: np.asarray(v, np.uint32) for k, v in inputs.items()}

  def val(tok: str) -> np.ndarray:
    return regs[tok] if tok in regs else np.asarray(int(tok, 0), np.uint32)

  for line in ptx.replace("{\n", "\n").splitlines():
    line = line.strip().rstrip(";")
    if not line or line in "{}" or line.startswith(".reg"):
      continue
    op, args = line.split(None, 1)
    if op == "mov.b32" and args.startswith("{"):  # {lo16, hi16}, src
      dst, word = args.split("}")
      lo, hi = [t.strip() for t in dst.strip("{ ").split(",")]
      v = val(word.strip(" ,"))
      regs[lo], regs[hi] = v & np.uint32(0xFFFF), v >> np.uint32(16)
      continue
    d, *src = [a.strip() for a in args.split(",")]
    a = [val(t) for t in src]
    if op == "shl.b32":
      r = (a[0].astype(np.uint64) << np.uint64(int(a[1]))).astype(np.uint32)
    elif op == "shr.b32":
      r = a[0] >> np.uint32(int(a[1]))
    elif op == "and.b32":
      r = a[0] & a[1]
    elif op == "prmt.b32":
      r = _prmt(*a)
    elif op == "lop3.b32":
      r = _lop3(a[0], a[1], a[2], int(a[3]))
    elif op == "cvt.f32.f16":
      r = a[0].astype(np.uint16).view(np.float16).astype(np.float32).view(np.uint32)
    elif op == "shfl.sync.idx.b32":
      r = _shfl_idx(a[1], int(a[2]), lane_values)
    else:
      raise ValueError(f"emulate_ptx does not know {op!r}")
    regs[d] = np.asarray(r, np.uint32)
  return regs


def _shfl_idx(b: np.ndarray, c: int, lane_values) -> np.ndarray:
  """``shfl.sync.idx``'s source-lane rule (PTX ISA) applied to ``b``, for lanes 0 and 16."""
  out = None
  for lane in (0, 16):
    bval, cval, segmask = b.astype(np.int64) & 0x1F, c & 0x1F, (c >> 8) & 0x1F
    max_lane = (lane & segmask) | (cval & ~segmask)
    j = (lane & segmask) | (bval & (~segmask & 0x1F))
    j = np.where(j > max_lane, lane, j)
    v = lane_values(j)
    if out is not None and not np.array_equal(out, v):
      raise AssertionError("the two half-warps read different values")
    out = v
  assert out is not None
  return out

# --- whole 32-bit words (no 8-bit tensors in the kernel) ---------------------------
# Triton holds an 8-bit tensor one element per register and repacks four of them
# for a ``pack=4`` inline asm (about one extra instruction per value on sm_90).
# Loading the packed bytes as uint32 words avoids that: one asm per element of
# the word, each returning one float32. The eight programs of a word repeat the
# same lookups; ptxas merges the identical instructions (checked in SASS).


def word_element_ptx(lut: tuple[float, ...], table_dtype, element: int, *,
                     out16: bool = False) -> str:
  """PTX: ``$1`` = a word of 8 codes, ``$2..$5`` = table words, ``$0`` = f32 value.

  Element ``e`` of the word (``2b`` = high nibble of byte ``b``) sits at
  position ``(e % 4) ^ 1`` of half ``e // 4`` of the lookup. In SASS a ``PRMT``
  takes one table word as an immediate but needs the other in a register:
  ``$2..$5`` carry ``LO[0], LO[2], HI[0], HI[2]`` (:func:`register_table_words`).
  """
  half, pos = element // 4, (element % 4) ^ 1
  lo, hi = table_words(lut, table_dtype)
  t = ("$2", f"{lo[1]:#x}", "$3", f"{lo[3]:#x}", "$4", f"{hi[1]:#x}", "$5", f"{hi[3]:#x}")
  body = decode_ptx(None, table_dtype, half, word="$1", table_operands=t)
  body = body.strip()[1:-1].replace("$0, lo, hi", "pa, lo, hi").replace("$1, lo, hi", "pb, lo, hi")
  pair = "pa" if pos < 2 else "pb"
  if out16:  # the 16-bit value itself ("=h"): low byte from LO, high byte from HI
    body = body.replace("prmt.b32 pa, lo, hi, 0x5140;\n", "").replace(
        "prmt.b32 pb, lo, hi, 0x7362;\n", "")
    conv = f"prmt.b32 pa, lo, hi, {pos | (4 + pos) << 4:#x};\n  mov.b32 {{$0, h1}}, pa;"
  elif jnp.dtype(table_dtype).name == "bfloat16":
    conv = (f"shl.b32 $0, {pair}, 16;" if pos % 2 == 0 else
            f"and.b32 $0, {pair}, 0xFFFF0000;")
  else:
    conv = (f"mov.b32 {{h0, h1}}, {pair};\n  cvt.f32.f16 $0, {'h0' if pos % 2 == 0 else 'h1'};")
  return "{\n  .reg .b32 pa, pb;\n  .reg .b16 h0, h1;" + body + "  " + conv + "\n}"


def register_table_words(lut: tuple[float, ...], table_dtype) -> np.ndarray:
  """uint32 ``[2, 4]``: ``LO[0], LO[2], HI[0], HI[2]``, twice.

  The kernels read row ``r % 2`` for tile row ``r``: per-thread addresses, so
  the compiler keeps the words in ordinary registers (a warp-uniform value is
  promoted to a uniform register and copied back before every use).
  """
  lo, hi = table_words(lut, table_dtype)
  return np.asarray([[lo[0], lo[2], hi[0], hi[2]]] * 2, np.uint32)


def join_order() -> tuple[int, ...]:
  """Element of a word at each position of ``join_elements``' last axis."""
  perm = []
  for f in range(8):
    i, j, k = f // 4, (f // 2) % 2, f % 2
    perm.append(4 * k + 2 * j + i)
  return tuple(perm)


def join_elements(elems: list[jax.Array]) -> jax.Array:
  """8 arrays ``[R, W]`` (element e of each word) -> ``[R, 8W]`` (``tt.join``s, no copy).

  Position ``8w + f`` holds element ``join_order()[f]`` of word ``w``.
  """
  pairs = [jnp.stack([elems[2 * q], elems[2 * q + 1]], axis=-1) for q in range(4)]
  quads = [jnp.stack([pairs[0], pairs[1]], axis=-1), jnp.stack([pairs[2], pairs[3]], axis=-1)]
  octs = jnp.stack(quads, axis=-1)
  r, w = elems[0].shape
  return octs.reshape(r, 8 * w)


def join_natural(elems: list[jax.Array]) -> jax.Array:
  """:func:`join_elements` with the list reordered so that position ``8w + e`` holds
  element ``e`` of word ``w``: the unpacked row's own order (no activation permutation)."""
  order = join_order()
  return join_elements([elems[order[j]] for j in range(8)])


# Elements of a word in the order the two lookups produce them.
LOOKUP_ORDER = (1, 0, 3, 2, 5, 4, 7, 6)


def decode_word_element(words: jax.Array, lut: tuple[float, ...], table_dtype, element: int, *,
                        table=None, out16: bool = False, interpret: bool) -> jax.Array:
  """uint32 words -> value of element ``element`` (0..7) of each word.

  float32, or the 16-bit table type itself when ``out16`` (tensor-core operands).

  Element ``2b`` of a word is the high nibble of its byte ``b``, ``2b + 1`` the
  low nibble (bitsandbytes' packing). ``table`` holds the four register table
  words (:func:`register_table_words`) as arrays of the shape of ``words``;
  the interpreter uses ``lut`` instead.
  """
  out_dtype = jnp.dtype(table_dtype) if out16 else jnp.dtype(jnp.float32)
  if interpret:
    values = tuple(float(v) for v in table_values(lut, table_dtype))
    shift = 8 * (element // 2) + (4 if element % 2 == 0 else 0)
    nib = ((words >> shift) & 0xF).astype(jnp.int32)
    return numerics.select_lut(nib, values).astype(out_dtype)
  from jax.experimental.pallas import triton as plgpu  # GPU kernels only
  r = plgpu.elementwise_inline_asm(
      word_element_ptx(lut, table_dtype, element, out16=out16), args=[words, *table],
      constraints=("=h" if out16 else "=r") + ",r" * 5, pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(words.shape, out_dtype)])
  return _first(r)


def table_values(lut: tuple[float, ...], table_dtype) -> np.ndarray:
  """The 16 table values as the kernels hold them, as float32."""
  dtype = jnp.dtype(table_dtype)
  return table_bits(lut, dtype).view(
      ml_dtypes.bfloat16 if dtype.name == "bfloat16" else np.float16).astype(np.float32)


# --- warp-shuffle table: exact float32 values, one SHFL per code --------------------
# Lane i of every half-warp holds table[i]. ``shfl.sync.idx`` with segment mask
# 0x10 (c = 0x100F) reads lane ``(lane & 16) | (b & 15)`` (PTX ISA, shfl.sync:
# only b[4:0] is used and the segment keeps the top bit), so the code needs no
# masking: a shift of the word puts it in the low 4 bits. Per code: one SHF
# (none for the lowest nibble) and one SHFL, and the value is the table's exact
# float32 (no 16-bit rounding, no convert).
SHFL_CLAMP = 0x100F


def _first(r) -> jax.Array:
  """The one result of ``elementwise_inline_asm`` (a list of one, or the array)."""
  return r[0] if isinstance(r, (list, tuple)) else r


def lane_id(like: jax.Array, *, interpret: bool, tied: bool = False) -> jax.Array:
  """int32 lane index of the thread holding each element (GPU), zeros otherwise.

  ``tied``: ``like`` (int32) itself is the instruction's operand, so the lane ids are read
  in ``like``'s register layout; from a fresh constant Triton may choose another layout
  and move the ids between threads afterwards (the transposed GEMV, run 9)."""
  zeros = jnp.zeros(like.shape, jnp.int32)
  if interpret:
    return zeros
  from jax.experimental.pallas import triton as plgpu  # GPU kernels only
  r = plgpu.elementwise_inline_asm(
      "mov.u32 $0, %laneid;", args=[like if tied else zeros], constraints="=r,r", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(like.shape, jnp.int32)])
  return _first(r)


def shfl_element_ptx(element: int) -> str:
  """PTX: ``$1`` = word, ``$2`` = this lane's table value, ``$0`` = element's value."""
  shift = 8 * (element // 2) + (4 if element % 2 == 0 else 0)
  if shift == 0:
    return f"shfl.sync.idx.b32 $0, $2, $1, {SHFL_CLAMP:#x}, 0xffffffff;"
  return ("{\n  .reg .b32 t;\n  shr.b32 t, $1, " + str(shift) + ";\n"
          f"  shfl.sync.idx.b32 $0, $2, t, {SHFL_CLAMP:#x}, 0xffffffff;\n}}")


def shfl_element(words: jax.Array, lut: tuple[float, ...], element: int, *, table=None,
                 interpret: bool) -> jax.Array:
  """float32 value of element ``element`` of each word through the shuffle table.

  ``table``: float32 array of ``words``' shape holding ``lut[lane & 15]`` in
  each thread (from :func:`lane_id`); the interpreter uses ``lut``.
  """
  if interpret:
    shift = 8 * (element // 2) + (4 if element % 2 == 0 else 0)
    nib = ((words >> shift) & 0xF).astype(jnp.int32)
    return numerics.select_lut(nib, tuple(float(v) for v in np.asarray(lut, np.float32)))
  from jax.experimental.pallas import triton as plgpu  # GPU kernels only
  r = plgpu.elementwise_inline_asm(
      shfl_element_ptx(element), args=[words, jax.lax.bitcast_convert_type(table, jnp.uint32)],
      constraints="=r,r,r", pack=1,
      result_shape_dtypes=[jax.ShapeDtypeStruct(words.shape, jnp.float32)])
  return _first(r)


# --- the table operand of a kernel, for either decode ---------------------------------


def table_operand(lut: tuple[float, ...], decode: str, table_dtype) -> jax.Array:
  """The table array a kernel takes: float32 ``[16]`` (``"shfl"``) or the register
  table words ``[2, 4]`` (``"prmt"``, :func:`register_table_words`)."""
  if decode == "shfl":
    return jnp.asarray(np.asarray(lut, np.float32))
  return jnp.asarray(register_table_words(lut, table_dtype))


def load_table(table_ref, decode: str, shape: tuple[int, ...], *, interpret: bool,
               like: jax.Array | None = None):
  """In a kernel, before its loop: the ``table=`` argument of the decoders for
  elements of ``shape``. ``"shfl"``: this lane's entry (:func:`shfl_element`);
  ``"prmt"``: the four register words, read at per-thread addresses (row parity).

  ``like`` (``"shfl"``): the words the table is shuffled with, read inside the loop; the
  lane ids are then taken in the words' own registers (:func:`lane_id`, ``tied``), so no
  layout conversion can move an entry away from its lane (the transposed GEMV)."""
  if decode == "shfl":
    ids = (lane_id(jnp.zeros(shape, jnp.int32), interpret=interpret) if like is None
           else lane_id(like, interpret=interpret, tied=True))
    return table_ref[ids & 15]
  parity = jax.lax.broadcasted_iota(jnp.int32, shape, 0) % 2
  return [table_ref[parity, jnp.full(shape, i, jnp.int32)] for i in range(4)]
