"""The report of a run directory: PNG figures and one self-contained `report.html`.

Reads only what the earlier stages wrote (config.yaml, train_summary.json, metrics.jsonl,
correlations.npz, summary.json, activations.npz, verify.json); runs no model.
Figures:
  kde_<metric>.png   activation density (gaussian kernel) of the metric's top neurons, one curve
                     per label value or metric tertile (the article's figure)
  r_hist.png         histogram of max-over-positions |r| per metric, threshold marked
  layers.png         neurons above the threshold per layer, per metric
  verify.png         accuracy with the top-K perturbed against random-K draws (mean, spread)
  dose.png           the same over the list of K
Tables: top-activating examples of the top neurons, seed-stability overlap, the degenerate
metrics find flagged (`jaxskill.stats.metric_checks`), and for arithmetic verification the
last-digit shortcut verdict find wrote into summary.json (`jaxskill.stats.shortcut`). A prompt
that did not learn
(train_summary.json's prompt_learned false, `jaxskill.stats.learning`) gets a banner at the top, and
every verdict below it says it was computed on an untrained prompt.
The page is `report_data`'s plain dict rendered through templates/report.html.j2 with
autoescape on, so text from the run's files (inputs, metric names, config) cannot inject HTML.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import io
import json
from dataclasses import dataclass
from pathlib import Path

import jinja2
import markupsafe
import numpy as np

from jaxskill.config import load_config, seed_runs
from jaxskill.report import browser
from jaxskill.runtime import files
from jaxskill.stats import learning, metric_checks
from jaxskill.stats.densities import kde, metric_groups  # noqa: F401 (kde: this module's API)
from jaxskill.stats.selection import neuron_scores
from jaxskill.stats.shortcut import heldout_text


# --- figures --------------------------------------------------------------------------------

# The figures of every report (besides kde_<metric>.png), some only with verify.json.
_FIGURE_FILES = ("r_hist.png", "layers.png", "verify.png", "dose.png")


def _png(fig, tight: bool = True) -> bytes:
  """`tight`: crop to what is drawn (bbox_inches="tight" draws the figure twice: about half
  of a report's time goes to the per-metric densities, whose margins are set instead)."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110, **({"bbox_inches": "tight"} if tight else {}))
  import matplotlib.pyplot as plt
  plt.close(fig)
  return buf.getvalue()


def figure_kde(activations: dict, metric: str, per_metric: int = 4) -> bytes | None:
  """PNG: activation densities of the `per_metric` kept features most correlated with `metric`,
  one curve per group of `metric_groups`; None without that metric or a defined correlation.
  `activations`: activations.npz's arrays (features int `[len(features), 3]` (layer, position
  index, neuron), activations `[n, len(features)]`, metrics `[n, m]`, metric_names `[m]`,
  position_names `[k]`)."""
  import matplotlib.pyplot as plt
  names = [str(n) for n in activations["metric_names"]]
  if metric not in names:
    return None
  values = activations["metrics"][:, names.index(metric)]
  feats = activations["features"]
  r_order = _features_of_metric(activations, metric)[:per_metric]
  if not r_order:
    return None
  fig, axes = plt.subplots(1, len(r_order), figsize=(3.6 * len(r_order), 2.8), squeeze=False)
  groups = [(label, mask) for label, mask in metric_groups(values, metric) if mask.sum() >= 2]
  for ax, j in zip(axes[0], r_order):
    a = activations["activations"][:, j]
    grid = np.linspace(a.min() - 0.1 * np.ptp(a) - 1e-6, a.max() + 0.1 * np.ptp(a) + 1e-6, 200)
    for label, mask in groups:
      ax.plot(grid, kde(a[mask], grid), label=f"{label} (n={mask.sum()})")
    layer, pos, neuron = feats[j]
    ax.set_title(f"L{layer} N{neuron} @ {activations['position_names'][pos]}", fontsize=9)
    ax.set_xlabel("activation")
    ax.locator_params(nbins=4)  # tick labels are most of the drawing time
  # The groups are the metric's, the same in every panel: one legend.
  axes[0][0].legend(fontsize=7)
  axes[0][0].set_ylabel("density")
  width, height = fig.get_size_inches()  # margins in inches: labels, titles, the suptitle
  fig.subplots_adjust(left=0.95 / width, right=1 - 0.15 / width, bottom=0.5 / height,
                      top=1 - 0.65 / height, wspace=0.35)
  fig.suptitle(f"top neurons of {metric}", fontsize=10, y=1 - 0.1 / height)
  return _png(fig, tight=False)


def _features_of_metric(activations: dict, metric: str) -> list[int]:
  """Indices of the kept features, most correlated with `metric` first (on the kept data)."""
  names = [str(n) for n in activations["metric_names"]]
  y = activations["metrics"][:, names.index(metric)]
  ok = np.isfinite(y)
  scores = []
  for j in range(activations["activations"].shape[1]):
    a = activations["activations"][ok, j]
    r = np.corrcoef(a, y[ok])[0, 1] if a.std() > 0 and y[ok].std() > 0 else np.nan
    scores.append(abs(r))
  order = np.argsort(-np.nan_to_num(np.asarray(scores), nan=-1.0))
  return [int(j) for j in order if np.isfinite(scores[j])]


def figure_r_hist(correlations: dict, threshold: float, null_levels: dict | None = None) -> bytes:
  """PNG: histogram (log counts) of max-over-positions |r| per metric, `threshold` marked, and
  each metric's permutation-null level (95th percentile of max |r|) as a dotted line in its
  colour. `correlations`: {metric: r `[l, k, i]`}, as in correlations.npz; `null_levels`:
  {metric: level or None}."""
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8.5, 3.2))
  bins = np.linspace(0, 1, 51)
  for name, r in correlations.items():
    scores = neuron_scores(r)[0].ravel()
    scores = scores[np.isfinite(scores)]
    if scores.size:
      _, _, patches = ax.hist(scores, bins=bins, histtype="step", label=name)
      level = (null_levels or {}).get(name)
      if level is not None:
        ax.axvline(level, color=patches[0].get_edgecolor(), linestyle=":")
  ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold}")
  ax.set_yscale("log")
  ax.set_xlabel("|r| (max over positions)")
  ax.set_ylabel("neurons")
  if any(v is not None for v in (null_levels or {}).values()):
    ax.plot([], [], color="gray", linestyle=":", label="null max|r| 95% (per metric)")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  return _png(fig)


def figure_layers(correlations: dict, threshold: float) -> bytes:
  """PNG: per layer and metric, how many neurons have max-over-positions |r| > `threshold`.
  `correlations`: {metric: r `[l, k, i]`}, as in correlations.npz."""
  import matplotlib.pyplot as plt
  names = list(correlations)
  layers = next(iter(correlations.values())).shape[0]
  fig, ax = plt.subplots(figsize=(6.5, 3.2))
  width = 0.8 / max(len(names), 1)
  for j, name in enumerate(names):
    scores = neuron_scores(correlations[name])[0]
    counts = np.nansum(scores > threshold, axis=1)
    ax.bar(np.arange(layers) + j * width, counts, width=width, label=name)
  ax.set_xlabel("layer")
  ax.set_ylabel(f"neurons with |r| > {threshold}")
  ax.set_xticks(np.arange(layers) + 0.4 - width / 2, [str(i) for i in range(layers)])
  ax.legend(fontsize=7)
  return _png(fig)


def figure_verify(results: dict) -> bytes:
  """PNG: verify.json's accuracy with the top-K perturbed against the random-K draws (mean, std
  and each draw), per selection and mode, at its K; the unperturbed accuracy marked."""
  import matplotlib.pyplot as plt
  k = str(results["k"])
  cells = [(sel, mode) for sel, s in results["selections"].items() for mode in s["modes"]]
  fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(cells) + 1.5), 3.4))
  base = results["baseline"]["accuracy"]
  ax.axhline(base, color="k", linestyle="--", label=f"no perturbation ({base:.3f})")
  for i, (sel, mode) in enumerate(cells):
    row = results["selections"][sel]["modes"][mode][k]
    draws = [base - d for d in row["random"]["accuracy_drop"]["values"]]
    ax.bar(i - 0.18, row["top"]["accuracy"], width=0.36, color="C3",
           label=f"top-{k}" if i == 0 else None)
    ax.bar(i + 0.18, float(np.mean(draws)), width=0.36, color="C0",
           yerr=float(np.std(draws, ddof=1)), capsize=4,
           label=f"random-{k} (mean +- std, {len(draws)} draws)" if i == 0 else None)
    ax.scatter(np.full(len(draws), i + 0.18), draws, color="k", s=8, zorder=3)
  ax.set_xticks(range(len(cells)), [f"{_wrap(sel)}\n{mode}" for sel, mode in cells], fontsize=7)
  ax.set_ylabel(f"{results['split']} accuracy")
  lows = [results["selections"][sel]["modes"][mode][k]["top"]["accuracy"] for sel, mode in cells]
  ax.set_ylim(max(0.0, min(lows + [base]) - 0.1), min(1.0, base + 0.05) + 0.01)
  ax.legend(fontsize=7, loc="lower left")
  return _png(fig)


def _wrap(name: str, width: int = 16) -> str:
  """Long metric names over several lines, broken at underscores."""
  lines, line = [], ""
  for part in name.split("_"):
    if line and len(line) + len(part) + 1 > width:
      lines.append(line + "_")
      line = part
    else:
      line = f"{line}_{part}" if line else part
  return "\n".join(lines + [line])


def figure_dose(results: dict) -> bytes:
  """PNG: verify.json's accuracy over its list of K, top-K against random-K (mean +- std), one
  panel per selection and mode."""
  import matplotlib.pyplot as plt
  cells = [(sel, mode) for sel, s in results["selections"].items() for mode in s["modes"]]
  fig, axes = plt.subplots(1, len(cells), figsize=(3.2 * len(cells), 2.8), squeeze=False,
                           sharey=True)
  ks = results["k_list"]
  for ax, (sel, mode) in zip(axes[0], cells):
    per_k = results["selections"][sel]["modes"][mode]
    top = [per_k[str(k)]["top"]["accuracy"] for k in ks]
    mean = np.array([per_k[str(k)]["random"]["accuracy"]["mean"] for k in ks])
    std = np.array([per_k[str(k)]["random"]["accuracy"]["std"] for k in ks])
    ax.plot(ks, top, "o-", color="C3", label="top-K")
    ax.plot(ks, mean, "o-", color="C0", label="random-K")
    ax.fill_between(ks, mean - std, mean + std, color="C0", alpha=0.25)
    ax.axhline(results["baseline"]["accuracy"], color="k", linestyle="--")
    ax.set_xscale("log")
    ax.set_xlabel("K")
    ax.set_title(f"{_wrap(sel, 28)}, {mode}", fontsize=8)
  axes[0][0].set_ylabel("accuracy")
  axes[0][0].legend(fontsize=7)
  return _png(fig)


# --- the page's data -------------------------------------------------------------------------
# Everything the page shows, gathered as plain values (strings already formatted) so that the
# template only lays it out and autoescapes it; no HTML is built here.

@dataclass(frozen=True)
class Figure:
  """One figure of the report: its PNG, the file name it gets beside report.html, its caption."""
  file: str  # written beside report.html, and embedded in it too
  caption: str
  png: bytes

  @property
  def png_base64(self) -> str:
    """The PNG as base64 text, for the data URI that embeds it in report.html."""
    return base64.b64encode(self.png).decode()


def _table(header: list, rows: list[list]) -> dict:
  """A table as strings: what str() gives, as the page has always shown (lists, True, None)."""
  return {"header": [str(h) for h in header], "rows": [[str(c) for c in row] for row in rows]}


def number_text(x, digits: int = 4) -> str:
  """`x` with `digits` decimals, or "n/a" for None (the page's and the command line's)."""
  return "n/a" if x is None else f"{x:.{digits}f}"


def _load_json(path: Path):
  return files.read_json(path) if path.exists() else None


def train_summaries(run_dir: Path) -> list[tuple[str, dict]]:
  """(run name, train_summary.json) of the prompt(s) of a run directory: its own, or with
  find.seeds one per seed run `<name>-seed<s>` beside it (config.yaml says which)."""
  saved = run_dir / "config.yaml"
  if not saved.exists():
    dirs = [run_dir]
  else:  # beside this directory, wherever it was moved
    here = dataclasses.replace(load_config(saved), out_dir=str(run_dir.parent), name=run_dir.name)
    dirs = [c.run_dir for c in seed_runs(here)]
  return [(d.name, files.read_json(d / "train_summary.json")) for d in dirs
          if (d / "train_summary.json").exists()]


def top_examples(activations: dict, j: int, n: int = 5) -> list[tuple[str, float]]:
  """The `n` examples with the largest activation of kept feature j, (text, activation), from
  activations.npz's arrays (activations `[examples, len(features)]`, texts `[examples]`)."""
  a = activations["activations"][:, j]
  order = np.argsort(-a, kind="stable")[:n]
  return [(str(activations["texts"][i]), float(a[i])) for i in order]


def _figures(correlations: dict, summary: dict, results: dict | None,
             activations: dict | None) -> list[Figure]:
  threshold = float(summary.get("threshold", 0.5))
  figures = []
  if activations is not None:
    for name in [str(n) for n in activations["metric_names"]]:
      png = figure_kde(activations, name)
      if png is not None:
        figures.append(Figure(f"kde_{name}.png", f"Activation density of the top neurons of "
                              f"{name}, per {name} value or tertile "
                              f"({summary.get('split', 'train')} split)", png))
  null_levels = {name: (m.get("significance") or {}).get("null_max_abs_r_95")
                 for name, m in summary.get("metrics", {}).items()}
  figures.append(Figure("r_hist.png", "max-over-positions |r| of every neuron, per metric; "
                        "dotted: the 95th percentile of max |r| under the permutation null",
                        figure_r_hist(correlations, threshold, null_levels)))
  figures.append(Figure("layers.png", f"neurons with |r| > {threshold} per layer",
                        figure_layers(correlations, threshold)))
  if results is not None and results["selections"]:
    k = results["k"]
    figures.append(Figure("verify.png", f"{results['split']} accuracy with the top-{k} neurons "
                          f"perturbed vs random-{k} draws matched per layer",
                          figure_verify(results)))
    figures.append(Figure("dose.png", "dose-response over K", figure_dose(results)))
  return figures


def _training_table(trained: list[tuple[str, dict]]) -> dict | None:
  if not trained:
    return None
  return _table(
      ["run", "steps", "dev accuracy at init", "best dev accuracy", "prompt learned?",
       "train examples", "seconds"],
      [[name, t["steps"], number_text(t.get("dev_accuracy_at_init")),
        number_text(t.get("best_dev_accuracy")), _learned_cell(t), t.get("n_train"),
        f"{t.get('seconds', 0):.1f}"]
       for name, t in trained])


def _learned_cell(t: dict) -> str:
  """"yes" / "no" / "not tested" with the test's numbers; "n/a" for a run without the test."""
  if "prompt_learned" not in t:
    return "n/a"
  answer = {True: "yes", False: "no", None: "not tested"}[t["prompt_learned"]]
  return f"{answer}: {learning.describe(t)}"


def _neuron_table(summary: dict) -> dict:
  threshold = float(summary.get("threshold", 0.5))
  rows = [[name, m["n"], "undefined (constant metric)" if m["max_abs_r"] is None
           else f"{m['max_abs_r']:.4f}", *_significance_cells(m, threshold), m["top_k"][:3]]
          for name, m in summary.get("metrics", {}).items()]
  return _table(["metric", "examples", "max |r|", f"|r| > {threshold} (null expected)",
                 "significant, FDR", "significant, FWER 5% (null max |r|)",
                 "top (layer, neuron)"], rows)


def _significance_cells(metric: dict, threshold: float) -> list[str]:
  """The neuron table's significance columns for one metric of summary.json ("n/a" where the
  run has none: a mean over seeds, or an older run)."""
  s = metric.get("significance")
  if not s:
    return [str(metric["above_threshold"]), "n/a", "n/a"]
  expected = s["threshold_counts"].get(f"{threshold:g}", {}).get("null_expected")
  counts = f"{metric['above_threshold']} ({'n/a' if expected is None else f'{expected:.1f}'})"
  fdr = f"{s['significant_fdr']} (q = {s['fdr_q']:g})"
  fwer = ("n/a (no permutations)" if s["null_max_abs_r_95"] is None
          else f"{s['significant_fwer']} (|r| > {s['null_max_abs_r_95']:.3f})")
  return [counts, fdr, fwer]


def _cells(results: dict):
  """(selection, mode, row of verify.json at K) of every verified selection and mode."""
  k = str(results["k"])
  for sel, per_sel in results["selections"].items():
    for mode, per_k in per_sel["modes"].items():
      yield sel, mode, per_k[k]


def _verification(results: dict | None) -> dict | None:
  if results is None:
    return None
  k, base = results["k"], results["baseline"]["accuracy"]
  rows = [[sel, mode, f"{base:.4f}", f"{row['top']['accuracy']:.4f}",
           f"{row['accuracy_drop']:+.4f}",
           f"{row['random_accuracy_drop_mean']:+.4f} +- {row['random_accuracy_drop_std']:.4f}",
           "n/a" if row["drop_ratio"] is None else f"{row['drop_ratio']:.2f}",
           number_text(row.get("drop_z"), 1), *_verdict_cells(row)]
          for sel, mode, row in _cells(results)]
  table = _table(["selected by", "mode", "accuracy", f"top-{k} perturbed", "drop",
                  f"random-{k} drop (mean +- std, {results['random_draws']} draws)",
                  "drop / mean random drop", "(drop - mean random drop) / random std",
                  "p vs random drops", "top - random drop, 95% bootstrap", "verdict"], rows)
  return {"table": table, "skipped": list(results.get("skipped", {}).items()),
          "groups": _group_table(results) if results.get("group_by") else None,
          "protocol": _protocol(results)}


def _verdict_cells(row: dict) -> list[str]:
  """p, interval and verdict of one verify.json row ("n/a" in older results)."""
  if "verdict" not in row:
    return ["n/a", "n/a", "n/a"]
  lo, hi = row["difference_95"]
  return [f"{row['p_empirical']:.3f}", f"[{lo:+.4f}, {hi:+.4f}]", verdict_text(row)]


def verdict_text(row: dict) -> str:
  """A verify.json row's verdict, marked when it was computed on an untrained prompt."""
  return f"{row['verdict']} ({UNTRAINED})" if row.get("untrained_prompt") else row["verdict"]


def _protocol(results: dict) -> str:
  """How the drops were made and judged, from verify.json."""
  scale = "each neuron's std" if results.get("noise_scale") == "neuron_std" else "1 (absolute)"
  text = (f"Mean ablation: the train-split mean over {results.get('mean_over', 'all')} "
          f"positions; noise: std {results.get('sigma', 0.1):g} x {scale}.")
  if results.get("verdict_rule"):
    text += f" Verdict: {results['verdict_rule']}."
  return text


def _group_table(results: dict) -> dict:
  k, base = results["k"], results["baseline"]["group_accuracy"]
  rows = [[sel, mode, g, f"{base[g]:.4f}", f"{acc:.4f}",
           f"{row['random']['group_accuracy'][g]:.4f}"]
          for sel, mode, row in _cells(results)
          for g, acc in row["top"].get("group_accuracy", {}).items()]
  return _table(["selected by", "mode", "group", "no perturbation", f"top-{k}",
                 f"random-{k} mean"], rows)


UNTRAINED = "computed on an untrained prompt"


def _shortcut(summary: dict) -> dict | None:
  """The shortcut section from summary.json's "shortcut" (written by find), None without one."""
  verdict = summary.get("shortcut")
  if not verdict:
    return None
  rows = [[r["layer"], r["position"], r["neuron"], number_text(r["auc_last_digit_wrong"], 3),
           number_text(r["auc_elsewhere_wrong"], 3), r["shortcut"], r["whole_answer"]]
          for r in verdict["neurons"][:8]]
  table = _table(["layer", "position", "neuron", "AUC correct vs last-digit-wrong",
                  "AUC correct vs elsewhere-wrong", "shortcut candidate (selection split)",
                  "whole-answer candidate (selection split)"], rows)
  held = [heldout_text(verdict["heldout"][kind]) for kind in ("shortcut", "whole_answer")]
  return {"answer": verdict["verdict"], "reason": verdict["reason"],
          "untrained": bool(verdict.get("untrained_prompt")),
          "criterion": verdict["criterion"], "groups": json.dumps(verdict["groups"]),
          "table": table, "heldout": [h for h in held if h]}


def _untrained_banner(trained: list[tuple[str, dict]]) -> list[str]:
  """One line per prompt that did not learn: its accuracies and p (`learning.describe`)."""
  return [f"The prompt of {name} did not learn: {learning.describe(t)}. Every result below is "
          f"{UNTRAINED}: the neurons, verdicts and shortcut answer say nothing about the skill."
          for name, t in trained if t.get("prompt_learned") is False]


def _degenerate(summary: dict) -> list[str] | None:
  """summary.json's degenerate metrics in words (None for an older run without the check)."""
  entries = summary.get("degenerate_metrics")
  return None if entries is None else [metric_checks.describe(e) for e in entries]


def _examples(activations: dict | None) -> list[dict] | None:
  """The top neuron of each metric with the inputs that activate it most."""
  if activations is None:
    return None
  out = []
  for name in [str(n) for n in activations["metric_names"]]:
    for j in _features_of_metric(activations, name)[:1]:
      layer, pos, neuron = activations["features"][j]
      out.append({"metric": name, "layer": int(layer), "neuron": int(neuron),
                  "position": str(activations["position_names"][pos]),
                  "table": _table(["activation", "input"], [[f"{a:.4f}", text] for text, a
                                                            in top_examples(activations, j)])})
  return out


def _seed_overlap(summary: dict) -> dict | None:
  overlap = summary.get("seed_overlap_iou_top_k")
  if not overlap:
    return None
  ranks = summary.get("seed_rank_correlation") or {}
  return {"seeds": str(summary.get("seeds")),
          "table": _table(["metric", "IoU of the top-K sets", "rank correlation of all neurons"],
                          [[m, f"{v:.3f}", number_text(ranks.get(m), 3)]
                           for m, v in overlap.items()])}


def report_data(run_dir: str | Path) -> dict:
  """Everything report.html shows, from the files of `run_dir`: plain values, no HTML."""
  run_dir = Path(run_dir)
  if not (run_dir / "correlations.npz").exists():
    raise FileNotFoundError(f"{run_dir}: no correlations.npz; run `jaxskill find` (or "
                            "`jaxskill run`) with this run's config first")
  import matplotlib
  matplotlib.use("Agg")  # no display: files only
  correlations = files.load_npz(run_dir / "correlations.npz")
  summary = _load_json(run_dir / "summary.json") or {}
  results = _load_json(run_dir / "verify.json")
  activations = (files.load_npz(run_dir / "activations.npz")
                 if (run_dir / "activations.npz").exists() else None)
  config = run_dir / "config.yaml"
  neurons = browser.browser_data(run_dir, correlations, summary, results, activations)
  trained = train_summaries(run_dir)
  return {"title": run_dir.name,
          "untrained": _untrained_banner(trained),
          "degenerate": _degenerate(summary),
          "browser": neurons,
          "browser_json": None if neurons is None else markupsafe.Markup(
              browser.script_json(neurons)),
          "training": _training_table(trained),
          "neurons": _neuron_table(summary),
          "verification": _verification(results),
          "shortcut": _shortcut(summary),
          "figures": _figures(correlations, summary, results, activations),
          "examples": _examples(activations),
          "seed_overlap": _seed_overlap(summary),
          "config_text": config.read_text() if config.exists() else ""}


# --- the page --------------------------------------------------------------------------------

@functools.cache
def _environment() -> jinja2.Environment:
  # autoescape=True rather than select_autoescape(): that one decides by the file's extension,
  # and ".j2" is not ".html", so it would leave report.html.j2 unescaped.
  return jinja2.Environment(loader=jinja2.PackageLoader("jaxskill.report", "templates"),
                            autoescape=True, undefined=jinja2.StrictUndefined)


def render(data: dict) -> str:
  """report.html's text for `report_data`'s dict."""
  return _environment().get_template("report.html.j2").render(**data)


def report(run_dir: str | Path, out: str | Path | None = None) -> Path:
  """Writes the PNGs, neurons.json (the neuron browser's data) and report.html into `out` (the
  run directory by default; another directory reports a run that cannot be written to);
  returns the HTML's path. Everything is computed before the first file is written, so a
  report that fails leaves the old one whole; figures of an earlier report that this one does
  not draw (a metric since dropped) are removed."""
  run_dir = Path(run_dir)
  out = run_dir if out is None else Path(out)
  data = report_data(run_dir)
  html = render(data)
  browser_json = None if data["browser"] is None else json.dumps(
      data["browser"], separators=(",", ":"), allow_nan=False) + "\n"  # compact: for tools
  drawn = {figure.file for figure in data["figures"]}
  for old in [*out.glob("kde_*.png"), *(out / n for n in _FIGURE_FILES)]:
    if old.name not in drawn and old.exists():
      old.unlink()
  for figure in data["figures"]:
    files.write_bytes(out / figure.file, figure.png)
  if browser_json is not None:
    files.write_text(out / "neurons.json", browser_json)
  else:
    (out / "neurons.json").unlink(missing_ok=True)
  return files.write_text(out / "report.html", html)
