"""Architecture config: a frozen dataclass read from (and written to) HF `config.json`.

Four families share one decoder block (pre-norm RMSNorm, RoPE attention with grouped key/value
heads, a SwiGLU MLP whose `silu(gate) * up` are the neurons) and differ only in what the fields
below switch: Qwen1.5 / Qwen2 / Qwen2.5 (`qwen2`: q/k/v biases), Qwen3 (`qwen3`: RMSNorm on each
query and key head, no biases, an explicit `head_dim`), Llama 2 / 3 / 3.1 / 3.2 (`llama`: no
biases, `llama3` or linear RoPE scaling) and Mistral (`mistral`: sliding-window attention).

Only the fields that change the computation live here; run settings (dtype, remat) are module
attributes. Parsing follows transformers' own config class of the family: a field that class reads
(so it can change transformers' computation) is handled here, inert for a frozen forward pass, at
the class's default, or refused by name, so an unsupported checkpoint never converts silently into
a wrong model; a field it does not read (what `save_pretrained` or a converter adds, tokenizer
ids) changes nothing in transformers either, and is accepted and named in one info line.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import logging
from pathlib import Path
from typing import Any, NoReturn


log = logging.getLogger(__name__)


class ArchitectureError(ValueError):
  """A checkpoint config that jaxskill cannot represent faithfully."""


# model_type -> the transformers class that `to_hf_dict` names.
FAMILIES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
            "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
# model_type -> transformers' config class, whose fields decide what a config.json may hold.
HF_CONFIG_CLASSES = {"qwen2": "Qwen2Config", "qwen3": "Qwen3Config", "llama": "LlamaConfig",
                     "mistral": "MistralConfig"}


@functools.cache
def hf_fields(family: str) -> dict[str, Any]:
  """{field: default} of what transformers' config class of `family` reads itself (its own
  constructor arguments; `PretrainedConfig`'s are bookkeeping). Importing a config class needs no
  torch."""
  import transformers
  own = inspect.signature(getattr(transformers, HF_CONFIG_CLASSES[family]).__init__).parameters
  base = set(inspect.signature(transformers.PretrainedConfig.__init__).parameters)
  return {name: p.default for name, p in own.items()
          if name not in base and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


@functools.cache
def _base_fields() -> frozenset[str]:
  """What `PretrainedConfig` itself writes and reads: paths, versions, output switches, labels."""
  import transformers
  return frozenset(transformers.PretrainedConfig().to_dict()) | frozenset(
      inspect.signature(transformers.PretrainedConfig.__init__).parameters)


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """RoPE frequency scaling (HF `rope_scaling` / `rope_parameters`): `linear` divides every
  frequency by `factor`; `llama3` divides the low frequencies (wavelength above
  original_max_position_embeddings / low_freq_factor) by `factor`, keeps the high ones (below
  .. / high_freq_factor) and interpolates in between (Llama 3.1, "The Llama 3 Herd of Models")."""
  rope_type: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  def __post_init__(self):
    for name in ("factor", "low_freq_factor", "high_freq_factor",
                 "original_max_position_embeddings"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ArchitectureError(
            f"field 'rope_scaling.{name}' must be a positive number, got {value!r}")
    if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
      raise ArchitectureError(f"rope_scaling: high_freq_factor={self.high_freq_factor} must exceed "
                              f"low_freq_factor={self.low_freq_factor}")


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The architecture of a dense checkpoint of one of `FAMILIES` (HF field names, plus the
  family's switches: `qkv_bias`, `o_bias`, `qk_norm`, `rope_scaling`, `sliding_window`)."""
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_hidden_layers: int
  num_attention_heads: int
  num_key_value_heads: int
  rope_theta: float = 1e6
  rms_norm_eps: float = 1e-6
  tie_word_embeddings: bool = False
  max_position_embeddings: int = 32768
  head_dim_override: int | None = None
  bos_token_id: int | None = None
  eos_token_id: int | list[int] | None = None
  pad_token_id: int | None = None
  model_type: str = "qwen2"
  qkv_bias: bool = True  # biases on q_proj, k_proj, v_proj
  o_bias: bool = False  # a bias on o_proj
  qk_norm: bool = False  # RMSNorm over head_dim on each query and key head, before RoPE
  rope_scaling: RopeScaling | None = None
  sliding_window: int | None = None  # a query attends to the last `sliding_window` positions

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads"):
      _positive_int(self, name)
    if self.model_type not in FAMILIES:
      raise ArchitectureError(f"field 'model_type' must be one of {sorted(FAMILIES)}, got "
                              f"{self.model_type!r}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ArchitectureError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim_override is None and self.hidden_size % self.num_attention_heads:
      raise ArchitectureError(f"hidden_size={self.hidden_size} is not divisible by "
                              f"num_attention_heads={self.num_attention_heads}")
    if self.head_dim_override is not None:
      _positive_int(self, "head_dim_override", "head_dim")
    if self.head_dim % 2:
      raise ArchitectureError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    if not self.rope_theta > 0:
      raise ArchitectureError(f"field 'rope_theta' must be positive, got {self.rope_theta!r}")
    if not self.rms_norm_eps > 0:
      raise ArchitectureError(f"field 'rms_norm_eps' must be positive, got {self.rms_norm_eps!r}")
    if self.sliding_window is not None:
      _positive_int(self, "sliding_window")

  @property
  def head_dim(self) -> int:
    """Per-head size: `head_dim` from the file, else hidden_size / num_attention_heads."""
    return self.head_dim_override or self.hidden_size // self.num_attention_heads

  @property
  def num_kv_groups(self) -> int:
    """Query heads per key/value head."""
    return self.num_attention_heads // self.num_key_value_heads

  @property
  def num_neurons(self) -> int:
    """MLP neurons in the whole model, l * i."""
    return self.num_hidden_layers * self.intermediate_size

  @property
  def eos_token_ids(self) -> tuple[int, ...]:
    """`eos_token_id` as a tuple (empty when unset)."""
    if self.eos_token_id is None:
      return ()
    if isinstance(self.eos_token_id, int):
      return (self.eos_token_id,)
    return tuple(self.eos_token_id)

  # --- HF config.json ----------------------------------------------------------------------

  @classmethod
  def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json", *,
                   log_unread: bool = True) -> "Architecture":
    """Validates an HF config dict of one of `FAMILIES`; `source` names the file in errors.
    `log_unread`: name the fields transformers' class does not read in an info line (off where
    the same file was checked and named already)."""
    family = _check_supported(d, source, log_unread)
    rope_theta, scaling = _rope(d, source)
    act = d.get("hidden_act", "silu")
    if act != "silu":
      _fail(source, f"field 'hidden_act' is {act!r}; the {family} MLP uses 'silu'")
    for name in _REQUIRED:
      if name not in d:
        _fail(source, f"required field '{name}' is missing")
    d = {**_DEFAULTS.get(family, {}), **d}  # a missing field reads as transformers reads it
    kv_heads = d.get("num_key_value_heads")
    # Qwen2's q/k/v always have biases; the others' only where their class reads the switch.
    bias = family == "qwen2" or (
        "attention_bias" in _HANDLED[family] and bool(d.get("attention_bias", False)))
    try:
      return cls(
          **{name: d[name] for name in _REQUIRED},
          num_key_value_heads=d["num_attention_heads"] if kv_heads is None else kv_heads,
          rope_theta=float(rope_theta),
          rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
          tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
          max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
          head_dim_override=d.get("head_dim"),
          bos_token_id=d.get("bos_token_id"),
          eos_token_id=d.get("eos_token_id"),
          pad_token_id=d.get("pad_token_id"),
          model_type=family, qkv_bias=bias, o_bias=bias and family != "qwen2",
          qk_norm=family == "qwen3", rope_scaling=scaling,
          sliding_window=d.get("sliding_window") if family == "mistral" else None,
      )
    except (ArchitectureError, TypeError, ValueError) as e:
      _fail(source, str(e))

  @classmethod
  def from_json_file(cls, path: str | Path, *, log_unread: bool = True) -> "Architecture":
    """Reads and validates an HF `config.json`; errors name the file."""
    path = Path(path)
    try:
      d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
      raise ArchitectureError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
      raise ArchitectureError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
      raise ArchitectureError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
      raise ArchitectureError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(d, dict):
      raise ArchitectureError(f"{path}: expected a JSON object ({{...}}) at the top level, got "
                              f"{json.dumps(d)[:80]}")
    return cls.from_hf_dict(d, source=str(path), log_unread=log_unread)

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF `config.json` dict that `transformers` loads as the family's CausalLM (legacy
    `rope_theta` / `rope_scaling` spellings, which transformers 4 and 5 both read)."""
    d = {
        "architectures": [FAMILIES[self.model_type]],
        "model_type": self.model_type,
        "vocab_size": self.vocab_size,
        "hidden_size": self.hidden_size,
        "intermediate_size": self.intermediate_size,
        "num_hidden_layers": self.num_hidden_layers,
        "num_attention_heads": self.num_attention_heads,
        "num_key_value_heads": self.num_key_value_heads,
        "hidden_act": "silu",
        "rope_theta": self.rope_theta,
        "rms_norm_eps": self.rms_norm_eps,
        "tie_word_embeddings": self.tie_word_embeddings,
        "max_position_embeddings": self.max_position_embeddings,
        "attention_dropout": 0.0,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
    }
    if self.model_type in ("qwen2", "qwen3"):
      d["use_sliding_window"] = False
    if self.model_type in ("qwen3", "llama"):
      d["attention_bias"] = self.qkv_bias
    if self.model_type == "mistral":
      d["sliding_window"] = self.sliding_window
    if self.rope_scaling is not None:  # only the type's own keys: others would be refused
      s = self.rope_scaling
      d["rope_scaling"] = {"rope_type": s.rope_type,
                           **{k: getattr(s, k) for k in sorted(_SCALING_KEYS[s.rope_type])}}
    if self.head_dim_override is not None:
      d["head_dim"] = self.head_dim_override
    return d


def _positive_int(config: Architecture, name: str, field: str | None = None) -> None:
  value = getattr(config, name)
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    raise ArchitectureError(f"field '{field or name}' must be a positive integer, got {value!r}")


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
_COMMON = set(_REQUIRED) | {
    "model_type", "num_key_value_heads", "rope_theta", "rope_parameters", "rope_scaling",
    "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "head_dim", "hidden_act",
    "bos_token_id", "eos_token_id", "pad_token_id",
}
# The fields each family adds to _COMMON. Qwen's sliding-window sizes only apply with
# `use_sliding_window` true (refused), so they are read and not used; Mistral's is honoured.
_QWEN_WINDOW = {"use_sliding_window", "layer_types", "sliding_window", "max_window_layers"}
_HANDLED = {
    "qwen2": _COMMON | _QWEN_WINDOW,
    "qwen3": _COMMON | _QWEN_WINDOW | {"attention_bias"},
    "llama": _COMMON | {"attention_bias", "mlp_bias"},
    "mistral": _COMMON | {"sliding_window"},
}
# Where transformers' class defaults a missing field otherwise than _COMMON's.
_DEFAULTS = {"qwen2": {"num_key_value_heads": 32},
             "qwen3": {"num_key_value_heads": 32, "head_dim": 128},
             "mistral": {"num_key_value_heads": 8, "sliding_window": 4096}}
# Fields the family's config class reads that cannot change a frozen forward pass: dropout is
# off in evaluation, the initializer only draws new weights, the cache only stores keys, and
# transformers' Llama keeps pretraining_tp in its config without using it (test_config checks
# each against transformers' model).
_INERT = {"attention_dropout", "initializer_range", "use_cache", "pretraining_tp"}
# Read by transformers' loader rather than by a config class, and it changes the weights.
_LOADER_REFUSED = {
    "quantization_config": "a quantized checkpoint; dequantize it first (transformers' "
                           "from_pretrained, then save_pretrained without quantization_config)",
}
_REFUSED = {
    "qwen2_moe": "mixture-of-experts MLPs (Qwen1.5-MoE) are not supported",
    "qwen3_moe": "mixture-of-experts MLPs (Qwen3-MoE) are not supported",
    "mixtral": "mixture-of-experts MLPs (Mixtral) are not supported",
    **dict.fromkeys(
        ("gemma", "gemma2", "gemma3", "gemma3_text"),
        "Gemma's block is not this one (GeGLU MLP, RMSNorm scaled by 1 + weight, scaled "
        "embeddings, extra norms around the MLP, logit soft-capping, alternating sliding "
        "windows) and is not supported"),
}


def _fail(source: str, msg: str) -> NoReturn:
  """Raises a ArchitectureError that names the config file."""
  raise ArchitectureError(f"{source}: {msg}")


def _check_supported(d: dict[str, Any], source: str, log_unread: bool = True) -> str:
  """The family of `d`; raises for a model type, an unknown field or a variant that jaxskill
  does not run."""
  family = d.get("model_type")
  if family in _REFUSED:
    _fail(source, f"model_type {family!r}: {_REFUSED[family]}; supported: {sorted(FAMILIES)}")
  if family not in FAMILIES:
    _fail(source, f"field 'model_type' is {family!r}; supported: {sorted(FAMILIES)} (Qwen1.5 / "
          "Qwen2 / Qwen2.5, Qwen3, Llama 2 / 3.x, Mistral)")
  _check_fields(d, family, source, log_unread)
  read = {k: v for k, v in d.items() if k in _HANDLED[family]}  # what the family's class reads
  if read.get("use_sliding_window"):
    _fail(source, "field 'use_sliding_window' is true; Qwen's per-layer sliding-window "
          "attention is not supported (no released Qwen checkpoint turns it on)")
  if read.get("mlp_bias"):
    _fail(source, "field 'mlp_bias' is true; MLP biases are not supported (no released Llama "
          "checkpoint has them)")
  layer_types = read.get("layer_types")
  if layer_types is not None and any(t != "full_attention" for t in layer_types):
    _fail(source, f"field 'layer_types' contains {sorted(set(layer_types) - {'full_attention'})}; "
          "only 'full_attention' layers are supported")
  return family


def _check_fields(d: dict[str, Any], family: str, source: str, log_unread: bool) -> None:
  """Refuses a field that transformers' class of `family` reads at a value jaxskill does not
  implement (or that makes the loader change the weights); logs the fields the class does not
  read, which can change nothing in transformers' model either."""
  for name in sorted(set(d) & set(_LOADER_REFUSED)):
    _fail(source, f"field {name!r}: {_LOADER_REFUSED[name]}")
  read = hf_fields(family)
  refused = sorted(name for name in set(d) - _HANDLED[family] - _INERT
                   if name in read and d[name] != read[name])
  if refused:
    _fail(source, f"field(s) {refused} for model_type {family!r} are read by transformers' "
          f"{HF_CONFIG_CLASSES[family]} and can change its computation, and jaxskill does not "
          "implement " + ", ".join(f"{k}={d[k]!r}" for k in refused)
          + "; refused so that a checkpoint never converts into a silently different model")
  unread = sorted(set(d) - _HANDLED[family] - set(read) - _base_fields())
  if unread and log_unread:
    log.info("%s: field(s) %s are not read by transformers' %s (bookkeeping, tokenizer ids): "
             "ignored", source, unread, HF_CONFIG_CLASSES[family])


_SCALING_KEYS = {"linear": {"factor"},
                 "llama3": {"factor", "low_freq_factor", "high_freq_factor",
                            "original_max_position_embeddings"}}


def _rope(d: dict[str, Any], source: str) -> tuple[Any, RopeScaling | None]:
  """The RoPE base and scaling, from the legacy 'rope_theta' and 'rope_scaling' and/or the newer
  'rope_parameters' (which must agree where both speak)."""
  spec: dict[str, Any] = {}
  for field in ("rope_scaling", "rope_parameters"):
    part = d.get(field)
    if part is None:
      continue
    if not isinstance(part, dict):
      _fail(source, f"field '{field}' must be an object, got {part!r}")
    part = {("rope_type" if k == "type" else k): v for k, v in part.items()}
    for key, value in part.items():
      if key in spec and spec[key] != value:
        _fail(source, f"'rope_scaling.{key}'={spec[key]!r} disagrees with "
              f"'{field}.{key}'={value!r}")
      spec[key] = value
  theta = d.get("rope_theta")
  if theta is not None and spec.get("rope_theta", theta) != theta:
    _fail(source, f"'rope_theta'={theta} disagrees with 'rope_parameters.rope_theta'="
          f"{spec['rope_theta']}")
  theta = spec.pop("rope_theta", theta)
  if theta is None:
    _fail(source, "no 'rope_theta' (nor 'rope_parameters.rope_theta'); refusing to guess the "
          "RoPE base")
  rope_type = spec.pop("rope_type", "default")
  if rope_type == "default" and not spec:
    return theta, None
  if rope_type not in _SCALING_KEYS:
    _fail(source, f"RoPE type {rope_type!r} is not supported; jaxskill runs 'default', "
          f"{sorted(_SCALING_KEYS)}")
  if rope_type == "llama3":
    spec.setdefault("original_max_position_embeddings", d.get("max_position_embeddings"))
  if set(spec) != _SCALING_KEYS[rope_type]:
    _fail(source, f"RoPE type {rope_type!r} takes the keys {sorted(_SCALING_KEYS[rope_type])}, "
          f"got {sorted(spec)}")
  try:
    return theta, RopeScaling(rope_type, **spec)
  except ArchitectureError as e:
    _fail(source, str(e))


# Named presets of the published Qwen1.5 sizes (from their config.json files on the hub), used for
# shape checks with `jax.eval_shape` and for benchmarks with random weights.
PRESETS: dict[str, Architecture] = {
    "qwen1.5-0.5b": Architecture(151936, 1024, 2816, 24, 16, 16, 1e6, tie_word_embeddings=True),
    "qwen1.5-1.8b": Architecture(151936, 2048, 5504, 24, 16, 16, 1e6),
    "qwen1.5-4b": Architecture(151936, 2560, 6912, 40, 20, 20, 5e6),
    "qwen1.5-7b": Architecture(151936, 4096, 11008, 32, 32, 32, 1e6),
    "qwen1.5-14b": Architecture(152064, 5120, 13696, 40, 40, 40, 1e6),
    "qwen1.5-32b": Architecture(152064, 5120, 27392, 64, 40, 8, 1e6),
    "qwen1.5-72b": Architecture(152064, 8192, 24576, 80, 64, 64, 1e6),
    # The other families' small sizes, from the same published files.
    "qwen2.5-0.5b": Architecture(151936, 896, 4864, 24, 14, 2, 1e6, tie_word_embeddings=True),
    "qwen3-0.6b": Architecture(151936, 1024, 3072, 28, 16, 8, 1e6, tie_word_embeddings=True,
                               head_dim_override=128, model_type="qwen3", qkv_bias=False,
                               qk_norm=True),
    "llama-3.2-1b": Architecture(128256, 2048, 8192, 16, 32, 8, 5e5, 1e-5,
                                 tie_word_embeddings=True, max_position_embeddings=131072,
                                 head_dim_override=64, model_type="llama", qkv_bias=False,
                                 rope_scaling=RopeScaling("llama3", 32.0, 1.0, 4.0, 8192)),
}
