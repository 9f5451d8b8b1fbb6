"""The tokenizer's special-token prefix (a Llama / Mistral BOS) leads every encoded row, checked by
hand against a real BOS-adding tokenizer built from the demo one (Qwen-style: no BOS)."""

import numpy as np
import pytest
import transformers
from tokenizers import processors

import jaxskill
from jaxskill.tasks import encode as data_lib
from jaxskill.tasks import arithmetic_generation, arithmetic_verification
from jaxskill.tasks.base import Example, Task, TaskError

P = 3  # prompt length


def _load():
  return transformers.AutoTokenizer.from_pretrained(str(jaxskill.model.DEMO_MODEL))


def _with_template(single: str):
  """The demo tokenizer with a new special token "<bos>" and the post-processor `single`."""
  tok = _load()
  tok.add_special_tokens({"bos_token": "<bos>"})
  bos = tok.convert_tokens_to_ids("<bos>")
  specials = [("<bos>", bos), (tok.eos_token, tok.eos_token_id)]
  tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
      single=single, special_tokens=[s for s in specials if s[0] in single])
  return tok, bos


@pytest.fixture(scope="module")
def demo():
  tok = _load()
  assert tok("0")["input_ids"] == tok("0", add_special_tokens=False)["input_ids"]  # adds nothing
  return tok


@pytest.fixture(scope="module")
def llama():
  """(tokenizer, bos id): puts <bos> before every text, as Llama 3's puts <|begin_of_text|>."""
  tok, bos = _with_template("<bos> $A")
  plain = tok("Q: 1?", add_special_tokens=False)["input_ids"]
  assert bos not in plain and tok("Q: 1?")["input_ids"] == [bos] + plain  # the variant is real
  return tok, bos


def _ids(tok, text):
  return tok(text, add_special_tokens=False)["input_ids"]


def _gen_task():
  return arithmetic_generation(operations=("plus", "times"), digits=(1, 2), n_train=4, n_dev=0,
                               n_test=0, seed=1)


def _budget(tok, task):
  return max(len(_ids(tok, ex.answer)) + 1 for ex in task.splits["train"])  # + eos


# --- special_prefix --------------------------------------------------------------------------

def test_special_prefix(demo, llama):
  tok, bos = llama
  assert data_lib.special_prefix(demo) == []
  assert data_lib.special_prefix(tok) == [bos]
  both, bos2 = _with_template(f"<bos> $A {demo.eos_token}")  # a suffix is not part of it
  assert both("0")["input_ids"] == [bos2] + _ids(demo, "0") + [demo.eos_token_id]
  assert data_lib.special_prefix(both) == [bos2]


def test_special_prefix_refuses_a_text_it_cannot_find():
  class Odd:
    name_or_path = "odd/tok"

    def __call__(self, text, add_special_tokens=True):
      return {"input_ids": [5, 6] if add_special_tokens else [7]}
  with pytest.raises(TaskError, match=r"'odd/tok'.*\[7\].*\[5, 6\]"):
    data_lib.special_prefix(Odd())


# --- the Qwen-style layout is unchanged -------------------------------------------------------

def test_demo_rows_are_the_plain_layout(demo):
  task = _gen_task()
  pad = eos = demo.eos_token_id
  t, budget = 32, _budget(demo, task)
  W = t - P - budget
  for placement in ("infix", "prefix"):
    enc = data_lib.encode(task, "train", demo, data_lib.Layout(P, placement, t))
    assert enc.n_truncated == 0
    for i in (0, 3):
      ex = task.splits["train"][i]
      inp, ans = _ids(demo, ex.input), _ids(demo, ex.answer) + [eos]
      if placement == "infix":
        body = [pad] * (W - len(inp)) + inp + [pad] * P + ans
        index = [-1] * W + [0, 1, 2] + [-1] * (t - W - P)
        first_real, start, end = W - len(inp), W, W
      else:
        body = [pad] * P + inp + ans
        index = [0, 1, 2] + [-1] * (t - P)
        first_real, start, end = 0, 0, P + len(inp)
      assert enc.input_ids[i].tolist() == body + [pad] * (t - len(body))
      assert enc.attention_mask[i].tolist() == ([0] * first_real + [1] * (len(body) - first_real)
                                                + [0] * (t - len(body)))
      assert enc.prompt_index[i].tolist() == index
      assert (enc.prompt_start[i], enc.input_end[i]) == (start, end)
      assert enc.answer_pos[i] == len(body) - len(ans) - 1


# --- rows with a BOS --------------------------------------------------------------------------

def test_infix_rows_put_bos_before_the_input(demo, llama):
  tok, bos = llama
  task = _gen_task()
  t, budget = 32, _budget(tok, task)
  W = t - P - budget  # the prompt's column, as without a BOS
  layout = data_lib.Layout(P, "infix", t)
  enc = data_lib.encode(task, "train", tok, layout)
  plain = data_lib.encode(task, "train", demo, layout)
  assert enc.n_truncated == plain.n_truncated == 0
  for i, ex in enumerate(task.splits["train"]):
    inp = _ids(tok, ex.input)
    b = W - len(inp) - 1  # the BOS column: right before the input
    row = enc.input_ids[i].tolist()
    assert row[b] == bos and row[b + 1:W] == inp and bos not in row[:b] + row[b + 1:]
    assert enc.attention_mask[i, :b].sum() == 0 and enc.attention_mask[i, b] == 1
    # Only the BOS column differs from the plain row (a pad there, masked).
    assert plain.input_ids[i, b] == demo.eos_token_id and plain.attention_mask[i, b] == 0
    other = np.arange(t) != b
    np.testing.assert_array_equal(enc.input_ids[i, other], plain.input_ids[i, other])
    np.testing.assert_array_equal(enc.attention_mask[i, other], plain.attention_mask[i, other])
    assert enc.prompt_index[i, W:W + P].tolist() == [0, 1, 2]
    # The BOS is marked -2 (neither prompt nor input); everything else as in the plain row.
    assert enc.prompt_index[i, b] == -2 and (np.delete(enc.prompt_index[i], b) != -2).all()
    np.testing.assert_array_equal(enc.prompt_index[i, other], plain.prompt_index[i, other])
    assert enc.prompt_start[i] == enc.input_end[i] == W and enc.answer_pos[i] == W + P - 1
  for name in ("targets", "loss_mask", "answer_pos", "prompt_start", "input_end"):
    np.testing.assert_array_equal(getattr(enc, name), getattr(plain, name), err_msg=name)


def test_prefix_rows_start_with_bos_then_the_prompt(demo, llama):
  tok, bos = llama
  task = _gen_task()
  t = 32
  layout = data_lib.Layout(P, "prefix", t)
  enc = data_lib.encode(task, "train", tok, layout)
  plain = data_lib.encode(task, "train", demo, layout)
  assert enc.n_truncated == plain.n_truncated == 0
  for i, ex in enumerate(task.splits["train"]):
    inp, ans = _ids(tok, ex.input), _ids(tok, ex.answer) + [tok.eos_token_id]
    row = enc.input_ids[i].tolist()
    assert row[0] == bos and enc.prompt_index[i, :P + 2].tolist() == [-2, 0, 1, 2, -1]
    assert row[1 + P:1 + P + len(inp)] == inp
    end = 1 + P + len(inp)
    assert row[end:end + len(ans)] == ans
    assert enc.prompt_start[i] == 1 and enc.input_end[i] == end and enc.answer_pos[i] == end - 1
    assert enc.attention_mask[i].tolist() == [1] * (end + len(ans)) + [0] * (t - end - len(ans))
    assert list(np.flatnonzero(enc.loss_mask[i])) == list(range(end - 1, end - 1 + len(ans)))
    assert enc.targets[i][enc.loss_mask[i] == 1].tolist() == ans
    # The plain row, shifted one column right (its last column is padding).
    assert plain.attention_mask[i, -1] == 0
    for name in ("input_ids", "attention_mask", "prompt_index", "targets", "loss_mask"):
      np.testing.assert_array_equal(getattr(enc, name)[i, 1:], getattr(plain, name)[i, :-1],
                                    err_msg=name)


def test_prefix_classification_reads_after_the_input(llama):
  tok, bos = llama
  task = arithmetic_verification(operations=("plus",), digits=(1,), n_train=3, n_dev=0,
                                 n_test=0, seed=2)
  enc = data_lib.encode(task, "train", tok, data_lib.Layout(P, "prefix", 32))
  for i, ex in enumerate(task.splits["train"]):
    inp = _ids(tok, ex.input)
    assert enc.input_ids[i, 0] == bos and enc.input_ids[i, 1 + P:1 + P + len(inp)].tolist() == inp
    assert enc.answer_pos[i] == P + len(inp)  # the last input token
  assert enc.loss_mask.sum() == 0


# --- truncation never cuts the BOS ------------------------------------------------------------

LONG = "Q: What is 123 plus 456 plus 789?"


def test_truncation_keeps_bos(llama):
  tok, bos = llama
  task = Task("t", "generation", {"train": (Example(LONG, " 1368"),)})
  long, ans = _ids(tok, LONG), _ids(tok, " 1368") + [tok.eos_token_id]
  t = 1 + 6 + P + len(ans)  # room for 6 input tokens
  assert len(long) > 6
  for placement in ("infix", "prefix"):
    def layout(cut):
      return data_lib.Layout(P, placement, t, truncation=cut)
    left = data_lib.encode(task, "train", tok, layout("left"))
    right = data_lib.encode(task, "train", tok, layout("right"))
    prompt = [tok.eos_token_id] * P  # pad fills the prompt slots
    first = [bos] + long[-6:] + prompt if placement == "infix" else [bos] + prompt + long[-6:]
    assert left.input_ids[0].tolist() == first + ans and left.n_truncated == 1
    first = [bos] + long[:6] + prompt if placement == "infix" else [bos] + prompt + long[:6]
    assert right.input_ids[0].tolist() == first + ans and right.n_truncated == 1
    assert left.attention_mask.all() and right.attention_mask.all()
    with pytest.raises(TaskError, match=f"input is {len(long)} tokens, 6 fit"):
      data_lib.encode(task, "train", tok, layout("error"))


def test_bos_counts_against_the_room_for_the_input(demo, llama):
  tok, bos = llama
  task = Task("t", "generation", {"train": (Example("Q: 1?", " 2"),)})
  t = P + len(_ids(tok, " 2")) + 1 + 1  # one column for the input, none once the BOS takes it
  layout = data_lib.Layout(P, "prefix", t, truncation="left")
  assert data_lib.encode(task, "train", demo, layout).n_truncated == 1
  with pytest.raises(TaskError, match=rf"1 special tokens \[{bos}\] leave no room"):
    data_lib.encode(task, "train", tok, layout)


@pytest.mark.parametrize("placement", ["infix", "prefix"])
def test_input_means_leave_the_bos_out(llama, placement):
  """verify.mean_over=inputs averages over the input tokens: the BOS (an attention sink, with
  activations unlike the input's) is not one of them; the input tokens all are."""
  from jaxskill.stages.verify import position_weights
  tok, bos = llama
  enc = data_lib.encode(_gen_task(), "train", tok, data_lib.Layout(P, placement, 32))
  batch = enc.batch().replace(valid=np.ones(len(enc), np.float32))
  weights = np.asarray(position_weights(batch, "inputs", ("last_input",), P))
  for i, ex in enumerate(_gen_task().splits["train"]):
    row = enc.input_ids[i].tolist()
    b = row.index(bos)
    inp = _ids(tok, ex.input)
    start = b + 1 + (P if placement == "prefix" else 0)  # the input's first column, by hand
    want = np.zeros(32)
    want[start:start + len(inp)] = 1
    assert row[start:start + len(inp)] == inp
    np.testing.assert_array_equal(weights[i], want)
