"""Bad input raises a ValueError that names the argument and what is allowed."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxfp4

X = jnp.ones((4, 64), jnp.float32)


@pytest.mark.parametrize("kwargs,match", [
    (dict(quant_type="int4"), r"`quant_type` must be one of \('nf4', 'fp4', 'e2m1', 'mxfp4', 'nvfp4'\)"),
    (dict(quant_type="nf4", blocksize=48), r"`blocksize` must be one of \(32, 64, .*4096\)"),
    (dict(quant_type="nf4", blocksize=16), r"`blocksize` must be one of"),
    (dict(quant_type="nf4", blocksize=64.0), r"`blocksize` must be an int"),
    (dict(quant_type="mxfp4", blocksize=64), r"`blocksize` must be one of \(32,\) for quant_type='mxfp4'"),
    (dict(quant_type="nvfp4", blocksize=32), r"one of \(16,\) for quant_type='nvfp4'"),
    (dict(quant_type="mxfp4", compress_statistics=True), r"`compress_statistics=True` is not available"),
    (dict(quant_type="nf4", compress_statistics="yes"), r"`compress_statistics` must be one of"),
    (dict(rounding="up"), r"`rounding` must be one of \('nearest', 'stochastic'\)"),
    (dict(rounding="stochastic"), r"needs a PRNG `key`"),
    (dict(nonfinite="ignore"), r"`nonfinite` must be one of \('propagate', 'bnb', 'raise'\)"),
    (dict(implementation="cuda"), r"`implementation` must be one of"),
    (dict(quant_storage=jnp.complex64), r"`quant_storage` must be one of"),
])
def test_quantize_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    jaxfp4.quantize_4bit(X, **kwargs)


@pytest.mark.parametrize("x", [
    jnp.ones((4, 64), jnp.int32), jnp.ones((4, 64), jnp.uint8), jnp.ones((4, 64), jnp.bool_),
    jnp.ones((4, 64), jnp.complex64), np.ones((4, 64), np.int64), [1, 2, 3]])
def test_non_float_input(x):
  with pytest.raises(ValueError, match=r"`x` must have a dtype in \('float32', 'bfloat16', 'float16'\)"):
    jaxfp4.quantize_4bit(x, quant_type="nf4")


def test_storage_that_does_not_divide_the_bytes():
  with pytest.raises(ValueError, match=r"`quant_storage`=float32 needs the packed byte count"):
    jaxfp4.quantize_4bit(jnp.ones((3, 2)), quant_type="nf4", quant_storage=jnp.float32)


def test_packed_and_state_that_do_not_belong_together():
  p, s = jaxfp4.quantize_4bit(X, quant_type="nf4")
  p2, _ = jaxfp4.quantize_4bit(jnp.ones((8, 64)), quant_type="nf4")
  with pytest.raises(ValueError, match=r"`packed` holds 256 bytes but the state describes 256 elements"):
    jaxfp4.dequantize_4bit(p2, s)
  with pytest.raises(ValueError, match=r"`state` must be a QuantState"):
    jaxfp4.dequantize_4bit(p, {"absmax": s.absmax})
  with pytest.raises(ValueError, match=r"`quant_storage` must be one of"):
    jaxfp4.dequantize_4bit(p.astype(jnp.complex64), s)


def test_state_whose_leaves_disagree_with_its_metadata():
  p, s = jaxfp4.quantize_4bit(X, quant_type="nf4")
  bad = jaxfp4.QuantState(absmax=s.absmax[:3], shape=s.shape, dtype=s.dtype,
                          blocksize=s.blocksize, quant_type="nf4", code=s.code)
  with pytest.raises(ValueError, match=r"QuantState `absmax` must have shape \(4,\)"):
    jaxfp4.dequantize_4bit(p, bad)
  bad = jaxfp4.QuantState(absmax=s.absmax.astype(jnp.bfloat16), shape=s.shape, dtype=s.dtype,
                          blocksize=s.blocksize, quant_type="nf4", code=s.code)
  with pytest.raises(ValueError, match=r"QuantState `absmax` must be float32"):
    jaxfp4.dequantize_4bit(p, bad)
  bad = jaxfp4.QuantState(absmax=s.absmax, shape=s.shape, dtype=s.dtype,
                          blocksize=s.blocksize, quant_type="nvfp4", code=s.code)
  with pytest.raises(ValueError, match=r"`blocksize` must be one of \(16,\)"):
    jaxfp4.dequantize_4bit(p, bad)


def _packed_dict(**kw):
  _, s = jaxfp4.quantize_4bit(jnp.ones((16, 64), jnp.bfloat16), quant_type="nf4",
                              compress_statistics=True)
  d = {f"model.w.{k}": v for k, v in s.as_dict(packed=True).items()}
  blob_key = "model.w.quant_state.bitsandbytes__nf4"
  meta = json.loads(d[blob_key].tobytes())
  meta.update(kw)
  d[blob_key] = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
  return d, blob_key


@pytest.mark.parametrize("mutate,match", [
    (lambda d, k: d.pop("model.w.absmax"), r"Missing `model.w.absmax`"),
    (lambda d, k: d.update({"model.w.extra": np.zeros(3)}), r"Unexpected key 'model.w.extra'"),
    (lambda d, k: d.update({"model.w.absmax": d["model.w.absmax"][:-1]}),
     r"`model.w.absmax` must have shape \(16,\)"),
    (lambda d, k: d.update({"model.w.absmax": d["model.w.absmax"].astype(np.float32)}),
     r"`model.w.absmax` must be uint8"),
    (lambda d, k: d.update({"model.w.quant_map": d["model.w.quant_map"][::-1].copy()}),
     r"`model.w.quant_map` is not the standard nf4 table"),
    (lambda d, k: d.update({k: np.frombuffer(b"{not json", np.uint8).copy()}),
     r"does not hold valid JSON"),
    (lambda d, k: d.update({"model.v.quant_state.bitsandbytes__fp4": d[k]}),
     r"Expected one `quant_state.bitsandbytes__\*` key"),
    (lambda d, k: d.update({"model.w.nested_quant_map": np.zeros(256, np.float32)}),
     r"must be strictly increasing"),
])
def test_from_dict_rejects_malformed_groups(mutate, match):
  d, key = _packed_dict()
  mutate(d, key)
  with pytest.raises(ValueError, match=match):
    jaxfp4.QuantState.from_dict(d)


@pytest.mark.parametrize("meta,match", [
    (dict(quant_type="fp4"), r"names quant_type 'nf4' but its JSON says 'fp4'"),
    (dict(blocksize=100), r"`blocksize` must be one of"),
    (dict(dtype="float64"), r"`dtype` must be one of \('float32', 'bfloat16', 'float16'\)"),
    (dict(shape=[16, -64]), r"`shape` must be a list of non-negative ints"),
    (dict(shape=[32, 64]), r"`model.w.absmax` must have shape \(32,\)"),
    (dict(nested_blocksize=128), r"`nested_blocksize` must be 256"),
    (dict(nested_offset="x"), r"`nested_offset` must be a finite number"),
])
def test_from_dict_rejects_malformed_json(meta, match):
  d, _ = _packed_dict(**meta)
  with pytest.raises(ValueError, match=match):
    jaxfp4.QuantState.from_dict(d)


def test_from_dict_rejects_non_state():
  with pytest.raises(ValueError, match=r"Not a quant state"):
    jaxfp4.QuantState.from_dict({"weight": np.zeros(3)})


# --- NaN / Inf policy ------------------------------------------------------------

def _with_nan():
  x = np.random.default_rng(0).standard_normal((4, 64)).astype(np.float32)
  x[1, 3] = np.nan
  x[2, 5] = -np.inf
  return jnp.asarray(x)


@pytest.mark.parametrize("quant_type", jaxfp4.QUANT_TYPES)
def test_nonfinite_propagate_poisons_only_its_block(quant_type):
  x = _with_nan()
  bs = {"mxfp4": 32, "nvfp4": 16}.get(quant_type, 64)
  y = np.asarray(jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(x, quant_type=quant_type)))
  blocks = y.reshape(-1, bs)
  bad = ~np.isfinite(np.asarray(x)).reshape(-1, bs).all(axis=1)
  assert np.isnan(blocks[bad]).all() and np.isfinite(blocks[~bad]).all()


def test_nonfinite_raise_eagerly_and_under_jit():
  with pytest.raises(ValueError, match=r"`x` has 2 NaN/Inf values and nonfinite='raise'"):
    jaxfp4.quantize_4bit(_with_nan(), quant_type="nf4", nonfinite="raise")
  q = jax.jit(functools.partial(jaxfp4.quantize_4bit, quant_type="nf4", nonfinite="raise"))
  q(X)[0].block_until_ready()  # finite input passes
  with pytest.raises(Exception, match=r"2 NaN/Inf values"):
    jax.block_until_ready(q(_with_nan()))


def test_nonfinite_bnb_follows_bitsandbytes():
  # NaN is skipped by the block max and encoded as nibble 0 (NF4: -1.0 * absmax);
  # Inf makes the block's absmax Inf (golden data covers this bit for bit).
  x = np.zeros((1, 64), np.float32)
  x[0, :3] = [0.5, np.nan, -0.25]
  p, s = jaxfp4.quantize_4bit(jnp.asarray(x), quant_type="nf4", nonfinite="bnb")
  assert float(s.absmax[0]) == 0.5
  y = np.asarray(jaxfp4.dequantize_4bit(p, s))
  assert y[0, 1] == -0.5  # the silent substitution bitsandbytes makes
