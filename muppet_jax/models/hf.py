"""Hugging Face checkpoints <-> Flax NNX backbones (`RobertaModel`, `BartModel`).

Public API (docs/ARCHITECTURE.md section 3): `load(path_or_hub_id) -> (model, hf_config)` and
`save(model, hf_config, path)`, plus the pieces the export code reuses: `build`,
`config_from_shape`, `read_tensors`, `to_hf_state_dict`, `from_hf_state_dict`.

Name mapping. Our module paths equal the PyTorch parameter paths, so a parameter's HF name is
its path joined with '.', with the leaf renamed:

| ours | HF (PyTorch) |
|---|---|
| `...Linear.kernel` `[in, out]` | `...weight` `[out, in]` (transposed) |
| `...Linear.bias`, `...LayerNorm.bias` | `...bias` |
| `...LayerNorm.scale` | `...weight` |
| `...Embed.embedding` | `...weight` |
| BART `final_logits_bias` `[V]` | `final_logits_bias` `[1, V]` |

With `scan_layers`, a stack's layers are one module whose variables have a leading layer axis:
our `encoder.layer.attention.self.query.kernel` `[L, in, out]` holds HF's
`encoder.layer.{i}.attention.self.query.weight` as slice i (likewise BART's
`encoder.layers.*` / `decoder.layers.*`), so both layouts read and write the same HF files.

Layouts written by `save` (and the default of `to_hf_state_dict`):
- RoBERTa: HF `RobertaModel` names, no prefix (`embeddings.*`, `encoder.layer.{i}.*`,
  `pooler.dense.*`); `transformers.AutoModel` loads it with no missing or unexpected keys.
- BART: HF `BartForConditionalGeneration` names (`model.shared.weight`, `model.encoder.*`,
  `model.decoder.*`), tied weights written once as `model.shared.weight` (as
  `save_pretrained` does), and `final_logits_bias` only when it is non-zero: HF initialises a
  missing one to zeros (`_keys_to_ignore_on_load_missing`), so an all-zero bias left out keeps
  both `AutoModel` (`BartModel`, for which the bias would be unexpected) and
  `BartForConditionalGeneration` free of missing and unexpected keys.

Reading (`from_hf_state_dict`) accepts the prefixed and unprefixed layouts (`roberta.`,
`model.`), HF's tied copies (`model.encoder.embed_tokens.weight`,
`model.decoder.embed_tokens.weight`, `lm_head.weight`: must equal `model.shared.weight`),
drops non-parameter buffers of old checkpoints (`embeddings.position_ids`, `*.version`), and
sets aside task-head tensors (`classifier.*`, `lm_head.*`, `qa_outputs.*`,
`classification_head.*`), which `load` logs and `read_tensors` still returns to whoever needs
them. A checkpoint without RoBERTa's pooler (e.g. saved from `RobertaForSequenceClassification`)
keeps the randomly initialised pooler, and one without `final_logits_bias` keeps zeros, as in
`transformers`; both are logged. Any other missing or unexpected tensor, or a shape mismatch,
raises a ValueError that names the tensors.

Bad input fails with a `errors.UserError` that names it: `check_source` tells a local path that
does not exist (or is not a checkpoint directory) from a hub id before anything is loaded;
`WeightsFileError` names a damaged or truncated weights file; `SourceNotFoundError` a hub id
that cannot be downloaded (offline, unknown).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from absl import logging
from flax import nnx

from muppet_jax import errors
from muppet_jax.models import bart
from muppet_jax.models import roberta

Backbone = roberta.RobertaModel | bart.BartModel
HFConfig = transformers.RobertaConfig | transformers.BartConfig
Dtype = Any

_SAFETENSORS = 'model.safetensors'
_SAFETENSORS_INDEX = 'model.safetensors.index.json'
_TORCH = 'pytorch_model.bin'
_TORCH_INDEX = 'pytorch_model.bin.index.json'

# BART: HF's tied copies of `model.shared.weight`.
_BART_SHARED = 'model.shared.weight'
_BART_TIED = ('model.encoder.embed_tokens.weight', 'model.decoder.embed_tokens.weight',
              'lm_head.weight')
_BART_LM_BIAS = 'final_logits_bias'
# Task heads of HF *For* classes: not backbone parameters; set aside, logged, never an error.
_HEAD_PREFIXES = {
    'roberta': ('classifier.', 'lm_head.', 'qa_outputs.'),
    'bart': ('classification_head.', 'qa_outputs.', 'lm_head.'),
}
# Non-parameter buffers some (older) checkpoints carry; dropped silently, as transformers does.
_BUFFER_SUFFIXES = ('embeddings.position_ids', 'embeddings.token_type_ids', 'encoder.version',
                    'decoder.version', 'embed_positions._float_tensor')
_CONFIG = 'config.json'


class SourceNotFoundError(errors.UserError, FileNotFoundError):
  """A checkpoint / tokenizer path that does not exist, or a hub id that cannot be fetched."""


class WeightsFileError(errors.UserError, ValueError):
  """A weights or config file that cannot be read (damaged, truncated, not that format)."""


# ---------------------------------------------------------------------------------------------
# Building models
# ---------------------------------------------------------------------------------------------


def config_from_shape(
    model_type: str,
    *,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    vocab_size: int,
    dropout: float,
    attention_dropout: float,
    pad_token_id: int = 1,
    bos_token_id: int = 0,
    eos_token_id: int = 2,
) -> HFConfig:
  """A `RobertaConfig` or `BartConfig` for random init from `config.model` shape fields.

  Values not given follow the released checkpoints (roberta-base/large: `type_vocab_size=1`,
  `layer_norm_eps=1e-5`, gelu; bart-base/large: gelu, no embedding scale, decoder start = eos).
  For BART, `num_layers` is per stack and `max_position_embeddings` excludes the offset of 2;
  for RoBERTa it includes the padding offset (514 for 512 tokens), as in HF configs.
  """
  if vocab_size <= 0:
    raise ValueError(f'vocab_size must be positive, got {vocab_size} (resolve 0 = the '
                     'tokenizer size before calling).')
  if model_type == 'roberta':
    return transformers.RobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        hidden_act='gelu', hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=attention_dropout,
        max_position_embeddings=max_position_embeddings, type_vocab_size=1,
        layer_norm_eps=1e-5, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
        eos_token_id=eos_token_id, architectures=['RobertaModel'])
  if model_type == 'bart':
    return transformers.BartConfig(
        vocab_size=vocab_size, d_model=hidden_size, encoder_layers=num_layers,
        decoder_layers=num_layers, encoder_attention_heads=num_heads,
        decoder_attention_heads=num_heads, encoder_ffn_dim=intermediate_size,
        decoder_ffn_dim=intermediate_size, max_position_embeddings=max_position_embeddings,
        activation_function='gelu', dropout=dropout, attention_dropout=attention_dropout,
        activation_dropout=0.0, scale_embedding=False, pad_token_id=pad_token_id,
        bos_token_id=bos_token_id, eos_token_id=eos_token_id,
        decoder_start_token_id=eos_token_id, forced_eos_token_id=eos_token_id,
        architectures=['BartForConditionalGeneration'])
  raise ValueError(f"model_type must be 'roberta' or 'bart', got {model_type!r}.")


def build(
    hf_config: HFConfig,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    remat: str = 'none',
    scan_layers: bool = False,
    rngs: nnx.Rngs | None = None,
) -> Backbone:
  """A randomly initialised backbone for `hf_config` (`rngs` default: `nnx.Rngs(0)`).

  `scan_layers` stacks each layer stack's parameters on a leading axis (run with a scan); the
  HF names and values are the same either way (see `to_hf_state_dict`).
  """
  rngs = nnx.Rngs(0) if rngs is None else rngs
  kw = dict(dtype=dtype, param_dtype=param_dtype, remat=remat, scan_layers=scan_layers,
            rngs=rngs)
  if hf_config.model_type == 'roberta':
    return roberta.RobertaModel(hf_config, **kw)
  if hf_config.model_type == 'bart':
    return bart.BartModel(hf_config, **kw)
  raise ValueError(f'Unsupported model_type {hf_config.model_type!r} (roberta or bart).')


# ---------------------------------------------------------------------------------------------
# Name mapping
# ---------------------------------------------------------------------------------------------


def _model_type(model: Backbone) -> str:
  if isinstance(model, roberta.RobertaModel):
    return 'roberta'
  if isinstance(model, bart.BartModel):
    return 'bart'
  raise TypeError(f'Expected a RobertaModel or BartModel, got {type(model).__name__}.')


def _default_prefix(model_type: str) -> str:
  return 'model.' if model_type == 'bart' else ''


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One backbone tensor: our variable (or slice `index` of a stacked one) and its HF shape."""

  variable: nnx.Variable
  hf_shape: tuple[int, ...]
  transpose: bool  # Linear kernel: HF stores [out, in].
  index: int | None = None  # Layer of a scanned stack: slice `index` of the leading axis.

  @property
  def shape(self) -> tuple[int, ...]:
    """Our shape of the tensor (one layer's slice for a stacked variable)."""
    shape = tuple(self.variable.shape)
    return shape if self.index is None else shape[1:]


def _stacked_paths(model: Backbone) -> dict[tuple[str, ...], int]:
  """Module paths of scanned layer stacks -> number of layers (empty when unrolled)."""
  from muppet_jax.models import attention  # pylint: disable=import-outside-toplevel

  if isinstance(model, roberta.RobertaModel):
    stacks = {('encoder', 'layer'): model.encoder}
  else:
    stacks = {('encoder', 'layers'): model.encoder, ('decoder', 'layers'): model.decoder}
  return {path: attention.num_stacked(getattr(stack, path[1]))
          for path, stack in stacks.items() if stack.scan_layers}


_LEAF_NAMES = {'kernel': 'weight', 'embedding': 'weight', 'scale': 'weight', 'bias': 'bias'}


def _entries(model: Backbone, prefix: str) -> Iterator[tuple[str, _Entry]]:
  """(HF name, entry) for every parameter (and buffer) of the backbone.

  A variable of a scanned layer stack (path `encoder.layer.attention...` with a leading layer
  axis) gives one entry per layer, named as the unrolled layer `encoder.layer.{i}.attention...`.
  """
  stacked = _stacked_paths(model)
  # A stack's variables are buffered and written layer by layer when the stack ends, so that
  # the names come in the unrolled model's order (layer 0's tensors, then layer 1's, ...).
  pending: list[tuple[str, str, nnx.Variable, tuple[int, ...], bool]] = []
  pending_stack: tuple[str, ...] | None = None

  def flush():
    if pending_stack is None:
      return
    for i in range(stacked[pending_stack]):
      for stack_name, rest, node, one, transpose in pending:
        yield f'{stack_name}.{i}.{rest}', _Entry(node, one[::-1] if transpose else one,
                                                  transpose, index=i)
    pending.clear()

  for path, node in nnx.iter_graph(model):
    if not isinstance(node, (nnx.Param, bart.Buffer)):
      continue
    shape = tuple(node.shape)
    stack = tuple(path[:2]) if tuple(path[:2]) in stacked else None
    if stack != pending_stack:
      yield from flush()
      pending_stack = stack
    if path == ('final_logits_bias',):
      yield _BART_LM_BIAS, _Entry(node, (1,) + shape, False)
      continue
    *parents, leaf = path
    if leaf not in _LEAF_NAMES:
      raise AssertionError(f'No HF name for parameter {path}.')
    transpose = leaf == 'kernel'
    if stack is None:
      name = prefix + '.'.join(str(p) for p in parents) + '.' + _LEAF_NAMES[leaf]
      yield name, _Entry(node, shape[::-1] if transpose else shape, transpose)
      continue
    rest = '.'.join(str(p) for p in parents[2:]) + '.' + _LEAF_NAMES[leaf]
    pending.append((f'{prefix}{parents[0]}.{parents[1]}', rest, node, shape[1:], transpose))
  yield from flush()


def to_hf_state_dict(model: Backbone, *, prefix: str | None = None) -> dict[str, np.ndarray]:
  """The backbone's tensors under their PyTorch names, as contiguous numpy arrays.

  Args:
    model: a `RobertaModel` or `BartModel`.
    prefix: prepended to every name except BART's `final_logits_bias`. Default: '' for RoBERTa
      (HF `RobertaModel`), 'model.' for BART (`BartForConditionalGeneration`). The export of a
      `RobertaForSequenceClassification` would pass 'roberta.' and drop the `pooler.*` tensors,
      which that class does not have.

  Returns:
    name -> array in the parameter dtype. Includes RoBERTa's `pooler.dense.*` and BART's
    `final_logits_bias` (`[1, V]`) even when zero; tied BART weights appear once, as
    `{prefix}shared.weight`.
  """
  prefix = _default_prefix(_model_type(model)) if prefix is None else prefix
  out = {}
  host: dict[int, np.ndarray] = {}  # One device-to-host copy per (stacked) variable.
  for name, entry in _entries(model, prefix):
    key = id(entry.variable)
    if key not in host:
      host[key] = np.asarray(jax.device_get(entry.variable[...]))
    value = host[key] if entry.index is None else host[key][entry.index]
    value = value.T if entry.transpose else value
    out[name] = np.ascontiguousarray(value.reshape(entry.hf_shape))
  return out


@dataclasses.dataclass
class LoadReport:
  """What `from_hf_state_dict` did besides loading every backbone tensor.

  Attributes:
    ignored: checkpoint tensors that are not backbone parameters (task heads), by name.
    defaulted: backbone tensors absent from the checkpoint that kept their initial value
      (RoBERTa `pooler.dense.*`, BART `final_logits_bias`).
  """

  ignored: list[str] = dataclasses.field(default_factory=list)
  defaulted: list[str] = dataclasses.field(default_factory=list)


def _is_optional(model_type: str, name: str) -> bool:
  if model_type == 'roberta':
    return name.startswith('pooler.')
  return name == _BART_LM_BIAS


def _canonical_name(model_type: str, name: str) -> str:
  """Maps a checkpoint name onto the layout `to_hf_state_dict` writes by default."""
  if model_type == 'roberta':
    return name[len('roberta.'):] if name.startswith('roberta.') else name
  if name.split('.', 1)[0] in ('shared', 'encoder', 'decoder'):  # A saved HF BartModel.
    return 'model.' + name
  return name


def from_hf_state_dict(model: Backbone, tensors: Mapping[str, np.ndarray]) -> LoadReport:
  """Loads HF-named tensors into `model` in place (cast to each parameter's dtype).

  Args:
    model: a `RobertaModel` or `BartModel` of the checkpoint's shape.
    tensors: name -> array, any of the layouts described in the module docstring.

  Returns:
    A `LoadReport` of the ignored head tensors and the defaulted optional tensors.

  Raises:
    ValueError: on a missing or unexpected tensor, a shape mismatch, or tied copies that differ;
      the message names the tensors.
  """
  model_type = _model_type(model)
  expected = dict(_entries(model, _default_prefix(model_type)))
  report = LoadReport()
  found: dict[str, np.ndarray] = {}
  origin: dict[str, str] = {}
  unexpected = []
  tied: dict[str, np.ndarray] = {}
  for raw_name, value in tensors.items():
    name = _canonical_name(model_type, raw_name)
    if name in expected:
      if name in found:
        raise ValueError(f'Tensor {name!r} appears twice in the checkpoint: as '
                         f'{origin[name]!r} and as {raw_name!r}.')
      found[name], origin[name] = value, raw_name
    elif model_type == 'bart' and name in _BART_TIED:
      tied[name] = value
    elif raw_name.endswith(_BUFFER_SUFFIXES):
      logging.debug('Dropping non-parameter buffer %s.', raw_name)
    elif raw_name.startswith(_HEAD_PREFIXES[model_type]):
      report.ignored.append(raw_name)
    else:
      unexpected.append(raw_name)
  if unexpected:
    raise ValueError(f'Unexpected tensors in the checkpoint (not part of the {model_type} '
                     f'backbone): {sorted(unexpected)}.')

  if tied:  # BART: HF's copies of the shared embedding must be the shared embedding.
    if _BART_SHARED not in found:
      first = sorted(tied)[0]
      found[_BART_SHARED], origin[_BART_SHARED] = tied[first], first
    shared = np.asarray(found[_BART_SHARED])
    for name, value in sorted(tied.items()):
      value = np.asarray(value)
      if value.shape != shared.shape or not np.array_equal(value, shared):
        raise ValueError(f'Tensor {name!r} should be tied to {_BART_SHARED!r} but differs '
                         f'(shape {value.shape} vs {shared.shape}); untied embeddings or LM '
                         'heads are not supported.')

  missing = [n for n in expected if n not in found and not _is_optional(model_type, n)]
  if missing:
    raise ValueError(f'Missing tensors in the checkpoint for the {model_type} backbone: '
                     f'{sorted(missing)}.')
  mismatched = [
      f'{origin[n]}: checkpoint {tuple(np.shape(found[n]))} vs model {e.hf_shape}'
      for n, e in expected.items()
      if n in found and tuple(np.shape(found[n])) != e.hf_shape
  ]
  if mismatched:
    raise ValueError('Shape mismatch between checkpoint and model config for tensors: '
                     + '; '.join(mismatched) + '.')

  stacks: dict[int, tuple[nnx.Variable, list]] = {}  # Scanned stacks: slices per variable.
  for name, entry in expected.items():
    if name not in found:
      report.defaulted.append(name)
      continue
    value = np.asarray(found[name])
    value = value.T if entry.transpose else value
    value = value.reshape(entry.shape)
    if entry.index is None:
      entry.variable[...] = jnp.asarray(value, dtype=entry.variable.dtype)
      continue
    slices = stacks.setdefault(id(entry.variable), (entry.variable, []))[1]
    slices.append((entry.index, value))
  for variable, slices in stacks.values():  # Every layer of a stack is there (none optional).
    stacked = np.stack([v for _, v in sorted(slices, key=lambda s: s[0])])
    variable[...] = jnp.asarray(stacked, dtype=variable.dtype)
  return report


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


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


def load(
    path_or_hub_id: str,
    *,
    dtype: Dtype = jnp.float32,
    param_dtype: Dtype = jnp.float32,
    remat: str = 'none',
    scan_layers: bool = False,
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
                scan_layers=scan_layers, rngs=rngs)
  report = from_hf_state_dict(model, read_tensors(directory))
  if report.ignored:
    logging.info('Loaded the %s backbone from %s; ignored %d task-head tensors: %s',
                 hf_config.model_type, path_or_hub_id, len(report.ignored), report.ignored)
  if report.defaulted:
    logging.warning('%s has no %s; kept their initial values (as transformers does).',
                    path_or_hub_id, report.defaulted)
  return model, hf_config


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


def usable_positions(hf_config: HFConfig) -> int:
  """Tokens per sequence the backbone can embed, special tokens included.

  RoBERTa's positions start after the padding index (`max_position_embeddings -
  pad_token_id - 1`, 512 for the released 514); BART's learned positions start at 0 (its
  table has 2 extra rows, not counted in `max_position_embeddings`).
  """
  if hf_config.model_type == 'roberta':
    return hf_config.max_position_embeddings - hf_config.pad_token_id - 1
  return hf_config.max_position_embeddings


def save(model: Backbone, hf_config: HFConfig, path: str) -> None:
  """Writes `path/config.json` and `path/model.safetensors` (PyTorch names, see module doc).

  The directory loads with `transformers.AutoModel.from_pretrained(path)` (and, for BART,
  `BartForConditionalGeneration.from_pretrained(path)`) with no missing or unexpected keys.
  """
  import safetensors.numpy  # pylint: disable=import-outside-toplevel

  model_type = _model_type(model)
  if hf_config.model_type != model_type:
    raise ValueError(f'hf_config is for {hf_config.model_type!r} but the model is {model_type}.')
  tensors = to_hf_state_dict(model)
  if model_type == 'bart' and not np.any(tensors[_BART_LM_BIAS]):
    del tensors[_BART_LM_BIAS]  # HF re-creates it as zeros (see module docstring).
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
