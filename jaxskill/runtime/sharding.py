"""Device meshes and parameter layouts.

The mesh has a data axis (the batch is split over it) and a model axis (params are split over
it). Two layouts of the Qwen params over the model axis, chosen with `train.param_sharding`:
  tensor  Megatron-style tensor parallelism: attention heads and MLP neurons are split (q/k/v and
          gate/up by output columns, o_proj and down_proj by input rows), the embedding table
          by vocabulary rows; norms replicated.
  fsdp    every param split along its first splittable non-layer axis and gathered by XLA where
          a layer needs it (less memory for params, more communication).
A dimension that the model axis does not divide stays whole (replicated) rather than failing;
results do not depend on the layout (XLA inserts the collectives), only speed and memory do.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

LAYOUTS = ("tensor", "fsdp")

# Param name (without the "layers/" prefix) -> the axes after the stacked layer axis.
_TENSOR = {
    "embed_tokens/embedding": ("model", None),
    "self_attn/q_proj/kernel": (None, "model"), "self_attn/q_proj/bias": ("model",),
    "self_attn/k_proj/kernel": (None, "model"), "self_attn/k_proj/bias": ("model",),
    "self_attn/v_proj/kernel": (None, "model"), "self_attn/v_proj/bias": ("model",),
    "self_attn/o_proj/kernel": ("model", None),
    "mlp/gate_proj/kernel": (None, "model"), "mlp/up_proj/kernel": (None, "model"),
    "mlp/down_proj/kernel": ("model", None),
    "lm_head/kernel": (None, "model"),
}


class MeshError(ValueError):
  """The devices cannot form the mesh asked for, or the param layout is unknown."""


def make_mesh(data_parallel: int = 0, model_parallel: int = 1,
              devices: list | None = None) -> Mesh:
  """A (data, model) mesh over the first data_parallel * model_parallel devices;
  data_parallel 0 = all the devices the model axis leaves."""
  devices = jax.devices() if devices is None else devices
  if model_parallel < 1 or len(devices) % model_parallel:
    raise MeshError(f"train.model_parallel={model_parallel} does not divide the "
                    f"{len(devices)} devices")
  data = data_parallel or len(devices) // model_parallel
  if data * model_parallel > len(devices):
    raise MeshError(f"train.data_parallel={data} x train.model_parallel={model_parallel} needs "
                    f"{data * model_parallel} devices, only {len(devices)} exist")
  grid = np.asarray(devices[:data * model_parallel]).reshape(data, model_parallel)
  return Mesh(grid, ("data", "model"))


def param_specs(params, layout: str, model_size: int):
  """PartitionSpecs for the param tree (any array-like leaves with .shape)."""
  if layout not in LAYOUTS:
    raise MeshError(f"train.param_sharding must be one of {list(LAYOUTS)}, got {layout!r}")

  def spec(path, leaf):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    layered = name.startswith("layers/")
    dims = leaf.shape[1:] if layered else leaf.shape
    if model_size == 1:
      axes = (None,) * len(dims)
    elif layout == "tensor":
      axes = _TENSOR.get(name.removeprefix("layers/"), (None,) * len(dims))
    else:
      first = next((j for j, d in enumerate(dims) if d % model_size == 0 and d >= model_size),
                   None)
      axes = tuple("model" if j == first else None for j in range(len(dims)))
    axes = tuple(a if a is None or dims[j] % model_size == 0 else None
                 for j, a in enumerate(axes))
    return P(*(((None,) if layered else ()) + axes))

  return jax.tree_util.tree_map_with_path(spec, params)


def param_shardings(params, mesh: Mesh, layout: str = "tensor"):
  """NamedShardings on `mesh` for the param tree in `layout` (`param_specs`), a tree like
  `params`; everything replicated when `mesh` has no model axis."""
  model_size = mesh.shape["model"] if "model" in mesh.axis_names else 1
  return jax.tree.map(lambda s: NamedSharding(mesh, s), param_specs(params, layout, model_size),
                      is_leaf=lambda x: isinstance(x, P))


def place_params(params, mesh: Mesh, layout: str = "tensor"):
  """(params on `mesh` in `layout`, their shardings). Params already on this mesh stay where
  they are, so a caller can place them once in another layout."""
  leaves = jax.tree.leaves(params)
  if leaves and all(isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding)
                    and x.sharding.mesh == mesh for x in leaves):
    return params, jax.tree.map(lambda x: x.sharding, params)
  shardings = param_shardings(params, mesh, layout)
  return jax.device_put(params, shardings), shardings


def local_rows(mesh: Mesh, batch_size: int, axis: str = "data") -> np.ndarray:
  """The rows of a global batch of `batch_size` (split over `axis`) that this process's devices
  hold: the offsets it feeds, sorted int `[rows held]`. All of them in a single-process run."""
  sharded = NamedSharding(mesh, P(axis))
  slices = [idx[0] for idx in sharded.addressable_devices_indices_map((batch_size,)).values()]
  if not slices:  # none of this process's devices is in the mesh
    return np.zeros(0, np.int64)
  return np.unique(np.concatenate([np.arange(batch_size)[s] for s in slices]))


def put_local(batch, mesh: Mesh, batch_size: int, axis: str = "data"):
  """Global arrays split over `axis` from this process's rows of the batch (`local_rows`): every
  array leaf `[b_local, ...]` of the pytree `batch` becomes `[batch_size, ...]`."""
  sharded = NamedSharding(mesh, P(axis))
  return jax.tree.map(
      lambda v: jax.make_array_from_process_local_data(sharded, v, (batch_size, *v.shape[1:])),
      batch)


def raise_together(fn, error=ValueError):
  """`fn()`, with the processes of a multi-process run failing together: if `fn` raises
  `error` in any process (say a bad row only that process reads), every process raises it,
  with that process's message, instead of the others waiting at the next collective forever."""
  message = ""
  try:
    out = fn()
  except error as e:
    if jax.process_count() == 1:
      raise
    message, out = str(e) or type(e).__name__, None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    buf = np.zeros(2048, np.uint8)
    raw = message.encode()[:2048]
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(buf))  # [processes, 2048]
    for k, row in enumerate(every):
      if row.any():
        text = bytes(row).rstrip(b"\0").decode(errors="replace")
        raise error(text if k == jax.process_index() else f"(process {k}) {text}")
  return out


def is_writer() -> bool:
  """Multi-process runs share the run directory: process 0 alone writes its files."""
  return jax.process_index() == 0


def writer_decides(value: bool) -> bool:
  """Process 0's `value` on every process (one process: `value`): a decision taken from files
  that only process 0 reads, so that the processes cannot part ways over it."""
  if jax.process_count() == 1:
    return value
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(value)))


def barrier(name: str) -> None:
  """All processes wait here (no-op in one process): what process 0 wrote is then readable."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
