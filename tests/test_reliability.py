"""Silent wrong answers and half-done work that a check can catch (issue 15).

Each class of fault has its own tests. Arrays are tiny and shapes shared, so the
file adds few compilations to the suite.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from hypothesis import given, settings, strategies as st

import jaxfp4
import jaxfp4.io

F32_MAX = float(np.finfo(np.float32).max)


def _normal(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --- 1. double quantization keeps a NaN/Inf in its own nested group ---------------

def test_double_quant_nan_stays_in_its_nested_group():
  # 512 blocks of 64: two nested groups of 256 blocks (64 rows each).
  w = _normal((128, 256))
  w[3, 5] = np.nan
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4", compress_statistics=True)
  y = np.asarray(jaxfp4.dequantize_4bit(p, s))
  assert np.isnan(y[:64]).all() and np.isfinite(y[64:]).all()
  # The offset is the mean of the finite absmax, and the second group's absmax
  # decodes within the 8-bit map's rounding (half its widest gap).
  plain = np.asarray(jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4")[1].absmax, np.float64)
  assert abs(float(s.offset) - np.nanmean(plain)) <= 2 * np.spacing(np.float32(s.offset))
  code = np.asarray(s.state2.code)
  decoded = code[np.asarray(s.absmax[256:])] * float(s.state2.absmax[1]) + float(s.offset)
  bound = float(s.state2.absmax[1]) * np.max(np.diff(code)) / 2
  assert np.max(np.abs(decoded - plain[256:])) <= bound
  # matmul: only the outputs of the poisoned rows are NaN
  out = np.asarray(jaxfp4.matmul_4bit(jnp.ones((1, 256)), p, s))
  assert np.isnan(out[0, :64]).all() and np.isfinite(out[0, 64:]).all()


def test_double_quant_bnb_policy_still_poisons_everything():
  # bitsandbytes' own behaviour, kept byte for byte under nonfinite="bnb":
  # an Inf makes the offset non-finite and every block NaN.
  w = _normal((128, 256))
  w[3, 5] = np.inf
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4", compress_statistics=True,
                              nonfinite="bnb")
  assert not np.isfinite(float(s.offset))
  assert np.isnan(np.asarray(jaxfp4.dequantize_4bit(p, s))).all()


# --- 2. huge finite values ------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(big=st.floats(2.0 ** 126, F32_MAX, width=32), quant_type=st.sampled_from(["nf4", "fp4", "e2m1"]),
       nested=st.booleans(), where=st.integers(0, 127))
def test_huge_block_max_decodes_to_itself(big, quant_type, nested, where):
  w = _normal((2, 64))
  w.reshape(-1)[where] = -big
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type=quant_type, compress_statistics=nested)
  y = np.asarray(jaxfp4.dequantize_4bit(p, s), np.float64).reshape(-1)
  # measured: at most 1 ulp (e2m1 decodes through absmax * float32(1/6))
  assert abs(y[where] + big) <= 2 * big * 2.0 ** -23, (y[where], big)  # 2 ulp
  other = np.delete(np.arange(128), where)
  blk = where // 64
  same = other[other // 64 == blk]
  assert np.all(np.abs(y[same]) <= 0.1 * big)  # the rest of that block rounds toward 0
  rest = other[other // 64 != blk]
  if not nested:  # the other block is untouched
    w0 = w.copy()
    w0.reshape(-1)[where] = 0
    y0 = np.asarray(jaxfp4.dequantize_4bit(*jaxfp4.quantize_4bit(
        jnp.asarray(w0), quant_type=quant_type)), np.float64).reshape(-1)
    np.testing.assert_array_equal(y[rest], y0[rest])


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_huge_bnb_policy_is_bitsandbytes(quant_type):
  # bitsandbytes 0.50.2 on an H100 decodes such a block to 0 and, nested with
  # two such blocks, everything to NaN (docs/measurements/lut_2026-12-06b/bnb_huge.txt).
  w = _normal((2, 64))
  w[0, 5], w[1, 6] = 1e38, -3e38
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type=quant_type, nonfinite="bnb")
  assert float(s.absmax[0]) == np.float32(1e38)
  assert (np.asarray(jaxfp4.dequantize_4bit(p, s)) == 0).all()
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type=quant_type, nonfinite="bnb",
                              compress_statistics=True)
  assert np.isnan(np.asarray(jaxfp4.dequantize_4bit(p, s))).all()


def test_huge_stochastic_rounding_keeps_the_value():
  w = _normal((2, 64))
  w[0, 0] = 3e38
  p, s = jaxfp4.quantize_4bit(jnp.asarray(w), quant_type="nf4", rounding="stochastic",
                              key=jax.random.key(0))
  assert float(jaxfp4.dequantize_4bit(p, s)[0, 0]) == np.float32(3e38)


# --- 3. outlier columns are validated where they enter ----------------------------

def _outlier_weight():
  w = _normal((8, 64))
  return jaxfp4.quantize_4bit_with_outliers(jnp.asarray(w), num_columns=2, quant_type="nf4")


@pytest.mark.parametrize("index,match", [
    ([3, 64], r"`outliers.index` must hold input columns in \[0, 64\), got \[64\]"),
    ([-1, 3], r"`outliers.index` must hold input columns in \[0, 64\), got \[-1\]"),
    ([7, 7], r"`outliers.index` must not repeat a column; repeated: \[7\]"),
])
def test_outlier_index_out_of_range_or_repeated(index, match):
  p, s, cols = _outlier_weight()
  bad = jaxfp4.OutlierColumns(index=jnp.asarray(index, jnp.int32), values=cols.values)
  x = jnp.ones((1, 64))
  with pytest.raises(ValueError, match=match):
    jaxfp4.matmul_4bit(x, p, s, outliers=bad)
  with pytest.raises(ValueError, match=match):
    jaxfp4.dequantize_4bit_with_outliers(p, s, bad)
  from jaxfp4 import nnx as jnnx
  from flax import nnx
  with pytest.raises(ValueError, match=match):
    jnnx.Dense4bit(64, 8, quantized=(p, s, bad), rngs=nnx.Rngs(0))


def test_outlier_shapes_are_checked():
  p, s, cols = _outlier_weight()
  with pytest.raises(ValueError, match=r"`outliers.values` must have shape \(8, 2\)"):
    jaxfp4.matmul_4bit(jnp.ones((1, 64)), p, s,
                       outliers=jaxfp4.OutlierColumns(index=cols.index, values=cols.values[:4]))
  with pytest.raises(ValueError, match=r"`outliers.index` must be a 1-D int array"):
    jaxfp4.matmul_4bit(jnp.ones((1, 64)), p, s,
                       outliers=jaxfp4.OutlierColumns(index=cols.index[None], values=cols.values))


def test_outliers_checked_on_checkpoint_restore(tmp_path):
  from flax import nnx
  from jaxfp4 import nnx as jnnx
  import jaxfp4.io
  p, s, cols = _outlier_weight()
  layer = jnnx.Dense4bit(64, 8, quantized=(p, s, cols), rngs=nnx.Rngs(0))
  # corrupt the saved index: a column past the end
  layer.outliers.set_value(jaxfp4.OutlierColumns(index=jnp.asarray([3, 64], jnp.int32),
                                                 values=cols.values))
  jaxfp4.io.save_model(tmp_path / "m.safetensors", layer, progress=False)
  fresh = jnnx.Dense4bit(64, 8, quantized=(p, s, cols), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"m.safetensors: tensor 'outliers.index': `outliers.index` "
                                       r"must hold input columns in \[0, 64\)"):
    jaxfp4.io.load_model(tmp_path / "m.safetensors", fresh, progress=False)


# --- 4. a negative absmax is rejected where the state is built ---------------------

def _state(quant_type="nf4", nested=False):
  return jaxfp4.quantize_4bit(jnp.asarray(_normal((4, 64))), quant_type=quant_type,
                              compress_statistics=nested)


def test_negative_absmax_rejected_at_construction_and_from_dict():
  p, s = _state()
  with pytest.raises(ValueError, match=r"QuantState `absmax` must not be negative .* block 0 has -"):
    dataclasses.replace(s, absmax=-s.absmax)
  d = s.as_dict(packed=True)
  d["absmax"] = d["absmax"].copy()
  d["absmax"][2] *= -1
  with pytest.raises(ValueError, match=r"QuantState `absmax` must not be negative .* block 2"):
    jaxfp4.QuantState.from_dict(d)
  # bitsandbytes writes -FLT_MAX for an all-NaN block under nonfinite="bnb": allowed
  x = np.ones((2, 64), np.float32)
  x[0] = np.nan
  _, sb = jaxfp4.quantize_4bit(jnp.asarray(x), quant_type="nf4", nonfinite="bnb")
  assert float(sb.absmax[0]) == -F32_MAX
  jaxfp4.QuantState.from_dict(sb.as_dict(packed=True))


def test_negative_nested_absmax_or_offset_rejected():
  p, s = _state(nested=True)
  with pytest.raises(ValueError, match=r"`state2.absmax` \(the nested absmax\) must not be negative"):
    dataclasses.replace(s, state2=dataclasses.replace(s.state2, absmax=-s.state2.absmax))
  with pytest.raises(ValueError, match=r"QuantState `absmax` decodes to a negative value .* `offset`"):
    dataclasses.replace(s, offset=-s.offset)
  d = s.as_dict(packed=True)
  blob = [k for k in d if k.startswith("quant_state.")][0]
  meta = json.loads(d[blob].tobytes())
  meta["nested_offset"] = -meta["nested_offset"]
  d[blob] = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
  with pytest.raises(ValueError, match=r"decodes to a negative value"):
    jaxfp4.QuantState.from_dict(d)


def test_negative_nvfp4_scale_and_bad_global_scale():
  p, s = _state("nvfp4")
  neg = jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(s.absmax, jnp.uint8) | jnp.uint8(0x80), jnp.float8_e4m3fn)
  with pytest.raises(ValueError, match=r"`absmax` \(E4M3 block scales\) must not be negative"):
    dataclasses.replace(s, absmax=neg)
  with pytest.raises(ValueError, match=r"`global_scale` must be a positive finite float32"):
    dataclasses.replace(s, global_scale=-s.global_scale)


def test_value_checks_skip_tracers_and_rebuilt_pytrees():
  p, s = _state(nested=True)
  # under jit the values are unknown: shape checks only, no error and no host copy
  y = jax.jit(lambda p, s: jaxfp4.dequantize_4bit(p, s))(p, s)
  assert y.shape == (4, 64)
  leaves, tree = jax.tree_util.tree_flatten(s)
  s2 = jax.tree_util.tree_unflatten(tree, leaves)
  assert isinstance(s2, jaxfp4.QuantState) and s2.nested
  assert jax.tree_util.keystr(jax.tree_util.tree_leaves_with_path(s)[0][0]) == ".absmax"


# --- 5. safetensors offsets must tile the data section -----------------------------

def _raw_safetensors(path, entries, data):
  header = json.dumps(entries).encode()
  path.write_bytes(len(header).to_bytes(8, "little") + header + data)
  return path


@pytest.mark.parametrize("offsets,data_len,match", [
    ([[0, 16], [0, 16]], 16, r"tensors 'a' \(bytes \[0, 16\)\) and 'b' \(bytes \[0, 16\)\) overlap"),
    ([[0, 16], [12, 28]], 28, r"tensors 'a' \(bytes \[0, 16\)\) and 'b' \(bytes \[12, 28\)\) overlap"),
    ([[0, 16], [20, 36]], 36, r"bytes \[16, 20\) of the data section, after tensor 'a' and before 'b', "
                              r"belong to no tensor"),
    ([[4, 20], [20, 36]], 36, r"bytes \[0, 4\) of the data section, before the first tensor"),
    ([[0, 16], [16, 32]], 40, r"the data section holds 40 bytes but the tensors end at byte 32"),
])
def test_safetensors_overlapping_or_shifted_offsets(tmp_path, offsets, data_len, match):
  entries = {n: {"dtype": "F32", "shape": [4], "data_offsets": o} for n, o in zip("ab", offsets)}
  path = _raw_safetensors(tmp_path / "x.safetensors", entries, b"\0" * data_len)
  with pytest.raises(ValueError, match=r"x.safetensors: " + match):
    jaxfp4.io.SafetensorsFile(path)


def test_safetensors_well_formed_files_still_load(tmp_path):
  path = jaxfp4.io.write_safetensors(tmp_path / "ok.safetensors", {
      "b": np.arange(3, dtype=np.float32), "empty": np.zeros((0, 2), np.float16),
      "a": np.ones((2, 2), np.uint8)})
  with jaxfp4.io.SafetensorsFile(path) as f:
    np.testing.assert_array_equal(f.get("b"), [0, 1, 2])
    assert f.get("empty").shape == (0, 2)
  # a writer that orders tensors differently from their offsets is fine too
  entries = {"b": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]},
             "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}
  with jaxfp4.io.SafetensorsFile(_raw_safetensors(tmp_path / "r.safetensors", entries,
                                                  bytes([1, 2, 3, 4]))) as f:
    assert f.get("b").tolist() == [3, 4]


# --- 6. the command line never writes over its input; file errors are one line -----

def _cli(args):
  from jaxfp4._src.cli.main import main
  try:
    return main([str(a) for a in args])
  except SystemExit as e:  # argparse usage errors
    return e.code


@pytest.fixture
def weight_file(tmp_path):
  return jaxfp4.io.write_safetensors(tmp_path / "F.safetensors", {"w": np.ones((4, 64), np.float32)})


@pytest.mark.parametrize("make_args,option", [
    (lambda f: ["analyze", f, "--json", f], "--json"),
    (lambda f: ["analyze", f, "--figure", "w", "--output", f], "--output"),
    (lambda f: ["plan", f, "--bits", "4.3", "--json", f], "--json"),
    (lambda f: ["plan", f, "--bits", "4.3", "--figure", f], "--figure"),
    (lambda f: ["inspect", f, "--json", f], "--json"),
    (lambda f: ["inspect", f.parent, "--json", f], "--json"),
])
def test_cli_refuses_to_write_over_its_input(weight_file, capsys, make_args, option):
  before = weight_file.read_bytes()
  assert _cli(make_args(weight_file)) == 2
  err = capsys.readouterr().err
  assert f"{option}: {str(weight_file)!r} is an input of this command" in err
  assert weight_file.read_bytes() == before


def test_cli_output_problems_are_reported_before_the_work(weight_file, tmp_path, capsys):
  cases = [
      (tmp_path, "is a folder; give a file path"),
      (weight_file / "x.json", "which is a file, not a folder"),
      (tmp_path / "missing" / "x.json", "the folder of .* does not exist"),
  ]
  for out, match in cases:
    assert _cli(["analyze", weight_file, "--json", out]) == 2
    captured = capsys.readouterr()
    assert "analyzing" not in captured.out  # nothing was quantized
    assert re.search(r"--json: .*" + match, captured.err), captured.err
  existing = tmp_path / "old.json"
  existing.write_text("keep")
  assert _cli(["inspect", weight_file, "--json", existing]) == 2
  assert f"--json: {str(existing)!r} exists" in capsys.readouterr().err
  assert existing.read_text() == "keep"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_cli_unwritable_folder_is_reported_before_the_work(weight_file, tmp_path, capsys):
  locked = tmp_path / "locked"
  locked.mkdir(mode=0o500)
  assert _cli(["analyze", weight_file, "--json", locked / "x.json"]) == 2
  assert "--json: cannot write to the folder of" in capsys.readouterr().err


def test_cli_file_errors_are_one_line_with_debug_for_the_traceback(weight_file, capsys, monkeypatch):
  src = pathlib.Path(__file__).parent / "data" / "llama_tiny" / "bf16"
  assert _cli(["quantize", src, weight_file / "out", "--no-progress"]) == 2  # checked up front
  assert "lies under" in capsys.readouterr().err
  from jaxfp4._src.io import convert

  def denied(*a, **kw):
    raise PermissionError(13, "Permission denied", "/data/out/model.safetensors")
  monkeypatch.setattr(convert, "quantize_checkpoint", denied)
  assert _cli(["quantize", src, "elsewhere", "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert err == ("jaxfp4 quantize: error: Permission denied: '/data/out/model.safetensors' "
                 "(check its permissions) (--debug shows the traceback)\n")
  with pytest.raises(PermissionError):
    _cli(["--debug", "quantize", src, "elsewhere", "--no-progress"])


# --- 7. inspect says when a 4-bit group is incomplete ------------------------------

def test_inspect_reports_a_group_without_its_quant_state(tmp_path, capsys):
  src = pathlib.Path(__file__).parent / "data" / "llama_tiny" / "nf4_dq" / "model.safetensors"
  with jaxfp4.io.SafetensorsFile(src) as f:
    blob = next(k for k in f.keys() if ".quant_state.bitsandbytes__" in k)
    tensors = {k: f.get(k) for k in f.keys() if k != blob}
  path = jaxfp4.io.write_safetensors(tmp_path / "m.safetensors", tensors)
  weight = blob.split(".quant_state.")[0]
  assert _cli(["inspect", path]) == 2
  err = capsys.readouterr().err
  assert f"the 4-bit group of {weight!r} is incomplete" in err and "no " in err
  assert f"{weight}.absmax" in err


# --- no half-done work --------------------------------------------------------------

def test_quantize_checkpoint_failing_midway_leaves_no_output(tmp_path, monkeypatch):
  from jaxfp4._src.io import convert
  calls = []

  def fail_on_second(*a, **kw):
    calls.append(1)
    if len(calls) == 2:
      raise ValueError("injected failure")
    return jaxfp4.quantize_4bit(*a, **kw)
  monkeypatch.setattr(convert, "quantize_4bit", fail_on_second)
  src = pathlib.Path(__file__).parent / "data" / "llama_tiny" / "bf16"
  out = tmp_path / "out"
  with pytest.raises(ValueError, match="injected failure"):
    convert.quantize_checkpoint(src, out, progress=False)
  assert not out.exists() and list(tmp_path.iterdir()) == []  # no partial dir either
  out.mkdir()  # an empty out_dir is allowed and is left as it was on failure
  calls.clear()
  with pytest.raises(ValueError, match="injected failure"):
    convert.quantize_checkpoint(src, out, progress=False)
  assert list(out.iterdir()) == [] and sorted(tmp_path.iterdir()) == [out]


def test_quantize_model_failing_on_a_layer_leaves_the_model_unchanged():
  from flax import nnx
  import jaxfp4.nnx
  model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)), nnx.Linear(32, 8, rngs=nnx.Rngs(1)))
  with pytest.raises(ValueError, match=r"`num_columns` must be an int in \[0, 32\)"):
    jaxfp4.nnx.quantize_model(model, outlier_columns=40)
  assert all(type(l) is nnx.Linear for l in model.layers)


def test_precision_plan_save_never_overwrites(tmp_path):
  plan = jaxfp4.PrecisionPlan((), 4.0, {})
  path = tmp_path / "plan.json"
  plan.save(path)
  path.write_text("mine")
  with pytest.raises(FileExistsError, match=r"plan.json' exists; jaxfp4 never writes over"):
    plan.save(path)
  assert path.read_text() == "mine"
  assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # no temporary left behind


def test_skip_pattern_matching_nothing_warns_and_add_lora_without_4bit_layers_raises():
  from flax import nnx
  import jaxfp4.nnx
  model = nnx.Sequential(nnx.Linear(64, 64, rngs=nnx.Rngs(0)))
  with pytest.warns(UserWarning, match=r"`skip` pattern 'lm_haed' matches no linear layer.*'layers.0'"):
    jaxfp4.nnx.quantize_model(model, skip=["lm_haed"])
  with pytest.raises(ValueError, match=r"`module` \(Sequential\) has no Dense4bit layer"):
    jaxfp4.nnx.add_lora(nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0))), rank=2, rngs=nnx.Rngs(1))


# --- vague errors: loaders -----------------------------------------------------------

@pytest.fixture
def tiny_4bit(tmp_path):
  src = pathlib.Path(__file__).parent / "data" / "llama_tiny" / "nf4_dq"
  dst = tmp_path / "ckpt"
  dst.mkdir()
  for f in src.iterdir():
    (dst / f.name).write_bytes(f.read_bytes())
  return dst


@pytest.mark.parametrize("text,match", [
    ("{not json", r"config.json: not valid JSON \(.* at line 1, column 2\)"),
    ("x", r"`quantization_config` must be a JSON object, got 'x'"),
])
def test_from_pretrained_malformed_config_names_the_file(tiny_4bit, text, match):
  from jaxfp4.models import llama
  if text == "x":
    cfg = json.loads((tiny_4bit / "config.json").read_text())
    text = json.dumps(cfg | {"quantization_config": "x"})
  (tiny_4bit / "config.json").write_text(text)
  with pytest.raises(ValueError, match=match):
    llama.from_pretrained(tiny_4bit, progress=False)


def test_from_pretrained_malformed_index_names_the_file(tiny_4bit):
  from jaxfp4.models import llama
  (tiny_4bit / "model.safetensors.index.json").write_text('{"weight_map": ')
  with pytest.raises(ValueError, match=r"model.safetensors.index.json: not valid JSON"):
    llama.from_pretrained(tiny_4bit, progress=False)


@pytest.mark.parametrize("kwargs,match", [
    (dict(dtype="bf17"), r"`dtype` must be one of \('bfloat16', 'float16', 'float32'\), got 'bf17'"),
    (dict(param_dtype=3.5), r"`param_dtype` must be one of"),
    (dict(skip=5), r"`skip` must be a module name or a sequence of names/globs, got 5"),
])
def test_from_pretrained_bad_arguments(tiny_4bit, kwargs, match):
  from jaxfp4.models import llama
  with pytest.raises(ValueError, match=match):
    llama.from_pretrained(tiny_4bit, progress=False, **kwargs)


def test_from_pretrained_mis_shaped_4bit_tensor_is_named(tiny_4bit):
  from jaxfp4.models import llama
  path = tiny_4bit / "model.safetensors"
  with jaxfp4.io.SafetensorsFile(path) as f:
    tensors = {k: f.get(k) for k in f.keys()}
  blob = next(k for k in tensors if k.startswith("model.layers.0.mlp.down_proj.weight.quant_state."))
  meta = json.loads(tensors[blob].tobytes())
  meta["shape"] = meta["shape"][::-1]  # transposed
  tensors[blob] = np.frombuffer(json.dumps(meta).encode(), np.uint8).copy()
  path.unlink()
  jaxfp4.io.write_safetensors(path, tensors)
  with pytest.raises(ValueError, match=r"tensor 'model.layers.0.mlp.down_proj.weight': The quantized "
                                       r"weight has shape .* but the layer needs"):
    llama.from_pretrained(tiny_4bit, progress=False)


def test_dense4bit_quantized_must_be_a_pair_or_triple():
  from flax import nnx
  import jaxfp4.nnx
  p, s = _state()
  with pytest.raises(ValueError, match=r"`quantized` must be \(packed, state\) or \(packed, state, "
                                       r"outliers\), got tuple of 1"):
    jaxfp4.nnx.Dense4bit(64, 4, quantized=(p,), rngs=nnx.Rngs(0))


# --- vague errors: keys, nonfinite="raise" under jit, nvfp4 global_scale -------------

@pytest.mark.parametrize("key,got", [
    (42, r"got int 42"), (jnp.ones(2), r"got an array of float32\[2\]"),
    (jnp.uint32(7), r"got an array of uint32\[\]"), (jax.random.split(jax.random.key(0)), r"keys\[2\]"),
])
def test_stochastic_rounding_key_is_validated(key, got):
  with pytest.raises(ValueError, match=r"`key` must be a PRNG key: jax.random.key\(seed\) .*" + got):
    jaxfp4.quantize_4bit(jnp.ones((2, 64)), quant_type="nf4", rounding="stochastic", key=key)
  from jaxfp4 import training
  with pytest.raises(ValueError, match=r"`key` must be a PRNG key"):
    training.fake_quantize(jnp.ones((2, 64)), quant_type="nf4", rounding="stochastic", key=key)


def test_legacy_key_works_and_unused_key_is_ignored():
  x = jnp.asarray(_normal((2, 64)))
  a = jaxfp4.quantize_4bit(x, quant_type="nf4", rounding="stochastic", key=jax.random.PRNGKey(1))[0]
  b = jaxfp4.quantize_4bit(x, quant_type="nf4", rounding="stochastic", key=jax.random.key(1))[0]
  np.testing.assert_array_equal(a, b)
  ref = jaxfp4.quantize_4bit(x, quant_type="nf4")[0]
  np.testing.assert_array_equal(jaxfp4.quantize_4bit(x, quant_type="nf4", key="garbage")[0], ref)


def test_nonfinite_raise_under_jit_says_it_first(caplog):
  # Logged (to stderr when logging is not configured) before JAX wraps the error.
  import functools
  q = jax.jit(functools.partial(jaxfp4.quantize_4bit, quant_type="nf4", nonfinite="raise"))
  with pytest.raises(Exception, match=r"`x` has 128 NaN/Inf values and nonfinite='raise'"):
    jax.block_until_ready(q(jnp.full((2, 64), jnp.nan)))
  ours = [r for r in caplog.records if r.name == "jaxfp4"]
  assert ours and ours[0].levelname == "ERROR", caplog.records
  assert ours[0].getMessage().startswith(
      "jaxfp4.quantize_4bit (under jit): `x` has 128 NaN/Inf values"), ours[0].getMessage()


def test_nvfp4_global_scale_of_the_wrong_shape():
  p, s = _state("nvfp4")
  with pytest.raises(ValueError, match=r"QuantState `global_scale` must be a float32 scalar \(shape \(\)\), "
                                       r"got float32\[2\]"):
    jaxfp4.dequantize_4bit(p, dataclasses.replace(s, global_scale=jnp.ones(2, jnp.float32)))
