"""The verify stage: batched counterfactuals (edits vmapped, run from their lowest perturbed layer)
against one whole forward pass per edit, and against the PyTorch reference a user would write
(HF `Qwen2ForCausalLM` with `down_proj` forward pre-hooks, one forward per edit).

  python scripts/bench_verify.py shapes [--preset qwen1.5-0.5b] [--top-layers 18-23]
      [--examples 64] [--seq 32] [--batch 16] [--ks 1,10,100] [--draws 20] [--modes zero,mean]
      [--edits-per-pass 0] [--sample 12]
  python scripts/bench_verify.py demo --run-dir runs/demo [--edits 1,2,8]

`shapes`: random weights and random tokens (no download) at a preset's shapes; a 2-label
classification read at the last position, an 8-vector prefix prompt; the top-K neurons drawn in
the layers of --top-layers (where a run's selected neurons would sit), the random draws matched
to them per layer (`selection.random_matched`, as verify draws them), each edit applied at
every position. Every side runs in its own process, so that its peak resident memory is its
own: "batched" (verify.edits_per_pass = --edits-per-pass, 0: verify's own choice for the
backend), "batched-no-reuse" (the same
batches from layer 0: what batching alone gives), "one per pass" (verify.edits_per_pass = 1) and
"torch". All but the first run a whole forward per edit, whose time does not depend on the
edit: --sample edits (and the baseline) are timed and the stage's time is their mean times the
number of edits (stated as extrapolated; --sample 0 runs them all). All times include compiling.
`demo`: the verify stage of a finished run of configs/demo.yaml (copied; verify's outputs
removed), once per verify.edits_per_pass, each in its own process; verify.json compared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROMPT = 8


def _jobs(args, layers: int, neurons: int):
  """verify's jobs for one selection whose top neurons sit in --top-layers: [(key, spec)]."""
  from jaxskill.config import VerifyConfig
  from jaxskill.stages import verify
  lo, hi = (int(x) for x in args.top_layers.split("-"))
  rng = np.random.default_rng(0)
  pool = [(layer, i) for layer in range(lo, hi + 1) for i in range(neurons)]
  ranked = [pool[j] for j in rng.choice(len(pool), max(args.ks), replace=False)]
  vc = VerifyConfig(k=args.ks[0], k_list=tuple(args.ks), random_draws=args.draws,
                    modes=tuple(args.modes))
  return verify._jobs(vc, {"label": ranked}, neurons)[0]


def _inputs(config, args):
  """(prompt `[P, h]` numpy, encoded split): random tokens, a prefix prompt, the answer read at
  the last position."""
  from bench_stats import synthetic
  prompt = 0.02 * np.random.default_rng(1).standard_normal((PROMPT, config.hidden_size))
  enc = synthetic(args.examples, args.seq, config.vocab_size)
  index = np.full(enc.prompt_index.shape, -1, np.int32)  # prefix prompt: slots 0..P-1
  index[:, :PROMPT] = np.arange(PROMPT)
  end = np.full(len(enc), args.seq, np.int32)
  enc = enc.__class__(**{**enc.__dict__, "prompt_index": index, "prompt_start": end * 0,
                         "input_end": end, "answer_pos": end - 1})
  return prompt.astype(np.float32), enc


def _data(config, args):
  """(model, params, prompt, encoded split) at the preset's shapes, for jaxskill."""
  import jax.numpy as jnp
  import jaxskill
  from benchlib import random_params
  model = jaxskill.CausalLM(config)
  params = random_params(model, jnp.zeros((1, 8), jnp.int32))
  prompt, enc = _inputs(config, args)
  return model, params, {"embeddings": jnp.asarray(prompt)}, enc


def side_jax(args, config, per_pass: int, reuse: bool) -> dict:
  """The jaxskill verify loop (`verify.evaluator` over `verify.passes`) on every job, or on
  --sample of them when each edit is its own whole forward."""
  import jax
  from benchlib import reset_peak_rss
  from jaxskill.model import interventions
  from jaxskill.runtime.runner import Runner
  from jaxskill.runtime.sharding import make_mesh
  from jaxskill.stages import verify
  model, params, prompt, enc = _data(config, args)
  layers, neurons = config.num_hidden_layers, config.intermediate_size
  jobs = _jobs(args, layers, neurons)
  mean = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (layers, neurons)))
  plan = verify.passes(jobs, per_pass)
  if not reuse:
    plan = [(None if layer is None else 0, keys) for layer, keys in plan]
  timed = plan  # with reuse the cost depends on the edit: all of them
  if args.sample and (per_pass == 1 or not reuse):  # a whole forward per edit: a sample
    timed = plan[:1 + -(-args.sample // per_pass)]
  specs = dict(jobs)
  reset_peak_rss()
  t0 = time.perf_counter()
  evaluate = verify.evaluator(model, "classification", np.array([3, 5]),
                              Runner(make_mesh(1), args.batch), enc, prompt, params)
  accuracy, times = {}, []
  for layer, keys in timed:
    edits = [None if specs[k] is None else interventions.neuron_edit(
        layers, neurons, specs[k][1], specs[k][0], mean=mean) for k in keys]
    accuracy.update({k: r["accuracy"] for k, r in zip(keys, evaluate(edits, layer))})
    times.append((len(keys), time.perf_counter() - t0 - sum(t for _, t in times)))
  lowest = [min(layer for layer, _ in spec[1]) for _, spec in jobs if spec is not None]
  return dict(timed_edits=len(accuracy), edits=len(jobs), passes=len(timed),
              stage_s=_stage_seconds(times, len(jobs)), extrapolated=len(accuracy) < len(jobs),
              layer_work=float(np.mean([(layers - low) / layers for low in lowest]))
              if reuse and per_pass > 1 else 1.0, accuracy=accuracy)


def _stage_seconds(times: list[tuple[int, float]], total: int) -> float:
  """The stage's seconds from [(edits, seconds)] of the passes timed in order: their sum when
  every edit ran, else the first two passes (the baseline, and the first edits with the
  compile or first-call costs) plus the mean per edit of the others times the edits left."""
  done = sum(n for n, _ in times)
  if done == total or len(times) < 3:
    return sum(t for _, t in times) * total / done
  rest = times[2:]
  per_edit = sum(t for _, t in rest) / sum(n for n, _ in rest)
  return times[0][1] + times[1][1] + per_edit * (total - times[0][0] - times[1][0])


def side_torch(args, config) -> dict:
  """HF with a `down_proj` forward pre-hook per edited layer, one forward per edit over the
  split in batches of --batch (logits at the last position), on --sample edits."""
  import torch
  from benchlib import reset_peak_rss, torch_model
  torch.set_num_threads(os.cpu_count())
  # On a GPU machine the reference runs on the GPU, as jaxskill does there.
  gpu = torch.cuda.is_available() and os.environ.get("JAX_PLATFORMS") != "cpu"
  device = "cuda" if gpu else "cpu"
  model = torch_model(config).to(device)
  prompt, enc = _inputs(config, args)
  layers, neurons = config.num_hidden_layers, config.intermediate_size
  jobs = _jobs(args, layers, neurons)
  mean = torch.randn(layers, neurons, device=device)
  timed = jobs if not args.sample else jobs[:args.sample + 1]
  reset_peak_rss()
  p = torch.tensor(prompt, device=device)
  t0 = time.perf_counter()
  accuracy, times = {}, []
  for key, spec in timed:
    hooks = []
    for layer in sorted({layer for layer, _ in spec[1]} if spec else ()):
      idx = torch.tensor([i for lay, i in spec[1] if lay == layer], device=device)
      value = mean[layer, idx] if spec[0] == "mean" else torch.zeros(len(idx), device=device)

      def hook(module, inputs, idx=idx, value=value):
        a = inputs[0].clone()
        a[..., idx] = value
        return (a,)
      hooks.append(model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(hook))
    correct = []
    with torch.no_grad():
      for s in range(0, len(enc), args.batch):
        ids = torch.tensor(enc.input_ids[s:s + args.batch], dtype=torch.long, device=device)
        index = torch.tensor(enc.prompt_index[s:s + args.batch], dtype=torch.long, device=device)
        embeds = torch.where((index >= 0)[..., None], p[index.clamp(min=0)],
                             model.model.embed_tokens(ids))
        logits = model(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1, [3, 5]]
        correct.append(logits.argmax(-1).cpu().numpy() == enc.label[s:s + args.batch])
    for h in hooks:
      h.remove()
    accuracy[key] = float(np.concatenate(correct).mean())
    times.append((1, time.perf_counter() - t0 - sum(t for _, t in times)))
  return dict(timed_edits=len(timed), edits=len(jobs), stage_s=_stage_seconds(times, len(jobs)),
              extrapolated=len(timed) < len(jobs), device=device,
              accuracy=accuracy, torch=torch.__version__)


def _child(argv: list[str]) -> dict:
  """This script with `argv` in a fresh process: its JSON result (last stdout line)."""
  proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], cwd=HERE,
                        capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"bench_verify {' '.join(argv)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


# side -> (framework, layer reuse: True, False, or None for one whole forward per edit)
SIDES = {"batched": ("jax", True), "batched-no-reuse": ("jax", False),
         "one-per-pass": ("jax", None), "torch": ("torch", None)}


def shapes(args) -> dict:
  """Every side of --sides in its own process, then the table."""
  from benchlib import run_info
  out = {side: _child([*sys.argv[1:], "--side", side]) for side in args.sides.split(",")}
  base = out.get("one-per-pass")
  for side, r in out.items():
    if base and side != "one-per-pass":
      r["speedup_vs_one_per_pass"] = base["stage_s"] / r["stage_s"]
      if side != "torch":  # the same model: the same jobs' accuracies, exactly (torch's
        common = r["accuracy"].keys() & base["accuracy"].keys()  # random weights are its own)
        r["same_accuracy"] = all(r["accuracy"][k] == base["accuracy"][k] for k in common)
  result = dict(mode="shapes", preset=args.preset, examples=args.examples, seq=args.seq,
                batch=args.batch, ks=args.ks, draws=args.draws, modes=args.modes,
                top_layers=args.top_layers, edits_per_pass=args.edits_per_pass,
                sides={s: {k: v for k, v in r.items() if k != "accuracy"} for s, r in out.items()},
                **run_info())
  print(f"\n{args.preset}, {args.examples} examples x {args.seq} tokens, K {args.ks}, "
        f"{args.draws} draws, modes {args.modes}, top-K in layers {args.top_layers}\n")
  print("| side | edits per pass | verify stage, s | passes | edits timed / all | layer work | "
        "peak RSS MiB | vs one per pass |")
  print("|---|---|---|---|---|---|---|---|")
  for side, r in result["sides"].items():
    est = " (extrapolated)" if r["extrapolated"] else ""
    print(f"| {side} | {r.get('edits_per_pass', 1)} | {r['stage_s']:.1f}{est} | "
          f"{r.get('passes', '')} | {r['timed_edits']} / "
          f"{r['edits']} | {100 * r.get('layer_work', 1):.0f}% | {r['peak_rss_mib']:.0f} | "
          f"{r.get('speedup_vs_one_per_pass', 1):.2f}x"
          f"{'' if r.get('same_accuracy', True) else ' ACCURACIES DIFFER'} |")
  return result


def one_side(args) -> dict:
  from benchlib import peak_rss_mib
  from jaxskill.model.architecture import PRESETS
  config = PRESETS[args.preset]
  kind, reuse = SIDES[args.side]
  if kind == "torch":
    r = side_torch(args, config)
  else:
    from jaxskill.stages.verify import auto_edits_per_pass
    per_pass = args.edits_per_pass or auto_edits_per_pass()
    r = side_jax(args, config, 1 if reuse is None else per_pass, bool(reuse))
    r["edits_per_pass"] = 1 if reuse is None else per_pass
  r["peak_rss_mib"] = peak_rss_mib()
  print(json.dumps(r))
  return r


def demo_one(args) -> dict:
  """verify() of the copied run with verify.edits_per_pass = --edits (one value)."""
  from benchlib import peak_rss_mib, reset_peak_rss
  from jaxskill.config import load_config
  from jaxskill.runtime import files
  from jaxskill.stages.verify import verify
  config = load_config(args.run_dir / "config.yaml",
                       [f"out_dir={args.out}", f"verify.edits_per_pass={args.edits}"])
  reset_peak_rss()
  t0 = time.perf_counter()
  verify(config, progress=False)
  r = dict(seconds=time.perf_counter() - t0, peak_rss_mib=peak_rss_mib(),
           verify=str(config.run_dir / "verify.json"))
  files.write_json(args.out / f"result_{args.edits}.json", r)
  print(json.dumps(r))
  return r


def demo(args) -> dict:
  """The verify stage of a finished demo run, once per --edits value, each on a fresh copy."""
  from benchlib import run_info
  import yaml
  name = yaml.safe_load((args.run_dir / "config.yaml").read_text())["name"]
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    for e in args.edits.split(","):
      target = Path(tmp) / e
      for run in [args.run_dir, *args.run_dir.parent.glob(f"{name}-seed*")]:  # seeds' prompts
        shutil.copytree(run, target / run.name)
      for f in ("verify.json", "verify_progress.jsonl", "neuron_stats.npz"):
        (target / name / f).unlink(missing_ok=True)
      r = _child(["demo-one", "--run-dir", str(args.run_dir), "--out", str(target),
                  "--edits", e])
      r["results"] = json.loads(Path(r.pop("verify")).read_text())
      out[int(e)] = r
  ref = out[min(out)]["results"]
  print(f"\nverify stage of {args.run_dir}: {ref['n']} examples, modes {ref['modes']}, "
        f"K {ref['k_list']}, {ref['random_draws']} draws, selections "
        f"{list(ref['selections'])}\n")
  print("| verify.edits_per_pass | verify stage, s | peak RSS MiB | speed-up | same verify.json |")
  print("|---|---|---|---|---|")
  for e, r in sorted(out.items()):
    same = _same(r["results"], ref)
    print(f"| {e} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | "
          f"{out[min(out)]['seconds'] / r['seconds']:.2f}x | {same} |")
  return dict(mode="demo", **{str(e): {k: v for k, v in r.items() if k != "results"}
                              for e, r in out.items()}, **run_info())


def _same(a: dict, b: dict) -> str:
  """"yes" when verify.json `a` equals `b` as the tests compare them (tests/compare.py:
  confidence, loss, margin within 1e-6, the rest exact), else where they first differ."""
  sys.path.insert(0, str(HERE.parent))
  from tests.compare import assert_same_verify
  try:
    assert_same_verify({k: v for k, v in a.items() if k != "prompt"},
                       {k: v for k, v in b.items() if k != "prompt"})
  except AssertionError as e:
    return f"no ({e})"
  return "yes"


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  sub = ap.add_subparsers(dest="cmd", required=True)
  s = sub.add_parser("shapes")
  s.add_argument("--preset", default="qwen1.5-0.5b")
  s.add_argument("--top-layers", default="18-23")
  s.add_argument("--examples", type=int, default=64)
  s.add_argument("--seq", type=int, default=32)
  s.add_argument("--batch", type=int, default=16)
  s.add_argument("--ks", type=lambda v: [int(x) for x in v.split(",")], default=[1, 10, 100])
  s.add_argument("--draws", type=int, default=20)
  s.add_argument("--modes", type=lambda v: v.split(","), default=["zero", "mean"])
  s.add_argument("--edits-per-pass", type=int, default=0, help="0: verify's auto choice")
  s.add_argument("--sample", type=int, default=12)
  s.add_argument("--sides", default=",".join(SIDES))
  s.add_argument("--side", choices=sorted(SIDES))
  s.add_argument("--json")
  d = sub.add_parser("demo")
  d.add_argument("--run-dir", type=Path, default=Path("runs/demo"))
  d.add_argument("--edits", default="1,2,8")
  d.add_argument("--json")
  o = sub.add_parser("demo-one")
  o.add_argument("--run-dir", type=Path)
  o.add_argument("--out", type=Path)
  o.add_argument("--edits", type=int)
  args = ap.parse_args(argv)
  if args.cmd == "shapes":
    result = one_side(args) if args.side else shapes(args)
  elif args.cmd == "demo":
    args.run_dir = args.run_dir.resolve()
    result = demo(args)
  else:
    return demo_one(args)
  if getattr(args, "json", None) and not getattr(args, "side", None):
    from benchlib import append_json
    append_json(args.json, result)
  return result


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  main()
