"""BART generation (`muppet_jax.eval.generate`) against `transformers` `generate` and a naive greedy
loop, alone and sharded over 8 devices (one sub-batch per device, as the evaluator runs it).

The reference model is a tiny random `BartForConditionalGeneration` (nothing is downloaded),
with weights chosen so that decoding is not degenerate: unit-norm token embeddings scaled to 4,
strong decoder positions, and an eos bias near the point where hypotheses start to end, so that
beams finish at different lengths, min_length and the n-gram ban change the results, and some
rows run to max_length (forced eos). Every comparison is token-exact.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from muppet_jax import sharding
from muppet_jax.data import batching
from muppet_jax.eval import evaluator
from muppet_jax.eval import generate as gen
from muppet_jax.eval import metrics
from muppet_jax.models import hf

PAD, BOS, EOS = 1, 0, 2
MAX_LENGTH = 12
# Three encoder inputs of different lengths, right-padded.
IDS = np.array([
    [0, 5, 6, 7, 8, 9, 10, 11, 12, 2],
    [0, 7, 13, 2, 1, 1, 1, 1, 1, 1],
    [0, 11, 12, 13, 14, 15, 2, 1, 1, 1],
])
MASK = (IDS != PAD).astype(np.int64)

SETTINGS = {
    'greedy': dict(num_beams=1),
    'greedy_processors': dict(num_beams=1, no_repeat_ngram_size=2, min_length=4,
                              forced_bos_token_id=BOS),
    'beam4_lp2_ngram3_min5_early': dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3,
                                        min_length=5, early_stopping=True),
    'beam4_heuristic_stop': dict(num_beams=4, length_penalty=1.0, early_stopping=False),
    'beam3_never_forced_bos': dict(num_beams=3, length_penalty=0.5, early_stopping='never',
                                   no_repeat_ngram_size=2, forced_bos_token_id=BOS),
}


def _torch_bart() -> transformers.BartForConditionalGeneration:
  torch.manual_seed(0)
  config = transformers.BartConfig(
      vocab_size=100, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
      decoder_attention_heads=4, encoder_ffn_dim=37, decoder_ffn_dim=37,
      max_position_embeddings=40, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
      decoder_start_token_id=EOS, forced_eos_token_id=EOS)
  model = transformers.BartForConditionalGeneration(config)
  with torch.no_grad():
    for name, param in model.named_parameters():
      if 'norm' in name.lower() and name.endswith('weight'):
        param.copy_(1 + 0.2 * torch.randn_like(param))
      else:
        param.copy_(0.3 * torch.randn_like(param))
    table = torch.randn_like(model.model.shared.weight)
    model.model.shared.weight.copy_(4 * table / table.norm(dim=1, keepdim=True))
    model.final_logits_bias.normal_(std=0.1)
    model.final_logits_bias[0, EOS] += 8.2
    model.model.decoder.embed_positions.weight.mul_(5)
  return model.eval()


@pytest.fixture(scope='module')
def bart_pair(tmp_path_factory):
  torch_model = _torch_bart()
  path = str(tmp_path_factory.mktemp('bart_generate'))
  torch_model.save_pretrained(path)
  model, hf_config = hf.load(path)
  return dict(torch=torch_model, model=model, config=hf_config, path=path)


def _hf_generate(torch_model, ids, mask, **kw) -> np.ndarray:
  """HF `generate`, padded with pad to max_length (HF crops to the longest row)."""
  with torch.no_grad():
    out = torch_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                               max_length=MAX_LENGTH, **kw).numpy()
  full = np.full((ids.shape[0], MAX_LENGTH), PAD, np.int64)
  full[:, :out.shape[1]] = out
  return full


@pytest.fixture(scope='module')
def references(bart_pair):
  return {name: _hf_generate(bart_pair['torch'], IDS, MASK, **kw)
          for name, kw in SETTINGS.items()}


def _eos_position(row) -> int:
  """Index of the first eos after the decoder-start token, -1 if none."""
  hits = np.flatnonzero(np.asarray(row)[1:] == EOS)
  return int(hits[0]) + 1 if hits.size else -1


@nnx.jit
def _full_logits(model, ids, mask, decoder_ids):
  """The whole model on the whole decoder sequence: `[B, T, V]` logits (no cache)."""
  return model.lm_logits(model(ids, mask, decoder_input_ids=decoder_ids))


def _naive_greedy(model, ids, mask, *, max_length, start, eos, pad) -> np.ndarray:
  """Argmax step by step, recomputing the whole decoder each step (no cache, no processors).

  The decoder input is kept `max_length` wide (one compile): the causal decoder's logits at
  position t - 1 do not depend on the (pad) tokens after it.
  """
  seq = np.full((ids.shape[0], max_length), pad, np.int32)
  seq[:, 0] = start
  done = np.zeros(ids.shape[0], bool)
  for t in range(1, max_length):
    if done.all():
      break
    logits = _full_logits(model, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(seq))
    token = np.asarray(jnp.argmax(logits[:, t - 1], axis=-1)).astype(np.int32)
    token = np.where(done, pad, token)
    done |= token == eos
    seq[:, t] = token
  return seq


def test_greedy_and_one_beam_equal_naive_greedy(bart_pair):
  # Our model only, so the eos bias is raised further: some rows end after 1 or 3 tokens, the
  # others run to max_length (no forced eos here), in one batch of six padded inputs.
  model, _ = hf.load(bart_pair['path'])
  bias = np.asarray(model.final_logits_bias[...]).copy()
  bias[EOS] += 1.4
  model.final_logits_bias[...] = jnp.asarray(bias)
  rng = np.random.default_rng(0)
  ids = np.full((6, 12), PAD, np.int32)
  for row, length in enumerate([12, 4, 7, 9, 3, 10]):
    ids[row, :length] = [BOS, *rng.integers(3, 100, size=length - 2), EOS]
  mask = ids != PAD
  config = gen.GenerationConfig(num_beams=1, max_length=MAX_LENGTH, early_stopping=True,
                                decoder_start_token_id=EOS, bos_token_id=BOS,
                                eos_token_id=EOS, pad_token_id=PAD)
  expected = _naive_greedy(model, ids, mask, max_length=MAX_LENGTH, start=EOS, eos=EOS, pad=PAD)
  assert len({_eos_position(row) for row in expected}) > 2, expected  # Different stops.
  greedy = np.asarray(gen.generate(model, ids, mask, config))
  one_beam = np.asarray(gen.generate(model, ids, mask, config, beam_search=True))
  assert greedy.dtype == np.int32 and greedy.shape == (6, MAX_LENGTH)
  np.testing.assert_array_equal(greedy, expected)
  np.testing.assert_array_equal(one_beam, expected)


@pytest.mark.parametrize('name', list(SETTINGS))
def test_matches_transformers_generate(bart_pair, references, name):
  config = gen.GenerationConfig.from_hf(bart_pair['config'], max_length=MAX_LENGTH,
                                        **SETTINGS[name])
  assert config.forced_eos_token_id == EOS  # BartConfig's default, used by HF as well.
  ours = np.asarray(gen.generate(bart_pair['model'], IDS, MASK, config))
  np.testing.assert_array_equal(ours, references[name])


def test_references_are_not_degenerate(references):
  """The fixture exercises what it should: rows end at different lengths, beams differ."""
  beam = references['beam4_lp2_ngram3_min5_early']
  ends = [_eos_position(row) for row in beam]
  assert len(set(ends)) > 1 and min(ends) < MAX_LENGTH - 1, beam  # Some end early.
  assert min(ends) >= 5, beam  # min_length 5: eos no earlier than index 5.
  assert not np.array_equal(beam, references['greedy'])
  assert not np.array_equal(references['greedy_processors'], references['greedy'])


def test_empty_row_is_skipped(bart_pair, references):
  ids, mask = IDS.copy(), MASK.copy()
  ids[2], mask[2] = PAD, 0
  name = 'beam4_lp2_ngram3_min5_early'
  config = gen.GenerationConfig.from_hf(bart_pair['config'], max_length=MAX_LENGTH,
                                        **SETTINGS[name])
  ours = np.asarray(gen.generate(bart_pair['model'], ids, mask, config))
  np.testing.assert_array_equal(ours[:2], references[name][:2])
  np.testing.assert_array_equal(ours[2], [EOS] + [PAD] * (MAX_LENGTH - 1))


def test_banned_ngrams_match_transformers():
  rng = np.random.default_rng(0)
  sequences = rng.integers(3, 9, size=(6, 10))  # A small alphabet: many repeated n-grams.
  for n in (1, 2, 3):
    processor = transformers.NoRepeatNGramLogitsProcessor(n)
    for cur_len in (1, 2, 3, 6, 10):
      scores = processor(torch.tensor(sequences[:, :cur_len]), torch.zeros(6, 12))
      ours = gen.banned_ngram_tokens(jnp.asarray(sequences), jnp.asarray(cur_len), n, 12)
      np.testing.assert_array_equal(np.asarray(ours), np.isinf(scores.numpy()),
                                    err_msg=f'n={n} cur_len={cur_len}')


def test_generation_config_sources(bart_pair, tmp_path):
  config = gen.GenerationConfig.from_hf(bart_pair['config'])
  assert (config.num_beams, config.max_length, config.min_length) == (1, 21, 0)
  assert (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id) == (2, 2, 1)
  assert config.forced_bos_token_id is None and config.forced_eos_token_id == 2
  # A checkpoint directory: generation_config.json wins over config.json (bart-large-cnn style).
  with open(os.path.join(bart_pair['path'], 'config.json')) as f:
    model_config = json.load(f)
  (tmp_path / 'config.json').write_text(json.dumps(model_config))
  (tmp_path / 'generation_config.json').write_text(json.dumps(dict(
      num_beams=4, max_length=142, min_length=56, length_penalty=2.0, no_repeat_ngram_size=3,
      early_stopping=True, forced_bos_token_id=0, forced_eos_token_id=2)))
  cnn = gen.GenerationConfig.from_hf(str(tmp_path))
  assert cnn == gen.GenerationConfig(
      num_beams=4, max_length=142, min_length=56, length_penalty=2.0, no_repeat_ngram_size=3,
      early_stopping=True, decoder_start_token_id=2, bos_token_id=0, eos_token_id=2,
      pad_token_id=1, forced_bos_token_id=0, forced_eos_token_id=2)
  section = ml_collections.ConfigDict(dict(num_beams=2, max_length=30, min_length=None,
                                           length_penalty=1.5, no_repeat_ngram_size=0))
  ours = gen.GenerationConfig.from_config(section, bart_pair['config'])
  assert (ours.num_beams, ours.max_length, ours.min_length, ours.length_penalty) == (2, 30, 0, 1.5)
  with pytest.raises(ValueError):
    gen.GenerationConfig.from_hf(bart_pair['config'], beam_size=4)


@pytest.mark.parametrize('name', ['greedy_processors', 'beam4_lp2_ngram3_min5_early'])
def test_sharded_generation_matches_transformers(bart_pair, references, name):
  """The evaluator's program: 8 sub-batches on 8 devices, each decoded by its device with its
  own stopping test; every row equals HF `generate`, rows that are no example stay empty."""
  layout = sharding.make_mesh(ml_collections.ConfigDict({'data': -1, 'model': 1}))
  devices = layout.data_size
  assert devices == 8
  config = gen.GenerationConfig.from_hf(bart_pair['config'], max_length=MAX_LENGTH,
                                        **SETTINGS[name])
  graphdef, params, rest = nnx.split(bart_pair['model'], nnx.Param, ...)
  step = jax.jit(gen.make_generate_step(graphdef, config, layout.mesh),
                 in_shardings=(None, None, layout.batch_sharding))
  # Device d: the three inputs rotated by d; on odd devices row 1 is no example (its mask
  # off), and device 7 holds no example at all (a padding sub-batch).
  order = [np.roll(np.arange(3), d) for d in range(devices)]
  examples = np.ones((devices, 4), bool)
  examples[:, 3] = False  # E = 4 > R = 3.
  examples[1::2, 1] = False
  examples[7] = False
  ids = np.stack([IDS[o] for o in order]).astype(np.int32)
  local = {'input_ids': ids, 'segment_ids': np.stack([MASK[o] for o in order]).astype(np.int32),
           'example_mask': examples}
  local = {k: v[list(layout.local_data_indices)][None] for k, v in local.items()}
  out = np.asarray(step(params, rest, sharding.global_batch(layout, local)))
  assert out.shape == (1, devices, 3, MAX_LENGTH) and out.dtype == np.int32
  empty = [EOS] + [PAD] * (MAX_LENGTH - 1)
  for d in range(devices):
    for row in range(3):
      expected = references[name][order[d][row]] if examples[d, row] else empty
      np.testing.assert_array_equal(out[0, d, row], expected, err_msg=f'device {d} row {row}')


class _FakeVocab:
  """`decode_batch` like `HFVocabulary`: special tokens skipped."""

  def decode_batch(self, ids):
    return [' '.join(f'w{int(i)}' for i in row if int(i) not in (BOS, PAD, EOS)) for row in ids]


def test_summaries_are_scored_against_the_raw_references(references):
  name = 'beam4_lp2_ngram3_min5_early'
  expected = references[name]
  generated = _FakeVocab().decode_batch(expected[:2])
  # min_length=5 (decoder start included): at least 4 tokens, long enough to cut.
  assert all(len(g.split()) >= 4 for g in generated)
  # What a decoder_length of 3 keeps of each reference: 2 tokens and </s>.
  targets = np.full((3, 6), PAD, np.int32)
  targets[:2, :2] = expected[:2, 1:3]
  targets[:2, 2] = EOS
  raw = [_FakeVocab().decode_batch([row[row != PAD]])[0] for row in expected[:2]]
  # Row 0's raw reference is the generated summary itself (ROUGE 1 for every type); row 1's
  # drops its last word: n - 1 of the n generated unigrams match, so rouge1 = LCS-based rougeL
  # = rougeLsum = 2 (n-1)/n * 1 / ((n-1)/n + 1) = 2 (n - 1) / (2n - 1); rouge2 likewise with
  # n - 1 bigrams of which n - 2 match.
  raw[1] = ' '.join(raw[1].split()[:-1])
  meta = (batching.ExampleMeta(index=0, reference=raw[0]),
          batching.ExampleMeta(index=1, reference=raw[1]), None, None)
  arrays = dict(input_ids=IDS.astype(np.int32), segment_ids=MASK.astype(np.int32),
                decoder_target_ids=targets, decoder_mask=targets != PAD,
                example_mask=np.array([True, True, False, False]))
  sub = batching.SubBatch(arrays, num_examples=2, num_tokens=int(MASK.sum()), meta=meta)
  result = evaluator.score_summaries([sub], [expected.astype(np.int32)], _FakeVocab())
  # Row 2 is not an example and is not scored.
  assert [p['prediction'] for p in result.predictions] == generated
  assert [p['gold'] for p in result.predictions] == raw
  scores = result.metrics
  assert set(scores) == {'rouge1', 'rouge2', 'rougeL', 'rougeLsum', 'examples'}
  assert scores['examples'] == 2.0
  n = len(generated[1].split())
  unigram = 2 * (n - 1) / (2 * n - 1)
  bigram = 2 * (n - 2) / (2 * n - 3)
  for key, row1 in (('rouge1', unigram), ('rouge2', bigram), ('rougeL', unigram),
                    ('rougeLsum', unigram)):
    np.testing.assert_allclose(scores[key], (1.0 + row1) / 2, rtol=1e-9, err_msg=key)
  # The truncated targets decoded back would score far lower.
  truncated = metrics.rouge(generated, _FakeVocab().decode_batch(targets[:2]))
  assert truncated['rouge1'] < scores['rouge1'] - 0.2
  with pytest.raises(ValueError, match='evaluation=True'):
    evaluator.score_summaries([batching.SubBatch(arrays, 2, int(MASK.sum()))],
                              [expected.astype(np.int32)], _FakeVocab())


@pytest.mark.parametrize('name', ['greedy_processors', 'beam4_lp2_ngram3_min5_early'])
def test_scan_layers_generate_like_unrolled(bart_pair, references, name):
  """Stacked (scanned) layers decode with the per-layer cache as unrolled layers do."""
  model, _ = hf.load(bart_pair['path'], scan_layers=True)
  assert model.decoder.scan_layers
  config = gen.GenerationConfig.from_hf(bart_pair['config'], max_length=MAX_LENGTH,
                                        **SETTINGS[name])
  np.testing.assert_array_equal(np.asarray(gen.generate(model, IDS, MASK, config)),
                                references[name])
