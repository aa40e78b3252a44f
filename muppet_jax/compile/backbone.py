"""The backbone's shape without weights: its `transformers` config, offline.

`--mode compile` needs only shapes: the config.json of `model.init_from` when it is local (or in
the Hugging Face cache), else the config's `model.*` shape fields; the vocabulary of a local
tokenizer, else `model.vocab_size`, else the RoBERTa/BART BPE's size.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import ml_collections
import transformers

from muppet_jax import build
from muppet_jax import errors
from muppet_jax import workdir as workdir_lib

# The RoBERTa/BART byte-level BPE (roberta-base/large, bart-base/large tokenizers).
ROBERTA_BART_VOCAB_SIZE = 50_265
_ROBERTA_BART_IDS = dict(pad_id=1, bos_id=0, eos_id=2)  # <pad>, <s>, </s>.


@dataclasses.dataclass
class Backbone:
  """The backbone config the step is compiled with, and where it came from."""

  hf_config: transformers.PretrainedConfig
  tokenizer_size: int  # For the objective (summarization logits beyond it are dropped).
  source: str  # Human-readable origin of the shape.
  notes: list[str]  # Assumptions made (printed and reported).


def backbone_config(config: ml_collections.ConfigDict, workdir: str) -> Backbone:
  """The backbone's `transformers` config, offline and without weights (see the module doc)."""
  overrides = build.dropout_overrides(config)
  if config.finetune.from_workdir:  # Fine-tuning: the pre-finetuned run's exact backbone.
    path = os.path.join(config.finetune.from_workdir, workdir_lib.BACKBONE_CONFIG)
    hf_config = workdir_lib.load_backbone_config(config.finetune.from_workdir)
    if hf_config is None:
      raise errors.UserError(f'{path} is missing: finetune.from_workdir must be a workdir '
                             'written by muppet_jax.train')
    return Backbone(hf_config, hf_config.vocab_size, f'{path}', [])
  init_from = config.model.init_from
  hf_config, source = None, ''
  if init_from and os.path.isdir(init_from):
    if not os.path.exists(os.path.join(init_from, 'config.json')):
      raise errors.UserError(f'model.init_from={init_from!r} is a directory without '
                             'config.json: point it at a Hugging Face checkpoint directory')
    hf_config = transformers.AutoConfig.from_pretrained(init_from)
    source = f'{init_from}/config.json'
  elif init_from:  # A hub id: its config.json if it is already in the local cache.
    try:
      hf_config = transformers.AutoConfig.from_pretrained(init_from, local_files_only=True)
      source = f'{init_from} config.json (local Hugging Face cache)'
    except (OSError, ValueError):
      hf_config = None
  notes = []
  tokenizer_size, ids = _local_tokenizer(config, workdir)
  if hf_config is not None:
    for key, value in overrides.items():  # As `hf.load` does: the run's dropout rates win.
      setattr(hf_config, key, value)
    if hf_config.model_type != config.model.type:
      raise errors.UserError(f'model.init_from={init_from!r} is a {hf_config.model_type!r} '
                             f'checkpoint but model.type is {config.model.type!r}')
    return Backbone(hf_config, tokenizer_size or hf_config.vocab_size, source, notes)
  if init_from:
    notes.append(f'model.init_from={init_from!r} is not a local directory (nor in the local '
                 'Hugging Face cache): the shape comes from the config\'s model.* fields')
  if tokenizer_size is None:  # Not local: assume a tokenizer of the model's vocabulary size.
    tokenizer_size = config.model.vocab_size or ROBERTA_BART_VOCAB_SIZE
    ids = _ROBERTA_BART_IDS
    if not config.model.vocab_size:
      notes.append(f'vocabulary: {ROBERTA_BART_VOCAB_SIZE:,} tokens, the RoBERTa/BART BPE of '
                   'the paper configs (set model.vocab_size for another tokenizer)')
  hf_config = build.shape_hf_config(config, tokenizer_size, **ids)
  return Backbone(hf_config, tokenizer_size, 'the config\'s model.* shape fields', notes)


def _local_tokenizer(config, workdir: str) -> tuple[int | None, dict]:
  """(size, special ids) of the run's tokenizer when it is local (demo or a directory), else
  (None, {}): a hub tokenizer is never downloaded here."""
  name = config.data.tokenizer or config.model.init_from
  if not name or (name != 'demo' and not os.path.isdir(name)):
    return None, {}
  from muppet_jax.data import vocab as vocab_lib  # pylint: disable=g-import-not-at-top
  vocab = vocab_lib.HFVocabulary(build.resolve_tokenizer(config, workdir))
  return vocab.vocab_size, dict(pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)



def with_layers(backbone: Backbone, layers: int) -> Backbone:
  """`backbone` with `layers` layers (per stack for BART)."""
  hf_config = copy.deepcopy(backbone.hf_config)
  if hf_config.model_type == 'bart':
    hf_config.encoder_layers = hf_config.decoder_layers = layers
  else:
    hf_config.num_hidden_layers = layers
  return dataclasses.replace(backbone, hf_config=hf_config)

