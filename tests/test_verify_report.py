"""Verification, report and the run pipeline on a small run of the shipped model.

The verification's numbers are checked against HF PyTorch (the same prompt inserted through
`inputs_embeds`, the same neurons zeroed with `down_proj` pre-hooks), its bookkeeping against
hand cases; the report's files are decoded and the HTML is checked to need no other file."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from jaxskill import report as report_lib
from jaxskill import selection
from jaxskill import verify as verify_lib
from jaxskill.config import load_config
from jaxskill.pipeline import run

OVERRIDES = ["task.n_train=64", "task.n_dev=16", "task.n_test=48", "train.steps=4",
             "train.batch_size=8", "train.eval_every=2", "find.batch_size=16",
             "verify.k_list=1,4", "verify.k=4", "verify.random_draws=3", "verify.batch_size=16",
             "verify.group_by=correct,last_digit_only",
             "find.metrics=label,confidence,meta_last_digit_only,meta_candidate_last_digit_correct"]


def _config(out_dir, *changes):
  """configs/demo.yaml made small, with `changes` ("key=value") replacing the same keys."""
  keys = {c.split("=")[0] for c in changes}
  kept = [o for o in OVERRIDES if o.split("=")[0] not in keys]
  return load_config("configs/demo.yaml", kept + [f"out_dir={out_dir}", *changes])


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  config = _config(tmp_path_factory.mktemp("runs"))
  stages = run(config, progress=False)
  return config, stages


def test_random_draws_match_layer_counts_and_avoid_the_top_neurons():
  chosen = [(0, 1), (0, 2), (2, 5)]
  rng = np.random.default_rng(0)
  for _ in range(20):
    draw = selection.random_matched(chosen, 8, rng)
    assert sorted(layer for layer, _ in draw) == [0, 0, 2]
    assert not set(draw) & set(chosen)
    assert len(set(draw)) == 3


def test_summarize_groups_by_hand():
  values = np.array([[1, 0.9, 0.1, 0.5], [0, 0.2, 1.6, -0.3], [1, 0.8, 0.2, np.nan],
                     [1, 0.7, 0.3, 0.1]])
  groups = np.array(["a", "b", "a", "b"])
  out = verify_lib.summarize(values, groups)
  assert out["accuracy"] == 0.75 and out["group_accuracy"] == {"a": 1.0, "b": 0.5}
  # the NaN row is left out: (0.5 - 0.3 + 0.1) / 3, in float64 (a few eps64 off 0.1)
  assert out["margin"] == pytest.approx(0.1)


def _hf_accuracy(config, zeroed):
  """Test accuracy and mean gold probability of the trained prompt in HF PyTorch, with
  `zeroed` neurons set to 0 at every position through down_proj pre-hooks."""
  import torch
  from transformers import AutoModelForCausalLM
  from jaxskill.model.checkpoint import DEMO_MODEL
  from jaxskill.setup import encoded_split, prepare
  setup = prepare(config)
  enc = encoded_split(setup, config, "test")
  hf = AutoModelForCausalLM.from_pretrained(DEMO_MODEL, attn_implementation="eager").eval()
  prompt = torch.tensor(np.load(config.run_dir / "prompt_best.npy"))
  ids = torch.tensor(enc.input_ids.astype(np.int64))
  with torch.no_grad():
    embeds = hf.model.embed_tokens(ids)
    rows, cols = np.nonzero(enc.prompt_index >= 0)
    embeds[rows, cols] = prompt[enc.prompt_index[rows, cols]]
  mask = torch.tensor(enc.attention_mask.astype(np.int64))
  positions = torch.clamp(torch.cumsum(mask, -1) - 1, min=0)
  hooks = []
  for layer in sorted({layer for layer, _ in zeroed}):
    cols_ = [n for lay, n in zeroed if lay == layer]

    def zero(mod, args, cols_=cols_):
      a = args[0].clone()
      a[..., cols_] = 0.0
      return (a,)
    hooks.append(hf.model.layers[layer].mlp.down_proj.register_forward_pre_hook(zero))
  try:
    with torch.no_grad():
      logits = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
  finally:
    for h in hooks:
      h.remove()
  at = logits[torch.arange(len(enc)), torch.tensor(enc.answer_pos.astype(np.int64))]
  p = torch.softmax(at[:, torch.tensor(setup.verbalizer.astype(np.int64))], -1).numpy()
  label = enc.label
  return (p.argmax(-1) == label).mean(), p[np.arange(len(label)), label].mean()


def test_verify_matches_hf_with_hooks(demo_run):
  config, _ = demo_run
  results = json.loads((config.run_dir / "verify.json").read_text())
  assert results["n"] == 48
  acc, conf = _hf_accuracy(config, [])
  # Accuracies are counts over 48: equal unless an answer's two verbalizer logits are tied to
  # within float32 rounding. Confidences are float32 means of probabilities from PyTorch's and
  # XLA's own summation orders: the worst case, K * eps32 ~ 6e-4 of the logits' scale (K ~ 5e3
  # for the demo forward), is above 1e-4, and the pipeline has no float64 mode to compare in;
  # 1e-4 is measured (6e-8 on an Intel Xeon: one ulp of 0.5).
  assert results["baseline"]["accuracy"] == pytest.approx(acc, abs=1e-9)
  assert results["baseline"]["confidence"] == pytest.approx(conf, abs=1e-4)
  row = results["selections"]["label"]["modes"]["zero"]["4"]
  top = [tuple(x) for x in results["selections"]["label"]["neurons"][:4]]
  acc, conf = _hf_accuracy(config, top)
  assert row["top"]["accuracy"] == pytest.approx(acc, abs=1e-9)
  assert row["top"]["confidence"] == pytest.approx(conf, abs=1e-4)
  draw = [tuple(x) for x in row["random_neurons"][1]]
  assert sorted(layer for layer, _ in draw) == sorted(layer for layer, _ in top)
  assert not set(draw) & set(top)
  acc, conf = _hf_accuracy(config, draw)
  drops = row["random"]["accuracy_drop"]["values"]
  assert results["baseline"]["accuracy"] - drops[1] == pytest.approx(acc, abs=1e-9)
  # float64 std of the same three values (default rel 1e-6: a few eps64 of ordering)
  assert len(drops) == 3 and row["random_accuracy_drop_std"] == pytest.approx(
      np.std(drops, ddof=1))
  assert set(row["top"]["group_accuracy"]) == {
      "correct=1,last_digit_only=0", "correct=0,last_digit_only=1",
      "correct=0,last_digit_only=0"}
  assert set(results["selections"]["label"]["modes"]) == {"noise", "zero", "mean"}


def test_verify_resumes_from_its_progress_log(demo_run):
  from jaxskill.verify import verify
  config, _ = demo_run
  log = config.run_dir / "verify_progress.jsonl"
  lines = log.read_text().splitlines()
  want = json.loads((config.run_dir / "verify.json").read_text())
  # Interrupted half way, the last line cut short: only the missing evaluations run again.
  log.write_text("\n".join(lines[:len(lines) // 2]) + "\n" + lines[len(lines) // 2][:30])
  (config.run_dir / "verify.json").unlink()
  assert verify(config, progress=False) == want
  assert log.read_text().splitlines() == lines  # the cut line dropped, then written again
  # Another verify config is another experiment: nothing of the old one is reused.
  other = _config(config.out_dir, "verify.sigma=0.5")
  verify(other, progress=False)
  assert len(log.read_text().splitlines()) == 2 * len(lines)


def test_group_by_unknown_column_is_named(demo_run):
  from jaxskill.verify import verify
  config, _ = demo_run
  bad = _config(config.out_dir, "verify.group_by=digits,nope")
  with pytest.raises(ValueError, match="'nope'"):
    verify(bad, progress=False)


class _Tags(HTMLParser):
  def __init__(self):
    super().__init__()
    self.refs = []

  def handle_starttag(self, tag, attrs):
    for name, value in attrs:
      if name in ("src", "href") or (tag == "link"):
        self.refs.append((tag, name, value))


def test_report_renders_self_contained(demo_run):
  import matplotlib.pyplot as plt
  config, stages = demo_run
  assert stages == {"train": "ran", "find": "ran", "verify": "ran", "report": "ran"}
  d = config.run_dir
  pngs = sorted(d.glob("*.png"))
  names = {p.name for p in pngs}
  assert {"r_hist.png", "layers.png", "verify.png", "dose.png", "kde_label.png"} <= names
  for p in pngs:
    image = plt.imread(p)  # decodes: a valid PNG
    assert image.ndim == 3 and image.shape[0] > 50 and image.shape[1] > 50
  page = (d / "report.html").read_text()
  parser = _Tags()
  parser.feed(page)
  embedded = [v for tag, name, v in parser.refs if tag == "img" and name == "src"]
  assert all(v.startswith("data:image/png;base64,") for v in embedded)
  assert [r for r in parser.refs if not (r[0] == "img" and r[1] == "src")] == []
  decoded = {base64.b64decode(v.split(",", 1)[1]) for v in embedded}
  assert decoded == {p.read_bytes() for p in pngs}  # every figure is in the page itself
  assert "Top-activating examples" in page and "Is there a last-digit shortcut neuron?" in page


def test_run_skips_done_stages_and_reruns_what_a_change_touches(demo_run):
  config, _ = demo_run
  assert run(config, progress=False) == {"train": "skipped", "find": "skipped",
                                         "verify": "skipped", "report": "ran"}
  changed = _config(config.out_dir, "verify.random_draws=2")
  assert run(changed, progress=False) == {"train": "skipped", "find": "skipped",
                                          "verify": "ran", "report": "ran"}
  assert json.loads((config.run_dir / "verify.json").read_text())["random_draws"] == 2


def test_kde_and_auc_by_hand():
  x = np.array([0.0, 1.0, 3.0])
  grid = np.linspace(-20, 20, 4001)
  h = 0.9 * min(x.std(), np.subtract(*np.percentile(x, [75, 25])) / 1.34) * 3 ** -0.2
  want = sum(np.exp(-0.5 * ((grid - xi) / h) ** 2) for xi in x) / (3 * h * np.sqrt(2 * np.pi))
  got = report_lib.kde(x, grid)
  np.testing.assert_allclose(got, want, rtol=1e-12)  # the same float64 sum of 3 terms
  # The tails past +-20 are below exp(-200) and the trapezoid rule's Euler-Maclaurin terms are
  # odd derivatives at those ends, ~0: what is left is float64 rounding over 4001 points.
  assert np.trapezoid(got, grid) == pytest.approx(1.0, abs=1e-6)
  assert report_lib.auc([3, 4], [1, 3]) == 0.875  # (1 + 0.5 + 1 + 1) / 4


def test_last_digit_shortcut_tells_a_shortcut_from_a_checker():
  rng = np.random.default_rng(0)
  n = 300
  label = np.repeat([0, 1, 1], n // 3)  # correct, wrong in the last digit, wrong elsewhere
  last_only = np.repeat([0, 1, 0], n // 3)
  shortcut = 2.0 * last_only + rng.normal(0, 0.3, n)  # fires on a wrong last digit only
  checker = 2.0 * label + rng.normal(0, 0.3, n)  # fires on any wrong answer
  acts = {"metric_names": np.array(["label", "meta_last_digit_only"]),
          "metrics": np.stack([label, last_only], 1).astype(np.float32),
          "position_names": np.array(["last_input"]),
          "features": np.array([[1, 0, 7], [2, 0, 9]]),
          "activations": np.stack([checker, shortcut], 1)}
  verdict = report_lib.last_digit_shortcut(acts)
  assert verdict["answer"] == "yes"
  assert (verdict["neurons"][0]["layer"], verdict["neurons"][0]["neuron"]) == (2, 9)
  assert verdict["neurons"][1]["shortcut"] is False  # the checker separates both kinds
  only_checker = dict(acts, features=acts["features"][:1], activations=checker[:, None])
  assert report_lib.last_digit_shortcut(only_checker)["answer"] == "no"


def test_report_from_find_outputs_alone_shows_seed_overlap(tmp_path):
  """A run dir with discovery outputs only (no verify, no activations) still renders, with the
  seed-stability table when several prompts were trained."""
  rng = np.random.default_rng(0)
  np.savez(tmp_path / "correlations.npz", label=rng.uniform(-1, 1, (3, 2, 16)))
  (tmp_path / "summary.json").write_text(json.dumps({
      "threshold": 0.5, "seeds": [0, 1, 2], "seed_overlap_iou_top_k": {"label": 0.4321},
      "metrics": {"label": {"n": 10, "max_abs_r": 0.9, "above_threshold": 5, "top_k": []}}}))
  page = report_lib.report(tmp_path).read_text()
  assert "Seed stability" in page and "0.432" in page and "Verification" not in page
  assert sorted(p.name for p in tmp_path.glob("*.png")) == ["layers.png", "r_hist.png"]


class _Text(HTMLParser):
  """The page as a reader sees it: its text (entities decoded) and the tags it has."""

  def __init__(self):
    super().__init__()
    self.text, self.tags = [], set()

  def handle_starttag(self, tag, attrs):
    self.tags.add(tag)

  def handle_data(self, data):
    self.text.append(data)


def test_report_escapes_text_from_the_run(tmp_path):
  """Text read from the run's files is shown as text: an input, a position name, a reason
  that look like HTML come out escaped (the template autoescapes), never as tags."""
  evil = '<script>alert(1)</script> & "x"'
  rng = np.random.default_rng(0)
  label = np.tile([0.0, 1.0], 6)
  acts = 2 * label + rng.normal(0, 0.3, label.size)
  acts[0] = 10.0  # the evil input is the top-activating one
  np.savez(tmp_path / "correlations.npz", label=rng.uniform(-1, 1, (3, 2, 16)))
  np.savez(tmp_path / "activations.npz", metric_names=np.array(["label"]),
           metrics=label[:, None].astype(np.float32), features=np.array([[1, 0, 7]]),
           position_names=np.array(["<last>"]), activations=acts[:, None],
           texts=np.array([evil] + [f"input {i}" for i in range(1, label.size)]))
  (tmp_path / "summary.json").write_text(json.dumps({
      "threshold": 0.5,
      "metrics": {"label": {"n": 12, "max_abs_r": 0.9, "above_threshold": 1, "top_k": []}}}))
  (tmp_path / "verify.json").write_text(json.dumps({
      "k": 2, "split": "test", "random_draws": 2, "baseline": {"accuracy": 0.5},
      "selections": {}, "skipped": {"<b>label</b>": 'no neuron & no "r"'}}))
  page = report_lib.report(tmp_path).read_text()
  assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; " in page and "<script" not in page
  parsed = _Text()
  parsed.feed(page)
  assert not parsed.tags & {"script", "b", "last"}
  text = "".join(parsed.text)
  assert evil in text  # decoded, the reader sees the input as it was
  assert "label: layer 1, neuron 7 at <last>" in text
  assert 'Not verified: <b>label</b> (no neuron & no "r").' in text
