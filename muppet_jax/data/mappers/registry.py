"""The registry: dataset slug -> its mapper, for training and for evaluation splits."""

from __future__ import annotations

from muppet_jax.data.mappers import classification
from muppet_jax.data.mappers import evaluation as evaluation_lib
from muppet_jax.data.mappers import multiple_choice
from muppet_jax.data.mappers import span
from muppet_jax.data.mappers import summarization
from muppet_jax.data.mappers.fields import Mapper

MAPPERS: dict[str, Mapper] = {
    # Classification.
    'cola': classification.map_cola, 'sst2': classification.map_sst2,
    'mrpc': classification.map_mrpc, 'qqp': classification.map_qqp,
    'mnli': classification.map_mnli, 'qnli': classification.map_qnli,
    'rte': classification.map_rte, 'wnli': classification.map_wnli,
    'boolq': classification.map_boolq, 'multirc': classification.map_multirc,
    'wic': classification.map_wic, 'wsc': classification.map_wsc, 'cb': classification.map_cb,
    'copa': classification.map_copa, 'ag_news': classification.map_ag_news,
    'imdb': classification.map_imdb, 'multi_nli': classification.map_multi_nli,
    'snli': classification.map_snli, 'hans': classification.map_hans,
    'rotten_tomatoes': classification.map_rotten_tomatoes,
    'yelp_polarity': classification.map_yelp_polarity,
    'eraser_multi_rc': classification.map_eraser_multi_rc,
    'wiki_qa': classification.map_wiki_qa, 'trec': classification.map_trec,
    'scitail': classification.map_scitail,
    # Summarization.
    'cnn_dailymail': summarization.map_cnn_dailymail, 'billsum': summarization.map_billsum,
    'xsum': summarization.map_xsum, 'aeslc': summarization.map_aeslc,
    'multi_news': summarization.map_multi_news,
    # Multiple choice.
    'math_qa': multiple_choice.map_math_qa, 'openbookqa': multiple_choice.map_openbookqa,
    'swag': multiple_choice.map_swag, 'hellaswag': multiple_choice.map_hellaswag,
    'race': multiple_choice.map_race, 'commonsense_qa': multiple_choice.map_commonsense_qa,
    'cosmos_qa': multiple_choice.map_cosmos_qa, 'arc_easy': multiple_choice.map_arc_easy,
    'arc_challenge': multiple_choice.map_arc_challenge, 'sciq': multiple_choice.map_sciq,
    # Extractive QA.
    'squad': span.map_squad, 'natural_questions': span.map_natural_questions,
    'drop': span.map_drop, 'record': span.map_record, 'hotpot_qa': span.map_hotpot_qa,
    'trivia_qa': span.map_trivia_qa,
}

# Mappers used for a dataset's evaluation split instead of its `MAPPERS` entry, where scoring
# as the official script does needs records that training drops (see `mapper_for`).
EVAL_MAPPERS: dict[str, Mapper] = {
    'squad': evaluation_lib.map_squad_eval,
    'natural_questions': evaluation_lib.map_natural_questions_eval,
    'trivia_qa': evaluation_lib.map_trivia_qa_eval,
    'hotpot_qa': evaluation_lib.map_hotpot_qa_eval,
    'record': evaluation_lib.map_record_eval, 'drop': evaluation_lib.map_drop_eval,
}


def mapper_for(slug: str, evaluation: bool = False) -> Mapper:
  """The mapper of dataset `slug` for training (`MAPPERS`) or evaluation (`EVAL_MAPPERS`, else
  the training mapper)."""
  if slug not in MAPPERS:
    raise ValueError(f'no mapper for dataset {slug!r}; known: {sorted(MAPPERS)}')
  return EVAL_MAPPERS.get(slug, MAPPERS[slug]) if evaluation else MAPPERS[slug]
