"""Mappers of the summarization datasets: `[{'document': str, 'summary': str}]` (formats.py)."""

from __future__ import annotations

from muppet_jax.data.mappers.fields import Example, Mapper, _text
from muppet_jax.data.mappers.formats import _summarization


def _summ(slug: str, doc_key: str, summary_key: str) -> Mapper:
  """Mapper for a (document field, summary field) summarization dataset."""

  def mapper(raw: dict) -> list[Example]:
    return _summarization(_text(raw, doc_key), _text(raw, summary_key))

  mapper.__name__ = f'map_{slug}'
  mapper.__doc__ = f'{slug}: document = {doc_key}, summary = {summary_key}.'
  return mapper


# Highlights stay newline-separated, as TFDS gives them.
map_cnn_dailymail = _summ('cnn_dailymail', 'article', 'highlights')
map_billsum = _summ('billsum', 'text', 'summary')
map_xsum = _summ('xsum', 'document', 'summary')
map_aeslc = _summ('aeslc', 'email_body', 'subject_line')
# Source articles stay joined by '|||||', as TFDS gives them.
map_multi_news = _summ('multi_news', 'document', 'summary')

