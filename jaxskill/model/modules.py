"""The decoder LMs of `jaxskill.model.architecture.FAMILIES` (HF `Qwen2ForCausalLM`,
`Qwen3ForCausalLM`, `LlamaForCausalLM`, `MistralForCausalLM`) as one pure-functional Flax linen
model; the config's switches pick each family's variant of the block.

Letters in einsum strings and shape comments: b batch, t query position, s key position,
n query heads, r key/value heads, g query heads per key/value head (n = r * g), d head dim,
h hidden, i intermediate (neurons), v vocab, k captured positions, l layers (the legend of the
whole package, docs/ARCHITECTURE.md, plus the attention letters s, n, r, g, d).

The block, as in METHOD.md section 1:
  x   = x + o_proj(attn(rmsnorm1(x)))     (Qwen3: q and k RMS-normed per head before RoPE;
                                           Mistral: attention within a sliding window)
  a   = silu(gate_proj(u)) * up_proj(u),   u = rmsnorm2(x)     <- the "neurons", sown
  out = x + down_proj(a)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxskill.model.architecture import Architecture

Array = jax.Array
Dtype = Any

# The sow contract: activations land at intermediates/layers/mlp/<NEURONS>, stacked over layers.
NEURONS = "neurons"


def wide(dtype: Dtype) -> Dtype:
  """The dtype that sums, norms and softmax run in: float32, or float64 for a float64 model
  (used to check sharded programs without float32 rounding)."""
  return jnp.promote_types(dtype, jnp.float32)


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) in float32, cast back to x's dtype, then times the weight:
  `[..., h]` -> `[..., h]` in x's dtype."""
  eps: float
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    weight = self.param("weight", nn.initializers.ones, (x.shape[-1],), self.param_dtype)
    x32 = x.astype(wide(x.dtype))
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return weight.astype(x.dtype) * normed.astype(x.dtype)


def rope_inv_freq(config: Architecture) -> Array:
  """The `[d/2]` RoPE frequencies theta^(-2j/d) in float32 (as HF computes them), after the
  config's `rope_scaling` (see `RopeScaling`)."""
  d, scaling = config.head_dim, config.rope_scaling
  inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  if scaling is None:
    return inv_freq
  if scaling.rope_type == "linear":
    return inv_freq / scaling.factor
  old = scaling.original_max_position_embeddings
  wavelen = 2 * math.pi / inv_freq
  low = jnp.where(wavelen > old / scaling.low_freq_factor, inv_freq / scaling.factor, inv_freq)
  smooth = ((old / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * low / scaling.factor + smooth * low
  medium = (wavelen >= old / scaling.high_freq_factor) & (wavelen <= old / scaling.low_freq_factor)
  return jnp.where(medium, smoothed, low)


def rope_cos_sin(position_ids: Array, config: Architecture, dtype: Dtype):
  """position_ids int `[b, t]` -> cos, sin `[b, t, d]` in `dtype` for half-split RoPE;
  frequencies in float32 as in HF."""
  freqs = position_ids[..., None].astype(jnp.float32) * rope_inv_freq(config)  # [b, t, d/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """x `[b, t, heads, d]`, cos and sin `[b, t, d]` -> `[b, t, heads, d]`; rotate_half(x) =
  concat(-x2, x1) (half split, not interleaved)."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


class Linear(nn.Module):
  """`x @ kernel + bias` with params named as nn.Dense's, accumulated and biased in float32:
  `[..., in]` -> `[..., features]` in `out_dtype` (default `dtype`).

  Asking XLA for a float32 result lets bfloat16 inputs use the CPU's bf16 dot instructions
  (about 2.5x faster than a bf16-output dot on AVX512-BF16 here) and rounds only once.
  """
  features: int
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  out_dtype: Dtype | None = None  # default: dtype

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features),
                        self.param_dtype)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype),
                preferred_element_type=wide(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
    return y.astype(self.out_dtype or self.dtype)


class Attention(nn.Module):
  """Causal self-attention with RoPE and grouped key/value heads (HF `self_attn`): projection
  biases as the config says (Qwen2: q, k, v), per-head q/k RMSNorm with `qk_norm` (Qwen3);
  scores and softmax in `wide(dtype)`."""
  config: Architecture
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, past=None):
    """x `[b, t, h]`, mask bool `[b, t, s]` (True = may attend) -> (`[b, t, h]`, (k, v)).

    past: keys and values `[b, s0, r, d]` of earlier positions (a cache), attended before x's
    own; then s = s0 + t. The returned k, v `[b, t, r, d]` are x's own (RoPE applied).
    """
    c = self.config
    b, t, _ = x.shape
    dense = functools.partial(Linear, dtype=self.dtype, param_dtype=self.param_dtype)
    q = dense(c.num_attention_heads * c.head_dim, use_bias=c.qkv_bias, name="q_proj")(x)
    k = dense(c.num_key_value_heads * c.head_dim, use_bias=c.qkv_bias, name="k_proj")(x)
    v = dense(c.num_key_value_heads * c.head_dim, use_bias=c.qkv_bias, name="v_proj")(x)
    q = q.reshape(b, t, c.num_attention_heads, c.head_dim)
    k = k.reshape(b, t, c.num_key_value_heads, c.head_dim)
    if c.qk_norm:
      q = RMSNorm(c.rms_norm_eps, param_dtype=self.param_dtype, name="q_norm")(q)
      k = RMSNorm(c.rms_norm_eps, param_dtype=self.param_dtype, name="k_norm")(k)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    v = v.reshape(b, t, c.num_key_value_heads, c.head_dim)
    new_kv = (k, v)
    if past is not None:
      k = jnp.concatenate([past[0].astype(k.dtype), k], axis=1)
      v = jnp.concatenate([past[1].astype(v.dtype), v], axis=1)
    # Query head n = r * g + j reads key/value head r, as HF's repeat_kv does.
    q = q.reshape(b, t, c.num_key_value_heads, c.num_kv_groups, c.head_dim)
    acc = wide(self.dtype)
    scores = jnp.einsum("btrgd,bsrd->brgts", q, k, preferred_element_type=acc)
    scores = jnp.where(mask[:, None, None], scores * (c.head_dim ** -0.5), jnp.finfo(acc).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("brgts,bsrd->btrgd", probs, v, preferred_element_type=acc)
    out = out.astype(self.dtype).reshape(b, t, -1)
    return dense(c.hidden_size, use_bias=c.o_bias, name="o_proj")(out), new_kv


class MLP(nn.Module):
  """The SwiGLU MLP, `down_proj(silu(gate_proj(x)) * up_proj(x))`, whose intermediate activations
  are the neurons (i = intermediate_size) that interventions edit and captures sow."""
  config: Architecture
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, capture_positions: Array | None,
               edit: Callable[[Array], Array] | None = None) -> Array:
    """x `[b, t, h]`; capture_positions int `[b, k]` or None -> `[b, t, h]`.

    edit: this layer's neuron intervention, applied at every position: a pytree mapping
      `a[b, t, i]` to edited activations (e.g. `jaxskill.model.interventions.NeuronEdit`).
    Sows the neuron activations `a[b, k, i]` (after any edit: what enters down_proj) gathered
    at capture_positions, so that what is kept grows with p, not t; a position outside
    [-t, t) gives NaN rather than a clamped neighbour's values. When `intermediates` is not
    mutable nothing is gathered.
    """
    c = self.config
    dense = functools.partial(Linear, dtype=self.dtype, param_dtype=self.param_dtype)
    a = nn.silu(dense(c.intermediate_size, name="gate_proj")(x)) * dense(
        c.intermediate_size, name="up_proj")(x)  # [b, t, i]
    if edit is not None:
      a = edit(a)
    if capture_positions is not None and self.is_mutable_collection("intermediates"):
      self.sow("intermediates", NEURONS,
               jnp.take_along_axis(a, capture_positions[:, :, None], axis=1, mode="fill",
                                   fill_value=jnp.nan))  # [b, k, i]
    return dense(c.hidden_size, name="down_proj")(a)


class DecoderLayer(nn.Module):
  """One pre-norm block (module docstring): x `[b, t, h]` -> (`[b, t, h]`, this layer's own
  keys and values `[b, t, r, d]`), scanned over the layers by `CausalLM`."""
  config: Architecture
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cos, sin, mask, capture_positions, past, edit):
    c, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(RMSNorm, c.rms_norm_eps, param_dtype=self.param_dtype)
    h, kv = Attention(c, **kw, name="self_attn")(norm(name="input_layernorm")(x), cos, sin, mask,
                                                 past)
    x = x + h
    x = x + MLP(c, **kw, name="mlp")(norm(name="post_attention_layernorm")(x), capture_positions,
                                     edit)
    return x, kv


class CausalLM(nn.Module):
  """The causal LM of `config` (any family). Params follow HF names; layer params are stacked
  `[l, ...]` by nn.scan.

  Attributes:
    config: the architecture.
    dtype: compute dtype (float32 or bfloat16); softmax and RMSNorm statistics stay float32.
    param_dtype: dtype the params are created in (conversion casts to it).
    remat: rematerialise each layer in the backward pass (memory for compute, for training).
    scan_unroll: layers per scan iteration (1 keeps compile time flat in depth; more removes
      the per-layer loop overhead at the price of compile time).
  """
  config: Architecture
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: bool = False
  scan_unroll: int = 1

  def setup(self):
    """The embedding, the layers stacked by nn.scan (params and sown activations along a leading
    `[l, ...]` axis), the final norm, and the LM head (none with tie_word_embeddings)."""
    c = self.config
    self.embed_tokens = nn.Embed(c.vocab_size, c.hidden_size, dtype=self.dtype,
                                 param_dtype=self.param_dtype)
    layer = nn.remat(DecoderLayer, prevent_cse=False) if self.remat else DecoderLayer
    self.layers = nn.scan(
        layer,
        variable_axes={"params": 0, "intermediates": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * 4 + (0, 0),
        length=c.num_hidden_layers,
        unroll=self.scan_unroll,
    )(c, dtype=self.dtype, param_dtype=self.param_dtype)
    self.norm = RMSNorm(c.rms_norm_eps, param_dtype=self.param_dtype)
    if not c.tie_word_embeddings:
      self.lm_head = Linear(c.vocab_size, dtype=self.dtype, param_dtype=self.param_dtype,
                            out_dtype=wide(self.dtype))

  def embed(self, input_ids: Array) -> Array:
    """int `[b, t]` -> `[b, t, h]`: the input embeddings, for building `inputs_embeds`."""
    return self.embed_tokens(input_ids)

  def __call__(
      self,
      input_ids: Array | None = None,
      attention_mask: Array | None = None,
      position_ids: Array | None = None,
      *,
      inputs_embeds: Array | None = None,
      capture_positions: Array | None = None,
      logits_positions: Array | None = None,
      past: dict | None = None,
      neuron_edit: Callable[[Array], Array] | None = None,
  ) -> Array:
    """Logits, float32 (float64 for a float64 model).

    Args:
      input_ids: int `[b, t]`; or give `inputs_embeds` `[b, t, h]` instead.
      attention_mask: `[b, t]`, 1 for real tokens, 0 for padding (left or right). Default all 1.
      position_ids: int `[b, t]`. Default `cumsum(attention_mask) - 1`, so a left-padded row gets
        the same positions as the unpadded one (HF `generate` does the same).
      capture_positions: int `[b, k]`; with `mutable=["intermediates"]` the neuron activations
        at these positions are sown (read them with `neuron_activations`).
      logits_positions: int `[b, q]`; if given, logits only there: `[b, q, v]` instead of
        `[b, t, v]`, which skips most of the LM head when only a few positions matter.
        Positions outside [-t, t), here and in capture_positions, give NaN.
      past: a cache from `prefill` of the tokens before these (same batch); then positions
        continue after the cached tokens and attention reaches them too.
      neuron_edit: an intervention on the neurons: a pytree whose array leaves have a leading
        layer axis `[l, ...]`, called on each layer's `[b, t, i]` activations with that layer's
        slice (`jaxskill.model.interventions.NeuronEdit`: zero, mean or noise on chosen neurons).
    """
    x, _ = self._layers(input_ids, inputs_embeds, attention_mask, position_ids,
                        capture_positions, past, neuron_edit)
    x = self.norm(x)
    if logits_positions is not None:
      x = jnp.take_along_axis(x, logits_positions[:, :, None], axis=1, mode="fill",
                              fill_value=jnp.nan)  # out of range: NaN logits, not a neighbour's
    if self.config.tie_word_embeddings:
      table = self.embed_tokens.embedding.astype(self.dtype)
      return jnp.einsum("bth,vh->btv", x, table, preferred_element_type=wide(self.dtype))
    return self.lm_head(x)


  def prefill(self, input_ids: Array | None = None, attention_mask: Array | None = None, *,
              inputs_embeds: Array | None = None) -> dict:
    """Runs the layers over a first segment and returns its cache for a later `__call__(past=)`:
    {"k", "v": `[l, b, s0, r, d]`, "mask": bool `[b, s0]`}. Used to run an input once without
    gradients and only the tokens after it with them."""
    _, cache = self._layers(input_ids, inputs_embeds, attention_mask, None, None, None, None)
    return cache

  def hidden(self, inputs_embeds: Array, attention_mask: Array | None = None) -> Array:
    """The residual stream `[b, t, h]` after this model's layers (before the final norm): with a
    model of the first L layers (`layer_range`), what enters layer L of the whole one."""
    x, _ = self._layers(None, inputs_embeds, attention_mask, None, None, None, None)
    return x

  def _layers(self, input_ids, inputs_embeds, attention_mask, position_ids, capture_positions,
              past, neuron_edit):
    """Embedding and the decoder layers: (hidden `[b, t, h]`, cache including these tokens)."""
    if (input_ids is None) == (inputs_embeds is None):
      raise ValueError("give exactly one of input_ids and inputs_embeds")
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds.astype(self.dtype)
    b, t, _ = x.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    attention_mask = attention_mask.astype(bool)
    past_mask = jnp.zeros((b, 0), bool) if past is None else past["mask"]
    if position_ids is None:
      offset = jnp.sum(past_mask, axis=-1, keepdims=True)
      position_ids = offset + jnp.maximum(jnp.cumsum(attention_mask, axis=-1) - 1, 0)
    cos, sin = rope_cos_sin(position_ids, self.config, self.dtype)
    mask = _attention_mask(attention_mask, past_mask, position_ids, self.config.sliding_window)
    past_kv = None if past is None else (past["k"], past["v"])
    x, (k, v) = self.layers(x, cos, sin, mask, capture_positions, past_kv, neuron_edit)
    if past is not None:
      k = jnp.concatenate([past["k"], k.astype(past["k"].dtype)], axis=2)
      v = jnp.concatenate([past["v"], v.astype(past["v"].dtype)], axis=2)
    return x, {"k": k, "v": v, "mask": jnp.concatenate([past_mask, attention_mask], axis=1)}


def _attention_mask(attention_mask: Array, past_mask: Array, position_ids: Array,
                    window: int | None) -> Array:
  """bool `[b, t, s]`, s = s0 + t: query column j may attend to key column c. A past key
  (attention_mask `[b, t]`, past_mask `[b, s0]`) is always before the queries; among the
  queries' own columns, the causal lower triangle. With a sliding `window`, also
  position(query) - position(key) < window, positions counting real tokens as position_ids
  do, so that padding between tokens never narrows the window (past keys: their count)."""
  b, t = attention_mask.shape
  causal = jnp.tril(jnp.ones((t, t), bool))
  mask = jnp.concatenate([jnp.broadcast_to(past_mask[:, None, :], (b, t, past_mask.shape[1])),
                          causal[None] & attention_mask[:, None, :]], axis=-1)
  if window is None:
    return mask
  key_pos = jnp.concatenate([jnp.cumsum(past_mask, axis=-1) - 1, position_ids], axis=-1)
  return mask & (position_ids[:, :, None] - key_pos[:, None, :] < window)


def layer_range(model: CausalLM, params: dict, start: int, stop: int | None = None
                ) -> tuple[CausalLM, dict]:
  """(model, params) of layers [start, stop) alone, with the embedding, final norm and LM head:
  fed the residual stream entering layer `start` as `inputs_embeds`, it computes what the whole
  model computes from there (`hidden` gives that stream from a model of layers [0, start)).
  The layer params are sliced along their stacked `[l, ...]` axis: inside a jitted call XLA
  may copy the slice (stop - start layers' weights, against the layers' compute it saves)."""
  layers = model.config.num_hidden_layers
  stop = layers if stop is None else stop
  if not 0 <= start < stop <= layers:
    raise ValueError(f"layer range [{start}, {stop}) outside the model's {layers} layers")
  if (start, stop) == (0, layers):
    return model, params
  sub = model.clone(config=dataclasses.replace(model.config, num_hidden_layers=stop - start))
  return sub, {**params, "layers": jax.tree.map(lambda p: p[start:stop], params["layers"])}


def neuron_activations(variables: dict) -> Array:
  """The sown activations as `[b, l, k, i]` from the `variables` returned by a capturing apply."""
  try:
    stacked = variables["intermediates"]["layers"]["mlp"][NEURONS]
  except KeyError:
    raise KeyError(
        "no neuron activations in these variables: call model.apply(..., capture_positions=pos, "
        "mutable=['intermediates']) and pass the returned variables") from None
  (acts,) = stacked  # sow keeps a tuple; one call per layer -> one entry, stacked [l, b, k, i]
  return jnp.swapaxes(acts, 0, 1)
