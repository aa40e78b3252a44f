"""Name mapping: our backbone's variables <-> HF (PyTorch) tensor names and layouts.

Our module paths equal the PyTorch parameter paths, so a parameter's HF name is its path
joined with '.', with the leaf renamed:

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from muppet_jax.models import bart
from muppet_jax.models import roberta
from muppet_jax.models.hf.config import Backbone, _model_type

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


def _default_prefix(model_type: str) -> str:
  return 'model.' if model_type == 'bart' else ''


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One backbone tensor: our variable (or slice `index` of a stacked one) and its HF shape."""

  variable: nnx.Variable
  hf_shape: tuple[int, ...]
  transpose: bool  # Linear kernel: HF stores [out, in].
  index: int | None = None  # Layer of a scanned stack: slice `index` of the leading axis.
  padded_rows: int = 0  # Our rows beyond HF's (a vocabulary padded by `vocab_multiple`).

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
# Token-embedding tables, whose rows our models may pad (`vocab_multiple`).
_TOKEN_TABLES = (('embeddings', 'word_embeddings'), ('shared',))


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
      if tuple(parents) in _TOKEN_TABLES:  # HF has the real rows only (`vocab_multiple`).
        yield name, _Entry(node, (model.vocab_size,) + shape[1:], False,
                           padded_rows=shape[0] - model.vocab_size)
        continue
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
    value = value[:entry.hf_shape[0]] if entry.padded_rows else value
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
    if entry.padded_rows:  # Zero rows up to our padded vocabulary.
      value = np.pad(value, [(0, entry.padded_rows)] + [(0, 0)] * (value.ndim - 1))
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

