"""Discovery: a planted neuron is found, metrics match hand computations, outputs and resume."""

import csv
import json
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxskill
from jaxskill.config import load_config
from jaxskill.model import capture
from jaxskill.runtime.pipeline import run
from jaxskill.runtime.runner import Runner
from jaxskill.runtime.sharding import make_mesh
from jaxskill.stages import find as find_stage
from jaxskill.stats import streaming
from jaxskill.stats import selection
from jaxskill.stats import correlator as stats
from jaxskill.tasks import encode as data_lib
from jaxskill.tasks import Columns, table

# The shipped model's sizes (the tests follow whatever scripts/make_demo_model.py built).
_DEMO = json.loads((jaxskill.DEMO_MODEL / "config.json").read_text())
H, I, L = _DEMO["hidden_size"], _DEMO["intermediate_size"], _DEMO["num_hidden_layers"]


PLANTED = 37  # layer-0 neuron wired to fire on the token "7"


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
  """The demo model with layer-0 neuron PLANTED made a "7" detector, and a table task whose
  label says whether the input's last digit is 7 (plus a shuffled copy of that label)."""
  model, params = jaxskill.load_model("demo")
  tok = jaxskill.load_tokenizer("demo")
  seven = tok("7", add_special_tokens=False)["input_ids"][0]
  params = jax.tree.map(np.array, params)
  emb = params["embed_tokens"]["embedding"]
  # Coordinate 0 of the residual stream says "this token is a 7", at the scale of the other
  # coordinates, so that it barely moves the rest of the network.
  emb[:, 0] = 0.0
  emb[seven, 0] = np.abs(emb[seven]).mean()
  attn = params["layers"]["self_attn"]["o_proj"]["kernel"]
  attn[0, :, 0] = 0.0  # layer-0 attention writes nothing into coordinate 0
  for name in ("gate_proj", "up_proj"):  # the neuron reads coordinate 0 only, amplified
    kernel = params["layers"]["mlp"][name]["kernel"]
    kernel[0, :, PLANTED] = 0.0
    kernel[0, 0, PLANTED] = 8.0
  # ... and writes nothing back, so no later neuron inherits its signal.
  params["layers"]["mlp"]["down_proj"]["kernel"][0, PLANTED, :] = 0.0
  params = jax.tree.map(jnp.asarray, params)
  path = tmp_path_factory.mktemp("planted") / "digits.jsonl"
  rng = random.Random(0)
  rows = []
  for _ in range(300):
    digits = [rng.randrange(10) for _ in range(3)]
    if rng.random() < 0.4:
      digits[-1] = 7
    rows.append({"text": "Q: " + " ".join(map(str, digits)), "label": "1" if digits[-1] == 7
                 else "2", "is7": int(digits[-1] == 7)})
  shuffled = [r["is7"] for r in rows]
  rng.shuffle(shuffled)
  with open(path, "w") as f:
    for row, s in zip(rows, shuffled):
      f.write(json.dumps({**row, "shuffled": s}) + "\n")
  task = table(str(path), Columns("text", label="label", labels=("1", "2")),
               dev_fraction=0.0, test_fraction=0.0)
  encoded = data_lib.encode(task, "train", tok, data_lib.Layout(4, "infix", 24))
  verbalizer = data_lib.verbalizer_ids(tok, ("1", "2"))
  return model, params, encoded, verbalizer


def _correlate(planted, names, **kw):
  model, params, encoded, verbalizer = planted
  prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0), (4, H))}
  probe = capture.Probe(model, "classification", jnp.asarray(verbalizer),
                        kw.pop("sites", ("last_input",)), 4, names)
  return streaming.correlate(probe, params, prompt, encoded, runner=Runner(make_mesh(1), 16),
                             streaming=streaming.Streaming(**kw))


def _float64(planted):
  """`planted` in float64 (call under jax x64). Two programs over the same examples (batches of
  16 in correlate, 8, 50 or 300 here) sum in different orders: in float32 activations move by
  up to K * eps32 * |x|, K ~ 5e3 the summed reduction lengths of the demo forward (per layer
  q/k/v 128 + scores 32 + softmax and mix 2 x 24 + o 128 + gate/up 128 + down 512, 4 layers,
  plus norm and lm_head), 6e-4 of |x|: too coarse for r or for counts against a threshold. In
  float64 that is 5e3 * 2.2e-16 = 1.1e-12 of |x|."""
  model, params, encoded, verbalizer = planted
  model = jaxskill.CausalLM(model.config, dtype=jnp.float64, param_dtype=jnp.float64)
  params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
  return model, params, encoded, verbalizer


def test_planted_neuron_is_found_and_shuffled_label_is_not(planted):
  r, st = _correlate(planted, ("label", "meta_is7", "meta_shuffled"))
  assert r.shape == (3, L, 1, I)
  label_top = selection.top_k(selection.neuron_scores(r[0])[0], 5)
  is7_top = selection.top_k(selection.neuron_scores(r[1])[0], 5)
  shuffled_scores = selection.neuron_scores(r[2])[0]
  assert label_top[0] == (0, PLANTED) and is7_top[0] == (0, PLANTED)
  assert abs(r[1, 0, 0, PLANTED]) > 0.9 and r[0, 0, 0, PLANTED] < -0.9  # label 0 means "is 7"
  assert selection.top_k(shuffled_scores, 1)[0] != (0, PLANTED)
  assert shuffled_scores[0, PLANTED] < 0.3


def test_capture_metrics_match_a_hand_computation(planted):
  from jaxskill.model.forward import prompted_apply
  with jax.enable_x64(True):  # the logits of two programs (see _float64)
    model, params, encoded, verbalizer = _float64(planted)
    prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0), (4, H))}
    batch = jax.tree.map(jnp.asarray, encoded.batch().rows(np.arange(8)))
    acts, y = capture.Probe(model, "classification", jnp.asarray(verbalizer), ("answer",), 4,
                            capture.BUILTIN_METRICS)(prompt, params, batch)
    logits = prompted_apply(model, params, prompt, batch, kind="classification").logits
    y, logits = np.asarray(y), np.asarray(logits)
  assert y.dtype == logits.dtype == np.float64
  z = logits[:, verbalizer]
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  gold = np.asarray(batch.label)
  want = {"label": gold, "confidence": p[np.arange(8), gold], "max_prob": p.max(1),
          "margin": p[np.arange(8), gold] - p[np.arange(8), 1 - gold],
          "loss": -np.log(p[np.arange(8), gold]), "correct": p.argmax(1) == gold,
          "entropy": -(p * np.log(p)).sum(1)}
  # Logits agree to 5e3 * eps64 * max|z|; probabilities move by at most that, losses (a
  # difference of two logits) by twice that; the metrics' own few float64 ops add ~eps64.
  bound = 1e4 * np.finfo(np.float64).eps * max(1.0, np.abs(z).max())
  for j, name in enumerate(capture.BUILTIN_METRICS):
    np.testing.assert_allclose(y[:, j], want[name], atol=bound, rtol=0, err_msg=name)
  assert acts.shape == (8, L, 1, I)


def test_streamed_r_equals_float64_corrcoef_of_all_activations(planted):
  """300 examples in 19 batches of 16, merged on the device 3 at a time (7 host merges, the
  last one partial), against numpy float64 corrcoef of every example's activations."""
  from tests.test_stats import EPS32, r_rounding_bound
  names = ("label", "confidence", "entropy")
  with jax.enable_x64(True):  # activations of two programs (see _float64)
    model, params, encoded, verbalizer = float64 = _float64(planted)
    r, _ = _correlate(float64, names, merge_every=3)
    prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0), (4, H))}
    probe = capture.Probe(model, "classification", jnp.asarray(verbalizer), ("last_input",), 4,
                          names)
    step = jax.jit(lambda b: probe(prompt, params, b))
    whole = encoded.batch()
    xs, ys = zip(*(jax.device_get(step(whole.rows(np.arange(i, i + 50))))
                   for i in range(0, 300, 50)))
  x = np.concatenate(xs).reshape(300, -1)
  y = np.concatenate(ys)
  assert x.dtype == y.dtype == np.float64
  xc, yc = x - x.mean(0), y - y.mean(0)
  with np.errstate(invalid="ignore", divide="ignore"):
    want = (yc.T @ xc) / np.sqrt(np.outer((yc ** 2).sum(0), (xc ** 2).sum(0)))
  got = r.reshape(len(names), -1)
  defined = np.isfinite(want) & (x.std(0) > 1e-6)[None]
  assert defined.mean() > 0.9
  # The statistics are float32 on the device: r_rounding_bound for batches of 16 and 2 float32
  # merges per group of 3; and they start from x and y rounded to float32, a change of at most
  # u |v| per value, which moves r by at most 2 u max|v| / std(v) = EPS32 max|v| / std(v).
  with np.errstate(divide="ignore", invalid="ignore"):
    bound = (r_rounding_bound(16, 2) + EPS32 * np.abs(x).max(0)[None] / x.std(0)[None]
             + EPS32 * np.abs(y).max(0)[:, None] / y.std(0)[:, None])
  err = np.abs(got - want)
  assert (err[defined] <= bound[defined]).all(), (err[defined] / bound[defined]).max()


def test_prefix_prompt_sites_are_refused():
  with pytest.raises(ValueError, match="identical for every example"):
    capture.site_positions(("prompt",), 4, "prefix")
  assert capture.site_positions(("last_input", "answer"), 4, "prefix") == ["last_input", "answer"]
  assert capture.site_positions(("prompt",), 2, "infix") == ["prompt0", "prompt1"]


def test_interrupted_statistics_resume_to_the_same_arrays(planted, tmp_path, monkeypatch):
  names = ("label", "confidence")
  # An uninterrupted run with the same checkpoints: the host merges at the same batches.
  want, _ = _correlate(planted, names, sites=("prompt", "answer"), ckpt_dir=tmp_path / "straight",
                       checkpoint_every=2)
  real_merge = stats.merge_into
  calls = {"n": 0}

  def failing_merge(a, b, scratch=None):
    calls["n"] += 1
    if calls["n"] == 7:
      raise KeyboardInterrupt("simulated interruption")
    return real_merge(a, b, scratch)

  monkeypatch.setattr(stats, "merge_into", failing_merge)
  with pytest.raises(KeyboardInterrupt):
    _correlate(planted, names, sites=("prompt", "answer"), ckpt_dir=tmp_path / "ck",
               checkpoint_every=2)
  monkeypatch.setattr(stats, "merge_into", real_merge)
  got, st = _correlate(planted, names, sites=("prompt", "answer"), ckpt_dir=tmp_path / "ck",
                       checkpoint_every=2)
  np.testing.assert_array_equal(got, want)
  assert int(st["n"][0]) == len(planted[2])


def test_find_writes_outputs_and_counts_nan_metrics(tmp_path):
  """End to end on the demo model, with a custom metric that is NaN for half the examples."""
  config = load_config(None, [
      f"out_dir={tmp_path}", "name=f", "task.operations=plus", "task.digits=2",
      "task.n_train=40", "task.n_dev=8", "task.n_test=8", "train.steps=2", "train.eval_every=2",
      "data.max_length=40", "prompt.length=4", "find.batch_size=16",
      "find.metrics=correct,confidence,meta_last_digit_only,half_nan,label",
      "find.custom_metrics=tests.custom_metrics:half_nan", "find.top_k=5"])
  run(config, until="train", progress=False)  # find reads the trained prompt(s)
  summary = find_stage.find(config, progress=False)
  out = np.load(tmp_path / "f" / "correlations.npz")
  assert sorted(out.files) == sorted(["correct", "confidence", "meta_last_digit_only",
                                      "half_nan", "label"])
  pred = np.load(tmp_path / "f" / "predictivity.npz")
  assert pred["accuracy"].shape == (L, 6, I)
  # score is this expression of the stored accuracy: equal (default rtol 1e-7 is moot)
  np.testing.assert_allclose(pred["score"], np.abs(pred["accuracy"] - 0.5))
  assert summary["predictivity_2022"]["f"]["n_dev"] == 8
  assert out["correct"].shape == (L, 4 + 2, I)  # layers, 4 prompt + last_input + answer
  # 40 examples in batches of 16: NaN for rows 0-7 of each batch, real rows only -> 8 + 8 + 8.
  assert summary["metrics"]["half_nan"]["nan_excluded"] == 24
  assert summary["metrics"]["half_nan"]["n"] == 16
  assert summary["metrics"]["confidence"]["nan_excluded"] == 0
  with open(tmp_path / "f" / "neurons.csv") as f:
    rows = list(csv.DictReader(f))
  conf = [row for row in rows if row["metric"] == "confidence"]
  assert [int(row["rank"]) for row in conf] == [1, 2, 3, 4, 5]
  for row in conf:  # each row's r is the array's value at that place, printed with 6 decimals
    # (off by at most 5e-7)
    k = summary["positions"].index(row["position"])
    assert float(row["r"]) == pytest.approx(out["confidence"][int(row["layer"]), k,
                                                              int(row["neuron"])], abs=1e-6)
  assert abs(float(conf[0]["r"])) >= abs(float(conf[-1]["r"]))
  # pvalues.npz: the p-values of the stored r with each metric's own count (NaN rows excluded).
  from jaxskill.stats import significance
  pvalues = np.load(tmp_path / "f" / "pvalues.npz")
  assert sorted(pvalues.files) == sorted(out.files)
  for name in out.files:
    n = summary["metrics"][name]["n"]
    want = significance.p_values(out[name][None], np.array([n]))[0]
    np.testing.assert_array_equal(pvalues[name], want)
    s = summary["metrics"][name]["significance"]
    assert s["permutations"] == 20 and s["significant_fdr"] == int(
        significance.fdr_reject(want, 0.05).sum())


def test_seeds_are_aggregated_with_overlap(tmp_path):
  config = load_config(None, [
      f"out_dir={tmp_path}", "name=s", "task.operations=plus", "task.digits=2",
      "task.n_train=32", "task.n_dev=8", "task.n_test=8", "train.steps=2", "train.eval_every=2",
      "data.max_length=40", "prompt.length=2", "find.seeds=0,1", "find.metrics=confidence",
      "find.top_k=20"])
  run(config, until="train", progress=False)  # find reads the trained prompt(s)
  summary = find_stage.find(config, progress=False)
  iou = summary["seed_overlap_iou_top_k"]["confidence"]
  assert 0.0 <= iou <= 1.0
  a = np.load(tmp_path / "s-seed0" / "correlations.npz")["confidence"]
  b = np.load(tmp_path / "s-seed1" / "correlations.npz")["confidence"]
  mean = np.load(tmp_path / "s" / "correlations.npz")["confidence"]
  # find's nanmean of the two float64 arrays is this sum and halving: equal to an ulp of |r| <= 1
  np.testing.assert_allclose(mean, (a + b) / 2, atol=1e-7)
  sets = [selection.top_k(selection.neuron_scores(x)[0], 20) for x in (a, b)]
  assert iou == pytest.approx(selection.iou(*sets))  # one pair: the same ratio of set sizes
  # Rank stability: Spearman's rho of the two seeds' neuron scores, here as Pearson's r of their
  # ranks (no ties among float scores).
  sa, sb = (selection.neuron_scores(x)[0].ravel() for x in (a, b))
  ok = np.isfinite(sa) & np.isfinite(sb)
  ra, rb = (np.argsort(np.argsort(v[ok])) for v in (sa, sb))
  assert summary["seed_rank_correlation"]["confidence"] == pytest.approx(
      np.corrcoef(ra, rb)[0, 1], abs=1e-12)
  # Each seed's significance is its own; the mean over seeds has no p-values of its own.
  assert (tmp_path / "s-seed0" / "pvalues.npz").exists()
  assert not (tmp_path / "s" / "pvalues.npz").exists()
  assert "significance" not in summary["metrics"]["confidence"]


def test_predictivity_finds_the_planted_neuron_and_matches_numpy(planted):
  from tests.test_stats import EPS32
  with jax.enable_x64(True):  # activations of two programs (see _float64)
    model, params, encoded, verbalizer = float64 = _float64(planted)
    r, st = _correlate(float64, ("label",))
    baseline = st["mean_x"][0] + st["ref_x"]
    prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(0), (4, H))}
    probe = capture.Probe(model, "classification", jnp.asarray(verbalizer), ("last_input",), 4,
                          ("label",))
    acc, n = find_stage.predictivity(probe, params, prompt, encoded, baseline.astype(np.float32),
                                     runner=Runner(make_mesh(1), 16))
    assert n == len(encoded) and acc.shape == (L, 1, I)
    # numpy reference from the captured activations themselves
    acts, _ = probe(prompt, params, jax.tree.map(jnp.asarray, encoded.batch()))
  a = np.asarray(acts).reshape(len(encoded), -1)
  assert a.dtype == np.float64
  mean = a.mean(0)
  # The baseline is the float32 statistics' mean: x rounded to float32 (u |x|), then per batch
  # a sum of 16 rows and its correction (20 roundings), then float32 merges on the device (4
  # roundings each; 19 batches, 16 to a group: 15), all of x - ref_x, at most 2 max|x|.
  u = EPS32 / 2
  bound = u * np.abs(a).max(0) * (1 + 2 * (20 + 4 * 15))
  assert (np.abs(baseline - mean) <= bound).all(), (np.abs(baseline - mean) / bound).max()
  # predictivity compares float32 activations with the float32 baseline: the same values here
  # (float64 activations of the two programs round to the same float32 but within 1e-12 of a
  # float32 midpoint); acc and want are then the same counts over 300, divided alike.
  want = ((a.astype(np.float32) > baseline.astype(np.float32))
          == (encoded.label[:, None] > 0)).mean(0)
  np.testing.assert_allclose(acc.reshape(-1), want, atol=1e-12)
  score = np.abs(acc - 0.5)
  # The planted detector predicts the label perfectly; the trained organism has natural "7"
  # neurons that may tie with it, so it must reach the maximum rather than rank first by index.
  assert score[0, 0, PLANTED] == score.max() >= 0.45


def test_undefined_r_is_never_ranked():
  r = np.full((2, 3, 4), np.nan)  # [layers, positions, neurons]
  r[0, 1, 2] = -0.9
  r[1, 0, 3] = 0.2
  r[1, 2, 3] = np.nan
  scores, pos = selection.neuron_scores(r)
  # |-0.9| is 0.9 to the last bit; approx only spares writing the float
  assert np.isnan(scores[0, 0]) and scores[0, 2] == pytest.approx(0.9) and pos[0, 2] == 1
  assert selection.top_k(scores, 10) == [(0, 2), (1, 3)]
  assert selection.top_p_per_layer(scores, 0.5) == [(0, 2), (1, 3)]


def test_planted_neuron_is_significant_and_the_shuffled_label_is_not(planted):
  """Power: the planted neuron's r has p < 1e-6 and survives FDR (q = 0.05) and the permutation
  FWER level; the shuffled copy of the label has no FWER-significant neuron."""
  from jaxskill.stats import significance
  names = ("label", "meta_is7", "meta_shuffled")
  r, st = _correlate(planted, names, permutations=20)
  assert st["null_r"].shape == (20, 3, L, 1, I)
  p = significance.p_values(r, st["n"][:3])
  for j in (0, 1):
    assert p[j, 0, 0, PLANTED] < 1e-6
    assert significance.fdr_reject(p[j], 0.05)[0, 0, PLANTED]
    s = significance.null_summary(r[j], st["null_r"][:, j], p[j], q=0.05, thresholds=(0.5,))
    assert abs(r[j, 0, 0, PLANTED]) > s["null_max_abs_r_95"] and s["significant_fwer"] >= 1
  shuffled = significance.null_summary(r[2], st["null_r"][:, 2], p[2], q=0.05, thresholds=(0.5,))
  assert shuffled["significant_fwer"] == 0
