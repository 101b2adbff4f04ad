"""Tests of jaxfp4.analysis: metrics against hand-computed values, sizes, figure, weight files."""

from __future__ import annotations

import math
import struct
import sys
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

import jaxfp4
from jaxfp4 import analysis

# bitsandbytes' NF4 table (functional.get_4bit_type("nf4")), written out here
# so the expected errors do not come from the code under test.
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
       -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
       0.07958029955625534, 0.16093020141124725, 0.24611230194568634,
       0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0)


def png_size(path) -> tuple[int, int]:
  with open(path, "rb") as f:
    data = f.read(24)
  assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
  assert data[12:16] == b"IHDR"
  return struct.unpack(">II", data[16:24])


# --- metrics ------------------------------------------------------------------


@pytest.mark.parametrize("quant_type,values", [
    ("fp4", [1.0, -0.5, 0.25, 0.0, -1.0, 0.5, -0.25, 1.0]),  # FP4 codes, absmax 1
    ("nf4", [1.0, -1.0, 0.0, 1.0, 0.0, -1.0, 1.0, 0.0]),
    ("e2m1", [6.0, -3.0, 1.5, 0.5, 0.0, -1.0, 2.0, 4.0]),  # E2M1 values, scale 1
    ("mxfp4", [6.0, -3.0, 1.5, 0.5, 0.0, -1.0, 2.0, 4.0]),  # E8M0 scale 2**0
])
def test_exactly_representable_input_has_zero_error(quant_type, values):
  x = np.array(values, np.float32)
  r = analysis.error_report(x, quant_type=quant_type)
  assert r.mae == r.rmse == r.max_abs_error == 0.0
  assert r.mean_rel_error == r.max_rel_error == 0.0
  assert r.sqnr_db == math.inf
  assert r.distinct_levels == len(set(values))
  assert r.min == min(values) and r.max == max(values)
  assert r.mean == pytest.approx(sum(values) / len(values))
  assert r.std == pytest.approx(float(np.std(np.array(values, np.float64))))


def test_nf4_hand_computed_errors():
  # absmax 1: 0.5 lies below the midpoint 0.5017 of NF4 levels 0.4407 and
  # 0.5626, -0.25 below the midpoint -0.2346 of -0.2844 and -0.1848.
  x = [1.0, 0.5, -0.25, 0.0]
  deq = [1.0, float(np.float32(NF4[12])), float(np.float32(NF4[4])), 0.0]
  err = [abs(d - o) for d, o in zip(deq, x)]
  r = analysis.error_report(np.array(x, np.float32), quant_type="nf4")
  assert r.mae == pytest.approx(sum(err) / 4, rel=1e-12)
  assert r.mae == pytest.approx((0.5 - 0.44070982933044434 + 0.28444138169288635 - 0.25) / 4)
  assert r.rmse == pytest.approx(math.sqrt(sum(e * e for e in err) / 4), rel=1e-12)
  assert r.max_abs_error == pytest.approx(0.5 - 0.44070982933044434, rel=1e-7)
  # relative error skips the zero element: mean over 3 values
  rel = [err[0] / 1.0, err[1] / 0.5, err[2] / 0.25]
  assert r.mean_rel_error == pytest.approx(sum(rel) / 3, rel=1e-12)
  assert r.max_rel_error == pytest.approx(max(rel), rel=1e-12)
  assert r.sqnr_db == pytest.approx(
      10 * math.log10(sum(v * v for v in x) / sum(e * e for e in err)), rel=1e-12)
  assert r.distinct_levels == 4


def test_fp4_hand_computed_with_block_scale():
  # absmax 2: 0.3 / 2 = 0.15 falls between the FP4 thresholds 0.0859 and 0.2083,
  # so it decodes to the level 1/6, times 2.
  x = np.array([2.0, 1.0, -0.5, 0.3], np.float32)
  third = float(np.float32(np.float32(1 / 6) * np.float32(2)))
  r = analysis.error_report(x, quant_type="fp4")
  e = third - float(np.float32(0.3))
  assert r.mae == pytest.approx(e / 4, rel=1e-12)
  assert r.max_abs_error == pytest.approx(e, rel=1e-12)
  assert r.max_rel_error == pytest.approx(e / float(np.float32(0.3)), rel=1e-12)
  assert r.mean_rel_error == pytest.approx(e / float(np.float32(0.3)) / 4, rel=1e-12)


def test_all_zero_input():
  r = analysis.error_report(np.zeros(10, np.float32), quant_type="fp4")
  assert r.mae == 0.0 and r.sqnr_db == math.inf and r.distinct_levels == 1
  assert math.isnan(r.mean_rel_error) and math.isnan(r.max_rel_error)


@pytest.mark.parametrize("quant_type,cs,state_bytes", [
    ("nf4", False, 64 * 4),  # 64 float32 absmax
    ("fp4", False, 64 * 4),
    ("nf4", True, 64 + 4 + 4),  # uint8 codes, offset, 1 nested float32 absmax
    ("mxfp4", False, 4096 // 32),  # one E8M0 byte per 32
    ("nvfp4", False, 4096 // 16 + 4),  # one E4M3 byte per 16 + global scale
])
def test_bytes_match_formula_and_state(quant_type, cs, state_bytes):
  x = np.random.default_rng(0).normal(0, 1, 4096).astype(np.float32)
  deq, packed, state = analysis.quantize_roundtrip(x, quant_type=quant_type,
                                                   compress_statistics=cs)
  r = analysis.report_from_roundtrip(x, deq, packed, state)
  assert r.bytes_after == packed.nbytes + state.nbytes()
  assert r.packed_bytes == 2048 and r.state_bytes == state_bytes
  assert r.bytes_after == 2048 + state_bytes
  assert r.bytes_before == 4096 * 4
  assert r.compression_ratio == 4096 * 4 / (2048 + state_bytes)
  assert r.bits_per_weight == 8 * (2048 + state_bytes) / 4096
  assert r.compress_statistics is cs


def test_nf4_4096_weights_blocksize_64_is_2304_bytes():
  x = np.ones((64, 64), jnp.bfloat16)
  r = analysis.error_report(x, quant_type="nf4", blocksize=64)
  assert (r.packed_bytes, r.state_bytes, r.bytes_after) == (2048, 256, 2304)
  assert r.bytes_before == 8192 and r.dtype == "bfloat16" and r.numel == 4096
  assert r.bits_per_weight == 4.5 and r.blocksize == 64


def test_odd_size_and_tail_block():
  x = np.linspace(-1, 1, 67, dtype=np.float32)  # 2 blocks of 64, odd count
  r = analysis.error_report(x, quant_type="nf4")
  assert r.packed_bytes == 34 and r.state_bytes == 8 and r.numel == 67


def test_roundtrip_matches_eager_library_calls():
  # quantize_roundtrip jits quantize (non-nested) and dequantize; the bits must
  # stay those of the plain eager calls.
  # The shape of test_bytes_match_formula_and_state: eager ops compile per
  # shape, so sharing it saves seconds.
  x = np.random.default_rng(0).normal(0, 1, 4096).astype(np.float32)
  cases = [(qt, False) for qt in jaxfp4.QUANT_TYPES] + [("nf4", True)]
  for qt, cs in cases:
    deq, packed, state = analysis.quantize_roundtrip(x, quant_type=qt, compress_statistics=cs)
    p2, s2 = jaxfp4.quantize_4bit(x, quant_type=qt, compress_statistics=cs)
    want = np.asarray(jaxfp4.dequantize_4bit(p2, s2)).astype(np.float64)
    assert np.array_equal(np.asarray(packed), np.asarray(p2)), qt
    assert np.array_equal(deq.view(np.uint64), want.view(np.uint64)), qt
    assert deq.shape == x.shape and deq.dtype == np.float64
    assert state.nbytes() == s2.nbytes()


def test_jax_input_and_shape():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(8, 16)), jnp.float16)
  deq, _, state = analysis.quantize_roundtrip(x, quant_type="fp4")
  assert deq.shape == (8, 16) and state.shape == (8, 16)
  r = analysis.error_report(x, quant_type="fp4")
  assert r.dtype == "float16" and r.bytes_before == 256
  assert r.mae == pytest.approx(float(np.mean(np.abs(deq - np.asarray(x, np.float64)))))


def test_bad_inputs_raise_value_error():
  with pytest.raises(ValueError, match="empty"):
    analysis.error_report(np.zeros((0, 3), np.float32))
  with pytest.raises(ValueError, match="NaN/Inf"):
    analysis.error_report(np.array([1.0, np.nan], np.float32))
  with pytest.raises(ValueError, match="dtype"):
    analysis.error_report(np.ones(4, np.float64))
  with pytest.raises(ValueError, match="dtype"):
    analysis.error_report(np.ones(4, np.int32))
  with pytest.raises(ValueError, match="quant_type"):
    analysis.error_report(np.ones(4, np.float32), quant_type="int4")
  with pytest.raises(ValueError, match="compress_statistics"):
    analysis.error_report(np.ones(4, np.float32), quant_type="mxfp4", compress_statistics=True)


def test_compare_formats_options_and_order():
  # 4096 weights and default blocks for the nested case: its eager compile is
  # then shared with test_bytes_match_formula_and_state.
  x = np.random.default_rng(2).normal(0, 0.5, 4096).astype(np.float32)
  reports = analysis.compare_formats(x, ["nvfp4", "fp4", "mxfp4"], blocksize=128)
  assert [(r.quant_type, r.blocksize, r.compress_statistics) for r in reports] == [
      ("nvfp4", 16, False), ("fp4", 128, False), ("mxfp4", 32, False)]
  assert reports[1] == analysis.error_report(x, quant_type="fp4", blocksize=128)
  assert reports[1].state_bytes == 4096 // 128 * 4
  reports = analysis.compare_formats(x, ["nf4", "mxfp4"], compress_statistics=True)
  assert [(r.quant_type, r.blocksize, r.compress_statistics) for r in reports] == [
      ("nf4", 64, True), ("mxfp4", 32, False)]
  with pytest.raises(ValueError, match="blocksize"):
    analysis.compare_formats(x, ["mxfp4", "fp4"], blocksize=100)


def test_as_dict_and_format_table():
  x = np.random.default_rng(2).normal(0, 0.5, 256).astype(np.float32)
  reports = analysis.compare_formats(x, ["fp4", "nf4"])
  d = reports[0].as_dict()
  assert d["quant_type"] == "fp4" and d["bytes_after"] == reports[0].bytes_after
  assert set(d) >= {"mae", "rmse", "sqnr_db", "compression_ratio", "distinct_levels"}
  table = analysis.format_table(reports, leading={"tensor": ["w", "w"]})
  lines = table.splitlines()
  assert len(lines) == 3
  assert lines[0].split()[:4] == ["tensor", "format", "block", "dq"]
  assert lines[1].split()[1] == "fp4" and lines[2].split()[1] == "nf4"
  assert f"{reports[1].mae:.4g}" in lines[2]
  # right-aligned numeric columns end at the same place as their headers
  assert lines[0].index("levels") + len("levels") == len(lines[1])
  with pytest.raises(ValueError, match="leading"):
    analysis.format_table(reports, leading={"tensor": ["w"]})


# --- figure -------------------------------------------------------------------


def test_plot_analysis_writes_png_without_touching_the_backend(tmp_path):
  import matplotlib
  backend = matplotlib.get_backend()
  had_pyplot = "matplotlib.pyplot" in sys.modules
  x = np.random.default_rng(0).normal(0, 0.5, 50).astype(np.float32)
  results = {qt: analysis.quantize_roundtrip(x, quant_type=qt)[0] for qt in ("fp4", "nf4")}
  out = analysis.plot_analysis(x, results, tmp_path / "a.png")
  assert out == tmp_path / "a.png"
  assert png_size(out) == (1440, 1080)
  assert matplotlib.get_backend() == backend
  assert ("matplotlib.pyplot" in sys.modules) == had_pyplot


def test_plot_analysis_subsamples_large_and_constant_inputs(tmp_path):
  x = np.random.default_rng(0).normal(0, 1, (30, 200)).astype(np.float32)
  deq = analysis.quantize_roundtrip(x, quant_type="nf4")[0]
  out = analysis.plot_analysis(x, {"nf4": deq}, str(tmp_path / "big.png"), max_points=500,
                               title="big")
  assert png_size(out) == (1440, 1080)
  flat = np.full(7, 0.5, np.float32)
  out = analysis.plot_analysis(flat, {"fp4": flat}, tmp_path / "flat.png")
  assert png_size(out) == (1440, 1080)
  with pytest.raises(ValueError, match="elements"):
    analysis.plot_analysis(x, {"nf4": deq[:3]}, tmp_path / "bad.png")
  with pytest.raises(ValueError, match="empty"):
    analysis.plot_analysis(np.zeros(0), {}, tmp_path / "bad.png")


# --- weight files -------------------------------------------------------------


def write_safetensors(path):
  rng = np.random.default_rng(0)
  tensors = {
      "w32": rng.normal(size=(4, 16)).astype(np.float32),
      "wbf16": rng.normal(size=(3, 5)).astype(ml_dtypes.bfloat16),
      "w64": rng.normal(size=(6,)),
      "ids": np.arange(5, dtype=np.int64),
  }
  save_file(tensors, str(path))
  return tensors


def test_safetensors_float_tensors_only(tmp_path):
  path = tmp_path / "m.safetensors"
  tensors = write_safetensors(path)
  infos = {t.name: t for t in analysis.list_tensors(path)}
  assert {n: (t.shape, t.dtype) for n, t in infos.items()} == {
      "w32": ((4, 16), "float32"), "wbf16": ((3, 5), "bfloat16"),
      "w64": ((6,), "float64"), "ids": ((5,), "int64")}
  got = dict(analysis.iter_float_tensors(path))
  assert sorted(got) == ["w32", "w64", "wbf16"]
  assert got["w32"].dtype == jnp.float32 and isinstance(got["w32"], jax.Array)
  assert got["wbf16"].dtype == jnp.bfloat16
  assert np.array_equal(np.asarray(got["wbf16"]), tensors["wbf16"])
  assert got["w64"].dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got["w64"]), tensors["w64"].astype(np.float32))
  assert [n for n, _ in analysis.iter_float_tensors(path, names={"w32", "ids"})] == ["w32"]


def test_npz(tmp_path):
  path = tmp_path / "m.npz"
  a = np.arange(12, dtype=np.float16).reshape(3, 4)
  np.savez(path, a=a, b=np.ones(3), n=np.arange(3), bf=np.ones(2, ml_dtypes.bfloat16))
  infos = analysis.list_tensors(path)
  assert [(t.name, t.shape, t.is_float) for t in infos] == [
      ("a", (3, 4), True), ("b", (3,), True), ("n", (3,), False), ("bf", (2,), False)]
  got = list(analysis.iter_float_tensors(path))
  assert [n for n, _ in got] == ["a", "b"]
  np.testing.assert_array_equal(got[0][1], a)
  assert got[1][1].dtype == np.float32


def test_weight_file_errors(tmp_path):
  bad = tmp_path / "w.pt"
  bad.write_bytes(b"x")
  with pytest.raises(ValueError, match="w.pt"):
    analysis.list_tensors(bad)
  with pytest.raises(ValueError, match="w.pt"):
    analysis.iter_float_tensors(bad)
  with pytest.raises(FileNotFoundError, match="missing.npz"):
    analysis.list_tensors(tmp_path / "missing.npz")
  full = tmp_path / "full.safetensors"
  write_safetensors(full)
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(full.read_bytes()[:-20])
  with pytest.raises(ValueError, match="cut.safetensors"):
    analysis.list_tensors(cut)
  junk = tmp_path / "junk.npz"
  junk.write_bytes(b"not a zip file at all")
  with pytest.raises(ValueError, match="junk.npz"):
    list(analysis.iter_float_tensors(junk))
  # a zip whose .npy member is cut short
  trunc = tmp_path / "trunc.npz"
  with zipfile.ZipFile(trunc, "w") as zf:
    zf.writestr("a.npy", b"\x93NUMPY\x01\x00")
  with pytest.raises(ValueError, match="trunc.npz"):
    analysis.list_tensors(trunc)
