"""Input that used to be silently wrong, or refused with a traceback, through the `jaxskill`
command as a user meets it. Each case here did that on 6db25d3: a duplicated CSV column or a
lone carriage return, a bogus find.heldout_split, an integer tensor in a float checkpoint, a huge
find.permutations, and the smaller ones of the same round (ranges unnamed, a command-line value
blamed on the file, convert into its own source, a path that is a directory or a link loop,
`report DIR` of a directory it cannot write)."""

import json
import shutil

import numpy as np
import pytest

from jaxskill import cli
from jaxskill.model.checkpoint import DEMO_MODEL, read_safetensors, write_safetensors
from tests.lock_holder import lock_held_by_another_process

DEMO = "configs/demo.yaml"
SMALL = ["task.n_train=32", "task.n_dev=8", "task.n_test=16", "train.steps=2",
         "train.batch_size=8", "train.eval_every=2", "find.batch_size=16", "verify.k_list=1,2",
         "verify.k=2", "verify.random_draws=2", "verify.modes=zero", "verify.batch_size=16",
         "prompt.length=2", "find.report_neurons=1", "find.permutations=2"]


def jaxskill(capsys, *argv) -> tuple[int, str, str]:
  code = cli.main([*argv, "--no-progress"] if argv[0] not in ("convert", "export") else argv)
  out = capsys.readouterr()
  return code, out.out, out.err


def _table(tmp_path, name: str, text: str, *extra) -> list[str]:
  """A classification run on the table `name` (written as `text`) in `tmp_path`; `extra`
  ("key=value") replaces the same keys."""
  path = tmp_path / name
  path.write_text(text, newline="")
  options = [*[o for o in SMALL if not o.startswith("task.")], f"out_dir={tmp_path / 'runs'}",
             "task.name=table", f"task.path={path}", "task.input_field=text",
             "task.label_field=label", "task.labels=yes,no", "task.n_train=-1", "task.n_dev=-1",
             "task.n_test=-1", "find.metrics=", "verify.selection=label", "verify.group_by="]
  given = {e.split("=")[0] for e in extra}
  return [DEMO, *[o for o in options if o.split("=")[0] not in given], *extra]


def _rows(n: int = 40) -> str:
  return "".join(f"{i} plus {i},{'yes' if i % 2 else 'no'}\n" for i in range(n))


def test_a_duplicated_csv_column_is_refused_by_name(tmp_path, capsys):
  # On 6db25d3 the last "label" won: the labels came from the wrong column, silently.
  code, _, err = jaxskill(capsys, "train", *_table(tmp_path, "dup.csv",
                                                    "text,label,label\n" + _rows()))
  assert code == 2, err
  assert f"{tmp_path / 'dup.csv'}: line 1: the column 'label' appears 2 times" in err
  assert not (tmp_path / "runs").exists()


def test_a_duplicated_jsonl_field_is_refused_by_name(tmp_path, capsys):
  rows = "".join(json.dumps({"text": f"{i}", "label": "yes"})[:-1] + ', "label": "no"}\n'
                 for i in range(30))
  code, _, err = jaxskill(capsys, "train", *_table(tmp_path, "dup.jsonl", rows))
  assert code == 2 and "dup.jsonl: line 1: the field 'label' appears more than once" in err


def test_a_lone_carriage_return_in_a_csv_names_the_file_and_line(tmp_path, capsys):
  text = "text,label\n" + _rows(5) + "5 plus 5,yes\r6 plus 6,no\n" + _rows(30)
  code, _, err = jaxskill(capsys, "train", *_table(tmp_path, "cr.csv", text))
  assert code == 2 and "Traceback" not in err
  assert f"{tmp_path / 'cr.csv'}: line 7: a carriage return" in err, err


def test_a_directory_or_a_link_loop_as_task_path_is_named_as_such(tmp_path, capsys):
  (tmp_path / "adir.csv").mkdir()
  (tmp_path / "loop.csv").symlink_to(tmp_path / "loop.csv")
  code, _, err = jaxskill(capsys, "train", *_table(tmp_path, "ok.csv", "",
                                                    f"task.path={tmp_path / 'adir.csv'}"))
  assert code == 2 and "adir.csv: is a directory, not a file" in err, err
  code, _, err = jaxskill(capsys, "train", *_table(tmp_path, "ok.csv", "",
                                                    f"task.path={tmp_path / 'loop.csv'}"))
  assert code == 2 and "loop.csv: cannot be read as a file (a symbolic link loop)" in err, err


def test_a_column_with_text_among_numbers_is_said_not_to_be_a_metric(tmp_path, capsys):
  rows = "".join(f"{i} plus {i},{'yes' if i % 2 else 'no'},{'n/a' if i == 3 else i}\n"
                 for i in range(40))
  args = _table(tmp_path, "na.csv", "text,label,size\n" + rows)
  code, _, err = jaxskill(capsys, "find", *args)
  assert code == 0, err
  assert "meta_size is not a metric: 1 of" in err and "'n/a'" in err
  # Asked for by name: refused with the same reason.
  code, _, err = jaxskill(capsys, "find", *_table(tmp_path, "na.csv", "text,label,size\n" + rows,
                                                   "find.metrics=label,meta_size"))
  assert code == 2 and "meta_size is text: 1 of" in err, err


def test_a_thin_or_single_label_table_is_warned_about(tmp_path, capsys):
  rows = "".join(f"{i} plus {i},yes\n" for i in range(40))
  code, _, err = jaxskill(capsys, "train", *_table(tmp_path, "one.csv", "text,label\n" + rows))
  assert code == 0, err
  assert "every train example has the label 'yes'" in err, err
  # Three records: warned about whether or not the run can go on with them.
  _, _, err = jaxskill(capsys, "train", *_table(tmp_path, "three.csv", "text,label\n" + _rows(3),
                                                 "name=three", "train.batch_size=1",
                                                 "train.steps=1", "train.eval_every=1"))
  assert "the train split has" in err and "fewer than 20" in err, err


@pytest.mark.parametrize("value", ["bogus", "validation"])
def test_a_bogus_heldout_split_is_refused_naming_the_key_and_choices(tmp_path, capsys, value):
  code, _, err = jaxskill(capsys, "run", DEMO, *SMALL, f"out_dir={tmp_path}",
                          f"find.heldout_split={value}")
  assert code == 2
  assert (f"command line (find.heldout_split={value}): find: heldout_split='{value}' is out of "
          "range: expected train, dev or test, or \"\" for none") in err, err
  assert not (tmp_path / "demo").exists()


def test_a_range_error_says_the_range(tmp_path, capsys):
  code, _, err = jaxskill(capsys, "train", DEMO, f"out_dir={tmp_path}", "find.fdr_q=1.5")
  assert code == 2 and "fdr_q=1.5 is out of range: expected in (0, 1)" in err, err
  code, _, err = jaxskill(capsys, "train", DEMO, f"out_dir={tmp_path}",
                          "find.report_neurons=100000")
  assert code == 2 and "expected in [0, 64]" in err, err


def _checkpoint_with(tmp_path, name: str, change) -> str:
  """The demo model copied, its tensors changed by `change(tensors)`."""
  path = tmp_path / name
  shutil.copytree(DEMO_MODEL, path)
  tensors = {k: np.array(v) for k, v in read_safetensors(path / "model.safetensors").items()}
  change(tensors)
  write_safetensors(path / "model.safetensors", tensors)
  return str(path)


def test_an_integer_tensor_is_refused_and_float16_converts(tmp_path, capsys):
  q = "model.layers.0.self_attn.q_proj.weight"
  ints = _checkpoint_with(tmp_path, "ints",
                          lambda t: t.update({q: np.zeros(t[q].shape, np.int32)}))
  code, _, err = jaxskill(capsys, "convert", ints, str(tmp_path / "out"))
  assert code == 2 and f"tensor '{q}' is int32, not a float: a quantized" in err, err
  assert not (tmp_path / "out").exists()
  halves = _checkpoint_with(tmp_path, "halves", lambda t: t.update(
      {k: v.astype(np.float16) for k, v in t.items()}))
  code, out, err = jaxskill(capsys, "convert", halves, str(tmp_path / "out16"))
  assert code == 0, err
  assert "weights stored as float16 are read as float32" in err, err


def test_convert_refuses_its_own_source_and_a_file_as_out_dir(tmp_path, capsys):
  src = _checkpoint_with(tmp_path, "src", lambda t: None)
  code, _, err = jaxskill(capsys, "convert", src, src)
  assert code == 2 and "is the source directory itself" in err, err
  (tmp_path / "afile").write_text("")
  code, _, err = jaxskill(capsys, "export", src, str(tmp_path / "afile"))
  assert code == 2 and "afile is a file, not a directory" in err and "Errno" not in err, err
  (tmp_path / "src" / "tokenizer.json").unlink()
  code, _, err = jaxskill(capsys, "convert", src, str(tmp_path / "notok"))
  assert code == 0 and "no tokenizer files" in err and "will refuse" in err, err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp("bad_input")
  assert cli.main(["run", DEMO, *SMALL, f"out_dir={out_dir}", "--no-progress"]) == 0
  return out_dir


def test_a_huge_permutations_is_refused_before_anything_is_removed(finished, capsys):
  # On 6db25d3: a MemoryError traceback after find's, verify's and the report's outputs were
  # deleted, and stages.json left at "running".
  run_dir = finished / "demo"
  before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
  small = [o for o in SMALL if not o.startswith("find.permutations=")]
  code, _, err = jaxskill(capsys, "run", DEMO, *small, f"out_dir={finished}",
                          "find.permutations=100000000")
  assert code == 2 and "find needs about" in err and "Traceback" not in err, err
  assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before


def test_report_of_a_run_directory_elsewhere_and_with_overrides(finished, capsys):
  run_dir = finished / "demo"
  before = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
  code, out, err = jaxskill(capsys, "report", str(run_dir), "--out", str(finished / "copy"))
  assert code == 0, err
  # The summary and verdicts as `run` prints them, and nothing written into the run directory.
  assert "last-digit shortcut neuron?" in out and "test accuracy without perturbation" in out
  assert f"report: {finished / 'copy' / 'report.html'}" in out
  assert (finished / "copy" / "neurons.json").exists()
  assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == before
  code, _, err = jaxskill(capsys, "report", str(run_dir), "train.lr=1")
  assert code == 2 and err.startswith("jaxskill report: error:"), err


def test_a_report_that_fails_leaves_the_old_one_and_drops_stale_figures(finished, capsys,
                                                                         monkeypatch):
  run_dir = finished / "demo"
  (run_dir / "kde_gone_metric.png").write_bytes(b"an earlier report's figure")
  old = {p.name: p.read_bytes() for p in run_dir.glob("*.png")}
  from jaxskill.report import page as report
  monkeypatch.setattr(report, "render", lambda data: 1 / 0)
  with pytest.raises(ZeroDivisionError):
    report.report(run_dir)
  assert {p.name: p.read_bytes() for p in run_dir.glob("*.png")} == old
  monkeypatch.undo()
  assert jaxskill(capsys, "report", str(run_dir))[0] == 0
  assert not (run_dir / "kde_gone_metric.png").exists()
  assert (run_dir / "kde_label.png").exists()


def test_an_interrupt_is_one_line_and_status_130(tmp_path, capsys, monkeypatch):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(cli, "_run_config", interrupted)
  code, _, err = jaxskill(capsys, "run", DEMO, f"out_dir={tmp_path}")
  assert code == 130 and "Traceback" not in err
  assert err.strip() == "jaxskill run: interrupted; the same command resumes where it stopped"


def test_report_of_a_directory_a_run_is_writing_is_refused(finished, capsys):
  run_dir = finished / "demo"
  with lock_held_by_another_process(run_dir) as holder:
    code, _, err = jaxskill(capsys, "report", str(run_dir), "--out", str(finished / "c2"))
    assert code == 2 and f"in use by another jaxskill process (pid {holder.pid}" in err, err
  assert jaxskill(capsys, "report", str(run_dir), "--out", str(finished / "c2"))[0] == 0


def test_a_yaml_error_is_one_line_with_its_place(tmp_path, capsys):
  bad = tmp_path / "bad.yaml"
  bad.write_text("train:\n  lr: [1,\n  steps: 3\n")
  code, _, err = jaxskill(capsys, "run", str(bad))
  assert code == 2 and len(err.strip().splitlines()) == 1, err
  assert f"{bad}: not valid YAML (line 4, column 1: expected ',' or ']'" in err, err


def test_a_full_disk_names_the_file(finished, capsys, monkeypatch):
  import errno
  import os

  def full(fd):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr("jaxskill.runtime.files.os.fsync", full)
  code, _, err = jaxskill(capsys, "report", str(finished / "demo"), "--out",
                          str(finished / "full"))
  assert code == 2 and "No space left on device (writing " in err, err
  assert str(finished / "full") in err and not list((finished / "full").glob("*.tmp"))


def test_a_non_finite_loss_before_any_update_is_not_blamed_on_the_learning_rate(tmp_path,
                                                                                 capsys):
  broken = _checkpoint_with(tmp_path, "nan", lambda t: t["model.norm.weight"].fill(np.nan))
  code, _, err = jaxskill(capsys, "train", DEMO, *SMALL, f"out_dir={tmp_path}",
                          f"model.path={broken}")
  assert code == 2 and "not finite at step 1" in err, err
  assert "the learning rate is not the cause" in err and "Lower train.lr" not in err


def test_a_loop_without_a_progress_bar_says_how_far_it_is(finished, capsys, monkeypatch):
  from jaxskill.runtime import runner
  monkeypatch.setattr(runner, "QUIET_LOG_SECONDS", 0.0)
  small = [o for o in SMALL if not o.startswith("find.batch_size=")]
  code, _, err = jaxskill(capsys, "find", DEMO, *small, f"out_dir={finished}", "name=quiet",
                          "find.batch_size=8")
  assert code == 0, err
  assert "INFO jaxskill.runtime.runner: correlate: 1 of 4 done" in err, err


def test_no_command_starts_with_the_pytorch_notice(finished):
  import subprocess
  import sys
  # As on a machine without torch (jaxskill needs none): transformers would say so first.
  argv = ["run", DEMO, *SMALL, f"out_dir={finished}", "--no-progress"]  # every stage done
  # scipy, imported first, looks for torch itself and would trip on the missing module.
  code = ("import sys\nimport scipy.stats\nsys.modules['torch'] = None\n"
          f"from jaxskill import cli\nsys.exit(cli.main({argv!r}))")
  import os
  env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_NO_ADVISORY_WARNINGS"}
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  assert done.returncode == 0, done.stderr
  assert "train: done already, skipped" in done.stdout, done.stdout
  assert "PyTorch was not found" not in done.stdout + done.stderr
