"""HF checkpoint directories: finding them (local path or hub id) and reading their files.

Bad input fails with a `errors.UserError` that names it: `check_source` tells a local path that
does not exist (or is not a checkpoint directory) from a hub id before anything is loaded;
`WeightsFileError` names a damaged or truncated weights file; `SourceNotFoundError` a hub id
that cannot be downloaded (offline, unknown).
"""

from __future__ import annotations

import json
import os

import numpy as np
import transformers
from absl import logging

from muppet_jax import errors
from muppet_jax.models.hf.config import HFConfig

_SAFETENSORS = 'model.safetensors'
_SAFETENSORS_INDEX = 'model.safetensors.index.json'
_TORCH = 'pytorch_model.bin'
_TORCH_INDEX = 'pytorch_model.bin.index.json'
_CONFIG = 'config.json'


class SourceNotFoundError(errors.UserError, FileNotFoundError):
  """A checkpoint / tokenizer path that does not exist, or a hub id that cannot be fetched."""


class WeightsFileError(errors.UserError, ValueError):
  """A weights or config file that cannot be read (damaged, truncated, not that format)."""


def _torch_load(path: str) -> dict[str, np.ndarray]:
  import torch  # pylint: disable=import-outside-toplevel  (only for .bin checkpoints)

  state = torch.load(path, map_location='cpu', weights_only=True)
  out = {}
  for name, tensor in state.items():
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16: reinterpret the bits.
      import ml_dtypes  # pylint: disable=import-outside-toplevel
      out[name] = tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    else:
      out[name] = tensor.numpy()
  return out


def _safetensors_load(path: str) -> dict[str, np.ndarray]:
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  return safetensors.numpy.load_file(path)


def _read_file(load_fn, path: str):
  """`load_fn(path)`, with any failure to parse the file reported as a `WeightsFileError` that
  names it (safetensors, torch and json errors do not say which file they were reading)."""
  import pickle  # pylint: disable=import-outside-toplevel
  import safetensors  # pylint: disable=import-outside-toplevel

  try:
    return load_fn(path)
  except FileNotFoundError as e:
    raise SourceNotFoundError(f'{path} does not exist') from e
  except (OSError, ValueError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError,
          safetensors.SafetensorError) as e:
    raise WeightsFileError(
        f'cannot read {path} ({_size_text(path)}): {type(e).__name__}: '
        f'{" ".join(str(e).split())[:300]}; the file is damaged, truncated or not in that '
        'format: copy, download or export it again') from e


def _size_text(path: str) -> str:
  """'N bytes' (or 'unreadable size') for error messages about a file."""
  try:
    return f'{os.path.getsize(path)} bytes'
  except OSError:
    return 'unreadable size'


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _load_sharded(directory: str, index_file: str, load_fn) -> dict[str, np.ndarray]:
  index = _read_file(_read_json, os.path.join(directory, index_file))
  if not isinstance(index, dict) or not isinstance(index.get('weight_map'), dict):
    raise WeightsFileError(f'{os.path.join(directory, index_file)} has no "weight_map": it is '
                           'not a sharded-checkpoint index; copy or download it again')
  weight_map = index['weight_map']
  out = {}
  for shard in sorted(set(weight_map.values())):
    out.update(_read_file(load_fn, os.path.join(directory, shard)))
  missing = sorted(set(weight_map) - set(out))
  if missing:
    raise ValueError(f'{index_file} lists tensors that no shard holds: {missing}.')
  return out


def read_tensors(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a HF checkpoint directory, by their PyTorch names (heads included).

  Looks for, in order: model.safetensors, model.safetensors.index.json (sharded),
  pytorch_model.bin, pytorch_model.bin.index.json (sharded).

  Raises:
    SourceNotFoundError: none of these files is there.
    WeightsFileError: a file is there but cannot be read (named in the message).
  """
  if os.path.exists(os.path.join(directory, _SAFETENSORS)):
    return _read_file(_safetensors_load, os.path.join(directory, _SAFETENSORS))
  if os.path.exists(os.path.join(directory, _SAFETENSORS_INDEX)):
    return _load_sharded(directory, _SAFETENSORS_INDEX, _safetensors_load)
  if os.path.exists(os.path.join(directory, _TORCH)):
    return _read_file(_torch_load, os.path.join(directory, _TORCH))
  if os.path.exists(os.path.join(directory, _TORCH_INDEX)):
    return _load_sharded(directory, _TORCH_INDEX, _torch_load)
  raise SourceNotFoundError(
      f'no weights in {directory}: expected one of {_SAFETENSORS}, {_SAFETENSORS_INDEX}, '
      f'{_TORCH}, {_TORCH_INDEX}')


def is_hub_id(value: str) -> bool:
  """Whether `value` has the form of a Hugging Face hub id ('name' or 'namespace/name').

  Paths that start with '/', '.' or '~', or have more than one '/', are never hub ids.
  """
  from huggingface_hub.utils import HFValidationError, validate_repo_id  # pylint: disable=import-outside-toplevel

  if not value or value.startswith(('/', '.', '~')) or os.sep in value.replace('/', '', 1):
    return False
  try:
    validate_repo_id(value)
  except HFValidationError:
    return False
  return True


def check_source(path_or_hub_id: str, field: str, *, need_config: bool = True) -> None:
  """Fails fast on a `field` value (e.g. 'model.init_from') that cannot be loaded.

  A value that exists locally must be a directory (with config.json if `need_config`); a value
  that does not exist must have the form of a hub id (it is downloaded later, when online).
  Nothing is read or downloaded here.

  Raises:
    SourceNotFoundError: a local path that does not exist, a file instead of a directory, a
      directory without config.json, or a hub id while HF_HUB_OFFLINE is set.
  """
  if not path_or_hub_id:
    return
  value = os.path.expanduser(path_or_hub_id)
  if os.path.exists(value):
    if not os.path.isdir(value):
      raise SourceNotFoundError(f'{field}={path_or_hub_id!r} is a file; give the Hugging Face '
                                'checkpoint directory that holds it (config.json + weights)')
    if need_config and not os.path.exists(os.path.join(value, _CONFIG)):
      raise SourceNotFoundError(
          f'{field}={path_or_hub_id!r} has no {_CONFIG}: it is not a Hugging Face checkpoint '
          'directory (save one with save_pretrained, or with muppet_jax.export)')
    return
  if not is_hub_id(path_or_hub_id):
    raise SourceNotFoundError(
        f'{field}={path_or_hub_id!r} does not exist (no such local directory, and not a hub '
        "id such as 'FacebookAI/roberta-base'): fix the path")
  if os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes', 'on'):
    raise SourceNotFoundError(
        f"{field}={path_or_hub_id!r} is not a local directory, and HF_HUB_OFFLINE is set, so "
        'it cannot be downloaded as a hub id: give a local Hugging Face checkpoint directory '
        'or unset HF_HUB_OFFLINE')


def _resolve(path_or_hub_id: str) -> str:
  """A local directory, downloading a hub id's config and weights when it is not one."""
  if os.path.isdir(os.path.expanduser(path_or_hub_id)):
    return os.path.expanduser(path_or_hub_id)
  check_source(path_or_hub_id, 'checkpoint')
  import huggingface_hub  # pylint: disable=import-outside-toplevel

  logging.info('%s is not a local directory; downloading it from the Hugging Face hub.',
               path_or_hub_id)
  try:
    directory = huggingface_hub.snapshot_download(
        path_or_hub_id, allow_patterns=['config.json', '*.safetensors', _SAFETENSORS_INDEX])
    if not any(f.endswith('.safetensors') for f in os.listdir(directory)):
      directory = huggingface_hub.snapshot_download(
          path_or_hub_id, allow_patterns=['config.json', 'pytorch_model*.bin', _TORCH_INDEX])
  except (OSError, ValueError) as e:  # Offline, unknown or gated repository, HTTP errors.
    raise SourceNotFoundError(
        f'{path_or_hub_id!r} is not a local directory and could not be downloaded from the '
        f'Hugging Face hub ({type(e).__name__}: {" ".join(str(e).split())[:300]}); give a '
        'local checkpoint directory or check the hub id and the network') from e
  return directory


def read_config(directory: str) -> HFConfig:
  """`transformers.AutoConfig` of a checkpoint directory; a damaged config.json is named."""
  path = os.path.join(directory, _CONFIG)
  if not os.path.exists(path):
    raise SourceNotFoundError(f'{directory} has no {_CONFIG}: it is not a Hugging Face '
                              'checkpoint directory')
  try:
    return transformers.AutoConfig.from_pretrained(directory)
  except (OSError, ValueError, KeyError) as e:
    raise WeightsFileError(
        f'cannot read {path}: {type(e).__name__}: {" ".join(str(e).split())[:300]}; fix or '
        're-create the file (a RoBERTa or BART config saved by transformers)') from e
