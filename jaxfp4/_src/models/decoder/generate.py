"""Jitted autoregressive generation for :class:`DecoderForCausalLM` (Llama included).

The model is split with ``nnx.split``; the graph definition is a static jit
argument and the state a traced one, so one compilation serves every model of
the same structure for a given (batch, prompt length, max_new_tokens, sampling
setup). Prefill is one jitted call; the whole decode loop is another (a
``lax.fori_loop``), and :class:`GenerateFns` exposes both, plus a single decode
step, so benchmarks can time them apart.

Prompts in a batch must have equal length (no padding): the KV cache keeps one
fill length for all rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxfp4._src.models.decoder.model import DecoderForCausalLM, KVCache, init_cache


@dataclasses.dataclass(frozen=True)
class _Sampling:
  """The static part of the sampling setup (it changes the traced program)."""

  greedy: bool
  top_k: int | None
  use_top_p: bool


def _filter_and_sample(logits, key, temperature, top_p, *, sampling: _Sampling) -> jax.Array:
  """Token ids ``[B]`` from float32 ``logits [B, V]`` (transformers' warper order)."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if sampling.top_k is not None:
    kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if sampling.use_top_p:
    # transformers' TopPLogitsWarper drops the tokens whose ascending cumulative
    # probability is <= 1 - top_p; equivalently it keeps, in descending order,
    # each token whose more-likely predecessors sum to < top_p (so always the top one).
    desc = -jnp.sort(-logits, axis=-1)
    probs = jax.nn.softmax(desc, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.sum(before < top_p, axis=-1, keepdims=True)
    cutoff = jnp.take_along_axis(desc, jnp.maximum(n_keep - 1, 0), axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _is_eos(tokens, eos_ids):
  return jnp.any(tokens[:, None] == eos_ids[None, :], axis=-1)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len", "cache_dtype", "sampling"))
def _prefill(graphdef, state, prompt_ids, key, temperature, top_p, eos_ids, *, max_len, cache_dtype, sampling):
  model = nnx.merge(graphdef, state)
  cache = init_cache(model.config, prompt_ids.shape[0], max_len, cache_dtype)
  hidden, cache = model.model(prompt_ids, cache=cache)
  # Only the last position's logits are needed: skip the lm_head on the rest.
  logits = model.logits(hidden[:, -1:, :])[:, 0].astype(jnp.float32)
  key, sub = jax.random.split(key)
  token = _filter_and_sample(logits, sub, temperature, top_p, sampling=sampling)
  done = _is_eos(token, eos_ids)
  return token, cache, done, key


@functools.partial(jax.jit, static_argnames=("graphdef", "num_steps", "sampling"))
def _decode(graphdef, state, token, cache, done, key, temperature, top_p, eos_ids, pad_id, *, num_steps, sampling):
  model = nnx.merge(graphdef, state)
  tokens = jnp.zeros((token.shape[0], num_steps + 1), jnp.int32).at[:, 0].set(token)

  def body(i, carry):
    tokens, cache, done, key = carry
    cur = jax.lax.dynamic_slice_in_dim(tokens, i, 1, axis=1)
    hidden, cache = model.model(cur, cache=cache)
    logits = model.logits(hidden)[:, 0].astype(jnp.float32)
    key, sub = jax.random.split(key)
    nxt = _filter_and_sample(logits, sub, temperature, top_p, sampling=sampling)
    # Finished rows keep emitting the pad token, as transformers does.
    nxt = jnp.where(done, pad_id, nxt)
    done = done | _is_eos(nxt, eos_ids)
    tokens = jax.lax.dynamic_update_slice_in_dim(tokens, nxt[:, None], i + 1, axis=1)
    return tokens, cache, done, key

  tokens, *_ = jax.lax.fori_loop(0, num_steps, body, (tokens, cache, done, key))
  return tokens


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _step(graphdef, state, token, cache):
  model = nnx.merge(graphdef, state)
  logits, cache = model(token[:, None], cache=cache)
  return logits[:, 0], cache


def _check_options(temperature, top_k, top_p, max_new_tokens):
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
    raise ValueError(f"`max_new_tokens` must be a positive int, got {max_new_tokens!r}.")
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
      or not math.isfinite(temperature) or temperature < 0:
    raise ValueError(f"`temperature` must be a finite number >= 0 (0 is greedy), got {temperature!r}.")
  if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
    raise ValueError(f"`top_k` must be None or a positive int, got {top_k!r}.")
  if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                            or not 0.0 < top_p <= 1.0):
    raise ValueError(f"`top_p` must be None or in (0, 1], got {top_p!r}.")


def _token_ids(name: str, value: Any) -> tuple[int, ...]:
  if value is None:
    return ()
  ids = tuple(value) if isinstance(value, (list, tuple)) else (value,)
  if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
    raise ValueError(f"`{name}` must be None, an int >= 0 or a non-empty list of them, got {value!r}.")
  return ids


def sample_logits(
    logits: jax.Array,
    key: jax.Array | None = None,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
  """Picks one token per row of ``logits [B, vocab]`` as :func:`generate` does.

  Args:
    logits: next-token logits (upcast to float32).
    key: PRNG key; required when ``temperature > 0``.
    temperature: 0 takes the argmax; otherwise logits are divided by it.
    top_k: keep only the ``top_k`` largest logits (ties at the k-th kept).
    top_p: keep the smallest set of most likely tokens whose probability
      reaches ``top_p`` (applied after ``top_k``, as in transformers).

  Returns:
    int32 token ids ``[B]``.
  """
  _check_options(temperature, top_k, top_p, 1)
  logits = jnp.asarray(logits)
  if logits.ndim != 2:
    raise ValueError(f"`logits` must be [batch, vocab], got shape {logits.shape}.")
  sampling = _sampling(temperature, top_k, top_p, logits.shape[-1])
  if not sampling.greedy and key is None:
    raise ValueError("`key` is required when `temperature` > 0 (sampling); pass jax.random.key(seed).")
  return _filter_and_sample(logits.astype(jnp.float32), key, jnp.float32(temperature or 1.0),
                            jnp.float32(top_p or 1.0), sampling=sampling)


def _sampling(temperature, top_k, top_p, vocab_size) -> _Sampling:
  greedy = temperature == 0
  return _Sampling(
      greedy=greedy,
      # top_k >= vocab keeps everything; top_p == 1 too (transformers skips both).
      top_k=None if greedy or top_k is None or top_k >= vocab_size else top_k,
      use_top_p=not greedy and top_p is not None and top_p < 1.0)


@dataclasses.dataclass(frozen=True)
class GenerateFns:
  """The jitted pieces of :func:`generate` for one model state and sampling setup.

  Built by :func:`make_generate_fns`. The model's state is captured when it is
  built: rebuild after changing the model's parameters.

  Example (timing prefill and decode apart)::

    fns = make_generate_fns(model, max_new_tokens=128)
    token, cache, done, key = fns.prefill(prompt_ids)     # first new token
    new_tokens = fns.decode(token, cache, done, key)      # [B, 128]
  """

  graphdef: Any
  state: Any
  max_new_tokens: int
  cache_dtype: Any
  sampling: _Sampling
  temperature: jax.Array
  top_p: jax.Array
  eos_ids: jax.Array
  pad_id: jax.Array

  def prefill(
      self, prompt_ids: jax.Array, key: jax.Array | None = None,
  ) -> tuple[jax.Array, KVCache, jax.Array, jax.Array]:
    """Runs the prompt ``[B, T]`` into a fresh cache of ``T + max_new_tokens`` slots.

    Returns:
      ``(token [B], cache, done [B], key)``: the first new token, the filled
      cache, whether each row already emitted EOS, and the advanced key.
    """
    prompt_ids = _check_prompt(prompt_ids)
    key = self._key(key)
    return _prefill(self.graphdef, self.state, prompt_ids, key, self.temperature, self.top_p, self.eos_ids,
                    max_len=prompt_ids.shape[1] + self.max_new_tokens, cache_dtype=self.cache_dtype,
                    sampling=self.sampling)

  def decode(self, token: jax.Array, cache: KVCache, done: jax.Array, key: jax.Array) -> jax.Array:
    """Runs the decode loop from :meth:`prefill`'s outputs (one jitted ``fori_loop``).

    Returns:
      int32 ``[B, max_new_tokens]``: ``token`` followed by the generated tokens.
    """
    return _decode(self.graphdef, self.state, token, cache, done, key, self.temperature, self.top_p,
                   self.eos_ids, self.pad_id, num_steps=self.max_new_tokens - 1, sampling=self.sampling)

  def step(self, token: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """One jitted decode step: feeds ``token [B]``, returns ``(logits [B, vocab], cache)``."""
    return _step(self.graphdef, self.state, token, cache)

  def __call__(self, prompt_ids: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Generates ``[B, T + max_new_tokens]`` (prompt included)."""
    prompt_ids = _check_prompt(prompt_ids)
    token, cache, done, key = self.prefill(prompt_ids, key)
    new = token[:, None] if self.max_new_tokens == 1 else self.decode(token, cache, done, key)
    return jnp.concatenate([prompt_ids, new], axis=1)

  def _key(self, key):
    if key is None:
      if not self.sampling.greedy:
        raise ValueError("`key` is required when `temperature` > 0 (sampling); pass jax.random.key(seed).")
      # Greedy decoding ignores the key; a fixed one keeps the signature uniform.
      return jax.random.key(0)
    return key


def _check_prompt(prompt_ids) -> jax.Array:
  prompt_ids = jnp.asarray(prompt_ids)
  if prompt_ids.ndim != 2 or not jnp.issubdtype(prompt_ids.dtype, jnp.integer) or 0 in prompt_ids.shape:
    raise ValueError("`prompt_ids` must be a non-empty int array [batch, prompt_len] (equal-length rows), "
                     f"got {prompt_ids.dtype}{list(prompt_ids.shape)}.")
  return prompt_ids.astype(jnp.int32)


def make_generate_fns(
    model: DecoderForCausalLM,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    cache_dtype: Any = None,
) -> GenerateFns:
  """Splits ``model`` and binds the sampling setup to the jitted prefill/decode.

  Args: as :func:`generate`.

  Returns:
    A :class:`GenerateFns`; compiled code is shared between instances of the
    same structure and options.
  """
  if not isinstance(model, DecoderForCausalLM):
    raise ValueError(f"`model` must be a DecoderForCausalLM, got {type(model).__name__}.")
  _check_options(temperature, top_k, top_p, max_new_tokens)
  eos = _token_ids("eos_token_id", eos_token_id)
  pad = _token_ids("pad_token_id", pad_token_id)
  if len(pad) > 1:
    raise ValueError(f"`pad_token_id` must be None or an int, got {pad_token_id!r}.")
  graphdef, state = nnx.split(model)
  return GenerateFns(
      graphdef=graphdef, state=state, max_new_tokens=max_new_tokens,
      cache_dtype=jnp.dtype(model.dtype if cache_dtype is None else cache_dtype),
      sampling=_sampling(temperature, top_k, top_p, model.config.vocab_size),
      temperature=jnp.float32(temperature or 1.0), top_p=jnp.float32(top_p or 1.0),
      # No EOS is id -1, which no token matches: the same compiled program
      # serves runs with and without one.
      eos_ids=jnp.asarray(eos or (-1,), jnp.int32),
      # transformers pads finished rows with pad_token_id, else the first EOS id.
      pad_id=jnp.int32((pad or eos or (0,))[0]))


def generate(
    model: DecoderForCausalLM,
    prompt_ids: jax.Array,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    key: jax.Array | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    cache_dtype: Any = None,
) -> jax.Array:
  """Generates ``max_new_tokens`` tokens after ``prompt_ids`` with a KV cache.

  Args:
    model: the model.
    prompt_ids: int ``[B, T]`` prompts of equal length (no padding).
    max_new_tokens: tokens to generate per row.
    temperature: 0 is greedy (argmax); > 0 samples from ``softmax(logits / temperature)``.
    top_k: when sampling, keep the ``top_k`` most likely tokens.
    top_p: when sampling, nucleus filtering after ``top_k`` (transformers' order).
    key: PRNG key, required when ``temperature > 0``.
    eos_token_id: int or list of ints; a row that emits one then emits
      ``pad_token_id`` (default: the first EOS id). None never stops (pass
      ``model.config.eos_token_id`` for the model's own).
    pad_token_id: the filler after EOS.
    cache_dtype: KV cache dtype; None is the model's activation dtype.

  Returns:
    int32 ``[B, T + max_new_tokens]``, the prompt followed by the new tokens.
  """
  fns = make_generate_fns(model, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                          cache_dtype=cache_dtype)
  if not fns.sampling.greedy and key is None:
    raise ValueError("`key` is required when `temperature` > 0 (sampling); pass jax.random.key(seed).")
  return fns(prompt_ids, key)
