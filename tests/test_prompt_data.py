"""Soft-prompt insertion and the token layout of encoded examples, checked by hand."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import jaxskill
from jaxskill.model import prompt as prompt_lib
from jaxskill.tasks import encode as data_lib
from jaxskill.tasks.base import Example, Task, TaskError


@pytest.fixture(scope="module")
def tokenizer():
  return jaxskill.load_tokenizer("demo")


def test_insert_prompt_by_index():
  embeds = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
  prompt = {"embeddings": -jnp.arange(1, 7, dtype=jnp.float32).reshape(2, 3)}
  index = jnp.array([[-1, 0, 1, -1, -1], [0, 1, -1, -1, -1]])
  out = np.asarray(prompt_lib.insert_prompt(embeds, prompt, index))
  want = np.asarray(embeds).copy()
  want[0, 1], want[0, 2] = [-1, -2, -3], [-4, -5, -6]
  want[1, 0], want[1, 1] = [-1, -2, -3], [-4, -5, -6]
  np.testing.assert_array_equal(out, want)


def test_prompt_inits():
  table = jnp.arange(40, dtype=jnp.float32).reshape(10, 4)
  p = prompt_lib.init_from_vocab(jax.random.PRNGKey(0), table, 3)["embeddings"]
  rows = [int(r[0]) // 4 for r in np.asarray(p)]
  assert len(set(rows)) == 3 and all(np.asarray(p)[i, 0] == rows[i] * 4 for i in range(3))
  t = prompt_lib.init_from_text([7, 2], table, 5)["embeddings"]
  np.testing.assert_array_equal(np.asarray(t), np.asarray(table)[[7, 2, 7, 2, 7]])
  t = prompt_lib.init_from_text([1, 2, 3, 4], table, 2)["embeddings"]
  np.testing.assert_array_equal(np.asarray(t), np.asarray(table)[[1, 2]])
  r = prompt_lib.init_random(jax.random.PRNGKey(1), 2000, 4, 0.5)["embeddings"]
  # 8000 draws from a fixed key (the same bits on every CPU): the sample std's own spread is
  # 0.5 / sqrt(2 * 8000) = 4e-3, so 0.02 is 5 of those.
  assert abs(float(jnp.std(r)) - 0.5) < 0.02


def _ids(tokenizer, text):
  return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_infix_generation_layout(tokenizer):
  """[pad][input][prompt][answer][pad]: inputs right-aligned so the prompt starts at one column."""
  task = Task("t", "generation", {"train": (Example("Q: 1 plus 2?", " 3"),
                                            Example("Q: 1?", " 12"))})
  enc = data_lib.encode(task, "train", tokenizer, data_lib.Layout(2, "infix", 16))
  eos = tokenizer.eos_token_id
  answers = [_ids(tokenizer, " 3") + [eos], _ids(tokenizer, " 12") + [eos]]
  budget = max(len(a) for a in answers)
  width = 16 - 2 - budget  # the prompt's column in every row
  for i, text in enumerate(["Q: 1 plus 2?", "Q: 1?"]):
    inp, ans = _ids(tokenizer, text), answers[i]
    lead = width - len(inp)
    row = list(enc.input_ids[i])
    assert row[lead:width] == inp and row[width + 2:width + 2 + len(ans)] == ans
    assert list(enc.attention_mask[i]) == [0] * lead + [1] * (len(inp) + 2 + len(ans)) + [0] * (
        16 - width - 2 - len(ans))
    assert list(enc.prompt_index[i, width - 1:width + 3]) == [-1, 0, 1, -1]
    # position p predicts token p + 1: the last prompt slot predicts the answer's first token.
    assert enc.answer_pos[i] == width + 1
    assert list(np.nonzero(enc.loss_mask[i])[0]) == list(range(width + 1, width + 1 + len(ans)))
    assert list(enc.targets[i][enc.loss_mask[i] == 1]) == ans
    assert enc.input_end[i] == width and enc.prompt_start[i] == width


def _layout(truncation):
  return data_lib.Layout(3, "prefix", 10, truncation=truncation)


def test_prefix_classification_layout_and_truncation(tokenizer):
  long = "Q: What is 123 plus 456 plus 789?"
  task = Task("c", "classification", {"train": (Example("Q: 1?", " yes", 0),
                                                Example(long, " no", 1))},
              verbalizer=("1", "2"))
  ids_long = _ids(tokenizer, long)
  enc = data_lib.encode(task, "train", tokenizer, _layout("left"))
  assert enc.n_truncated == 1
  assert list(enc.prompt_index[1, :3]) == [0, 1, 2]
  assert list(enc.input_ids[1, 3:10]) == ids_long[-7:]  # kept the end of the input
  assert enc.answer_pos[1] == 9 and list(enc.label) == [0, 1]
  assert enc.loss_mask.sum() == 0
  right = data_lib.encode(task, "train", tokenizer, _layout("right"))
  assert list(right.input_ids[1, 3:10]) == ids_long[:7]
  with pytest.raises(TaskError, match="example 1: input is"):
    data_lib.encode(task, "train", tokenizer, _layout("error"))


def test_verbalizer_must_be_single_distinct_tokens(tokenizer):
  assert list(data_lib.verbalizer_ids(tokenizer, ("1", "2"))) == [_ids(tokenizer, "1")[0],
                                                                    _ids(tokenizer, "2")[0]]
  with pytest.raises(TaskError, match="is 2 tokens"):
    data_lib.verbalizer_ids(tokenizer, ("12", "3"))


def test_batch_stream_is_a_sequence_of_permutations():
  n, b = 7, 3
  stream = np.concatenate([data_lib.batch_indices(n, b, s, seed=5) for s in range(7)])
  for epoch in range(3):
    assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
  assert not np.array_equal(stream[:n], stream[n:2 * n])
  np.testing.assert_array_equal(data_lib.batch_indices(n, b, 4, seed=5), stream[12:15])


def test_vocab_init_skips_padding_rows_of_the_table():
  from jaxskill.config import PromptConfig
  from jaxskill.stages.train import init_prompt

  class FiveTokens:
    def __len__(self):
      return 5

  table = jnp.arange(10 * 2, dtype=jnp.float32).reshape(10, 2)  # rows 5-9: padding
  for seed in range(20):
    p = init_prompt(PromptConfig(length=4), jax.random.PRNGKey(seed), table, FiveTokens())
    rows = np.asarray(p["embeddings"])[:, 0] // 2
    assert rows.max() < 5 and len(set(rows)) == 4


# --- each process's share of the rows ---------------------------------------------------------

def _batch_indices_by_hand(n, batch_size, step, seed):
  """The stream's definition, one example at a time: position p is example
  permutation(seed, p // n)[p % n]."""
  return np.array([np.random.default_rng([seed, p // n]).permutation(n)[p % n]
                   for p in range(step * batch_size, (step + 1) * batch_size)])


def test_batch_indices_match_the_stream_definition():
  for step in range(7):  # 5 examples, batches of 3: batches that straddle epochs
    np.testing.assert_array_equal(data_lib.batch_indices(5, 3, step, seed=11),
                                  _batch_indices_by_hand(5, 3, step, 11))


def test_train_rows_are_what_a_process_feeds():
  n, b, steps, seed = 10, 4, 6, 3  # 24 positions: 2.4 epochs
  halves = [np.arange(0, 2), np.arange(2, 4)]  # two processes, two rows of each batch
  for local in halves:
    fed = np.concatenate([_batch_indices_by_hand(n, b, s, seed)[local] for s in range(steps)])
    np.testing.assert_array_equal(data_lib.train_rows(n, b, steps, seed, local), np.unique(fed))
  # Within the first epoch the two shares are disjoint (2 steps = 8 of 10 examples).
  a, c = (data_lib.train_rows(n, b, 2, seed, local) for local in halves)
  assert len(a) == len(c) == 4 and not set(a) & set(c)


def test_eval_rows_cover_the_split_once_between_processes():
  n, b = 11, 4  # batches 0-3, 4-7, 8-11 (the last padded with example 10)
  assert data_lib.eval_rows(n, b, np.arange(0, 2)).tolist() == [0, 1, 4, 5, 8, 9]
  assert data_lib.eval_rows(n, b, np.arange(2, 4)).tolist() == [2, 3, 6, 7, 10]
  assert data_lib.eval_rows(n, b, np.arange(4)).tolist() == list(range(n))


def test_encode_only_some_rows(tokenizer):
  examples = tuple(Example(f"Q: {i} plus {i}?", f" {2 * i}", metadata={"i": i})
                   for i in range(6))
  task = Task("t", "generation", {"train": examples})
  layout = data_lib.Layout(2, "infix", 16)
  whole = data_lib.encode(task, "train", tokenizer, layout)
  part = data_lib.encode(task, "train", tokenizer, layout, rows=np.array([1, 4]))
  assert whole.present is None and part.present.tolist() == [0, 1, 0, 0, 1, 0]
  assert part.batch().answer_budget == whole.answer_budget > 0  # one layout for every row
  for name, arr in vars(part.batch()).items():
    if name not in ("valid", "meta", "answer_budget"):
      np.testing.assert_array_equal(arr[[1, 4]], getattr(whole, name)[[1, 4]], err_msg=name)
  assert not part.attention_mask[[0, 2, 3, 5]].any()  # never tokenized: all padding
  np.testing.assert_array_equal(part.metadata["i"], np.arange(6))  # no tokenizer needed
  part.check_rows(np.array([4, 1]))
  with pytest.raises(RuntimeError, match=r"rows \[0, 5\] were not encoded"):
    part.check_rows(np.array([0, 1, 5]))
  with pytest.raises(RuntimeError, match="not encoded"):
    data_lib.eval_batch(part, 2, 0)  # rows 0 and 1: row 0 is another process's
  got = [data_lib.eval_batch(part, 3, i, local=np.array([1])).input_ids for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(got), whole.input_ids[[1, 4]])


def test_raise_together_in_one_process_is_the_plain_error():
  from jaxskill.runtime import sharding

  def bad():
    raise TaskError("row 3: too long")
  with pytest.raises(TaskError, match="row 3: too long"):
    sharding.raise_together(bad, TaskError)
  assert sharding.raise_together(lambda: 5, TaskError) == 5
