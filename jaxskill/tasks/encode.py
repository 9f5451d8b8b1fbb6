"""Examples -> fixed-shape token arrays with soft-prompt slots, and the batch stream.

Every row has `max_length` tokens, so one compiled step serves every batch. Layout:
  infix:  [pad][special][input][prompt x P][answer][pad]   (the prompt sees the input: METHOD.md
          section 3)
  prefix: [special][prompt x P][input][answer][pad]
[special] is what the tokenizer puts before a text when it adds special tokens (`special_prefix`:
the BOS of Llama and Mistral tokenizers, nothing for Qwen's). It is the first real token of every
row, before the prompt too: those models were trained with it there and attend to it as a sink.
Infix inputs are right-aligned to column W = max_length - P - answer_budget, so the prompt starts
at column W in every row: the columns [0, W) (special tokens and input) then do not depend on the
prompt and can be run once without gradients (`jaxskill.stages.train` does).
Classification rows stop before the answer: the logits at `answer_pos` (the last token before the
answer) are read at the verbalizer tokens. Generation rows hold the answer tokens, and the loss is
the next-token loss on them only (`loss_mask`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxskill.model.batch import Batch
from jaxskill.tasks.base import Task, TaskError


# prompt_index on the special prefix: neither a prompt slot nor an input token (verify's input
# means leave it out: a BOS is an attention sink whose activations are far from the input's).
SPECIAL = -2


@dataclasses.dataclass(frozen=True)
class Encoded:
  """One split, encoded. Arrays are numpy, one row per example (n rows, t = max_length).

  input_ids, attention_mask, prompt_index: int32 `[n, t]` (prompt_index -1 off the prompt,
    SPECIAL on the tokenizer's special prefix, e.g. a BOS, which is not part of the input).
  answer_pos: int32 `[n]`, the position whose next-token logits give the answer's first token.
  label: int32 `[n]` (classification; -1 for generation).
  targets, loss_mask: int32 `[n, t]`: the token that position t should predict, and whether it
    counts (generation: the answer tokens; classification: all zero).
  input_end: int32 `[n]`, one past the last input token (the last input token is input_end - 1).
  prompt_start: int32 `[n]`, the first prompt position.
  metadata: column name -> `[n]` array (numbers as float64; strings as object arrays).
  n_truncated: how many of the encoded inputs were cut to fit `max_length`.
  present: bool `[n]`, the rows that were tokenized, or None for all of them. In a multi-process
    run each process tokenizes only the rows it feeds (`encode(rows=...)`); the others stay
    padding and must not be fed (`take_rows` refuses them).
  """
  input_ids: np.ndarray
  attention_mask: np.ndarray
  prompt_index: np.ndarray
  answer_pos: np.ndarray
  label: np.ndarray
  targets: np.ndarray
  loss_mask: np.ndarray
  input_end: np.ndarray
  prompt_start: np.ndarray
  metadata: dict
  n_truncated: int
  present: np.ndarray | None = None
  truncated: np.ndarray | None = None  # bool `[n]`: the rows counted in n_truncated
  answer_budget: int = 0  # q: answer tokens every row leaves room for (0: classification)

  def __len__(self) -> int:
    return self.input_ids.shape[0]

  def batch(self, metrics: tuple[str, ...] = ()) -> Batch:
    """Every row as one `Batch` (`valid` None), with the metadata columns of the "meta_<column>"
    names among `metrics` as float32 `[n]`."""
    meta = {name[5:]: self.metadata[name[5:]].astype(np.float32) for name in metrics
            if name.startswith("meta_") and name[5:] in self.metadata}
    return Batch(**{f.name: getattr(self, f.name) for f in dataclasses.fields(Batch)
                    if f.name not in ("valid", "meta")}, meta=meta)

  def check_rows(self, idx: np.ndarray, what: str = "") -> None:
    """Raises if any of the rows `idx` was not tokenized (see `present`)."""
    if self.present is not None and not self.present[idx].all():
      missing = np.asarray(idx)[~self.present[idx]]
      raise RuntimeError(f"{what}rows {missing[:8].tolist()} were not encoded by this process "
                         "(its row plan does not cover them)")


def take(encoded: Encoded, idx: np.ndarray) -> Encoded:
  """The rows `idx` of `encoded` (every one tokenized here, see `Encoded.check_rows`) as an
  Encoded of their own, in that order."""
  idx = np.asarray(idx, np.int64)
  encoded.check_rows(idx, "take: ")
  rows = {f.name: getattr(encoded, f.name)[idx] for f in dataclasses.fields(Encoded)
          if isinstance(getattr(encoded, f.name), np.ndarray) and f.name != "present"}
  truncated = rows.get("truncated")
  return dataclasses.replace(
      encoded, **rows, metadata={k: v[idx] for k, v in encoded.metadata.items()}, present=None,
      n_truncated=0 if truncated is None else int(truncated.sum()))


def verbalizer_ids(tokenizer, words: tuple[str, ...]) -> np.ndarray:
  """One token id per verbalizer word; a word that is not a single token is an error."""
  ids = []
  for word in words:
    tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(tokens) != 1:
      raise TaskError(f"verbalizer word {word!r} is {len(tokens)} tokens "
                      f"{tokenizer.convert_ids_to_tokens(tokens)} for this tokenizer; "
                      "classification reads one token per label")
    ids.append(tokens[0])
  if len(set(ids)) != len(ids):
    raise TaskError(f"verbalizer words {words!r} map to repeated token ids {ids}")
  return np.asarray(ids, np.int32)


def pad_id(tokenizer) -> int:
  """The token that fills padding: the tokenizer's pad token, else its eos, else 0."""
  for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
    if tid is not None:
      return int(tid)
  return 0


def special_prefix(tokenizer) -> list[int]:
  """The ids the tokenizer puts before a text when it adds special tokens: [bos] for Llama and
  Mistral tokenizers, [] for Qwen's. Read off a probe text, encoded with and without them; what
  follows the text (an eos some tokenizers append) is not part of it."""
  probe = "0"
  plain = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
  full = list(tokenizer(probe)["input_ids"])
  for start in range(len(full) - len(plain) + 1):
    if full[start:start + len(plain)] == plain:
      return [int(tid) for tid in full[:start]]
  raise TaskError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r}: {probe!r} encodes to "
                  f"{plain} without special tokens but {full} with them, which does not contain "
                  "it; cannot tell which special tokens go before a text")


def _answer_ids(task: Task, tokenizer, answer: str, append_eos: bool) -> list[int]:
  if task.kind == "classification":
    return []  # the answer is read from the logits before it, not fed
  eos = [tokenizer.eos_token_id] if append_eos and tokenizer.eos_token_id is not None else []
  return tokenizer(answer, add_special_tokens=False)["input_ids"] + eos


def answer_budget(task: Task, tokenizer, append_eos: bool = True) -> int:
  """The longest answer in tokens over all splits (0 for classification): the room every row
  keeps after the prompt, so that all splits share one layout."""
  return max((len(_answer_ids(task, tokenizer, ex.answer, append_eos))
              for examples in task.splits.values() for ex in examples), default=0)


@dataclasses.dataclass(frozen=True)
class Layout:
  """How a split's rows are laid out (the run config's prompt.length, prompt.placement,
  data.max_length, data.truncation, data.append_eos): the prompt's length and place ("infix":
  after the input, "prefix": before it), the row length, which end of a too long input is cut
  ("left", "right"; "error" refuses it), and whether a generated answer ends with EOS."""
  prompt_length: int
  placement: str
  max_length: int
  truncation: str = "left"
  append_eos: bool = True


def encode(task: Task, split: str, tokenizer, layout: Layout, *, budget: int | None = None,
           rows: np.ndarray | None = None) -> Encoded:
  """Encodes one split: n examples -> `[n, layout.max_length]` rows. `budget`: answer tokens to
  leave room for (default: `answer_budget`). `rows`: tokenize only these example indices (the
  rows one process feeds, see `eval_rows` and `train_rows`); the rest stay padding rows marked
  absent in `present`. Labels and metadata, which need no tokenizer, are filled for every row."""
  placement, truncation, append_eos = layout.placement, layout.truncation, layout.append_eos
  examples = _split_examples(task, split, placement)
  n, t, P = len(examples), layout.max_length, layout.prompt_length
  pad = pad_id(tokenizer)
  out = {name: np.zeros((n, t), np.int32) for name in
         ("input_ids", "attention_mask", "targets", "loss_mask")}
  out["input_ids"][:] = pad
  out["prompt_index"] = np.full((n, t), -1, np.int32)
  for name in ("answer_pos", "input_end", "prompt_start"):
    out[name] = np.zeros(n, np.int32)
  out["label"] = np.full(n, -1, np.int32)
  if budget is None:
    budget = answer_budget(task, tokenizer, append_eos)
  special = special_prefix(tokenizer)
  width = t - P - budget - len(special)  # room for the input
  if width < 1:
    extra = f" + {len(special)} special tokens {special}" if special else ""
    raise TaskError(f"task '{task.name}': prompt ({P}) + the longest answer ({budget} tokens)"
                    f"{extra} leave no room for the input in data.max_length={t}")
  if task.kind == "classification":
    out["label"][:] = [ex.label for ex in examples]
  present = None
  if rows is not None:
    present = np.zeros(n, bool)
    present[np.asarray(rows, np.int64)] = True
  truncated = np.zeros(n, bool)
  for i in (range(n) if present is None else np.flatnonzero(present)):
    where = f"task '{task.name}' {split} example {i}"
    inp = tokenizer(examples[i].input, add_special_tokens=False)["input_ids"]
    answer = _answer_ids(task, tokenizer, examples[i].answer, append_eos)
    if len(answer) > budget:
      raise TaskError(f"{where}: answer is {len(answer)} tokens, more than the budget {budget}")
    if len(inp) > width:
      if truncation == "error":
        raise TaskError(f"{where}: input is {len(inp)} tokens, {width} fit (data.max_length={t});"
                        " raise max_length or set data.truncation=left|right")
      inp = inp[len(inp) - width:] if truncation == "left" else inp[:width]
      truncated[i] = True
    _fill_row(out, i, (special, inp, answer), placement=placement, width=width, P=P, pad=pad)
  return Encoded(**out, metadata=_columns(examples), n_truncated=int(truncated.sum()),
                 present=present, truncated=truncated, answer_budget=budget)


def _split_examples(task: Task, split: str, placement: str) -> tuple:
  """The examples of `split`, after checking that it exists, is not empty and that `placement`
  is known."""
  if split not in task.splits:
    raise TaskError(f"task '{task.name}' has no split {split!r} (has {sorted(task.splits)})")
  if not task.splits[split]:
    raise TaskError(f"task '{task.name}': the {split} split is empty")
  if placement not in ("infix", "prefix"):
    raise ValueError(f"placement must be infix or prefix, got {placement!r}")
  return task.splits[split]


def _fill_row(out: dict, i: int, parts: tuple[list[int], list[int], list[int]], *,
              placement: str, width: int, P: int, pad: int) -> None:
  """Writes row i of `out` (the arrays of `Encoded`) in the layout of the module docstring, from
  its token ids (the special prefix, the input, the answer). `width`: the room for the input
  (the special tokens not counted)."""
  special, inp, answer = parts
  S = len(special)
  if placement == "infix":
    lead = width - len(inp)  # left padding: the prompt starts at column S + width in every row
    tokens = [pad] * lead + special + inp + [pad] * P + answer
    index = [-1] * lead + [SPECIAL] * S + [-1] * len(inp) + list(range(P)) + [-1] * len(answer)
    mask = [0] * lead + [1] * (len(tokens) - lead)
    out["prompt_start"][i], out["input_end"][i] = S + width, S + width
  else:
    tokens = special + [pad] * P + inp + answer
    index = [SPECIAL] * S + list(range(P)) + [-1] * (len(inp) + len(answer))
    mask = [1] * len(tokens)
    out["prompt_start"][i], out["input_end"][i] = S, S + P + len(inp)
  L = len(tokens)
  before_answer = L - len(answer) - 1
  out["answer_pos"][i] = before_answer
  out["input_ids"][i, :L] = tokens
  out["attention_mask"][i, :L] = mask
  out["prompt_index"][i, :L] = index
  if answer:
    out["targets"][i, before_answer:L - 1] = answer
    out["loss_mask"][i, before_answer:L - 1] = 1


def _columns(examples) -> dict:
  keys = sorted({k for ex in examples for k in ex.metadata})
  cols = {}
  for key in keys:
    values = [ex.metadata.get(key) for ex in examples]
    if all(isinstance(v, (int, float, bool)) or v is None for v in values):
      # A missing value (an empty cell) is NaN: the metric leaves that example out.
      cols[key] = np.asarray([np.nan if v is None else v for v in values], np.float64)
    else:
      cols[key] = np.asarray(values, object)
  return cols


def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
  return np.random.default_rng([seed, epoch]).permutation(n)


def _stream_rows(n: int, seed: int, positions: np.ndarray) -> np.ndarray:
  """The example at each position of the training stream (epoch-major seeded permutations)."""
  epoch, within = np.divmod(positions, n)
  out = np.empty(positions.shape, np.int64)
  for e in np.unique(epoch):
    sel = epoch == e
    out[sel] = _epoch_order(n, seed, int(e))[within[sel]]
  return out


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """The example indices of training batch `step`: a stream of seeded per-epoch permutations,
  so the data position is the step itself and a resumed run sees the same batches."""
  return _stream_rows(n, seed, step * batch_size + np.arange(batch_size, dtype=np.int64))


def train_rows(n: int, batch_size: int, steps: int, seed: int, local: np.ndarray) -> np.ndarray:
  """The examples one process feeds in `steps` training batches when it holds the batch rows
  `local` (offsets into each global batch): its share of the data, sorted."""
  pos = (np.arange(steps, dtype=np.int64)[:, None] * batch_size + np.asarray(local)[None]).ravel()
  return np.unique(_stream_rows(n, seed, pos))


def eval_rows(n: int, batch_size: int, local: np.ndarray) -> np.ndarray:
  """The examples one process feeds when a split is streamed in order (`eval_batch`) in global
  batches of `batch_size`, holding the batch rows `local`."""
  idx = (np.arange(0, n, batch_size)[:, None] + np.asarray(local)[None]).ravel()
  return np.unique(np.minimum(idx, n - 1))


def eval_batch(encoded: Encoded, batch_size: int, i: int, whole: Batch | None = None,
               local: np.ndarray | None = None) -> Batch:
  """Batch `i` of a split streamed in order in fixed-size batches (`Runner.batches` runs them):
  rows i * batch_size + local, the last batch padded by repeating the last example with
  `valid` = 0. `whole` replaces `encoded.batch()` (e.g. with metadata columns). `local`: only
  these rows of the global batch (the ones this process feeds; `eval_rows` gives the examples
  they cover); `valid` then covers those rows, and `global_valid` gives the whole batch's."""
  whole = encoded.batch() if whole is None else whole
  n = len(encoded)
  idx = i * batch_size + (np.arange(batch_size) if local is None else np.asarray(local))
  rows = np.minimum(idx, n - 1)
  encoded.check_rows(rows)
  return whole.rows(rows).replace(valid=(idx < n).astype(np.float32))


def global_valid(n: int, batch_size: int, start: int) -> np.ndarray:
  """bool `[batch_size]`: which rows of the global batch starting at example `start` are real."""
  return start + np.arange(batch_size) < n
