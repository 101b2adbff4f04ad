"""Tests of the ``jaxfp4 demo`` and ``jaxfp4 analyze`` sub-commands."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from jaxfp4._src.cli.main import main

ALL = ("nf4", "fp4", "e2m1", "mxfp4", "nvfp4")


def png_size(path) -> tuple[int, int]:
  with open(path, "rb") as f:
    data = f.read(24)
  assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
  return struct.unpack(">II", data[16:24])


def table_rows(out: str) -> list[list[str]]:
  """The rows of the printed error table (the header starts with 'format' or 'tensor')."""
  lines = out.splitlines()
  start = next(i for i, l in enumerate(lines) if l.split()[:1] in (["format"], ["tensor"]))
  rows = []
  for line in lines[start + 1:]:
    if not line.strip():
      break
    rows.append(line.split())
  return rows


def test_demo_default_experiment(tmp_path, capsys):
  png, js = tmp_path / "fp4.png", tmp_path / "d.json"
  assert main(["demo", "--output", str(png), "--json", str(js)]) == 0
  out = capsys.readouterr().out
  x = np.random.default_rng(0).normal(0, 0.5, 50).astype(np.float32)
  assert f"range [{x.min():.4f}, {x.max():.4f}]" in out
  assert "memory: 200 bytes" in out
  rows = table_rows(out)
  assert [r[0] for r in rows] == ["fp4", "nf4", "e2m1", "mxfp4", "nvfp4"]
  assert [r[1] for r in rows] == ["64", "64", "64", "32", "16"]
  assert "fp4: 200 bytes -> 25 bytes packed + 4 bytes state = 29 bytes" in out
  assert png_size(png) == (1440, 1080)
  assert str(png.resolve()) in out
  doc = json.loads(js.read_text())
  assert doc["bytes"] == 200 and doc["size"] == 50
  assert [r["quant_type"] for r in doc["reports"]] == ["fp4", "nf4", "e2m1", "mxfp4", "nvfp4"]
  fp4 = doc["reports"][0]
  assert (fp4["bytes_before"], fp4["packed_bytes"], fp4["bytes_after"]) == (200, 25, 29)
  # printed MAE is the JSON one, rounded
  assert rows[0][3] == f"{fp4['mae']:.4g}"


def test_demo_options(tmp_path, capsys):
  png = tmp_path / "n.png"
  assert main(["demo", "--size", "300", "--std", "0.1", "--seed", "3", "--blocksize", "128",
               "--quant-types", "nf4,mxfp4", "--double-quant", "--figure-types", "e2m1",
               "--output", str(png)]) == 0
  out = capsys.readouterr().out
  rows = table_rows(out)
  assert [(r[0], r[1], r[2]) for r in rows] == [("nf4", "128", "yes"), ("mxfp4", "32", "no")]
  assert "figure (e2m1)" in out
  assert png_size(png) == (1440, 1080)


@pytest.mark.parametrize("argv,message", [
    (["--quant-types", "fp4,int4"], "nf4, fp4, e2m1, mxfp4, nvfp4"),
    (["--figure-types", "fp8"], "unknown quant type 'fp8'"),
    (["--blocksize", "100"], "blocksize"),
    (["--size", "0"], "--size"),
])
def test_demo_usage_errors(tmp_path, capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    main(["demo", "--output", str(tmp_path / "x.png"), *argv])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert message in err and "Traceback" not in err
  assert not (tmp_path / "x.png").exists()


def write_model(path):
  rng = np.random.default_rng(0)
  save_file({"layer.weight": rng.normal(0, 0.02, (5, 10)).astype(np.float32),
             "layer.bias": rng.normal(0, 0.02, (7,)).astype(np.float32),
             "position_ids": np.arange(10, dtype=np.int64)}, str(path))


def test_analyze_safetensors(tmp_path, capsys):
  model, png, js = tmp_path / "m.safetensors", tmp_path / "w.png", tmp_path / "a.json"
  write_model(model)
  assert main(["analyze", str(model), "--quant-types", "nf4,fp4", "--figure", "layer.weight",
               "--output", str(png), "--json", str(js)]) == 0
  captured = capsys.readouterr()
  rows = table_rows(captured.out)
  assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
      ("layer.bias", "7", "float32", "nf4"), ("layer.bias", "7", "float32", "fp4"),
      ("layer.weight", "5x10", "float32", "nf4"), ("layer.weight", "5x10", "float32", "fp4")]
  assert all("position_ids" not in r for r in rows)
  assert "3 tensors, 2 float" in captured.out
  assert "analyze" in captured.err  # the tqdm bar goes to stderr
  assert png_size(png) == (1440, 1080)
  doc = json.loads(js.read_text())
  assert [(r["tensor"], r["quant_type"]) for r in doc["rows"]] == [
      ("layer.bias", "nf4"), ("layer.bias", "fp4"), ("layer.weight", "nf4"),
      ("layer.weight", "fp4")]
  w = doc["rows"][2]
  assert w["shape"] == [5, 10] and w["numel"] == 50
  assert (w["bytes_before"], w["packed_bytes"], w["state_bytes"]) == (200, 25, 4)


def test_analyze_npz_and_max_tensors(tmp_path, capsys):
  path = tmp_path / "w.npz"
  rng = np.random.default_rng(1)
  np.savez(path, a=rng.normal(size=(5, 10)).astype(np.float32), n=np.arange(3),
           b=rng.normal(size=(50,)))
  assert main(["analyze", str(path), "--quant-types", "nf4", "--max-tensors", "1"]) == 0
  rows = table_rows(capsys.readouterr().out)
  assert [(r[0], r[1], r[3]) for r in rows] == [("a", "5x10", "nf4")]
  assert main(["analyze", str(path), "--quant-types", "nvfp4"]) == 0
  rows = table_rows(capsys.readouterr().out)
  assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
      ("a", "float32", "nvfp4", "16"), ("b", "float32", "nvfp4", "16")]


def test_analyze_errors(tmp_path, capsys):
  model = tmp_path / "m.safetensors"
  write_model(model)
  with pytest.raises(SystemExit) as e:
    main(["analyze", str(model), "--figure", "layer.wieght"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "'layer.wieght' is not in the file" in err and "'layer.weight'" in err
  with pytest.raises(SystemExit) as e:
    main(["analyze", str(model), "--figure", "position_ids"])
  assert e.value.code == 2 and "not a float tensor" in capsys.readouterr().err
  other = tmp_path / "weights.bin"
  other.write_bytes(b"\0" * 16)
  with pytest.raises(SystemExit) as e:
    main(["analyze", str(other)])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "weights.bin" in err and ".safetensors" in err
  with pytest.raises(SystemExit) as e:
    main(["analyze", str(tmp_path / "none.npz")])
  assert e.value.code == 2 and "none.npz" in capsys.readouterr().err
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(model.read_bytes()[:40])
  with pytest.raises(SystemExit) as e:
    main(["analyze", str(cut)])
  err = capsys.readouterr().err
  assert e.value.code == 2 and "cut.safetensors" in err and "Traceback" not in err


def test_demo_draws_only_the_formats_it_reports(tmp_path, capsys):
  assert main(["demo", "--quant-types", "fp4", "--output", str(tmp_path / "f.png")]) == 0
  out = capsys.readouterr().out
  assert "figure (fp4):" in out and "nf4" not in out
  assert "levels: distinct decoded values" in out and "as a fraction" in out


def test_analyze_explains_an_all_zero_tensor(tmp_path, capsys):
  path = tmp_path / "z.npz"
  np.savez(path, z=np.zeros((4, 16), np.float32))
  assert main(["analyze", str(path), "--quant-types", "nf4"]) == 0
  out = capsys.readouterr().out
  (row,) = table_rows(out)
  assert row[6:9] == ["0", "0", "0"] and row[9:11] == ["n/a", "n/a"] and row[11] == "inf"
  assert "n/a: the tensor has no nonzero value" in out and "SQNR inf: the tensor decodes exactly" in out
