"""`jaxskill` command line: demo, convert, export, train, find, verify, report, run."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

from jaxskill.model.checkpoint import DEMO_MODEL  # noqa: F401  (re-exported for tests)

# Held out of the organism's training (scripts/make_demo_model.py keeps a fixed 10% out).
DEMO_PROMPTS = ("Q: What is 86 plus 53?\nA:", "Q: What is 74 minus 97?\nA:",
                "Q: What is 82 plus 15?\nA: 98\nCorrect?")


def _dtype(name: str):
  from jaxskill.model.checkpoint import DTYPES
  try:
    return DTYPES[name]
  except KeyError:
    raise SystemExit(f"--dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None


def demo_config_path() -> Path:
  """configs/demo.yaml of the source tree this package runs from (editable install)."""
  import jaxskill
  path = Path(jaxskill.__file__).resolve().parents[1] / "configs" / "demo.yaml"
  if not path.exists():
    raise SystemExit(f"jaxskill demo: {path} not found; the demo runs from a source checkout "
                     "(pip install -e .), or run `jaxskill run <config>` with your own config")
  return path


def cmd_demo(args) -> int:
  """The model organism end to end: its arithmetic, then train -> find -> verify -> report."""
  import jax.numpy as jnp
  import numpy as np
  import jaxskill
  from jaxskill.runtime.pipeline import run

  t0 = time.perf_counter()
  config = _run_config(argparse.Namespace(config=demo_config_path(), overrides=args.overrides))
  model, params = jaxskill.load_model(config.model.path)
  tokenizer = jaxskill.load_tokenizer(config.model.path)
  c = model.config
  print(f"model: {config.model.path} ({c.num_hidden_layers} layers x {c.intermediate_size} "
        f"neurons, hidden {c.hidden_size}, vocab {c.vocab_size})")
  tokenizer.padding_side = "left"
  enc = tokenizer(list(DEMO_PROMPTS), return_tensors="np", padding=True)
  eos = c.eos_token_ids[0] if c.eos_token_ids else -1
  new = jaxskill.greedy_generate(model, params, jnp.asarray(enc["input_ids"]),
                                 jnp.asarray(enc["attention_mask"]), 6, eos_token_id=eos,
                                 pad_token_id=c.pad_token_id or 0)
  for prompt, row in zip(DEMO_PROMPTS, np.asarray(new)):
    text = tokenizer.decode([int(x) for x in row if x != eos])
    print(f"  greedy: {prompt!r} -> {text!r}")
  run(config, progress=not args.no_progress, on_stage=_print_stage)
  _print_results(config.run_dir)
  print(f"demo finished in {time.perf_counter() - t0:.0f}s")
  _warn_untrained(config.run_dir)
  return 0


def cmd_convert(args) -> int:
  """`jaxskill convert HF_DIR OUT_DIR`: an HF checkpoint directory (or cached hub id) to orbax
  params in --dtype, with its config and tokenizer files."""
  import jaxskill
  from jaxskill.model.checkpoint import resolve_model_dir
  t0 = time.perf_counter()
  src = resolve_model_dir(args.hf_dir)
  _check_copy(src, Path(args.out_dir), "convert")
  model, params = jaxskill.load_model(src, dtype=_dtype(args.dtype))
  out = jaxskill.save_converted(args.out_dir, params, model.config, tokenizer_dir=src)
  print(f"converted {src} -> {out} in {time.perf_counter() - t0:.1f}s")
  return 0


def cmd_export(args) -> int:
  """`jaxskill export MODEL OUT_DIR`: a converted (or HF) model to an HF safetensors directory in
  --dtype, with its tokenizer files."""
  import jaxskill
  from jaxskill.model.checkpoint import resolve_model_dir
  src = resolve_model_dir(args.model)
  _check_copy(src, Path(args.out_dir), "export")
  model, params = jaxskill.load_model(src, dtype=_dtype(args.dtype))
  out = jaxskill.export_hf(args.out_dir, params, model.config, tokenizer_dir=src)
  print(f"exported {src} -> {out} (HF format, loads with transformers)")
  return 0


log = logging.getLogger("jaxskill.cli")


def _check_copy(src: Path, out: Path, command: str) -> None:
  """What `convert` and `export` would otherwise find out after the work, or never: a result no
  later command can use (no tokenizer), the source overwritten, an OUT_DIR that is a file."""
  from jaxskill.model.checkpoint import CheckpointError, check_checkpoint
  try:
    check_checkpoint(src)  # config.json, weights and tokenizer files, before anything is read
  except CheckpointError as e:
    if "no tokenizer files" not in str(e):
      raise
    # The params still load (jaxskill.load_model), for work that brings its own token ids.
    log.warning("%s; jaxskill run and every command that tokenizes will refuse %s until "
                "they are copied there", e, out)
  if out.exists() and not out.is_dir():
    raise CheckpointError(f"jaxskill {command}: OUT_DIR {out} is a file, not a directory")
  if out.exists() and out.resolve() == src.resolve():
    raise CheckpointError(f"jaxskill {command}: OUT_DIR {out} is the source directory itself; "
                          "write the result to another directory")


class _StderrHandler(logging.StreamHandler):
  """Writes to the sys.stderr of the moment, not the one at creation: main() can run many times
  in one process (tests, notebooks), each with its own (possibly replaced, later closed) stderr."""

  @property
  def stream(self):
    return sys.stderr

  @stream.setter
  def stream(self, _):
    pass


def _run_config(args):
  """The merged run config of a pipeline command."""
  from jaxskill.config import load_config
  return load_config(args.config, args.overrides)


def _log_to_stderr() -> None:
  """INFO and above of jaxskill's own logger on stderr. Its own: the root logger may already
  carry a handler (absl installs one when orbax is imported), which would make
  logging.basicConfig a no-op."""
  logger = logging.getLogger("jaxskill")
  if not logger.handlers:
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def _print_stage(stage: str, skip: bool, why: str = "") -> None:
  state = "done already, skipped" if skip else f"running ({why})" if why else "running"
  print(f"== {stage}: {state}", flush=True)


def _stage_command(until: str):
  """`jaxskill train|find|verify|run CONFIG`: the pipeline up to that stage (what is stale
  upstream is recomputed, or refused with the changed keys named), then its results."""
  def command(args) -> int:
    from jaxskill.runtime.pipeline import run
    config = _run_config(args)
    run(config, until=until, progress=not args.no_progress, on_stage=_print_stage)
    _print_results(config.run_dir, until)
    _warn_untrained(config.run_dir)  # last: the line a reader of the output sees
    return 0
  return command


def verify_lines(results: dict) -> list[str]:
  """The headline of verify.json: accuracy with the top-K perturbed against random-K."""
  from jaxskill.report.page import verdict_text
  base = results["baseline"]["accuracy"]
  k = str(results["k"])
  lines = [f"{results['split']} accuracy without perturbation: {base:.4f} "
           f"(n={results['n']}); mean ablation over {results.get('mean_over', 'all')} positions,"
           f" noise std {results.get('sigma', 0.1):g} x "
           f"{'the neuron std' if results.get('noise_scale') == 'neuron_std' else '1'}"]
  for sel, per_sel in results["selections"].items():
    for mode, per_k in per_sel["modes"].items():
      row = per_k[k]
      ratio = ("n/a (random drop <= 0)" if row["drop_ratio"] is None
               else f"{row['drop_ratio']:.1f}x")
      z = "" if row.get("drop_z") is None else f", {row['drop_z']:.1f} random std above"
      lines.append(
          f"  top-{k} by {sel}, {mode}: accuracy {row['top']['accuracy']:.4f} "
          f"(drop {row['accuracy_drop']:+.4f}); random-{k} x{results['random_draws']}: drop "
          f"{row['random_accuracy_drop_mean']:+.4f} +- {row['random_accuracy_drop_std']:.4f}; "
          f"ratio {ratio}{z}")
      if "verdict" in row:
        lo, hi = row["difference_95"]
        lines.append(f"      p = {row['p_empirical']:.3f} against the random drops; top drop - "
                     f"mean random drop, 95% bootstrap interval [{lo:+.4f}, {hi:+.4f}]: "
                     f"{verdict_text(row)}")
      groups = row["top"].get("group_accuracy")
      if groups:
        base_g, rand_g = results["baseline"]["group_accuracy"], row["random"]["group_accuracy"]
        lines.append("      per group (none / top / random mean): " + "; ".join(
            f"{g} {base_g[g]:.3f} / {groups[g]:.3f} / {rand_g[g]:.3f}" for g in groups))
  for sel, why in results.get("skipped", {}).items():
    lines.append(f"  {sel}: not verified ({why})")
  return lines


def cmd_report(args) -> int:
  """`jaxskill report DIR`: the report of a finished run directory, refused if its stages are
  not up to date with its config.yaml; `jaxskill report CONFIG`: the pipeline up to the report."""
  from jaxskill.report.page import report
  from jaxskill.runtime.files import read_lock, run_lock
  from jaxskill.runtime.pipeline import checked_run_dir
  path = Path(args.target)
  if path.is_file():
    if args.out:
      raise ValueError(f"--out {args.out} goes with a run directory; a config's report is "
                       "written into its run directory")
    return _stage_command("report")(argparse.Namespace(
        config=path, overrides=args.overrides, no_progress=args.no_progress))
  if args.overrides:
    raise ValueError(f"{path}: overrides ({' '.join(args.overrides)}) go with a config file, "
                     "not a run directory")
  if not path.is_dir():
    raise FileNotFoundError(f"{path}: no such run directory or config file")
  out = Path(args.out) if args.out else path
  with read_lock(path), (run_lock(out) if out.resolve() != path.resolve()
                         else contextlib.nullcontext()):  # not while a run rewrites either
    checked_run_dir(path)
    try:
      html = report(path, out)
    except PermissionError as e:
      raise PermissionError(e.errno, f"{e.strerror} (write the report elsewhere with --out DIR)",
                            e.filename) from None
    _print_results(path, html=html)
  _warn_untrained(path)
  return 0


def _print_results(run_dir: Path, until: str = "report", html: Path | None = None) -> None:
  """What the stages up to `until` found, from the files they wrote (`html`: the report's
  page, if not in the run directory)."""
  from jaxskill.report.page import number_text, train_summaries
  from jaxskill.runtime import files
  print(f"run dir: {run_dir}")
  from jaxskill.stats import learning
  for name, t in train_summaries(run_dir):
    print(f"prompt training ({name}): dev accuracy {number_text(t['dev_accuracy_at_init'])} "
          f"at init -> {number_text(t['best_dev_accuracy'])} best ({t['steps']} steps, "
          f"resumed from "
          f"{t['resumed_from']}, {t['seconds']:.0f}s, truncated inputs {t['truncated']})")
    if "prompt_learned" in t:
      answer = {True: "yes", False: "no", None: "not tested"}[t["prompt_learned"]]
      print(f"  prompt learned? {answer}: {learning.describe(t)}")
  if until == "train":
    return
  summary = files.read_json(run_dir / "summary.json")
  _print_degenerate(summary)
  for name, m in summary["metrics"].items():
    if m["max_abs_r"] is None:
      print(f"  {name:>34}: undefined (the metric is constant over the {m['n']} examples)")
      continue
    best = m["top_k"][0] if m["top_k"] else None
    print(f"  {name:>34}: max|r| {m['max_abs_r']:.3f} at (layer, neuron) {best}, "
          f"|r|>{summary['threshold']}: {m['above_threshold']}{_significance_text(m)}")
  if until == "find":
    return
  if until == "verify" or (run_dir / "verify.json").exists():  # `report DIR`: maybe unverified
    for line in verify_lines(files.read_json(run_dir / "verify.json")):
      print(line)
  if until == "verify":
    return
  _print_shortcut(summary)
  print(f"report: {html or run_dir / 'report.html'}")


def _significance_text(metric: dict) -> str:
  """", significant: N (FDR q), M (FWER, null max|r| x)" for a metric of summary.json."""
  s = metric.get("significance")
  if not s:
    return ""
  text = f", significant: {s['significant_fdr']} (FDR q={s['fdr_q']:g})"
  if s["null_max_abs_r_95"] is not None:
    text += (f", {s['significant_fwer']} (FWER 5%: |r| > {s['null_max_abs_r_95']:.3f}, the 95th "
             f"percentile of max|r| over {s['permutations']} permutations)")
  return text


def _print_degenerate(summary: dict) -> None:
  """find's degenerate metrics (summary.json), one line each."""
  from jaxskill.stats.metric_checks import describe
  for entry in summary.get("degenerate_metrics") or ():
    print(f"  degenerate metric: {describe(entry)}")


def _print_shortcut(summary: dict) -> None:
  """summary.json's shortcut verdict (written by find), with its evidence."""
  from jaxskill.stats.shortcut import heldout_text
  verdict = summary.get("shortcut")
  if not verdict:
    return
  note = " (computed on an untrained prompt)" if verdict.get("untrained_prompt") else ""
  print(f"last-digit shortcut neuron? {verdict['verdict']}{note}: {verdict['reason']}")
  for kind in ("shortcut", "whole_answer"):
    row, held = verdict["candidates"][kind], heldout_text(verdict["heldout"][kind])
    if row is not None:
      print(f"  {kind.replace('_', '-')} candidate layer {row['layer']} neuron {row['neuron']} at "
            f"{row['position']}: AUC correct vs last-digit-wrong "
            f"{row['auc_last_digit_wrong']:.3f}, correct vs elsewhere-wrong "
            f"{row['auc_elsewhere_wrong']:.3f} on the selection split")
    if held:
      print(f"    held out: {held}")
  print(f"  ({verdict['criterion']})")


def _warn_untrained(run_dir: Path) -> None:
  """A "warning:" line on stderr for each prompt of the run that did not learn."""
  from jaxskill.report.page import train_summaries
  from jaxskill.stats import learning
  for name, t in train_summaries(run_dir):
    line = learning.warning_line(name, t)
    if line:
      print(line, file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
  """The `jaxskill` parser: one subcommand per command, each setting `func` to what runs it."""
  ap = argparse.ArgumentParser(prog="jaxskill", description="Find skill neurons of Qwen1.5, "
                               "Qwen2.5, Qwen3, Llama and Mistral LMs.")
  sub = ap.add_subparsers(dest="command", required=True)
  p = sub.add_parser("demo", help="the shipped model organism end to end (configs/demo.yaml): "
                     "train, find, verify, report")
  p.add_argument("overrides", nargs="*", help="section.key=value, e.g. out_dir=/tmp/runs")
  p.add_argument("--no-progress", action="store_true")
  p.set_defaults(func=cmd_demo)
  p = sub.add_parser("convert", help="HF checkpoint dir (or cached hub id) -> orbax params")
  p.add_argument("hf_dir")
  p.add_argument("out_dir")
  p.add_argument("--dtype", default="float32")
  p.set_defaults(func=cmd_convert)
  p = sub.add_parser("export", help="a converted (or HF) dir -> HF safetensors dir")
  p.add_argument("model")
  p.add_argument("out_dir")
  p.add_argument("--dtype", default="float32")
  p.set_defaults(func=cmd_export)
  for name, text in (
      ("train", "train the soft prompt(s)"),
      ("find", "find skill neurons (trains first what is not trained)"),
      ("verify", "perturb the neurons found (trains and finds first what is not done)"),
      ("run", "train, find, verify and report; each stage skipped when done")):
    p = sub.add_parser(name, help=f"{text}: jaxskill {name} CONFIG [section.key=value ...]")
    p.add_argument("config", help="a YAML run config (see configs/)")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.lr=1e-3")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_stage_command(name if name != "run" else "report"))
  p = sub.add_parser("report", help="figures and report.html: jaxskill report DIR (a finished "
                     "run directory) or jaxskill report CONFIG [section.key=value ...]")
  p.add_argument("target", help="a run directory, or a YAML run config")
  p.add_argument("overrides", nargs="*", help="with a config: section.key=value")
  p.add_argument("--out", help="with a run directory: write the report into this directory "
                 "instead (for a run directory you cannot write to)")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.set_defaults(func=cmd_report)
  return ap


def distributed_settings(args, environ) -> dict | None:
  """The `jax.distributed.initialize` arguments of this run, or None for one process: the run
  config's `distributed` section, each field overridden by the environment (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID; JAXSKILL_DISTRIBUTED=auto lets jax find a Cloud TPU or
  SLURM cluster). Read before anything starts a JAX backend."""
  from jaxskill.config import DistributedConfig, RunConfigError, load_config
  d = DistributedConfig()
  if getattr(args, "config", None) is not None:
    try:
      d = load_config(args.config, getattr(args, "overrides", [])).distributed
    except RunConfigError:
      pass  # reported by the command itself, with the rest of the config
  if environ.get("JAXSKILL_DISTRIBUTED") == "auto" or d.auto:
    return {}
  address = environ.get("JAX_COORDINATOR_ADDRESS", d.coordinator_address)
  if not address:
    return None
  try:
    num = int(environ.get("JAX_NUM_PROCESSES", d.num_processes))
    pid = int(environ.get("JAX_PROCESS_ID", d.process_id))
  except ValueError:
    raise SystemExit("JAX_NUM_PROCESSES and JAX_PROCESS_ID must be integers") from None
  if num < 1 or not 0 <= pid < num:
    raise SystemExit(f"distributed run at {address}: num_processes={num} and process_id={pid} "
                     "must satisfy 0 <= process_id < num_processes (set them in the config's "
                     "distributed section or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
  return {"coordinator_address": address, "num_processes": num, "process_id": pid}


def _maybe_init_distributed(args) -> None:
  import os
  settings = distributed_settings(args, os.environ)
  if settings is None:
    return
  import jax
  if settings and os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**settings)


def parse_args(argv=None) -> argparse.Namespace:
  """The command line, options allowed between overrides (`run C a=1 --no-progress b=2`):
  argparse stops filling a positional list at the first option, so the rest comes back as
  extras, which are overrides again."""
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  stray = [x for x in extra if x.startswith("-") or not hasattr(args, "overrides")]
  if stray:
    parser.error(f"unrecognized arguments: {' '.join(stray)}")
  if extra:
    args.overrides = [*args.overrides, *extra]
  return args


def main(argv=None) -> int:
  """Runs one command line; returns the exit status. Bad input or a file system that refuses
  gives status 2 and one line on stderr instead of a traceback."""
  # transformers' notice that PyTorch is absent would be every command's first line: jaxskill
  # needs only its tokenizers and configs, which work without it.
  os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
  args = parse_args(argv)
  _log_to_stderr()
  _maybe_init_distributed(args)
  from jaxskill.config import RunConfigError
  from jaxskill.model import CheckpointError, ArchitectureError
  from jaxskill.runtime.checkpoints import CheckpointRestoreError
  from jaxskill.runtime.files import RunLockError
  from jaxskill.stages.train import TrainingDivergedError
  from jaxskill.tasks import TaskError
  try:
    return args.func(args)
  except (CheckpointError, ArchitectureError, RunConfigError, TaskError, CheckpointRestoreError,
          RunLockError, TrainingDivergedError, ValueError, OSError) as e:
    # bad input, or a file system that refuses (read-only, full): one line naming what is wrong
    print(f"jaxskill {args.command}: error: {e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    # Every stage resumes from its checkpoints: a traceback would only hide that.
    print(f"\njaxskill {args.command}: interrupted; the same command resumes where it stopped",
          file=sys.stderr)
    return 130


if __name__ == "__main__":
  sys.exit(main())
