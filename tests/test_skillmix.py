"""Skill-Mix-style task: inputs parsed back independently of the module, answers checked against
the templates, distinct combinations, errors, and encoding with the shipped tokenizer."""

import itertools
import math
import re

import numpy as np
import pytest

from jaxskill.tasks import encode as data_lib
from jaxskill.tasks import SPLITS, TaskConfig, TaskError, build_task, skillmix
from jaxskill.tasks.skillmix import SKILLS, TOPICS

BY_NAME = {s.name: s for s in SKILLS}
INPUT = re.compile(r"Write a short text about (.+) that shows (?:this skill|these skills): "
                   r"(.+)\.\nText:")
LISTED = re.compile(r"([a-z ]+) \(([^()]+)\)(?:, |$)")


def parse(text):
  """input -> (topic, [(skill name, definition), ...] in the order listed)."""
  m = INPUT.fullmatch(text)
  assert m, text
  listed = LISTED.findall(m.group(2))
  assert ", ".join(f"{n} ({d})" for n, d in listed) == m.group(2)  # nothing left unparsed
  return m.group(1), listed


def sentence(template, topic):
  text = template.format(topic=topic)
  return text[0].upper() + text[1:]


def examples(task):
  return [ex for split in SPLITS for ex in task.splits[split]]


def test_same_seed_same_task_other_seed_other_task():
  a = skillmix(n_train=60, n_dev=10, n_test=20, seed=4)
  assert a == skillmix(n_train=60, n_dev=10, n_test=20, seed=4)
  assert a.name == "skillmix" and a.kind == "generation"
  assert [len(a.splits[s]) for s in SPLITS] == [60, 10, 20]
  b = skillmix(n_train=60, n_dev=10, n_test=20, seed=5)
  assert [e.input for e in examples(a)] != [e.input for e in examples(b)]


def test_combinations_distinct_within_and_across_splits():
  task = skillmix(n_train=300, n_dev=50, n_test=100, seed=0)
  seen = {}
  for split in SPLITS:
    for ex in task.splits[split]:
      topic, listed = parse(ex.input)
      key = (topic, frozenset(n for n, _ in listed))
      assert key not in seen, (key, split, seen.get(key))
      seen[key] = split
  assert len(seen) == 450


def test_metadata_matches_the_parsed_input():
  task = skillmix(skills_per_text=(1, 2, 3), n_train=200, n_dev=20, n_test=20, seed=1)
  ks = set()
  for ex in examples(task):
    topic, listed = parse(ex.input)
    names = {n for n, _ in listed}
    assert len(names) == len(listed)
    for name, definition in listed:
      assert BY_NAME[name].definition == definition
    assert ex.metadata["topic"] == topic and topic in TOPICS
    assert ex.metadata["k"] == len(names)
    ks.add(len(names))
    assert set(ex.metadata["skills"].split("+")) == names
    columns = {k: v for k, v in ex.metadata.items() if k.startswith("skill_")}
    assert len(columns) == len(SKILLS)
    assert {k for k, v in columns.items() if v == 1} == {
        "skill_" + n.replace(" ", "_") for n in names}
    assert all(v in (0, 1) and isinstance(v, int) for v in columns.values())
  assert ks == {1, 2, 3}
  assert "skill_rhetorical_question" in examples(task)[0].metadata


def test_answer_is_one_template_per_requested_skill_in_order():
  task = skillmix(n_train=500, n_dev=100, n_test=200, seed=2)
  chosen = {}  # (topic, skill) -> its sentence
  for ex in examples(task):
    topic, listed = parse(ex.input)
    assert ex.answer.startswith(" ") and not ex.answer.startswith("  ")
    options = [[sentence(t, topic) for t in BY_NAME[n].templates] for n, _ in listed]
    matches = [choice for choice in itertools.product(*options)
               if ex.answer == " " + " ".join(choice)]
    assert len(matches) == 1, (ex.input, ex.answer)
    for (name, _), said in zip(listed, matches[0]):
      # One template per (topic, skill) for the whole task: the answer follows from the input.
      assert chosen.setdefault((topic, name), said) == said
  for skill in SKILLS:  # and over the topics every template is used
    used = {t for (topic, name), s in chosen.items() if name == skill.name
            for t in skill.templates if sentence(t, topic) == s}
    assert used == set(skill.templates), skill.name


def test_every_skill_and_topic_is_used_and_templates_are_sound():
  task = skillmix(n_train=400, n_dev=100, n_test=200, seed=0)
  used = {n for ex in examples(task) for n, _ in parse(ex.input)[1]}
  assert used == set(BY_NAME)
  assert {ex.metadata["topic"] for ex in examples(task)} == set(TOPICS)
  for skill in SKILLS:
    assert 2 <= len(skill.templates) <= 3 and "(" not in skill.definition
    assert all(t.count("{topic}") == 1 for t in skill.templates)


def test_too_many_examples_and_bad_options():
  n_pool = len(TOPICS) * (len(SKILLS) + math.comb(len(SKILLS), 2))
  everything = skillmix(n_train=n_pool - 2, n_dev=1, n_test=1)
  assert len({(e.metadata["topic"], e.metadata["skills"]) for e in examples(everything)}) == n_pool
  with pytest.raises(TaskError) as e:
    skillmix(n_train=n_pool, n_dev=1, n_test=0)
  assert f"= {n_pool + 1}" in str(e.value) and f"only {n_pool} distinct" in str(e.value)
  assert "skills_per_text=[1, 2]" in str(e.value)
  with pytest.raises(TaskError, match="skills_per_text entries .* got 0"):
    skillmix(skills_per_text=(0, 1))
  with pytest.raises(TaskError, match=f"got {len(SKILLS) + 1}"):
    skillmix(skills_per_text=(len(SKILLS) + 1,))
  with pytest.raises(TaskError, match="skills_per_text is empty"):
    skillmix(skills_per_text=())
  with pytest.raises(TaskError, match="n_dev must be a non-negative integer, got -1"):
    skillmix(n_dev=-1)
  with pytest.raises(TaskError, match="is 0"):
    skillmix(n_train=0, n_dev=0, n_test=0)


def test_build_task_reads_skills_per_text():
  cfg = TaskConfig(name="skillmix", skills_per_text=[2], n_train=8, n_dev=2, n_test=2, seed=3)
  assert cfg.skills_per_text == (2,)
  task = build_task(cfg)
  assert task == skillmix(skills_per_text=(2,), n_train=8, n_dev=2, n_test=2, seed=3)
  assert {e.metadata["k"] for e in examples(task)} == {2}
  with pytest.raises(TaskError, match="only"):
    build_task(TaskConfig(name="skillmix"))  # the defaults ask for 1700 of 936


def test_encodes_with_the_demo_tokenizer():
  from jaxskill.model import load_tokenizer
  tokenizer = load_tokenizer("demo")
  task = skillmix(n_train=6, n_dev=2, n_test=2, seed=0)
  budget = data_lib.answer_budget(task, tokenizer)
  enc = data_lib.encode(task, "train", tokenizer, data_lib.Layout(4, "infix", budget + 4 + 300),
                        budget=budget)
  assert len(enc) == 6 and enc.n_truncated == 0
  for i, ex in enumerate(task.splits["train"]):
    answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"]
    assert list(enc.targets[i][enc.loss_mask[i] == 1]) == answer + [tokenizer.eos_token_id]
  assert enc.metadata["skill_metaphor"].dtype == np.float64
  assert enc.metadata["topic"].dtype == object
  from jaxskill.model.capture import metadata_columns
  names = metadata_columns(enc.metadata)
  assert {f"meta_skill_{s.name.replace(' ', '_')}" for s in SKILLS} <= set(names)
  assert "meta_k" in names and "meta_topic" not in names and "meta_skills" not in names
