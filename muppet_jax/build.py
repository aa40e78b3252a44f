"""Builds a run's parts from its config: tokenizer and tasks, backbone config and model.

Shared by training (`train.run`), the workdir reloader and ahead-of-time compilation, so that
every mode builds exactly the same model from the same config.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import seqio
import transformers
from flax import nnx

from muppet_jax import errors
from muppet_jax.data import tasks
from muppet_jax.data import vocab as vocab_lib
from muppet_jax.data.features import BatchShape, Family, TaskTable
from muppet_jax.models import hf
from muppet_jax.models import muppet


@dataclasses.dataclass
class DataSetup:
  """The run's tokenizer and tasks."""

  vocab: vocab_lib.HFVocabulary
  task_names: tuple[str, ...]
  rates: tuple[float, ...]
  task_table: TaskTable
  shape: BatchShape


@dataclasses.dataclass(frozen=True)
class RunTasks:
  """The run's tasks, known from the config alone (no tokenizer, no data, no network)."""

  names: tuple[str, ...]  # Task names in task-id order.
  rates: tuple[float, ...]  # Natural mixing rates, aligned with `names`.
  table: TaskTable


def run_tasks(config: ml_collections.ConfigDict) -> RunTasks:
  """The tasks of `data.mixture` (a mixture or one task name), without `data.excluded_tasks`,
  `data.num_tasks` of them (`tasks.select_tasks`: the required tasks and a seeded random choice).

  Raises:
    catalogue.UnknownNameError: the mixture / task name is unknown (close matches named).
    tasks.TaskSelectionError: the task counts or lists do not fit the mixture.
    errors.ConfigError (a ValueError): summarization tasks in a RoBERTa run.
  """
  if config.data.mixture in seqio.TaskRegistry.names():  # One task (fine-tuning).
    mixture = [(config.data.mixture, 1.0)]
  else:
    mixture = tasks.mixture_tasks(config.data.mixture)
  data = config.data  # Fields added since a saved config was written have their defaults.
  mixture = tasks.select_tasks(  # The paper's number-of-tasks study (5.1).
      mixture, num_tasks=data.num_tasks,
      required=tasks.parse_task_list(data.get('required_tasks', '')),
      excluded=tasks.parse_task_list(data.get('excluded_tasks', '')),
      seed=data.get('subset_seed', -1))
  names = tuple(name for name, _ in mixture)
  rates = tuple(float(rate) for _, rate in mixture)
  records = [tasks.record_for_task(name) for name in names]
  table = TaskTable.build(names, [int(r.family) for r in records],
                          [r.num_classes for r in records])
  summarization = [n for n, r in zip(names, records) if r.family == Family.SUMMARIZATION]
  if summarization and config.model.type != 'bart':
    raise errors.ConfigError(
        f'mixture {config.data.mixture!r} has summarization tasks {summarization}, which need an '
        "encoder-decoder: use model.type='bart' or an encoder mixture such as muppet_encoder")
  return RunTasks(names=names, rates=rates, table=table)


def setup_data(config: ml_collections.ConfigDict, workdir: str) -> DataSetup:
  """Tokenizer and task table of the run, with the checks that need both."""
  if config.data.tfds_data_dir:
    seqio.set_tfds_data_dir_override(config.data.tfds_data_dir)
  run = run_tasks(config)
  vocab = vocab_lib.HFVocabulary(resolve_tokenizer(config, workdir))
  return DataSetup(vocab=vocab, task_names=run.names, rates=run.rates, task_table=run.table,
                   shape=BatchShape.from_config(config.data))


def resolve_tokenizer(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Directory or hub id of the run's tokenizer (`data.tokenizer`, else `model.init_from`)."""
  if config.data.tokenizer == 'demo':
    from muppet_jax.data import demo  # pylint: disable=g-import-not-at-top
    return demo.build_tokenizer(os.path.join(workdir, 'tokenizer'))
  if config.data.tokenizer:
    return config.data.tokenizer
  if config.model.init_from:
    return config.model.init_from
  raise errors.ConfigError(
      "data.tokenizer is empty and model.init_from is empty: set one of them (or "
      "data.tokenizer='demo' for the offline demo)")


def dropout_overrides(config: ml_collections.ConfigDict) -> dict[str, float]:
  """The run's dropout rates as `transformers` config fields; they win over a checkpoint's."""
  if config.model.type == 'roberta':
    return {'hidden_dropout_prob': config.model.dropout,
            'attention_probs_dropout_prob': config.model.attention_dropout}
  return {'dropout': config.model.dropout, 'attention_dropout': config.model.attention_dropout}


def random_init_hf_config(config: ml_collections.ConfigDict,
                          data: DataSetup) -> transformers.PretrainedConfig:
  """The backbone config of a random-init run: `config.model`'s shape, the tokenizer's ids."""
  return shape_hf_config(config, data.vocab.vocab_size, pad_id=data.vocab.pad_id,
                         bos_id=data.vocab.bos_id, eos_id=data.vocab.eos_id)


def shape_hf_config(config: ml_collections.ConfigDict, tokenizer_size: int, *, pad_id: int,
                    bos_id: int, eos_id: int) -> transformers.PretrainedConfig:
  """`config.model`'s shape with a vocabulary of `model.vocab_size` (0: `tokenizer_size`) and
  the given special ids; no tokenizer object needed (ahead-of-time compilation)."""
  return hf.config_from_shape(
      config.model.type, hidden_size=config.model.hidden_size,
      num_layers=config.model.num_layers, num_heads=config.model.num_heads,
      intermediate_size=config.model.intermediate_size,
      max_position_embeddings=config.model.max_position_embeddings,
      vocab_size=config.model.vocab_size or tokenizer_size,
      dropout=config.model.dropout, attention_dropout=config.model.attention_dropout,
      pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id)


def build_model(config: ml_collections.ConfigDict, data: DataSetup,
                hf_config: transformers.PretrainedConfig | None = None
                ) -> tuple[muppet.MuppetModel, transformers.PretrainedConfig]:
  """The model and its backbone's `transformers` config.

  Random init from `hf_config` if given, else the backbone of `model.init_from`, else random
  init from the shape in `config.model`; the heads are always new.
  """
  rngs = nnx.Rngs(params=config.seed, dropout=config.seed + 1)
  dtype = muppet.parse_dtype(config.model.dtype)
  param_dtype = muppet.parse_dtype(config.model.param_dtype)
  if hf_config is not None:
    backbone = None
  elif config.model.init_from:
    backbone, hf_config = hf.load(config.model.init_from, dtype=dtype, param_dtype=param_dtype,
                                  remat=config.model.remat,
                                  scan_layers=config.model.get('scan_layers', False),
                                  attention_implementation=config.model.get('attention', 'xla'),
                                  vocab_multiple=config.model.get('vocab_multiple', 0),
                                  rngs=rngs,
                                  overrides=dropout_overrides(config))
    if hf_config.model_type != config.model.type:
      raise errors.ConfigError(f'model.init_from={config.model.init_from!r} is a '
                               f'{hf_config.model_type!r} checkpoint but model.type is '
                               f'{config.model.type!r}: set model.type to match it')
  else:
    backbone = None
    hf_config = random_init_hf_config(config, data)
  check_fits(config, data, hf_config)
  model = muppet.build_model(config, hf_config, data.task_table, rngs=rngs, backbone=backbone)
  return model, hf_config


def check_fits(config, data: DataSetup, hf_config) -> None:
  """Sequence lengths and vocabulary must fit the model (clear errors instead of garbage)."""
  check_sizes(config, data.vocab.vocab_size, hf_config)


def check_sizes(config, tokenizer_size: int, hf_config) -> None:
  """`check_fits` with the tokenizer's size only (no tokenizer object needed)."""
  max_pos = hf_config.max_position_embeddings
  # RoBERTa's positions start after the padding index; BART's learned positions at 0 (+2 rows).
  usable = max_pos - (hf_config.pad_token_id + 1) if config.model.type == 'roberta' else max_pos
  for key in ('length', 'decoder_length'):
    if config.data[key] > usable:
      raise errors.ConfigError(
          f'data.{key}={config.data[key]} is too long for the model: '
          f'max_position_embeddings={max_pos} allows {usable} tokens per row; lower data.{key}')
  if tokenizer_size > hf_config.vocab_size:
    raise errors.ConfigError(f'the tokenizer has {tokenizer_size} tokens but the model\'s '
                             f'vocabulary has {hf_config.vocab_size}: they do not belong '
                             'together; set data.tokenizer to the model\'s tokenizer')
