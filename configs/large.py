"""MUPPET pre-finetuning of RoBERTa-large on the encoder mixture (paper Table 8).

  python -m muppet_jax.data.prepare --mixture muppet_encoder --data_dir gs://BUCKET/tensorflow_datasets
  python -m muppet_jax.main --config configs/large.py --workdir gs://BUCKET/muppet/roberta_large \
      --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets

On 64 devices one update mixes 64 task sub-batches (the paper's setting). For fewer devices,
raise `--config.train.grad_accum` so that devices x grad_accum stays near 64.
"""

from muppet_jax import config_lib


def get_config():
  c = config_lib.default()  # Paper Table 8.
  c.model.type = 'roberta'
  c.model.init_from = 'FacebookAI/roberta-large'  # HF hub id or local directory.
  c.model.hidden_size = 1024  # Shape for random init only; init_from's config.json wins.
  c.model.num_layers = 24
  c.model.num_heads = 16
  c.model.intermediate_size = 4096
  c.model.dtype = 'bfloat16'  # bf16 compute, fp32 master weights.
  # Keep the matmul outputs, recompute the elementwise rest in the backward pass. Measured on
  # v5e-64 with R3F on (docs/COMPILE.md): 'none' needs 17.8 GiB per chip (16 GiB HBM); 'full'
  # (keep only each layer's input) fits in 3.5 GiB but recomputes every forward matmul (+29%
  # FLOPs); 'dots_saveable' fits in 7.4 GiB and is the fastest of the three.
  c.model.remat = 'dots_saveable'
  c.model.scan_layers = True  # Stacked layers run by a scan: compile cost independent of depth.
  # Embedding rows padded 50,265 -> 51,200, so that they split over the data axis in whole
  # 8-row tiles (64 devices: 800 rows each; 32: 1,600; 128: 400): the table's gather and its
  # gradient's reduction need no transposed or re-tiled float32 copies of it (v5e-64,
  # docs/COMPILE.md: 128 -> 1024 took bart_base's HBM bytes per update 4.14 -> 3.84 GB).
  c.model.vocab_multiple = 1024
  c.data.mixture = 'muppet_encoder'
  c.data.rows = 8  # 8 x 512 tokens per device.
  c.data.length = 512
  # With --config.train.r3f.enabled=True: clean and noised embeddings as one doubled batch (the
  # weights read once per slot, matmuls twice as big; the same loss and gradients as two passes).
  c.train.r3f.one_pass = True
  c.optim.learning_rate = 3e-5
  c.optim.shard_moments = True  # ZeRO-1: each data replica keeps 1/D of the Adam moments.
  # Master weights split over mesh.data as well (with their moments): each update gathers the
  # matmul kernels once in bfloat16 and reduce-scatters the gradient, and no full copy of the
  # weights goes into or out of the step (v5e-64 executable: 56.1 -> 51.8 GB, docs/COMPILE.md).
  c.optim.shard_params = True
  return config_lib.lock(c)
