"""The neuron browser of report.html, driven in a real headless Chromium (tests/browser.py).

The page builds the browser in JavaScript from the data it embeds; every check here compares what
the page shows against neurons.json, read beside it by Python, so that a page that drops, repeats
or mis-sorts rows, or colours a token with another token's activation, cannot pass by agreeing
with itself. The DOM it drives is the contract of issue 15: body[data-ready], #neuron-table with
th[data-key] and tr.neuron-row[data-id][data-metric], the #filter-* selects, #neuron-count, and
#neuron-panel[data-id] with div.example > span.tok[data-act]."""

import json
import re
import shutil
from collections import Counter

import pytest

from jaxskill.report import page as report_lib

from tests import browser

METRIC = "meta_last_digit_only"  # the demo's question: is there a last-digit shortcut neuron?


@pytest.fixture(scope="module")
def run_dir(request, tmp_path_factory):
  """A copy of the demo run with report.html written afresh into it."""
  browser.require()  # first: a machine without the browser skips before the demo run
  config, _ = request.getfixturevalue("demo_run")
  # Other modules rerun stages of the shared run dir with other settings: a copy keeps this
  # report's page and neurons.json from the same run, whatever ran before.
  d = tmp_path_factory.mktemp("browser") / "run"
  shutil.copytree(config.run_dir, d)
  report_lib.report(d)
  return d


@pytest.fixture(scope="module")
def data(run_dir) -> dict:
  return json.loads((run_dir / "neurons.json").read_text())


@pytest.fixture(scope="module")
def chrome(run_dir):
  with browser.chrome() as driver:  # one browser for the module: starting one takes ~1 s
    yield driver


@pytest.fixture
def driver(chrome):
  browser.console_errors(chrome)  # reading the log empties it: this test's entries only
  yield chrome
  # An exception in a click or hash handler shows on the console, not in the DOM.
  assert browser.console_errors(chrome) == []


@pytest.fixture
def page(driver, run_dir):
  _load(driver, browser.report_url(run_dir))
  return driver


_not_ready = []  # why the page did not get ready, once it has not


def _load(driver, url: str) -> None:
  """browser.load, but once a load has timed out every later one fails at once: a page that
  never gets ready would otherwise cost each test the whole timeout."""
  from selenium.common.exceptions import TimeoutException
  if _not_ready:
    pytest.fail(f"the page did not get ready in an earlier test: {_not_ready[0]}", pytrace=False)
  try:
    browser.load(driver, url)
  except TimeoutException as e:
    _not_ready.append(e.msg)
    raise


def _rows(driver) -> list[dict]:
  """The table as the page shows it, in order: each row's data-* and its cells' text by the
  data-key of their column's th."""
  return driver.execute_script("""
      const keys = [...document.querySelectorAll('#neuron-table thead th')]
          .map(th => th.dataset.key);
      return [...document.querySelectorAll('#neuron-table tbody tr.neuron-row')].map(tr => ({
          id: tr.dataset.id, metric: tr.dataset.metric, layer: tr.dataset.layer,
          cells: Object.fromEntries([...tr.cells].map((td, i) => [keys[i], td.textContent.trim()]))
      }));""")


def _element(driver, css: str):
  element = driver.execute_script("return document.querySelector(arguments[0])", css)
  assert element is not None, f"no {css} in the page"
  return element


def _count(driver) -> str:
  return _element(driver, "#neuron-count").text


def _choose(driver, select_id: str, value: str) -> None:
  """Picks `value` in the select the way a user does (Selenium clicks the option: a real change
  event, not a value set from a script)."""
  from selenium.webdriver.support.ui import Select
  Select(_element(driver, f"#{select_id}")).select_by_value(value)


def _rounds_to(text: str, value: float) -> bool:
  """Whether the number `text` is `value` rounded to the decimals that `text` shows."""
  decimals = len(text.split(".")[1]) if "." in text else 0
  return abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-12


def _rgba(css: str) -> tuple[float, float, float, float]:
  """A computed colour, "rgb(r, g, b)" or "rgba(r, g, b, a)", as numbers."""
  m = re.fullmatch(r"rgba?\(([\d.]+), ([\d.]+), ([\d.]+)(?:, ([\d.]+))?\)", css)
  assert m, f"computed background colour {css!r} is not rgb()/rgba()"
  return (*map(float, m.groups()[:3]), float(m.group(4) or 1))


def test_page_builds_the_table_of_every_neuron_without_errors(page, data):
  assert browser.console_errors(page) == []  # the load itself: no script error, no failed fetch
  neurons = data["neurons"]
  assert len({n["metric"] for n in neurons}) > 1  # else the filter test below tests nothing
  shown = _rows(page)
  # ids repeat across metrics (one neuron can top two), so a row is (id, metric): one per entry
  assert Counter((r["id"], r["metric"]) for r in shown) == Counter(
      (n["id"], n["metric"]) for n in neurons)
  layer = {(n["id"], n["metric"]): n["layer"] for n in neurons}
  assert all(r["layer"] == str(layer[r["id"], r["metric"]]) for r in shown)
  assert re.search(rf"\b{len(neurons)} of {len(neurons)}\b", _count(page))


def test_abs_r_header_sorts_descending_then_ascending(page, data):
  every = sorted((n["id"], n["metric"]) for n in data["neurons"])
  abs_r = {(n["id"], n["metric"]): abs(n["r"]) for n in data["neurons"]}
  assert len(set(abs_r.values())) > 1  # else any order is sorted either way
  header = _element(page, '#neuron-table th[data-key="abs_r"]')
  for want_class, descending in (("sorted-desc", True), ("sorted-asc", False)):
    header.click()
    shown = _rows(page)
    keys = [(r["id"], r["metric"]) for r in shown]
    assert sorted(keys) == every  # sorting loses or repeats no row
    # The order is checked on neurons.json's |r| of each row, not on the page's own cells...
    values = [abs_r[k] for k in keys]
    assert values == sorted(values, reverse=descending)
    # ... and the |r| column shows that value, to the decimals it shows.
    bad = [(r["cells"].get("abs_r"), v) for r, v in zip(shown, values)
           if not _rounds_to(r["cells"].get("abs_r", "nan"), v)]
    assert bad == []
    other_class = "sorted-asc" if descending else "sorted-desc"
    classes = header.get_attribute("class").split()
    assert want_class in classes and other_class not in classes


def test_metric_filter_keeps_that_metrics_neurons(page, data):
  neurons = data["neurons"]
  want = Counter(n["id"] for n in neurons if n["metric"] == METRIC)
  assert 0 < sum(want.values()) < len(neurons)  # the filter must keep some and drop some
  _choose(page, "filter-metric", METRIC)
  shown = _rows(page)
  assert {r["metric"] for r in shown} == {METRIC}
  assert Counter(r["id"] for r in shown) == want
  assert re.search(rf"\b{sum(want.values())} of {len(neurons)}\b", _count(page))
  _choose(page, "filter-metric", "")  # "all" brings every row back
  assert len(_rows(page)) == len(neurons)


@pytest.mark.parametrize("select_id, value, keep", [
    ("filter-sign", "+", lambda n, layer: n["r"] > 0),
    ("filter-sign", "-", lambda n, layer: n["r"] < 0),
    ("filter-layer", None, lambda n, layer: n["layer"] == layer),
    ("filter-significance", "fdr", lambda n, layer: n["fdr"] is True),
    ("filter-significance", "fwer", lambda n, layer: n["fwer"] is True),
], ids=["sign+", "sign-", "layer", "fdr", "fwer"])
def test_other_filters_keep_the_neurons_that_pass(page, data, select_id, value, keep):
  # The layer with the fewest rows (but some): the filter then drops most of the table.
  per_layer = Counter(n["layer"] for n in data["neurons"])
  layer = min(per_layer, key=lambda layer: (per_layer[layer], layer))
  value = str(layer) if value is None else value
  want = Counter((n["id"], n["metric"]) for n in data["neurons"] if keep(n, layer))
  _choose(page, select_id, value)
  assert Counter((r["id"], r["metric"]) for r in _rows(page)) == want
  assert re.search(rf"\b{sum(want.values())} of {len(data['neurons'])}\b", _count(page))


def _top(data: dict) -> dict:
  """neurons.json's rank-1 neuron of METRIC: its panel has token-level examples."""
  (top,) = [n for n in data["neurons"] if n["metric"] == METRIC and n["rank"] == 1]
  assert top["panel"] is True and top["id"] in data["panels"]
  return top


def _check_panel(driver, data: dict, neuron: dict) -> None:
  """The open panel shows `neuron`: its name, its layer's link, and for each of its top and
  bottom examples the tokens with neurons.json's activations, coloured by them."""
  panel = browser.wait_panel(driver, neuron["id"])
  from selenium.webdriver.common.by import By
  title = panel.find_element(By.CSS_SELECTOR, "h3").text
  # \b: "Layer 1" must not pass for layer 12
  assert re.search(rf"\bLayer {neuron['layer']}\b", title), title
  assert re.search(rf"\bneuron {neuron['neuron']}\b", title), title
  assert panel.find_elements(By.CSS_SELECTOR, f'a[href="#layer-{neuron["layer"]}"]')
  assert driver.execute_script(f"return !!document.getElementById('layer-{neuron['layer']}')")
  want = data["panels"][neuron["id"]]
  shown = driver.execute_script("""
      return [...arguments[0].querySelectorAll('div.example')].map(ex =>
          [...ex.querySelectorAll('span.tok')].map(s => ({
              act: s.dataset.act, classes: [...s.classList],
              background: getComputedStyle(s).backgroundColor})));""", panel)
  examples = want["top"] + want["bottom"]
  assert len(examples) > 0 and len(shown) == len(examples)
  coloured = 0
  for spans, shown_example in zip(shown, examples):
    example = data["examples"][str(shown_example["example"])]
    tokens = shown_example["tokens"]
    assert len(tokens) == len(example["tokens"])  # the JSON's own: one activation per token
    # The same activations in the same order: a shift or a reversal fails here.
    assert [float(s["act"]) for s in spans] == pytest.approx(tokens, abs=1e-6)
    site = example["sites"][want["position"]]
    assert [i for i, s in enumerate(spans) if "site" in s["classes"]] == [site]
    assert tokens[site] == pytest.approx(shown_example["activation"], abs=1e-6)
    assert ([i for i, s in enumerate(spans) if "prompt" in s["classes"]]
            == [i for i, p in enumerate(example["prompt"]) if p])
    for a, s in zip(tokens, spans):
      r, _, b, alpha = _rgba(s["background"])
      share = min(1.0, abs(a) / want["max_abs"])
      # Colours keep alpha in 8 bits: an activation under ~1/255 of the scale may show as
      # transparent, rightly; above 2% it must show, with alpha |a| / max_abs.
      if share < 0.02:
        continue
      coloured += 1
      assert alpha == pytest.approx(share, abs=0.02), (a, s["background"])
      assert (r > b) if a > 0 else (b > r), (a, s["background"])  # red +, blue -
  assert coloured > 0  # at least the token at max_abs


def test_clicking_a_row_opens_the_neurons_panel(page, data):
  top = _top(data)
  _element(page, f'tr.neuron-row[data-id="{top["id"]}"][data-metric="{METRIC}"]').click()
  _check_panel(page, data, top)


def test_neuron_in_the_url_opens_its_panel_at_load(driver, run_dir, data):
  top = _top(data)
  _load(driver, browser.report_url(run_dir, top["id"]))  # a fresh load, not a hashchange
  _check_panel(driver, data, top)
  # A neuron without kept activations (ranks past find.report_neurons) gets the stats and the
  # sentence, and no tokens; through a hash set on the open page this time.
  stats_only = [n for n in data["neurons"] if not n["panel"]]
  assert stats_only and all(n["id"] not in data["panels"] for n in stats_only)
  other = stats_only[0]
  driver.execute_script("location.hash = arguments[0]", f"#neuron={other['id']}")
  panel = browser.wait_panel(driver, other["id"])
  assert "No token-level activations kept for this neuron" in panel.text
  assert driver.execute_script("return arguments[0].querySelectorAll('span.tok').length",
                               panel) == 0


def test_text_from_the_run_stays_text(driver, run_dir, data, tmp_path):
  """A token that holds markup (an input can hold any text) is shown as that text: it cannot end
  the data's script element, nor become an element of the page."""
  import markupsafe
  from jaxskill.report import browser as browser_data
  evil = "</script><img id=injected src=x onerror=\"document.title='owned'\">&amp;"
  top = _top(data)
  page_data = report_lib.report_data(run_dir)
  panel = page_data["browser"]["panels"][top["id"]]
  example = page_data["browser"]["examples"][panel["top"][0]["example"]]
  example["tokens"][0] = evil
  page_data["browser_json"] = markupsafe.Markup(browser_data.script_json(page_data["browser"]))
  (tmp_path / "report.html").write_text(report_lib.render(page_data))
  _load(driver, browser.report_url(tmp_path, top["id"]))
  shown = browser.wait_panel(driver, top["id"])
  assert driver.execute_script("return document.getElementById('injected')") is None
  assert driver.title != "owned"
  first = driver.execute_script(
      "return arguments[0].querySelector('div.example span.tok').textContent", shown)
  assert first == evil
