"""The paper's studies as one command each: experiment files -> plan -> runs -> report.

  python -m muppet_jax.experiments run configs/experiments/NAME.py --root DIR \
      [--list] [--index I] [--emit-slurm]
  python -m muppet_jax.experiments report DIR

Modules, one idea each:
  spec.py      what an experiment file says: stages of runs over named axes, starting points
  plan.py      the experiment as an ordered list of runs (ids, configs + overrides), validated
  store.py     the root on disk: whose runs it holds, each run's state and record
  runner.py    runs the plan in this process, one run after another, failures recorded
  results.py   one row per run from its workdir (results.csv)
  tables.py    hyperparameters chosen on dev, mean and spread over seeds, the differences
  figures.py   the paper's figures (PNG, matplotlib Agg)
  report.py    `report DIR`: results.csv, results.md, results.json, figures/
  slurm.py     `--emit-slurm`: SLURM job arrays over launch/slurm_gpu.sbatch, a TPU pod script
  __main__.py  the command line
"""
