"""The report stage with its neuron browser: generation time and the size of report.html and
neurons.json, on a finished run and on a run at Qwen1.5-0.5B's shapes.

  python scripts/bench_report.py demo --run-dir runs/demo
  python scripts/bench_report.py shapes [--vocab 8192] [--examples 64] [--work /tmp/bench_report]

`demo`: `jaxskill.report.page.report` on a copy of a finished run directory (configs/demo.yaml's),
timed (figures, browser data, page; no model runs in this stage).
`shapes`: a random checkpoint laid out like Qwen1.5-0.5B (24 layers, hidden 1024, 2816 neurons
per layer, 16 heads; a byte-level BPE and an embedding of --vocab rows instead of 151936, which
the report never reads) run through configs/qwen1.5/arithmetic_0.5b.yaml with that config's
report-facing defaults (16-slot infix prompt, sites prompt/last_input/answer, 5 metrics, top_k
100, report_neurons 4, browser_examples 5, data.max_length 64) and tiny everything else
(--examples training examples, 2 steps, one seed, 2 permutations, a small verify); then the
report is timed the same way. Prints one JSON line per run: seconds, bytes of report.html (and
of its browser data and figures), neurons.json, table rows, panels, examples, tokens shown, and
the milliseconds the page takes to open in headless Chromium (scripts/screenshot_report.py's).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def measure(run_dir: Path) -> dict:
  """Times `report` on a copy of `run_dir`; sizes of what it wrote."""
  from jaxskill.report.page import report
  work = Path(tempfile.mkdtemp()) / run_dir.name
  shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("checkpoints", "find_checkpoints"))
  start = time.perf_counter()
  page = report(work)
  seconds = time.perf_counter() - start
  text = page.read_text()
  data = json.loads((work / "neurons.json").read_text())
  embedded = re.search(r'id="browser-data">(.*?)</script>', text, re.S).group(1)
  images = sum(len(m) for m in re.findall(r'data:image/png;base64,[^"]*', text))
  tokens = sum(len(ex["tokens"]) for p in data["panels"].values() for s in ("top", "bottom")
               for ex in p[s])
  out = {"run": run_dir.name, "report_seconds": round(seconds, 2),
         "open_ms": open_ms(work, data),
         "report_html_bytes": len(text.encode()), "browser_data_bytes": len(embedded.encode()),
         "figure_bytes": images, "neurons_json_bytes": (work / "neurons.json").stat().st_size,
         "table_rows": len(data["neurons"]), "panels": len(data["panels"]),
         "examples": len(data["examples"]), "token_values": tokens}
  shutil.rmtree(work.parent)
  return out


def open_ms(run_dir: Path, data: dict) -> list[int] | None:
  """Milliseconds from navigation until the page has built its browser (body[data-ready], the
  page's own performance.now()) in headless Chromium, loaded 3 times (the first one cold), with
  the panel of the first metric's top neuron open (`#neuron=<id>`); None without the browser."""
  from screenshot_report import chrome, load, missing, report_url
  if missing():
    return None
  top = next(n["id"] for n in data["neurons"] if n["rank"] == 1)
  times = []
  with chrome() as driver:
    for _ in range(3):
      load(driver, report_url(run_dir, top))
      times.append(int(driver.execute_script("return document.body.dataset.readyMs")))
  return times


def shapes_run(args) -> Path:
  """The 0.5B-shaped tiny run (see the module docstring); returns its run directory."""
  sys.path.insert(0, str(ROOT))
  from tests.qwen15_like import make_qwen15_like_checkpoint
  from jaxskill.config import load_config
  from jaxskill.runtime.pipeline import run
  work = Path(args.work)
  model = work / "qwen15-0.5b-shaped"
  if not (model / "config.json").exists():
    make_qwen15_like_checkpoint(model, layers=24, hidden=1024, intermediate=2816, heads=16,
                                kv_heads=16, tied=True, vocab_size=args.vocab)
  config = load_config(ROOT / "configs/qwen1.5/arithmetic_0.5b.yaml", [
      f"model.path={model}", f"out_dir={work / 'runs'}", f"task.n_train={args.examples}",
      "task.n_dev=16", "task.n_test=32", "train.steps=2", "train.eval_every=2",
      "train.batch_size=8", "find.seeds=", "find.batch_size=16", "find.permutations=2",
      "verify.k_list=10", "verify.k=10", "verify.random_draws=2", "verify.modes=zero",
      "verify.batch_size=16"])
  start = time.perf_counter()
  run(config, progress=False)
  print(json.dumps({"pipeline_seconds": round(time.perf_counter() - start, 1)}), flush=True)
  return config.run_dir


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("what", choices=["demo", "shapes"])
  p.add_argument("--run-dir", default=str(ROOT / "runs/demo"))
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--examples", type=int, default=64)
  p.add_argument("--work", default="/tmp/bench_report")
  args = p.parse_args()
  run_dir = Path(args.run_dir) if args.what == "demo" else shapes_run(args)
  print(json.dumps(measure(run_dir)), flush=True)


if __name__ == "__main__":
  main()
