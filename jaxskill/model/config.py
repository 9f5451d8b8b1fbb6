"""Qwen1.5 architecture config: a frozen dataclass read from (and written to) HF `config.json`.

Only the fields that change the computation live here; run settings (dtype, remat) are module
attributes. Parsing is strict: every HF attribute is either handled, known to be irrelevant for
inference, or an error, so an unsupported checkpoint never converts silently into a wrong model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, NoReturn


class ConfigError(ValueError):
  """A checkpoint config that jaxskill cannot represent faithfully."""


@dataclasses.dataclass(frozen=True)
class QwenConfig:
  """The architecture of a dense Qwen1.5 / Qwen2 checkpoint (HF field names)."""
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

  def __post_init__(self):
    for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "num_key_value_heads"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"field '{name}' must be a positive integer, got {value!r}")
    if self.num_attention_heads % self.num_key_value_heads:
      raise ConfigError(
          f"num_attention_heads={self.num_attention_heads} is not a multiple of "
          f"num_key_value_heads={self.num_key_value_heads}")
    if self.head_dim_override is None and self.hidden_size % self.num_attention_heads:
      raise ConfigError(f"hidden_size={self.hidden_size} is not divisible by "
                        f"num_attention_heads={self.num_attention_heads}")
    if self.head_dim % 2:
      raise ConfigError(f"head_dim={self.head_dim} must be even for rotary embeddings")
    if not self.rope_theta > 0:
      raise ConfigError(f"field 'rope_theta' must be positive, got {self.rope_theta!r}")
    if not self.rms_norm_eps > 0:
      raise ConfigError(f"field 'rms_norm_eps' must be positive, got {self.rms_norm_eps!r}")

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
  def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "QwenConfig":
    """Validates an HF Qwen2 config dict; `source` names the file in error messages."""
    _check_supported(d, source)
    rope_theta = _rope_theta(d, source)
    act = d.get("hidden_act", "silu")
    if act != "silu":
      _fail(source, f"field 'hidden_act' is {act!r}; Qwen2 MLPs use 'silu'")
    for name in _REQUIRED:
      if name not in d:
        _fail(source, f"required field '{name}' is missing")
    kwargs = {name: d[name] for name in _REQUIRED}
    kv_heads = d.get("num_key_value_heads")
    kwargs["num_key_value_heads"] = d["num_attention_heads"] if kv_heads is None else kv_heads
    try:
      return cls(
          **kwargs,
          rope_theta=float(rope_theta),
          rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
          tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
          max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
          head_dim_override=d.get("head_dim"),
          bos_token_id=d.get("bos_token_id"),
          eos_token_id=d.get("eos_token_id"),
          pad_token_id=d.get("pad_token_id"),
      )
    except ConfigError as e:
      _fail(source, str(e))

  @classmethod
  def from_json_file(cls, path: str | Path) -> "QwenConfig":
    """Reads and validates an HF `config.json`; errors name the file."""
    path = Path(path)
    try:
      d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
      raise ConfigError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
      raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
      raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
      raise ConfigError(f"{path}: cannot be read ({e.strerror or e})") from None
    if not isinstance(d, dict):
      raise ConfigError(f"{path}: expected a JSON object ({{...}}) at the top level, got "
                        f"{json.dumps(d)[:80]}")
    return cls.from_hf_dict(d, source=str(path))

  def to_hf_dict(self) -> dict[str, Any]:
    """An HF `config.json` dict that `transformers` loads as `Qwen2ForCausalLM`."""
    d = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
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
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "bos_token_id": self.bos_token_id,
        "eos_token_id": self.eos_token_id,
        "pad_token_id": self.pad_token_id,
    }
    if self.head_dim_override is not None:
      d["head_dim"] = self.head_dim_override
    return d


_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
             "num_attention_heads")
_HANDLED = set(_REQUIRED) | {
    "model_type", "num_key_value_heads", "rope_theta", "rope_parameters", "rope_scaling",
    "rms_norm_eps", "tie_word_embeddings", "max_position_embeddings", "head_dim", "hidden_act",
    "use_sliding_window", "layer_types", "bos_token_id", "eos_token_id", "pad_token_id",
    "use_mrope",
}
# Present in real Qwen1.5 / transformers-written configs, and irrelevant to a frozen forward
# pass: training-time settings, bookkeeping, and sliding-window sizes that only apply when
# `use_sliding_window` is true (which is refused above).
_IGNORED = {
    "architectures", "attention_dropout", "initializer_range", "use_cache", "torch_dtype", "dtype",
    "transformers_version", "sliding_window", "max_window_layers", "_name_or_path",
    "output_attentions", "output_hidden_states", "return_dict", "tokenizer_class",
    "generation_config", "use_return_dict", "chunk_size_feed_forward",
}



def _fail(source: str, msg: str) -> NoReturn:
  """Raises a ConfigError that names the config file."""
  raise ConfigError(f"{source}: {msg}")


def _check_supported(d: dict[str, Any], source: str) -> None:
  """Raises for a model type, an unknown field or an attention variant jaxskill does not run."""
  model_type = d.get("model_type")
  if model_type == "qwen2_moe":
    _fail(source, "model_type 'qwen2_moe' (mixture of experts) is not supported yet; "
          "jaxskill handles dense Qwen1.5/Qwen2 checkpoints (model_type 'qwen2')")
  if model_type != "qwen2":
    _fail(source, f"field 'model_type' is {model_type!r}; only 'qwen2' (Qwen1.5 / Qwen2) is "
          "supported")
  unknown = sorted(set(d) - _HANDLED - _IGNORED)
  if unknown:
    _fail(source, f"unsupported field(s) {unknown}; jaxskill refuses attributes it does not "
          "implement so that a checkpoint never converts into a silently different model")
  if d.get("use_mrope"):  # Qwen2.5 text checkpoints write it, false
    _fail(source, "field 'use_mrope' is true; multimodal rotary embeddings (Qwen2-VL) are not "
          "supported")
  if d.get("use_sliding_window"):
    _fail(source, "field 'use_sliding_window' is true; sliding-window attention is not "
          "supported (no Qwen1.5 checkpoint uses it)")
  layer_types = d.get("layer_types")
  if layer_types is not None and any(t != "full_attention" for t in layer_types):
    _fail(source, f"field 'layer_types' contains {sorted(set(layer_types) - {'full_attention'})}; "
          "only 'full_attention' layers are supported")
  if d.get("rope_scaling") is not None:
    _fail(source, f"field 'rope_scaling' is {d['rope_scaling']!r}; scaled RoPE is not supported "
          "yet")


def _rope_theta(d: dict[str, Any], source: str) -> Any:
  """The RoPE base from the legacy 'rope_theta' and/or the newer 'rope_parameters' (which must
  agree), as given in the file."""
  rope_theta = d.get("rope_theta")
  params = d.get("rope_parameters")
  if params is not None:
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
      _fail(source, f"field 'rope_parameters.rope_type' is {rope_type!r}; only 'default' RoPE "
            "is supported")
    extra = sorted(set(params) - {"rope_type", "rope_theta"})
    if extra:
      _fail(source, f"field 'rope_parameters' has unsupported key(s) {extra}")
    if rope_theta is not None and params.get("rope_theta", rope_theta) != rope_theta:
      _fail(source, f"'rope_theta'={rope_theta} disagrees with 'rope_parameters.rope_theta'="
            f"{params['rope_theta']}")
    rope_theta = params.get("rope_theta", rope_theta)
  if rope_theta is None:
    _fail(source, "no 'rope_theta' (nor 'rope_parameters.rope_theta'); refusing to guess the "
          "RoPE base")
  return rope_theta

# Named presets of the published Qwen1.5 sizes (from their config.json files on the hub), used for
# shape checks with `jax.eval_shape` and for benchmarks with random weights.
PRESETS: dict[str, QwenConfig] = {
    "qwen1.5-0.5b": QwenConfig(151936, 1024, 2816, 24, 16, 16, 1e6, tie_word_embeddings=True),
    "qwen1.5-1.8b": QwenConfig(151936, 2048, 5504, 24, 16, 16, 1e6),
    "qwen1.5-4b": QwenConfig(151936, 2560, 6912, 40, 20, 20, 5e6),
    "qwen1.5-7b": QwenConfig(151936, 4096, 11008, 32, 32, 32, 1e6),
    "qwen1.5-14b": QwenConfig(152064, 5120, 13696, 40, 40, 40, 1e6),
    "qwen1.5-32b": QwenConfig(152064, 5120, 27392, 64, 40, 8, 1e6),
    "qwen1.5-72b": QwenConfig(152064, 8192, 24576, 80, 64, 64, 1e6),
}
