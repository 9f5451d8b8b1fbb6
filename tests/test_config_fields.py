"""Which config.json fields are accepted: the rule follows transformers' config class of each
family (jaxskill/model/architecture.py). A field the class reads is handled, inert, at its
default or refused by name; a field it does not read is accepted and named in one info line."""

import json
import logging

import numpy as np
import pytest
import torch

import jaxskill
from jaxskill.model import architecture as config_lib
from tests.conftest import HF_CLASSES, make_hf_model

_TINY = dict(vocab_size=97, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2)
# What each family's published files set beyond the sizes (Qwen2.5, Qwen3, Llama 3.2, Mistral).
_EXTRA = {"qwen2": dict(tie_word_embeddings=True, max_window_layers=21),
          "qwen3": dict(head_dim=32, tie_word_embeddings=True),
          "llama": dict(rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0,
                                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                         "original_max_position_embeddings": 8192},
                        tie_word_embeddings=True, head_dim=16),
          "mistral": dict(sliding_window=64)}
# Keys that transformers' GGUF loader and save_pretrained leave in a real file (SmolLM2's and
# Qwen2.5-Coder's converted config.json), which no family class reads.
_CONVERTER_KEYS = {"_model_name_or_path": "gguf", "unk_token_id": 0}


@pytest.mark.parametrize("family", sorted(HF_CLASSES))
def test_save_pretrained_config_loads(tmp_path, caplog, family):
  """The config.json that transformers 5 writes for each family loads as transformers reads it,
  with the converter's keys named in one info line."""
  import transformers
  hf = getattr(transformers, HF_CLASSES[family][0])(**_TINY, **_EXTRA[family])
  hf.save_pretrained(tmp_path)
  d = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**d, **_CONVERTER_KEYS}))
  with caplog.at_level(logging.INFO, logger="jaxskill"):
    ours = jaxskill.Architecture.from_json_file(tmp_path / "config.json")
  assert ours == jaxskill.Architecture.from_hf_dict(d)  # the extra keys change nothing
  notes = [r.getMessage() for r in caplog.records if "not read by" in r.getMessage()]
  assert len(notes) == 1 and all(repr(k) in notes[0] for k in _CONVERTER_KEYS), notes
  assert str(tmp_path / "config.json") in notes[0] and HF_CLASSES[family][0] in notes[0]
  assert ours.model_type == family
  assert ours.num_key_value_heads == hf.num_key_value_heads
  assert ours.head_dim == (getattr(hf, "head_dim", None) or 64 // 4)
  assert ours.rope_theta == hf.rope_parameters["rope_theta"]
  assert ours.tie_word_embeddings == hf.tie_word_embeddings
  assert ours.sliding_window == (hf.sliding_window if family == "mistral" else None)
  assert (ours.rope_scaling is not None) == (hf.rope_parameters["rope_type"] != "default")


def test_a_field_the_class_reads_is_refused_unless_at_its_default(monkeypatch):
  """The refusal comes from the class's fields: a field that the class reads and jaxskill does
  not handle passes at the class's default and is refused by name at any other value."""
  real = config_lib.hf_fields
  monkeypatch.setattr(config_lib, "hf_fields", lambda f: {**real(f), "new_knob": 0})
  d = {"model_type": "llama", **_TINY, "rope_theta": 1e4}
  jaxskill.Architecture.from_hf_dict({**d, "new_knob": 0})
  with pytest.raises(jaxskill.ArchitectureError) as info:
    jaxskill.Architecture.from_hf_dict({**d, "new_knob": 2}, source="m/config.json")
  msg = str(info.value)
  for fragment in ("m/config.json: ", "['new_knob']", "LlamaConfig", "new_knob=2"):
    assert fragment in msg, (fragment, msg)


def test_unread_fields_change_nothing():
  """Fields no family class reads (use_mrope on qwen2, a window on llama, a bias switch on
  mistral, a made-up key) are accepted as the same model."""
  cases = {"qwen2": {"use_mrope": True, "foo_bar": 1}, "llama": {"sliding_window": 4096,
                                                                  "layer_types": ["x"]},
           "mistral": {"attention_bias": True}}
  for family, extra in cases.items():
    d = {"model_type": family, **_TINY, "rope_theta": 1e4}
    assert not set(extra) & set(config_lib.hf_fields(family)), family  # premise
    assert (jaxskill.Architecture.from_hf_dict({**d, **extra})
            == jaxskill.Architecture.from_hf_dict(d))


# Values far from each inert field's default.
_INERT_VALUES = {"attention_dropout": 0.5, "initializer_range": 0.9, "use_cache": False,
                 "pretraining_tp": 4}


@pytest.mark.parametrize("family", sorted(HF_CLASSES))
def test_inert_fields_do_not_change_transformers(family):
  """Every field jaxskill takes as inert leaves transformers' eval-mode logits bit-identical
  (same weights, the field at its default and far from it)."""
  read = config_lib.hf_fields(family)
  fields = sorted(config_lib._INERT & set(read))
  assert fields, family
  base = make_hf_model(family=family, hidden=64, heads=4, kv_heads=2)
  ids = torch.tensor(np.random.default_rng(0).integers(0, 97, (2, 12)))
  with torch.no_grad():
    ref = base(input_ids=ids).logits
  for field in fields:
    changed = make_hf_model(family=family, hidden=64, heads=4, kv_heads=2,
                            **{field: _INERT_VALUES[field]})
    assert getattr(changed.config, field) == _INERT_VALUES[field]
    changed.load_state_dict(base.state_dict())
    with torch.no_grad():
      out = changed.eval()(input_ids=ids).logits
    assert torch.equal(out, ref), (family, field)
