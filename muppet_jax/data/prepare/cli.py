r"""The command line: prepare datasets, or check (and verify) what is prepared.

  python -m muppet_jax.data.prepare --mixture muppet_encoder --data_dir ~/tensorflow_datasets
  python -m muppet_jax.data.prepare --tasks rte,boolq,swag --data_dir gs://BUCKET/tfds
  # Offline: what is there (exit status 1 if anything is not ready); --verify also reads every
  # record of every shard and compares the counts with each dataset's metadata.
  python -m muppet_jax.data.prepare --mixture muppet_all --data_dir DIR --check [--verify]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from etils import epath

from muppet_jax.data import catalogue
from muppet_jax.data import tasks
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.prepare.build import needs_manual_download, prepare_records
from muppet_jax.data.prepare.check import check_records, verify_reports
from muppet_jax.data.prepare.datasets import (RecordReport, Status, resolve_data_dir,
                                              tfds_datasets)
from muppet_jax.data.prepare.readiness import prepare_command
from muppet_jax.errors import UserError


def select_records(mixture: str = '', task_list: str = '') -> list[DatasetRecord]:
  """The records of a registered mixture, or of comma-separated slugs / task names.

  Raises:
    catalogue.UnknownNameError: an unknown name (close matches named).
    UserError: a record with no data (the SuperGLUE umbrella).
  """
  if mixture:
    return [tasks.record_for_task(name) for name, _ in tasks.mixture_tasks(mixture)]
  records = []
  for name in (n.strip() for n in task_list.split(',')):
    if not name:
      continue
    task_name = name if name.startswith('muppet_') else f'muppet_{name}'
    try:
      record = tasks.record_for_task(task_name)
    except catalogue.UnknownNameError:
      record = catalogue.get(name)  # The umbrella record (no task), or close matches.
      tfds_datasets(record)  # Raises: no data of its own.
      raise
    if record not in records:
      records.append(record)
  if not records:
    raise UserError('--tasks is empty: give comma-separated slugs or task names, e.g. rte,boolq')
  return records


def format_table(reports: Sequence[RecordReport]) -> str:
  """The dataset | source | splits (examples) | examples | status table, then the problems."""
  header = ('dataset', 'source', 'splits', 'examples', 'status')
  rows = []
  for report in reports:
    sizes = report.split_sizes
    splits = ' '.join(f'{s}={sizes[s]:,}' if s in sizes else f'{s}=-' for s in report.splits)
    total = f'{sum(sizes.values()):,}' if sizes else '-'
    status = report.status.value + (' (embedded)' if not report.parts else '')
    rows.append((report.record.slug, report.source, splits, total, status))
  widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]

  def line(row) -> str:
    cells = [str(v).rjust(w) if c == 3 else str(v).ljust(w)
             for c, (v, w) in enumerate(zip(row, widths))]
    return '  '.join(cells).rstrip()

  lines = [line(header), line(['-' * w for w in widths])] + [line(r) for r in rows]
  counts: dict[str, int] = {}
  for report in reports:
    counts[report.status.value] = counts.get(report.status.value, 0) + 1
  lines.append(f'{len(reports)} datasets: ' + ', '.join(f'{n} {s}' for s, n in counts.items()))
  problems = [(r.record.slug, p) for r in reports for p in r.parts if p.problem]
  if problems:
    lines.append('')
    # A damaged shard's line names the dataset itself (the line a run that meets it prints).
    lines.extend(p.problem if p.status == Status.DAMAGED else
                 f'{slug} ({p.dataset.full_name}): {p.problem}' for slug, p in problems)
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m muppet_jax.data.prepare',
      description='Download and prepare datasets as TFDS ArrayRecord (or --check them offline).')
  which = parser.add_mutually_exclusive_group(required=True)
  which.add_argument('--mixture', help='a registered mixture: muppet_all, muppet_encoder, ...')
  which.add_argument('--tasks', help='comma-separated slugs or task names: rte,boolq,muppet_swag')
  parser.add_argument('--data_dir', default='',
                      help="TFDS data dir to write ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument('--manual_dir', default='',
                      help='manually downloaded files (XSum); default <data_dir>/downloads/manual')
  parser.add_argument('--check', action='store_true',
                      help='only report present / missing / wrong format, offline; exit 1 if '
                           'anything is not present')
  parser.add_argument('--verify', action='store_true',
                      help='also read every record of every shard of the prepared datasets and '
                           'compare the counts with their metadata; a damaged shard is named '
                           '(dataset, split, file) with the fix')
  args = parser.parse_args(argv)
  try:
    records = select_records(args.mixture or '', args.tasks or '')
  except (UserError, catalogue.UnknownNameError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  data_dir = resolve_data_dir(args.data_dir)
  if args.check:
    reports = check_records(records, data_dir, verify=args.verify)
  else:
    epath.Path(data_dir).mkdir(parents=True, exist_ok=True)
    reports = prepare_records(records, data_dir, manual_dir=args.manual_dir)
    if args.verify:
      reports = verify_reports(reports, data_dir)
  print()
  print(format_table(reports))
  failed = [r for r in reports if not r.status.ready]
  damaged = [r for r in failed if r.status == Status.DAMAGED]
  if damaged:
    print(f'\ndamaged: {", ".join(r.record.slug for r in damaged)}: delete what the lines above '
          'name, then prepare again')
  failed = [r for r in failed if r.status != Status.DAMAGED]
  if failed or damaged:
    if args.check and failed:
      manual = [p.dataset.full_name for r in failed for p in r.parts
                if p.status == Status.MISSING and needs_manual_download(p.dataset)]
      print(f'\nnot ready: {", ".join(r.record.slug for r in failed)}. Prepare them with\n  '
            f'{prepare_command([r.record for r in failed], data_dir)}')
      if manual:
        print(f'({", ".join(manual)} needs a manual download first: that command says what to '
              'fetch and where to put it.)')
    return 1
  return 0

