"""The neuron browser's data (neurons.json, embedded in report.html) against independent sources:
every token's activation against the model run again on that row alone with every position
captured (`neuron_activations`), the table against neurons.csv and the p-values, the layer counts
against correlations.npz, and the embedding against text that tries to end the script element."""

import csv
import html
import json
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxskill.model import neuron_activations
from jaxskill.report import browser
from jaxskill.report.page import report
from jaxskill.stats.selection import neuron_scores
from jaxskill.stats.significance import fdr_reject


@pytest.fixture(scope="module")
def page(demo_run, tmp_path_factory):
  """(config, run dir copy, the page's embedded data, neurons.json): a fresh report of a copy
  of the shared demo run (other modules change that directory's verify outputs)."""
  config, _ = demo_run
  out = tmp_path_factory.mktemp("browser") / config.name
  shutil.copytree(config.run_dir, out)
  text = report(out).read_text()
  found = re.search(r'<script type="application/json" id="browser-data">(.*?)</script>', text,
                    re.S)
  assert found, "no embedded browser data"
  return config, out, json.loads(found.group(1)), json.loads((out / "neurons.json").read_text())


def test_page_embeds_neurons_json(page):
  _, _, embedded, written = page
  assert embedded == written
  assert written["panels"] and written["neurons"] and written["examples"]


def _reference_rows(config, run_dir, examples: np.ndarray) -> dict:
  """example -> (activations `[t, l, i]`, bool `[t]` its unmasked tokens): the model run on the
  rows `examples` of the find split with every position captured, the run's prompt put into its
  slots here (not through jaxskill.model.forward), read with `neuron_activations`.

  The same float32 computation as the find stage's: jitted, the rows in batches of
  find.batch_size in the order given, the last padded by repeating its last row. Another
  layout or fusion sums in another order, and over 4 layers that moves activations by up to
  ~7e-6 of their size (measured: 1.1e-5 at |a| = 24 for a row alone; 2.7e-5 at |a| = 4.1
  unjitted), which a 1e-5 bound cannot absorb; in the same computation only the page's
  rounding to 6 decimals (5e-7) is left."""
  from jaxskill.runtime.context import encoded_split, prepare
  setup = prepare(config)
  enc = encoded_split(setup, config, config.find.split)
  prompt = np.load(run_dir / "prompt_best.npy")
  model, params = setup.model, setup.params
  size = config.find.batch_size

  @jax.jit
  def captured(embeds, mask):
    b, t = mask.shape
    _, variables = model.apply({"params": params}, inputs_embeds=embeds, attention_mask=mask,
                               capture_positions=jnp.broadcast_to(jnp.arange(t), (b, t)),
                               mutable=["intermediates"])
    return neuron_activations(variables)

  out = {}
  for start in range(0, len(examples), size):
    rows = examples[np.minimum(np.arange(start, start + size), len(examples) - 1)]
    ids = jnp.asarray(enc.input_ids[rows])
    embeds = np.array(model.apply({"params": params}, ids, method=model.embed))
    slot_rows, slot_cols = np.nonzero(enc.prompt_index[rows] >= 0)
    embeds[slot_rows, slot_cols] = prompt[enc.prompt_index[rows][slot_rows, slot_cols]]
    acts = np.asarray(captured(jnp.asarray(embeds), jnp.asarray(enc.attention_mask[rows])))
    acts = acts.transpose(0, 2, 1, 3)  # [b, t, l, i]
    for i, e in enumerate(rows[:len(examples) - start]):
      out[int(e)] = (acts[i], enc.attention_mask[e] > 0)
  return out


def test_token_activations_equal_the_models_at_every_position(page):
  """Every token activation the page shows equals the model's own at that token, within 1e-5
  (the page rounds to 6 decimals: 5e-7)."""
  config, run_dir, data, _ = page
  shown = np.load(run_dir / "token_activations.npz")["examples"]
  reference = _reference_rows(config, run_dir, shown)
  checked = 0
  for fid, panel in data["panels"].items():
    for side in ("top", "bottom"):
      for ex in panel[side]:
        acts, kept = reference[int(ex["example"])]
        want = acts[kept, panel["layer"], panel["neuron"]]
        assert len(ex["tokens"]) == len(data["examples"][ex["example"]]["tokens"]) == want.size
        np.testing.assert_allclose(ex["tokens"], want, rtol=0, atol=1e-5, err_msg=fid)
        site = data["examples"][ex["example"]]["sites"][panel["position"]]
        assert ex["activation"] == pytest.approx(want[site], abs=1e-5)
        checked += want.size
  assert checked > 100


def test_top_and_bottom_examples_are_the_extremes_of_the_split(page):
  """A panel's top examples are the find split's largest activations at the site, in order;
  its bottom ones the smallest (activations.npz, every example)."""
  _, run_dir, data, _ = page
  acts = np.load(run_dir / "activations.npz")
  ids = [browser.feature_id(int(layer), str(acts["position_names"][pos]), int(neuron))
         for layer, pos, neuron in acts["features"]]
  for j, fid in enumerate(ids):
    a = acts["activations"][:, j]
    top = [float(ex["activation"]) for ex in data["panels"][fid]["top"]]
    bottom = [float(ex["activation"]) for ex in data["panels"][fid]["bottom"]]
    np.testing.assert_allclose(top, np.sort(a)[::-1][:len(top)], atol=1e-6)
    np.testing.assert_allclose(bottom, np.sort(a)[:len(bottom)], atol=1e-6)
    assert len(top) == len(bottom) == 5  # find.browser_examples


def test_table_is_neurons_csv_with_its_significance(page):
  _, run_dir, data, _ = page
  with open(run_dir / "neurons.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(data["neurons"])
  pvalues = np.load(run_dir / "pvalues.npz")
  corr = np.load(run_dir / "correlations.npz")
  positions = data["positions"]
  for want, got in zip(rows, data["neurons"]):
    assert (got["metric"], got["rank"], got["layer"], got["neuron"], got["position"]) == (
        want["metric"], int(want["rank"]), int(want["layer"]), int(want["neuron"]),
        want["position"])
    assert got["r"] == pytest.approx(float(want["r"]), abs=1e-6)
    k = positions.index(got["position"])
    p = pvalues[got["metric"]][got["layer"], k, got["neuron"]]
    assert got["p"] == pytest.approx(p, rel=1e-2)  # 3 significant digits
    reject = fdr_reject(pvalues[got["metric"]], data["fdr_q"])
    assert got["fdr"] == bool(reject[got["layer"], k, got["neuron"]])
  for row in data["layers"]:
    for name, r in corr.items():
      scores = neuron_scores(r)[0][row["layer"]]
      assert row["above_threshold"][name] == int(np.sum(scores > data["threshold"]))


def test_verified_neurons_carry_their_sets_drops(page):
  _, run_dir, data, _ = page
  results = json.loads((run_dir / "verify.json").read_text())
  k = results["k"]
  for sel, per_sel in results["selections"].items():
    top = {tuple(n) for n in per_sel["neurons"][:k]}
    for row in data["neurons"]:
      held = [v for v in row["verification"] if v["selection"] == sel]
      assert bool(held) == ((row["layer"], row["neuron"]) in top)
      for v in held:
        want = per_sel["modes"][v["mode"]][str(k)]["accuracy_drop"]
        assert v["drop"] == pytest.approx(want, abs=1e-4)


def test_script_json_cannot_end_the_script_element():
  data = {"text": "</script><script>alert(1)</script> & <!--"}
  text = browser.script_json(data)
  assert "<" not in text and ">" not in text and "&" not in text
  assert json.loads(text) == data
  assert html.unescape(text) == text  # nothing an HTML parser would turn into markup
