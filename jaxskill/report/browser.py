"""The neuron browser's data: `neurons.json`, which report.html also embeds and draws.

Built from what find and verify wrote (neurons.csv, correlations.npz, pvalues.npz, summary.json,
activations.npz, token_activations.npz, verify.json); runs no model. Plain JSON values (NaN as
null), numbers rounded to what the page shows or tests need:
  neurons   the table: the top-K (find.top_k) neurons of every metric, as in neurons.csv, with
            their r, p, FDR / FWER significance, and the verified top-K sets that hold them
  panels    the neurons with activations on every example (find.report_neurons per metric): r
            with every metric, densities per group of each metric that ranks them, and their top
            and bottom find.browser_examples examples with every token's activation
  examples  the examples of the panels: text, tokens, soft-prompt slots, sites, metric values
  layers    per layer and metric, neurons with max |r| over positions above the threshold, and
            neurons FDR-significant at some position
Size (see README, "The neuron browser"): about 0.2 kB per table row (top_k x metrics), plus per
panel neuron 2 x browser_examples x (tokens per row x ~10 bytes) and its density curves
(48 points per group), plus each shown example's tokens and text.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from jaxskill.runtime import files
from jaxskill.stats.densities import kde, metric_groups
from jaxskill.stats.selection import neuron_scores
from jaxskill.stats.significance import fdr_reject

VERSION = 1
GRID_POINTS = 48
TOKEN_DECIMALS = 6  # token activations: 5e-7 of rounding, well inside the 1e-5 the page promises


def feature_id(layer: int, position: str, neuron: int) -> str:
  """The browser's id of a (layer, position, neuron) feature, e.g. "L3-N216-last_input"."""
  return f"L{layer}-N{neuron}-{position}"


def _rounded(x, digits: int | None = None, sig: int | None = None):
  """A finite float rounded (to `digits` decimals or `sig` significant digits), or None."""
  if x is None or not math.isfinite(float(x)):
    return None
  x = float(x)
  return round(x, digits) if digits is not None else float(f"{x:.{sig}g}") if sig else x


def browser_data(run_dir: Path, correlations: dict, summary: dict, results: dict | None,
                 activations: dict | None) -> dict | None:
  """neurons.json's dict for a run directory (arrays already loaded by the report), or None
  without neurons.csv."""
  table = _read_neurons_csv(run_dir / "neurons.csv")
  if table is None:
    return None
  pvalues = files.load_npz(run_dir / "pvalues.npz") if (run_dir / "pvalues.npz").exists() else None
  tokens_path = run_dir / "token_activations.npz"
  tokens = files.load_npz(tokens_path) if tokens_path.exists() else None
  positions = list(summary.get("positions", []))
  threshold = float(summary.get("threshold", 0.5))
  q = next((m["significance"]["fdr_q"] for m in summary.get("metrics", {}).values()
            if m.get("significance")), None)
  fdr = ({name: fdr_reject(p, q) for name, p in pvalues.items()}
         if pvalues is not None and q is not None else None)
  rows = _neuron_rows(table, correlations, positions, pvalues, fdr, summary, results)
  panels, examples = ({}, {}) if activations is None or tokens is None else _panels(
      activations, tokens, correlations, rows)
  for row in rows:
    row["panel"] = row["id"] in panels
  return {"version": VERSION, "run": run_dir.name, "split": summary.get("split"),
          "metrics": list(correlations), "positions": positions, "threshold": threshold,
          "fdr_q": q, "verified": results is not None,
          "layers": _layers(correlations, fdr, threshold), "neurons": rows, "panels": panels,
          "examples": examples}


def _read_neurons_csv(path: Path) -> list[dict] | None:
  if not path.exists():
    return None
  with open(path, newline="") as f:
    return [{"rank": int(r["rank"]), "layer": int(r["layer"]), "position": r["position"],
             "neuron": int(r["neuron"]), "metric": r["metric"]} for r in csv.DictReader(f)]


def _neuron_rows(table, correlations, positions, pvalues, fdr, summary, results) -> list[dict]:
  """The table's rows: neurons.csv's, with r at full precision and the significance columns."""
  verified = _verified_sets(results)
  out = []
  for row in table:
    name, layer, neuron = row["metric"], row["layer"], row["neuron"]
    k = positions.index(row["position"]) if row["position"] in positions else 0
    r = float(correlations[name][layer, k, neuron])
    level = ((summary.get("metrics", {}).get(name) or {}).get("significance") or {}).get(
        "null_max_abs_r_95")
    out.append({
        "id": feature_id(layer, row["position"], neuron), **row, "r": _rounded(r, 6),
        "p": None if pvalues is None else _rounded(pvalues[name][layer, k, neuron], sig=3),
        "fdr": None if fdr is None else bool(fdr[name][layer, k, neuron]),
        "fwer": None if level is None else bool(abs(r) > level),
        "verification": verified.get((layer, neuron), [])})
  return out


def _verified_sets(results: dict | None) -> dict[tuple[int, int], list[dict]]:
  """(layer, neuron) -> the verification rows (selection, mode at verify.k) whose top-K set
  holds that neuron; verify perturbs a neuron at every position, so the position plays no
  part."""
  out: dict[tuple[int, int], list[dict]] = {}
  if results is None:
    return out
  k = int(results["k"])
  for sel, per_sel in results["selections"].items():
    for layer, neuron in per_sel["neurons"][:k]:
      for mode, per_k in per_sel["modes"].items():
        row = per_k[str(k)]
        out.setdefault((int(layer), int(neuron)), []).append({
            "selection": sel, "mode": mode, "k": k, "drop": _rounded(row["accuracy_drop"], 4),
            "random_drop": _rounded(row["random_accuracy_drop_mean"], 4),
            "p": _rounded(row.get("p_empirical"), 4), "verdict": row.get("verdict")})
  return out


def _layers(correlations: dict, fdr: dict | None, threshold: float) -> list[dict]:
  """Per layer: neurons with max |r| over positions > threshold, and neurons FDR-significant
  at some position, per metric."""
  above = {name: np.nansum(neuron_scores(r)[0] > threshold, axis=1)
           for name, r in correlations.items()}
  significant = (None if fdr is None else
                 {name: reject.any(axis=1).sum(axis=1) for name, reject in fdr.items()})
  layers = next(iter(correlations.values())).shape[0]
  return [{"layer": layer, "above_threshold": {n: int(c[layer]) for n, c in above.items()},
           "significant_fdr": None if significant is None else
           {n: int(c[layer]) for n, c in significant.items()}} for layer in range(layers)]


def _panels(activations: dict, tokens: dict, correlations: dict, rows: list[dict]
            ) -> tuple[dict, dict]:
  """(panels, examples) of the features of token_activations.npz (those of activations.npz)."""
  names = [str(n) for n in activations["metric_names"]]
  position_names = [str(p) for p in activations["position_names"]]
  row_of = {int(e): i for i, e in enumerate(tokens["examples"])}
  ranked_by: dict[str, list[str]] = {}
  for row in rows:
    ranked_by.setdefault(row["id"], []).append(row["metric"])
  panels = {}
  for j, (layer, pos, neuron) in enumerate(tokens["features"]):
    fid = feature_id(int(layer), position_names[pos], int(neuron))
    a = activations["activations"][:, j]
    shown = {side: [_shown(int(e), j, a, tokens, row_of) for e in tokens[side][j]]
             for side in ("top", "bottom")}
    token_values = [v for side in shown.values() for ex in side for v in ex["tokens"]]
    panels[fid] = {
        "layer": int(layer), "position": position_names[pos], "neuron": int(neuron),
        "r": {name: _rounded(r[layer, pos, neuron], 6) for name, r in correlations.items()},
        "density": [_density(a, activations["metrics"][:, names.index(m)], m)
                    for m in ranked_by.get(fid, []) if m in names],
        **shown, "max_abs": max((abs(v) for v in token_values), default=0.0)}
  return panels, _examples(activations, tokens, names)


def _shown(example: int, j: int, a: np.ndarray, tokens: dict, row_of: dict) -> dict:
  """One example of a panel: its activation at the site and every unmasked token's."""
  i = row_of[example]
  kept = tokens["attention_mask"][i] > 0
  return {"example": str(example), "activation": _rounded(a[example], TOKEN_DECIMALS),
          "tokens": [round(float(v), TOKEN_DECIMALS)
                     for v in tokens["activations"][i, kept, j]]}


def _density(a: np.ndarray, values: np.ndarray, metric: str) -> dict:
  """Activation densities of one feature (`a` `[n]`) per group of `metric`'s values `[n]`."""
  span = np.ptp(a)
  grid = np.linspace(a.min() - 0.1 * span - 1e-6, a.max() + 0.1 * span + 1e-6, GRID_POINTS)
  groups = []
  for label, mask in metric_groups(values, metric):
    if mask.sum() >= 2:
      density = kde(a[mask], grid)
      density[density < 1e-4 * density.max()] = 0.0  # below a pixel of the plot
      groups.append({"label": label, "n": int(mask.sum()),
                     "density": [_rounded(v, sig=4) for v in density]})
  return {"metric": metric, "grid": [_rounded(v, sig=5) for v in grid], "groups": groups}


def _examples(activations: dict, tokens: dict, names: list[str]) -> dict:
  """The examples of token_activations.npz: text, tokens and prompt slots of the unmasked
  positions, each capture site's index among them, and the metric values."""
  position_names = [str(p) for p in activations["position_names"]]
  out = {}
  for i, example in enumerate(tokens["examples"]):
    kept = tokens["attention_mask"][i] > 0
    index = np.cumsum(kept) - 1  # a column's index among the kept tokens
    out[str(int(example))] = {
        "text": str(activations["texts"][example]),
        "tokens": [str(t) for t in tokens["tokens"][i, kept]],
        "prompt": [bool(p >= 0) for p in tokens["prompt_index"][i, kept]],
        "sites": {name: int(index[col]) for name, col in zip(position_names, tokens["sites"][i])},
        "metrics": {name: _rounded(v, 6)
                    for name, v in zip(names, activations["metrics"][example])}}
  return out


def script_json(data: dict) -> str:
  """`data` as JSON text safe inside a <script> element: "<", ">" and "&" as \\u escapes, so
  that no text from the run (an input holding "</script>") can end the element."""
  import json
  return (json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")
          .replace(">", "\\u003e").replace("&", "\\u0026"))
