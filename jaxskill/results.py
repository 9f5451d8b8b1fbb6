"""A run's results in a notebook: `Run.open(dir)` reads a run directory's outputs, lazily, as
arrays with named axes and plain records; `Run.create(config)` runs its stages through the
pipeline (each skipped when done, as `jaxskill run` does).

    run = Run.create("configs/demo.yaml", ["train.steps=20"]).verify()
    run.top_neurons("label", 5)          # [Neuron(metric, layer, position, neuron, r, p)]
    r = run.correlations["label"]        # NamedArray: values [layer, position, neuron]
    [row.verdict for row in run.verification]

Shapes: l layers, k capture positions, i neurons per layer, p prompt tokens, h hidden size.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from jaxskill.config import RunConfig, load_config, seed_runs
from jaxskill.runtime import files, pipeline
from jaxskill.stats.selection import neuron_scores, top_k

AXES = ("layer", "position", "neuron")


@dataclasses.dataclass(frozen=True)
class NamedArray:
  """One metric's per-neuron values (r, or its p-value) with the names of their axes (`AXES`)
  and of the capture positions along the second."""
  values: Float[np.ndarray, "l k i"]
  positions: tuple[str, ...]
  axes: tuple[str, ...] = AXES

  def __array__(self, dtype=None, copy=None) -> np.ndarray:
    return np.asarray(self.values, dtype)

  def at(self, layer: int, position: str | int, neuron: int) -> float:
    """The value of one neuron at a capture position (its name, e.g. "last_input", or index)."""
    k = self.positions.index(position) if isinstance(position, str) else position
    return float(self.values[layer, k, neuron])


@dataclasses.dataclass(frozen=True)
class Neuron:
  """A ranked neuron: its r with `metric` at the position where |r| is largest, and that r's
  p-value (None where the run has none: a mean over seeds)."""
  metric: str
  layer: int
  position: str
  neuron: int
  r: float
  p: float | None


@dataclasses.dataclass(frozen=True)
class VerifyRow:
  """One verification: the top-K neurons of `selection` perturbed by `mode`, against random
  sets of K matched per layer (verify.json's row, flattened)."""
  selection: str
  mode: str
  k: int
  neurons: list[tuple[int, int]]
  accuracy_drop: float
  random_drop_mean: float | None
  random_drop_std: float | None
  p_empirical: float | None
  verdict: str
  untrained_prompt: bool | None


class Run:
  """A run directory's results, read when first asked for (and read anew after a stage runs)."""

  def __init__(self, config: RunConfig):
    self.config = config
    self._cache: dict[str, Any] = {}

  @classmethod
  def open(cls, run_dir: str | Path) -> "Run":
    """A finished run (its config.yaml, train and find done under it; verify if it ran): a
    stale or unfinished stage is refused by name, as `jaxskill report` does."""
    return cls(pipeline.checked_run_dir(run_dir))

  @classmethod
  def create(cls, config: RunConfig | str | Path, overrides: list[str] = ()) -> "Run":
    """A run of `config` (a RunConfig, or a YAML file with `key=value` overrides); nothing runs
    until a stage is asked for."""
    if not isinstance(config, RunConfig):
      config = load_config(config, list(overrides))
    elif overrides:
      raise ValueError("Run.create: overrides go with a config file, not a RunConfig")
    return cls(config)

  @property
  def run_dir(self) -> Path:
    return self.config.run_dir

  # --- stages, through the pipeline ---------------------------------------------------------

  def _through(self, stage: str, progress: bool) -> "Run":
    pipeline.run(self.config, until=stage, progress=progress)
    self._cache.clear()
    return self

  def train(self, progress: bool = False) -> "Run":
    """Trains the prompt(s), unless done; returns this run."""
    return self._through("train", progress)

  def find(self, progress: bool = False) -> "Run":
    """Training, then discovery, each unless done; returns this run."""
    return self._through("find", progress)

  def verify(self, progress: bool = False) -> "Run":
    """Training, discovery, then verification, each unless done; returns this run."""
    return self._through("verify", progress)

  def report(self, progress: bool = False) -> Path:
    """Every stage and the report page; returns the page's path."""
    self._through("report", progress)
    return self.run_dir / "report.html"

  # --- results ------------------------------------------------------------------------------

  def _read(self, name: str, read):
    if name not in self._cache:
      self._cache[name] = read()
    return self._cache[name]

  def _file(self, name: str, run_dir: Path | None = None) -> Path:
    path = (run_dir or self.run_dir) / name
    if not path.exists():
      stage = {"correlations.npz": "find", "summary.json": "find", "verify.json": "verify",
               "prompt_best.npy": "train", "train_summary.json": "train"}.get(name, "find")
      raise FileNotFoundError(f"{path}: not found; run the {stage} stage first "
                              f"(Run.{stage}() or `jaxskill run`)")
    return path

  @property
  def summary(self) -> dict:
    """summary.json: find's per-metric summary, its checks and the run's facts."""
    return self._read("summary", lambda: json.loads(self._file("summary.json").read_text()))

  @property
  def positions(self) -> tuple[str, ...]:
    """The names of the capture positions (the second axis of every NamedArray)."""
    return tuple(self.summary["positions"])

  @property
  def metrics(self) -> tuple[str, ...]:
    """The metrics correlated, in find's order."""
    return tuple(self.summary["metrics"])

  def _named(self, path: Path) -> dict[str, NamedArray]:
    arrays = files.load_npz(path)
    return {m: NamedArray(np.asarray(arrays[m]), self.positions) for m in self.metrics
            if m in arrays}

  @property
  def correlations(self) -> dict[str, NamedArray]:
    """{metric: r `[l, k, i]`} (the mean over seeds with find.seeds)."""
    return self._read("correlations", lambda: self._named(self._file("correlations.npz")))

  @property
  def pvalues(self) -> dict[str, NamedArray]:
    """{metric: p `[l, k, i]`} of the run's r; {} for a mean over seeds (each seed's r has its
    own: `seed_pvalues`) or a run without the permutation null."""
    path = self.run_dir / "pvalues.npz"
    return self._read("pvalues", lambda: self._named(path) if path.exists() else {})

  @property
  def seed_pvalues(self) -> dict[str, dict[str, NamedArray]]:
    """{seed run name: its `pvalues`} with find.seeds; {} without."""
    def read():
      if not self.config.find.seeds:
        return {}
      return {c.name: self._named(c.run_dir / "pvalues.npz") for c in seed_runs(self.config)
              if (c.run_dir / "pvalues.npz").exists()}
    return self._read("seed_pvalues", read)

  def top_neurons(self, metric: str, k: int = 10) -> list[Neuron]:
    """The k neurons with the largest |r| with `metric` (each at its best position), largest
    first; NaN (undefined) r never ranked."""
    if metric not in self.correlations:
      raise KeyError(f"{metric!r} is not among the metrics of {self.run_dir}: "
                     f"{list(self.correlations)}")
    r = self.correlations[metric].values
    scores, pos = neuron_scores(r)
    p = self.pvalues.get(metric)
    return [Neuron(metric, layer, self.positions[pos[layer, n]], n,
                   float(r[layer, pos[layer, n], n]),
                   None if p is None else float(p.values[layer, pos[layer, n], n]))
            for layer, n in top_k(scores, k)]

  @property
  def verify_results(self) -> dict:
    """verify.json as written ({} when the run was not verified)."""
    path = self.run_dir / "verify.json"
    return self._read("verify", lambda: json.loads(path.read_text()) if path.exists() else {})

  @property
  def verification(self) -> list[VerifyRow]:
    """Every (selection, mode, K) of verify.json, in its order ([] when not verified)."""
    rows = []
    for sel, by_mode in self.verify_results.get("selections", {}).items():
      for mode, by_k in by_mode["modes"].items():
        for k, row in by_k.items():
          rows.append(VerifyRow(
              sel, mode, int(k), [tuple(n) for n in by_mode["neurons"][:int(k)]],
              row["accuracy_drop"], row["random_accuracy_drop_mean"],
              row["random_accuracy_drop_std"], row.get("p_empirical"), row["verdict"],
              row.get("untrained_prompt")))
    return rows

  @property
  def train_summaries(self) -> dict[str, dict]:
    """{seed run name: its train_summary.json} (one entry without find.seeds)."""
    return self._read("train", lambda: {
        c.name: json.loads(self._file("train_summary.json", c.run_dir).read_text())
        for c in seed_runs(self.config)})

  @property
  def prompts(self) -> dict[str, Float[np.ndarray, "p h"]]:
    """{seed run name: its trained prompt (prompt_best.npy) `[p, h]` float32}."""
    return self._read("prompts", lambda: {
        c.name: np.load(self._file("prompt_best.npy", c.run_dir)) for c in seed_runs(self.config)})

  @property
  def verdicts(self) -> dict:
    """What the run concludes, each verdict as the run states it: {"prompt_learned": {seed run
    name: bool}, "shortcut": the last-digit shortcut's verdict or None, "verification":
    {"selection|mode|K": verdict}}."""
    shortcut = self.summary.get("shortcut")
    return {"prompt_learned": {name: s.get("prompt_learned")
                               for name, s in self.train_summaries.items()},
            "shortcut": shortcut.get("verdict") if shortcut else None,
            "verification": {f"{v.selection}|{v.mode}|{v.k}": v.verdict
                             for v in self.verification}}
