"""Verification, report and the run pipeline on a small run of the shipped model.

The verification's numbers are checked against HF PyTorch (the same prompt inserted through
`inputs_embeds`, the same neurons zeroed with `down_proj` pre-hooks), its bookkeeping against
hand cases; the report's files are decoded and the HTML is checked to need no other file."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from jaxskill.report import page as report_lib
from jaxskill.runtime.pipeline import run
from jaxskill.stages import verify as verify_lib
from jaxskill.stats import selection
from jaxskill.stats import shortcut as shortcut_lib

from tests.demo_small import small_demo_config as _config


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
  from jaxskill.runtime.context import encoded_split, prepare
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


def test_neuron_stats_are_taken_over_the_input_tokens(demo_run):
  """neuron_stats.npz (verify.mean_over=inputs, the default) against numpy float64 over the
  activations at the input-token positions of every train row, read from one capturing forward
  at every position; and the noise std it implies (verify.noise_scale=neuron_std)."""
  import jax
  import jax.numpy as jnp
  from jaxskill.model import forward, interventions
  from jaxskill.runtime.context import load_prompt, prepare
  config, _ = demo_run
  results = json.loads((config.run_dir / "verify.json").read_text())
  assert results["mean_over"] == "inputs" and results["noise_scale"] == "neuron_std"
  stats = np.load(config.run_dir / "neuron_stats.npz")
  setup = prepare(config)
  whole = jax.tree.map(jnp.asarray, setup.train.batch())
  b, t = whole.input_ids.shape
  prompt = {"embeddings": jnp.asarray(load_prompt(config))}
  acts = np.asarray(forward.prompted_apply(
      setup.model, setup.params, prompt, whole, kind=None,
      capture=jnp.broadcast_to(jnp.arange(t), (b, t))).activations, np.float64)  # [b, l, t, i]
  cols = np.arange(t)[None]
  inputs = ((np.asarray(whole.attention_mask) > 0) & (np.asarray(whole.prompt_index) < 0)
            & (cols < np.asarray(whole.input_end)[:, None]))
  assert 0 < inputs.sum() < (np.asarray(whole.attention_mask) > 0).sum()  # the prompt is left out
  a = acts.transpose(0, 2, 1, 3)[inputs]  # [positions, l, i]
  mean, std = a.mean(0), a.std(0)
  # Batch sums of <= 16 x t terms in float32 (then float64): |error| <= 16 t eps32 E|a| for the
  # mean, 16 t eps32 E[a^2] / (2 std) for the std; the forward itself is the same program on
  # other batch shapes (a few eps32 of |a|).
  u = 16 * t * np.finfo(np.float32).eps
  np.testing.assert_allclose(stats["mean"], mean, atol=u * np.abs(a).mean(0).max() + 1e-6)
  var_bound = u * (a * a).mean(0)
  assert (np.abs(stats["std"] - std) <= var_bound / (2 * np.maximum(std, 1e-3)) + 1e-5).all()
  edit = interventions.neuron_edit(*mean.shape, [(1, 3)], "noise", sigma=0.1, scale=stats["std"],
                                   key=jax.random.PRNGKey(0))
  assert float(edit.noise_std[1, 3]) == pytest.approx(0.1 * stats["std"][1, 3], rel=1e-6)
  assert float(np.abs(np.asarray(edit.noise_std)).sum()) == float(edit.noise_std[1, 3])


def test_verify_resumes_from_its_progress_log(demo_run, tmp_path):
  import shutil
  from jaxskill.stages.verify import verify
  # On a copy: verify called outside the pipeline leaves files its stage record does not know.
  shutil.copytree(demo_run[0].run_dir, tmp_path / demo_run[0].name)
  config = _config(tmp_path)
  log = config.run_dir / "verify_progress.jsonl"
  lines = log.read_text().splitlines()
  want = dict(json.loads((config.run_dir / "verify.json").read_text()),
              prompt=str(config.run_dir / "prompt_best.npy"))  # the copy's own
  # Interrupted half way, the last line cut short: only the missing evaluations run again.
  log.write_text("\n".join(lines[:len(lines) // 2]) + "\n" + lines[len(lines) // 2][:30])
  (config.run_dir / "verify.json").unlink()
  assert verify(config, progress=False) == want
  assert log.read_text().splitlines() == lines  # the cut line dropped, then written again
  # Another verify config is another experiment: nothing of the old one is reused.
  other = _config(tmp_path, "verify.sigma=0.5")
  verify(other, progress=False)
  assert len(log.read_text().splitlines()) == 2 * len(lines)


@pytest.fixture(scope="module")
def qwen_run(tmp_path_factory):
  """The demo's experiment on a tiny random checkpoint laid out like Qwen1.5 (4 layers, GQA),
  whose top neurons spread over layers, so that edits start from several layers: (config, its
  changes to `_config`)."""
  from tests.qwen15_like import make_qwen15_like_checkpoint
  model = make_qwen15_like_checkpoint(tmp_path_factory.mktemp("qwen15"), layers=4, heads=6,
                                      kv_heads=2)
  changes = (f"model.path={model}", "verify.k_list=1,4,12", "verify.modes=zero,mean,noise",
             "prompt.placement=infix", "data.max_length=48")
  config = _config(tmp_path_factory.mktemp("runs"), *changes)
  run(config, until="find", progress=False)  # the test verifies, on copies
  return config, changes


@pytest.mark.parametrize("which", ["demo", "qwen"])
def test_batched_verify_equals_one_edit_per_pass(which, demo_run, qwen_run, tmp_path):
  """verify.edits_per_pass=1 (every edit its own whole forward pass) gives the verify.json of
  the default batched path (edits vmapped, run from their lowest perturbed layer), each run on
  its own copy of the trained run."""
  import shutil
  from jaxskill.stages.verify import verify
  from tests.compare import assert_same_verify
  config, changes = (demo_run[0], ()) if which == "demo" else qwen_run
  assert config.verify.edits_per_pass == 0 and verify_lib.auto_edits_per_pass() > 1
  results = {}
  for per_pass in (0, 1):
    out = tmp_path / str(per_pass)
    shutil.copytree(config.run_dir, out / config.name)
    for name in ("verify.json", "verify_progress.jsonl"):
      (out / config.name / name).unlink(missing_ok=True)
    results[per_pass] = verify(_config(out, *changes, f"verify.edits_per_pass={per_pass}"),
                               progress=False)
  batched, reference = results[0], results[1]
  if which == "qwen":  # the edits start from more than one layer
    layers = {min(layer for layer, _ in row["random_neurons"][0])
              for sel in batched["selections"].values() for row in sel["modes"]["zero"].values()}
    assert len(layers) > 1, layers
  assert reference.pop("prompt") != batched.pop("prompt")  # each copy's own, the same file
  assert_same_verify(batched, reference)


def test_group_by_unknown_column_is_named(demo_run):
  from jaxskill.stages.verify import verify
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
                                         "verify": "skipped", "report": "skipped"}
  # The report drawn from the same files by the same code is kept; a damaged page is redrawn.
  page = (config.run_dir / "report.html").read_bytes()
  (config.run_dir / "report.html").write_bytes(page[:100])
  assert run(config, progress=False)["report"] == "ran"
  assert (config.run_dir / "report.html").read_bytes() == page
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
  assert shortcut_lib.auc([3, 4], [1, 3]) == 0.875  # (1 + 0.5 + 1 + 1) / 4


def _shortcut_sample(n: int, seed: int) -> dict:
  """Synthetic activations.npz: a checker neuron (fires on any wrong answer) and a shortcut one
  (fires on a wrong last digit only), over n examples in three equal groups."""
  rng = np.random.default_rng(seed)
  label = np.repeat([0, 1, 1], n // 3)  # correct, wrong in the last digit, wrong elsewhere
  last_only = np.repeat([0, 1, 0], n // 3)
  shortcut = 2.0 * last_only + rng.normal(0, 0.3, label.size)
  checker = 2.0 * label + rng.normal(0, 0.3, label.size)
  return {"metric_names": np.array(["label", "meta_last_digit_only"]),
          "metrics": np.stack([label, last_only], 1).astype(np.float32),
          "position_names": np.array(["last_input"]),
          "features": np.array([[1, 0, 7], [2, 0, 9]]),
          "activations": np.stack([checker, shortcut], 1)}


def test_last_digit_shortcut_tells_a_shortcut_from_a_checker():
  # 200 held-out examples a group: the elsewhere AUC's interval (+-0.06 around 0.5) fits within
  # 0.5 +- 0.1, as the verdict asks; with 50 a group it would not (+-0.11).
  acts, heldout = _shortcut_sample(300, 0), _shortcut_sample(600, 1)
  verdict = shortcut_lib.last_digit_shortcut(acts, heldout)
  assert verdict["verdict"] == "yes"
  assert (verdict["neurons"][0]["layer"], verdict["neurons"][0]["neuron"]) == (2, 9)
  assert verdict["neurons"][1]["shortcut"] is False  # the checker separates both kinds
  assert verdict["neurons"][1]["whole_answer"] is True
  h = verdict["heldout"]["shortcut"]
  assert h["groups"] == {"correct": 200, "wrong_last_digit": 200, "wrong_elsewhere": 200}
  assert h["auc_last_digit_wrong_95"][0] > 0.75  # 2.0 apart at noise 0.3: AUC near 1
  assert 0.4 <= h["auc_elsewhere_wrong_95"][0] < 0.5 < h["auc_elsewhere_wrong_95"][1] <= 0.6
  # 50 a group: the shortcut's elsewhere interval is too wide to show "no separation", but the
  # checker separates both kinds of wrong there: positive evidence of whole-answer checking.
  narrow = shortcut_lib.last_digit_shortcut(acts, _shortcut_sample(150, 1))
  assert narrow["verdict"] == "no" and narrow["heldout"]["whole_answer"]["neuron"] == 7
  only_checker = dict(acts, features=acts["features"][:1],
                      activations=acts["activations"][:, :1])
  assert shortcut_lib.last_digit_shortcut(only_checker, heldout)["verdict"] == "no"
  # Selected on these examples alone, or judged on groups of 10: not a finding either way.
  alone = shortcut_lib.last_digit_shortcut(acts)
  assert alone["verdict"] == "insufficient evidence" and "no held-out split" in alone["reason"]
  small = shortcut_lib.last_digit_shortcut(acts, _shortcut_sample(30, 2))
  assert small["verdict"] == "insufficient evidence" and "fewer than 20" in small["reason"]
  # On the held-out split both candidates are noise: nothing holds up, so no answer (this said
  # a confident "no" before the verdict needed positive evidence for it).
  noise = _shortcut_sample(150, 3)
  noise["activations"] = np.random.default_rng(4).normal(size=noise["activations"].shape)
  got = shortcut_lib.last_digit_shortcut(acts, noise)
  assert got["verdict"] == "insufficient evidence" and "holds up" in got["reason"]


def test_shortcut_verdict_is_never_yes_on_random_weights():
  """A random-weight model (the demo architecture, 20 initializations) has no skill to check:
  its candidates, selected on 60 training examples, do not hold up on 240 held-out ones, so the
  verdict is neither "yes" nor a confident "no". Candidates as find keeps them: the top 4
  neurons by |r| with each metric at the last input token."""
  import jax
  import jax.numpy as jnp
  import jaxskill
  from jaxskill.model import capture
  from jaxskill.tasks import encode as data_lib
  from jaxskill.tasks import arithmetic_verification
  demo, _ = jaxskill.load_model("demo")
  tok = jaxskill.load_tokenizer("demo")
  task = arithmetic_verification(operations=("plus",), digits=(2,), n_train=60, n_dev=0,
                                 n_test=240, seed=0)
  names = ("label", "meta_last_digit_only")
  layout = data_lib.Layout(4, "infix", 40)
  batches = {s: jax.tree.map(jnp.asarray, data_lib.encode(task, s, tok, layout).batch(names))
             for s in ("train", "test")}
  model = jaxskill.CausalLM(demo.config)
  probe = capture.Probe(model, "classification",
                        jnp.asarray(data_lib.verbalizer_ids(tok, task.verbalizer)),
                        ("last_input",), 4, names)
  run = jax.jit(probe)  # one program for every initialization: params are an argument
  answers = []
  for seed in range(20):
    params = model.init(jax.random.PRNGKey(seed), batches["train"].input_ids[:1])["params"]
    prompt = {"embeddings": 0.05 * jax.random.normal(jax.random.PRNGKey(100 + seed),
                                                      (4, demo.config.hidden_size))}
    npz = {}
    for split, batch in batches.items():
      acts, y = (np.asarray(v, np.float64) for v in run(prompt, params, batch))
      npz[split] = {"metric_names": np.array(names), "metrics": y, "activations": acts[:, :, 0],
                    "position_names": np.array(["last_input"])}
    x, y = npz["train"]["activations"].reshape(60, -1), npz["train"]["metrics"]
    xc, yc = x - x.mean(0), y - y.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
      r = (yc.T @ xc) / np.sqrt((yc ** 2).sum(0)[:, None] * (xc ** 2).sum(0)[None])
    features = sorted({int(f) for j in range(2) for f in np.argsort(-np.nan_to_num(
        np.abs(r[j]), nan=-1))[:4]})
    layers, neurons = np.divmod(features, demo.config.intermediate_size)
    for split in npz:
      flat = npz[split]["activations"].reshape(len(npz[split]["metrics"]), -1)
      npz[split]["activations"] = flat[:, features]
      npz[split]["features"] = np.stack([layers, np.zeros_like(layers), neurons], 1)
    answers.append(shortcut_lib.last_digit_shortcut(npz["train"], npz["test"])["verdict"])
  assert set(answers) == {"insufficient evidence"}, answers


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
