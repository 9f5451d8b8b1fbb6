"""HF checkpoints (Qwen1.5/2/2.5, Qwen3, Llama, Mistral) <-> jaxskill params, without torch.

One explicit table maps HF tensor names to param paths; every tensor is checked against the shape
the model expects (from `jax.eval_shape`), every expected tensor must be found, and every tensor
found must be expected. Errors name the file, the tensor and the value.

Safetensors files are read through `np.memmap` (a tensor is only read when it is converted) and
written by the `safetensors` library.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import safetensors.numpy

from jaxskill.model.architecture import Architecture
from jaxskill.model.modules import CausalLM
from jaxskill.runtime.files import atomic_write

log = logging.getLogger("jaxskill.checkpoint")


class CheckpointError(ValueError):
  """A checkpoint directory that cannot be loaded; the message names the file and tensor."""


_ST_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}

# The small checkpoint shipped with the package; "demo" names it wherever a model path is asked.
DEMO_MODEL = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
# The dtypes a model is read in, by the names configs and the command line use.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "generation_config.json",
                   "chat_template.jinja")


# --- safetensors ----------------------------------------------------------------------------

def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
  """name -> read-only memory-mapped array (nothing is read from disk until used)."""
  path = Path(path)
  header, base = _read_safetensors_header(path)
  size = path.stat().st_size
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if not (isinstance(info, dict) and {"dtype", "shape", "data_offsets"} <= set(info)):
      raise CheckpointError(f"{path}: tensor '{name}' header entry {info!r} lacks dtype, shape "
                            "or data_offsets")
    dtype = _ST_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
      raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']!r}")
    shape, offsets = info["shape"], info["data_offsets"]
    if not (_int_list(shape) and _int_list(offsets) and len(offsets) == 2
            and 0 <= offsets[0] <= offsets[1]):
      raise CheckpointError(f"{path}: tensor '{name}' has a malformed shape {shape!r} or "
                            f"data_offsets {offsets!r} (file damaged?)")
    begin, end = offsets
    if end - begin != int(np.prod(shape)) * dtype.itemsize or base + end > size:
      raise CheckpointError(f"{path}: tensor '{name}' {info['dtype']}{list(shape)} has "
                            f"inconsistent offsets {offsets} (file truncated?)")
    out[name] = np.memmap(path, dtype=dtype, mode="r", offset=base + begin, shape=tuple(shape))
  return out


def _read_safetensors_header(path: Path) -> tuple[dict, int]:
  """The parsed JSON header of a safetensors file and the offset its data section starts at."""
  try:
    size = path.stat().st_size
    with open(path, "rb") as f:
      raw = f.read(8)
      if len(raw) < 8:
        raise CheckpointError(f"{path}: truncated safetensors file (no header)")
      (n,) = struct.unpack("<Q", raw)
      if 8 + n > size:  # checked first: a damaged length must not make us allocate terabytes
        raise CheckpointError(f"{path}: not a safetensors file (header length {n} exceeds the "
                              f"file size {size}; truncated or damaged?)")
      header = json.loads(f.read(n))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"{path}: not a safetensors file ({type(e).__name__})") from None
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read ({e.strerror or e})") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: safetensors header is not a JSON object")
  return header, 8 + n


def _int_list(value) -> bool:
  return isinstance(value, list) and all(
      isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray]) -> None:
  """Writes name -> array (any shape, a dtype of `_ST_DTYPES`) as one safetensors file."""
  arrays = {name: np.ascontiguousarray(array) for name, array in tensors.items()}
  for name, array in arrays.items():
    if array.dtype not in _ST_NAMES:
      raise TypeError(f"cannot write tensor '{name}' of dtype {array.dtype} to safetensors")
  # A reader never sees a half-written file.
  atomic_write(path, lambda tmp: safetensors.numpy.save_file(
      arrays, tmp, metadata={"format": "pt"}), "path")


def _hf_tensors(hf_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, Path]]:
  """All tensors of a single-file or sharded (index.json) safetensors checkpoint, and the file
  each one came from (for error messages)."""
  single, index = hf_dir / "model.safetensors", hf_dir / "model.safetensors.index.json"
  if index.exists():
    try:
      weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index}: no valid 'weight_map' ({e})") from None
    if not (isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())):
      raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names, "
                            f"got {json.dumps(weight_map)[:80]}")
    tensors: dict[str, np.ndarray] = {}
    for shard in sorted(set(weight_map.values())):
      if not (hf_dir / shard).exists():
        raise CheckpointError(f"{index}: shard '{shard}' is listed but missing from {hf_dir}")
      for name, array in read_safetensors(hf_dir / shard).items():
        if weight_map.get(name) != shard:
          raise CheckpointError(f"{hf_dir / shard}: tensor '{name}' is not listed for this shard "
                                f"in {index.name}")
        tensors[name] = array
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise CheckpointError(f"{index}: tensor(s) {missing[:5]} listed but not found in the shards")
    return tensors, {name: hf_dir / weight_map[name] for name in tensors}
  if single.exists():
    tensors = read_safetensors(single)
    return tensors, dict.fromkeys(tensors, single)
  if list(hf_dir.glob("*.bin")) or list(hf_dir.glob("*.pt")):
    raise CheckpointError(f"{hf_dir}: only PyTorch pickle weights found; jaxskill reads "
                          "safetensors (re-save with save_pretrained(safe_serialization=True))")
  raise CheckpointError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")


# --- the name table -------------------------------------------------------------------------

# HF name (with {i} for the layer) -> (param path, transpose). Dense kernels are `[in, out]`,
# torch Linear weights `[out, in]`. The table of every family; a config's own tensors are the
# entries whose param it has (`name_table`).
_LAYER_TABLE = {
    "model.layers.{i}.input_layernorm.weight": ("input_layernorm/weight", False),
    "model.layers.{i}.post_attention_layernorm.weight": ("post_attention_layernorm/weight", False),
    "model.layers.{i}.self_attn.q_proj.weight": ("self_attn/q_proj/kernel", True),
    "model.layers.{i}.self_attn.q_proj.bias": ("self_attn/q_proj/bias", False),
    "model.layers.{i}.self_attn.k_proj.weight": ("self_attn/k_proj/kernel", True),
    "model.layers.{i}.self_attn.k_proj.bias": ("self_attn/k_proj/bias", False),
    "model.layers.{i}.self_attn.v_proj.weight": ("self_attn/v_proj/kernel", True),
    "model.layers.{i}.self_attn.v_proj.bias": ("self_attn/v_proj/bias", False),
    "model.layers.{i}.self_attn.o_proj.weight": ("self_attn/o_proj/kernel", True),
    "model.layers.{i}.self_attn.o_proj.bias": ("self_attn/o_proj/bias", False),
    "model.layers.{i}.self_attn.q_norm.weight": ("self_attn/q_norm/weight", False),
    "model.layers.{i}.self_attn.k_norm.weight": ("self_attn/k_norm/weight", False),
    "model.layers.{i}.mlp.gate_proj.weight": ("mlp/gate_proj/kernel", True),
    "model.layers.{i}.mlp.up_proj.weight": ("mlp/up_proj/kernel", True),
    "model.layers.{i}.mlp.down_proj.weight": ("mlp/down_proj/kernel", True),
}
_TOP_TABLE = {
    "model.embed_tokens.weight": ("embed_tokens/embedding", False),
    "model.norm.weight": ("norm/weight", False),
    "lm_head.weight": ("lm_head/kernel", True),
}


def name_table(config: Architecture, expected: dict | None = None) -> tuple[dict, dict]:
  """(top-level, per-layer) HF name -> (param path, transpose) for the tensors `config`'s model
  has: the q/k/v and o_proj biases, q/k norms and LM head only where its family has them.
  `expected`: the config's `abstract_params`, when the caller has them already (a trace)."""
  expected = abstract_params(config) if expected is None else expected
  top = {k: v for k, v in _TOP_TABLE.items() if _has(expected, v[0])}
  layer = {k: v for k, v in _LAYER_TABLE.items() if _has(expected["layers"], v[0])}
  return top, layer


def _has(tree: dict, path: str) -> bool:
  for key in path.split("/"):
    if key not in tree:
      return False
    tree = tree[key]
  return True


def abstract_params(config: Architecture, dtype=jnp.float32) -> dict:
  """The param tree as ShapeDtypeStructs of `dtype` (layer params stacked `[l, ...]`); no memory
  is allocated."""
  model = CausalLM(config, dtype=dtype, param_dtype=dtype)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 1), jnp.int32))
  return shapes["params"]


def _get(tree: dict, path: str):
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _set(tree: dict, path: str, value) -> None:
  *parents, last = path.split("/")
  for key in parents:
    tree = tree.setdefault(key, {})
  tree[last] = value


class LazyParam:
  """One param of the jaxskill tree, backed by memory-mapped HF tensors: `read(index)` reads
  only that slice (a tuple of slices, as `jax.make_array_from_callback` asks), so a device that
  holds a shard of a param pulls just its shard from disk."""

  def __init__(self, shape: tuple[int, ...], dtype, read):
    self.shape, self.dtype, self._read = tuple(shape), np.dtype(dtype), read

  def read(self, index=None) -> np.ndarray:
    """The param's `index` slice (None: all of it), of `self.dtype`; missing trailing slices
    mean the whole axis."""
    index = tuple(index) if index is not None else ()
    index += (slice(None),) * (len(self.shape) - len(index))
    return self._read(index)


def lazy_params_from_hf(hf_dir: str | Path, config: Architecture, dtype=jnp.float32) -> dict:
  """Validates the HF tensors of `hf_dir` (names, shapes) and returns the jaxskill param tree
  with `LazyParam` leaves; nothing but the headers is read yet.

  Leaves have the model's shapes (e.g. `embed_tokens/embedding` `[v, h]`, layer params stacked
  `[l, ...]` such as `layers/mlp/up_proj/kernel` `[l, h, i]`) and read as `dtype`.
  """
  hf_dir = Path(hf_dir)
  tensors, files = _hf_tensors(hf_dir)
  expected = abstract_params(config, dtype)
  np_dtype = np.dtype(dtype)
  L = config.num_hidden_layers
  top, layer = name_table(config, expected)
  _check_names(tensors, files, config, layer)
  stored = sorted({str(t.dtype) for t in tensors.values()} - {str(np_dtype)})
  if stored:
    log.info("%s: weights stored as %s are read as %s", hf_dir, ", ".join(stored), np_dtype)
  params: dict = {}
  for hf_name, (path, transpose) in top.items():
    view = _view(hf_dir, tensors, files, hf_name, transpose, _get(expected, path).shape)
    _set(params, path, _lazy(view, np_dtype))
  for template, (path, transpose) in layer.items():
    want = _get(expected, "layers/" + path).shape[1:]
    views = [_view(hf_dir, tensors, files, template.format(i=i), transpose, want)
             for i in range(L)]
    _set(params, "layers/" + path, _lazy_stacked(views, want, np_dtype))
  return params


def _where(files: dict[str, Path], name: str) -> str:
  """The "file: tensor 'name'" start of an error about one tensor."""
  return f"{files[name]}: tensor '{name}'"


def _check_names(tensors: dict[str, np.ndarray], files: dict[str, Path], config: Architecture,
                 layer: dict) -> None:
  """Raises for a tensor that is not in the config's `layer` table (or the top-level one), or
  is for a layer past num_hidden_layers."""
  layer_re = re.compile(r"model\.layers\.(\d+)\.(.+)")
  family, num_layers = config.model_type, config.num_hidden_layers
  for name in tensors:
    if name.endswith(".rotary_emb.inv_freq"):  # a buffer that old exports persisted
      continue
    m = layer_re.fullmatch(name)
    if m:
      key = f"model.layers.{{i}}.{m.group(2)}"
      if key in _LAYER_TABLE and key not in layer:
        raise CheckpointError(f"{_where(files, name)} is not part of this config's {family} "
                              "layer (a bias or norm its config.json turns off)")
      if key not in layer:
        raise CheckpointError(f"{_where(files, name)} is not part of a {family} layer "
                              "(unknown name)")
      if int(m.group(1)) >= num_layers:
        raise CheckpointError(f"{_where(files, name)} is for layer {m.group(1)} but config "
                              f"num_hidden_layers={num_layers}")
    elif name not in _TOP_TABLE:
      raise CheckpointError(f"{_where(files, name)} is unexpected for a {family} model")


def _view(hf_dir: Path, tensors: dict[str, np.ndarray], files: dict[str, Path], name: str,
          transpose: bool, want_shape: tuple[int, ...]) -> np.ndarray:
  """Tensor `name` as a (possibly transposed) view, after checking it exists and its shape."""
  if name not in tensors:
    hint = (" (config says tie_word_embeddings=false; is the checkpoint tied?)"
            if name == "lm_head.weight" else "")
    raise CheckpointError(f"{hf_dir}: missing tensor '{name}'{hint}")
  array = tensors[name]
  if not np.issubdtype(array.dtype, np.floating) and array.dtype != _ST_DTYPES["BF16"]:
    # A cast would make weights of integers: zeros for a quantized int8 or int4-packed tensor.
    raise CheckpointError(f"{_where(files, name)} is {array.dtype}, not a float: a quantized "
                          "or broken checkpoint; jaxskill reads float32, bfloat16 or float16 "
                          "weights (dequantize first, e.g. transformers' from_pretrained, then "
                          "save_pretrained)")
  shape = array.shape[::-1] if transpose else array.shape
  if tuple(shape) != tuple(want_shape):
    hf_shape = tuple(want_shape[::-1]) if transpose else tuple(want_shape)
    raise CheckpointError(f"{_where(files, name)} has shape {list(array.shape)}, the config asks "
                          f"for {list(hf_shape)}")
  return array.T if transpose else array


def _lazy(view: np.ndarray, np_dtype: np.dtype) -> LazyParam:
  """A LazyParam that reads slices of one memory-mapped view, cast to `np_dtype`."""
  return LazyParam(view.shape, np_dtype, lambda idx: np.asarray(view[idx]).astype(np_dtype))


def _lazy_stacked(views: list[np.ndarray], want: tuple[int, ...],
                  np_dtype: np.dtype) -> LazyParam:
  """A LazyParam `[l, *want]` that reads the asked slice of each asked layer's view."""
  def read(idx):
    """idx[0] picks the layers, idx[1:] slices each of them; stacked on a leading axis."""
    return np.stack([np.asarray(view[idx[1:]]).astype(np_dtype)
                     for view in views[idx[0]]]).reshape(
                         (len(views[idx[0]]),) + _sliced_shape(views[0].shape, idx[1:]))
  return LazyParam((len(views),) + tuple(want), np_dtype, read)


def _sliced_shape(shape, idx) -> tuple[int, ...]:
  return tuple(len(range(*s.indices(n))) for s, n in zip(idx, shape))


def params_from_hf(hf_dir: str | Path, config: Architecture, dtype=jnp.float32) -> dict:
  """Reads and validates the HF tensors of `hf_dir` into the jaxskill param tree (numpy arrays
  of `dtype`, shaped as in `lazy_params_from_hf`)."""
  return jax.tree.map(lambda p: p.read(), lazy_params_from_hf(hf_dir, config, dtype))


def sharded_params_from_hf(hf_dir: str | Path, config: Architecture, shardings,
                           dtype=jnp.float32) -> dict:
  """The params straight into `shardings` (a tree of `jax.sharding.Sharding`): each device's
  shard is read from disk on its own, and a process reads only the shards of its devices; the
  whole model is never assembled on one host. Leaves are `jax.Array`s of `dtype`, shaped as in
  `lazy_params_from_hf`."""
  lazy = lazy_params_from_hf(hf_dir, config, dtype)
  return jax.tree.map(lambda p, s: jax.make_array_from_callback(p.shape, s, p.read), lazy,
                      shardings)


def params_to_hf_tensors(params: dict, config: Architecture, dtype=None) -> dict[str, np.ndarray]:
  """The inverse of `params_from_hf`: HF tensor names -> numpy arrays (torch layout).

  Stacked layer params `[l, ...]` become one tensor per layer; Dense kernels `[in, out]` become
  torch weights `[out, in]` (e.g. `lm_head.weight` `[v, h]`). `dtype`: cast to it (None: keep).
  """
  out = {}
  cast = (lambda a: np.asarray(a).astype(np.dtype(dtype))) if dtype else np.asarray
  top, layer = name_table(config)
  for hf_name, (path, transpose) in top.items():
    array = cast(_get(params, path))
    out[hf_name] = array.T if transpose else array
  for template, (path, transpose) in layer.items():
    stacked = cast(_get(params, "layers/" + path))
    for i in range(config.num_hidden_layers):
      out[template.format(i=i)] = stacked[i].T if transpose else stacked[i]
  return out


# --- directories ----------------------------------------------------------------------------

def resolve_model_dir(path: str | os.PathLike) -> Path:
  """A local directory, "demo" (the shipped model), or a hub id (`Qwen/Qwen1.5-0.5B`) already in
  the local HF cache."""
  if str(path) == "demo":
    return DEMO_MODEL
  p = Path(path).expanduser()
  if p.is_dir():
    return p
  if p.exists():
    raise CheckpointError(f"{p}: is a file; give the checkpoint directory")
  if p.is_symlink():
    try:
      p.stat()
    except OSError as e:  # a loop, or a link to nothing
      reason = ("a symbolic link loop" if e.errno == errno.ELOOP
                else f"a symbolic link to the missing {os.readlink(p)}")
      raise CheckpointError(f"{p}: {reason}; give the checkpoint directory") from None
  name = str(path)
  if re.fullmatch(r"[\w.\-]+/[\w.\-]+", name):
    try:
      from huggingface_hub import snapshot_download
      return Path(snapshot_download(name, local_files_only=True))
    except Exception as e:  # noqa: BLE001 - any cache miss becomes one clear message
      raise CheckpointError(
          f"'{name}' is not a local directory and is not in the local Hugging Face cache "
          f"({type(e).__name__}); download it where a network exists "
          f"(huggingface-cli download {name}) or pass its directory") from None
  raise CheckpointError(f"{name}: no such directory")


def is_converted(model_dir: Path) -> bool:
  """Whether `model_dir` holds a finished `save_converted` output (its marker file)."""
  return (model_dir / "jaxskill.json").exists()


def save_converted(out_dir: str | Path, params: dict, config: Architecture,
                   tokenizer_dir: str | Path | None = None) -> Path:
  """Writes params with orbax plus config and tokenizer files, for a fast reload."""
  import orbax.checkpoint as ocp
  out_dir = Path(out_dir).absolute()
  out_dir.mkdir(parents=True, exist_ok=True)
  # The marker goes first and comes back last, so an interrupted re-conversion never looks done.
  (out_dir / "jaxskill.json").unlink(missing_ok=True)
  if (out_dir / "params").exists():
    shutil.rmtree(out_dir / "params")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(out_dir / "params", jax.tree.map(jnp.asarray, params))
  (out_dir / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
  _copy_tokenizer(tokenizer_dir, out_dir)
  dtype = str(jax.tree.leaves(params)[0].dtype)
  # Written last: a directory without it is an interrupted conversion, not a converted model.
  (out_dir / "jaxskill.json").write_text(json.dumps({"format": 1, "dtype": dtype}))
  return out_dir


def load_converted(model_dir: Path, config: Architecture, dtype, shardings=None) -> dict:
  """The orbax params of a converted dir; with `shardings`, restored straight into them (orbax
  reads each shard's chunks only)."""
  import orbax.checkpoint as ocp
  target = abstract_params(config, dtype)
  if shardings is not None:
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          target, shardings)
  path = model_dir.absolute() / "params"
  if not path.is_dir():
    raise CheckpointError(f"{model_dir}: has jaxskill.json but no params/ (interrupted "
                          "conversion?); convert again")
  with ocp.StandardCheckpointer() as ckptr:
    try:
      saved = ckptr.metadata(path)
    except Exception as e:  # noqa: BLE001 - any damage inside params/ becomes one clear message
      if _out_of_resources(e):
        raise
      raise _damaged(path, e) from None
    saved = getattr(saved, "item_metadata", saved)  # orbax versions differ in the wrapper
    want = {"/".join(str(getattr(k, "key", k)) for k in kp): x.shape
            for kp, x in jax.tree_util.tree_leaves_with_path(target)}
    have = {"/".join(str(getattr(k, "key", k)) for k in kp): tuple(x.shape)
            for kp, x in jax.tree_util.tree_leaves_with_path(saved)}
    if not have:  # orbax reads a damaged _METADATA or manifest as an empty tree, not an error
      raise _damaged(path, None)
    for name in sorted(set(want) | set(have)):
      if want.get(name) != have.get(name):
        raise CheckpointError(f"{path}: param '{name}' has shape {have.get(name)}, "
                              f"{model_dir / 'config.json'} asks for {want.get(name)}")
    try:
      return ckptr.restore(path, target)
    except Exception as e:  # noqa: BLE001 - TensorStore raises bare `Exception`s
      if _out_of_resources(e):
        raise
      raise _damaged(path, e) from None


def _out_of_resources(error: BaseException | None) -> bool:
  """Whether `error` or a cause of it is host or device memory running out (or another device
  failure): a message about a damaged directory would misname those."""
  while error is not None:
    if isinstance(error, (MemoryError, jax.errors.JaxRuntimeError)):
      return True
    error = error.__cause__
  return False


def _damaged(path: Path, error: BaseException | None) -> CheckpointError:
  """The error for unreadable orbax params: the innermost explicit cause names the file and
  array that failed (TensorStore's outer message is a page of its spec)."""
  detail = "no param metadata can be read"
  while error is not None:
    detail = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:300]}"
    error = error.__cause__
  return CheckpointError(f"{path}: converted params are damaged or unreadable ({detail}); "
                         "convert the model again")


def export_hf(out_dir: str | Path, params: dict, config: Architecture,
              tokenizer_dir: str | Path | None = None, dtype=None) -> Path:
  """Writes an HF directory (`config.json`, `model.safetensors`) that transformers loads."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  tensors = params_to_hf_tensors(params, config, dtype)
  hf_config = config.to_hf_dict()
  hf_config["torch_dtype"] = str(next(iter(tensors.values())).dtype)
  write_safetensors(out_dir / "model.safetensors", tensors)
  (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2))
  _copy_tokenizer(tokenizer_dir, out_dir)
  return out_dir


def _copy_tokenizer(src: str | Path | None, dst: Path) -> None:
  if src is None or Path(src).resolve() == dst.resolve():
    return
  for name in TOKENIZER_FILES:
    if (Path(src) / name).exists():
      shutil.copy(Path(src) / name, dst / name)


def load_model(path: str | os.PathLike, dtype=jnp.float32, *, remat: bool = False,
               mesh=None, layout: str = "tensor", log_unread: bool = True):
  """`(model, params)` from an HF directory (any of `FAMILIES`), a converted one, or a cached
  hub id.

  `dtype` is both the param and the compute dtype (float32 or bfloat16). With a `mesh`, the
  params are read straight into their `layout` on it (see `jaxskill.runtime.sharding`): each device
  reads its own shard, never the whole model on one host. `log_unread`: see
  `Architecture.from_hf_dict`.
  """
  model_dir = resolve_model_dir(path)
  if not (model_dir / "config.json").exists():
    raise CheckpointError(f"{model_dir}: no config.json")
  config = Architecture.from_json_file(model_dir / "config.json", log_unread=log_unread)
  shardings = None
  if mesh is not None:
    from jaxskill.runtime.sharding import param_shardings
    shardings = param_shardings(abstract_params(config, dtype), mesh, layout)
  if is_converted(model_dir):
    params = load_converted(model_dir, config, dtype, shardings)
  elif shardings is not None:
    params = sharded_params_from_hf(model_dir, config, shardings, dtype)
  else:
    params = jax.tree.map(jnp.asarray, params_from_hf(model_dir, config, dtype))
  return CausalLM(config, dtype=dtype, param_dtype=dtype, remat=remat), params


def check_checkpoint(path: str | os.PathLike) -> Architecture:
  """The config of the checkpoint at `path`, validated without reading weights: its directory,
  config.json, tokenizer files and weight files; raises what `load_model` / `load_tokenizer`
  would, so that a run refuses it before it creates anything."""
  model_dir = resolve_model_dir(path)
  if not (model_dir / "config.json").exists():
    raise CheckpointError(f"{model_dir}: no config.json")
  config = Architecture.from_json_file(model_dir / "config.json")
  if not (is_converted(model_dir) or any(model_dir.glob("*.safetensors"))):
    raise CheckpointError(f"{model_dir}: no *.safetensors weights (nor converted params)")
  _require_tokenizer(model_dir)
  return config


def _require_tokenizer(model_dir: Path) -> None:
  # transformers builds an empty tokenizer from config.json alone; refuse that instead.
  if not ((model_dir / "tokenizer.json").exists()
          or ((model_dir / "vocab.json").exists() and (model_dir / "merges.txt").exists())):
    raise CheckpointError(f"{model_dir}: no tokenizer files (tokenizer.json, or vocab.json and "
                          "merges.txt); copy them from the original checkpoint")


def load_tokenizer(path: str | os.PathLike):
  """The `transformers.AutoTokenizer` saved beside the weights."""
  from transformers import AutoTokenizer
  model_dir = resolve_model_dir(path)
  _require_tokenizer(model_dir)
  return AutoTokenizer.from_pretrained(str(model_dir))
