"""The per-slot MUPPET objective: family dispatch, log(n) loss scaling and R3F.

`slot_loss` is what `step.py` differentiates for each slot (one device's sub-batch of one task
at one accumulation step; docs/ARCHITECTURE.md section 2):

    loss = masked_mean over the slot's real examples e of
             loss_e / log(n_e)  +  lambda * symKL_e * s_e

with the R3F term only when enabled, and s_e = 1 / log(n_e) with `train.r3f.scale_by_log_n`,
else 1. Each choice below, the authors' code it follows and where it departs on purpose:
docs/FIDELITY.md.

- The family is a traced scalar, so the computation is a `lax.switch` built from the task
  table: one branch runs the backbone once (and R3F's noised pass) and then switches between
  the classification, multiple-choice and span heads the run needs, one runs BART's
  summarization, and one cheap branch returns zeros for any family id the run does not have.
  Only the slot's own branch runs. When the run has a single branch (every encoder-only run)
  there is no switch: absent family ids are masked instead.
  Every branch returns the same pytree of shapes; no collective is used inside a branch (the
  step does all of them outside: a collective inside a branch would deadlock devices that took
  different branches).
- Each slot's loss is a mean over its examples, so after the step averages slots every slot
  (hence every task drawn) weighs the same: the paper's "gradients from each task are averaged
  before the model update". fairseq would instead weigh by sample size.
- R3F (Aghajanyan et al. 2020; the authors' fairseq examples/rxf): a second forward of the same
  model on noised token embeddings, noise ~ U(-eps, eps) or N(0, eps) added to the raw
  token-embedding lookup (before embedding scale and positions). Classification, multiple
  choice and span start the noised path from `stop_gradient(embed_tokens(ids))`
  (sentence_prediction_r3f: `token_embeddings.detach().clone() + noise`); summarization from
  `embed_tokens(ids)` itself (label_smoothed_cross_entropy_r3f: `token_embeddings.clone() +
  noise`, gradient flows into the table through the noised pass too). The symmetric KL between
  clean and noised output distributions (float32 softmax, summed over the output axis) is one
  value per example: classes / choices; span: start KL + end KL over the candidate positions;
  summarization: per target token, then SUMMED over the example's real target tokens
  (`train.r3f.token_reduction='sum'`, the default) or averaged over them ('mean', T_e times
  weaker for an example of T_e real target tokens). 'sum' is the authors' weight:
  label_smoothed_cross_entropy_r3f's `_get_symm_kl` sums the KL over every token of the batch
  and divides by the number of sentences, then multiplies by sample_size = ntokens, and the
  trainer divides the gradient by ntokens again, so per sentence the weight of the summed KL is
  lambda. Padding target positions are excluded here (fairseq includes them: their decoder
  states still produce logits). Gradients flow through both passes. With R3F off no second
  forward is traced.
- The KL term is not divided by log(n) unless `train.r3f.scale_by_log_n` (default False):
  paper eq. 1 scales the task loss, whose value at a uniform prediction is log(n); the KL is
  not such a loss (it is 0 for any prediction when the noise is 0), and leaving it unscaled
  keeps lambda's meaning per unit of KL the same for every family. Relative to the unscaled
  task loss the KL then weighs lambda * log(n) (binary 0.69, summarization 10.8); with
  scale_by_log_n it weighs lambda for every family, as in the single-task R3F criteria.
- R3F is applied whenever `settings.r3f` is on, whatever `deterministic` is (fairseq ties it
  to `model.training`; here the step decides by calling `slot_loss` for training and
  `slot_predictions` for evaluation).

Randomness is a pure function of the `rng` argument (the step passes a per-slot key): it is
split into a dropout key and a noise key; the dropout key reseeds every RNG stream of a private
copy of the model (`nnx.reseed`), so the same key gives the same dropout masks whatever the
model's stored stream state, and nothing in the caller's model is mutated.
"""

from __future__ import annotations

import dataclasses

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from muppet_jax import losses
from muppet_jax import r3f as r3f_inputs
from muppet_jax.data.features import Family, TaskTable
from muppet_jax.models.muppet import MuppetModel

Batch = dict[str, jax.Array]

NOISE_TYPES = ('uniform', 'normal')
TOKEN_REDUCTIONS = ('sum', 'mean')


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
  """Static settings of the objective (hashable: part of the compiled program)."""

  model_type: str = 'roberta'  # 'roberta' or 'bart' (config.model.type).
  loss_scaling: bool = True  # Divide each example's loss by log(n) (train.loss_scaling).
  label_smoothing: float = 0.1  # Summarization label smoothing (train.label_smoothing).
  r3f: bool = False  # R3F symmetric-KL term (train.r3f.enabled).
  r3f_lambda: float = 1.0  # Weight of the term (train.r3f.lambda_).
  r3f_eps: float = 1e-5  # Noise scale (train.r3f.eps).
  r3f_noise: str = 'uniform'  # 'uniform' U(-eps, eps) or 'normal' N(0, eps) (train.r3f.noise).
  # Summarization KL over the target tokens: 'sum' (fairseq's weight) or 'mean'
  # (train.r3f.token_reduction).
  r3f_token_reduction: str = 'sum'
  # Divide the KL term by log(n) like the task loss (train.r3f.scale_by_log_n; only when
  # loss_scaling is on).
  r3f_scale_by_log_n: bool = False
  # Run the clean and the noised inputs through the backbone as one doubled batch
  # (train.r3f.one_pass): the weights are read once per layer and the matmuls are twice as
  # tall; the same loss and gradients as two passes (different dropout draws).
  r3f_one_pass: bool = False
  # Compute dtype of the matmuls when it differs from the parameters' ('bfloat16' with float32
  # master weights): the matmul kernels are cast to it once per slot, before the layers, so
  # that every pass (forward, rematerialised forward, backward) reads them at half the bytes.
  # The same numerics as Linear's own cast ('' = no cast).
  matmul_dtype: str = ''
  # Vocabulary size of the LM head; summarization logits beyond it (a padded embedding table)
  # are dropped. 0 = all logits.
  vocab_size: int = 0
  # Longest answer (tokens) `slot_predictions` considers for span tasks
  # (eval.max_answer_length; the SQuAD convention, HF run_qa's default 30).
  max_answer_length: int = 30

  def __post_init__(self):
    if self.model_type not in ('roberta', 'bart'):
      raise ValueError(f'unknown model type {self.model_type!r}')
    if self.r3f_noise not in NOISE_TYPES:
      raise ValueError(f'train.r3f.noise must be one of {NOISE_TYPES}, got {self.r3f_noise!r}')
    if self.r3f_token_reduction not in TOKEN_REDUCTIONS:
      raise ValueError(f'train.r3f.token_reduction must be one of {TOKEN_REDUCTIONS}, got '
                       f'{self.r3f_token_reduction!r}')
    if not 0. <= self.label_smoothing < 1.:
      raise ValueError(f'label_smoothing must be in [0, 1), got {self.label_smoothing}')

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  vocab_size: int = 0) -> 'ObjectiveSettings':
    """Settings from the experiment config (`model.type`, `train.*`,
    `eval.max_answer_length`)."""
    t = config.train
    return cls(model_type=config.model.type, loss_scaling=bool(t.loss_scaling),
               label_smoothing=float(t.label_smoothing), r3f=bool(t.r3f.enabled),
               r3f_lambda=float(t.r3f.lambda_), r3f_eps=float(t.r3f.eps),
               r3f_noise=str(t.r3f.noise),
               r3f_token_reduction=str(t.r3f.token_reduction),
               r3f_scale_by_log_n=bool(t.r3f.scale_by_log_n),
               r3f_one_pass=bool(t.r3f.get('one_pass', False)), vocab_size=int(vocab_size),
               matmul_dtype=(config.model.dtype if config.model.dtype != config.model.param_dtype
                             else ''),
               max_answer_length=int(config.eval.max_answer_length))


@flax.struct.dataclass
class SlotMetrics:
  """Scalars (float32; float64 under jax_enable_x64) describing one slot's objective."""

  # The objective: task_loss + lambda * sym_kl (sym_kl / log(n) per example with
  # scale_by_log_n), what is differentiated.
  loss: jax.Array
  task_loss: jax.Array  # Mean over real examples of the log(n)-scaled task loss.
  unscaled_loss: jax.Array  # Mean over real examples of the raw task loss (no log(n), no R3F).
  # Mean over real examples of the per-example R3F symmetric KL (summarization: summed or
  # averaged over the target tokens per train.r3f.token_reduction; never log(n)-scaled; 0 when
  # R3F is off).
  sym_kl: jax.Array
  num_examples: jax.Array  # Real examples in the slot.
  correct: jax.Array  # Correct predictions (classification, choice; span: start and end).


@flax.struct.dataclass
class SlotPredictions:
  """Per-example predictions of one slot (dropout off, no R3F); `[E]` each."""

  label: jax.Array  # int32 argmax class / choice (0 for span and summarization).
  # Span tasks (else 0): the row's best answer span among its context tokens (the `<s>` "not
  # in this window" position is no candidate), start <= end < start + max_answer_length...
  span_start: jax.Array  # int32 its first token within row e.
  span_end: jax.Array  # int32 its last token.
  # ...and its score, start logit + end logit (float32; -inf for a row without context
  # tokens). Rows of one question are compared by it on the host (SQuAD-style best span over
  # all windows), so only three numbers per row come back, not [R, L] logits.
  span_score: jax.Array
  loss: jax.Array  # float32 unscaled task loss of the example.


@flax.struct.dataclass
class _FamilyResult:
  """What every family branch returns, `[E]` each (rows padded to E for span/summarization)."""

  loss: jax.Array  # float32 unscaled per-example task loss.
  sym_kl: jax.Array  # float32 per-example symmetric KL (0 without R3F).
  correct: jax.Array  # float32 1.0 where the prediction is right.
  label: jax.Array  # int32
  span_start: jax.Array  # int32
  span_end: jax.Array  # int32
  # float32 score of the predicted span, set by the span branch when predicting; None in
  # training (`_uniform_types` fills zeros for the other branches' predictions).
  span_score: jax.Array | None = None


def _pad_rows(x: jax.Array, num_examples: int) -> jax.Array:
  """`[R]` per-row values -> `[E]` (example e = row e; rows R..E-1 are not examples)."""
  return jnp.pad(x, (0, num_examples - x.shape[0]))


def split_slot_rng(rng: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The slot key (typed or raw uint32[2]) -> (dropout key, R3F noise key)."""
  if not jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.wrap_key_data(rng)
  dropout_key, noise_key = jax.random.split(rng)
  return dropout_key, noise_key


@flax.struct.dataclass
class _Encoded:
  """The slot's backbone states `[R, L, H]` (`MuppetModel.encode_tokens`), shared by the
  classification, multiple-choice and span heads."""

  clean: jax.Array
  noised: jax.Array | None  # R3F's pass over the noised embeddings; None without R3F.


def _classification(model: MuppetModel, batch: Batch, encoded: _Encoded,
                    settings: ObjectiveSettings, deterministic: bool,
                    predict: bool) -> _FamilyResult:
  del settings, predict  # argmax is the prediction either way.
  out = model.classify(batch, deterministic=deterministic, hidden=encoded.clean)
  labels = batch['labels']
  loss = losses.cross_entropy(out.logits, labels, out.class_mask)
  label = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)
  sym_kl = jnp.zeros_like(loss)
  if encoded.noised is not None:
    noised = model.classify(batch, deterministic=deterministic, hidden=encoded.noised)
    sym_kl = losses.symmetric_kl(out.logits, noised.logits, out.class_mask)
  zeros = jnp.zeros_like(label)
  return _FamilyResult(loss=loss, sym_kl=sym_kl, correct=(label == labels).astype(jnp.float32),
                       label=label, span_start=zeros, span_end=zeros)


def _multiple_choice(model: MuppetModel, batch: Batch, encoded: _Encoded,
                     settings: ObjectiveSettings, deterministic: bool,
                     predict: bool) -> _FamilyResult:
  del settings, predict
  out = model.choose(batch, deterministic=deterministic, hidden=encoded.clean)
  labels = batch['labels']
  loss = losses.sentence_ranking(out.logits, labels, out.choice_mask)
  label = jnp.argmax(out.logits, axis=-1).astype(jnp.int32)
  sym_kl = jnp.zeros_like(loss)
  if encoded.noised is not None:
    noised = model.choose(batch, deterministic=deterministic, hidden=encoded.noised)
    sym_kl = losses.symmetric_kl(out.logits, noised.logits, out.choice_mask)
  zeros = jnp.zeros_like(label)
  return _FamilyResult(loss=loss, sym_kl=sym_kl, correct=(label == labels).astype(jnp.float32),
                       label=label, span_start=zeros, span_end=zeros)


@flax.struct.dataclass
class BestSpans:
  """The best span of each row, `[R]` each."""

  start: jax.Array  # int32 first token.
  end: jax.Array  # int32 last token.
  score: jax.Array  # float32 start logit + end logit; -inf where the row has no candidate.


def best_spans(start_logits: jax.Array, end_logits: jax.Array, position_mask: jax.Array,
               max_answer_length: int) -> BestSpans:
  """Highest start + end score with start <= end < start + max_answer_length, per row.

  Args:
    start_logits, end_logits: `[R, L]`.
    position_mask: `[R, L]` bool candidate positions (start and end both among them).
    max_answer_length: longest span in tokens.

  Returns:
    `BestSpans` (start 0, end 0, score -inf for a row without candidates).
  """
  length = start_logits.shape[-1]
  scores = (start_logits.astype(jnp.float32)[:, :, None] +
            end_logits.astype(jnp.float32)[:, None, :])  # [R, L(start), L(end)]
  offset = jnp.arange(length)[None, :] - jnp.arange(length)[:, None]  # end - start
  valid = ((offset >= 0) & (offset < max_answer_length))[None]
  valid = valid & position_mask[:, :, None] & position_mask[:, None, :]
  flat = jnp.where(valid, scores, -jnp.inf).reshape(scores.shape[0], -1)
  best = jnp.argmax(flat, axis=-1)
  return BestSpans(start=(best // length).astype(jnp.int32),
                   end=(best % length).astype(jnp.int32),
                   score=jnp.take_along_axis(flat, best[:, None], axis=-1)[:, 0])


def _span(model: MuppetModel, batch: Batch, encoded: _Encoded, settings: ObjectiveSettings,
          deterministic: bool, predict: bool) -> _FamilyResult:
  out = model.span(batch, deterministic=deterministic, hidden=encoded.clean)
  rows = out.start_logits.shape[0]
  num_examples = batch['example_mask'].shape[0]
  start, end = batch['span_start'][:rows], batch['span_end'][:rows]
  loss = losses.span_loss(out.start_logits, out.end_logits, start, end, out.position_mask)
  pad = lambda x: _pad_rows(x, num_examples)
  span_score = None
  if predict:
    # SQuAD v1.1-style: every question has an answer, so the `<s>` at column 0 ("not in this
    # window", a training target) is no candidate; the host keeps each question's best row.
    context_mask = out.position_mask.at[:, 0].set(False)
    best = best_spans(out.start_logits, out.end_logits, context_mask,
                      settings.max_answer_length)
    pred_start, pred_end, span_score = best.start, best.end, pad(best.score)
  else:  # Training accuracy: independent argmaxes (cheap; no [R, L, L] score matrix).
    pred_start = jnp.argmax(out.start_logits, axis=-1).astype(jnp.int32)
    pred_end = jnp.argmax(out.end_logits, axis=-1).astype(jnp.int32)
  sym_kl = jnp.zeros_like(loss)
  if encoded.noised is not None:
    noised = model.span(batch, deterministic=deterministic, hidden=encoded.noised)
    sym_kl = (losses.symmetric_kl(out.start_logits, noised.start_logits, out.position_mask) +
              losses.symmetric_kl(out.end_logits, noised.end_logits, out.position_mask))
  correct = ((pred_start == start) & (pred_end == end)).astype(jnp.float32)
  return _FamilyResult(loss=pad(loss), sym_kl=pad(sym_kl), correct=pad(correct),
                       label=jnp.zeros_like(batch['labels']), span_start=pad(pred_start),
                       span_end=pad(pred_end), span_score=span_score)


def _summarization(model: MuppetModel, batch: Batch, noise_key: jax.Array,
                   settings: ObjectiveSettings, deterministic: bool, r3f: bool,
                   predict: bool) -> _FamilyResult:
  del predict  # Generation (beam search) is not part of the step.
  noised = None
  if r3f and settings.r3f_one_pass:
    embeddings = r3f_inputs.clean_and_noised_embeddings(model, batch['input_ids'], noise_key,
                                                        settings, False)
    both = model.summarize(r3f_inputs.doubled(batch), embeddings, deterministic)
    logits, noised = r3f_inputs.halves(both.logits)
    target_mask = r3f_inputs.halves(both.target_mask)[0]
  else:
    out = model.summarize(batch, None, deterministic)
    logits, target_mask = out.logits, out.target_mask
    if r3f:
      noised = model.summarize(
          batch,
          r3f_inputs.noised_embeddings(model, batch['input_ids'], noise_key, settings, False),
          deterministic).logits
  if settings.vocab_size and logits.shape[-1] > settings.vocab_size:
    logits = logits[..., :settings.vocab_size]
  num_examples = batch['example_mask'].shape[0]
  loss = losses.label_smoothed_cross_entropy(logits, batch['decoder_target_ids'],
                                             target_mask, settings.label_smoothing)
  sym_kl = jnp.zeros_like(loss)
  if r3f:
    if settings.vocab_size and noised.shape[-1] > settings.vocab_size:
      noised = noised[..., :settings.vocab_size]
    per_token = losses.symmetric_kl(logits, noised)  # [R, Ld]
    reduce = losses.masked_sum if settings.r3f_token_reduction == 'sum' else losses.masked_mean
    sym_kl = reduce(per_token, target_mask, axis=-1)  # [R]
  zeros = jnp.zeros_like(batch['labels'])
  return _FamilyResult(loss=_pad_rows(loss, num_examples), sym_kl=_pad_rows(sym_kl, num_examples),
                       correct=jnp.zeros_like(batch['loss_n']), label=zeros,
                       span_start=zeros, span_end=zeros)


# The families whose heads read `encode_tokens` (one backbone pass per slot, shared), and
# their head functions.
_HEAD_FNS = {
    Family.CLASSIFICATION: _classification,
    Family.MULTIPLE_CHOICE: _multiple_choice,
    Family.SPAN: _span,
}


def _absent_family(batch: Batch) -> _FamilyResult:
  """Branch for family ids the run does not have: zeros, derived from the batch (so that they
  carry the batch's device-varying type inside shard_map like the other branches' outputs)."""
  zero_f = batch['loss_n'].astype(jnp.float32) * 0.
  zero_i = batch['labels'] * 0
  return _FamilyResult(loss=zero_f, sym_kl=zero_f, correct=zero_f, label=zero_i,
                       span_start=zero_i, span_end=zero_i)


def run_families(task_table: TaskTable, settings: ObjectiveSettings) -> tuple[Family, ...]:
  """The families this run's branches cover, in branch order."""
  present = tuple(f for f in Family if task_table.has_family(f))
  if Family.SUMMARIZATION in present and settings.model_type != 'bart':
    names = [n for n, f in zip(task_table.names, task_table.families)
             if f == Family.SUMMARIZATION]
    raise ValueError(f'summarization tasks {names} need model.type=bart')
  return present


def _switch(index_of_family: np.ndarray, branches: list, batch: Batch, *operands):
  """`branches[index_of_family[batch['family_id']]](*operands)`; no switch for one branch."""
  if len(branches) == 1:
    return branches[0](*operands)
  index = jnp.asarray(index_of_family)[jnp.clip(batch['family_id'], 0, len(Family) - 1)]
  return jax.lax.switch(index, branches, *operands)


def _dispatch(model: MuppetModel, batch: Batch, rng: jax.Array, *, task_table: TaskTable,
              settings: ObjectiveSettings, deterministic: bool, r3f: bool,
              predict: bool) -> _FamilyResult:
  """Runs the slot's family on a private functional copy of the model.

  Two levels: the backbone pass (`encode_tokens`, plus R3F's noised pass) is traced once for
  the classification, multiple-choice and span families together, then a switch picks the
  head; summarization (BART: the decoder reads the target, not the input) is its own branch.
  Tracing the backbone once instead of once per family keeps the program (and its compile
  time and compile memory) from growing with the number of families.
  """
  families = run_families(task_table, settings)
  head_families = [f for f in families if f in _HEAD_FNS]
  dropout_key, noise_key = split_slot_rng(rng)
  graphdef, state = nnx.split(model)
  if settings.matmul_dtype:
    state = cast_matmul_kernels(state, jnp.dtype(settings.matmul_dtype))

  def private_copy(state):
    # A fresh copy inside the branch's trace: dropout streams can advance freely here, and
    # nothing leaks into the caller's model.
    m = nnx.merge(graphdef, state)
    if not deterministic:
      _reseed(m, dropout_key)
    return m

  def encoder_families(state, batch):
    m = private_copy(state)
    noised = None
    if r3f and settings.r3f_one_pass:
      embeddings = r3f_inputs.clean_and_noised_embeddings(m, batch['input_ids'], noise_key,
                                                          settings, True)
      clean, noised = r3f_inputs.halves(
          m.encode_tokens(r3f_inputs.doubled(batch), embeddings, deterministic))
    else:
      clean = m.encode_tokens(batch, None, deterministic)
      if r3f:
        embeddings = r3f_inputs.noised_embeddings(m, batch['input_ids'], noise_key, settings, True)
        noised = m.encode_tokens(batch, embeddings, deterministic)
    encoded = _Encoded(clean=clean, noised=noised)
    head_graphdef, head_state = nnx.split(m)  # Carries the advanced dropout streams.

    def head_branch(fn):
      def branch(head_state, batch, encoded):
        return fn(nnx.merge(head_graphdef, head_state), batch, encoded, settings,
                  deterministic, predict)
      return branch

    head_of_family = np.zeros(len(Family), np.int32)  # Other families never reach here.
    for i, f in enumerate(head_families):
      head_of_family[int(f)] = i
    heads = [_uniform_types(head_branch(_HEAD_FNS[f]), predict) for f in head_families]
    return _switch(head_of_family, heads, batch, head_state, batch, encoded)

  def summarization(state, batch):
    return _summarization(private_copy(state), batch, noise_key, settings, deterministic, r3f,
                          predict)

  def absent(state, batch):
    del state
    return _absent_family(batch)

  branches, branch_of_family = [], np.full(len(Family), -1, np.int32)
  if head_families:
    branch_of_family[[int(f) for f in head_families]] = len(branches)
    branches.append(encoder_families)  # Already uniform: the heads are.
  if Family.SUMMARIZATION in families:
    branch_of_family[int(Family.SUMMARIZATION)] = len(branches)
    branches.append(_uniform_types(summarization, predict))
  absent_ids = branch_of_family < 0
  if not np.any(absent_ids):
    return _switch(branch_of_family, branches, batch, state, batch)
  if len(branches) > 1:  # Family ids the run does not have: a branch of zeros.
    branch_of_family[absent_ids] = len(branches)
    branches.append(_uniform_types(absent, predict))
    return _switch(branch_of_family, branches, batch, state, batch)
  # One family branch (every encoder-only run): no switch at all, so that XLA copies no
  # parameter into a conditional; a family id the run does not have (impossible for the
  # batches the pipeline builds) gets zeros by a mask instead of a branch.
  # Fresh variables (a switch operand would be): the branch reseeds the copy's RNG streams.
  state = jax.tree.map(lambda x: x, state)
  result = _uniform_types(branches[0], predict)(state, batch)
  present = jnp.asarray(~absent_ids)[jnp.clip(batch['family_id'], 0, len(Family) - 1)]
  return jax.tree.map(lambda x: jnp.where(present, x, jnp.zeros_like(x)), result)


def cast_matmul_kernels(state: nnx.State, dtype) -> nnx.State:
  """`state` with every matmul kernel (a float32 parameter named `kernel`) cast to `dtype`.
  Linear layers cast their kernel to the compute dtype anyway; doing it here, once, before a
  scan over the layers, keeps the float32 weights from being read in every pass."""

  def cast(path, leaf):
    if (isinstance(leaf, nnx.Param) and path and path[-1] == 'kernel'
        and leaf.get_value().dtype == jnp.float32):
      return leaf.replace(leaf.get_value().astype(dtype))
    return leaf

  return nnx.map_state(cast, state)


def _uniform_types(branch, predict: bool):
  """Makes a branch's result types identical across branches (lax.switch requires it).

  `span_score` is an array (zeros outside the span branch) when predicting, and None in
  training, whose program thus carries no prediction-only output.

  dtypes: float32/int32 (float64 under jax_enable_x64), whatever the model's compute dtype.
  Inside shard_map: every leaf is made device-varying over the axes the batch varies over, so
  a branch that returns a constant (e.g. zeros) matches one computed from the batch.
  """
  float_dtype = jax.dtypes.canonicalize_dtype(jnp.float64)

  def wrapped(state, batch, *operands):
    r = branch(state, batch, *operands)
    # x + 0 * (a batch value) carries the batch's device-varying type (the rewrite is free).
    zero_f = batch['loss_n'][0].astype(float_dtype) * 0
    zero_i = batch['labels'][0].astype(jnp.int32) * 0
    span_score = None
    if predict:
      span_score = jnp.zeros_like(r.loss) if r.span_score is None else r.span_score
      span_score = span_score.astype(float_dtype) + zero_f
    return _FamilyResult(
        loss=r.loss.astype(float_dtype) + zero_f, sym_kl=r.sym_kl.astype(float_dtype) + zero_f,
        correct=r.correct.astype(float_dtype) + zero_f,
        label=r.label.astype(jnp.int32) + zero_i,
        span_start=r.span_start.astype(jnp.int32) + zero_i,
        span_end=r.span_end.astype(jnp.int32) + zero_i,
        span_score=span_score)
  return wrapped


def _reseed(model: nnx.Module, key: jax.Array) -> None:
  """Reseeds every RNG stream of `model` from `key` (deterministic in the graph order)."""
  tags = sorted({v.key.tag for _, v in nnx.iter_graph(model) if isinstance(v, nnx.RngStream)})
  if tags:
    # 'match_shape': the stacked streams of scanned layers (`model.scan_layers`) get one key per
    # layer, split from the stream's key; scalar streams get the key itself.
    nnx.reseed(model, policy='match_shape',
               **{t: jax.random.fold_in(key, i) for i, t in enumerate(tags)})


def slot_loss(model: MuppetModel, batch: Batch, rng: jax.Array, *, task_table: TaskTable,
              settings: ObjectiveSettings, deterministic: bool = False
              ) -> tuple[jax.Array, SlotMetrics]:
  """One slot's objective and its metrics.

  Args:
    model: the MUPPET model (not mutated).
    batch: one slot's sub-batch (ARCHITECTURE.md section 2; no leading axes).
    rng: the slot's key (typed or raw uint32[2]); dropout masks and R3F noise derive from it.
    task_table: the run's tasks (static).
    settings: the objective's static settings.
    deterministic: True turns dropout off (R3F still applies when enabled).

  Returns:
    (loss [] float32, SlotMetrics). The loss is the masked mean over the slot's real examples
    of `loss_e / log(n_e) + lambda * symKL_e` (`symKL_e / log(n_e)` with
    `r3f_scale_by_log_n`); 0 for a slot without real examples.
  """
  result = _dispatch(model, batch, rng, task_table=task_table, settings=settings,
                     deterministic=deterministic, r3f=settings.r3f, predict=False)
  mask = batch['example_mask'].astype(bool)
  scaled = losses.log_n_scale(result.loss, batch['loss_n'], settings.loss_scaling)
  per_example = scaled
  if settings.r3f:
    kl = losses.log_n_scale(result.sym_kl, batch['loss_n'],
                            settings.loss_scaling and settings.r3f_scale_by_log_n)
    per_example = scaled + settings.r3f_lambda * kl
  loss = losses.masked_mean(per_example, mask)
  metrics = SlotMetrics(
      loss=loss,
      task_loss=losses.masked_mean(scaled, mask),
      unscaled_loss=losses.masked_mean(result.loss, mask),
      sym_kl=losses.masked_mean(result.sym_kl, mask),
      num_examples=jnp.sum(mask).astype(loss.dtype),
      correct=jnp.sum(jnp.where(mask, result.correct, 0.)).astype(loss.dtype))
  return loss, metrics


def slot_predictions(model: MuppetModel, batch: Batch, *, task_table: TaskTable,
                     settings: ObjectiveSettings) -> SlotPredictions:
  """Per-example predictions and unscaled losses of one slot, dropout off, no R3F."""
  result = _dispatch(model, batch, jax.random.key(0), task_table=task_table, settings=settings,
                     deterministic=True, r3f=False, predict=True)
  return SlotPredictions(label=result.label, span_start=result.span_start,
                         span_end=result.span_end, span_score=result.span_score,
                         loss=result.loss)
