"""Jitted text generation for BART (greedy and beam search), and ROUGE scoring of summaries.

`generate(model, input_ids, attention_mask, config)` reproduces `transformers`
`BartForConditionalGeneration.generate(...)` (transformers 5.x) token for token in float32 for
the settings of `GenerationConfig`:
- greedy decoding for `num_beams == 1` (HF `_sample` without sampling), beam search otherwise
  (HF `_beam_search`: per step the top `2 * num_beams` continuations of all beams; the best
  `num_beams` that do not end go on; those among the top `num_beams` that end (eos, or
  `max_length` reached) compete for the `num_beams` finished slots with score
  `sum log p / generated_length ** length_penalty`, generated_length counting every token after
  the decoder-start token, eos included; HF's `early_stopping` True / False / 'never' stopping
  heuristics, and its -1e9 score arithmetic in float32, so that even its bookkeeping values agree);
- the logits processors HF builds from these settings, in HF's order: `no_repeat_ngram_size`
  (over the whole decoder sequence, decoder-start token included), `min_length` (eos masked while
  the sequence, decoder-start token included, is shorter than `min_length`),
  `forced_bos_token_id` (the token after decoder-start), `forced_eos_token_id` (the last token
  when `max_length` is reached; BART configs set it to eos).
Beam search processes log-softmax scores, greedy the raw logits, as HF does.

Lengths are HF's: `max_length` and `min_length` count decoder tokens including the decoder-start
token. The result is always `[B, max_length]` int32: decoder-start first, then the tokens, then
`pad_token_id` after eos (HF crops its result to the longest sequence of the batch; padding it to
`max_length` with pad gives ours).

Implementation: pure functions on the NNX `BartModel` under one `jax.jit` (the model's graphdef
and the `GenerationConfig` static), one compile per (batch, input length, config). The encoder
runs once; the decoder steps one token at a time with the model's KV cache
(`BartModel.init_cache` / `decode_step`) inside a `jax.lax.while_loop` with fixed shapes, stopping
as soon as HF would. Beams live in a `[B, num_beams, ...]` layout, flattened to `B * num_beams`
rows for the model; the self-attention cache is reordered by parent beam after every step.

One deliberate extension: a row whose `attention_mask` is all zero (an empty slot of a
sub-batch) is not decoded: it returns `[decoder_start, pad, pad, ...]` and does not keep the
loop running.

`make_generate_step(graphdef, config, mesh)` is the same decoding on a device mesh, for the
evaluator: `[1, D, R, L]` summarization sub-batches sharded over `mesh.data`, each device
decoding its own sub-batch with its own stopping test (no collective inside the loop), the
parameters replicated as in the eval step. It is token-for-token `generate` on each sub-batch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from muppet_jax.models import bart
from muppet_jax import sharding
from muppet_jax.sharding import DATA

Array = jax.Array

# HF beam search's "impossible" score offset (float32 arithmetic, exactly as in transformers).
_NEG = -1.0e9

# Defaults `transformers` applies to settings neither the model nor the caller gives
# (`GenerationConfig._get_default_generation_params`).
_HF_DEFAULTS = dict(num_beams=1, max_length=20, min_length=0, length_penalty=1.0,
                    no_repeat_ngram_size=0, early_stopping=False)


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------


def _single_id(value: Any, name: str) -> int | None:
  """An int token id from an int, a one-element list, or None."""
  if value is None:
    return None
  if isinstance(value, (list, tuple)):
    if len(value) != 1:
      raise NotImplementedError(f'{name} with several ids ({value}) is not supported.')
    value = value[0]
  return int(value)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
  """Settings of `generate`, named and counted as in `transformers.GenerationConfig`.

  Attributes:
    num_beams: beam size; 1 = greedy decoding.
    max_length: most decoder tokens, decoder-start token included; the output width.
    min_length: eos is masked while the sequence (decoder-start included) is shorter.
    length_penalty: finished beams are ranked by `sum log p / length ** length_penalty`.
    no_repeat_ngram_size: no n-gram of this size occurs twice in a sequence (0 = off).
    early_stopping: True: stop a row once it has `num_beams` finished hypotheses; False: HF's
      heuristic (stop when the best running beam, normalised at the current length, cannot beat
      the worst finished one); 'never': the same test at `max_length` when length_penalty > 0.
    decoder_start_token_id, bos_token_id, eos_token_id, pad_token_id: special ids.
    forced_bos_token_id: forced as the first generated token (BART-large-CNN: 0), or None.
    forced_eos_token_id: forced as the last token when `max_length` is reached (BART configs:
      eos), or None.
  """

  num_beams: int = 1
  max_length: int = 20
  min_length: int = 0
  length_penalty: float = 1.0
  no_repeat_ngram_size: int = 0
  early_stopping: bool | str = False
  decoder_start_token_id: int = 2
  bos_token_id: int | None = 0
  eos_token_id: int | None = 2
  pad_token_id: int = 1
  forced_bos_token_id: int | None = None
  forced_eos_token_id: int | None = None

  def __post_init__(self):
    # Plain Python types (values may come from JSON, numpy or a ConfigDict): the config is a
    # static jit argument, hashed and compared.
    for name in ('num_beams', 'max_length', 'min_length', 'no_repeat_ngram_size',
                 'decoder_start_token_id', 'pad_token_id'):
      object.__setattr__(self, name, int(getattr(self, name)))
    for name in ('bos_token_id', 'eos_token_id', 'forced_bos_token_id', 'forced_eos_token_id'):
      value = getattr(self, name)
      object.__setattr__(self, name, None if value is None else int(value))
    object.__setattr__(self, 'length_penalty', float(self.length_penalty))
    if not isinstance(self.early_stopping, str) and self.early_stopping in (True, False):
      object.__setattr__(self, 'early_stopping', bool(self.early_stopping))
    if self.num_beams < 1:
      raise ValueError(f'num_beams must be >= 1, got {self.num_beams}.')
    if self.max_length < 2:
      raise ValueError(f'max_length must be >= 2 (decoder start + one token), got '
                       f'{self.max_length}.')
    if self.early_stopping not in (True, False, 'never'):
      raise ValueError(f"early_stopping must be True, False or 'never', got "
                       f'{self.early_stopping!r}.')
    if self.no_repeat_ngram_size < 0 or self.min_length < 0:
      raise ValueError('no_repeat_ngram_size and min_length must be >= 0.')

  @classmethod
  def from_hf(cls, hf_config: Any, **overrides: Any) -> GenerationConfig:
    """The settings `transformers` `generate` would use for a model, then `overrides`.

    Args:
      hf_config: a `transformers` model config (e.g. the `BartConfig` from `hf.load`; gives the
        special ids and `forced_eos_token_id`), a `transformers.GenerationConfig`, a dict, or a
        checkpoint directory (its generation_config.json over its config.json, as HF does).
      **overrides: any `GenerationConfig` field, e.g. `num_beams=4, max_length=142`.

    Unset values take HF's global defaults (`max_length` 20 new tokens, i.e. 21 with the
    decoder-start token, capped at `max_position_embeddings`, as `generate` does).
    """
    values, max_positions = _hf_values(hf_config)
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'Unknown GenerationConfig fields: {sorted(unknown)}.')
    values.update(overrides)
    if values.get('max_length') is None:
      length = _HF_DEFAULTS['max_length'] + 1  # 20 new tokens after the decoder-start token.
      values['max_length'] = min(length, max_positions) if max_positions else length
    for key, default in _HF_DEFAULTS.items():
      if values.get(key) is None:
        values[key] = default
    for key in ('decoder_start_token_id', 'bos_token_id', 'eos_token_id', 'pad_token_id',
                'forced_bos_token_id', 'forced_eos_token_id'):
      values[key] = _single_id(values.get(key), key)
    if values['decoder_start_token_id'] is None:  # HF falls back to bos.
      values['decoder_start_token_id'] = values['bos_token_id']
    if values['pad_token_id'] is None:  # HF falls back to eos.
      values['pad_token_id'] = values['eos_token_id']
    for key in ('decoder_start_token_id', 'pad_token_id'):
      if values[key] is None:
        raise ValueError(f'{key} is not set (nor bos/eos to fall back on).')
    return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls)})

  @classmethod
  def from_config(cls, section: Any, hf_config: Any, **overrides: Any) -> GenerationConfig:
    """From a config section (e.g. `config.eval`): the keys of it that name a field, if set.

    Reads `num_beams`, `max_length`, `min_length`, `length_penalty`, `no_repeat_ngram_size`,
    `early_stopping`, `forced_bos_token_id` where present (a missing key or None keeps the value
    `from_hf(hf_config)` gives); `overrides` win over both.
    """
    keys = ('num_beams', 'max_length', 'min_length', 'length_penalty', 'no_repeat_ngram_size',
            'early_stopping', 'forced_bos_token_id')
    getter = section.get if hasattr(section, 'get') else (
        lambda k, d=None: getattr(section, k, d))
    values = {k: getter(k, None) for k in keys}
    values = {k: v for k, v in values.items() if v is not None}
    values.update(overrides)
    return cls.from_hf(hf_config, **values)


def _hf_values(hf_config: Any) -> tuple[dict[str, Any], int | None]:
  """Generation-relevant values of a HF config / GenerationConfig / dict / directory."""
  fields = [f.name for f in dataclasses.fields(GenerationConfig)]
  if isinstance(hf_config, (str, os.PathLike)):
    merged: dict[str, Any] = {}
    for name in ('config.json', 'generation_config.json'):
      path = os.path.join(hf_config, name)
      if os.path.exists(path):
        with open(path) as f:
          merged.update({k: v for k, v in json.load(f).items() if v is not None})
    hf_config = merged
  if isinstance(hf_config, Mapping):
    values = {k: hf_config.get(k) for k in fields}
    max_positions = hf_config.get('max_position_embeddings')
  else:
    values = {k: getattr(hf_config, k, None) for k in fields}
    max_positions = getattr(hf_config, 'max_position_embeddings', None)
  return values, max_positions


# ---------------------------------------------------------------------------------------------
# Logits processors (HF order: no_repeat_ngram, min_length, forced_bos, forced_eos)
# ---------------------------------------------------------------------------------------------


def banned_ngram_tokens(sequences: Array, cur_len: Array, ngram_size: int,
                        vocab_size: int) -> Array:
  """HF `NoRepeatNGramLogitsProcessor`'s bans as a mask.

  Args:
    sequences: `[N, S]` token ids; positions `< cur_len` are the sequence so far.
    cur_len: `[]` int, current length.
    ngram_size: n.
    vocab_size: V.

  Returns:
    `[N, V]` bool: tokens that would complete an n-gram already in the sequence.
  """
  num, width = sequences.shape
  n = ngram_size
  if n > width:
    return jnp.zeros((num, vocab_size), bool)
  starts = width - n + 1
  windows = jnp.stack([sequences[:, j:j + starts] for j in range(n)], axis=-1)  # [N, M, n]
  prefix_start = jnp.maximum(cur_len - (n - 1), 0)
  prefix = jax.lax.dynamic_slice_in_dim(sequences, prefix_start, n - 1, axis=1)  # [N, n-1]
  match = jnp.all(windows[:, :, :n - 1] == prefix[:, None, :], axis=-1)
  match &= (jnp.arange(starts) <= cur_len - n)[None, :]  # Complete n-grams before cur_len.
  tokens = jnp.where(match, windows[:, :, n - 1], vocab_size)  # Out of range = no ban.
  rows = jnp.arange(num)[:, None]
  return jnp.zeros((num, vocab_size), bool).at[rows, tokens].set(True, mode='drop')


def process_scores(scores: Array, sequences: Array, cur_len: Array,
                   config: GenerationConfig) -> Array:
  """Applies the configured HF logits processors to `[N, V]` next-token scores.

  `sequences` `[N, S]` holds the `cur_len` tokens so far (decoder-start included).
  """
  vocab = jnp.arange(scores.shape[-1])
  neg_inf = jnp.array(-jnp.inf, scores.dtype)
  if config.no_repeat_ngram_size > 0:
    banned = banned_ngram_tokens(sequences, cur_len, config.no_repeat_ngram_size,
                                 scores.shape[-1])
    scores = jnp.where(banned, neg_inf, scores)
  if config.min_length > 0 and config.eos_token_id is not None:
    scores = jnp.where((vocab == config.eos_token_id)[None] & (cur_len < config.min_length),
                       neg_inf, scores)
  if config.forced_bos_token_id is not None:
    forced = jnp.where(vocab == config.forced_bos_token_id, 0.0, neg_inf).astype(scores.dtype)
    scores = jnp.where(cur_len == 1, forced[None], scores)
  if config.forced_eos_token_id is not None:
    forced = jnp.where(vocab == config.forced_eos_token_id, 0.0, neg_inf).astype(scores.dtype)
    scores = jnp.where(cur_len == config.max_length - 1, forced[None], scores)
  return scores


# ---------------------------------------------------------------------------------------------
# Decoding loops
# ---------------------------------------------------------------------------------------------


def _next_logits(model: bart.BartModel, sequences: Array, cur_len: Array,
                 cache: bart.DecodeCache) -> tuple[Array, bart.DecodeCache]:
  """Feeds token `cur_len - 1` of `[N, S]` sequences; float32 logits `[N, V]` and the cache."""
  tokens = jax.lax.dynamic_slice_in_dim(sequences, cur_len - 1, 1, axis=1)
  step = model.decode_step(tokens, cache, deterministic=True)
  return model.lm_logits(step.hidden)[:, 0].astype(jnp.float32), step.cache


def _greedy(model: bart.BartModel, encoder_hidden: Array, attention_mask: Array,
            nonempty: Array, config: GenerationConfig) -> Array:
  batch = encoder_hidden.shape[0]
  length = config.max_length
  cache = model.init_cache(encoder_hidden, attention_mask, max_length=length)
  sequences = jnp.full((batch, length), config.pad_token_id, jnp.int32)
  sequences = sequences.at[:, 0].set(config.decoder_start_token_id)

  def cond(carry):
    cur_len, _, unfinished, _ = carry
    return (cur_len < length) & jnp.any(unfinished)

  def body(carry):
    cur_len, sequences, unfinished, cache = carry
    logits, cache = _next_logits(model, sequences, cur_len, cache)
    logits = process_scores(logits, sequences, cur_len, config)
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    tokens = jnp.where(unfinished, tokens, config.pad_token_id)
    sequences = jax.lax.dynamic_update_slice_in_dim(sequences, tokens[:, None], cur_len, axis=1)
    if config.eos_token_id is not None:
      unfinished = unfinished & (tokens != config.eos_token_id)
    return cur_len + 1, sequences, unfinished, cache

  carry = (jnp.array(1, jnp.int32), sequences, nonempty, cache)
  return jax.lax.while_loop(cond, body, carry)[1]


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _BeamState:
  cur_len: Array  # [] int32
  running: Array  # [B, K, S] running hypotheses
  running_scores: Array  # [B, K] their summed log-probabilities
  finished: Array  # [B, K, S] best finished hypotheses
  finished_scores: Array  # [B, K] their length-normalised scores
  is_finished: Array  # [B, K] bool: slot holds a finished hypothesis
  improvable: Array  # [B, 1] bool: HF's is_early_stop_heuristic_unsatisfied
  go_on: Array  # [] bool
  cache: bart.DecodeCache


def _gather_beams(x: Array, index: Array) -> Array:
  """`x[b, index[b, j], ...]`: `[B, K, ...]`, `[B, J]` -> `[B, J, ...]`."""
  return jax.vmap(lambda row, idx: row[idx])(x, index)


def _reorder_cache(cache: bart.DecodeCache, rows: Array) -> bart.DecodeCache:
  """Self-attention caches re-indexed by `rows` `[N]` (cross-attention is equal per beam)."""
  self_attn = [bart.KVCache(key=jnp.take(kv.key, rows, axis=0),
                            value=jnp.take(kv.value, rows, axis=0)) for kv in cache.self_attn]
  return dataclasses.replace(cache, self_attn=self_attn)


def _beam_search(model: bart.BartModel, encoder_hidden: Array, attention_mask: Array,
                 nonempty: Array, config: GenerationConfig) -> Array:
  """HF `GenerationMixin._beam_search` (transformers 5), one row per batch item out."""
  batch = encoder_hidden.shape[0]
  beams, length = config.num_beams, config.max_length
  keep = 2 * beams  # HF: max(2, 1 + number of eos ids) * num_beams, one eos id here.
  early_stopping = config.early_stopping
  stop_when_full = early_stopping is True
  # `length ** length_penalty` as HF computes it (Python double), then float32 as torch divides.
  penalties = np.ones(length + 1, np.float64)
  penalties[1:] = np.arange(1, length + 1, dtype=np.float64) ** float(config.length_penalty)
  penalties = jnp.asarray(penalties.astype(np.float32))
  top_mask = jnp.arange(keep) < beams

  flat_hidden = jnp.repeat(encoder_hidden, beams, axis=0)
  flat_mask = jnp.repeat(attention_mask, beams, axis=0)
  cache = model.init_cache(flat_hidden, flat_mask, max_length=length)
  running = jnp.full((batch, beams, length), config.pad_token_id, jnp.int32)
  running = running.at[:, :, 0].set(config.decoder_start_token_id)
  running_scores = jnp.zeros((batch, beams), jnp.float32).at[:, 1:].set(_NEG)
  state = _BeamState(
      cur_len=jnp.array(1, jnp.int32), running=running, running_scores=running_scores,
      finished=running, finished_scores=jnp.full((batch, beams), _NEG, jnp.float32),
      is_finished=jnp.broadcast_to(~nonempty[:, None], (batch, beams)),
      improvable=nonempty[:, None], go_on=jnp.array(True), cache=cache)

  def cond(s: _BeamState):
    return s.go_on & (s.cur_len < length)

  def body(s: _BeamState) -> _BeamState:
    cur_len = s.cur_len
    flat_running = s.running.reshape(batch * beams, length)
    logits, cache = _next_logits(model, flat_running, cur_len, s.cache)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_probs = process_scores(log_probs, flat_running, cur_len, config)
    vocab_size = log_probs.shape[-1]
    log_probs = log_probs.reshape(batch, beams, vocab_size) + s.running_scores[:, :, None]
    log_probs = log_probs.reshape(batch, beams * vocab_size)

    # c. Top 2K continuations over all beams.
    topk_scores, topk_index = jax.lax.top_k(log_probs, keep)
    topk_parent = topk_index // vocab_size
    topk_tokens = (topk_index % vocab_size).astype(jnp.int32)
    topk_sequences = _gather_beams(s.running, topk_parent)
    topk_sequences = jax.lax.dynamic_update_slice_in_dim(
        topk_sequences, topk_tokens[:, :, None], cur_len, axis=2)

    # d. Which of them end: eos, or max_length reached.
    hits = jnp.broadcast_to(cur_len + 1 >= length, topk_tokens.shape)
    if config.eos_token_id is not None:
      hits = hits | (topk_tokens == config.eos_token_id)

    # e. The best K that go on.
    topk_running_scores = topk_scores + hits.astype(jnp.float32) * _NEG
    _, next_index = jax.lax.top_k(topk_running_scores, beams)
    running = _gather_beams(topk_sequences, next_index)
    running_scores = _gather_beams(topk_running_scores, next_index)
    parents = _gather_beams(topk_parent, next_index)

    # f. Finished hypotheses among the top K compete for the K finished slots.
    just_finished = hits & top_mask[None, :]
    candidates = topk_scores / penalties[cur_len]  # generated length = cur_len + 1 - 1
    full = jnp.all(s.is_finished, axis=-1, keepdims=True) & stop_when_full
    candidates = candidates + full.astype(jnp.float32) * _NEG
    candidates = candidates + (~s.improvable).astype(jnp.float32) * _NEG
    candidates = candidates + (~just_finished).astype(jnp.float32) * _NEG
    merged_sequences = jnp.concatenate([s.finished, topk_sequences], axis=1)
    merged_scores = jnp.concatenate([s.finished_scores, candidates], axis=1)
    merged_finished = jnp.concatenate([s.is_finished, just_finished], axis=1)
    _, best = jax.lax.top_k(merged_scores, beams)
    finished = _gather_beams(merged_sequences, best)
    finished_scores = _gather_beams(merged_scores, best)
    is_finished = _gather_beams(merged_finished, best)

    # g. Reorder the cache; HF's stopping tests.
    rows = (parents + jnp.arange(batch)[:, None] * beams).reshape(-1)
    cache = _reorder_cache(cache, rows)
    cur_len = cur_len + 1
    if early_stopping == 'never' and config.length_penalty > 0.0:
      best_length = length - 1
    else:
      best_length = cur_len - 1
    best_running = running_scores[:, :1] / penalties[best_length]
    worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True),
                               _NEG)
    improvable = s.improvable & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
    go_on = (jnp.any(improvable) & ~(jnp.all(is_finished) & stop_when_full) & ~jnp.all(hits))
    return _BeamState(cur_len=cur_len, running=running, running_scores=running_scores,
                      finished=finished, finished_scores=finished_scores,
                      is_finished=is_finished, improvable=improvable, go_on=go_on, cache=cache)

  state = jax.lax.while_loop(cond, body, state)
  best = state.finished[:, 0]
  empty = jnp.full_like(best, config.pad_token_id).at[:, 0].set(config.decoder_start_token_id)
  return jnp.where(nonempty[:, None], best, empty)


def _decode(model: bart.BartModel, input_ids: Array, attention_mask: Array,
            config: GenerationConfig, beam_search: bool) -> Array:
  """Encoder once, then greedy or beam decoding: `[B, L]` -> `[B, max_length]` int32."""
  attention_mask = attention_mask.astype(bool)
  encoder_hidden = model.encode(input_ids, attention_mask, deterministic=True)
  nonempty = jnp.any(attention_mask, axis=-1)
  run = _beam_search if beam_search else _greedy
  return run(model, encoder_hidden, attention_mask, nonempty, config)


@functools.partial(jax.jit, static_argnames=('graphdef', 'config', 'beam_search'))
def _generate_jit(graphdef: nnx.GraphDef, state: nnx.State, input_ids: Array,
                  attention_mask: Array, config: GenerationConfig, beam_search: bool) -> Array:
  return _decode(nnx.merge(graphdef, state), input_ids, attention_mask, config, beam_search)


def _backbone(model: Any) -> bart.BartModel:
  backbone = getattr(model, 'backbone', model)  # A MuppetModel carries its BART as `backbone`.
  if not isinstance(backbone, bart.BartModel):
    raise TypeError(f'generate needs a BART model, got {type(backbone).__name__}.')
  return backbone


def _use_beam_search(config: GenerationConfig, beam_search: bool | None) -> bool:
  """HF's choice (beam search exactly when num_beams > 1) unless forced."""
  if beam_search is None:
    return config.num_beams > 1
  if not beam_search and config.num_beams != 1:
    raise ValueError('Greedy decoding needs num_beams == 1.')
  return bool(beam_search)


def generate(model: bart.BartModel, input_ids: Any, attention_mask: Any | None,
             config: GenerationConfig, *, beam_search: bool | None = None) -> Array:
  """Generates with BART as `transformers` `generate` does with the same settings.

  Args:
    model: a `BartModel` (or a `MuppetModel` with a BART backbone), in eval mode (no dropout).
    input_ids: `[B, L]` encoder tokens.
    attention_mask: `[B, L]`, nonzero = real token (None: all real). A row with no real token
      is not decoded (see the module docstring).
    config: the settings; static (one compile per distinct config and input shape).
    beam_search: force the beam-search code (True, also with one beam) or greedy (False, needs
      `num_beams == 1`); default: greedy exactly when `num_beams == 1`, as HF. Beam search with
      one beam and `early_stopping=True` equals greedy decoding.

  Returns:
    `[B, max_length]` int32: decoder-start token, generated tokens, pad after eos.
  """
  model = _backbone(model)
  beam_search = _use_beam_search(config, beam_search)
  input_ids = jnp.asarray(input_ids, jnp.int32)
  if attention_mask is None:
    attention_mask = jnp.ones(input_ids.shape, bool)
  graphdef, state = nnx.split(model)
  return _generate_jit(graphdef, state, input_ids, jnp.asarray(attention_mask), config,
                       bool(beam_search))


# ---------------------------------------------------------------------------------------------
# On a mesh: one sub-batch per device
# ---------------------------------------------------------------------------------------------


def make_generate_step(graphdef: nnx.GraphDef, config: GenerationConfig,
                       mesh: jax.sharding.Mesh, *, beam_search: bool | None = None
                       ) -> Callable[[nnx.State, nnx.State, dict[str, Array]], Array]:
  """Returns `(params, rest, batch) -> tokens`, generation over D sub-batches at once.

  Args:
    graphdef: of the model split as `nnx.split(model, nnx.Param, ...)`: a `MuppetModel` with a
      BART backbone, or a `BartModel`.
    config: the decoding settings (static).
    mesh: the run's mesh; sub-batch d goes to position d of its `data` axis.
    beam_search: as in `generate`.

  The returned function takes the replicated `params` and `rest`, and a batch of summarization
  sub-batches `[1, D, ...]` placed with `NamedSharding(mesh, P(None, 'data'))` (as the eval
  step's): `input_ids` and `segment_ids` `[1, D, R, L]` (attention mask = segment_ids > 0) and
  `example_mask` `[1, D, E >= R]` (a row that is no example is not decoded). It returns
  `[1, D, R, max_length]` int32, sharded the same way: `generate` of each sub-batch. Jit it
  where it is called (with the batch sharding as `in_shardings`).
  """
  beam = _use_beam_search(config, beam_search)

  def per_device(params, rest, input_ids, segment_ids, example_mask):
    model = _backbone(nnx.merge(graphdef, params, rest))
    ids = input_ids[0, 0]  # [R, L]: this device's sub-batch.
    rows = ids.shape[0]
    mask = (segment_ids[0, 0] > 0) & example_mask[0, 0, :rows, None]
    return _decode(model, ids, mask, config, beam)[None, None]

  # Each device runs its own decoding loop and stops when its own rows are done: there is no
  # collective inside, so the devices need not agree on the number of steps (check_vma off: the
  # loop state becomes device-varying after the first step).
  sharded = jax.shard_map(per_device, mesh=mesh,
                          in_specs=(P(), P(), P(None, DATA), P(None, DATA), P(None, DATA)),
                          out_specs=P(None, DATA), axis_names=sharding.manual_axes(mesh),
                          check_vma=False)

  def generate_step(params: nnx.State, rest: nnx.State, batch: dict[str, Array]) -> Array:
    return sharded(params, rest, batch['input_ids'], batch['segment_ids'],
                   batch['example_mask'])

  return generate_step
