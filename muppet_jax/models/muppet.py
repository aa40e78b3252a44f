"""The MUPPET model: a RoBERTa or BART backbone plus the task heads, one forward per family.

Each forward takes one slot's sub-batch (docs/ARCHITECTURE.md section 2: one slot, no leading
axes), optionally `input_embeddings` (R3F's noised token embeddings, `[R, L, H]`, replacing the
backbone's raw token lookup) and `deterministic`, and returns a small dataclass with the
logits and the masks the loss needs:

- classification: the hidden state at `example_index[:, 0]` (RoBERTa: the segment's `<s>`;
  BART: its final `</s>` on the decoder side, the decoder input being the segment shifted
  right) -> the slot's task head -> `[E, K]` logits, classes >= the task's count masked.
- multiple choice: the hidden states at `example_index [E, C]` (RoBERTa: through the
  backbone's pooler) -> the shared head -> `[E, C]` scores, padded choices masked.
- span: every token's hidden state (example e = row e) -> start / end logits `[R, L]`,
  non-candidate positions masked.
- summarization (BART): the decoder over `decoder_input_ids` -> LM logits `[R, Ld, V]`.

The task of a slot is a traced scalar (`batch['task_id']`), so the classification head is
picked with a dynamic index into the stacked heads: the program is the same for every task.
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import transformers
from flax import nnx

from muppet_jax.data.features import TaskTable
from muppet_jax.models import heads as heads_lib
from muppet_jax.models import hf

Batch = dict[str, jax.Array]


@flax.struct.dataclass
class ClassifyOutputs:
  logits: jax.Array  # [E, K] task-head logits; classes >= the task's num_classes masked.
  class_mask: jax.Array  # [E, K] bool, the task's classes.


@flax.struct.dataclass
class ChooseOutputs:
  logits: jax.Array  # [E, C] one score per choice; padded choices masked.
  choice_mask: jax.Array  # [E, C] bool.


@flax.struct.dataclass
class SpanOutputs:
  start_logits: jax.Array  # [R, L]; non-candidate positions masked.
  end_logits: jax.Array  # [R, L].
  position_mask: jax.Array  # [R, L] bool (batch['span_mask']).


@flax.struct.dataclass
class SummarizeOutputs:
  logits: jax.Array  # [R, Ld, V] LM logits (compute dtype).
  target_mask: jax.Array  # [R, Ld] bool (batch['decoder_mask']).


def _gather_tokens(hidden: jax.Array, flat_index: jax.Array) -> jax.Array:
  """`hidden [R, L, H]` at flat token indices `[...]` (row * L + col) -> `[..., H]`."""
  flat = hidden.reshape(-1, hidden.shape[-1])
  index = jnp.clip(flat_index.astype(jnp.int32), 0, flat.shape[0] - 1)
  return jnp.take(flat, index, axis=0)


class MuppetModel(nnx.Module):
  """Backbone + classification heads (stacked), multiple-choice head, span head.

  Attributes:
    backbone: `roberta.RobertaModel` or `bart.BartModel` (see `hf.build` / `hf.load`).
    classification_heads: `heads.ClassificationHeads`, one row per classification task.
    choice_head: `heads.MultipleChoiceHead` (style 'roberta' or 'bart').
    span_head: `heads.SpanHead`.
    model_type: 'roberta' or 'bart'.
  All heads always exist (the multiple-choice and span heads are a few thousand parameters), so
  the parameter tree depends only on the model and the number of classification tasks.
  """

  def __init__(self, backbone: nnx.Module, *, model_type: str, hidden_size: int,
               task_table: TaskTable, classifier_dropout: float, choice_dropout: float,
               init_std: float, r4f: bool = False, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    """Wraps `backbone` and builds the heads.

    Args:
      backbone: a built RoBERTa/BART backbone (random or from `hf.load`).
      model_type: 'roberta' or 'bart'.
      hidden_size: H.
      task_table: the run's tasks; sets the number of classification heads, their width
        (`max_classes`), and the per-task head rows and class counts used at run time.
      classifier_dropout: dropout of the classification heads (`model.head_dropout`).
      choice_dropout: dropout of the multiple-choice head (`model.head_dropout`).
      init_std: HF `initializer_range` / `init_std` for the heads.
      r4f: spectral normalisation of the classification heads' out_proj and of the
        multiple-choice head's last projection (`train.r4f`).
      dtype, param_dtype: compute and parameter dtypes of the heads.
      rngs: `params` and `dropout` streams.
    """
    if model_type not in ('roberta', 'bart'):
      raise ValueError(f'unknown model type {model_type!r}')
    self.backbone = backbone
    self.model_type = model_type
    # Static per-task lookup tables (numpy, not parameters): indexed by the traced task id.
    self.head_index = tuple(int(i) for i in task_table.head_index)
    self.num_classes = tuple(int(k) for k in task_table.num_classes)
    self.classification_heads = heads_lib.ClassificationHeads(
        task_table.num_classification_heads, hidden_size, task_table.max_classes,
        dropout=classifier_dropout, spectral_norm=r4f, init_std=init_std, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs)
    self.choice_head = heads_lib.MultipleChoiceHead(
        hidden_size, style=model_type, dropout=choice_dropout, spectral_norm=r4f,
        init_std=init_std, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.span_head = heads_lib.SpanHead(hidden_size, init_std=init_std, dtype=dtype,
                                        param_dtype=param_dtype, rngs=rngs)

  # --- Backbone passthroughs -------------------------------------------------------------------

  def embed_tokens(self, input_ids: jax.Array) -> jax.Array:
    """Raw token-embedding lookup `[R, L]` -> `[R, L, H]` (R3F's hook input)."""
    return self.backbone.embed_tokens(input_ids)

  def encode_tokens(self, batch: Batch, input_embeddings: jax.Array | None = None,
                    deterministic: bool = True) -> jax.Array:
    """Per-token states `[R, L, H]` of the packed encoder input.

    RoBERTa: the encoder's last hidden state. BART: the decoder's last hidden state, the decoder
    input being each segment's encoder input shifted right (HF `shift_tokens_right`, per
    segment), as BartForSequenceClassification / BartForQuestionAnswering do.
    """
    segment_ids = batch['segment_ids']
    return self.backbone(
        batch['input_ids'], segment_ids > 0, segment_ids=segment_ids,
        positions=batch['positions'], input_embeddings=input_embeddings,
        deterministic=deterministic)

  # --- One forward per family ------------------------------------------------------------------

  def task_head(self, task_id: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(head row, class count) of task `task_id` ([] int32 traced)."""
    task_id = jnp.asarray(task_id, jnp.int32)
    head_index = jnp.asarray(np.asarray(self.head_index, np.int32))[task_id]
    num_classes = jnp.asarray(np.asarray(self.num_classes, np.int32))[task_id]
    return head_index, num_classes

  def _hidden(self, batch: Batch, input_embeddings: jax.Array | None, deterministic: bool,
              hidden: jax.Array | None) -> jax.Array:
    if hidden is not None:  # Already encoded (the objective encodes once for all heads).
      if input_embeddings is not None:
        raise ValueError('pass input_embeddings or hidden, not both')
      return hidden
    return self.encode_tokens(batch, input_embeddings, deterministic)

  def classify(self, batch: Batch, input_embeddings: jax.Array | None = None,
               deterministic: bool = True, *, hidden: jax.Array | None = None
               ) -> ClassifyOutputs:
    """Classification: the slot's task head on each example's representative token.

    `hidden`: the slot's `encode_tokens` states `[R, L, H]` when already computed (then the
    backbone is not run again); likewise for `choose` and `span`.
    """
    hidden = self._hidden(batch, input_embeddings, deterministic, hidden)
    features = _gather_tokens(hidden, batch['example_index'][:, 0])  # [E, H]
    head_index, num_classes = self.task_head(batch['task_id'])
    logits = self.classification_heads(features, head_index, num_classes,
                                       deterministic=deterministic)
    class_mask = jnp.broadcast_to(
        jnp.arange(logits.shape[-1]) < num_classes, logits.shape)
    return ClassifyOutputs(logits=logits, class_mask=class_mask)

  def choose(self, batch: Batch, input_embeddings: jax.Array | None = None,
             deterministic: bool = True, *, hidden: jax.Array | None = None) -> ChooseOutputs:
    """Multiple choice: one score per choice segment."""
    hidden = self._hidden(batch, input_embeddings, deterministic, hidden)
    features = _gather_tokens(hidden, batch['example_index'])  # [E, C, H]
    if self.model_type == 'roberta':
      # HF RobertaForMultipleChoice scores the pooler output (dense + tanh on <s>) of each choice.
      e, c, h = features.shape
      features = self.backbone.pool(features.reshape(e * c, 1, h)).reshape(e, c, h)
    scores = self.choice_head(features, deterministic=deterministic)
    choice_mask = batch['choice_mask'].astype(bool)
    scores = jnp.where(choice_mask, scores, heads_lib.logit_floor(scores.dtype))
    return ChooseOutputs(logits=scores, choice_mask=choice_mask)

  def span(self, batch: Batch, input_embeddings: jax.Array | None = None,
           deterministic: bool = True, *, hidden: jax.Array | None = None) -> SpanOutputs:
    """Span extraction: start/end logits per token of each row (example e = row e)."""
    hidden = self._hidden(batch, input_embeddings, deterministic, hidden)
    position_mask = batch['span_mask'].astype(bool)
    start, end = self.span_head(hidden, position_mask)
    return SpanOutputs(start_logits=start, end_logits=end, position_mask=position_mask)

  def summarize(self, batch: Batch, input_embeddings: jax.Array | None = None,
                deterministic: bool = True) -> SummarizeOutputs:
    """Summarization (BART only): teacher-forced decoder, tied LM head."""
    if self.model_type != 'bart':
      raise ValueError('summarization needs an encoder-decoder (model.type=bart)')
    segment_ids = batch['segment_ids']
    decoder_mask = batch['decoder_mask'].astype(bool)
    hidden = self.backbone(
        batch['input_ids'], segment_ids > 0, batch['decoder_input_ids'], decoder_mask,
        segment_ids=segment_ids, positions=batch['positions'],
        input_embeddings=input_embeddings, deterministic=deterministic)
    return SummarizeOutputs(logits=self.backbone.lm_logits(hidden), target_mask=decoder_mask)


def parse_dtype(name: str):
  """`config.model.dtype` / `param_dtype` string -> jnp dtype."""
  dtypes = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16,
            'float64': jnp.float64}
  if name not in dtypes:
    raise ValueError(f'unknown dtype {name!r}; one of {sorted(dtypes)}')
  return dtypes[name]


_dtype = parse_dtype  # Old private name, still used by train.py.


def build_model(config: ml_collections.ConfigDict, hf_config: transformers.PretrainedConfig,
                task_table: TaskTable, *, rngs: nnx.Rngs,
                backbone: nnx.Module | None = None) -> MuppetModel:
  """The MUPPET model of a run.

  Args:
    config: the experiment config (`model.type`, `model.dtype`, `model.param_dtype`,
      `model.remat`, `model.head_dropout`, `train.r4f`).
    hf_config: the backbone's `transformers` config (from `hf.load` or built from `config.model`).
    task_table: the run's tasks.
    rngs: `nnx.Rngs(params=..., dropout=...)`; heads (and the backbone, when built here) are
      initialised from it.
    backbone: an already built backbone (e.g. from `hf.load(config.model.init_from)`); None
      builds a randomly initialised one from `hf_config`.

  Returns:
    The `MuppetModel`.
  """
  model_type = config.model.type
  if model_type != hf_config.model_type:
    raise ValueError(f'model.type={model_type!r} but the checkpoint is {hf_config.model_type!r}')
  dtype, param_dtype = parse_dtype(config.model.dtype), parse_dtype(config.model.param_dtype)
  if backbone is None:
    backbone = hf.build(hf_config, dtype=dtype, param_dtype=param_dtype,
                        remat=config.model.remat,
                        scan_layers=config.model.get('scan_layers', False),
                        attention_implementation=config.model.get('attention', 'xla'),
                        vocab_multiple=config.model.get('vocab_multiple', 0), rngs=rngs)
  init_std = hf_config.initializer_range if model_type == 'roberta' else hf_config.init_std
  # One rate for every classification and multiple-choice head, from the experiment config,
  # whatever the checkpoint's `classifier_dropout` / `hidden_dropout_prob` say: 0.0 (fairseq's
  # `pooler_dropout` default, the authors' setting) unless `model.head_dropout` is overridden.
  head_dropout = float(config.model.head_dropout)
  if not 0. <= head_dropout < 1.:
    raise ValueError(f'model.head_dropout must be in [0, 1), got {head_dropout}')
  return MuppetModel(
      backbone, model_type=model_type, hidden_size=hf_config.hidden_size, task_table=task_table,
      classifier_dropout=head_dropout, choice_dropout=head_dropout, init_std=init_std,
      r4f=bool(config.train.r4f), dtype=dtype, param_dtype=param_dtype, rngs=rngs)
