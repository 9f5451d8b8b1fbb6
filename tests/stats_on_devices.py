"""Helper for tests/test_stats.py, run in a subprocess with 8 fake CPU devices: streams the
data given in an .npz through `Correlator` on meshes of 1, 2 and 8 devices, writes r for each."""

import sys

import jax
import numpy as np
from jax.sharding import Mesh

from jaxskill.stats import correlator as stats


def stream(x, y, mesh, batch):
  c = stats.Correlator(y.shape[1], x.shape[1], mesh=mesh)
  n = x.shape[0]
  for start in range(0, n, batch):
    xb, yb = x[start:start + batch], y[start:start + batch]
    valid = np.ones(len(xb), np.float32)
    pad = batch - len(xb)  # the last batch does not divide evenly: pad rows, marked invalid
    if pad:
      xb = np.concatenate([xb, np.full((pad, x.shape[1]), 7.0, np.float32)])
      yb = np.concatenate([yb, np.full((pad, y.shape[1]), 3.0, np.float32)])
      valid = np.concatenate([valid, np.zeros(pad, np.float32)])
    c.update(xb, yb, valid)
  return c.result(), c.stats["n"]


def main(src, dst):
  data = np.load(src)
  out = {}
  for k in (1, 2, 8):
    mesh = Mesh(np.asarray(jax.devices()[:k]), ("data",))
    for name in ("plain", "ill"):
      r, n = stream(data[f"{name}_x"], data[f"{name}_y"], mesh, batch=16)
      out[f"{name}_{k}"], out[f"{name}_n_{k}"] = r, n
  np.savez(dst, **out)


if __name__ == "__main__":
  assert len(jax.devices()) == 8, jax.devices()
  main(sys.argv[1], sys.argv[2])
