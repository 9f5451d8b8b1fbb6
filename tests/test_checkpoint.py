"""Checkpoint conversion: strict refusal of bad HF checkpoints, sharded loading, HF export,
orbax round trips, the CLI, and config parsing. References are transformers' PyTorch
Qwen2ForCausalLM (eager attention, float32), `safetensors`' own readers, and hand counts."""

import json
import shutil
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file as st_load_numpy
from safetensors.numpy import save_file as st_save_numpy
from safetensors.torch import load_file as st_load_torch

import jaxskill
from jaxskill import Architecture, ArchitectureError, CheckpointError
from jaxskill.cli import DEMO_MODEL, main
from jaxskill.model.checkpoint import (abstract_params, name_table,
                                       read_safetensors, resolve_model_dir, write_safetensors)

UNTIED = dict(heads=6, kv_heads=2, tied=False, theta=1e6)  # GQA, 3 query heads per kv head
TIED = dict(heads=6, kv_heads=6, tied=True, theta=1e4)

# transformers >= 4.56 spells the load dtype `dtype`; older versions `torch_dtype`.
_TF_VERSION = tuple(int(x) for x in transformers.__version__.split(".")[:2])
_AUTO_DTYPE = {"dtype": "auto"} if _TF_VERSION >= (4, 56) else {"torch_dtype": "auto"}


def _ids(seed=0, b=2, t=9, vocab=97):
  return np.random.default_rng(seed).integers(0, vocab, size=(b, t))


def _hf_logits(hf, ids):
  with torch.no_grad():
    return hf(input_ids=torch.tensor(ids)).logits.float().numpy()


def _jax_logits(model, params, ids):
  return np.asarray(model.apply({"params": params}, jnp.asarray(ids)))


def _assert_trees_identical(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, jax.tree_util.keystr(path)
    # Compare bit patterns: exact, and also for bfloat16.
    np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8),
                                  err_msg=jax.tree_util.keystr(path))


@pytest.fixture
def copy_ckpt(hf_checkpoint, tmp_path):
  """(kwargs) -> a private copy of the fixture's HF directory, free to mutate."""
  def copy(**kwargs):
    _, src = hf_checkpoint(**kwargs)
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst
  return copy


def _edit_config(path, **changes):
  d = json.loads((path / "config.json").read_text())
  for key, value in changes.items():
    if value is _DELETE:
      d.pop(key, None)
    else:
      d[key] = value
  (path / "config.json").write_text(json.dumps(d))


def _edit_tensors(path, fn):
  file = path / "model.safetensors"
  tensors = {k: np.array(v) for k, v in read_safetensors(file).items()}  # copy off the memmap
  fn(tensors)
  write_safetensors(file, tensors)


_DELETE = object()


# --- 1. bad checkpoints -----------------------------------------------------------------------

CONFIG_CASES = {
    "sliding_window": (dict(use_sliding_window=True), ["'use_sliding_window'", "sliding-window"]),
    "rope_scaling": (dict(rope_parameters=_DELETE, rope_theta=1e6,
                          rope_scaling={"type": "dynamic", "factor": 2.0}),
                     ["RoPE type 'dynamic'", "not supported", "'llama3'"]),
    "rope_scaling_keys": (dict(rope_parameters=_DELETE, rope_theta=1e6,
                               rope_scaling={"type": "linear", "factor": 2.0, "beta": 1}),
                          ["'linear'", "['factor']", "'beta'"]),
    "rope_scaling_disagrees": (dict(rope_scaling={"type": "linear", "factor": 2.0}),
                               ["'rope_scaling.rope_type'='linear'", "disagrees",
                                "'rope_parameters.rope_type'='default'"]),
    "moe": (dict(model_type="qwen2_moe"), ["'qwen2_moe'", "mixture-of-experts"]),
    "gemma": (dict(model_type="gemma2"), ["'gemma2'", "GeGLU", "soft-capping", "not supported"]),
    "phi3": (dict(model_type="phi3"), ["'model_type'", "'phi3'", "'qwen2'", "'llama'"]),
    "quantized": (dict(quantization_config={"quant_method": "gguf"}),
                  ["'quantization_config'", "dequantize"]),
    "missing_hidden_size": (dict(hidden_size=_DELETE), ["required field 'hidden_size'", "missing"]),
    "gelu": (dict(hidden_act="gelu"), ["'hidden_act'", "'gelu'", "'silu'"]),
    "sliding_layer_types": (dict(layer_types=["full_attention", "sliding_attention"]),
                            ["'layer_types'", "sliding_attention"]),
    "rope_type_yarn": (
        dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}),
        ["RoPE type 'yarn'", "not supported"]),
    "no_rope_theta": (dict(rope_parameters=_DELETE, rope_theta=_DELETE), ["no 'rope_theta'"]),
    "kv_heads_not_divisor": (dict(num_key_value_heads=4),
                             ["num_attention_heads=6", "num_key_value_heads=4"]),
    "negative_vocab": (dict(vocab_size=-3), ["'vocab_size'", "-3"]),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_is_refused(copy_ckpt, case):
  changes, fragments = CONFIG_CASES[case]
  path = copy_ckpt(**UNTIED)
  _edit_config(path, **changes)
  with pytest.raises(ArchitectureError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path / "config.json") in msg, msg  # names the file
  for fragment in fragments:
    assert fragment in msg, (fragment, msg)
  assert isinstance(info.value, ValueError)


def test_config_json_not_json(copy_ckpt):
  path = copy_ckpt(**UNTIED)
  (path / "config.json").write_text("{not json")
  with pytest.raises(ArchitectureError, match="not valid JSON") as info:
    jaxskill.load_model(path)
  assert str(path / "config.json") in str(info.value)



@pytest.mark.parametrize("text", ['[1, 2]', '"x"', 'null', '3'])
def test_config_json_not_an_object(copy_ckpt, text):
  path = copy_ckpt(**UNTIED)
  (path / "config.json").write_text(text)
  with pytest.raises(ArchitectureError, match="expected a JSON object") as info:
    jaxskill.load_model(path)
  assert str(path / "config.json") in str(info.value) and text in str(info.value)


def test_config_json_not_utf8(copy_ckpt):
  path = copy_ckpt(**UNTIED)
  (path / "config.json").write_bytes(b'{"model_type": "qwen\xe92"}')
  with pytest.raises(ArchitectureError, match="not UTF-8") as info:
    jaxskill.load_model(path)
  assert str(path / "config.json") in str(info.value)

def test_missing_config_json(copy_ckpt):
  path = copy_ckpt(**UNTIED)
  (path / "config.json").unlink()
  with pytest.raises(CheckpointError, match="no config.json") as info:
    jaxskill.load_model(path)
  assert str(path) in str(info.value)


def _drop(name):
  def fn(tensors):
    del tensors[name]
  return fn


def _reshape(name, shape):
  def fn(tensors):
    tensors[name] = np.zeros(shape, np.float32)
  return fn


def _add(name, shape):
  def fn(tensors):
    tensors[name] = np.zeros(shape, np.float32)
  return fn


# UNTIED: vocab 97, hidden 48, intermediate 80, 2 layers, 6 heads, 2 kv heads of dim 8.
TENSOR_CASES = {
    "missing_up_proj": (_drop("model.layers.1.mlp.up_proj.weight"),
                        ["missing tensor 'model.layers.1.mlp.up_proj.weight'"]),
    "missing_norm": (_drop("model.norm.weight"), ["missing tensor 'model.norm.weight'"]),
    "missing_k_bias": (_drop("model.layers.0.self_attn.k_proj.bias"),
                       ["missing tensor 'model.layers.0.self_attn.k_proj.bias'"]),
    "missing_lm_head": (_drop("lm_head.weight"),
                        ["missing tensor 'lm_head.weight'", "tie_word_embeddings=false"]),
    # A transposed down_proj: found [80, 48], HF layout wants [48, 80].
    "transposed_down_proj": (_reshape("model.layers.0.mlp.down_proj.weight", (80, 48)),
                             ["'model.layers.0.mlp.down_proj.weight'", "[80, 48]", "[48, 80]"]),
    # k_proj sized for 6 kv heads while the config says 2: found [48, 48], wants [16, 48].
    "k_proj_mha_shape": (_reshape("model.layers.1.self_attn.k_proj.weight", (48, 48)),
                         ["'model.layers.1.self_attn.k_proj.weight'", "[48, 48]", "[16, 48]"]),
    "embed_vocab": (_reshape("model.embed_tokens.weight", (96, 48)),
                    ["'model.embed_tokens.weight'", "[96, 48]", "[97, 48]"]),
    "q_bias": (_reshape("model.layers.1.self_attn.q_proj.bias", (47,)),
               ["'model.layers.1.self_attn.q_proj.bias'", "[47]", "[48]"]),
    "o_proj_bias": (_add("model.layers.0.self_attn.o_proj.bias", (48,)),
                    ["'model.layers.0.self_attn.o_proj.bias'", "qwen2 layer",
                     "config.json turns off"]),
    "unknown_layer_tensor": (_add("model.layers.0.mlp.gate_proj.bias", (80,)),
                             ["'model.layers.0.mlp.gate_proj.bias'", "unknown name"]),
    "layer_2": (_add("model.layers.2.mlp.up_proj.weight", (80, 48)),
                ["'model.layers.2.mlp.up_proj.weight'", "layer 2", "num_hidden_layers=2"]),
    "stray_top_level": (_add("model.extra_scale", (48,)),
                        ["'model.extra_scale'", "unexpected"]),
}


@pytest.mark.parametrize("case", sorted(TENSOR_CASES))
def test_bad_tensors_are_refused(copy_ckpt, case):
  fn, fragments = TENSOR_CASES[case]
  path = copy_ckpt(**UNTIED)
  _edit_tensors(path, fn)
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path) in msg, msg
  if not case.startswith("missing"):  # a tensor that is there is named with its file
    assert str(path / "model.safetensors") in msg, msg
  for fragment in fragments:
    assert fragment in msg, (fragment, msg)


def test_bad_tensor_in_a_shard_names_the_shard(hf_checkpoint, tmp_path):
  hf, _ = hf_checkpoint(**UNTIED)
  path = tmp_path / "sharded"
  hf.save_pretrained(path, max_shard_size="20KB")
  index = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
  name = "model.layers.1.mlp.down_proj.weight"
  shard = path / index[name]
  tensors = {k: np.array(v) for k, v in read_safetensors(shard).items()}
  tensors[name] = np.zeros(tensors[name].shape[::-1], np.float32)
  write_safetensors(shard, tensors)
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  assert f"{shard}: tensor '{name}'" in str(info.value)


def test_untied_config_on_tied_checkpoint(copy_ckpt):
  path = copy_ckpt(**TIED)
  assert "lm_head.weight" not in read_safetensors(path / "model.safetensors")
  jaxskill.load_model(path)  # fine as saved
  _edit_config(path, tie_word_embeddings=False)
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path) in msg and "missing tensor 'lm_head.weight'" in msg, msg
  assert "tie_word_embeddings=false" in msg


def test_top_level_inv_freq_is_ignored(hf_checkpoint, copy_ckpt):
  """An exported `rotary_emb.inv_freq` buffer carries no weights; it is skipped, not refused."""
  _, src = hf_checkpoint(**UNTIED)
  path = copy_ckpt(**UNTIED)
  _edit_tensors(path, _add("model.rotary_emb.inv_freq", (4,)))
  _, want = jaxskill.load_model(src)
  _, got = jaxskill.load_model(path)
  _assert_trees_identical(got, want)


def test_per_layer_inv_freq_is_ignored(copy_ckpt):
  """Old Llama-style exports persisted `model.layers.{i}.self_attn.rotary_emb.inv_freq`."""
  path = copy_ckpt(**UNTIED)
  _edit_tensors(path, _add("model.layers.0.self_attn.rotary_emb.inv_freq", (4,)))
  jaxskill.load_model(path)


def _truncate_data(path):
  data = path.read_bytes()
  path.write_bytes(data[:len(data) - 1000])


def _truncate_header(path):
  data = path.read_bytes()
  (n,) = struct.unpack("<Q", data[:8])
  path.write_bytes(data[:8 + n // 2])


def _truncate_to_4_bytes(path):
  path.write_bytes(path.read_bytes()[:4])


@pytest.mark.parametrize("truncate, fragment", [
    (_truncate_data, "(file truncated?)"),
    (_truncate_header, "not a safetensors file"),
    (_truncate_to_4_bytes, "truncated safetensors file (no header)"),
])
def test_truncated_safetensors(copy_ckpt, truncate, fragment):
  path = copy_ckpt(**UNTIED)
  truncate(path / "model.safetensors")
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path / "model.safetensors") in msg and fragment in msg, msg


def test_truncation_names_the_tensor(tmp_path):
  file = tmp_path / "two.safetensors"
  write_safetensors(file, {"a": np.zeros(10, np.float32), "b": np.ones((4, 5), np.float32)})
  file.write_bytes(file.read_bytes()[:-8])  # cut into the last tensor, 'b'
  with pytest.raises(CheckpointError) as info:
    read_safetensors(file)
  assert "tensor 'b'" in str(info.value) and "F32[4, 5]" in str(info.value)



def _header_blob(header, data=b"\0" * 64):
  blob = json.dumps(header).encode()
  blob += b" " * (-len(blob) % 8)
  return struct.pack("<Q", len(blob)) + blob + data


@pytest.mark.parametrize("entry", [
    {"dtype": "F32", "shape": [2], "data_offsets": [0]},
    {"dtype": "F32", "shape": [2], "data_offsets": ["0", "8"]},
    {"dtype": "F32", "shape": [2], "data_offsets": None},
    {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]},  # would map the header as data
    {"dtype": "F32", "shape": "x", "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]},
    {"dtype": "F32", "shape": [-2], "data_offsets": [8, 0]},
    {"dtype": ["F32"], "shape": [2], "data_offsets": [0, 8]},
], ids=["one_offset", "text_offsets", "null_offsets", "negative_offset", "text_shape",
        "float_shape", "negative_shape", "list_dtype"])
def test_corrupt_safetensors_entry_is_refused(copy_ckpt, entry):
  path = copy_ckpt(**UNTIED)
  (path / "model.safetensors").write_bytes(_header_blob({"model.norm.weight": entry}))
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path / "model.safetensors") in msg and "'model.norm.weight'" in msg, msg


def test_unreadable_safetensors_is_refused(copy_ckpt):
  path = copy_ckpt(**UNTIED)
  file = path / "model.safetensors"
  file.write_bytes(struct.pack("<Q", 2**40) + b"{}")  # a damaged header length
  with pytest.raises(CheckpointError, match="exceeds the file size") as info:
    jaxskill.load_model(path)
  assert str(file) in str(info.value)
  file.unlink()
  file.mkdir()
  with pytest.raises(CheckpointError, match="cannot be read") as info:
    jaxskill.load_model(path)
  assert str(file) in str(info.value)

def test_directory_without_weights(copy_ckpt):
  path = copy_ckpt(**UNTIED)
  (path / "model.safetensors").unlink()
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path) in msg and "no model.safetensors or model.safetensors.index.json" in msg


def test_directory_with_only_pytorch_bin(hf_checkpoint, copy_ckpt):
  hf, _ = hf_checkpoint(**UNTIED)
  path = copy_ckpt(**UNTIED)
  (path / "model.safetensors").unlink()
  torch.save(hf.state_dict(), path / "pytorch_model.bin")
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path) in msg and "only PyTorch pickle weights" in msg and "safetensors" in msg


@pytest.fixture
def sharded(hf_checkpoint, tmp_path):
  hf, _ = hf_checkpoint(**UNTIED)
  path = tmp_path / "sharded"
  hf.save_pretrained(path, max_shard_size="20KB")
  return hf, path


def test_sharded_index_lists_missing_shard(sharded):
  _, path = sharded
  index = json.loads((path / "model.safetensors.index.json").read_text())
  shard = index["weight_map"]["model.layers.1.mlp.up_proj.weight"]
  (path / shard).unlink()
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert str(path / "model.safetensors.index.json") in msg, msg
  assert f"shard '{shard}' is listed but missing" in msg, msg


def test_sharded_tensor_in_wrong_shard(sharded):
  _, path = sharded
  index_file = path / "model.safetensors.index.json"
  index = json.loads(index_file.read_text())
  by_shard = {}
  for name, shard in index["weight_map"].items():
    by_shard.setdefault(shard, []).append(name)
  shard = next(s for s in sorted(by_shard) if len(by_shard[s]) > 1)  # still read after the edit
  other = next(s for s in sorted(by_shard) if s != shard)
  name = by_shard[shard][0]
  index["weight_map"][name] = other  # the index now points at the wrong shard
  index_file.write_text(json.dumps(index))
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(path)
  msg = str(info.value)
  assert msg.startswith(f"{path / shard}: tensor '{name}' is not listed for this shard"), msg


def test_nonexistent_path(tmp_path):
  missing = tmp_path / "does" / "not" / "exist"
  with pytest.raises(CheckpointError, match="no such directory") as info:
    jaxskill.load_model(missing)
  assert str(missing) in str(info.value)


def test_file_instead_of_directory(hf_checkpoint):
  _, path = hf_checkpoint(**UNTIED)
  with pytest.raises(CheckpointError, match="is a file") as info:
    jaxskill.load_model(path / "model.safetensors")
  assert str(path / "model.safetensors") in str(info.value)


@pytest.fixture
def empty_hf_cache(tmp_path, monkeypatch):
  import huggingface_hub.constants
  cache = tmp_path / "hf_home" / "hub"
  cache.mkdir(parents=True)
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  # huggingface_hub reads the environment once, at import; patch the resolved constant too.
  monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
  return cache


def test_hub_id_not_in_cache(empty_hf_cache):
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model("Qwen/Qwen1.5-0.5B")
  msg = str(info.value)
  assert "'Qwen/Qwen1.5-0.5B'" in msg and "not in the local Hugging Face cache" in msg, msg
  assert "huggingface-cli download Qwen/Qwen1.5-0.5B" in msg


def test_hub_id_in_cache_resolves(empty_hf_cache, hf_checkpoint):
  """A hub id resolves to its cached snapshot (the standard hub cache layout, built by hand)."""
  _, src = hf_checkpoint(**UNTIED)
  repo = empty_hf_cache / "models--jaxskill-test--tiny-qwen"
  commit = "0123456789abcdef0123456789abcdef01234567"
  shutil.copytree(src, repo / "snapshots" / commit)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)
  assert resolve_model_dir("jaxskill-test/tiny-qwen") == repo / "snapshots" / commit
  _, want = jaxskill.load_model(src)
  _, got = jaxskill.load_model("jaxskill-test/tiny-qwen")
  _assert_trees_identical(got, want)


# --- safetensors reader/writer against the safetensors library --------------------------------

def test_safetensors_writer_and_reader_match_library(tmp_path):
  rng = np.random.default_rng(0)
  tensors = {"a": rng.standard_normal((3, 5)).astype(np.float32),
             "b": rng.standard_normal(7).astype(np.float16),
             "c": rng.integers(-9, 9, (2, 2, 2)).astype(np.int64)}
  ours = tmp_path / "ours.safetensors"
  write_safetensors(ours, tensors)
  theirs = st_load_numpy(ours)
  assert sorted(theirs) == sorted(tensors)
  for k, v in tensors.items():
    assert theirs[k].dtype == v.dtype
    np.testing.assert_array_equal(theirs[k], v)
  lib = tmp_path / "lib.safetensors"
  st_save_numpy(tensors, lib)
  back = read_safetensors(lib)
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype
    np.testing.assert_array_equal(back[k], v)


def test_safetensors_bfloat16_written_as_torch_reads_it(tmp_path):
  x = torch.randn(4, 6)
  ours = tmp_path / "bf16.safetensors"
  write_safetensors(ours, {"x": x.numpy().astype(ml_dtypes.bfloat16)})
  got = st_load_torch(ours)["x"]
  assert got.dtype == torch.bfloat16
  # ml_dtypes and torch both round float32 -> bfloat16 to nearest even: identical bits.
  assert torch.equal(got, x.to(torch.bfloat16))
  back = read_safetensors(ours)["x"]
  assert back.dtype == np.dtype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(back.astype(np.float32), x.to(torch.bfloat16).float().numpy())


# --- 2. sharded checkpoints -------------------------------------------------------------------

def test_sharded_checkpoint_matches_hf(sharded, hf_checkpoint):
  hf, path = sharded
  assert (path / "model.safetensors.index.json").exists()
  assert not (path / "model.safetensors").exists()
  assert len(list(path.glob("model-*.safetensors"))) > 1
  model, params = jaxskill.load_model(path)
  ids = _ids(1)
  np.testing.assert_allclose(_jax_logits(model, params, ids), _hf_logits(hf, ids),
                             atol=1e-4, rtol=0)
  _, single = jaxskill.load_model(hf_checkpoint(**UNTIED)[1])
  _assert_trees_identical(params, single)


# --- 3. export to HF ------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [UNTIED, TIED], ids=["untied_gqa", "tied_mha"])
def test_export_loads_in_transformers(hf_checkpoint, tmp_path, kwargs):
  hf, src = hf_checkpoint(**kwargs)
  model, params = jaxskill.load_model(src)
  out = jaxskill.export_hf(tmp_path / "export", params, model.config, tokenizer_dir=DEMO_MODEL)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (out / name).read_bytes() == (DEMO_MODEL / name).read_bytes()
  exported = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager")
  assert type(exported).__name__ == "Qwen2ForCausalLM"
  assert exported.config.tie_word_embeddings == kwargs["tied"]
  # Every weight is the HF original, bit for bit (transposes of float32 are exact).
  want_sd, got_sd = hf.state_dict(), exported.state_dict()
  assert sorted(got_sd) == sorted(want_sd)
  for name, tensor in want_sd.items():
    assert got_sd[name].dtype == torch.float32
    assert torch.equal(got_sd[name], tensor), name
  ids = _ids(2)
  got = _hf_logits(exported, ids)
  np.testing.assert_allclose(got, _jax_logits(model, params, ids), atol=1e-4, rtol=0)
  np.testing.assert_allclose(got, _hf_logits(hf, ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [ml_dtypes.bfloat16, jnp.bfloat16], ids=["ml_dtypes", "jnp"])
def test_export_bfloat16(hf_checkpoint, tmp_path, dtype):
  hf, src = hf_checkpoint(**UNTIED)
  model, params = jaxskill.load_model(src)
  out = jaxskill.export_hf(tmp_path / "export16", params, model.config, dtype=dtype)
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
  raw = st_load_torch(out / "model.safetensors")
  assert {t.dtype for t in raw.values()} == {torch.bfloat16}
  exported = transformers.AutoModelForCausalLM.from_pretrained(
      out, attn_implementation="eager", **_AUTO_DTYPE)
  sd = exported.state_dict()
  for name, tensor in hf.state_dict().items():
    assert sd[name].dtype == torch.bfloat16, name
    assert torch.equal(sd[name], tensor.to(torch.bfloat16)), name


# --- 4. converted (orbax) directories ---------------------------------------------------------

def test_save_converted_round_trip(hf_checkpoint, tmp_path):
  _, src = hf_checkpoint(**UNTIED)
  model, params = jaxskill.load_model(src)
  out = jaxskill.save_converted(tmp_path / "conv", params, model.config, tokenizer_dir=DEMO_MODEL)
  assert json.loads((out / "jaxskill.json").read_text()) == {"format": 1, "dtype": "float32"}
  assert (out / "tokenizer.json").read_bytes() == (DEMO_MODEL / "tokenizer.json").read_bytes()
  assert not list(out.glob("*.safetensors"))
  model2, params2 = jaxskill.load_model(out)
  assert model2.config == model.config
  _assert_trees_identical(params2, params)

  # The same directory read in bfloat16: every leaf cast, values rounded as numpy rounds them.
  model16, params16 = jaxskill.load_model(out, dtype=jnp.bfloat16)
  assert model16.dtype == jnp.bfloat16 and model16.param_dtype == jnp.bfloat16
  want16 = jax.tree.map(lambda a: np.asarray(a).astype(ml_dtypes.bfloat16), params)
  _assert_trees_identical(params16, want16)

  # bfloat16 params saved and reloaded in bfloat16 are bit-identical as well.
  out16 = jaxskill.save_converted(tmp_path / "conv16", params16, model.config)
  assert json.loads((out16 / "jaxskill.json").read_text())["dtype"] == "bfloat16"
  _, back16 = jaxskill.load_model(out16, dtype=jnp.bfloat16)
  _assert_trees_identical(back16, want16)


def test_converted_without_marker_is_treated_as_hf(hf_checkpoint, tmp_path):
  _, src = hf_checkpoint(**TIED)
  model, params = jaxskill.load_model(src)
  out = jaxskill.save_converted(tmp_path / "conv", params, model.config)
  (out / "jaxskill.json").unlink()  # as an interrupted conversion leaves it
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(out)
  msg = str(info.value)
  assert str(out) in msg and "no model.safetensors or model.safetensors.index.json" in msg


def test_interrupted_reconversion_is_not_a_converted_dir(hf_checkpoint, tmp_path, monkeypatch):
  import orbax.checkpoint as ocp
  _, src = hf_checkpoint(**UNTIED)
  model, params = jaxskill.load_model(src)
  out = jaxskill.save_converted(tmp_path / "conv", params, model.config)

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt("simulated interruption")
  monkeypatch.setattr(ocp.StandardCheckpointer, "save", interrupted)
  with pytest.raises(KeyboardInterrupt):
    jaxskill.save_converted(out, params, model.config)
  assert not (out / "jaxskill.json").exists()


def test_converted_dir_without_params_is_refused(hf_checkpoint, tmp_path):
  _, src = hf_checkpoint(**UNTIED)
  model, params = jaxskill.load_model(src)
  out = jaxskill.save_converted(tmp_path / "conv", params, model.config)
  shutil.rmtree(out / "params")
  with pytest.raises(jaxskill.CheckpointError, match="no params/"):
    jaxskill.load_model(out)


def test_converted_params_disagreeing_with_config_are_refused(hf_checkpoint, tmp_path):
  _, src = hf_checkpoint(**UNTIED)
  model, params = jaxskill.load_model(src)
  out = jaxskill.save_converted(tmp_path / "conv", params, model.config)
  cfg = json.loads((out / "config.json").read_text())
  cfg["intermediate_size"] += 8
  (out / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(jaxskill.CheckpointError) as info:
    jaxskill.load_model(out)
  msg = str(info.value)
  assert "mlp/down_proj/kernel" in msg or "mlp/gate_proj/kernel" in msg or "mlp/up_proj/kernel" in msg
  assert str(cfg["intermediate_size"]) in msg and "config.json" in msg



def _largest_file(directory):
  return max((f for f in directory.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


CONVERTED_DAMAGE = {
    "truncated_data": lambda p: _largest_file(p / "ocdbt.process_0").write_bytes(
        _largest_file(p / "ocdbt.process_0").read_bytes()[:100]),
    "zeroed_data": lambda p: _largest_file(p / "ocdbt.process_0").write_bytes(
        bytes(_largest_file(p / "ocdbt.process_0").stat().st_size)),
    "empty_array_metadata": lambda p: (p / "array_metadatas" / "process_0").write_bytes(b""),
    "truncated_tree_metadata": lambda p: (p / "_METADATA").write_bytes(
        (p / "_METADATA").read_bytes()[:50]),
    "no_manifest": lambda p: (p / "manifest.ocdbt").unlink(),
}


@pytest.mark.parametrize("damage", sorted(CONVERTED_DAMAGE))
def test_damaged_converted_dir_is_refused(hf_checkpoint, tmp_path, damage):
  _, src = hf_checkpoint(**UNTIED)
  model, params = jaxskill.load_model(src)
  out = jaxskill.save_converted(tmp_path / "conv", params, model.config)
  CONVERTED_DAMAGE[damage](out / "params")
  with pytest.raises(CheckpointError) as info:
    jaxskill.load_model(out)
  msg = str(info.value)
  assert str(out / "params") in msg and "damaged or unreadable" in msg, msg
  assert "TensorStore" not in msg and len(msg.splitlines()) == 1, msg

def test_zero_kv_heads_is_refused():
  d = {"model_type": "qwen2", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
       "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 0,
       "rope_theta": 1e4}
  with pytest.raises(jaxskill.ArchitectureError, match="num_key_value_heads"):
    jaxskill.Architecture.from_hf_dict(d)


# --- 5. the CLI -------------------------------------------------------------------------------

def test_cli_convert_and_export(hf_checkpoint, tmp_path, capsys):
  hf, src = hf_checkpoint(**UNTIED)
  conv = tmp_path / "conv"
  assert main(["convert", str(src), str(conv)]) == 0
  assert f"converted {src} -> {conv}" in capsys.readouterr().out
  assert (conv / "jaxskill.json").exists()
  _, want = jaxskill.load_model(src)
  model, got = jaxskill.load_model(conv)
  _assert_trees_identical(got, want)

  out2 = tmp_path / "exported"
  assert main(["export", str(conv), str(out2)]) == 0
  assert "exported" in capsys.readouterr().out
  assert (out2 / "model.safetensors").exists() and not (out2 / "jaxskill.json").exists()
  _, back = jaxskill.load_model(out2)
  _assert_trees_identical(back, want)
  exported = transformers.AutoModelForCausalLM.from_pretrained(out2, attn_implementation="eager")
  ids = _ids(3)
  np.testing.assert_allclose(_hf_logits(exported, ids), _hf_logits(hf, ids), atol=1e-5, rtol=0)


def test_cli_convert_bfloat16(hf_checkpoint, tmp_path):
  _, src = hf_checkpoint(**UNTIED)
  conv = tmp_path / "conv16"
  assert main(["convert", str(src), str(conv), "--dtype", "bfloat16"]) == 0
  assert json.loads((conv / "jaxskill.json").read_text())["dtype"] == "bfloat16"
  _, want = jaxskill.load_model(src, dtype=jnp.bfloat16)
  _, got = jaxskill.load_model(conv, dtype=jnp.bfloat16)
  _assert_trees_identical(got, want)


def test_cli_convert_missing_path(tmp_path, capsys):
  out = tmp_path / "never"
  assert main(["convert", "/nonexistent", str(out)]) == 2
  err = capsys.readouterr().err
  assert "jaxskill convert: error:" in err and "/nonexistent" in err, err
  assert "no such directory" in err
  assert not out.exists()


def test_cli_convert_bad_config(copy_ckpt, tmp_path, capsys):
  path = copy_ckpt(**UNTIED)
  _edit_config(path, hidden_act="gelu")
  assert main(["convert", str(path), str(tmp_path / "out")]) == 2
  err = capsys.readouterr().err
  assert str(path / "config.json") in err and "'hidden_act' is 'gelu'" in err, err


def test_cli_bad_dtype(hf_checkpoint, tmp_path):
  _, src = hf_checkpoint(**UNTIED)
  with pytest.raises(SystemExit, match="float16"):
    main(["convert", str(src), str(tmp_path / "out"), "--dtype", "float16"])


# --- 6. config parsing and presets ------------------------------------------------------------

_BASE = dict(model_type="qwen2", vocab_size=97, hidden_size=48, intermediate_size=80,
             num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2)


def test_rope_theta_spellings():
  top = Architecture.from_hf_dict({**_BASE, "rope_theta": 5e5})
  nested = Architecture.from_hf_dict(
      {**_BASE, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}})
  both = Architecture.from_hf_dict(
      {**_BASE, "rope_theta": 5e5, "rope_parameters": {"rope_theta": 5e5, "rope_type": "default"}})
  assert top == nested == both
  assert top.rope_theta == 5e5 and isinstance(top.rope_theta, float)
  with pytest.raises(ArchitectureError) as info:
    Architecture.from_hf_dict(
        {**_BASE, "rope_theta": 1e6, "rope_parameters": {"rope_theta": 1e4,
                                                         "rope_type": "default"}},
        source="some/config.json")
  msg = str(info.value)
  assert msg.startswith("some/config.json: ") and "1000000.0" in msg and "10000.0" in msg, msg
  assert "disagrees" in msg


# Qwen2.5-0.5B's config.json as published on the hub (Qwen/Qwen2.5-0.5B): the same qwen2 block
# as Qwen1.5, with GQA 14/2, a tied head, and fields Qwen1.5's files lack (use_mrope).
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
    "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
    "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
    "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24,
    "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    "transformers_version": "4.40.1", "use_cache": True, "use_mrope": False,
    "use_sliding_window": False, "vocab_size": 151936}


def test_qwen25_config_is_read():
  """use_mrope is not a field of transformers' Qwen2Config (its Qwen2 model never reads it), so
  it changes nothing there either and is accepted (test_config_fields)."""
  c = Architecture.from_hf_dict(QWEN25_05B)
  assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (14, 2, 64)
  assert c.tie_word_embeddings and c.intermediate_size == 4864


def test_from_hf_dict_defaults_match_transformers():
  """Optional fields left out read as transformers' Qwen2Config reads them (rope_theta, which
  transformers would default, is required here)."""
  c = Architecture.from_hf_dict({**_BASE, "rope_theta": 1e6})
  hf = transformers.Qwen2Config(**{k: v for k, v in _BASE.items() if k != "model_type"})
  assert c.rms_norm_eps == hf.rms_norm_eps
  assert c.tie_word_embeddings == hf.tie_word_embeddings
  assert c.max_position_embeddings == hf.max_position_embeddings
  assert c.head_dim == hf.hidden_size // hf.num_attention_heads


def test_config_round_trips_through_hf_dict(hf_checkpoint):
  hf, src = hf_checkpoint(**UNTIED)
  c = Architecture.from_json_file(src / "config.json")
  assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers,
          c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (97, 48, 80, 2, 6, 2, 8)
  assert c.rope_theta == 1e6 and c.tie_word_embeddings is False
  assert Architecture.from_hf_dict(c.to_hf_dict()) == c


def _count_by_hand(c):
  h, i, L, V = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
  q = c.num_attention_heads * c.head_dim
  kv = c.num_key_value_heads * c.head_dim
  attn = h * q + 2 * h * kv + q * h
  attn += (q + 2 * kv) * c.qkv_bias + h * c.o_bias  # Qwen2: q, k, v biases; o without
  mlp = 3 * h * i
  norms = 2 * h + 2 * c.head_dim * c.qk_norm  # Qwen3: a q and a k norm over head_dim
  head = 0 if c.tie_word_embeddings else h * V
  return V * h + L * (attn + mlp + norms) + h + head


def test_preset_72b_shapes():
  c = jaxskill.PRESETS["qwen1.5-72b"]
  shapes = abstract_params(c)
  layers = shapes["layers"]
  assert layers["mlp"]["up_proj"]["kernel"].shape == (80, 8192, 24576)
  assert layers["mlp"]["gate_proj"]["kernel"].shape == (80, 8192, 24576)
  assert layers["mlp"]["down_proj"]["kernel"].shape == (80, 24576, 8192)
  assert layers["self_attn"]["q_proj"]["bias"].shape == (80, 8192)
  assert shapes["embed_tokens"]["embedding"].shape == (152064, 8192)
  assert shapes["lm_head"]["kernel"].shape == (8192, 152064)
  assert c.num_neurons == 80 * 24576
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  # 80 layers of 4 * 8192^2 + 3 * 8192 (attention) + 3 * 8192 * 24576 (MLP) + 2 * 8192 (norms),
  # plus embedding and head of 152064 * 8192 each, plus the final norm.
  by_hand = (80 * (4 * 8192 ** 2 + 3 * 8192 + 3 * 8192 * 24576 + 2 * 8192)
             + 2 * 152064 * 8192 + 8192)
  assert total == by_hand == _count_by_hand(c) == 72_287_920_128


@pytest.mark.parametrize("name", sorted(jaxskill.PRESETS))
def test_preset_shapes_match_transformers(name):
  """Every HF tensor of the preset (any family), built by transformers on torch's meta device (no
  memory) from `to_hf_dict`, has the shape the name table maps it to; the param counts agree
  with the hand count."""
  c = jaxskill.PRESETS[name]
  shapes = abstract_params(c)
  hf_config = transformers.AutoConfig.for_model(
      c.model_type, **{k: v for k, v in c.to_hf_dict().items() if k != "model_type"})
  with torch.device("meta"):
    hf = transformers.AutoModelForCausalLM.from_config(hf_config)
  assert type(hf).__name__ == jaxskill.FAMILIES[c.model_type]
  hf_shapes = {k: tuple(v.shape) for k, v in hf.state_dict().items()}
  if c.tie_word_embeddings:
    hf_shapes.pop("lm_head.weight", None)
  top, layer = name_table(c)
  mapped = {}
  for hf_name, (path, transpose) in top.items():
    leaf = shapes
    for key in path.split("/"):
      leaf = leaf[key]
    mapped[hf_name] = leaf.shape[::-1] if transpose else leaf.shape
  for template, (path, transpose) in layer.items():
    leaf = shapes["layers"]
    for key in path.split("/"):
      leaf = leaf[key]
    assert leaf.shape[0] == c.num_hidden_layers
    for i in range(c.num_hidden_layers):
      mapped[template.format(i=i)] = leaf.shape[1:][::-1] if transpose else leaf.shape[1:]
  assert mapped == hf_shapes
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert total == _count_by_hand(c) == sum(p.numel() for p in hf.parameters())


def test_published_qwen15_config_parses_to_preset():
  """The fields of the published Qwen1.5-0.5B config.json (transformers 4.37 era) all parse."""
  d = {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
       "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 1024,
       "initializer_range": 0.02, "intermediate_size": 2816, "max_position_embeddings": 32768,
       "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 16,
       "num_hidden_layers": 24, "num_key_value_heads": 16, "rms_norm_eps": 1e-06,
       "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": True,
       "torch_dtype": "bfloat16", "transformers_version": "4.37.0", "use_cache": True,
       "use_sliding_window": False, "vocab_size": 151936}
  config = jaxskill.Architecture.from_hf_dict(d)
  preset = jaxskill.PRESETS["qwen1.5-0.5b"]
  for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
                "tie_word_embeddings"):
    assert getattr(config, field) == getattr(preset, field), field
  assert config.num_neurons == 24 * 2816


def test_malformed_safetensors_header_is_refused(tmp_path):
  path = tmp_path / "bad.safetensors"
  for header in (b'{"w": {"dtype": "F32", "shape": [1]}}', b'[1, 2]'):
    blob = header + b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + b"\0" * 8)
    with pytest.raises(CheckpointError, match=str(path)):
      read_safetensors(path)


def test_directory_without_tokenizer_files_is_refused(hf_checkpoint):
  _, path = hf_checkpoint(**UNTIED)
  with pytest.raises(CheckpointError, match="no tokenizer files"):
    jaxskill.load_tokenizer(path)


# --- 7. resumable stage checkpoints (jaxskill.runtime.checkpoints) --------------------------------

def _stage_state(kind, step):
  """A training state (device arrays, async saves) or discovery's host statistics state."""
  if kind == "train":
    return {"prompt": {"embeddings": jnp.full((2, 3), float(step))}, "step": jnp.int32(step)}
  return {"stats": {"sum_x": np.full((2, 3), float(step))}, "next_batch": np.int64(step)}


def _stage_target(kind):
  from jaxskill.runtime import checkpoints as checkpointing
  state = _stage_state(kind, 0)
  if kind == "train":
    return checkpointing.abstract_like(state)
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype), state)


def _stage_manager(directory, kind):
  from jaxskill.runtime import checkpoints as checkpointing
  return checkpointing.manager(directory, max_to_keep=3, async_save=kind == "train")


def _truncate_every_file(directory):
  for f in directory.rglob("*"):
    if f.is_file():
      f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


STEP_DAMAGE = {  # what a process killed while orbax wrote step 150 can leave
    "empty": lambda d: (d / "150").mkdir(),
    "empty_item": lambda d: (d / "150" / "default").mkdir(parents=True),
    "metadata_only": lambda d: (shutil.copytree(d / "100", d / "150"),
                                shutil.rmtree(d / "150" / "default")),
    "truncated": lambda d: (shutil.copytree(d / "100", d / "150"),
                            _truncate_every_file(d / "150")),
}


@pytest.mark.parametrize("kind", ["train", "find"])
@pytest.mark.parametrize("damage", sorted(STEP_DAMAGE))
def test_damaged_newest_step_does_not_block_resume(tmp_path, kind, damage):
  from jaxskill.runtime import checkpoints as checkpointing
  directory = tmp_path / ("checkpoints" if kind == "train" else "find_checkpoints")
  mngr = _stage_manager(directory, kind)
  for step in (50, 100):
    checkpointing.save(mngr, step, _stage_state(kind, step))
  mngr.wait_until_finished()
  mngr.close()
  STEP_DAMAGE[damage](directory)

  mngr = _stage_manager(directory, kind)
  step, state = checkpointing.restore_latest(mngr, _stage_target(kind))
  assert step == 100
  want = _stage_state(kind, 100)
  assert jax.tree.structure(state) == jax.tree.structure(want)
  for got, expected in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  assert not (directory / "150").exists()  # out of the way: step 150 can be saved again
  checkpointing.save(mngr, 150, _stage_state(kind, 150))
  mngr.wait_until_finished()
  mngr.close()
  step, _ = checkpointing.restore_latest(_stage_manager(directory, kind), _stage_target(kind))
  assert step == 150


def test_only_an_empty_step_starts_from_zero(tmp_path):
  """A run killed while creating its first checkpoint has nothing to lose: no refusal."""
  from jaxskill.runtime import checkpoints as checkpointing
  (tmp_path / "ck" / "50" / "default").mkdir(parents=True)
  mngr = _stage_manager(tmp_path / "ck", "find")
  assert checkpointing.restore_latest(mngr, _stage_target("find")) is None
  assert checkpointing.restore_latest(_stage_manager(tmp_path / "ck", "find"),
                                      _stage_target("find")) is None
