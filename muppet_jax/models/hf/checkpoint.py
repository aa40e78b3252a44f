"""HF checkpoint directory <-> our backbone: `load` and `save`, which join config, names, files."""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from muppet_jax.models.hf.config import Backbone, Dtype, HFConfig, _model_type, build
from muppet_jax.models.hf.files import _SAFETENSORS, _resolve, read_config, read_tensors
from muppet_jax.models.hf.state_dict import (_BART_LM_BIAS, from_hf_state_dict,
                                             to_hf_state_dict)


def load(
    path_or_hub_id: str,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    remat: str = 'none',
    scan_layers: bool = False,
    attention_implementation: str = 'xla',
    vocab_multiple: int = 0,
    rngs: nnx.Rngs | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Backbone, HFConfig]:
  """Loads a HF RoBERTa or BART checkpoint as our backbone.

  Args:
    path_or_hub_id: a directory with config.json and safetensors / pytorch_model.bin weights
      (sharded or not), or a hub id (downloaded; needs network access).
    dtype: compute dtype.
    param_dtype: parameter dtype (checkpoint tensors are cast to it).
    remat: per-layer rematerialisation, 'none' | 'full' | 'dots_saveable'.
    scan_layers: stacked layer parameters run by a scan (see `build`).
    attention_implementation: `model.attention` (see `attention.dot_product_attention`).
    vocab_multiple: pad the token-embedding table's rows with zeros to a multiple of this
      (`model.vocab_multiple`; 0 = as in the checkpoint); `hf_config.vocab_size` is unchanged.
    rngs: init and dropout RNGs (default `nnx.Rngs(0)`); the init only matters for tensors
      the checkpoint lacks (see `LoadReport.defaulted`).
    overrides: config attributes to replace before building, e.g. dropout rates
      (`{'hidden_dropout_prob': 0.1}`); shape attributes must still match the checkpoint.

  Returns:
    `(model, hf_config)`; `hf_config` is the checkpoint's `transformers` config.
  """
  directory = _resolve(path_or_hub_id)
  hf_config = read_config(directory)
  for key, value in (overrides or {}).items():
    if not hasattr(hf_config, key):
      raise ValueError(f'{type(hf_config).__name__} has no attribute {key!r} to override.')
    setattr(hf_config, key, value)
  model = build(hf_config, dtype=dtype, param_dtype=param_dtype, remat=remat,
                scan_layers=scan_layers, attention_implementation=attention_implementation,
                vocab_multiple=vocab_multiple, rngs=rngs)
  report = from_hf_state_dict(model, read_tensors(directory))
  if report.ignored:
    logging.info('Loaded the %s backbone from %s; ignored %d task-head tensors: %s',
                 hf_config.model_type, path_or_hub_id, len(report.ignored), report.ignored)
  if report.defaulted:
    logging.warning('%s has no %s; kept their initial values (as transformers does).',
                    path_or_hub_id, report.defaulted)
  return model, hf_config


def save(model: Backbone, hf_config: HFConfig, path: str) -> None:
  """Writes `path/config.json` and `path/model.safetensors` (PyTorch names, see state_dict.py).

  The directory loads with `transformers.AutoModel.from_pretrained(path)` (and, for BART,
  `BartForConditionalGeneration.from_pretrained(path)`) with no missing or unexpected keys.
  """
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  model_type = _model_type(model)
  if hf_config.model_type != model_type:
    raise ValueError(f'hf_config is for {hf_config.model_type!r} but the model is {model_type}.')
  tensors = to_hf_state_dict(model)
  if model_type == 'bart' and not np.any(tensors[_BART_LM_BIAS]):
    del tensors[_BART_LM_BIAS]  # HF re-creates it as zeros (see state_dict.py).
  config = copy.deepcopy(hf_config)
  config.architectures = ['RobertaModel' if model_type == 'roberta'
                          else 'BartForConditionalGeneration']
  dtypes = {v.dtype for v in tensors.values()}
  if len(dtypes) == 1:  # Record the storage dtype, as save_pretrained does.
    config.dtype = np.dtype(dtypes.pop()).name
  os.makedirs(path, exist_ok=True)
  config.save_pretrained(path)
  safetensors.numpy.save_file(tensors, os.path.join(path, _SAFETENSORS),
                              metadata={'format': 'pt'})
