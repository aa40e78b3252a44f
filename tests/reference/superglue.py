"""SuperGLUE's CB and MultiRC scores, written as the T5 codebase computes them for its
SuperGLUE submissions (t5/evaluation/metrics.py: `mean_multiclass_f1`,
`multirc_f1_over_all_answers`, `mean_group_metric(all_match)`), on scikit-learn.

CB: accuracy and the unweighted mean of the per-class F1 over ALL 3 classes
(`fbeta_score(beta=1, labels=range(3), average='macro')`); the CB score is their mean.
MultiRC: F1a = binary F1 over every answer option (`f1_score`); EM = the mean over questions of
"every answer option of the question is predicted right"; the MultiRC score is their mean.
"""

import collections

import numpy as np
import sklearn.metrics


def cb(targets, predictions):
  accuracy = sklearn.metrics.accuracy_score(targets, predictions)
  macro_f1 = sklearn.metrics.fbeta_score(targets, predictions, beta=1, labels=range(3),
                                         average='macro', zero_division=0)
  return {'accuracy': accuracy, 'macro_f1': macro_f1,
          'accuracy_macro_f1': (accuracy + macro_f1) / 2}


def multirc(targets, predictions, groups):
  f1a = sklearn.metrics.f1_score(targets, predictions, zero_division=0)
  by_group = collections.defaultdict(lambda: ([], []))
  for group, target, prediction in zip(groups, targets, predictions):
    by_group[group][0].append(target)
    by_group[group][1].append(prediction)
  em = np.mean([float(np.array_equal(t, p)) for t, p in by_group.values()])
  return {'f1a': f1a, 'em': em, 'f1a_em': (f1a + em) / 2}
