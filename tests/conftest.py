"""Shared fixtures: tiny random HF Qwen2 checkpoints written with `save_pretrained`."""

import jax

# Parity needs true float32 matmuls (GPUs default to TF32, TPUs to bf16 passes).
jax.config.update("jax_default_matmul_precision", "highest")

import logging

import pytest

# Tests that corrupt checkpoints on purpose leave orbax's failed read futures behind; at exit asyncio
# logs each as "exception was never retrieved" after pytest's summary. They are expected here.
logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def make_hf_model(*, vocab=97, hidden=48, intermediate=80, layers=2, heads=6, kv_heads=6,
                  theta=1e6, tied=False, seed=0, **config):
  """A seeded tiny random `Qwen2ForCausalLM` with eager attention, float32; `config`: more
  `Qwen2Config` fields."""
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM
  torch.manual_seed(seed)
  config = Qwen2Config(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
      rope_theta=theta, tie_word_embeddings=tied, attn_implementation="eager",
      **{"max_position_embeddings": 512, **config})
  model = Qwen2ForCausalLM(config).eval()
  with torch.no_grad():  # HF inits biases to zero and norms to one; make every tensor matter
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
  """Factory: (kwargs) -> (hf_model, directory), cached per configuration."""
  cache = {}

  def build(**kwargs):
    key = tuple(sorted(kwargs.items()))
    if key not in cache:
      model = make_hf_model(**kwargs)
      path = tmp_path_factory.mktemp("hf")
      model.save_pretrained(path)
      cache[key] = (model, path)
    return cache[key]

  return build


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  """(config, stages): the demo's pipeline run once, small (tests/demo_small.py), all stages."""
  from jaxskill.pipeline import run
  from tests.demo_small import small_demo_config
  config = small_demo_config(tmp_path_factory.mktemp("runs"))
  return config, run(config, progress=False)
