"""Significance of r: analytic p-values against scipy, Benjamini-Hochberg against scipy's and a
hand-worked case, the permutation columns, calibration under random labels through discovery's
own streamed statistics, and power on the planted neuron."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

import jaxskill
from jaxskill.model import capture
from jaxskill.runtime.runner import Runner
from jaxskill.runtime.sharding import make_mesh
from jaxskill.stats import streaming
from jaxskill.stats import significance
from jaxskill.tasks import encode as data_lib
from jaxskill.tasks import arithmetic_verification


def test_p_values_match_scipy_pearsonr():
  rng = np.random.default_rng(0)
  n, f = 57, 40
  x = rng.standard_normal((n, f))
  y = 0.3 * x[:, :2].sum(1) + rng.standard_normal(n)  # some features correlated, most not
  r = np.array([np.corrcoef(x[:, j], y)[0, 1] for j in range(f)])
  got = significance.p_values(r[None], np.array([n]))[0]
  want = np.array([sps.pearsonr(x[:, j], y).pvalue for j in range(f)])
  # Both float64 from the same r (to ~1e-16): the p-values differ by |dp/dr| * 1e-16 plus each
  # special function's own ~1e-15 relative error, far below 1e-10.
  np.testing.assert_allclose(got, want, atol=1e-10, rtol=1e-10)
  assert got.min() < 1e-3 < got.max()
  # Undefined r and too few examples give NaN, r = +-1 gives 0.
  edge = significance.p_values(np.array([[np.nan, 1.0, -1.0, 0.0]]), np.array([10]))[0]
  assert np.isnan(edge[0]) and edge[1] == edge[2] == 0.0 and edge[3] == 1.0
  assert np.isnan(significance.p_values(np.array([[0.5]]), np.array([2]))).all()


def test_benjamini_hochberg_by_hand_and_against_scipy():
  # m = 5, q = 0.05: thresholds 0.01, 0.02, 0.03, 0.04, 0.05. Sorted p: 0.001, 0.012, 0.035,
  # 0.039, 0.2; the largest k with p_(k) <= k q / m is 4 (0.039 <= 0.04), so four are rejected
  # although 0.035 > 0.03 on its own.
  p = np.array([0.2, 0.035, 0.001, 0.039, 0.012])
  assert significance.fdr_reject(p, 0.05).tolist() == [False, True, True, True, True]
  rng = np.random.default_rng(1)
  p = np.concatenate([rng.uniform(size=500), rng.uniform(0, 1e-3, 30)]).reshape(53, 10)
  p[3, 4] = np.nan  # not a hypothesis: left out of m
  got = significance.fdr_reject(p, 0.05)
  adjusted = sps.false_discovery_control(p[np.isfinite(p)])
  assert got[np.isfinite(p)].tolist() == (adjusted <= 0.05).tolist()
  assert not got[3, 4]


def test_permuted_metrics_shuffle_each_metric_among_its_own_rows():
  y = np.arange(18, dtype=np.float32).reshape(6, 3)  # rows 4, 5 are padding
  y[1, 2] = y[3, 2] = np.nan  # metric 2 has no value on rows 1 and 3
  valid = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
  out = np.asarray(significance.permuted_metrics(jnp.asarray(y), valid, jax.random.PRNGKey(0), 4))
  assert out.shape == (6, 4, 3)
  for p in range(4):
    copy = out[:, p]
    for j in (0, 1):  # a permutation of the real rows; padding stays
      assert sorted(copy[:4, j].tolist()) == sorted(y[:4, j].tolist())
    np.testing.assert_array_equal(copy[:, 1], copy[:, 0] + 1)  # no NaN: one draw for both
    assert np.isnan(copy[[1, 3], 2]).all()  # the rows without a value stay without
    assert sorted(copy[[0, 2], 2].tolist()) == [2.0, 8.0]
    np.testing.assert_array_equal(copy[4:], y[4:])
  assert len({tuple(out[:4, p, 0]) for p in range(4)}) > 1  # the copies differ
  again = significance.permuted_metrics(jnp.asarray(y), valid, jax.random.PRNGKey(0), 4)
  np.testing.assert_array_equal(out, np.asarray(again))
  assert significance.permuted_metrics(jnp.asarray(y), valid, jax.random.PRNGKey(0),
                                       0).shape == (6, 0, 3)


@pytest.fixture(scope="module")
def random_labels():
  """Discovery's r and n on the demo model for 20 random-label metadata columns (one pass),
  with 20 permutations."""
  model, params = jaxskill.load_model("demo")
  tok = jaxskill.load_tokenizer("demo")
  task = arithmetic_verification(operations=("plus",), digits=(2,), n_train=320, n_dev=0,
                                 n_test=0, seed=0)
  encoded = data_lib.encode(task, "train", tok, data_lib.Layout(4, "infix", 40))
  rng = np.random.default_rng(7)
  meta = {f"rand{s}": rng.integers(0, 2, len(encoded)).astype(np.float64) for s in range(20)}
  encoded = dataclasses.replace(encoded, metadata=meta)
  names = tuple(f"meta_rand{s}" for s in range(20))
  probe = capture.Probe(model, "classification",
                        jnp.asarray(data_lib.verbalizer_ids(tok, task.verbalizer)),
                        ("last_input", "answer"), 4, names)
  prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0),
                                                    (4, model.config.hidden_size))}
  r, st = streaming.correlate(probe, params, prompt, encoded, runner=Runner(make_mesh(1), 32),
                              streaming=streaming.Streaming(permutations=20))
  return r, st, len(encoded)


def test_random_labels_are_calibrated(random_labels):
  """Under a global null BH makes any discovery with probability <= q, so at q = 0.05 about 1
  of 20 seeds; p < 0.05 holds for 5% of features in expectation (features are correlated, so
  this is judged as the mean over the 20 seeds)."""
  r, st, n = random_labels
  p = significance.p_values(r, st["n"][:20])
  any_discovery = [bool(significance.fdr_reject(p[s], 0.05).any()) for s in range(20)]
  fractions = [float(np.nanmean(p[s] < 0.05)) for s in range(20)]
  assert sum(any_discovery) <= 3, any_discovery
  assert 0.03 <= np.mean(fractions) <= 0.07, fractions
  assert (st["n"][:20] == n).all()


def test_permutation_null_agrees_with_the_analytic_one(random_labels):
  """The null max |r| over f features from permutations is near the analytic level that
  Bonferroni over f independent features would give; the permuted copies have the metric's
  own counts."""
  r, st, n = random_labels
  null_r = st["null_r"]
  assert null_r.shape == (20, 20, *r.shape[1:])
  s = significance.null_summary(r[0], null_r[:, 0], significance.p_values(r, st["n"][:20])[0],
                                q=0.05, thresholds=(0.1, 0.5))
  f = np.isfinite(r[0]).sum()
  # |r| whose two-sided p is 0.05 / f (Bonferroni): correlated features give a lower max.
  t = sps.t.isf(0.025 / f, n - 2)
  bonferroni = t / np.sqrt(n - 2 + t * t)
  assert 0.5 * bonferroni < s["null_max_abs_r_95"] <= 1.05 * bonferroni
  assert s["significant_fwer"] <= 1
  # Expected count above 0.1 under the null: f * P(|r| > 0.1) for n examples (independent
  # features would give exactly that mean; correlation changes the spread, not the mean).
  expect = f * 2 * sps.t.sf(0.1 * np.sqrt((n - 2) / (1 - 0.01)), n - 2)
  assert 0.5 * expect < s["threshold_counts"]["0.1"]["null_expected"] < 1.5 * expect


def test_empirical_p_and_verdict_by_hand():
  # top drop 0.1 against random drops 0.0, 0.2, 0.1: two are >= 0.1, so (1 + 2) / (3 + 1).
  assert significance.empirical_p(0.1, np.array([0.0, 0.2, 0.1])) == 0.75
  assert significance.empirical_p(0.5, np.zeros(19)) == 0.05  # the smallest p of 19 draws
  assert significance.verdict(0.05, [0.01, 0.2], 19) == "matters"
  assert significance.verdict(0.05, [-0.01, 0.2], 19) == "not shown"
  assert significance.verdict(0.1, [0.01, 0.2], 19) == "not shown"
  assert significance.verdict(1 / 6, [0.01, 0.2], 5).startswith("undecided")


def test_bootstrap_intervals():
  n = 400
  base = np.ones(n)
  sure = significance.bootstrap_drops(base, np.zeros(n), np.ones((3, n)), seed=0)
  assert sure["top_drop_95"] == [1.0, 1.0] and sure["random_drop_95"] == [0.0, 0.0]
  assert sure["difference_95"] == [1.0, 1.0]
  # Per-example drops d = 1 - top, top ~ Bernoulli(0.7): the 95% interval of the mean drop is
  # about +-1.96 sd(d) / sqrt(n) around it; 1000 resamples estimate the 2.5% and 97.5% points to
  # a few percent of that width, so 20% is a loose bound that a wrong resampling would break.
  rng = np.random.default_rng(3)
  top = (rng.uniform(size=n) < 0.7).astype(float)
  randoms = (rng.uniform(size=(4, n)) < 0.95).astype(float)
  out = significance.bootstrap_drops(base, top, randoms, seed=1)
  lo, hi = out["top_drop_95"]
  observed = 1 - top.mean()
  half = 1.96 * (1 - top).std() / np.sqrt(n)
  assert lo < observed < hi
  assert abs((hi - lo) / 2 - half) < 0.2 * half
  assert out["difference_95"][0] < observed - (1 - randoms.mean()) < out["difference_95"][1]
