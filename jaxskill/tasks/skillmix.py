"""Skill-Mix-style generation: a short text on a topic that shows k requested language skills.

In the style of Skill-Mix (Yu et al. 2023, arXiv 2310.17567), where the external labels are which
skills were requested. The skill list, definitions, demonstrations and topics below are our own;
the public Skill-Mix subset (Apache-2.0) is not used.

Format (skills in a seeded random order; "this skill" when k = 1):
  input:  "Write a short text about {topic} that shows these skills: {skill} ({definition}),
           {skill} ({definition}).\\nText:"
  answer: " " + one hand-written template per requested skill, filled with the topic, in the
          same order and joined by spaces, e.g. " The ocean is a restless giant that never truly
          sleeps. Who could ever grow tired of the ocean?"
The templates are simple but real demonstrations of their skill. Each (topic, skill) pair gets one
template for the whole task (topic i takes template (i + offset) mod n, the offset seeded per
skill), so the answer is a function of the input, exact-match accuracy is reachable, and every
template is used. A definition never contains parentheses, so the input parses back.

An example is a (topic, set of skills) combination. They are drawn without replacement from all
combinations of the sizes in `skills_per_text`, so none repeats within or across splits, and k
is distributed as the pool is (for (1, 2): 144 one-skill and 792 two-skill combinations).
metadata: topic, k, skills (e.g. "metaphor+irony", in SKILLS order) and one 0/1 column per skill,
"skill_<name>" with spaces as underscores (`jaxskill.model.capture` names it "meta_skill_<name>").
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from typing import Sequence

from jaxskill.tasks.base import SPLITS, Example, Task, TaskError


@dataclasses.dataclass(frozen=True)
class Skill:
  """name, a one-line definition (shown in the input) and templates with a {topic} slot."""
  name: str
  definition: str
  templates: tuple[str, ...]


SKILLS = (
    Skill("metaphor", "describing one thing as if it were another",
          ("{topic} is a restless giant that never truly sleeps.",
           "{topic} is a mirror that shows us who we really are.",
           "{topic} is a door to a world we rarely visit.")),
    Skill("simile", "comparing two things with the words like or as",
          ("{topic} is like an old friend who always comes back.",
           "{topic} is as unpredictable as a cat in a room full of string.")),
    Skill("hyperbole", "exaggerating wildly for effect",
          ("I have thought about {topic} a million times today.",
           "Nothing in the whole universe is bigger than {topic}.")),
    Skill("alliteration", "repeating the first sound of nearby words",
          ("Bold, bright and beautiful, {topic} brings back bliss.",
           "Silent, slow and steady, {topic} simply stays.",
           "Many marvellous moments make {topic} memorable.")),
    Skill("rhetorical question", "asking a question for effect, not for an answer",
          ("Who could ever grow tired of {topic}?",
           "Is there anything more honest than {topic}?",
           "What would life be without {topic}?")),
    Skill("irony", "a contrast between what is said or expected and what is meant or happens",
          ("Oh wonderful, {topic} has ruined our plans again, exactly what we wanted.",
           "Everyone said {topic} would be dull, so naturally it was the best part of the week.")),
    Skill("personification", "giving human qualities to something that is not human",
          ("{topic} whispers secrets to anyone who listens.",
           "{topic} smiled at us and waved goodbye.",
           "{topic} sighed, tired of being ignored.")),
    Skill("onomatopoeia", "using words that imitate sounds",
          ("Splash, crash, whoosh: {topic} is never quiet.",
           "Buzz, hum and tick-tock, {topic} keeps its own noisy rhythm.")),
    Skill("understatement", "presenting something as much smaller or milder than it is",
          ("{topic} is not too bad, I suppose.",
           "{topic} caused a slight stir, and we have talked of little else since.")),
    Skill("antithesis", "setting opposite ideas side by side in balanced phrases",
          ("{topic} is loved by many and feared by a few.",
           "With {topic}, the hours feel short but the memories feel long.",
           "{topic} asks for little and gives much.")),
    Skill("oxymoron", "joining two words with opposite meanings",
          ("{topic} is a deafening silence we have learned to enjoy.",
           "There is a sweet sorrow in {topic}.",
           "{topic} brings an organized chaos all of its own.")),
    Skill("idiom", "a fixed phrase whose meaning differs from its literal words",
          ("{topic} is a piece of cake once you get the hang of it.",
           "When it comes to {topic}, we are all in the same boat.",
           "{topic} always steals the show.")),
)

# Singular noun phrases with their article, so that every template reads as a sentence.
TOPICS = ("the ocean", "winter", "coffee", "the city at night", "an old library", "the moon",
          "a thunderstorm", "a marathon", "the internet", "a rainy Monday", "a crowded train",
          "the first day of school")

DEFAULT_SKILLS_PER_TEXT = (1, 2)


def column(skill: str) -> str:
  """The metadata column of a skill: "rhetorical question" -> "skill_rhetorical_question"."""
  return "skill_" + skill.replace(" ", "_")


def fill(template: str, topic: str) -> str:
  """The template with the topic, first letter capitalized (topics are written lowercase)."""
  text = template.format(topic=topic)
  return text[0].upper() + text[1:]


def render_input(topic: str, skills: Sequence[Skill]) -> str:
  """The input text asking for a text on `topic` that shows `skills`, in the order given."""
  listed = ", ".join(f"{s.name} ({s.definition})" for s in skills)
  which = "this skill" if len(skills) == 1 else "these skills"
  return f"Write a short text about {topic} that shows {which}: {listed}.\nText:"


def pool(skills_per_text: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
  """Every (topic, skill indices in SKILLS order) combination, in a fixed order."""
  return [(topic, combo) for k in skills_per_text for topic in TOPICS
          for combo in itertools.combinations(range(len(SKILLS)), k)]


def pool_size(skills_per_text: Sequence[int]) -> int:
  """How many distinct (topic, skill set) combinations `pool(skills_per_text)` has."""
  return len(TOPICS) * sum(math.comb(len(SKILLS), k) for k in skills_per_text)


def _check(skills_per_text: Sequence[int], counts: dict[str, int]) -> tuple[int, ...]:
  ks = tuple(dict.fromkeys(skills_per_text))
  if not ks:
    raise TaskError("task 'skillmix': skills_per_text is empty")
  for k in ks:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(SKILLS):
      raise TaskError(f"task 'skillmix': skills_per_text entries must be integers in "
                      f"[1, {len(SKILLS)}] (the number of skills), got {k!r}")
  for split, n in counts.items():
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
      raise TaskError(f"task 'skillmix': n_{split} must be a non-negative integer, got {n!r}")
  total = sum(counts.values())
  if not total:
    raise TaskError("task 'skillmix': n_train + n_dev + n_test is 0, no examples to generate")
  if total > pool_size(ks):
    raise TaskError(f"task 'skillmix': n_train + n_dev + n_test = {total}, but skills_per_text="
                    f"{list(ks)} gives only {pool_size(ks)} distinct (topic, skills) "
                    f"combinations ({len(TOPICS)} topics, {len(SKILLS)} skills)")
  return ks


def skillmix(skills_per_text: Sequence[int] = DEFAULT_SKILLS_PER_TEXT, n_train: int = 400,
             n_dev: int = 100, n_test: int = 200, seed: int = 0) -> Task:
  """The generation task described in the module docstring, the same for the same arguments.

  Raises TaskError when more examples are asked than there are distinct combinations.
  """
  counts = {"train": n_train, "dev": n_dev, "test": n_test}
  ks = _check(skills_per_text, counts)
  rng = random.Random(seed)
  offsets = {s.name: rng.randrange(len(s.templates)) for s in SKILLS}

  def sentence(skill: Skill, topic: str) -> str:
    """The template this task assigns to (topic, skill), filled."""
    n = len(skill.templates)
    return fill(skill.templates[(TOPICS.index(topic) + offsets[skill.name]) % n], topic)

  drawn = iter(rng.sample(pool(ks), sum(counts.values())))
  splits = {}
  for split in SPLITS:
    examples = []
    for topic, combo in itertools.islice(drawn, counts[split]):
      # The order in the text is random so that position in the list is not the skill's cue.
      skills = [SKILLS[i] for i in rng.sample(combo, len(combo))]
      answer = " ".join(sentence(s, topic) for s in skills)
      metadata: dict[str, float | int | str] = {
          "topic": topic, "k": len(combo), "skills": "+".join(SKILLS[i].name for i in combo)}
      for i, s in enumerate(SKILLS):
        metadata[column(s.name)] = int(i in combo)
      examples.append(Example(input=render_input(topic, skills), answer=" " + answer,
                              metadata=metadata))
    splits[split] = tuple(examples)
  return Task(name="skillmix", kind="generation", splits=splits)
