"""A Hugging Face tokenizer with the fast batched API that batching, evaluation and export use.

RoBERTa/BART tokenizers use `<s>`=0, `<pad>`=1, `</s>`=2: `HFVocabulary` reports the tokenizer's
real ids (`pad_id` is 1 for RoBERTa), and batching pads with `pad_id` itself.

`encode` / `encode_batch` never add special tokens; the sub-batch builder lays out `<s>`,
`</s>` itself (docs/ARCHITECTURE.md section 2). The class imports neither seqio nor TensorFlow,
so that input worker processes stay light; `tasks.SeqioVocabulary` wraps it as a
`seqio.Vocabulary` (with TensorFlow encode / decode) for seqio's tf.data view.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence


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


class HFVocabulary:
  """A `transformers.AutoTokenizer` with batched Rust encoding and its special ids.

  The tokenizer is loaded lazily and not pickled (only the path is), so the vocabulary can be
  deep-copied and shipped to worker processes cheaply.
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
    # A loaded Rust tokenizer travels as its JSON, so that a worker process encodes without
    # importing `transformers` (the special ids are read where the vocabulary was built).
    state['_rust'] = self._rust.to_str() if self._rust else self._rust
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    if isinstance(self._rust, str):
      from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
      self._rust = Tokenizer.from_str(self._rust)

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
  def vocab_size(self) -> int:
    """Tokens, added ones included (e.g. the demo BPE's <mask>, unlike tokenizer.vocab_size)."""
    return len(self.tokenizer)

  # --- Python encode / decode ------------------------------------------------------------------

  def encode(self, s: str) -> list[int]:
    """Token ids of one text, without special tokens."""
    return self.encode_batch([s])[0]

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids` up to the first `</s>`, special tokens and padding skipped (seqio's
    `Vocabulary.decode` semantics: ids beyond the vocabulary read as `<unk>`)."""
    ids = [int(i) for i in ids]
    if self.unk_id is not None:
      ids = [self.unk_id if i >= self.vocab_size else i for i in ids]
    if self.eos_id is not None and self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id) + 1]
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
