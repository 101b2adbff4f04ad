"""Calibration token ids for ``jaxfp4 quantize --calibration FILE``.

FILE is token ids (``.npy``, or ``.safetensors`` with one integer tensor or
``input_ids``), ``[rows, seq]`` used as given or a 1-D stream cut into windows
of ``seq_len``; or text (any other suffix), tokenized with the model
directory's ``tokenizer.json`` through the ``tokenizers`` package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_calibration(path: str | Path, model_dir: str | Path, *, seq_len: int, num_samples: int,
                     vocab_size: int) -> np.ndarray:
  """int32 token ids ``[rows, seq]`` (at most ``num_samples`` rows); ValueError naming the file otherwise."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"--calibration {str(path)!r} is not a file.")
  if path.suffix == ".npy":
    ids = np.load(path, allow_pickle=False)
  elif path.suffix == ".safetensors":
    from jaxfp4._src.io.safetensors import SafetensorsFile
    with SafetensorsFile(path) as f:
      keys = [k for k in f.keys() if np.issubdtype(np.dtype(f.info(k).dtype), np.integer)]
      key = "input_ids" if "input_ids" in keys else (keys[0] if len(keys) == 1 else None)
      if key is None:
        raise ValueError(f"--calibration {str(path)!r}: expected one integer tensor or 'input_ids', found "
                         f"{f.keys()[:6]}.")
      ids = f.get(key)
  else:
    ids = _tokenize(path, Path(model_dir))
  if not np.issubdtype(ids.dtype, np.integer) or ids.ndim not in (1, 2) or ids.size == 0:
    raise ValueError(f"--calibration {str(path)!r} must hold integer token ids [rows, seq] or [tokens], got "
                     f"{ids.dtype}{list(ids.shape)}.")
  if ids.min() < 0 or ids.max() >= vocab_size:
    raise ValueError(f"--calibration {str(path)!r} has token ids outside [0, {vocab_size}) (the model's "
                     f"vocab_size): min {ids.min()}, max {ids.max()}.")
  if ids.ndim == 1:
    n = ids.size // seq_len
    if n == 0:
      raise ValueError(f"--calibration {str(path)!r} has {ids.size} tokens, fewer than --seq-len {seq_len}.")
    starts = np.linspace(0, ids.size - seq_len, min(n, num_samples)).astype(np.int64)
    ids = np.stack([ids[s:s + seq_len] for s in starts])
  return np.ascontiguousarray(ids[:num_samples], np.int32)


def _tokenize(path: Path, model_dir: Path) -> np.ndarray:
  tok = model_dir / "tokenizer.json"
  if not tok.is_file():
    raise ValueError(f"--calibration {str(path)!r} is read as text, which needs {str(tok)!r}; give token ids "
                     "as .npy or .safetensors instead.")
  try:
    from tokenizers import Tokenizer
  except ImportError:
    raise ValueError(f"--calibration {str(path)!r} is read as text, which needs the `tokenizers` package "
                     "(pip install tokenizers); or give token ids as .npy or .safetensors.") from None
  text = path.read_text(encoding="utf-8")
  return np.asarray(Tokenizer.from_file(str(tok)).encode(text).ids, np.int64)
