"""Run-directory files: written atomically, read with errors that name the file, and a lock that
keeps two runs out of one directory.

Every output is written to a temporary file beside it and renamed over it (`os.replace` is
atomic on POSIX), so a kill leaves either the old file or the new one, never a torn one. The file
gets the mode that `open` would give it (0666 less the umask), not the temporary file's 0600.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import yaml


class DamagedFileError(ValueError):
  """A file the run wrote earlier cannot be read back (cut short, overwritten, not ours)."""


class RunLockError(RuntimeError):
  """Another process holds the run directory."""


# --- writing ------------------------------------------------------------------------------------

def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
  """Calls `write(f)` on a temporary file in `path`'s directory, then renames it to `path`.
  mode "path": `write(the temporary file's path)`, for a library that writes a file by name."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  try:
    os.fchmod(fd, 0o666 & ~_umask())
    if mode == "path":
      os.close(fd)
      write(Path(tmp))
      os.chmod(tmp, 0o666 & ~_umask())  # a library may have made the file anew
      fd = os.open(tmp, os.O_RDONLY)
      try:
        os.fsync(fd)  # the rename must not land before the data
      finally:
        os.close(fd)
    else:
      with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    with contextlib.suppress(FileNotFoundError):
      os.unlink(tmp)
    if isinstance(e, OSError) and e.errno is not None and e.filename is None:
      # A full disk fails in write() or fsync(), whose error names no file.
      raise OSError(e.errno, f"{e.strerror} (writing {path})") from None
    raise
  return path


def append_jsonl(path: str | Path, records: list[dict]) -> None:
  """Appends one JSON line per record (a line cut short by a kill is dropped by `read_jsonl`)."""
  with open(path, "a", encoding="utf-8") as f:
    f.write("".join(json.dumps(record) + "\n" for record in records))


def read_jsonl(path: str | Path) -> list[tuple[str, Any]]:
  """(line, its JSON value, or None for a line that is not JSON: one cut short by a kill) of
  every line of a JSON-lines file; [] when there is none."""
  path = Path(path)
  if not path.exists():
    return []
  out = []
  for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
    try:
      out.append((line, json.loads(line)))
    except json.JSONDecodeError:
      out.append((line, None))
  return out


def digest(*parts) -> str:
  """16 hex digits of the SHA-256 of `parts` in order (bytes as they are, anything else as
  sorted-key JSON): the fingerprints of stage records and of verify's progress log."""
  h = hashlib.sha256()
  for part in parts:
    h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
  return h.hexdigest()[:16]


def _umask() -> int:
  """The process's umask, read without setting it where Linux shows it (setting it to read it
  back would race with other threads creating files)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def write_text(path: str | Path, text: str) -> Path:
  """Writes `text` (UTF-8) atomically; returns `path`."""
  return atomic_write(path, lambda f: f.write(text), "w")


def write_bytes(path: str | Path, data: bytes) -> Path:
  """Writes `data` atomically; returns `path`."""
  return atomic_write(path, lambda f: f.write(data))


def write_json(path: str | Path, obj) -> Path:
  """Writes `obj` as indented JSON atomically; returns `path`."""
  return write_text(path, json.dumps(obj, indent=2) + "\n")


def save_npy(path: str | Path, array) -> Path:
  """Writes an array-like of any shape and dtype as .npy atomically; returns `path`."""
  return atomic_write(path, lambda f: np.save(f, np.asarray(array)))


def save_npz(path: str | Path, **arrays) -> Path:
  """Writes the keyword arrays (any shapes) as one uncompressed .npz atomically; returns `path`."""
  return atomic_write(path, lambda f: np.savez(f, **arrays))


# --- reading ------------------------------------------------------------------------------------

def _damaged(path: Path, error: Exception) -> DamagedFileError:
  detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
  return DamagedFileError(f"{path}: cannot be read ({type(error).__name__}: {detail}); it is "
                          "damaged or incomplete: delete it and run the stage that writes it "
                          "again (`jaxskill run CONFIG` recomputes what is missing)")


def read_json(path: str | Path):
  """The parsed JSON of `path`; FileNotFoundError if missing, DamagedFileError if unreadable."""
  path = Path(path)
  try:
    return json.loads(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise
  except (ValueError, OSError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
    raise _damaged(path, e) from None


def read_yaml(path: str | Path):
  """The parsed YAML of `path` (safe_load); FileNotFoundError if missing, DamagedFileError if
  unreadable."""
  path = Path(path)
  try:
    return yaml.safe_load(path.read_text(encoding="utf-8"))
  except FileNotFoundError:
    raise
  except (yaml.YAMLError, ValueError, OSError) as e:
    raise _damaged(path, e) from None


def load_npy(path: str | Path) -> np.ndarray:
  """The array of a .npy, shape and dtype as saved (no pickles); FileNotFoundError if missing,
  DamagedFileError if unreadable."""
  path = Path(path)
  try:
    return np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise
  except (ValueError, OSError, EOFError) as e:
    raise _damaged(path, e) from None


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
  """Every array of an .npz, read now (a lazy NpzFile would fail later, far from the name)."""
  path = Path(path)
  try:
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in data.files}
  except FileNotFoundError:
    raise
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise _damaged(path, e) from None


def readable(path: str | Path, reader: Callable[[Path], Any]) -> bool:
  """Whether `path` exists and `reader` reads it back whole."""
  try:
    reader(Path(path))
    return True
  except (FileNotFoundError, DamagedFileError):
    return False


# --- the run lock -------------------------------------------------------------------------------

def _flock(f, directory: Path, path: Path, *, shared: bool) -> None:
  """Takes the flock of the open .lock file `f` without waiting, or raises a RunLockError
  naming the holder's pid (the file's content, written by the last `run_lock`)."""
  try:
    fcntl.flock(f, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
  except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EACCES):
      raise RunLockError(f"cannot lock {directory}: {e.strerror or e} ({path}; the file "
                         "system may not support locks)") from None
    f.seek(0)
    holder = f.read().strip() or "unknown"
    raise RunLockError(
        f"{directory} is in use by another jaxskill process (pid {holder}, lock {path}); "
        "wait for it to finish or stop it, or use another run name (name=...)") from None


@contextlib.contextmanager
def read_lock(directory: str | Path) -> Iterator[None]:
  """For a command that only reads a run directory (`jaxskill report DIR`): shared with other
  readers, refused while a writer holds `run_lock`, and needing no write access (a copy on a
  read-only disk, a colleague's run). A directory without .lock was never written by a run
  that locks, so nothing is writing it."""
  directory = Path(directory)
  path = directory / ".lock"
  try:
    f = open(path, "r", encoding="utf-8")
  except FileNotFoundError:
    yield
    return
  except OSError as e:
    raise RunLockError(f"cannot lock {directory}: {e.strerror or e} ({path})") from None
  try:
    _flock(f, directory, path, shared=True)
    yield
  finally:
    f.close()


@contextlib.contextmanager
def run_lock(directory: str | Path) -> Iterator[None]:
  """Holds `directory/.lock` for the duration; another holder gives a RunLockError naming its
  pid. The lock is the kernel's (flock): a crashed holder's lock is gone with its process, so
  a stale lock file is simply taken over."""
  directory = Path(directory)
  path = directory / ".lock"
  try:
    directory.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+", encoding="utf-8")
  except OSError as e:  # not a directory, read-only, ...
    raise RunLockError(f"cannot lock {directory}: {e.strerror or e} ({path})") from None
  try:
    _flock(f, directory, path, shared=False)
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    yield
  finally:
    f.close()  # closing releases the flock

