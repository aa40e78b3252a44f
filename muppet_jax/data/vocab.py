"""A Hugging Face tokenizer as a `seqio.Vocabulary`, plus the fast batched API batching uses.

seqio assumes pad = 0 and no BOS; RoBERTa/BART tokenizers use `<s>`=0, `<pad>`=1, `</s>`=2.
This class reports the tokenizer's real ids (`pad_id` is 1 for RoBERTa): muppet_jax never
uses seqio's feature converters (which pad with 0), only its task registry and sources, and
batching.py pads with `pad_id` itself.

`encode` / `encode_batch` never add special tokens; the sub-batch builder lays out `<s>`,
`</s>` itself (docs/ARCHITECTURE.md section 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
import seqio
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class EncodedText:
  """One text's tokens without special tokens.

  Attributes:
    ids: token ids, [n].
    offsets: (start, end) character span of each token in the text, [n] pairs; whitespace
      that byte-level BPE glues to a token (RoBERTa's 'Ġ') may or may not be included.
  """

  ids: list[int]
  offsets: list[tuple[int, int]]


class HFVocabulary(seqio.Vocabulary):
  """A `transformers.AutoTokenizer` behind the `seqio.Vocabulary` interface.

  The tokenizer is loaded lazily and not pickled (only the path is), so the vocabulary can be
  deep-copied and shipped to tf.data / worker processes cheaply.
  """

  def __init__(self, path_or_hub_id: str, **tokenizer_kwargs):
    """Args:
      path_or_hub_id: a local tokenizer directory (tokenizer.json / vocab.json + merges.txt +
        tokenizer_config.json) or, when online, a hub id.
      **tokenizer_kwargs: passed to `AutoTokenizer.from_pretrained`.
    """
    self._path = str(path_or_hub_id)
    self._kwargs = dict(tokenizer_kwargs)
    self._hf = None
    self._rust = None
    super().__init__(extra_ids=0)

  # --- Loading ---------------------------------------------------------------------------------

  @property
  def path(self) -> str:
    return self._path

  @property
  def tokenizer(self):
    """The `transformers` tokenizer (loaded on first use)."""
    if self._hf is None:
      import transformers  # pylint: disable=g-import-not-at-top  (slow import, only when used)
      self._hf = transformers.AutoTokenizer.from_pretrained(self._path, **self._kwargs)
    return self._hf

  @property
  def _backend(self):
    """A private copy of the Rust tokenizer with truncation and padding off, or None.

    A copy, because a tokenizer.json may carry truncation/padding settings and transformers
    changes them per call on its own instance.
    """
    if self._rust is None:
      backend = getattr(self.tokenizer, 'backend_tokenizer', None)
      if backend is None:
        self._rust = False  # A Python-only tokenizer: use the transformers call path.
      else:
        from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
        self._rust = Tokenizer.from_str(backend.to_str())
        self._rust.no_truncation()
        self._rust.no_padding()
    return None if self._rust is False else self._rust

  def __getstate__(self):
    state = dict(self.__dict__)
    state['_hf'] = None
    state['_rust'] = None
    return state

  # --- Special ids -------------------------------------------------------------------------------

  def _special(self, name: str) -> int | None:
    value = getattr(self.tokenizer, name, None)
    return None if value is None else int(value)

  @property
  def bos_id(self) -> int | None:
    return self._special('bos_token_id')

  @property
  def eos_id(self) -> int | None:
    return self._special('eos_token_id')

  @property
  def pad_id(self) -> int:
    pad = self._special('pad_token_id')
    return 0 if pad is None else pad

  @property
  def unk_id(self) -> int | None:
    return self._special('unk_token_id')

  @property
  def sep_id(self) -> int | None:
    """Separator between pair segments (`</s>` for RoBERTa/BART)."""
    sep = self._special('sep_token_id')
    return self.eos_id if sep is None else sep

  @property
  def cls_id(self) -> int | None:
    """First token of a sequence (`<s>` for RoBERTa/BART)."""
    cls = self._special('cls_token_id')
    return self.bos_id if cls is None else cls

  @property
  def mask_id(self) -> int | None:
    return self._special('mask_token_id')

  @property
  def _base_vocab_size(self) -> int:
    # len() counts added tokens (e.g. the demo BPE's <mask>), unlike tokenizer.vocab_size.
    return len(self.tokenizer)

  # --- Python encode / decode ------------------------------------------------------------------

  def _encode(self, s: str) -> list[int]:
    return self.encode_batch([s])[0]

  def _decode(self, ids: Iterable[int]) -> str:
    ids = [int(i) for i in ids]
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens (the fast path: Rust, batched)."""
    if not texts:
      return []
    backend = self._backend
    if backend is not None:
      return [e.ids for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    return self.tokenizer(list(texts), add_special_tokens=False)['input_ids']

  def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[EncodedText]:
    """Token ids and character offsets of each text, without special tokens."""
    if not texts:
      return []
    backend = self._backend
    if backend is not None:
      return [EncodedText(e.ids, e.offsets)
              for e in backend.encode_batch(list(texts), add_special_tokens=False)]
    out = self.tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    return [EncodedText(list(i), [tuple(o) for o in off])
            for i, off in zip(out['input_ids'], out['offset_mapping'])]

  def decode_batch(self, ids: Sequence[Sequence[int]]) -> list[str]:
    """Texts of several id sequences, skipping special tokens (no EOS truncation)."""
    return self.tokenizer.batch_decode([[int(i) for i in row] for row in ids],
                                       skip_special_tokens=True)

  # --- TensorFlow encode / decode (tf.py_function: eager or in tf.data, not in saved graphs) -----

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
    """Scalar string -> [n] int32; [B] strings -> ragged [B, None] int32."""
    s = tf.convert_to_tensor(s, tf.string)
    flat = tf.reshape(s, [-1])

    def encode(strings):
      ids = self.encode_batch([x.decode('utf-8') for x in strings.numpy()])
      lengths = np.array([len(i) for i in ids], np.int64)
      values = np.array([t for i in ids for t in i], np.int32)
      return values, lengths

    values, lengths = tf.py_function(encode, [flat], [tf.int32, tf.int64])
    values.set_shape([None])
    lengths.set_shape([None])
    if s.shape.rank == 0:
      return values
    if s.shape.rank != 1:
      raise ValueError(f'encode_tf takes a scalar or a vector of strings, got shape {s.shape}')
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """[n] ids -> scalar string; [B, n] ids -> [B] strings (special tokens and padding skipped)."""
    ids = tf.convert_to_tensor(ids)
    rank = ids.shape.rank
    if rank not in (1, 2):
      raise ValueError(f'decode_tf takes [n] or [B, n] ids, got shape {ids.shape}')
    batched = ids if rank == 2 else ids[tf.newaxis]

    def decode(x):
      return np.array([t.encode('utf-8') for t in self.decode_batch(x.numpy().tolist())],
                      dtype=object)

    out = tf.py_function(decode, [batched], tf.string)
    out.set_shape([None])
    return out if rank == 2 else out[0]

  # --- Identity ----------------------------------------------------------------------------------

  def __eq__(self, other) -> bool:
    if not isinstance(other, HFVocabulary):
      return False
    return self._path == other._path and self._kwargs == other._kwargs

  def __hash__(self) -> int:
    return hash(('HFVocabulary', self._path))

  def __str__(self) -> str:
    return f'HFVocabulary({self._path!r})'

  __repr__ = __str__
