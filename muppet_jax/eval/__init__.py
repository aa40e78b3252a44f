"""Held-out evaluation: official metrics, the evaluator, generation, and `--mode eval`.

  metrics.py     every task's metric, as its official scoring code computes it
  sentences.py   the offline sentence splitter that ROUGE-Lsum needs
  generate.py    BART greedy / beam search (token-exact with `transformers`), sharded
  evaluator.py   the run's evaluation: sub-batches -> compiled steps on the mesh -> metrics
  run.py         `python -m muppet_jax.main --mode eval`: score a workdir's checkpoint
"""
