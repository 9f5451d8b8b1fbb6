"""Shared fixtures: tiny random HF checkpoints (Qwen2, Qwen3, Llama, Mistral) written with
`save_pretrained`."""

import os
import tempfile

# A persistent compilation cache per test process (an xdist worker runs whole modules), which
# the subprocesses that the tests start share (they inherit the environment): most of the
# suite's time on a CPU is compiling the same few programs (the demo model's forward, training
# step and statistics under many configs), which a cache keyed on the program compiles once. A
# cache hit is the same executable. A cache the user set up is used and left alone. (One cache
# shared by both workers needs jax's size limit for its file lock, and with it every write scans
# the whole cache under the lock: the suite took 2440 s instead of 2217 s, BENCHMARKS.md.)
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxskill-tests-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax

# Parity needs true float32 matmuls (GPUs default to TF32, TPUs to bf16 passes).
jax.config.update("jax_default_matmul_precision", "highest")
# In case a plugin imported jax before this file (it reads the environment at import).
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_persistent_cache_min_entry_size_bytes",
                  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]))

# Shapes in types: the array annotations (jaxtyping) of these modules are checked at every call the
# tests make, by beartype, with their dimensions consistent within each call. Installed before
# any test imports jaxskill.
from jaxtyping import install_import_hook

TYPE_CHECKED = ("jaxskill.stats.selection", "jaxskill.stats.densities", "jaxskill.model.forward",
                "jaxskill.results")
install_import_hook(list(TYPE_CHECKED), "beartype.beartype")

import logging
import shutil

import pytest


def pytest_unconfigure(config):
  if _OWN_CACHE:  # this process's cache goes with it
    shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


# Tests that corrupt checkpoints on purpose leave orbax's failed read futures behind; at exit asyncio
# logs each as "exception was never retrieved" after pytest's summary. They are expected here.
logging.getLogger("asyncio").setLevel(logging.CRITICAL)


# The longest modules first, in the order of their measured time (`--durations`, CI of
# 2026-12-04: test_qwen_configs.py about a sixth of the suite): with pytest-xdist's --dist loadfile
# --no-loadscope-reorder (scripts/test.sh) a worker takes one module at a time in this order, so a
# long one never runs alone at the end while the other worker idles.
_LONG_FIRST = ("test_qwen_configs.py", "test_train.py", "test_multihost_run.py",
               "test_sharding.py", "test_same_results.py", "test_real_experiment.py",
               "test_user_path.py", "test_find.py", "test_verify_report.py", "test_bad_input.py",
               "test_parity.py", "test_run_outputs.py", "test_real_models.py",
               "test_interventions.py", "test_multihost.py", "test_docs.py", "test_results.py",
               "test_families.py", "test_family_cli.py")


# The end-to-end tier (`slow`): modules that run the CLI, a whole pipeline, subprocesses or a real
# model. `scripts/test.sh --fast` runs the rest (the core: model, statistics, tasks, one stage's
# functions); a test of another module that starts a subprocess is marked where it is defined.
_SLOW_MODULES = {"test_bad_input.py", "test_bench.py", "test_browser.py", "test_cli.py",
                 "test_docs.py", "test_results.py",
                 "test_family_cli.py", "test_multihost.py", "test_multihost_run.py",
                 "test_neuron_data.py", "test_qwen_configs.py", "test_real_experiment.py",
                 "test_real_models.py", "test_run_outputs.py", "test_same_results.py",
                 "test_sharding.py", "test_train.py", "test_user_path.py", "test_verify_report.py"}


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONG_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: in-module order kept
  for item in items:
    if item.path.name in _SLOW_MODULES:
      item.add_marker(pytest.mark.slow)


# model_type -> the transformers config and model classes (the families of jaxskill.FAMILIES).
HF_CLASSES = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
              "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
              "llama": ("LlamaConfig", "LlamaForCausalLM"),
              "mistral": ("MistralConfig", "MistralForCausalLM")}


def make_hf_model(*, family="qwen2", vocab=97, hidden=48, intermediate=80, layers=2, heads=6,
                  kv_heads=6, theta=1e6, tied=False, seed=0, **config):
  """A seeded tiny random transformers CausalLM of `family` with eager attention, float32;
  `config`: more fields of the family's config class (head_dim, rope_scaling, ...)."""
  import torch
  import transformers
  config_cls, model_cls = (getattr(transformers, name) for name in HF_CLASSES[family])
  torch.manual_seed(seed)
  config = config_cls(
      vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
      rope_theta=theta, tie_word_embeddings=tied, attn_implementation="eager",
      **{"max_position_embeddings": 512, **config})
  model = model_cls(config).eval()
  with torch.no_grad():  # HF inits biases to zero and norms to one; make every tensor matter
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
  """Factory: (kwargs) -> (hf_model, directory), cached per configuration. `file_dtype=
  "bfloat16"` saves the weights in bfloat16; the returned model then holds those rounded
  weights, in float32."""
  cache = {}

  def build(file_dtype="float32", **kwargs):
    import torch
    import transformers
    key = (file_dtype, repr(sorted(kwargs.items())))
    if key not in cache:
      model = make_hf_model(**kwargs)
      path = tmp_path_factory.mktemp("hf")
      if file_dtype != "float32":
        # Read back by transformers in float32 (as a user loads it): the rounded weights, and
        # buffers such as RoPE's inv_freq recomputed in float32 rather than cast back.
        model.to(getattr(torch, file_dtype)).save_pretrained(path)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").eval()
      else:
        model.save_pretrained(path)
      cache[key] = (model, path)
    return cache[key]

  return build


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
  """(config, stages): the demo's pipeline run once, small (tests/demo_small.py), all stages."""
  from jaxskill.runtime.pipeline import run
  from tests.demo_small import small_demo_config
  config = small_demo_config(tmp_path_factory.mktemp("runs"))
  return config, run(config, progress=False)
