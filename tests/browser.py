"""Headless Chromium for the tests that open report.html in a real browser.

The browser itself starts in scripts/screenshot_report.py (`chrome()`: Debian's chromium through
its chromedriver, never a downloaded one), so that the documentation's screenshot and these tests
see the page in the same browser with the same flags."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from screenshot_report import (chrome, load, missing, report_url,  # noqa: E402,F401
                               wait_panel)


def available() -> bool:
  """Whether chromium, chromedriver and selenium are all here."""
  return not missing()


def require() -> None:
  """Skips the calling test when the browser is missing, except under CI (CI=true), where it
  fails: the issue asks that the browser test runs in CI, and scripts/test.sh installs it there,
  so a missing browser is a broken set-up that a skip would hide."""
  lacking = missing()
  if not lacking:
    return
  message = "the browser test needs " + ", ".join(lacking) + " (scripts/test.sh installs them)"
  if os.environ.get("CI", "").lower() in ("true", "1"):
    pytest.fail(message, pytrace=False)
  pytest.skip(message)


def console_errors(driver) -> list[str]:
  """The SEVERE entries of the browser's console since the last call (reading empties it):
  uncaught exceptions, console.error, failed loads."""
  return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
