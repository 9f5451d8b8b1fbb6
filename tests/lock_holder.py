"""Another process holding a run directory's lock, as a second `jaxskill` would."""

import contextlib
import subprocess
import sys


@contextlib.contextmanager
def lock_held_by_another_process(run_dir):
  """Yields the process that holds `run_dir`'s `run_lock` until the block ends (then it is
  killed, as a crash would end it, leaving its lock file with its pid)."""
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom jaxskill.runtime.files import run_lock\n"
       "with run_lock(sys.argv[1]):\n  print('locked', flush=True)\n  time.sleep(600)",
       str(run_dir)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "locked"
    yield holder
  finally:
    holder.kill()
    holder.wait()
