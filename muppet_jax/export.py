"""A run's checkpoint -> a Hugging Face directory: the backbone and every trained head.

  python -m muppet_jax.export --workdir DIR --out HF_DIR [--step N]

Reads `DIR/checkpoints/<step>/` (default: the newest), rebuilds the run's tokenizer, tasks and
model from the config saved with the checkpoint (exactly as `train.py` builds them), restores the
parameters, and writes (`transformers` PyTorch classes; every directory loads standalone with
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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import seqio
import transformers
from absl import logging
from flax import nnx

from muppet_jax import build
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import config_lib
from muppet_jax import finetune
from muppet_jax.data import tasks
from muppet_jax.data import vocab as vocab_lib
from muppet_jax.data.catalogue import DatasetRecord
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.models import heads as heads_lib
from muppet_jax.models import hf
from muppet_jax.models import muppet

HEADS_DIRNAME = 'heads'
CHOICE_HEAD_DIRNAME = 'multiple_choice'
SPAN_HEAD_DIRNAME = 'span'
HEAD_INFO_FILENAME = 'muppet_head.json'
_SAFETENSORS = 'model.safetensors'

_FAMILY_NAMES = {Family.CLASSIFICATION: 'classification', Family.MULTIPLE_CHOICE:
                 'multiple_choice', Family.SPAN: 'span', Family.SUMMARIZATION: 'summarization'}


class ExportError(ValueError):
  """The workdir cannot be exported (no checkpoint, unknown step, unreadable config)."""


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
# Reading the run
# ---------------------------------------------------------------------------------------------


def _checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.fspath(workdir), 'checkpoints')


def available_steps(workdir: str) -> list[int]:
  """Steps of the complete checkpoints in `workdir` (sorted); [] if there are none."""
  directory = _checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return []
  manager = ocp.CheckpointManager(
      directory, item_names=('state', 'data', 'config'),
      options=ocp.CheckpointManagerOptions(read_only=True, create=False))
  try:
    return sorted(int(s) for s in manager.all_steps())
  finally:
    manager.close()


def _resolve_step(workdir: str, step: int | None) -> int:
  if not os.path.isdir(os.fspath(workdir)):
    raise ExportError(f'workdir {workdir} does not exist')
  steps = available_steps(workdir)
  if not steps:
    raise ExportError(
        f'no checkpoints in {_checkpoint_dir(workdir)}: train first '
        f'(python -m muppet_jax.main --config ... --workdir {workdir})')
  if step is None:
    return steps[-1]
  if step not in steps:
    raise ExportError(f'no checkpoint for step {step} in {_checkpoint_dir(workdir)}; '
                      f'available steps: {steps}')
  return step


def _fill_defaults(target: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
                   ) -> None:
  """Adds keys the saved config lacks (written by an older version) from the defaults."""
  for key, value in defaults.items():
    if key not in target:
      target[key] = copy.deepcopy(value)
    elif isinstance(value, ml_collections.ConfigDict) and isinstance(
        target[key], ml_collections.ConfigDict):
      _fill_defaults(target[key], value)


def config_from_record(record: dict) -> tuple[ml_collections.ConfigDict, list[str]]:
  """(the run's ConfigDict, its task names in task-id order) from a saved config record."""
  record = dict(record)
  task_names = [str(t) for t in record.pop('tasks')]
  config = ml_collections.ConfigDict(record)
  _fill_defaults(config, config_lib.default())
  return config, task_names


def _data_setup(config: ml_collections.ConfigDict, workdir: str,
                task_names: Sequence[str]) -> tuple[build.DataSetup, list[DatasetRecord]]:
  """The run's tokenizer and tasks, in the checkpoint's task order (as `build.setup_data`)."""
  vocab = vocab_lib.HFVocabulary(build.resolve_tokenizer(config, workdir))
  records = [tasks.record_for_task(name) for name in task_names]
  table = TaskTable.build(task_names, [int(r.family) for r in records],
                          [r.num_classes for r in records])
  mixture = config.data.mixture
  if mixture in seqio.TaskRegistry.names():  # A one-task run (fine-tuning).
    rates_by_name = {mixture: 1.0}
  else:
    try:
      rates_by_name = dict(tasks.mixture_tasks(mixture))
    except KeyError:  # The mixture is no longer registered: rates are informative only.
      rates_by_name = {}
  rates = tuple(float(rates_by_name.get(name, float('nan'))) for name in task_names)
  data = build.DataSetup(vocab=vocab, task_names=tuple(task_names), rates=rates,
                         task_table=table, shape=BatchShape.from_config(config.data))
  return data, records


def hf_config_for(config: ml_collections.ConfigDict, data: build.DataSetup) -> hf.HFConfig:
  """The backbone's `transformers` config, as `build.build_model` derives it."""
  if config.model.init_from:
    hf_config = transformers.AutoConfig.from_pretrained(config.model.init_from)
    for name, value in build.dropout_overrides(config).items():
      setattr(hf_config, name, value)
    if hf_config.model_type != config.model.type:
      raise ExportError(f'model.init_from={config.model.init_from!r} is a '
                        f'{hf_config.model_type!r} checkpoint but model.type is '
                        f'{config.model.type!r}')
    return hf_config
  return build.random_init_hf_config(config, data)


@dataclasses.dataclass
class RestoredRun:
  """A run's model at one checkpoint, rebuilt for export or inspection."""

  model: muppet.MuppetModel
  hf_config: hf.HFConfig
  config: ml_collections.ConfigDict
  data: build.DataSetup
  records: list[DatasetRecord]
  step: int


def _fill(abstract: nnx.State, saved: Any, what: str, directory: str, step: int) -> nnx.State:
  """`abstract` (the rebuilt model's state) with the values of the checkpoint's `saved` tree.

  Leaves are matched by their '/'-joined path (`checkpoint.path_name`), so the result does not
  depend on how orbax nests what it reads back. Shapes must match exactly.
  """
  saved_flat = {checkpoint_lib.path_name(p): v
                for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
  wanted = set()
  missing, mismatched = [], []

  def take(path, leaf):
    name = checkpoint_lib.path_name(path)
    wanted.add(name)
    if name not in saved_flat:
      missing.append(name)
      return leaf
    value = np.asarray(saved_flat[name])
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):  # RNG streams: raw key data.
      return jax.random.wrap_key_data(jnp.asarray(value))
    if value.shape != tuple(leaf.shape):
      mismatched.append(f'{name}: checkpoint {value.shape} vs model {tuple(leaf.shape)}')
      return leaf
    return jnp.asarray(value, leaf.dtype)

  filled = jax.tree_util.tree_map_with_path(take, abstract)
  unexpected = sorted(set(saved_flat) - wanted)
  if missing or mismatched or unexpected:
    lines = [f'missing in checkpoint: {what}/{k}' for k in missing[:5]]
    lines += [f'not in the rebuilt model: {what}/{k}' for k in unexpected[:5]]
    lines += [f'{what}/{k}' for k in mismatched[:5]]
    if any('word_embeddings' in k or 'shared' in k for k in mismatched):
      lines.append('(a different vocabulary size: the tokenizer found now is not the one the '
                   'run was trained with, e.g. a newer demo tokenizer; a run written by the '
                   'current train.py records its backbone config in backbone_config.json)')
    raise checkpoint_lib.IncompatibleCheckpointError(
        f'checkpoint {directory}/{step} does not fit the model rebuilt from its own config '
        f'({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} shape '
        'mismatches):\n  ' + '\n  '.join(lines))
  return filled


def _saved_hf_config(workdir: str) -> hf.HFConfig | None:
  """The backbone config the run wrote next to its checkpoints (train.py), if any."""
  path = os.path.join(workdir, finetune.BACKBONE_CONFIG)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return transformers.AutoConfig.for_model(**json.load(f))


def restore_run(workdir: str, step: int | None = None) -> RestoredRun:
  """Rebuilds the run's model from its saved config and restores checkpoint `step`.

  The checkpoint is read topology-free (`checkpoint.read_checkpoint`: any device layout of the
  writing run) and its parameters are placed into the model that `train.py` builds from the
  saved config and task list.

  Raises:
    ExportError: no checkpoints, or no checkpoint for `step`.
    checkpoint.IncompatibleCheckpointError: the saved parameters do not fit the rebuilt model.
  """
  workdir = os.fspath(workdir)
  step = _resolve_step(workdir, step)
  restored = checkpoint_lib.read_checkpoint(workdir, step)
  record = restored.config
  if not isinstance(record, dict) or 'model' not in record or 'tasks' not in record:
    raise ExportError(f'checkpoint {_checkpoint_dir(workdir)}/{step} has no usable config '
                      "record (expected the run's config with a 'tasks' list)")
  config, task_names = config_from_record(record)
  data, records = _data_setup(config, workdir, task_names)
  hf_config = _saved_hf_config(workdir) or hf_config_for(config, data)
  if data.vocab.vocab_size > hf_config.vocab_size:
    raise ExportError(f'the tokenizer {data.vocab.path} has {data.vocab.vocab_size} tokens but '
                      f'the model\'s vocabulary has {hf_config.vocab_size}: it is not the '
                      'tokenizer the run was trained with')

  # The model's structure only (no init compute or memory): the checkpoint fills the values.
  def build():
    rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
    return muppet.build_model(config, hf_config, data.task_table, rngs=rngs)

  graphdef, params, rest = nnx.split(nnx.eval_shape(build), nnx.Param, ...)
  directory = _checkpoint_dir(workdir)
  params = _fill(params, restored.state['params'], 'params', directory, step)
  rest = _fill(rest, restored.state.get('rest', {}), 'rest', directory, step)
  model = nnx.merge(graphdef, params, rest)
  return RestoredRun(model=model, hf_config=hf_config, config=config, data=data,
                     records=records, step=step)


def read_eval_metrics(workdir: str, max_step: int | None = None
                      ) -> tuple[int | None, dict[str, dict[str, float]]]:
  """The latest evaluation in `workdir/metrics.jsonl` at or before `max_step`."""
  path = os.path.join(os.fspath(workdir), 'metrics.jsonl')
  best_step, best = None, {}
  if not os.path.exists(path):
    return best_step, best
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        entry = json.loads(line)
      except json.JSONDecodeError:  # A line cut by a crash: skip it.
        continue
      if 'eval' not in entry:
        continue
      step = int(entry.get('step', -1))
      if max_step is not None and step > max_step:
        continue
      if best_step is None or step >= best_step:
        best_step, best = step, entry['eval']
  return best_step, best


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
    ExportError: `workdir` has no checkpoints, or none for `step`.
  """
  workdir, out_dir = os.fspath(workdir), os.fspath(out_dir)
  run = restore_run(workdir, step)
  model, config, data, hf_config = run.model, run.config, run.data, run.hf_config
  model_type = config.model.type
  table = data.task_table
  tokenizer = transformers.AutoTokenizer.from_pretrained(data.vocab.path)

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

  eval_step, eval_metrics = read_eval_metrics(workdir, run.step)
  report = ExportReport(out_dir=out_dir, step=run.step, model_type=model_type,
                        backbone_class=backbone_class, heads=exported,
                        task_names=list(data.task_names), eval_metrics=eval_metrics,
                        eval_step=eval_step)
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


def model_card(report: ExportReport, run: RestoredRun) -> str:
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

  lines += [
      '## Loading',
      '',
      'Every directory loads standalone (weights, config and tokenizer files); each head '
      f'directory also has `{HEAD_INFO_FILENAME}` (tasks, input format, outputs).',
      '',
      '```python',
      'from transformers import AutoModel, AutoTokenizer',
      f'backbone = AutoModel.from_pretrained(HF_DIR)  # {report.backbone_class} weights',
      'tokenizer = AutoTokenizer.from_pretrained(HF_DIR)',
  ]
  if report.model_type == 'bart':
    lines += ['# summarization / generation: the tied LM head is part of this directory',
              'from transformers import BartForConditionalGeneration',
              'generator = BartForConditionalGeneration.from_pretrained(HF_DIR)']
  lines += ['```', '']
  for head in report.heads:
    path = f'HF_DIR/{HEADS_DIRNAME}/{head.name}'
    lines += [f'### `{HEADS_DIRNAME}/{head.name}`: `{head.hf_class}`', '']
    if head.name == CHOICE_HEAD_DIRNAME:
      lines.append(f'The shared multiple-choice head, for {", ".join(head.tasks)}.')
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
            'import torch',
            'from transformers import AutoTokenizer, BartForSequenceClassification',
            f'model = BartForSequenceClassification.from_pretrained("{path}").eval()',
            f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
            "first = [context + ' ' + question] * len(choices)",
            'enc = tokenizer(first, choices, padding=True, return_tensors="pt")',
            'scores = model(**enc).logits[:, 0]            # one score per choice',
            'probs = scores.softmax(-1)',
            '```',
        ]
      else:
        lines += [
            '',
            '```python',
            'from transformers import AutoTokenizer, RobertaForMultipleChoice',
            f'model = RobertaForMultipleChoice.from_pretrained("{path}").eval()',
            f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
            "first = [context + ' ' + question] * len(choices)",
            'enc = tokenizer(first, choices, padding=True, return_tensors="pt")',
            'logits = model(**{k: v[None] for k, v in enc.items()}).logits  # [1, choices]',
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
          f'model = {head.hf_class}.from_pretrained("{path}").eval()',
          f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
          'out = model(**tokenizer(question, context, return_tensors="pt"))',
          'out.start_logits, out.end_logits',
          '```',
      ]
    else:
      lines += [
          f'Task `{head.name}` ({head.num_labels} classes, `id2label` in config.json).',
          '',
          '```python',
          'from transformers import AutoModelForSequenceClassification, AutoTokenizer',
          f'model = AutoModelForSequenceClassification.from_pretrained("{path}").eval()',
          f'tokenizer = AutoTokenizer.from_pretrained("{path}")',
          'logits = model(**tokenizer(text_a, text_b, return_tensors="pt")).logits',
          'model.config.id2label[int(logits.argmax(-1))]',
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
  """The command line's work: export and print a summary; `SystemExit` on an ExportError."""
  try:
    report = export(workdir, out, step=step)
  except ExportError as e:
    raise SystemExit(f'error: {e}') from None
  print(f'exported step {report.step} of {workdir} to {report.out_dir}:')
  print(f'  {report.backbone_class}: {report.out_dir}')
  for head in report.heads:
    print(f'  {head.hf_class}: {head.path}  ({", ".join(head.tasks)})')
  return report


def main(argv: Sequence[str]) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  if len(argv) > 1:
    raise SystemExit(f'unexpected arguments: {list(argv[1:])}')
  cli(flags.FLAGS.workdir, flags.FLAGS.out, flags.FLAGS.step)


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string('workdir', None, 'The run\'s workdir (holds checkpoints/).', required=True)
  flags.DEFINE_string('out', None, 'Output Hugging Face directory.', required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step to export (default: the newest).')


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main)
