"""Tests of the dataset mappers (muppet_jax/data/mappers/).

Every mapper is run on a hand-written record in its dataset's real field format (TFDS 4.9.10
features, or the HF card for the HF-only datasets), decoded the way the seqio tasks pass it:
str for text, lists for sequences, dicts of lists for Sequence-of-dict features.
"""

from __future__ import annotations

import hashlib
import logging
import random

import pytest

from muppet_jax.data.mappers import BadRecord, DropCounter, MAPPERS
from muppet_jax.data.mappers import classification
from muppet_jax.data.mappers import multiple_choice

# Slugs the tests below cover; test_every_mapper_is_tested keeps it honest.
_TESTED: set[str] = set()


def _map(slug: str, raw: dict) -> list[dict]:
  _TESTED.add(slug)
  return MAPPERS[slug](raw)


def _bad(slug: str, raw: dict, reason: str) -> None:
  _TESTED.add(slug)
  with pytest.raises(BadRecord) as info:
    MAPPERS[slug](raw)
  assert info.value.reason == reason


def _check_span(ex: dict) -> None:
  """The span points at one of the gold answers."""
  assert ex['context'][ex['answer_start']:ex['answer_end']] in ex['answers']


# ---------------------------------------------------------------------------------------------
# Classification.
# ---------------------------------------------------------------------------------------------

_CLASSIFICATION_CASES = [
    ('cola', {'idx': 0, 'label': 1, 'sentence': "Our friends won't buy this analysis."},
     ("Our friends won't buy this analysis.", '', 1)),
    ('sst2', {'idx': 3, 'label': 0, 'sentence': 'unflinchingly bleak and desperate '},
     ('unflinchingly bleak and desperate', '', 0)),
    ('mrpc', {'idx': 1, 'label': 1, 'sentence1': 'He said so.', 'sentence2': 'So he said.'},
     ('He said so.', 'So he said.', 1)),
    ('qqp', {'idx': 7, 'label': 0, 'question1': 'How do I learn Python?',
             'question2': 'What is the capital of Peru?'},
     ('How do I learn Python?', 'What is the capital of Peru?', 0)),
    ('mnli', {'idx': 2, 'label': 2, 'premise': 'A man sleeps.', 'hypothesis': 'A man runs.'},
     ('A man sleeps.', 'A man runs.', 2)),
    ('qnli', {'idx': 5, 'label': 1, 'question': 'When was it built?',
              'sentence': 'The bridge is red.'},
     ('When was it built?', 'The bridge is red.', 1)),
    ('rte', {'idx': 0, 'label': 0, 'sentence1': 'Paris is in France.',
             'sentence2': 'Paris is French.'},
     ('Paris is in France.', 'Paris is French.', 0)),
    # WNLI keeps its own order: 1 = entailment (the reverse of RTE's).
    ('wnli', {'idx': 0, 'label': 1, 'sentence1': 'The cat sat; it purred.',
              'sentence2': 'The cat purred.'},
     ('The cat sat; it purred.', 'The cat purred.', 1)),
    ('boolq', {'idx': 0, 'label': 1, 'question': 'is water wet',
               'passage': 'Water is a liquid.'},
     ('is water wet', 'Water is a liquid.', 1)),
    # CB keeps [entailment, contradiction, neutral]: 2 = neutral.
    ('cb', {'idx': 0, 'label': 2, 'premise': 'It may rain.', 'hypothesis': 'It rains.'},
     ('It may rain.', 'It rains.', 2)),
    ('multi_nli', {'label': 1, 'premise': 'A dog barks.', 'hypothesis': 'A dog is loud.'},
     ('A dog barks.', 'A dog is loud.', 1)),
    ('snli', {'label': 0, 'premise': 'Two kids play.', 'hypothesis': 'Kids play.'},
     ('Two kids play.', 'Kids play.', 0)),
    ('hans', {'premise': 'The doctor saw the lawyer.', 'hypothesis': 'The lawyer saw the doctor.',
              'label': 1, 'parse_premise': '(ROOT ...)', 'parse_hypothesis': '(ROOT ...)',
              'binary_parse_premise': '( ... )', 'binary_parse_hypothesis': '( ... )',
              'heuristic': 'lexical_overlap', 'subcase': 'ln_subject/object_swap',
              'template': 'temp1'},
     ('The doctor saw the lawyer.', 'The lawyer saw the doctor.', 1)),
    ('rotten_tomatoes', {'text': 'a gorgeous , witty film .', 'label': 1},
     ('a gorgeous , witty film .', '', 1)),
    # TFDS Yelp ClassLabel names are '1'/'2': index 0 is negative already.
    ('yelp_polarity', {'label': 0, 'text': 'Cold food, rude staff.'},
     ('Cold food, rude staff.', '', 0)),
    ('wiki_qa', {'question_id': 'Q1', 'question': 'how are glacier caves formed?',
                 'document_title': 'Glacier cave',
                 'answer': 'A glacier cave is a cave formed within the ice of a glacier.',
                 'label': 0},
     ('how are glacier caves formed?',
      'A glacier cave is a cave formed within the ice of a glacier.', 0)),
    ('scitail', {'label': 0, 'premise': 'Plants need light.',
                 'hypothesis': 'Light is needed by plants.'},
     ('Plants need light.', 'Light is needed by plants.', 0)),
    ('ag_news', {'label': 2, 'title': 'Stocks rally',
                 'description': 'Shares rose on Monday, lifted by banks.'},
     ('Stocks rally', 'Shares rose on Monday, lifted by banks.', 2)),
    # TREC: label-coarse (6 classes), not label-fine.
    ('trec', {'label-coarse': 4, 'label-fine': 40, 'text': 'How far is it from Denver to Aspen ?'},
     ('How far is it from Denver to Aspen ?', '', 4)),
    ('imdb', {'label': 1, 'text': 'Great film.<br /><br />Loved   it.'},
     ('Great film. Loved it.', '', 1)),
]


@pytest.mark.parametrize('slug,raw,expected', _CLASSIFICATION_CASES,
                         ids=[c[0] for c in _CLASSIFICATION_CASES])
def test_classification(slug, raw, expected):
  text_a, text_b, label = expected
  assert _map(slug, raw) == [{'text_a': text_a, 'text_b': text_b, 'label': label}]


def test_numpy_scalar_labels_are_accepted():
  np = pytest.importorskip('numpy')
  out = _map('cola', {'idx': np.int32(0), 'label': np.int64(1), 'sentence': 'Fine.'})
  assert out == [{'text_a': 'Fine.', 'text_b': '', 'label': 1}]
  assert type(out[0]['label']) is int


def test_multirc_strips_markup_and_groups_by_question():
  raw = {'paragraph': '<b>Sent 1: </b>Tom has a dog.<br><b>Sent 2: </b>It is brown.<br>',
         'question': 'What colour is the dog?', 'answer': 'Brown', 'label': 1,
         'idx': {'paragraph': 3, 'question': 7, 'answer': 2}}
  assert _map('multirc', raw) == [{'text_a': 'Tom has a dog. It is brown.',
                                   'text_b': 'What colour is the dog? Brown', 'label': 1,
                                   'group': '3:7'}]
  # Another answer option of the same question shares the group; another question does not.
  other = dict(raw, answer='Black', label=0, idx={'paragraph': 3, 'question': 7, 'answer': 3})
  assert _map('multirc', other)[0]['group'] == '3:7'
  other['idx'] = {'paragraph': 3, 'question': 8, 'answer': 0}
  assert _map('multirc', other)[0]['group'] == '3:8'
  _bad('multirc', {k: v for k, v in raw.items() if k != 'idx'}, 'missing field idx')


def test_eraser_multi_rc_groups_by_passage_and_question():
  raw = {'passage': 'Tom went home.\nHe slept.', 'label': 1,
         'query_and_answer': 'What did Tom do? || He slept', 'evidences': ['He slept.']}
  digest = hashlib.sha1(raw['passage'].encode('utf-8')).hexdigest()[:16]
  assert _map('eraser_multi_rc', raw) == [{
      'text_a': 'Tom went home.\nHe slept.', 'text_b': 'What did Tom do? || He slept',
      'label': 1, 'group': f'{digest}:What did Tom do?'}]
  same_question = dict(raw, query_and_answer='What did Tom do? || He ran', label=0)
  assert _map('eraser_multi_rc', same_question)[0]['group'] == f'{digest}:What did Tom do?'
  other_passage = dict(raw, passage='Ann went home.')
  assert _map('eraser_multi_rc', other_passage)[0]['group'] != f'{digest}:What did Tom do?'


def test_wic():
  raw = {'word': 'bank', 'sentence1': 'He sat on the river bank.',
         'sentence2': 'She works at a bank.', 'start1': 20, 'end1': 24, 'start2': 15,
         'end2': 19, 'idx': 0, 'label': 0}
  assert _map('wic', raw) == [{'text_a': 'bank: He sat on the river bank.',
                               'text_b': 'She works at a bank.', 'label': 0}]


def test_wsc_marks_spans():
  raw = {'text': "Mark told Pete many lies about himself, which Pete included in his book.",
         'span1_index': 0, 'span1_text': 'Mark', 'span2_index': 11, 'span2_text': 'his',
         'idx': 0, 'label': 1}
  assert _map('wsc', raw) == [{
      'text_a': '*Mark* told Pete many lies about himself, which Pete included in [his] book.',
      'text_b': 'his refers to Mark', 'label': 1}]


def test_wsc_multiword_span_and_stale_index():
  raw = {'text': 'The city councilmen refused the demonstrators a permit because they feared '
                 'violence.', 'span1_index': 0, 'span1_text': 'The city councilmen',
         'span2_index': 9, 'span2_text': 'they', 'idx': 1, 'label': 1}
  assert _map('wsc', raw)[0]['text_a'] == (
      '*The city councilmen* refused the demonstrators a permit because [they] feared '
      'violence.')
  _bad('wsc', dict(raw, span2_index=3), 'span not found')


def test_copa():
  raw = {'premise': 'My body cast a shadow over the grass.', 'question': 'cause',
         'choice1': 'The sun was rising.', 'choice2': 'The grass was cut.', 'idx': 0,
         'label': 0}
  assert _map('copa', raw) == [{
      'text_a': 'My body cast a shadow over the grass. What was the cause?',
      'text_b': 'The sun was rising. </s> The grass was cut.', 'label': 0}]
  effect = _map('copa', dict(raw, question='effect', label=1))[0]
  assert effect['text_a'].endswith(' What was the effect?') and effect['label'] == 1
  _bad('copa', dict(raw, question='why'), 'bad question type')


def test_classification_bad_records():
  _bad('snli', {'label': -1, 'premise': 'A.', 'hypothesis': 'B.'}, 'label -1 (unlabelled)')
  _bad('mnli', {'idx': 0, 'label': 3, 'premise': 'A.', 'hypothesis': 'B.'},
       'label out of range')
  _bad('rte', {'idx': 0, 'label': 0, 'sentence1': 'A.'}, 'missing field sentence2')
  _bad('cola', {'idx': 0, 'label': 0, 'sentence': '   '}, 'empty text')
  _bad('cola', {'idx': 0, 'label': 0.0, 'sentence': 'A.'}, 'bad label')
  _bad('trec', {'label-fine': 3, 'text': 'Why ?'}, 'missing field label-coarse')


def test_num_classes_covers_classification_mappers():
  for slug, n in classification.NUM_CLASSES.items():
    assert slug in MAPPERS and n >= 2


# ---------------------------------------------------------------------------------------------
# Multiple choice.
# ---------------------------------------------------------------------------------------------


def test_swag():
  raw = {'video-id': 'anetv_1', 'fold-ind': '5', 'startphrase': 'Members sit. They',
         'sent1': 'Members of the band sit on stage.', 'sent2': 'They',
         'gold-source': 'gold', 'ending0': 'play their instruments.', 'ending1': 'fly away.',
         'ending2': 'eat soup.', 'ending3': 'swim.', 'label': 0}
  assert _map('swag', raw) == [{
      'context': 'Members of the band sit on stage.', 'question': 'They',
      'choices': ['play their instruments.', 'fly away.', 'eat soup.', 'swim.'], 'label': 0}]


def test_hellaswag():
  raw = {'activity_label': 'Removing ice from car',
         'context': 'Then, the man writes over the snow. A woman',
         'endings': [', the man jumps.', 'then wipes the car.', 'is cold.', 'sings.'],
         'label': 3, 'source_id': 'activitynet~v_-1IBHYS3L-Y', 'split_type': 'indomain'}
  assert _map('hellaswag', raw) == [{
      'context': 'Then, the man writes over the snow. A woman', 'question': '',
      'choices': [', the man jumps.', 'then wipes the car.', 'is cold.', 'sings.'],
      'label': 3}]
  # The label is a plain int32, so the range is checked (-1 on test, junk in mock data).
  _bad('hellaswag', dict(raw, label=-1), 'label -1 (unlabelled)')
  _bad('hellaswag', dict(raw, label=58), 'label out of range')
  _bad('hellaswag', dict(raw, endings=['a', 'b', 'c']), 'wrong number of choices')


def test_race_flattens_articles():
  raw = {'article': 'Tom is ten. He likes cats.', 'example_id': 'high1.txt',
         'questions': ['How old is Tom?', 'Tom likes _ .'],
         'options': [['8', '9', '10', '11'], ['dogs', 'cats', 'fish', 'birds']],
         'answers': ['C', 'B']}
  assert _map('race', raw) == [
      {'context': 'Tom is ten. He likes cats.', 'question': 'How old is Tom?',
       'choices': ['8', '9', '10', '11'], 'label': 2},
      {'context': 'Tom is ten. He likes cats.', 'question': 'Tom likes _ .',
       'choices': ['dogs', 'cats', 'fish', 'birds'], 'label': 1},
  ]
  _bad('race', dict(raw, answers=['C']), 'questions, answers and options differ in length')
  _bad('race', dict(raw, answers=['C', 'F']), 'bad answer key')
  _bad('race', dict(raw, questions=[], options=[], answers=[]), 'no questions')


def test_commonsense_qa_hf_and_cos_e():
  raw = {'id': '075e', 'question': 'Where would you find a jellyfish?',
         'question_concept': 'jellyfish',
         'choices': {'label': ['A', 'B', 'C', 'D', 'E'],
                     'text': ['desert', 'ocean', 'forest', 'mall', 'attic']},
         'answerKey': 'B'}
  expected = [{'context': '', 'question': 'Where would you find a jellyfish?',
               'choices': ['desert', 'ocean', 'forest', 'mall', 'attic'], 'label': 1}]
  assert _map('commonsense_qa', raw) == expected
  _bad('commonsense_qa', dict(raw, answerKey=''), 'label -1 (unlabelled)')
  cos_e = {'id': '075e', 'question': 'Where would you find a jellyfish?',
           'choices': ['desert', 'ocean', 'forest', 'mall', 'attic'], 'answer': 'ocean',
           'abstractive_explanation': '', 'extractive_explanation': ''}
  assert _map('commonsense_qa', cos_e) == expected


def test_cosmos_qa():
  raw = {'id': 'x1', 'context': 'I missed the bus.', 'question': 'Why was I late?',
         'answer0': 'I overslept.', 'answer1': 'I missed the bus.', 'answer2': 'Traffic.',
         'answer3': 'None of the above choices.', 'label': 1}
  assert _map('cosmos_qa', raw) == [{
      'context': 'I missed the bus.', 'question': 'Why was I late?',
      'choices': ['I overslept.', 'I missed the bus.', 'Traffic.',
                  'None of the above choices.'], 'label': 1}]


@pytest.mark.parametrize('slug', ['arc_easy', 'arc_challenge'])
def test_arc_tfds_format(slug):
  # TFDS: answerKey and choices.label are ClassLabel indices into A-E.
  raw = {'id': 'Mercury_1', 'question': 'Which is a mammal?',
         'choices': {'label': [0, 1, 2], 'text': ['shark', 'whale', 'trout']},
         'answerKey': 1}
  assert _map(slug, raw) == [{'context': '', 'question': 'Which is a mammal?',
                              'choices': ['shark', 'whale', 'trout'], 'label': 1}]


def test_arc_hf_letters_and_digits():
  letters = {'id': 'a', 'question': 'Q?', 'answerKey': 'E',
             'choices': {'label': ['A', 'B', 'C', 'D', 'E'], 'text': list('vwxyz')}}
  assert _map('arc_easy', letters)[0]['label'] == 4
  digits = {'id': 'b', 'question': 'Q?', 'answerKey': '3',
            'choices': {'label': ['1', '2', '3', '4'], 'text': list('wxyz')}}
  assert _map('arc_challenge', digits)[0]['label'] == 2
  _bad('arc_easy', dict(digits, answerKey='E'), 'answer key not among choices')
  _bad('arc_easy', {'id': 'c', 'question': 'Q?', 'answerKey': 0,
                    'choices': {'label': [0, 1], 'text': ['a', 'b']}},
       'wrong number of choices')


def test_openbookqa():
  raw = {'question': {'stem': 'The sun is responsible for', 'choice_A': 'puppies learning',
                      'choice_B': 'plants sprouting', 'choice_C': 'stars', 'choice_D': 'rain'},
         'fact1': 'the sun is the source of energy for physical cycles on Earth',
         'humanScore': 1.0, 'clarity': 2.0, 'turkIdAnonymized': 'b356d338b7',
         'answerKey': 1}
  assert _map('openbookqa', raw) == [{
      'context': 'the sun is the source of energy for physical cycles on Earth',
      'question': 'The sun is responsible for',
      'choices': ['puppies learning', 'plants sprouting', 'stars', 'rain'], 'label': 1}]
  assert _map('openbookqa', dict(raw, fact1=''))[0]['context'] == ''
  assert _map('openbookqa', dict(raw, answerKey='D'))[0]['label'] == 3
  _bad('openbookqa', dict(raw, answerKey=4), 'bad answer key')


def test_sciq_shuffle_is_deterministic_and_label_correct():
  def raw(question):
    return {'question': question, 'distractor3': 'gravity', 'distractor1': 'friction',
            'distractor2': 'magnetism', 'correct_answer': 'mesophilic organisms',
            'support': 'Mesophiles grow best in moderate temperature.'}

  first = _map('sciq', raw('What organisms grow best at moderate temperature?'))
  again = _map('sciq', raw('What organisms grow best at moderate temperature?'))
  assert first == again
  ex = first[0]
  assert ex['context'] == 'Mesophiles grow best in moderate temperature.'
  assert ex['question'] == 'What organisms grow best at moderate temperature?'
  assert sorted(ex['choices']) == sorted(
      ['mesophilic organisms', 'friction', 'magnetism', 'gravity'])
  assert ex['choices'][ex['label']] == 'mesophilic organisms'
  # The correct answer is not always first: over a few questions it moves around.
  positions = {_map('sciq', raw(f'Question number {i}?'))[0]['label'] for i in range(20)}
  assert len(positions) > 1
  _bad('sciq', {k: v for k, v in raw('Q?').items() if k != 'distractor2'},
       'missing field distractor2')


def test_sciq_order_is_pinned():
  # A fixed expectation guards against a change of seed derivation (which would silently
  # reorder every example across versions).
  ex = _map('sciq', {'question': 'Q?', 'distractor1': 'b', 'distractor2': 'c',
                     'distractor3': 'd', 'correct_answer': 'a', 'support': ''})[0]
  seed = int.from_bytes(hashlib.sha256(b'Q?').digest()[:8], 'little')
  order = [0, 1, 2, 3]
  random.Random(seed).shuffle(order)
  assert ex['choices'] == [['a', 'b', 'c', 'd'][i] for i in order]
  assert ex['label'] == order.index(0)


def test_math_qa_options_with_commas():
  raw = {'Problem': 'the banker s gain on a sum due 3 years hence is rs . 36 . find the sum',
         'Rationale': '"explanation ..."',
         'options': 'a ) rs . 1,200 , b ) 27.675 , c ) 30 , d ) none of these , e ) 21',
         'correct': 'b', 'annotated_formula': 'divide(36, 3)', 'linear_formula': 'divide(n1,n0)|',
         'category': 'gain', 'correct_option': '27.675'}
  assert _map('math_qa', raw) == [{
      'context': '', 'question': raw['Problem'],
      'choices': ['rs . 1,200', '27.675', '30', 'none of these', '21'], 'label': 1}]


def test_math_qa_parser_edge_cases():
  parse = multiple_choice.parse_math_qa_options
  # A letter followed by ')' inside an option, and commas inside options.
  assert parse('a ) ( a + b ) / 2 , b ) 3 , c ) 1,000 , d ) 9 , e ) 7') == [
      '( a + b ) / 2', '3', '1,000', '9', '7']
  assert parse("['a ) 38', 'b ) 27.675', 'c ) 30', 'd ) 0', 'e ) 21']") == [
      '38', '27.675', '30', '0', '21']
  assert parse('a ) 5 b ) 6 c ) 7 d ) 8 e ) 9') == ['5', '6', '7', '8', '9']
  with pytest.raises(BadRecord):
    parse('38 , 27')


def test_math_qa_bad_records():
  raw = {'Problem': 'p', 'options': 'a ) 1 , b ) 2 , c ) 3 , d ) 4 , e ) 5', 'correct': 'f'}
  _bad('math_qa', raw, 'bad answer key')
  _bad('math_qa', dict(raw, correct='a', options='a ) 1 , b ) 2'), 'wrong number of choices')


# ---------------------------------------------------------------------------------------------
# Extractive QA.
# ---------------------------------------------------------------------------------------------


def test_squad():
  context = 'Architecturally, the school has a Catholic character. Atop the Main Building is a '\
            'golden statue of the Virgin Mary.'
  start = context.index('golden statue')
  raw = {'id': '5733be', 'title': 'University_of_Notre_Dame', 'context': context,
         'question': 'What sits on top of the Main Building?',
         'answers': {'text': ['a golden statue of the Virgin Mary', 'golden statue'],
                     'answer_start': [start - 2, start]}}
  out = _map('squad', raw)
  assert out == [{'context': context, 'question': 'What sits on top of the Main Building?',
                  'answer_start': start - 2, 'answer_end': start - 2 + 34,
                  'answers': ['a golden statue of the Virgin Mary', 'golden statue']}]
  _check_span(out[0])
  assert context[out[0]['answer_start']:out[0]['answer_end']] == (
      'a golden statue of the Virgin Mary')


def test_squad_wrong_offset_is_relocated_and_absent_answer_dropped():
  raw = {'id': 'x', 'title': 't', 'context': 'Paris is the capital of France.',
         'question': 'Capital of France?', 'answers': {'text': ['Paris'], 'answer_start': [7]}}
  ex = _map('squad', raw)[0]
  assert (ex['answer_start'], ex['answer_end']) == (0, 5)
  _bad('squad', dict(raw, answers={'text': ['Lyon'], 'answer_start': [0]}),
       'answer not found in context')
  _bad('squad', dict(raw, answers={'text': [], 'answer_start': []}), 'no answer')
  _bad('squad', {k: v for k, v in raw.items() if k != 'answers'}, 'missing field answers')


def _mrqa_raw(context, question, answers, detected):
  """An MRQA record: detected = [(text, [(start, end_inclusive), ...]), ...]."""
  return {
      'subset': 'NaturalQuestionsShort', 'qid': 'q1', 'context': context,
      'question': question, 'answers': answers,
      'context_tokens': {'tokens': context.split(), 'offsets': [0] * len(context.split())},
      'question_tokens': {'tokens': question.split(), 'offsets': [0] * len(question.split())},
      'detected_answers': {
          'text': [t for t, _ in detected],
          'char_spans': {'start': [[s for s, _ in spans] for _, spans in detected],
                         'end': [[e for _, e in spans] for _, spans in detected]},
          'token_spans': {'start': [[0] * len(spans) for _, spans in detected],
                          'end': [[0] * len(spans) for _, spans in detected]},
      },
  }


@pytest.mark.parametrize('slug', ['natural_questions', 'hotpot_qa', 'trivia_qa'])
def test_mrqa_inclusive_end_becomes_exclusive(slug):
  context = '<P> The Eiffel Tower was completed in 1889 . </P>'
  s = context.index('1889')
  raw = _mrqa_raw(context, 'when was the eiffel tower finished', ['1889', 'in 1889'],
                  [('1889', [(s, s + 3)])])
  out = _map(slug, raw)
  assert out == [{'context': context, 'question': 'when was the eiffel tower finished',
                  'answer_start': s, 'answer_end': s + 4, 'answers': ['1889', 'in 1889']}]
  assert context[out[0]['answer_start']:out[0]['answer_end']] == '1889'


def test_mrqa_shifted_span_is_relocated():
  context = 'Abraham Lincoln was the 16th president.'
  raw = _mrqa_raw(context, 'who was the 16th president', ['Abraham Lincoln'],
                  [('Abraham Lincoln', [(2, 16)])])  # shifted by 2 (stripped context)
  ex = _map('trivia_qa', raw)[0]
  assert (ex['answer_start'], ex['answer_end']) == (0, 15)
  _bad('natural_questions', _mrqa_raw(context, 'q', ['Obama'], [('Obama', [(0, 4)])]),
       'answer not found in context')


def test_hotpot_qa_hf_format():
  raw = {'id': '5a8b', 'question': 'Which magazine was started first?',
         'answer': "Arthur's Magazine",
         'type': 'comparison', 'level': 'medium',
         'supporting_facts': {'title': ["Arthur's Magazine", 'First for Women'],
                              'sent_id': [0, 0]},
         'context': {'title': ['Radio City', "Arthur's Magazine", 'First for Women'],
                     'sentences': [['Radio City is a station.'],
                                   ["Arthur's Magazine (1844-1846) was a periodical.",
                                    ' It was in Philadelphia.'],
                                   ['First for Women is a magazine.', ' Started in 1989.']]}}
  ex = _map('hotpot_qa', raw)[0]
  assert ex['context'] == ("Arthur's Magazine: Arthur's Magazine (1844-1846) was a periodical. "
                           'It was in Philadelphia. First for Women: First for Women is a '
                           'magazine. Started in 1989.')
  assert (ex['answer_start'], ex['answer_end']) == (0, 17)
  assert ex['answers'] == ["Arthur's Magazine"]
  _bad('hotpot_qa', dict(raw, answer='yes'), 'non-extractive answer')


def test_drop():
  passage = 'In 1930, the Bears scored 3 touchdowns. Smith kicked a 45-yard field goal.'
  raw = {'passage': passage, 'question': 'How many touchdowns did the Bears score?',
         'answer': '3', 'validated_answers': ['3', 'three'], 'query_id': 'q0'}
  ex = _map('drop', raw)[0]
  # Whole-word match: the '3' of '1930' is skipped.
  assert ex == {'context': passage, 'question': 'How many touchdowns did the Bears score?',
                'answer_start': passage.index(' 3 ') + 1,
                'answer_end': passage.index(' 3 ') + 2, 'answers': ['3', 'three']}
  _check_span(ex)
  span = _map('drop', dict(raw, answer='Smith', validated_answers=[]))[0]
  assert passage[span['answer_start']:span['answer_end']] == 'Smith'
  # Computed numbers, dates and empty answers are not extractive.
  _bad('drop', dict(raw, answer='42'), 'non-extractive answer')
  _bad('drop', dict(raw, answer='1930-May-3'), 'non-extractive answer')
  _bad('drop', dict(raw, answer=''), 'non-extractive answer')


def test_record():
  passage = ('The US and USA teams met in Paris.\n@highlight\nThe USA won\n@highlight\n'
             'Fans cheered.')
  raw = {'passage': passage, 'query': 'The @placeholder team celebrated.',
         'entities': ['Paris', 'USA', 'US'], 'answers': ['USA'],
         'idx': {'passage': 0, 'query': 0}}
  ex = _map('record', raw)[0]
  assert ex['context'] == 'The US and USA teams met in Paris. The USA won. Fans cheered.'
  assert ex['question'] == 'The @placeholder team celebrated.'
  # Whole-word match: 'USA' is not found inside another word; the first occurrence is used.
  assert (ex['answer_start'], ex['answer_end']) == (11, 14)
  assert ex['answers'] == ['USA']
  _check_span(ex)
  _bad('record', dict(raw, answers=['Germany']), 'answer not found in context')
  _bad('record', dict(raw, answers=[]), 'no answer')


# ---------------------------------------------------------------------------------------------
# Summarization.
# ---------------------------------------------------------------------------------------------

_SUMMARIZATION_CASES = [
    ('cnn_dailymail', {'article': 'LONDON (CNN) -- A long article.', 'id': 'abc',
                       'highlights': 'First point .\nSecond point .', 'publisher': 'cnn'},
     ('LONDON (CNN) -- A long article.', 'First point .\nSecond point .')),
    ('billsum', {'text': 'SECTION 1. SHORT TITLE. This Act ...', 'summary': 'Amends the law.',
                 'title': 'A bill'},
     ('SECTION 1. SHORT TITLE. This Act ...', 'Amends the law.')),
    ('xsum', {'document': 'The council said on Monday ...', 'summary': 'A council decided.'},
     ('The council said on Monday ...', 'A council decided.')),
    ('aeslc', {'email_body': 'Please find the report attached.\n', 'subject_line': 'Report'},
     ('Please find the report attached.', 'Report')),
    ('multi_news', {'document': 'Story one. ||||| Story two.', 'summary': '– Both stories.'},
     ('Story one. ||||| Story two.', '– Both stories.')),
]


@pytest.mark.parametrize('slug,raw,expected', _SUMMARIZATION_CASES,
                         ids=[c[0] for c in _SUMMARIZATION_CASES])
def test_summarization(slug, raw, expected):
  document, summary = expected
  assert _map(slug, raw) == [{'document': document, 'summary': summary}]


def test_summarization_bad_records():
  _bad('xsum', {'document': 'Text.', 'summary': ''}, 'empty text')
  _bad('aeslc', {'email_body': 'Text.'}, 'missing field subject_line')


# ---------------------------------------------------------------------------------------------
# DropCounter.
# ---------------------------------------------------------------------------------------------


def test_drop_counter_counts_and_summary(caplog):
  counter = DropCounter()
  good = {'label': 0, 'premise': 'A.', 'hypothesis': 'B.'}
  assert counter.apply('snli', good) == [{'text_a': 'A.', 'text_b': 'B.', 'label': 0}]
  assert counter.apply('snli', dict(good, label=-1)) == []
  assert counter.apply('snli', dict(good, label=-1)) == []
  assert counter.apply('snli', {'label': 0, 'premise': 'A.'}) == []
  race = {'article': 'a', 'questions': ['q1', 'q2'], 'options': [list('abcd')] * 2,
          'answers': ['A', 'D'], 'example_id': 'x'}
  assert len(counter.apply('race', race)) == 2
  assert counter.counts == {
      'race': {'kept': 1, 'examples': 2, 'dropped': {}},
      'snli': {'kept': 1, 'examples': 1,
               'dropped': {'label -1 (unlabelled)': 2, 'missing field hypothesis': 1}},
  }
  summary = counter.summary()
  assert 'race: kept 1 records (2 examples), dropped 0' in summary
  assert ('snli: kept 1 records (1 examples), dropped 3 (label -1 (unlabelled): 2, '
          'missing field hypothesis: 1)') in summary
  with caplog.at_level(logging.INFO):
    counter.log_summary()
  assert 'missing field hypothesis: 1' in caplog.text


def test_drop_counter_converts_key_and_type_errors():
  counter = DropCounter()
  # Not a dict at all: the mapper's field access fails; the run must go on.
  assert counter.apply('cola', None) == []
  # A nested field of the wrong shape (TypeError inside the mapper).
  assert counter.apply('squad', {'context': 'c', 'question': 'q', 'answers': {
      'text': ['c'], 'answer_start': 5}}) == []
  assert counter.apply('race', {'article': 'a', 'questions': ['q'], 'answers': ['A'],
                                'options': [None]}) == []
  dropped = counter.counts
  assert dropped['cola']['dropped'] == {'missing field sentence': 1}
  assert sum(dropped['squad']['dropped'].values()) == 1
  assert sum(dropped['race']['dropped'].values()) == 1
  with pytest.raises(ValueError, match='no mapper'):
    counter.apply('no_such_dataset', {})


def test_drop_counter_empty_summary():
  assert DropCounter().summary() == 'no records seen'


# ---------------------------------------------------------------------------------------------
# Coverage against the catalogue.
# ---------------------------------------------------------------------------------------------


def _catalogue_records():
  catalogue = pytest.importorskip('muppet_jax.data.catalogue')
  records = getattr(catalogue, 'RECORDS', None)
  if records is None:
    pytest.skip('catalogue.RECORDS not defined yet')
  return list(records.values()) if isinstance(records, dict) else list(records)


def test_every_catalogue_dataset_with_training_data_has_a_mapper():
  records = _catalogue_records()
  trainable = [r for r in records
               if r.train_split and r.train_size > 0 and not r.source.startswith('demo:')]
  assert len(trainable) >= 46
  missing = sorted(r.slug for r in trainable if r.slug not in MAPPERS)
  assert not missing, f'catalogue datasets without a mapper: {missing}'
  unknown = sorted(set(MAPPERS) - {r.slug for r in records})
  assert not unknown, f'mappers for slugs the catalogue does not know: {unknown}'


def test_num_classes_match_catalogue():
  from muppet_jax.data.features import Family
  by_slug = {r.slug: r for r in _catalogue_records()}
  for slug, record in by_slug.items():
    if record.family == Family.CLASSIFICATION and record.train_size > 0:
      assert classification.NUM_CLASSES.get(slug) == record.num_classes, slug


def test_every_mapper_is_tested(request):
  # Runs last in this file (pytest keeps definition order), after the tests above filled
  # _TESTED; meaningless when only some of them were selected (-k, a single test id).
  module_items = [i for i in request.session.items if i.module is request.module]
  defined = [n for n in globals() if n.startswith('test_')]
  if len({i.originalname for i in module_items}) < len(defined):
    pytest.skip('only part of test_mappers.py selected')
  untested = sorted(set(MAPPERS) - _TESTED)
  assert not untested, f'mappers without a hand-written record test: {untested}'
