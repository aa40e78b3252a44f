"""Executes notebooks/muppet_colab.ipynb headlessly (nbclient) and checks its outputs.

The kernel is this interpreter's `python3` kernel, started with one CPU device, PYTHONPATH set
to the repository (so the install cell is skipped: nothing touches the network) and the
notebook's working directory in pytest's tmp_path.
"""

import os
import sys

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
pytest.importorskip('ipykernel')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, 'notebooks', 'muppet_colab.ipynb')


def _text(cell) -> str:
  parts = []
  for out in cell.get('outputs', []):
    if out.get('output_type') == 'stream':
      parts.append(out.get('text', ''))
    elif out.get('output_type') in ('execute_result', 'display_data'):
      parts.append(out.get('data', {}).get('text/plain', ''))
  return ''.join(parts)


def test_notebook_is_valid():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  assert all(not c.get('outputs') for c in nb.cells if c.cell_type == 'code'), (
      'commit the notebook without outputs')


@pytest.mark.slow
def test_notebook_runs_end_to_end(tmp_path, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  monkeypatch.setenv('PYTHONPATH', REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  monkeypatch.setenv('MUPPET_NOTEBOOK_WORKDIR', str(tmp_path / 'work'))
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  monkeypatch.setenv('TOKENIZERS_PARALLELISM', 'false')
  monkeypatch.setenv('MPLBACKEND', 'Agg')
  # The kernel must be this interpreter (the venv), whatever kernelspecs are installed.
  monkeypatch.setenv('PATH', os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
  nb = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(
      nb, kernel_name='python3', timeout=900, allow_errors=False,
      resources={'metadata': {'path': REPO}})
  client.execute()  # Raises CellExecutionError on the first failing cell.

  errors = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])
            if o.get('output_type') == 'error']
  assert not errors
  text = '\n'.join(_text(c) for c in nb.cells if c.cell_type == 'code')
  assert 'skipping the install' in text  # The install cell did nothing.
  assert 'pre-finetuned 60 steps' in text
  assert 'tasks with loss curves: [' in text and 'muppet_demo_sentiment' in text
  assert 'fine-tuned 20 steps' in text
  assert 'RobertaModel' in text
  assert 'exported logits shape: (1, 2)' in text
  assert 'backbone hidden shape: (1, ' in text
  work = tmp_path / 'work'
  assert (work / 'prefinetune' / 'metrics.jsonl').is_file()
  assert (work / 'hf_export' / 'config.json').is_file()
