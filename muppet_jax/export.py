"""A run's checkpoint -> a Hugging Face directory: the backbone and every trained head.

  python -m muppet_jax.export --workdir DIR --out HF_DIR [--step N]

Reads `DIR/checkpoints/<step>/` (default: the newest), rebuilds the run's tokenizer, tasks and
model from the config saved with the checkpoint (`workdir.restore`: exactly as `train.py`
builds them), restores the parameters, and writes (`transformers` PyTorch classes; every directory loads standalone with
`from_pretrained`, with no missing or unexpected keys):

  HF_DIR/                          the backbone: RobertaModel | BartForConditionalGeneration
    config.json, model.safetensors, tokenizer files, README.md (model card)
  HF_DIR/heads/<task name>/        one per classification task: RobertaForSequenceClassification |
                                   BartForSequenceClassification (num_labels, id2label/label2id
                                   from the catalogue's label names)
  HF_DIR/heads/multiple_choice/    the shared multiple-choice head (if the run had such tasks):
                                   RobertaForMultipleChoice; for BART (no HF class exists) a
                                   BartForSequenceClassification with one label, applied to each
                                   (context, choice) pair, scores softmaxed over the choices
  HF_DIR/heads/span/               the shared span head (if the run had span tasks):
                                   RobertaForQuestionAnswering | BartForQuestionAnswering
  every head directory also holds `muppet_head.json`: which tasks it serves, its input format
  and how its outputs are read.

The summarization "head" of BART is the backbone's tied LM head: HF_DIR itself is the
summarization model (`BartForConditionalGeneration`).

Programmatic use: `export(workdir, out_dir, step=None) -> ExportReport`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import transformers
from absl import logging

from muppet_jax import cli as cli_lib
from muppet_jax import errors
from muppet_jax import workdir as workdir_lib
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import Family
from muppet_jax.models import heads as heads_lib
from muppet_jax.models import hf

HEADS_DIRNAME = 'heads'
CHOICE_HEAD_DIRNAME = 'multiple_choice'
SPAN_HEAD_DIRNAME = 'span'
HEAD_INFO_FILENAME = 'muppet_head.json'
_SAFETENSORS = 'model.safetensors'

_FAMILY_NAMES = {Family.CLASSIFICATION: 'classification', Family.MULTIPLE_CHOICE:
                 'multiple_choice', Family.SPAN: 'span', Family.SUMMARIZATION: 'summarization'}


@dataclasses.dataclass
class HeadExport:
  """One exported head directory.

  Attributes:
    name: the directory's name under `heads/` (a task name, 'multiple_choice' or 'span').
    path: the directory.
    hf_class: the `transformers` class it loads as (`config.architectures[0]`).
    tasks: the run's tasks this head serves.
    num_labels: HF `num_labels` (classes; 1 for the BART multiple-choice form; 2 for span).
  """

  name: str
  path: str
  hf_class: str
  tasks: list[str]
  num_labels: int


@dataclasses.dataclass
class ExportReport:
  """What `export` wrote.

  Attributes:
    out_dir: the HF directory (the backbone).
    step: the exported checkpoint's step.
    model_type: 'roberta' or 'bart'.
    backbone_class: the `transformers` class of `out_dir` (RobertaModel /
      BartForConditionalGeneration).
    heads: every head directory, in task order (classification heads first, then
      multiple choice, then span).
    task_names: the run's tasks (task id order).
    eval_metrics: the metrics of the latest evaluation at or before `step` (empty if none).
    eval_step: the step of that evaluation (None if none).
  """

  out_dir: str
  step: int
  model_type: str
  backbone_class: str
  heads: list[HeadExport]
  task_names: list[str]
  eval_metrics: dict[str, dict[str, float]]
  eval_step: int | None


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _save_tensors(tensors: dict[str, np.ndarray], config: hf.HFConfig, path: str,
                  architecture: str) -> None:
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  os.makedirs(path, exist_ok=True)
  config = copy.deepcopy(config)
  config.architectures = [architecture]
  dtypes = {np.dtype(v.dtype) for v in tensors.values()}
  if len(dtypes) == 1:
    config.dtype = dtypes.pop().name
  config.save_pretrained(path)
  tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
  safetensors.numpy.save_file(tensors, os.path.join(path, _SAFETENSORS),
                              metadata={'format': 'pt'})


def _backbone_tensors(backbone, model_type: str, *, keep_pooler: bool) -> dict[str, np.ndarray]:
  """Backbone tensors under the names of HF's task classes (`roberta.` / `model.` prefix)."""
  if model_type == 'roberta':
    tensors = hf.to_hf_state_dict(backbone, prefix='roberta.')
    if not keep_pooler:  # Sequence classification / QA build RobertaModel without a pooler.
      tensors = {k: v for k, v in tensors.items() if not k.startswith('roberta.pooler.')}
    return tensors
  tensors = hf.to_hf_state_dict(backbone, prefix='model.')
  tensors.pop('final_logits_bias', None)  # Only BartForConditionalGeneration has it.
  return tensors


def _cast_like(tensors: dict[str, np.ndarray], dtype) -> dict[str, np.ndarray]:
  return {k: np.asarray(v).astype(dtype) for k, v in tensors.items()}


def _task_card_entry(name: str, record: DatasetRecord, rate: float) -> dict[str, Any]:
  return {'task': name, 'dataset': record.name, 'family': _FAMILY_NAMES[record.family],
          'num_classes': int(record.num_classes), 'label_names': list(record.label_names),
          'rate': None if not np.isfinite(rate) else float(rate), 'metric': record.metric}


def _write_head_info(path: str, info: dict) -> None:
  with open(os.path.join(path, HEAD_INFO_FILENAME), 'w') as f:
    json.dump(info, f, indent=2)
    f.write('\n')


def _input_format(model_type: str, family: Family) -> str:
  rep = ("the <s> token's final hidden state" if model_type == 'roberta' else
         "the decoder's final hidden state at the last </s> (decoder input = the encoder input "
         'shifted right, HF shift_tokens_right)')
  if family == Family.CLASSIFICATION:
    return ('<s> text_a </s> or <s> text_a </s></s> text_b </s> (tokenizer(text_a[, text_b])); '
            f'the head reads {rep}')
  if family == Family.MULTIPLE_CHOICE:
    return ('one sequence per choice: <s> context question </s></s> choice </s> '
            "(tokenizer(context + ' ' + question, choice)); one score per choice, softmax over "
            f'the choices; the head reads {rep}' +
            (' through the pooler' if model_type == 'roberta' else ''))
  return ('<s> question </s></s> context </s> (tokenizer(question, context)); start/end logits '
          'per token; the trained model only ever chose among the context tokens and the <s> '
          'at position 0 ("no answer in this window"): mask other positions before the argmax')


def export(workdir: str, out_dir: str, step: int | None = None) -> ExportReport:
  """Writes the run's checkpoint `step` (default: newest) as a Hugging Face directory.

  See the module docstring for the layout. Existing files of the same names in `out_dir` are
  overwritten; a stale `out_dir/heads/` from an earlier export is replaced.

  Raises:
    workdir.WorkdirError: `workdir` has no checkpoints, or none for `step`.
    checkpoint.IncompatibleCheckpointError: the checkpoint does not fit its own config.
  """
  workdir, out_dir = os.fspath(workdir), os.fspath(out_dir)
  run = workdir_lib.restore(workdir, step)
  model, config, data, hf_config = run.model, run.config, run.data, run.hf_config
  model_type = config.model.type
  table = data.task_table
  tokenizer = transformers.AutoTokenizer.from_pretrained(data.vocab.path)
  # The positions the model can embed (RoBERTa: max_position_embeddings - pad_token_id - 1),
  # so that `truncation=True` and pipelines cut long inputs to what fits, not to the size the
  # tokenizer file may claim (e.g. 512 for a model with 128 positions).
  tokenizer.model_max_length = hf.usable_positions(hf_config)

  # --- The backbone ---------------------------------------------------------------------------
  os.makedirs(out_dir, exist_ok=True)
  hf.save(model.backbone, hf_config, out_dir)
  tokenizer.save_pretrained(out_dir)
  backbone_class = 'RobertaModel' if model_type == 'roberta' else 'BartForConditionalGeneration'

  heads_root = os.path.join(out_dir, HEADS_DIRNAME)
  if os.path.isdir(heads_root):
    shutil.rmtree(heads_root)
  exported: list[HeadExport] = []
  cls_prefix = 'classifier.' if model_type == 'roberta' else 'classification_head.'
  plain = _backbone_tensors(model.backbone, model_type, keep_pooler=False)
  param_dtype = next(iter(plain.values())).dtype

  def write_head(name: str, head_tensors: dict[str, np.ndarray], backbone_tensors: dict,
                 head_config: hf.HFConfig, architecture: str, served: list[str], num_labels: int,
                 info: dict) -> None:
    path = os.path.join(heads_root, name)
    tensors = {**backbone_tensors, **_cast_like(head_tensors, param_dtype)}
    _save_tensors(tensors, head_config, path, architecture)
    tokenizer.save_pretrained(path)
    _write_head_info(path, {'hf_class': architecture, 'tasks': served,
                            'model_type': model_type, 'step': run.step, **info})
    exported.append(HeadExport(name=name, path=path, hf_class=architecture, tasks=served,
                               num_labels=num_labels))

  # --- One sequence-classification model per classification task ------------------------------
  for task_id, (name, record) in enumerate(zip(data.task_names, run.records)):
    if record.family != Family.CLASSIFICATION:
      continue
    k = int(table.num_classes[task_id])
    labels = list(record.label_names) if len(record.label_names) == k else [
        f'LABEL_{i}' for i in range(k)]
    head_config = copy.deepcopy(hf_config)
    head_config.classifier_dropout = float(config.model.head_dropout)  # The head's training rate.
    head_config.num_labels = k
    head_config.id2label = dict(enumerate(labels))
    head_config.label2id = {label: i for i, label in enumerate(labels)}
    head_config.finetuning_task = name
    architecture = ('RobertaForSequenceClassification' if model_type == 'roberta' else
                    'BartForSequenceClassification')
    head_tensors = heads_lib.classification_head_to_hf(
        model.classification_heads, int(table.head_index[task_id]), k, prefix=cls_prefix)
    write_head(name, head_tensors, plain, head_config, architecture, [name], k, {
        'family': 'classification', 'dataset': record.name, 'label_names': labels,
        'head_row': int(table.head_index[task_id]),
        'r4f_spectral_norm_folded_in': bool(config.train.r4f),
        'input_format': _input_format(model_type, Family.CLASSIFICATION),
        'output': f'logits [batch, {k}] over id2label'})

  # --- The shared multiple-choice head ----------------------------------------------------------
  choice_tasks = [n for n, r in zip(data.task_names, run.records)
                  if r.family == Family.MULTIPLE_CHOICE]
  if choice_tasks:
    head_config = copy.deepcopy(hf_config)
    # The head's training rate. BartForSequenceClassification reads it; RobertaForMultipleChoice
    # ignores it (its dropout is hidden_dropout_prob, shared with the backbone).
    head_config.classifier_dropout = float(config.model.head_dropout)
    head_config.finetuning_task = 'multiple_choice'
    if model_type == 'roberta':
      architecture, num_labels = 'RobertaForMultipleChoice', 1
      backbone_tensors = _backbone_tensors(model.backbone, model_type, keep_pooler=True)
      note = ('input_ids [batch, choices, length]; logits [batch, choices] '
              '(softmax over choices)')
    else:
      # HF has no BartForMultipleChoice: the head is a one-label BartClassificationHead on each
      # choice's final </s> decoder state, i.e. exactly BartForSequenceClassification with
      # num_labels=1 applied to each (context, choice) sequence.
      architecture, num_labels = 'BartForSequenceClassification', 1
      backbone_tensors = plain
      head_config.num_labels = 1
      head_config.id2label = {0: 'score'}
      head_config.label2id = {'score': 0}
      note = ('run each (context question, choice) sequence through the model (flatten '
              '[batch, choices, length] to [batch * choices, length]); logits[:, 0] is the '
              "choice's score; reshape to [batch, choices] and softmax over the choices. Every "
              'sequence of one call must hold the same number of </s> tokens (HF '
              'BartForSequenceClassification reads the last one): pair inputs have 3.')
    head_tensors = heads_lib.multiple_choice_head_to_hf(model.choice_head)
    write_head(CHOICE_HEAD_DIRNAME, head_tensors, backbone_tensors, head_config, architecture,
               choice_tasks, num_labels, {
                   'family': 'multiple_choice',
                   'input_format': _input_format(model_type, Family.MULTIPLE_CHOICE),
                   'output': note})

  # --- The shared span head ----------------------------------------------------------------------
  span_tasks = [n for n, r in zip(data.task_names, run.records) if r.family == Family.SPAN]
  if span_tasks:
    head_config = copy.deepcopy(hf_config)
    head_config.num_labels = 2  # qa_outputs: start and end.
    head_config.finetuning_task = 'span'
    architecture = ('RobertaForQuestionAnswering' if model_type == 'roberta' else
                    'BartForQuestionAnswering')
    write_head(SPAN_HEAD_DIRNAME, heads_lib.span_head_to_hf(model.span_head), plain,
               head_config, architecture, span_tasks, 2, {
                   'family': 'span', 'input_format': _input_format(model_type, Family.SPAN),
                   'output': 'start_logits, end_logits [batch, length]'})

  evaluated = workdir_lib.read_eval_metrics(workdir, run.step)
  report = ExportReport(out_dir=out_dir, step=run.step, model_type=model_type,
                        backbone_class=backbone_class, heads=exported,
                        task_names=list(data.task_names), eval_metrics=evaluated.metrics,
                        eval_step=evaluated.step)
  with open(os.path.join(out_dir, 'README.md'), 'w') as f:
    f.write(model_card(report, run))
  logging.info('exported %s step %d to %s (%d heads)', workdir, run.step, out_dir,
               len(exported))
  return report


# ---------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return str(int(value)) if value.is_integer() else f'{value:.4f}'
  return str(value)


def model_card(report: ExportReport, run: workdir_lib.RestoredRun) -> str:
  """The README.md of the export: model, tasks, training, metrics, how to load each head."""
  c, hc = run.config, run.hf_config
  if report.model_type == 'roberta':
    shape = (f'hidden {hc.hidden_size}, {hc.num_hidden_layers} layers, '
             f'{hc.num_attention_heads} heads, FFN {hc.intermediate_size}, vocabulary '
             f'{hc.vocab_size}, {hc.max_position_embeddings} positions')
  else:
    shape = (f'd_model {hc.d_model}, {hc.encoder_layers} encoder + {hc.decoder_layers} decoder '
             f'layers, {hc.encoder_attention_heads} heads, FFN {hc.encoder_ffn_dim}, vocabulary '
             f'{hc.vocab_size}, {hc.max_position_embeddings} positions')
  head_of = {}
  for head in report.heads:
    for task in head.tasks:
      head_of[task] = head
  lines = [
      '---',
      'library_name: transformers',
      'tags: [muppet, pre-finetuning, muppet_jax]',
      '---',
      '',
      f'# MUPPET pre-finetuned {report.model_type.upper()} (muppet_jax export)',
      '',
      'Pre-finetuned with [muppet_jax](https://arxiv.org/abs/2101.11038) (Aghajanyan et al. '
      '2021, *Muppet: Massive Multi-task Representations with Pre-Finetuning*): a '
      f'{report.model_type} backbone trained on {len(report.task_names)} tasks at once with '
      'task-heterogeneous batches and log(n) loss scaling'
      + (', R3F' if c.train.r3f.enabled else '') + (', R4F' if c.train.r4f else '') + '.',
      '',
      '## Model',
      '',
      f'- Backbone: `{report.backbone_class}` ({shape}); this directory.',
      f'- Initialised from: `{c.model.init_from or "random init"}`.',
      f'- Steps trained: {report.step} of {c.train.steps} '
      f'(checkpoint step {report.step}); mixture `{c.data.mixture}`, '
      f'{c.train.grad_accum} accumulation step(s) per update, peak learning rate '
      f'{c.optim.learning_rate:g}.',
      f'- Parameter dtype: {c.model.param_dtype}.',
      '',
      '## Tasks',
      '',
      '| task | dataset | family | classes | label names | rate | head directory |',
      '|---|---|---|---|---|---|---|',
  ]
  finite = [r for r in run.data.rates if np.isfinite(r)]
  total = sum(finite) or 1.0
  for name, record, rate in zip(report.task_names, run.records, run.data.rates):
    entry = _task_card_entry(name, record, rate / total)
    head = head_of.get(name)
    where = f'`heads/{head.name}` ({head.hf_class})' if head else (
        'this directory (LM head)' if record.family == Family.SUMMARIZATION else '-')
    classes = entry['num_classes'] if record.family in (Family.CLASSIFICATION,
                                                        Family.MULTIPLE_CHOICE) else '-'
    label_names = ', '.join(entry['label_names']) or '-'
    rate_text = '-' if entry['rate'] is None else f'{100 * entry["rate"]:.1f}%'
    lines.append(f'| `{name}` | {record.name} | {entry["family"]} | {classes} | {label_names} '
                 f'| {rate_text} | {where} |')
  lines += ['', '(rate: the share of update slots the task was sampled for, its natural '
            'mixing rate: proportional to its training size; multiple choice "classes" is the '
            'most choices of an example.)', '']

  lines += ['## Evaluation', '']
  if report.eval_metrics:
    lines.append(f'Latest held-out evaluation (step {report.eval_step}, '
                 f'{c.data.eval_examples} examples per task at most; -1 = all):')
    lines += ['', '| task | metrics |', '|---|---|']
    for task, metrics in report.eval_metrics.items():
      text = ', '.join(f'{k} {_fmt(v)}' for k, v in metrics.items())
      lines.append(f'| `{task}` | {text} |')
  else:
    lines.append('No evaluation recorded in metrics.jsonl at or before this step.')
  lines.append('')

  # Every snippet runs as written in a fresh interpreter (the tests run them), long inputs
  # included: the exported tokenizers truncate to the positions the model has.
  hf_dir = f'HF_DIR = {os.path.abspath(report.out_dir)!r}  # this directory (or its hub id)'
  lines += [
      '## Loading',
      '',
      'Every directory loads standalone (weights, config and tokenizer files); each head '
      f'directory also has `{HEAD_INFO_FILENAME}` (tasks, input format, outputs). The '
      f'tokenizers\' `model_max_length` is {hf.usable_positions(hc)}, the positions the model '
      'has: with `truncation=True` inputs of any length are cut to fit (in pairs, keep the '
      'second text short: questions, answer options). Each snippet runs as written; replace '
      'the `# example` lines with your own texts.',
      '',
      '```python',
      'from transformers import AutoModel, AutoTokenizer',
      hf_dir,
      f'backbone = AutoModel.from_pretrained(HF_DIR)  # {report.backbone_class} weights',
      'tokenizer = AutoTokenizer.from_pretrained(HF_DIR)',
      'text = "Pre-finetuning trains one model on many tasks at once."  # example input',
      'enc = tokenizer(text, truncation=True, return_tensors="pt")',
      'hidden = backbone(**enc).last_hidden_state  # [1, tokens, hidden]',
  ]
  if report.model_type == 'bart':
    lines += ['# Summarization / generation: the tied LM head is part of this directory.',
              'from transformers import BartForConditionalGeneration',
              'generator = BartForConditionalGeneration.from_pretrained(HF_DIR)',
              f'ids = generator.generate(**enc, num_beams={c.eval.num_beams}, '
              f'max_length={c.eval.max_length})',
              'print(tokenizer.decode(ids[0], skip_special_tokens=True))']
  lines += ['```', '']
  for head in report.heads:
    head_path = f'path = HF_DIR + "/{HEADS_DIRNAME}/{head.name}"'
    lines += [f'### `{HEADS_DIRNAME}/{head.name}`: `{head.hf_class}`', '']
    if head.name == CHOICE_HEAD_DIRNAME:
      lines.append(f'The shared multiple-choice head, for {", ".join(head.tasks)}.')
      choice_inputs = [
          'context = "The keys were on the table when she left."  # example input',
          'question = "Where were the keys?"  # example input',
          'choices = ["on the table", "in her bag", "at the office"]  # example answers',
          "first = [context + ' ' + question] * len(choices)",
          'enc = tokenizer(first, choices, padding=True, truncation=True, return_tensors="pt")',
      ]
      if report.model_type == 'bart':
        lines += [
            '',
            '`transformers` has no `BartForMultipleChoice`. The MUPPET BART multiple-choice head '
            'is a one-output classification head (dense, tanh, out_proj) on the final `</s>` '
            'decoder state of each choice, so it is stored as a `BartForSequenceClassification` '
            'with `num_labels=1`: score every `(context question, choice)` pair, then softmax '
            'over the choices.',
            '',
            '```python',
            'from transformers import AutoTokenizer, BartForSequenceClassification',
            hf_dir,
            head_path,
            'model = BartForSequenceClassification.from_pretrained(path).eval()',
            'tokenizer = AutoTokenizer.from_pretrained(path)',
            *choice_inputs,
            'scores = model(**enc).logits[:, 0]  # one score per choice',
            'print(choices[int(scores.argmax())], scores.softmax(-1).tolist())',
            '```',
        ]
      else:
        lines += [
            '',
            '```python',
            'from transformers import AutoTokenizer, RobertaForMultipleChoice',
            hf_dir,
            head_path,
            'model = RobertaForMultipleChoice.from_pretrained(path).eval()',
            'tokenizer = AutoTokenizer.from_pretrained(path)',
            *choice_inputs,
            'logits = model(**{k: v[None] for k, v in enc.items()}).logits  # [1, choices]',
            'print(choices[int(logits.argmax())])',
            '```',
        ]
    elif head.name == SPAN_HEAD_DIRNAME:
      lines += [
          f'The shared span (extractive QA) head, for {", ".join(head.tasks)}. Inputs are '
          '`<s> question </s></s> context </s>`; restrict the argmax to the context tokens '
          '(and position 0, which the model uses for "the answer is not in this window"), '
          'as in training.',
          '',
          '```python',
          f'from transformers import AutoTokenizer, {head.hf_class}',
          hf_dir,
          head_path,
          f'model = {head.hf_class}.from_pretrained(path).eval()',
          'tokenizer = AutoTokenizer.from_pretrained(path)',
          'question = "Who wrote the report?"  # example question',
          'context = "The report was written by the committee in May."  # example input',
          'enc = tokenizer(question, context, truncation="only_second", return_tensors="pt")',
          'out = model(**enc)',
          '# Only context tokens are candidates (sequence id 1), as in training.',
          'candidate = [i == 1 for i in enc.sequence_ids(0)]',
          'start_logits = [x if ok else -1e9 for x, ok in zip(out.start_logits[0].tolist(), '
          'candidate)]',
          'end_logits = [x if ok else -1e9 for x, ok in zip(out.end_logits[0].tolist(), '
          'candidate)]',
          'start = max(range(len(start_logits)), key=start_logits.__getitem__)',
          'end = max(range(start, len(end_logits)), key=end_logits.__getitem__)',
          'print(tokenizer.decode(enc["input_ids"][0, start:end + 1]))',
          '```',
      ]
    else:
      lines += [
          f'Task `{head.name}` ({head.num_labels} classes, `id2label` in config.json).',
          '',
          '```python',
          'from transformers import AutoModelForSequenceClassification, AutoTokenizer',
          hf_dir,
          head_path,
          'model = AutoModelForSequenceClassification.from_pretrained(path).eval()',
          'tokenizer = AutoTokenizer.from_pretrained(path)',
          'text_a = "The film was a delight from start to finish."  # example input',
          'text_b = None  # the second text of pair tasks (e.g. an NLI hypothesis), else None',
          'enc = tokenizer(text_a, text_b, truncation=True, return_tensors="pt")',
          'logits = model(**enc).logits',
          'print(model.config.id2label[int(logits.argmax(-1))])',
          '```',
      ]
    lines.append('')
  if c.train.r4f:
    lines += ['R4F: the classification heads\' `out_proj.weight` is the spectrally normalised '
              'weight the model computed with (W / sigma(W) over the task\'s classes).', '']
  return '\n'.join(lines)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def cli(workdir: str, out: str, step: int | None = None) -> ExportReport:
  """The command line's work: export and print a summary; `SystemExit` on bad input
  (`errors.UserError`: no checkpoint, unknown step, a checkpoint that does not fit)."""
  try:
    report = export(workdir, out, step=step)
  except errors.UserError as e:
    raise SystemExit(f'error: {cli_lib.one_line(e)}') from None
  print(f'exported step {report.step} of {workdir} to {report.out_dir}:')
  print(f'  {report.backbone_class}: {report.out_dir}')
  for head in report.heads:
    print(f'  {head.hf_class}: {head.path}  ({", ".join(head.tasks)})')
  return report


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {list(argv[1:])}')
  # Library chatter (orbax restoring, seqio) goes to WORKDIR/logs/export.log, not the console.
  workdir = flags.FLAGS.workdir
  cli_lib.setup_logging(flags.FLAGS.verbosity, cli_lib.log_path(workdir, 'export')
                        if os.path.isdir(workdir) else None)
  cli(workdir, flags.FLAGS.out, flags.FLAGS.step)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string('workdir', None, 'The run\'s workdir (holds checkpoints/).', required=True)
  flags.DEFINE_string('out', None, 'Output Hugging Face directory.', required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the newest).')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main, flags_parser=cli_lib.parse_flags)
