r"""Prints a task's raw, mapped and tokenized examples: a look at what the model is fed.

  python -m muppet_jax.data.inspect --task muppet_rte --split train --num 3 \
      [--tokenizer DIR_OR_HUB_ID] [--model_type roberta|bart] [--length 128] \
      [--tfds_data_dir DIR] [--mock]

Reads the prepared data only (`python -m muppet_jax.data.prepare`), never the network: a
dataset that is not prepared under `--tfds_data_dir` ('' = TFDS's default) stops at once with
the prepare command (`prepare.preflight`). Prints

1. the catalogue record (source, family, splits, sizes, notes);
2. raw: the first `--num` records of the split as the training streams read them
   (`streams.open_source`: TFDS ArrayRecord random access, plain python);
3. mapped: each raw record through the dataset's mapper, or the reason it is dropped;
4. tokenized (with `--tokenizer`; demo tasks use the demo BPE by default): one sub-batch as
   batching builds it, each row's segments as tokens, with labels / spans / targets.

`--mock` reads random TFDS mock data instead (offline smoke test of the plumbing only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from muppet_jax import cli
from muppet_jax.data import batching
from muppet_jax.data import demo
from muppet_jax.data import mappers
from muppet_jax.data import prepare
from muppet_jax.data import streams
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.data.vocab import HFVocabulary

_MAX_CHARS = 300  # Long documents are cut in the printout only.


def _short(value: Any) -> Any:
  """The value with long strings cut, for printing."""
  if isinstance(value, str) and len(value) > _MAX_CHARS:
    return value[:_MAX_CHARS] + f'... [{len(value)} chars]'
  if isinstance(value, dict):
    return {k: _short(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_short(v) for v in value[:20]] + ([f'... [{len(value)} items]']
                                              if len(value) > 20 else [])
  return value


def _dump(value: Any) -> str:
  return json.dumps(_short(value), indent=2, ensure_ascii=False, default=str)


def _raw_examples(record: DatasetRecord, split: str, num: int, data_dir: str) -> list[dict]:
  """The first `num` records of a split, read by index like the training streams read them."""
  source = streams.open_source(record, split, data_dir)
  return [source[i] for i in range(min(num, len(source)))]


def _map(record: DatasetRecord, raw: dict) -> tuple[list[dict], str]:
  """(family examples, '') or ([], drop reason)."""
  if record.source.startswith('demo:'):
    return [raw], ''  # Demo sources already yield family examples.
  try:
    return mappers.MAPPERS[record.slug](raw), ''
  except mappers.BadRecord as e:
    return [], e.reason


def _vocabulary(record: DatasetRecord, tokenizer: str) -> HFVocabulary | None:
  if not tokenizer and record.source.startswith('demo:'):
    tokenizer = 'demo'
  if not tokenizer:
    return None
  if tokenizer == 'demo':
    tokenizer = demo.build_tokenizer(os.path.join(os.path.expanduser('~'), '.cache',
                                                  'muppet_jax'))
  return HFVocabulary(tokenizer)


def _print_sub_batch(record: DatasetRecord, examples: Sequence[dict], vocab: HFVocabulary,
                     model_type: str, length: int) -> None:
  """Builds one sub-batch from `examples` and prints each row's segments as tokens."""
  if record.family == Family.SUMMARIZATION:
    model_type = 'bart'  # Summarization needs the decoder.
  rows = max(4, len(examples))
  shape = BatchShape(rows=rows, length=length, max_examples=max(rows, 4 * len(examples)),
                     max_choices=max(5, record.num_classes),
                     decoder_length=64 if model_type == 'bart' else 1)
  table = TaskTable.build([record.task_name], [int(record.family)], [record.num_classes])
  # The config default (128) only fits long rows; a short inspection row overlaps less.
  builder = batching.SubBatchBuilder(shape, vocab, table, model_type=model_type,
                                     span_stride=min(128, (length - 4) // 4))
  sub_batch = builder.build(builder.stream(record.task_name, examples))
  arrays = sub_batch.arrays
  tokens = vocab.tokenizer.convert_ids_to_tokens
  print(f'{sub_batch.num_examples} examples, {sub_batch.num_tokens} tokens, shape {shape}')
  for row in range(shape.rows):
    segments = arrays['segment_ids'][row]
    for segment in [s for s in np.unique(segments) if s]:
      ids = arrays['input_ids'][row][segments == segment]
      print(f'  row {row} segment {segment}: {" ".join(tokens(ids.tolist()))}')
    if record.family == Family.SPAN and arrays['span_mask'][row].any():
      start, end = arrays['span_start'][row], arrays['span_end'][row]
      answer = tokens(arrays['input_ids'][row][start:end + 1].tolist()) if end else ['<none>']
      print(f'    span [{start}, {end}]: {" ".join(answer)}')
    if record.family == Family.SUMMARIZATION and arrays['decoder_mask'][row].any():
      target = arrays['decoder_target_ids'][row][arrays['decoder_mask'][row]]
      print(f'    target: {" ".join(tokens(target.tolist()))}')
  used = arrays['example_mask']
  print(f'  labels: {arrays["labels"][used].tolist()}  loss_n: {arrays["loss_n"][used].tolist()}')


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m muppet_jax.data.inspect',
      description='Print raw, mapped and tokenized examples of a muppet seqio task.')
  parser.add_argument('--task', required=True, help='task name, e.g. muppet_rte')
  parser.add_argument('--split', default='train', choices=(tasks.TRAIN, tasks.VALIDATION))
  parser.add_argument('--num', type=int, default=3, help='raw records to show')
  parser.add_argument('--tokenizer', default='',
                      help="tokenizer directory or hub id; 'demo' = the demo BPE")
  parser.add_argument('--model_type', default='roberta', choices=batching.MODEL_TYPES)
  parser.add_argument('--length', type=int, default=128, help='tokens per row')
  parser.add_argument('--tfds_data_dir', default='', help='TFDS data_dir override')
  parser.add_argument('--mock', action='store_true', help='random TFDS mock data (offline)')
  args = parser.parse_args(argv)

  try:
    record = tasks.record_for_task(args.task)
  except tasks.UnknownNameError as e:
    print(e, file=sys.stderr)
    return 2
  data_dir = prepare.resolve_data_dir(args.tfds_data_dir)
  if not args.mock:
    try:  # Offline and in seconds: a dataset that is not prepared is named with the fix.
      prepare.preflight([record.task_name], data_dir, splits=(args.split,), sample=0)
    except prepare.DataNotPreparedError as e:
      print(f'error: {cli.one_line(e)}', file=sys.stderr)
      return cli.USER_ERROR_EXIT_CODE
  print(f'== {record.task_name}: {record.name} ({record.family.name.lower()}, '
        f'{record.source})')
  print(f'   splits: {tasks.split_map(record)}; train {record.train_size:,}, eval '
        f'{record.eval_size:,}; metric {record.metric}; classes {record.num_classes} '
        f'{list(record.label_names)}')
  if record.notes:
    print(f'   notes: {record.notes}')

  mock = (tfds.testing.mock_data(num_examples=args.num) if args.mock
          else contextlib.nullcontext())
  with mock:
    raws = _raw_examples(record, args.split, args.num, data_dir)
  mapped_all = []
  for i, raw in enumerate(raws):
    print(f'\n-- raw {i}:\n{_dump(raw)}')
    mapped, reason = _map(record, raw)
    if reason:
      print(f'-- mapped {i}: DROPPED ({reason})')
    for example in mapped:
      print(f'-- mapped {i}:\n{_dump(example)}')
    mapped_all.extend(mapped)

  vocab = _vocabulary(record, args.tokenizer)
  if vocab is None:
    print('\n(no --tokenizer: tokenized view skipped)')
  elif not mapped_all:
    print('\n(every record was dropped: nothing to tokenize)')
  else:
    print(f'\n-- tokenized ({vocab.path}):')
    _print_sub_batch(record, mapped_all, vocab, args.model_type, args.length)
  return 0


if __name__ == '__main__':
  sys.exit(main())
