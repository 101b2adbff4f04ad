"""What differs between the decoder families jaxfp4 loads, and what it refuses.

Every supported ``model_type`` maps to a :class:`Family`: the structural
switches that are fixed by the architecture rather than by numbers in
``config.json`` (those live in ``DecoderConfig``). The switches follow each
family's transformers ``modeling_<type>.py``:

| model_type    | norm          | MLP          | attention extras                           |
|---------------|---------------|--------------|--------------------------------------------|
| llama         | RMSNorm       | SwiGLU       | optional bias (q/k/v/o), llama3 RoPE       |
| mistral       | RMSNorm       | SwiGLU       | sliding window                             |
| qwen2         | RMSNorm       | SwiGLU       | q/k/v bias (o_proj none), optional windows |
| qwen3         | RMSNorm       | SwiGLU       | RMSNorm on q and k per head                |
| gemma         | 1 + w RMSNorm | GeGLU        | embeddings scaled by sqrt(hidden)          |
| gemma2        | 1 + w RMSNorm | GeGLU        | soft-capping, local/global, 4 norms/layer  |
| gemma3_text   | 1 + w RMSNorm | GeGLU        | q/k norm, local/global with two RoPE bases |
| phi3          | RMSNorm       | fused SwiGLU | fused qkv_proj, gate_up_proj; window       |
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Family:
  """Structural switches of one decoder family.

  Attributes:
    model_type: ``config.json``'s ``model_type``.
    architecture: transformers' causal-LM class name.
    norm_offset: RMSNorm scales by ``1 + weight`` in float32 (Gemma).
    embed_scale: embeddings are multiplied by ``sqrt(hidden_size)`` (Gemma).
    sandwich_norm: norms after attention and around the MLP too (Gemma 2/3).
    qk_norm: an RMSNorm over ``head_dim`` on queries and keys (Qwen3, Gemma 3).
    fused: one ``qkv_proj`` and one ``gate_up_proj`` (Phi-3).
    qkv_bias: q/k/v always have a bias and o_proj none (Qwen2).
    default_act: activation when ``config.json`` names none.
  """

  model_type: str
  architecture: str
  norm_offset: bool = False
  embed_scale: bool = False
  sandwich_norm: bool = False
  qk_norm: bool = False
  fused: bool = False
  qkv_bias: bool = False
  default_act: str = "silu"


FAMILIES: dict[str, Family] = {f.model_type: f for f in (
    Family("llama", "LlamaForCausalLM"),
    Family("mistral", "MistralForCausalLM"),
    Family("qwen2", "Qwen2ForCausalLM", qkv_bias=True),
    Family("qwen3", "Qwen3ForCausalLM", qk_norm=True),
    Family("gemma", "GemmaForCausalLM", norm_offset=True, embed_scale=True,
           default_act="gelu_pytorch_tanh"),
    Family("gemma2", "Gemma2ForCausalLM", norm_offset=True, embed_scale=True, sandwich_norm=True,
           default_act="gelu_pytorch_tanh"),
    Family("gemma3_text", "Gemma3ForCausalLM", norm_offset=True, embed_scale=True,
           sandwich_norm=True, qk_norm=True, default_act="gelu_pytorch_tanh"),
    Family("phi3", "Phi3ForCausalLM", fused=True),
)}

# model_types people try that this decoder does not implement, and why.
REFUSED: dict[str, str] = {
    "gemma3": "it is the multimodal Gemma 3 (a vision tower plus a language model); load a "
              "text-only checkpoint (model_type 'gemma3_text', Gemma3ForCausalLM)",
    "mixtral": "mixture-of-experts routing is not implemented",
    "qwen2_moe": "mixture-of-experts routing is not implemented",
    "qwen3_moe": "mixture-of-experts routing is not implemented",
    "phimoe": "mixture-of-experts routing is not implemented",
    "llama4": "Llama 4 is a multimodal mixture-of-experts model; neither is implemented",
    "mllama": "it is multimodal (cross-attention to an image encoder)",
    "phi": "Phi-1/2 use LayerNorm, partial rotary embeddings and a parallel block, not implemented",
    "phi3small": "Phi-3-small uses block-sparse attention and a GEGELU MLP, not implemented",
    "gemma3n": "Gemma 3n's per-layer embeddings and AltUp are not implemented",
    "qwen2_vl": "it is multimodal (multimodal RoPE), not implemented",
}

ACTIVATIONS = ("silu", "gelu_pytorch_tanh", "gelu_new", "gelu")

# RoPE types transformers knows that this decoder refuses, with the reason.
REFUSED_ROPE = {
    "dynamic": "dynamic NTK rescales the base with the sequence length at run time",
    "yarn": "YaRN ramps frequencies and scales attention by a length-dependent factor",
    "longrope": "LongRoPE switches between two per-frequency factor lists by sequence length",
    "su": "LongRoPE ('su') switches between two per-frequency factor lists by sequence length",
    "ntk": "NTK-aware scaling rewrites the base per sequence length",
}


def family(model_type) -> Family:
  """The :class:`Family` of ``model_type``; ValueError naming it and why otherwise.

  Example:
    >>> family("qwen3").qk_norm
    True
  """
  if model_type in FAMILIES:
    return FAMILIES[model_type]
  known = ", ".join(sorted(FAMILIES))
  if model_type in REFUSED:
    raise ValueError(f"`model_type` {model_type!r} is not supported: {REFUSED[model_type]}. "
                     f"jaxfp4's decoder loads {known}.")
  raise ValueError(f"`model_type` must be one of {known}; got {model_type!r} (an architecture "
                   "jaxfp4 does not implement, so it would not load it right).")
