"""Streaming Pearson r against numpy's float64 corrcoef, on 1, 2 and 8 (fake CPU) devices."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxskill.stats import correlator as stats

HERE = Path(__file__).resolve().parent
EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7, twice float32's unit roundoff u


def r_rounding_bound(rows, merges):
  """Worst-case |r - exact r| of `stats` on given float32 inputs, whatever the summation order.

  Each centred sum of a batch adds `rows` products: relative error <= rows * u of the sum of
  their magnitudes (any order); shifting by the reference row, centring, the products and the
  mean correction add ~8 roundings of values within a few standard deviations (16 u); each
  float32 Chan merge on the device adds <= 4 roundings; host merges and `finalize` are float64.
  By Cauchy-Schwarz, |sum dx dy| <= sqrt(m2_x m2_y), so with rho the sums' relative error,
  |dr| <= rho + |r| rho <= 2 rho = (rows + 4 merges + 16) * EPS32."""
  return (rows + 4 * merges + 16) * EPS32


def reference_r(x, y):
  """numpy float64 corrcoef per (metric, feature), dropping NaN metric values."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  r = np.full((y.shape[1], x.shape[1]), np.nan)
  for j in range(y.shape[1]):
    keep = ~np.isnan(y[:, j])
    for i in range(x.shape[1]):
      if np.ptp(x[keep, i]) > 0 and np.ptp(y[keep, j]) > 0:
        r[j, i] = np.corrcoef(x[keep, i], y[keep, j])[0, 1]
  return r


def make_data(seed, n=101, f=12, m=3, mean=0.0, spread=1.0):
  rng = np.random.default_rng(seed)
  y = rng.standard_normal((n, m))
  x = rng.standard_normal((n, f))
  x[:, 0] += 2 * y[:, 0]  # a strongly correlated feature
  x[:, 1] -= 0.5 * y[:, 1]
  x = (mean + spread * x).astype(np.float32)
  y = y.astype(np.float32)
  y[[3, 50], 2] = np.nan  # missing metric values
  return x, y


def test_single_device_plain_and_ill_conditioned():
  for mean, spread in ((0.0, 1.0), (1e4, 1e-2)):
    x, y = make_data(0, mean=mean, spread=spread)
    c = stats.Correlator(y.shape[1], x.shape[1])
    for start in range(0, len(x), 10):  # 101 rows: the last batch has one row
      c.update(x[start:start + 10], y[start:start + 10], np.ones(len(x[start:start + 10])))
    # r_rounding_bound(10, 0) = 3.1e-6 (measured 2e-8)
    np.testing.assert_allclose(c.result(), reference_r(x, y), atol=1e-5, rtol=0)
    assert list(c.stats["n"]) == [101, 101, 99]


def test_float32_device_accumulation_between_host_merges():
  """How discovery streams: batches merged on the device in float32, 16 at a time, then into
  the host's float64 state (31 batches: one full group, one partial)."""
  import jax
  for mean, spread in ((0.0, 1.0), (1e4, 1e-2)):
    x, y = make_data(1, n=301, mean=mean, spread=spread)
    ref = jax.device_get(jax.jit(stats.reference)(x[:10], y[:10], np.ones(10)))
    step = jax.jit(lambda acc, x, y, v: stats.accumulate(acc, stats.batch_stats(x, y, v, *ref)))
    host, acc = stats.init(y.shape[1], x.shape[1]), stats.zeros(y.shape[1], x.shape[1])
    for i, start in enumerate(range(0, len(x), 10)):
      acc = step(acc, x[start:start + 10], y[start:start + 10], np.ones(len(x[start:start + 10])))
      if (i + 1) % 16 == 0:
        host, acc = stats.merge(host, jax.device_get(acc)), stats.zeros(y.shape[1], x.shape[1])
    host = stats.merge(host, jax.device_get(acc))
    # 16 batches of 10 per device group, 15 float32 merges (the first is into zeros: exact)
    np.testing.assert_allclose(stats.finalize(host), reference_r(x, y),
                               atol=r_rounding_bound(10, 15), rtol=0)
    assert list(host["n"]) == [301, 301, 299]


def test_permuted_copies_keep_only_their_co_moment():
  """The null's compact form: P permuted copies of each metric (NaN rows included) streamed as
  discovery streams them (device float32 groups, host float64 merges, in place) give the r of
  each copy against numpy's float64 corrcoef of that copy, within the bound of the real r."""
  import jax
  from jaxskill.stats import significance
  x, y = make_data(2, n=157)
  valid = np.ones(len(x), np.float32)
  batches = [slice(s, s + 10) for s in range(0, len(x), 10)]
  copies = [np.asarray(significance.permuted_metrics(y[b], valid[b], jax.random.PRNGKey(i), 5))
            for i, b in enumerate(batches)]
  ref = jax.device_get(jax.jit(stats.reference)(x[:10], y[:10], valid[:10]))
  step = jax.jit(lambda acc, x, y, v, yn: stats.accumulate(
      acc, stats.batch_stats(x, y, v, *ref, y_null=yn)))
  m, f = y.shape[1], x.shape[1]
  host, acc = stats.init(m, f, 5), stats.zeros(m, f, permutations=5)
  scratch = np.empty((2, m, f))
  for i, b in enumerate(batches):
    acc = step(acc, x[b], y[b], valid[b], copies[i])
    if (i + 1) % 4 == 0 or i + 1 == len(batches):
      host, acc = stats.merge_into(host, jax.device_get(acc), scratch), stats.zeros(
          m, f, permutations=5)
  y_null = np.concatenate(copies)  # [n, P, m]
  bound = r_rounding_bound(10, 3)
  np.testing.assert_allclose(stats.finalize(host), reference_r(x, y), atol=bound, rtol=0)
  null_r = stats.finalize_null(host)
  assert null_r.shape == (5, m, f) and null_r.dtype == np.float32
  for p in range(5):
    # float32 output: one more rounding of |r| <= 1
    np.testing.assert_allclose(null_r[p], reference_r(x, y_null[:, p]), atol=bound + EPS32,
                               rtol=0, err_msg=f"copy {p}")
  assert not np.allclose(null_r[0], null_r[1])  # the copies differ
  # The pure merge carries the copies the same way.
  pure = stats.merge(stats.init(m, f, 5), host)
  np.testing.assert_allclose(pure["c_null"], host["c_null"], rtol=0, atol=0)


def test_in_place_merge_equals_the_pure_merge():
  rng = np.random.default_rng(0)
  parts = []
  for n in (0, 5, 7, 1):  # an empty start, then batches of different sizes
    x, y = rng.standard_normal((n, 9)).astype(np.float32), rng.standard_normal((n, 2))
    y = y.astype(np.float32)
    parts.append(jax_free_batch_stats(x, y) if n else stats.init(2, 9))
  pure, in_place = stats.init(2, 9), stats.init(2, 9)
  scratch = np.empty((2, 2, 9))
  for b in parts:
    pure = stats.merge(pure, b)
    out = stats.merge_into(in_place, b, scratch)
    assert out is in_place
  # The same float64 formulas, some terms added in another order: a few eps64 (2.2e-16) of
  # values below ~20 (measured 9e-16).
  for k in pure:
    np.testing.assert_allclose(in_place[k], pure[k], rtol=1e-12, atol=1e-12, err_msg=k)


def jax_free_batch_stats(x, y):
  """A batch's centred statistics in numpy float64 (the shape batch_stats returns)."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  mx, my = x.mean(0), y.mean(0)
  n = np.full(y.shape[1], float(len(x)))
  return {"n": n, "mean_x": np.tile(mx, (y.shape[1], 1)), "mean_y": my,
          "m2_x": np.tile(((x - mx) ** 2).sum(0), (y.shape[1], 1)),
          "m2_y": ((y - my) ** 2).sum(0), "c_xy": (y - my).T @ (x - mx)}


def test_naive_formula_would_fail_on_ill_conditioned_data():
  """Guards the test above: float32 raw moments lose r completely on this data."""
  x, y = make_data(0, mean=1e4, spread=1e-2)
  x32, y32 = x[:, 0], y[:, 0]
  n = np.float32(len(x32))
  sxx = (x32 * x32).sum(dtype=np.float32) - x32.sum(dtype=np.float32) ** 2 / n
  sxy = (x32 * y32).sum(dtype=np.float32) - x32.sum(dtype=np.float32) * y32.sum(dtype=np.float32) / n
  syy = (y32 * y32).sum(dtype=np.float32) - y32.sum(dtype=np.float32) ** 2 / n
  naive = sxy / np.sqrt(abs(sxx) * syy)
  # sum(x^2) ~ 1e10 is held to float32's spacing there (~1e3); sxx itself is ~1e-2.
  assert not abs(naive - reference_r(x, y)[0, 0]) < 1e-2


def test_constant_feature_or_metric_is_nan():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((40, 4)).astype(np.float32)
  x[:, 2] = 3.25  # a constant neuron
  y = rng.standard_normal((40, 2)).astype(np.float32)
  y[:, 1] = -1.0  # a constant metric
  c = stats.Correlator(2, 4)
  c.update(x[:25], y[:25], np.ones(25))
  c.update(x[25:], y[25:], np.ones(15))
  r = c.result()
  assert np.isnan(r[:, 2]).all() and np.isnan(r[1]).all()
  assert np.isfinite(r[0, [0, 1, 3]]).all()
  np.testing.assert_allclose(r[0, [0, 1, 3]], reference_r(x, y)[0, [0, 1, 3]],
                             atol=r_rounding_bound(25, 0), rtol=0)  # 4.9e-6 (measured 2.6e-8)


def test_all_nan_metric_is_nan_with_zero_count():
  x = np.random.default_rng(2).standard_normal((20, 3)).astype(np.float32)
  y = np.full((20, 1), np.nan, np.float32)
  c = stats.Correlator(1, 3)
  c.update(x, y, np.ones(20))
  assert np.isnan(c.result()).all() and c.stats["n"][0] == 0


@pytest.mark.slow  # a subprocess with 8 fake devices
def test_one_two_and_eight_devices(tmp_path):
  plain_x, plain_y = make_data(3, n=203)
  ill_x, ill_y = make_data(4, n=203, mean=1e4, spread=1e-2)
  src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
  np.savez(src, plain_x=plain_x, plain_y=plain_y, ill_x=ill_x, ill_y=ill_y)
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, str(HERE / "stats_on_devices.py"), str(src), str(dst)],
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = np.load(dst)
  for name, x, y in (("plain", plain_x, plain_y), ("ill", ill_x, ill_y)):
    want = reference_r(x, y)
    for k in (1, 2, 8):  # batches of 16 rows over k devices, summed by psum: still 16 terms
      # r_rounding_bound(16, 0) = 3.8e-6 (measured 1.7e-8)
      np.testing.assert_allclose(out[f"{name}_{k}"], want, atol=1e-5, rtol=0,
                                 err_msg=f"{name} data on {k} devices")
      assert list(out[f"{name}_n_{k}"]) == [203, 203, 201]  # pad rows and NaNs not counted
