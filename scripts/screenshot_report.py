"""A screenshot of report.html's neuron browser with one neuron's panel open, in headless Chromium.

  python scripts/screenshot_report.py RUN_DIR [--metric meta_last_digit_only]
                                      [--out docs/neuron_browser.png]

Opens RUN_DIR/report.html (file://) at `#neuron=<id>`, the neuron ranked 1 for --metric in
RUN_DIR/neurons.json, waits for the page to build the browser and open that panel, and saves a
screenshot of `<section id="browser">` (or of the window, scrolled to the panel, when the section
is taller than the window). Prints the PNG's path and the neuron's id.

Needs Debian's `chromium` and `chromium-driver` (apt) and `selenium` (requirements-dev.txt);
scripts/test.sh installs them. The browser test (tests/browser.py) starts Chromium through
`chrome()` here, so that the screenshot and the test see the page in the same browser.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1300, 1800)
MAX_HEIGHT = 6000  # px: the tallest window the screenshot grows to
MARGIN = 16  # px: room kept above and below the section in the window
# Headless as root in a container: the sandbox needs a non-root user, there is no GPU, /dev/shm
# may be small (Docker's 64 MB), and nothing may reach for the network on its own (CI can reach
# package registries only): no background fetches, component or sync updates, QUIC probes.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--window-size={WINDOW[0]},{WINDOW[1]}")


def missing() -> list[str]:
  """What `chrome()` needs and this machine lacks; empty when it can start."""
  lacking = [f"{path} (apt: {package})" for path, package
             in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
             if not os.access(path, os.X_OK)]
  if importlib.util.find_spec("selenium") is None:
    lacking.append("selenium (pip: requirements-dev.txt)")
  return lacking


@contextlib.contextmanager
def chrome():
  """A Selenium WebDriver on Debian's headless Chromium with a fresh profile; its console is
  logged (`driver.get_log("browser")`). Quits the browser and removes the profile on exit."""
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service
  options = webdriver.ChromeOptions()
  options.binary_location = CHROMIUM
  for flag in FLAGS:
    options.add_argument(flag)
  profile = tempfile.mkdtemp(prefix="jaxskill-chromium-")  # no state from an earlier run
  options.add_argument(f"--user-data-dir={profile}")
  options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
  driver = None
  try:
    # A Service with a path: Selenium Manager, which would download a driver, is never asked.
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
  finally:
    if driver is not None:
      driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def report_url(run_dir: str | Path, neuron: str | None = None) -> str:
  """The file:// URL of RUN_DIR/report.html, at `#neuron=<id>` when `neuron` is given."""
  url = (Path(run_dir) / "report.html").resolve().as_uri()
  return url if neuron is None else f"{url}#neuron={quote(neuron, safe='')}"


def load(driver, url: str, timeout: float = 30) -> None:
  """Loads `url` afresh (a page already open would take a new #hash as the same document) and
  waits until the page says that it has built the browser (body[data-ready="1"])."""
  from selenium.common.exceptions import TimeoutException
  from selenium.webdriver.support.ui import WebDriverWait
  driver.get("about:blank")
  driver.get(url)
  try:
    WebDriverWait(driver, timeout).until(
        lambda d: d.execute_script("return document.body && document.body.dataset.ready") == "1")
  except TimeoutException:
    # Most likely a script error stopped the page before it was ready: say which.
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    raise TimeoutException(f"{url}: not ready after {timeout} s; console errors: {errors}")


def wait_panel(driver, neuron: str, timeout: float = 10):
  """The `#neuron-panel` element once it shows `neuron`."""
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait
  WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
      "const p = document.getElementById('neuron-panel'); return p && p.dataset.id") == neuron)
  return driver.find_element(By.ID, "neuron-panel")


def top_neuron(data: dict, metric: str) -> str:
  """The id of `metric`'s rank-1 neuron in neurons.json's `data`."""
  for n in data["neurons"]:
    if n["metric"] == metric and n["rank"] == 1:
      return n["id"]
  raise SystemExit(f"no neuron of metric {metric!r} in neurons.json; its metrics: "
                   f"{data['metrics']}")


def main(argv: list[str] | None = None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("run_dir", type=Path)
  ap.add_argument("--metric", default="meta_last_digit_only")
  ap.add_argument("--out", type=Path, default=Path("docs/neuron_browser.png"))
  args = ap.parse_args(argv)
  for name in ("report.html", "neurons.json"):
    if not (args.run_dir / name).exists():
      raise SystemExit(f"{args.run_dir}: no {name}; run `jaxskill report` on the run first")
  if lacking := missing():
    raise SystemExit("missing: " + ", ".join(lacking))
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import Select
  neuron = top_neuron(json.loads((args.run_dir / "neurons.json").read_text()), args.metric)
  args.out.parent.mkdir(parents=True, exist_ok=True)
  with chrome() as driver:
    load(driver, report_url(args.run_dir, neuron))
    wait_panel(driver, neuron)
    # The table shows the metric's neurons only, so that the open neuron's row is in sight.
    Select(driver.find_element(By.ID, "filter-metric")).select_by_value(args.metric)
    panel = wait_panel(driver, neuron)
    driver.execute_script("document.activeElement.blur()")  # no focus ring on the select
    section = driver.find_element(By.ID, "browser")
    # An element screenshot shows what the viewport shows: grow the window to hold the section
    # (filters, table, open panel) whole, up to MAX_HEIGHT; past that, the part from the panel on.
    missing_px = section.size["height"] + 2 * MARGIN - driver.execute_script(
        "return window.innerHeight")
    if missing_px > 0:
      size = driver.get_window_size()
      driver.set_window_size(size["width"], min(size["height"] + missing_px, MAX_HEIGHT))
    driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", section)
    if section.size["height"] + 2 * MARGIN <= driver.execute_script("return window.innerHeight"):
      section.screenshot(str(args.out))
    else:
      driver.execute_script("arguments[0].scrollIntoView({block: 'start'})", panel)
      driver.save_screenshot(str(args.out))
  print(f"{args.out}\t{neuron}")


if __name__ == "__main__":
  sys.exit(main())
