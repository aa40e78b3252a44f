"""Model FLOPs (the formula bench/ uses for MFU) and parameter counts from shapes."""

from __future__ import annotations

import dataclasses
import math

import jax
from flax import nnx

# Parameters that are table lookups, not matmuls (token, position and token-type embeddings;
# BART's shared table is a lookup for every family but summarization's LM head).
_EMBEDDING_NAMES = ('word_embeddings', 'position_embeddings', 'embed_positions', 'shared')


def model_flops_per_token(model_type: str, hidden_size: int, num_layers: int, length: int,
                          non_embedding_params: int) -> float:
  """Training FLOPs per token of a classification slot: 6 N + 12 x A x d x T.

  N = parameters in matmuls (all but the embedding tables), d = hidden size, T = tokens per row,
  A = attention layers: `num_layers` for RoBERTa, 3 x `num_layers` (per stack) for BART
  (encoder self-attention, decoder self- and cross-attention; the classification decoder reads
  all T tokens). The attention term counts QK^T and AV (2 x 2 T d per token and layer forward,
  x 3 for training), as PaLM's MFU (Chowdhery et al., 2022, appendix B). R3F's second pass and
  rematerialisation are not counted: MFU is for the plain step (bench/README.md).
  """
  attention_layers = num_layers if model_type == 'roberta' else 3 * num_layers
  return 6.0 * non_embedding_params + 12.0 * attention_layers * hidden_size * length


@dataclasses.dataclass(frozen=True)
class ParamCount:
  """Parameter counts of a model (from shapes only)."""

  total: int  # Every parameter.
  # N of the model-FLOPs formula: the parameters one slot multiplies with. Not the embedding
  # tables (lookups), and of the stacked classification heads only one (a slot uses its task's).
  slot_matmul: int


def count_params(params: nnx.State) -> ParamCount:
  """`ParamCount` of a (possibly abstract) parameter state."""
  total = slot_matmul = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    n = math.prod(leaf.shape)
    total += n
    name = jax.tree_util.keystr(path)
    if any(table in name for table in _EMBEDDING_NAMES):
      continue
    slot_matmul += n // leaf.shape[0] if 'classification_heads' in name else n
  return ParamCount(total=total, slot_matmul=slot_matmul)

