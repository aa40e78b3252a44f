"""Export: a tiny demo run -> Hugging Face directories that `transformers` (PyTorch) loads.

The shared tiny RoBERTa demo run (`trained_demo_workdir`, tests/conftest.py) and a tiny BART
demo run trained here in-process (3 updates) are exported, and every exported directory is
loaded with `from_pretrained(..., output_loading_info=True)` (no missing or unexpected keys).
The exported tokenizers truncate long inputs to the model's positions, and the model card's
snippets run as written, long inputs included. Real demo validation examples, laid out by our
batching (`SubBatchBuilder`), go through our model's family forwards and through the
`transformers` task models; logits must agree within 1e-4. Each example is compared twice: our
forward on the packed training-layout sub-batch, and on unpacked one-example rows with HF-style
right padding (the inputs the PyTorch model gets).
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import transformers

import conftest
from configs import demo as demo_config
from muppet_jax import checkpoint as checkpoint_lib
from muppet_jax import export
from muppet_jax import train
from muppet_jax import workdir as workdir_lib
from muppet_jax.data import batching
from muppet_jax.data import demo
from muppet_jax.data import tasks
from muppet_jax.data.features import Family

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4
NUM_EXAMPLES = 8  # Demo validation examples per task.
# Max |ours - transformers| per head kind, printed at the end of the module (pytest -s).
MAX_DIFFS: dict[str, float] = {}


def _tiny_config(variant: str):
  config = demo_config.get_config(variant)
  config.train.steps = 3
  config.train.checkpoint_every = 3
  config.train.eval_every = 0
  config.train.log_every = 1
  config.train.grad_accum = 2
  config.data.eval_examples = NUM_EXAMPLES
  config.model.hidden_size = 32
  config.model.num_layers = 1
  config.model.num_heads = 2
  config.model.intermediate_size = 64
  # Neither fairseq's 0.0 nor HF's 0.1: the exported heads' classifier_dropout must carry it.
  config.model.head_dropout = 0.25
  # Large steps (Adam moves every parameter by ~lr per update), so that after 3 updates the
  # heads are far from their tiny init and logits vary well beyond the comparison tolerance.
  config.optim.learning_rate = 3e-2
  config.optim.warmup_steps = 1
  config.mesh.data = 1
  return config


def _export(workdir: str, out: str) -> dict:
  report = export.export(workdir, out)
  run = workdir_lib.restore(workdir)
  return {'workdir': workdir, 'out': out, 'report': report, 'run': run}


def _train_and_export(tmp_path_factory, variant: str) -> dict:
  base = tmp_path_factory.mktemp(f'export_{variant}')
  workdir, out = str(base / 'run'), str(base / 'hf')
  result = train.run(_tiny_config(variant), workdir)
  assert result.step == 3
  return _export(workdir, out)


@pytest.fixture(scope='module')
def roberta_export(trained_demo_workdir, tmp_path_factory):
  """The shared trained demo run (the RoBERTa form of `_tiny_config`), exported."""
  return _export(trained_demo_workdir, str(tmp_path_factory.mktemp('export_roberta') / 'hf'))


@pytest.fixture(scope='module')
def bart_export(tmp_path_factory):
  return _train_and_export(tmp_path_factory, 'bart')


@pytest.fixture(scope='module', autouse=True)
def _print_diffs():
  yield
  if MAX_DIFFS:
    print('\nmax |ours - transformers| per head kind:')
    for kind, diff in sorted(MAX_DIFFS.items()):
      print(f'  {kind:40s} {diff:.2e}')


def _record_diff(kind: str, diff: float) -> None:
  MAX_DIFFS[kind] = max(MAX_DIFFS.get(kind, 0.0), diff)


# --- Inputs ---------------------------------------------------------------------------------------


def _sub_batches(run, task_name: str) -> list[dict[str, np.ndarray]]:
  """The task's first validation examples laid out by our batching (packed sub-batches)."""
  builder = batching.SubBatchBuilder(
      run.data.shape, run.data.vocab, run.data.task_table, model_type=run.config.model.type,
      span_stride=run.config.data.span_stride)
  slug = tasks.record_for_task(task_name).slug
  stream = builder.stream(task_name, demo.examples(slug, 'validation')[:NUM_EXAMPLES])
  out = []
  while True:
    sub = builder.build(stream)
    if sub.num_examples == 0:
      return out
    out.append(sub.arrays)


def _segments(arrays: dict[str, np.ndarray]) -> list[list[np.ndarray]]:
  """Per example, the token ids of each of its (choice) segments, read off a packed sub-batch."""
  length = arrays['input_ids'].shape[1]
  out = []
  for e in np.flatnonzero(arrays['example_mask']):
    choices = []
    for c in np.flatnonzero(arrays['choice_mask'][e]):
      row, col = divmod(int(arrays['example_index'][e, c]), length)
      segment = arrays['segment_ids'][row, col]
      choices.append(arrays['input_ids'][row][arrays['segment_ids'][row] == segment])
    out.append(choices)
  return out


def _unpacked(rows: list[np.ndarray], pad_id: int, model_type: str, task_id: int
              ) -> dict[str, np.ndarray]:
  """One segment per row, right-padded (HF style), in our sub-batch layout."""
  length = max(len(r) for r in rows)
  n = len(rows)
  ids = np.full((n, length), pad_id, np.int32)
  for i, r in enumerate(rows):
    ids[i, :len(r)] = r
  real = np.zeros((n, length), bool)
  for i, r in enumerate(rows):
    real[i, :len(r)] = True
  last = [len(r) - 1 if model_type == 'bart' else 0 for r in rows]
  return {
      'task_id': np.int32(task_id),
      'input_ids': ids,
      'segment_ids': real.astype(np.int32),
      'positions': np.where(real, np.arange(length)[None], 0).astype(np.int32),
      'example_index': np.array([[i * length + last[i]] for i in range(n)], np.int32),
      'choice_mask': np.ones((n, 1), bool),
      'span_mask': real,
  }


def _torch_inputs(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
  return {'input_ids': torch.tensor(batch['input_ids'], dtype=torch.long),
          'attention_mask': torch.tensor(batch['segment_ids'] > 0, dtype=torch.long)}


def _load(cls, path: str):
  model, info = cls.from_pretrained(path, output_loading_info=True)
  for kind in ('missing_keys', 'unexpected_keys', 'mismatched_keys'):
    assert not info.get(kind), (path, kind, info[kind])
  return model.eval()


def _head(report, name: str):
  return next(h for h in report.heads if h.name == name)


def _assert_close(kind: str, ours, theirs) -> None:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape, (kind, ours.shape, theirs.shape)
  diff = float(np.max(np.abs(ours - theirs)))
  _record_diff(kind, diff)
  assert diff <= TOL, (kind, diff)
  # The comparison means something: the outputs are far from 0 at this tolerance.
  assert float(np.max(np.abs(theirs))) > 30 * TOL, (kind, float(np.max(np.abs(theirs))))


# --- Checks shared by both model types -------------------------------------------------------


def _check_restored_params(workdir: str, run) -> None:
  """The export's model holds exactly the checkpoint's parameters (read independently)."""
  raw = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(run.step), 'state'))
  saved = {checkpoint_lib.path_name(p): np.asarray(v)
           for p, v in jax.tree_util.tree_flatten_with_path(raw['params'])[0]}
  from flax import nnx  # pylint: disable=g-import-not-at-top
  ours = {checkpoint_lib.path_name(p): np.asarray(v) for p, v in
          jax.tree_util.tree_flatten_with_path(nnx.state(run.model, nnx.Param))[0]}
  assert set(ours) == set(saved)
  for name, value in ours.items():
    np.testing.assert_array_equal(value, saved[name], err_msg=name)


def _check_head_dropout(run, hf_model) -> None:
  """`model.head_dropout` is the exported `classifier_dropout`, and the HF head's dropout uses
  it (RobertaForMultipleChoice has no head dropout of its own: it uses hidden_dropout_prob)."""
  rate = run.config.model.head_dropout
  assert hf_model.config.classifier_dropout == rate == 0.25
  if isinstance(hf_model, transformers.BartForSequenceClassification):
    assert hf_model.classification_head.dropout.p == rate
  elif isinstance(hf_model, transformers.RobertaForSequenceClassification):
    assert hf_model.classifier.dropout.p == rate


def _check_classification(exported, model_cls, kind: str) -> None:
  run, report = exported['run'], exported['report']
  pad = run.data.vocab.pad_id
  cls_tasks = [n for n, f in zip(run.data.task_names, run.data.task_table.families)
               if f == Family.CLASSIFICATION]
  assert cls_tasks
  for task in cls_tasks:
    head = _head(report, task)
    assert head.hf_class == model_cls.__name__
    hf_model = _load(model_cls, head.path)
    _check_head_dropout(run, hf_model)
    record = tasks.record_for_task(task)
    assert hf_model.config.num_labels == record.num_classes
    assert [hf_model.config.id2label[i] for i in range(record.num_classes)] == list(
        record.label_names)
    task_id = run.data.task_table.task_id(task)
    tokenizer = transformers.AutoTokenizer.from_pretrained(head.path)
    examples = demo.examples(record.slug, 'validation')[:NUM_EXAMPLES]
    seen = 0
    for arrays in _sub_batches(run, task):
      segments = [s[0] for s in _segments(arrays)]
      packed = np.asarray(run.model.classify(arrays).logits)[:len(segments),
                                                              :record.num_classes]
      batch = _unpacked(segments, pad, run.config.model.type, task_id)
      unpacked = np.asarray(run.model.classify(batch).logits)[:, :record.num_classes]
      with torch.no_grad():
        theirs = hf_model(**_torch_inputs(batch)).logits.numpy()
      _assert_close(kind, unpacked, theirs)
      _assert_close(kind + ' (packed)', packed, theirs)
      # The model card's recipe (tokenizer(text_a, text_b)) gives exactly these inputs.
      for segment, ex in zip(segments, examples[seen:]):
        enc = tokenizer(ex['text_a'], ex['text_b'] or None)['input_ids']
        assert list(enc) == segment.tolist(), (task, ex)
      seen += len(segments)
    assert seen == NUM_EXAMPLES


def _check_span(exported, model_cls, kind: str) -> None:
  run, report = exported['run'], exported['report']
  task = next(n for n, f in zip(run.data.task_names, run.data.task_table.families)
              if f == Family.SPAN)
  head = _head(report, export.SPAN_HEAD_DIRNAME)
  assert head.hf_class == model_cls.__name__ and head.tasks == [task]
  hf_model = _load(model_cls, head.path)
  rows = 0
  for arrays in _sub_batches(run, task):
    real = arrays['segment_ids'][:, 0] > 0  # Window rows (example e = row e).
    windows = [arrays['input_ids'][r][arrays['segment_ids'][r] > 0] for r in np.flatnonzero(real)]
    batch = _unpacked(windows, run.data.vocab.pad_id, run.config.model.type,
                      run.data.task_table.task_id(task))
    ours = run.model.span(batch)
    with torch.no_grad():
      theirs = hf_model(**_torch_inputs(batch))
    mask = batch['span_mask']
    for name in ('start_logits', 'end_logits'):
      _assert_close(kind, np.asarray(getattr(ours, name))[mask],
                    getattr(theirs, name).numpy()[mask])
    # Packed layout: the same rows, as training and evaluation see them (candidates only).
    packed = run.model.span(arrays)
    cand = arrays['span_mask'][real]
    length = batch['input_ids'].shape[1]
    for name in ('start_logits', 'end_logits'):
      theirs_rows = getattr(theirs, name).numpy()
      ours_rows = np.asarray(getattr(packed, name))[real][:, :length]
      _assert_close(kind + ' (packed)', ours_rows[cand[:, :length]],
                    theirs_rows[cand[:, :length]])
    rows += len(windows)
  assert rows >= NUM_EXAMPLES


def _choice_examples(run, task: str) -> list[list[np.ndarray]]:
  return [choices for arrays in _sub_batches(run, task) for choices in _segments(arrays)]


def _our_choice_scores(run, task: str) -> tuple[np.ndarray, np.ndarray]:
  """Our scores [E, C] of the task's examples: unpacked (one choice per row, one call) and
  packed (the training layout, one call per sub-batch)."""
  examples = _choice_examples(run, task)
  assert len(examples) == NUM_EXAMPLES
  rows = [c for choices in examples for c in choices]
  batch = _unpacked(rows, run.data.vocab.pad_id, run.config.model.type,
                    run.data.task_table.task_id(task))
  width = max(len(choices) for choices in examples)
  index = np.zeros((len(examples), width), np.int32)
  mask = np.zeros((len(examples), width), bool)
  flat, k = batch['example_index'][:, 0], 0
  for e, choices in enumerate(examples):
    index[e, :len(choices)] = flat[k:k + len(choices)]
    mask[e, :len(choices)] = True
    k += len(choices)
  batch['example_index'], batch['choice_mask'] = index, mask
  unpacked = np.asarray(run.model.choose(batch).logits)
  packed = [np.asarray(run.model.choose(arrays).logits)[:len(_segments(arrays))]
            for arrays in _sub_batches(run, task)]
  packed = np.concatenate([p[:, :width] for p in packed])
  return unpacked, packed


def _check_choice_tokenization(run, task: str, path: str) -> None:
  """The recipe of the card and muppet_head.json gives exactly our multiple-choice inputs."""
  tokenizer = transformers.AutoTokenizer.from_pretrained(path)
  slug = tasks.record_for_task(task).slug
  examples = demo.examples(slug, 'validation')[:NUM_EXAMPLES]
  for ex, choices in zip(examples, _choice_examples(run, task)):
    first = ex['context'] + ' ' + ex['question']
    for choice, segment in zip(ex['choices'], choices):
      assert tokenizer(first, choice)['input_ids'] == segment.tolist(), ex


def _hf_choice_inputs(run, task: str) -> list[dict[str, np.ndarray]]:
  """Per example, its choices as right-padded rows (what the HF model gets)."""
  return [_unpacked(choices, run.data.vocab.pad_id, run.config.model.type, 0)
          for choices in _choice_examples(run, task)]


def _check_card(exported) -> None:
  out, report, run = exported['out'], exported['report'], exported['run']
  with open(os.path.join(out, 'README.md')) as f:
    card = f.read()
  assert f'Steps trained: {report.step}' in card
  for task in run.data.task_names:
    assert f'`{task}`' in card
  for head in report.heads:
    assert f'heads/{head.name}' in card
    with open(os.path.join(head.path, export.HEAD_INFO_FILENAME)) as f:
      info = json.load(f)
    assert info['hf_class'] == head.hf_class and info['tasks'] == head.tasks
    # Every head directory is self-contained: weights, config and tokenizer.
    assert transformers.AutoTokenizer.from_pretrained(head.path).pad_token_id == (
        run.data.vocab.pad_id)
  # The latest eval line of metrics.jsonl, at the exported step.
  assert report.eval_step == report.step and report.eval_metrics
  for task, metrics in report.eval_metrics.items():
    assert f'`{task}`' in card
  record = tasks.record_for_task(run.data.task_names[0])
  assert ', '.join(record.label_names) in card


# --- RoBERTa ---------------------------------------------------------------------------------


def test_roberta_backbone_loads_and_matches(roberta_export):
  run, out = roberta_export['run'], roberta_export['out']
  _check_restored_params(roberta_export['workdir'], run)
  model = _load(transformers.AutoModel, out)
  assert isinstance(model, transformers.RobertaModel)
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer.vocab_size == run.data.vocab.vocab_size or len(tokenizer) == (
      run.data.vocab.vocab_size)
  task = run.data.task_names[0]
  segments = [s[0] for s in _segments(_sub_batches(run, task)[0])]
  batch = _unpacked(segments, run.data.vocab.pad_id, 'roberta', 0)
  ours = run.model.backbone(batch['input_ids'], batch['segment_ids'] > 0)
  with torch.no_grad():
    theirs = model(**_torch_inputs(batch)).last_hidden_state.numpy()
  mask = batch['segment_ids'] > 0
  _assert_close('roberta backbone hidden', np.asarray(ours)[mask], theirs[mask])


def test_roberta_classification_heads(roberta_export):
  _check_classification(roberta_export, transformers.RobertaForSequenceClassification,
                        'RobertaForSequenceClassification')


def test_roberta_multiple_choice_head(roberta_export):
  run, report = roberta_export['run'], roberta_export['report']
  task = next(n for n, f in zip(run.data.task_names, run.data.task_table.families)
              if f == Family.MULTIPLE_CHOICE)
  head = _head(report, export.CHOICE_HEAD_DIRNAME)
  assert head.hf_class == 'RobertaForMultipleChoice' and head.tasks == [task]
  hf_model = _load(transformers.RobertaForMultipleChoice, head.path)
  _check_head_dropout(run, hf_model)
  _check_choice_tokenization(run, task, head.path)
  ours, packed = _our_choice_scores(run, task)
  for e, batch in enumerate(_hf_choice_inputs(run, task)):
    n = batch['input_ids'].shape[0]
    with torch.no_grad():
      inputs = {k: v[None] for k, v in _torch_inputs(batch).items()}  # [1, n, L]
      theirs = hf_model(**inputs).logits.numpy()
    _assert_close('RobertaForMultipleChoice', ours[e:e + 1, :n], theirs)
    _assert_close('RobertaForMultipleChoice (packed)', packed[e:e + 1, :n], theirs)


def test_roberta_span_head(roberta_export):
  _check_span(roberta_export, transformers.RobertaForQuestionAnswering,
              'RobertaForQuestionAnswering')


def test_roberta_model_card(roberta_export):
  _check_card(roberta_export)
  names = {h.name for h in roberta_export['report'].heads}
  assert names == {*[n for n in roberta_export['run'].data.task_names
                     if tasks.record_for_task(n).family == Family.CLASSIFICATION],
                   export.CHOICE_HEAD_DIRNAME, export.SPAN_HEAD_DIRNAME}


def test_errors_name_the_problem(roberta_export, tmp_path):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(workdir_lib.WorkdirError, match='no checkpoints'):
    export.export(str(empty), str(tmp_path / 'out'))
  assert not (empty / 'checkpoints').exists()  # Nothing created in the workdir.
  with pytest.raises(workdir_lib.WorkdirError, match='does not exist'):
    export.export(str(tmp_path / 'missing'), str(tmp_path / 'out'))
  steps = ', '.join(map(str, conftest.TRAINED_DEMO_CHECKPOINTS))
  with pytest.raises(workdir_lib.WorkdirError, match=rf'step 7 .*available steps: \[{steps}\]'):
    export.export(roberta_export['workdir'], str(tmp_path / 'out'), step=7)


def test_cli(roberta_export, tmp_path, capsys):
  """`python -m muppet_jax.export`: --step selects the checkpoint; errors exit non-zero."""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  out = tmp_path / 'cli'
  proc = subprocess.run(
      [sys.executable, '-m', 'muppet_jax.export', '--workdir', roberta_export['workdir'],
       '--out', str(out), '--step', str(conftest.TRAINED_DEMO_STEPS)], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'RobertaForMultipleChoice' in proc.stdout
  with open(out / 'model.safetensors', 'rb') as a, open(
      os.path.join(roberta_export['out'], 'model.safetensors'), 'rb') as b:
    assert a.read() == b.read()
  # The error path of the same entry point, in-process (a second interpreter costs ~10 s).
  with pytest.raises(SystemExit, match=r'error: no checkpoint for step 5 .*available steps'):
    export.cli(roberta_export['workdir'], str(tmp_path / 'cli2'), step=5)


# --- BART ------------------------------------------------------------------------------------


def test_bart_backbone_loads_and_matches(bart_export):
  run, out = bart_export['run'], bart_export['out']
  _check_restored_params(bart_export['workdir'], run)
  model = _load(transformers.AutoModel, out)
  assert isinstance(model, transformers.BartModel)
  _load(transformers.BartForConditionalGeneration, out)
  task = run.data.task_names[0]
  segments = [s[0] for s in _segments(_sub_batches(run, task)[0])]
  batch = _unpacked(segments, run.data.vocab.pad_id, 'bart', 0)
  ids = torch.tensor(batch['input_ids'], dtype=torch.long)
  decoder_ids = transformers.models.bart.modeling_bart.shift_tokens_right(
      ids, model.config.pad_token_id, model.config.decoder_start_token_id)
  ours = run.model.backbone(batch['input_ids'], batch['segment_ids'] > 0,
                            np.asarray(decoder_ids, np.int32))
  with torch.no_grad():
    theirs = model(input_ids=ids, attention_mask=_torch_inputs(batch)['attention_mask'],
                   decoder_input_ids=decoder_ids).last_hidden_state.numpy()
  mask = batch['segment_ids'] > 0
  _assert_close('bart backbone decoder hidden', np.asarray(ours)[mask], theirs[mask])


def test_bart_classification_heads(bart_export):
  _check_classification(bart_export, transformers.BartForSequenceClassification,
                        'BartForSequenceClassification')


def test_bart_multiple_choice_head(bart_export):
  """BART's documented form: a one-label BartForSequenceClassification scored per choice."""
  run, report = bart_export['run'], bart_export['report']
  task = next(n for n, f in zip(run.data.task_names, run.data.task_table.families)
              if f == Family.MULTIPLE_CHOICE)
  head = _head(report, export.CHOICE_HEAD_DIRNAME)
  assert head.hf_class == 'BartForSequenceClassification' and head.num_labels == 1
  hf_model = _load(transformers.BartForSequenceClassification, head.path)
  _check_head_dropout(run, hf_model)
  _check_choice_tokenization(run, task, head.path)
  ours, packed = _our_choice_scores(run, task)
  for e, batch in enumerate(_hf_choice_inputs(run, task)):
    n = batch['input_ids'].shape[0]
    with torch.no_grad():
      theirs = hf_model(**_torch_inputs(batch)).logits.numpy()[:, 0][None]  # [1, n]
    _assert_close('BART multiple choice (BartForSequenceClassification)', ours[e:e + 1, :n],
                  theirs)
    _assert_close('BART multiple choice (packed)', packed[e:e + 1, :n], theirs)


def test_bart_span_head(bart_export):
  _check_span(bart_export, transformers.BartForQuestionAnswering, 'BartForQuestionAnswering')


def test_bart_model_card(bart_export):
  _check_card(bart_export)
  with open(os.path.join(bart_export['out'], 'README.md')) as f:
    card = f.read()
  assert 'BartForMultipleChoice' in card  # Explains the documented multiple-choice form.
  assert 'BartForConditionalGeneration' in card


# --- Long inputs: tokenizer limits, pipelines and the model card's own snippets --------------

# The demo models' positions (configs/demo.py): RoBERTa 130 = 128 tokens + padding offset 2
# (positions start after pad id 1); BART 128, all usable.
USABLE_POSITIONS = {'roberta': 128, 'bart': 128}
LONG_TEXT = ' '.join(['pre-finetuning'] * 3_000)  # 3,000 words: far more than 128 tokens.


@pytest.fixture(params=['roberta', 'bart'])
def exported(request):
  return request.getfixturevalue(f'{request.param}_export')


def test_exported_tokenizers_truncate_to_the_model_positions(exported):
  model_type = exported['report'].model_type
  for path in [exported['out']] + [h.path for h in exported['report'].heads]:
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    assert tokenizer.model_max_length == USABLE_POSITIONS[model_type], path
    ids = tokenizer(LONG_TEXT, truncation=True)['input_ids']
    assert len(ids) == USABLE_POSITIONS[model_type]


def test_text_classification_pipeline_on_a_3000_word_input(exported):
  head = next(h for h in exported['report'].heads
              if h.hf_class.endswith('ForSequenceClassification') and h.num_labels > 1)
  classify = transformers.pipeline('text-classification', model=head.path, truncation=True)
  (result,) = classify(LONG_TEXT)
  labels = transformers.AutoConfig.from_pretrained(head.path).id2label.values()
  assert result['label'] in labels and 0.0 <= result['score'] <= 1.0


def _card_snippets(out: str) -> list[str]:
  with open(os.path.join(out, 'README.md')) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), flags=re.DOTALL)


def _with_long_inputs(code: str) -> str:
  """The snippet with every string on a line marked `# example input` made 3,000 words long."""
  return '\n'.join(re.sub(r'"[^"]*"', lambda _: repr(LONG_TEXT), line)
                   if line.endswith('# example input') else line for line in code.splitlines())


def test_model_card_snippets_run_as_written_long_inputs_included(exported, capsys):
  snippets = _card_snippets(exported['out'])
  assert len(snippets) == 1 + len(exported['report'].heads)  # The backbone, then each head.
  for code in snippets:
    long_code = _with_long_inputs(code)
    assert long_code != code, code  # Every snippet has inputs to replace.
    for variant in (code, long_code):
      exec(compile(variant, 'README.md', 'exec'), {})  # pylint: disable=exec-used
  printed = capsys.readouterr().out.splitlines()
  labels = transformers.AutoConfig.from_pretrained(
      _head(exported['report'], exported['run'].data.task_names[0]).path).id2label.values()
  assert set(labels) & set(printed)  # The classification snippet printed a label name.


@pytest.mark.parametrize('model_type', ['roberta', 'bart'])
def test_scan_layers_export_the_same_tensors(model_type, tmp_path):
  """The HF files written for a backbone do not depend on `model.scan_layers`: stacked
  parameters are written as the unrolled layers' tensors, names, shapes and values."""
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from muppet_jax.models import hf  # pylint: disable=import-outside-toplevel

  hf_config = hf.config_from_shape(
      model_type, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=24,
      max_position_embeddings=40, vocab_size=60, dropout=0.1, attention_dropout=0.1)
  unrolled = hf.build(hf_config, rngs=nnx.Rngs(0))
  scanned = hf.build(hf_config, scan_layers=True, rngs=nnx.Rngs(1))
  hf.from_hf_state_dict(scanned, hf.to_hf_state_dict(unrolled))
  for keep_pooler in (True, False):
    a = export._backbone_tensors(unrolled, model_type, keep_pooler=keep_pooler)  # pylint: disable=protected-access
    b = export._backbone_tensors(scanned, model_type, keep_pooler=keep_pooler)  # pylint: disable=protected-access
    assert list(a) == list(b)
    for name in a:
      assert a[name].shape == b[name].shape and np.array_equal(a[name], b[name]), name
  hf.save(unrolled, hf_config, str(tmp_path / 'unrolled'))
  hf.save(scanned, hf_config, str(tmp_path / 'scanned'))
  for name in ('model.safetensors', 'config.json'):
    with open(tmp_path / 'unrolled' / name, 'rb') as f, open(tmp_path / 'scanned' / name,
                                                             'rb') as g:
      assert f.read() == g.read(), name
