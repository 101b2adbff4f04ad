"""Shared by the training examples: the standard-library byte corpus and the training loop.

The text is the ``.py`` sources of the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``), so every machine has it offline. Files
are read in sorted order, one byte is one token (vocabulary 256, no specials).

* Held-out domain (``DOMAIN``): the Internet-protocol and data-format
  packages and modules (``email``, ``json``, ``http``, ``urllib``, ``xml``,
  ``html``, ``xmlrpc``, ``wsgiref``, ``mailbox``, ``mimetypes``, ``smtplib``,
  ``imaplib``, ``poplib``, ``ftplib``, ``nntplib``): MIME headers, RFC
  grammars, markup and wire formats, code unlike the rest of the library.
* Pretraining text: every other ``.py`` file, except ``site-packages``,
  ``test``/``tests``/``idle_test`` directories (Linux distributions often ship
  them separately, so leaving them out keeps the corpus the same).
* Evaluation files: a file goes to the eval split when ``crc32(path) % 5 == 0``
  (domain) or ``% 25 == 0`` (pretraining), so the split does not move when
  another Python version adds or drops files.

The model is a byte-level ``jaxfp4.models.llama`` (:func:`make_config`), trained
by :func:`train`: one jitted AdamW step per batch, held-out evaluations every
few steps, a :class:`History` of what happened. The example scripts import this
module as a sibling (``examples/`` is on ``sys.path`` when one of them runs), after
they have made ``jaxfp4`` importable.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import time
import zlib
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from jaxfp4.models import llama

DOMAIN = ("email", "json", "http", "urllib", "xml", "html", "xmlrpc", "wsgiref", "mailbox", "mimetypes",
          "smtplib", "imaplib", "poplib", "ftplib", "nntplib")
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})


# ---------------------------------------------------------------- data


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Byte tokens of the four splits and what went into them."""

  pretrain_train: np.ndarray
  pretrain_eval: np.ndarray
  domain_train: np.ndarray
  domain_eval: np.ndarray
  files: dict[str, list[str]]

  def stats(self) -> dict[str, Any]:
    return {name: {"files": len(self.files[name]), "bytes": int(getattr(self, name).size)}
            for name in ("pretrain_train", "pretrain_eval", "domain_train", "domain_eval")}


def list_sources(root: Path) -> list[str]:
  """Sorted ``/``-separated relative paths of the ``.py`` files under ``root``."""
  out = []
  for d, dirs, files in os.walk(root):
    # Pruning in place stops os.walk from descending into site-packages (large) and tests.
    dirs[:] = sorted(x for x in dirs if x not in EXCLUDED_DIRS and not x.startswith("config-"))
    rel = Path(d).relative_to(root)
    out.extend((rel / f).as_posix() for f in files if f.endswith(".py"))
  return sorted(out)


def top_name(path: str) -> str:
  """``email`` for ``email/utils.py``, ``mailbox`` for ``mailbox.py``."""
  return path.split("/", 1)[0].removesuffix(".py")


def load_corpus(root: Path, domain: Sequence[str]) -> Corpus:
  """Reads and splits the standard library's sources (see the module docstring)."""
  domain = set(domain)
  files: dict[str, list[str]] = {k: [] for k in ("pretrain_train", "pretrain_eval", "domain_train", "domain_eval")}
  for path in list_sources(root):
    in_domain = top_name(path) in domain
    held = zlib.crc32(path.encode()) % (5 if in_domain else 25) == 0
    files[("domain" if in_domain else "pretrain") + ("_eval" if held else "_train")].append(path)
  empty = [k for k, v in files.items() if not v]
  if empty:
    raise SystemExit(f"error: no .py files for {empty} under {root} with --domain {','.join(sorted(domain))}.")

  def tokens(paths: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join((root / p).read_bytes() for p in paths), np.uint8)

  return Corpus(**{k: tokens(v) for k, v in files.items()}, files=files)


def train_offsets(n_tokens: int, seq_len: int, steps: int, batch: int, seed: int) -> np.ndarray:
  """``[steps, batch]`` random window starts: every variant sees the same batches."""
  if n_tokens < seq_len + 2:
    raise SystemExit(f"error: a split of {n_tokens} bytes is shorter than one window of {seq_len + 1}.")
  return np.random.default_rng(seed).integers(0, n_tokens - seq_len - 1, size=(steps, batch))


def windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
  """int32 ``[len(starts), seq_len + 1]``: inputs and their next-byte targets."""
  return tokens[starts[:, None] + np.arange(seq_len + 1)[None, :]].astype(np.int32)


def eval_windows(tokens: np.ndarray, n: int, seq_len: int) -> np.ndarray:
  """``n`` evenly spaced windows over an eval split (fixed, so every eval sees the same bytes)."""
  starts = np.linspace(0, tokens.size - seq_len - 1, n).astype(np.int64)
  return windows(tokens, starts, seq_len)


# ---------------------------------------------------------------- model


def make_config(args: argparse.Namespace) -> llama.LlamaConfig:
  """A byte-level Llama: vocabulary 256, no BOS/EOS (windows are cut mid-file anyway).

  Args:
    args: parsed flags with ``hidden_size``, ``intermediate_size``, ``layers``,
      ``heads``, ``kv_heads`` and ``seq_len``.

  Returns:
    The model config.
  """
  return llama.LlamaConfig(
      vocab_size=256, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
      num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
      rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=args.seq_len,
      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)


def nbytes(tree: Any) -> int:
  """Bytes of every array leaf of ``tree``."""
  return int(sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


# ---------------------------------------------------------------- training


def token_nll(model: llama.LlamaForCausalLM, ids: jax.Array) -> jax.Array:
  """float32 next-byte negative log-likelihood ``[B, T]`` of ``ids [B, T + 1]``."""
  logits, _ = model(ids[:, :-1])
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


def schedule(peak: float, steps: int) -> optax.Schedule:
  """Linear warmup over 10% of the steps, cosine decay to 10% of ``peak``."""
  warmup = max(1, steps // 10)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(steps, warmup + 1), peak * 0.1)


@dataclasses.dataclass
class History:
  """What one training run recorded."""

  train_loss: list[float] = dataclasses.field(default_factory=list)
  eval_steps: list[int] = dataclasses.field(default_factory=list)
  eval_loss: list[float] = dataclasses.field(default_factory=list)
  step_seconds: list[float] = dataclasses.field(default_factory=list)

  def median_step_seconds(self) -> float:
    # The first two calls include compilation (the second can still recompile for donated layouts).
    times = self.step_seconds[2:] or self.step_seconds
    return statistics.median(times)


class NonFiniteLoss(FloatingPointError):
  """A training loss was NaN or infinite; ``history`` holds the run up to that step."""

  def __init__(self, message: str, history: History, step: int):
    super().__init__(message)
    self.history = history
    self.step = step


def train(
    model: nnx.Module,
    wrt: Any,
    *,
    tokens: np.ndarray,
    offsets: np.ndarray,
    seq_len: int,
    lr: float,
    eval_ids: np.ndarray,
    eval_every: int,
    desc: str,
    progress: bool,
) -> History:
  """Trains the ``wrt`` variables of ``model`` in place with AdamW; evaluates every ``eval_every`` steps.

  One jitted function is the whole step (forward, loss, gradient of ``wrt``,
  clipping, AdamW update); the model and optimizer state go in and out as one
  pytree, donated so a step needs no second copy of it. Everything else in the
  state (e.g. the counters of the ``nnx.Rngs`` streams that stochastic rounding
  draws its keys from) comes out updated too, so no step reuses a key.

  Args:
    model: the model, updated in place.
    wrt: the filter of the trained variables (``nnx.Param``, ``nnx.LoRAParam``).
    tokens: the byte tokens of the training split.
    offsets: ``[steps, batch]`` window starts (:func:`train_offsets`).
    seq_len: tokens per window.
    lr: peak learning rate of :func:`schedule`.
    eval_ids: ``[n, seq_len + 1]`` evaluation windows (:func:`eval_windows`).
    eval_every: steps between evaluations (the last step is always evaluated).
    desc: the progress bar's label.
    progress: show a progress bar.

  Returns:
    The run's :class:`History`.

  Raises:
    NonFiniteLoss: a step's loss was not finite. The exception carries the
      history up to that step; ``model`` is not updated (and where the backend
      honours donation its arrays were consumed: do not use it afterwards).
  """
  steps = offsets.shape[0]
  # weight_decay 0: the runs are short, and decaying frozen-base adapters toward 0 is not what we compare.
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule(lr, steps), b2=0.95, weight_decay=0.0))
  # optax's bias correction mixes int32 and float32, which strict dtype promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    opt = nnx.Optimizer(model, tx, wrt=wrt)
  graphdef, state = nnx.split((model, opt))

  def step(state, ids):
    m, o = nnx.merge(graphdef, state)
    loss, grads = nnx.value_and_grad(lambda m: token_nll(m, ids).mean(), argnums=nnx.DiffState(0, wrt))(m)
    with jax.numpy_dtype_promotion("standard"):
      o.update(m, grads)
    return nnx.state((m, o)), loss

  def evaluate(state, ids):
    m, _ = nnx.merge(graphdef, state)
    return token_nll(m, ids).mean()

  step_fn = jax.jit(step, donate_argnums=0)
  eval_fn = jax.jit(evaluate)
  eval_ids = jnp.asarray(eval_ids)
  hist = History()
  bar = tqdm(range(steps + 1), desc=desc, unit="step", disable=not progress, leave=False)
  for i in bar:
    if i % eval_every == 0 or i == steps:
      hist.eval_steps.append(i)
      hist.eval_loss.append(float(eval_fn(state, eval_ids)))
    if i == steps:
      break
    ids = jnp.asarray(windows(tokens, offsets[i], seq_len))
    t0 = time.perf_counter()
    state, loss = step_fn(state, ids)
    loss = float(loss)  # waits for the step: the timing covers the whole update
    hist.step_seconds.append(time.perf_counter() - t0)
    hist.train_loss.append(loss)
    if not math.isfinite(loss):
      bar.close()
      raise NonFiniteLoss(f"{desc}: loss is {loss} at step {i}.", hist, i)
    bar.set_postfix(loss=f"{loss:.3f}", eval=f"{hist.eval_loss[-1]:.3f}")
  nnx.update((model, opt), state)
  return hist


# ---------------------------------------------------------------- plotting


# ---------------------------------------------------------------- command line

# The model-size flags both training scripts take; each adds its own schedule flags.
SIZE_FLAGS = (
    ("--hidden-size", int, "model width"), ("--intermediate-size", int, "MLP width"),
    ("--layers", int, "decoder layers"), ("--heads", int, "attention heads"),
    ("--kv-heads", int, "key/value heads"), ("--seq-len", int, "tokens (bytes) per window"),
    ("--batch-size", int, "windows per step"))


def preset_parser(description: str, presets: dict[str, dict[str, Any]],
                  flags: Sequence[tuple[str, type, str]]) -> argparse.ArgumentParser:
  """A parser with ``--preset`` and one flag per preset value; a flag given explicitly wins."""
  p = argparse.ArgumentParser(
      description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Size and schedule flags default to the preset's values:\n" + "\n".join(
          f"  {name}: " + ", ".join(f"{k}={v}" for k, v in preset.items()) for name, preset in presets.items()))
  p.add_argument("--preset", choices=sorted(presets), default="cpu", help="sizes and schedule (default: cpu)")
  g = p.add_argument_group("model and schedule (default: the preset's)")
  for flag, typ, text in flags:
    g.add_argument(flag, type=typ, default=None, help=text)
  return p


def apply_preset(p: argparse.ArgumentParser, args: argparse.Namespace, presets: dict[str, dict[str, Any]],
                 positive: Sequence[str]) -> None:
  """Fills the flags left unset from ``--preset`` and rejects non-positive ``positive`` ones."""
  for k, v in presets[args.preset].items():
    if getattr(args, k) is None:
      setattr(args, k, v)
  for k in positive:
    if getattr(args, k) <= 0:
      p.error(f"--{k.replace('_', '-')} must be positive, got {getattr(args, k)}.")


def moving_average(values: Sequence[float], k: int) -> tuple[np.ndarray, np.ndarray]:
  """``(steps, means)``: the mean of each ``k`` consecutive values, at the 1-based step ending it."""
  v = np.asarray(values, np.float64)
  k = max(1, min(k, v.size))
  return np.arange(k, v.size + 1), np.convolve(v, np.ones(k) / k, mode="valid")
