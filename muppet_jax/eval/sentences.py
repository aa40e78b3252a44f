"""Sentence splitting for ROUGE-Lsum, offline: nltk's Punkt algorithm with shipped parameters.

ROUGE-Lsum (`rouge-score`) scores summary-level LCS over sentences separated by newlines, so
the number depends on where sentences are split. The summarization literature (Hugging Face's
`run_summarization`, the BART/PEGASUS evaluations built on it) splits with
`'\\n'.join(nltk.sent_tokenize(text))`: nltk's Punkt algorithm (Kiss & Strunk 2006) with its
pre-trained English parameters, which `nltk.download('punkt_tab')` fetches at run time. That
download is not possible on offline hosts (TPU VMs without egress, air-gapped clusters, this
project's CI), and a plain "split after . ! ?" regex breaks after "Dr.", "U.S." or "Sec.",
which moves the reported ROUGE-Lsum by whole points.

So this module runs the same algorithm, nltk's own `PunktSentenceTokenizer` (nltk is already a
dependency of `rouge-score`), with parameters shipped here instead of downloaded:
- `ABBREVIATIONS`: titles, months, corporate and address abbreviations, U.S. state
  abbreviations, Latin and academic forms. A period after one of them ends no sentence, unless
  the next word is known to start sentences (below). Single-letter initials ("J. K. Rowling")
  need no entry: Punkt treats a capitalised word after an initial as the same sentence unless
  it is a known sentence starter.
- `SENTENCE_STARTERS`: common function words ("The", "He", "But" ...), recorded as seen
  capitalised at sentence starts and lowercase inside sentences (Punkt's orthographic
  context), so that "... in the U.S. The president ..." and "World War I. The end." still
  split, as the trained English model does.
Numbers need nothing: "3.5" or "$2.5" has no space after its period, and Punkt only splits
at a period followed by whitespace. Quotes and brackets after the period stay with their
sentence ('He said "no." Then ...'), as Punkt realigns them.

Where this differs from the downloaded English model: its abbreviation list and orthographic
statistics are learned from a corpus, so a rare abbreviation missing here (and a rare word
seen there) can split differently. tests/test_evaluate.py pins the behaviours above.
"""

from __future__ import annotations

import functools

from nltk.tokenize import punkt

# Lower-case, without the final period (Punkt's `abbrev_types` convention); internal periods
# stay ("u.s", "e.g"). Words that are also common English words ("sun", "sat", "miss", "wash",
# "was") are left out: a period after them ends sentences far more often than it abbreviates.
ABBREVIATIONS: frozenset[str] = frozenset({
    # Titles and ranks.
    'mr', 'mrs', 'ms', 'messrs', 'mme', 'mlle', 'dr', 'prof', 'rev', 'hon', 'sr', 'jr', 'st',
    'gen', 'lt', 'col', 'maj', 'capt', 'cpt', 'cmdr', 'adm', 'sgt', 'cpl', 'pvt', 'gov', 'sen',
    'sens', 'rep', 'reps', 'pres', 'sec', 'supt', 'insp', 'det', 'atty', 'fr',
    # Organisations and addresses.
    'inc', 'co', 'corp', 'ltd', 'llc', 'plc', 'bros', 'assn', 'dept', 'univ', 'inst', 'ave',
    'blvd', 'rd', 'mt', 'ft', 'hwy',
    # Months and weekdays.
    'jan', 'feb', 'mar', 'apr', 'jun', 'jul', 'aug', 'sep', 'sept', 'oct', 'nov', 'dec', 'mon',
    'tue', 'tues', 'wed', 'thu', 'thur', 'thurs', 'fri',
    # Places (multi-letter forms; single letters are initials).
    'u.s', 'u.k', 'u.n', 'e.u', 'u.s.a', 'd.c', 'n.y', 'l.a', 'calif', 'fla', 'mass', 'ariz',
    'ark', 'colo', 'conn', 'del', 'ga', 'ill', 'ind', 'kan', 'kans', 'ky', 'la', 'md', 'mich',
    'minn', 'mo', 'mont', 'neb', 'nev', 'okla', 'ore', 'pa', 'penn', 'tenn', 'tex', 'va', 'vt',
    'wis', 'wyo',
    # Latin, academic, reference and time forms.
    'e.g', 'i.e', 'vs', 'cf', 'al', 'approx', 'ca', 'no', 'nos', 'vol', 'vols', 'pp', 'fig',
    'figs', 'ed', 'eds', 'est', 'a.m', 'p.m', 'ph.d', 'm.d', 'b.a', 'm.a', 'b.sc', 'm.sc',
    'op', 'pt', 'oz', 'lb', 'lbs',
})

# Words recorded as sentence starters (lower-case types): capitalised at sentence starts,
# lowercase inside sentences.
SENTENCE_STARTERS: frozenset[str] = frozenset({
    'the', 'a', 'an', 'he', 'she', 'it', 'they', 'we', 'you', 'his', 'her', 'its', 'their',
    'our', 'my', 'this', 'that', 'these', 'those', 'there', 'here', 'but', 'and', 'or', 'so',
    'yet', 'in', 'on', 'at', 'for', 'with', 'from', 'by', 'to', 'of', 'as', 'after', 'before',
    'when', 'while', 'if', 'then', 'however', 'meanwhile', 'although', 'though', 'because',
    'since', 'during', 'despite', 'now', 'what', 'who', 'how', 'why', 'where', 'some', 'many',
    'most', 'all', 'both', 'each', 'other', 'according', 'last', 'one', 'two', 'three', 'no',
    'not', 'only', 'also', 'even', 'still', 'instead', 'today', 'yesterday',
})


@functools.cache
def _tokenizer() -> punkt.PunktSentenceTokenizer:
  params = punkt.PunktParameters()
  params.abbrev_types = set(ABBREVIATIONS)
  params.sent_starters = set(SENTENCE_STARTERS)
  # pylint: disable=protected-access
  starter_context = punkt._ORTHO_BEG_UC | punkt._ORTHO_MID_LC
  # pylint: enable=protected-access
  for word in SENTENCE_STARTERS:
    params.ortho_context[word] = starter_context
  return punkt.PunktSentenceTokenizer(params)


def split(text: str) -> list[str]:
  """The sentences of `text`, as `nltk.sent_tokenize` cuts them (see the module docstring).

  Text between sentences (the whitespace) is dropped; newlines inside a sentence are kept, so
  '\\n'.join(split(text)) keeps every line break of a text that already has one sentence per
  line (CNN/DailyMail highlights).
  """
  return _tokenizer().tokenize(text)


def one_per_line(text: str) -> str:
  """`text` with one sentence per line: `'\\n'.join(nltk.sent_tokenize(text.strip()))`, the
  input ROUGE-Lsum expects."""
  return '\n'.join(split(text.strip()))
