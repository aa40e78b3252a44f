"""MUPPET pre-finetuning of BART-large on all four families (paper Table 7), with R3F.

  python -m muppet_jax.data.prepare --mixture muppet_all --data_dir gs://BUCKET/tensorflow_datasets
  python -m muppet_jax.main --config configs/bart_large.py --workdir gs://BUCKET/muppet/bart_large \
      --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets
"""

from muppet_jax import config_lib


def get_config():
  c = config_lib.default()  # Paper Table 7.
  c.model.type = 'bart'
  c.model.init_from = 'facebook/bart-large'  # HF hub id or local directory.
  c.model.hidden_size = 1024  # Shape for random init only; init_from's config.json wins.
  c.model.num_layers = 12
  c.model.num_heads = 16
  c.model.intermediate_size = 4096
  c.model.max_position_embeddings = 1024
  c.model.dtype = 'bfloat16'  # bf16 compute, fp32 master weights.
  # Keep the matmul outputs, recompute the elementwise rest (LayerNorms, GELU, dropout) in the
  # backward pass instead of storing it. Measured on v5e-64 with R3F (docs/COMPILE.md): 'none'
  # 10.4 GiB per chip, 76.8 GB per update (XLA), 25.9 GB of it in HBM, 94 ms estimated;
  # 'dots_saveable' 5.5 GiB, 65.8 GB, 15.5 GB, 80 ms (+6% FLOPs). 'full' recomputes every
  # forward matmul (~30% more FLOPs).
  c.model.remat = 'dots_saveable'
  c.model.scan_layers = True  # Stacked layers run by a scan: compile cost independent of depth.
  # Embedding rows padded 50,265 -> 51,200, so that they split over the data axis in whole
  # 8-row tiles (64 devices: 800 rows each; 32: 1,600; 128: 400): the table's gather and its
  # gradient's reduction need no transposed or re-tiled float32 copies of it (v5e-64,
  # docs/COMPILE.md: 128 -> 1024 took bart_base's HBM bytes per update 4.14 -> 3.84 GB).
  c.model.vocab_multiple = 1024
  c.data.mixture = 'muppet_all'
  c.data.rows = 1  # One 1,024-token row per device (paper: max tokens 1,024).
  c.data.length = 1024
  c.data.max_examples = 32
  c.data.decoder_length = 256
  c.train.r3f.enabled = True
  c.train.r3f.noise = 'normal'
  # Clean and noised embeddings as one doubled batch: the weights are read once per slot and the
  # matmuls are twice as big; the same loss and gradients as two passes.
  c.train.r3f.one_pass = True
  c.optim.learning_rate = 6e-5
  c.optim.shard_moments = True  # ZeRO-1: each data replica keeps 1/D of the Adam moments.
  # Master weights split over mesh.data as well (with their moments): each update gathers the
  # matmul kernels once in bfloat16 and reduce-scatters the gradient, and no full copy of the
  # weights goes into or out of the step (v5e-64 executable, R3F on: 70.2 -> 57.6 GB,
  # docs/COMPILE.md).
  c.optim.shard_params = True
  return config_lib.lock(c)
