"""MUPPET pre-finetuning of RoBERTa-base on the encoder mixture (paper Table 8).

Prepare the datasets once (online), then train (offline from then on):

  python -m muppet_jax.data.prepare --mixture muppet_encoder --data_dir gs://BUCKET/tensorflow_datasets
  python -m muppet_jax.main --config configs/base.py --workdir gs://BUCKET/muppet/roberta_base \
      --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets

`model.init_from` takes a Hugging Face directory or hub id. One slot per device per
accumulation step; 8 x 512 = 4,096 tokens per slot (the paper's budget is 4,400).
"""

from muppet_jax import config_lib


def get_config():
  c = config_lib.default()  # Paper Table 8: Adam (0.9, 0.999), eps 1e-8, lr 3e-5, wd 0.01.
  c.model.type = 'roberta'
  c.model.init_from = 'FacebookAI/roberta-base'  # HF hub id or local directory.
  c.model.hidden_size = 768  # Shape for random init only; init_from's config.json wins.
  c.model.num_layers = 12
  c.model.num_heads = 12
  c.model.intermediate_size = 3072
  # bf16 compute with float32 master weights (parameters, gradients, Adam state): the norm on
  # TPU (the chip's matmul unit is bf16; a float32 matmul is one bf16 pass at default precision
  # anyway) and what the paper did in fp16. It halves the activations' bytes, which bound the step
  # (docs/COMPILE.md). --config.model.dtype=float32 for full-precision activations.
  c.model.dtype = 'bfloat16'
  # Keep the matmul outputs, recompute the elementwise rest in the backward pass. 'none' stored
  # four [8, 512, 3072] GELU intermediates and the dropout masks of every layer, each stack
  # re-tiled once per layer. v5e-64 without R3F, the executable (docs/COMPILE.md): 22.3 ->
  # 19.9 GB per update, 12.3 -> 5.5 GB of it in HBM, +3.6% FLOPs, 3.0 -> 1.2 GiB per chip:
  # compute-bound. (The unrolled programs behind XLA's own count go the other way, 20.5 -> 24 GB.)
  c.model.remat = 'dots_saveable'
  c.model.scan_layers = True  # Stacked layers run by a scan: compile cost independent of depth.
  # Embedding rows padded 50,265 -> 51,200, so that they split over the data axis in whole
  # 8-row tiles (64 devices: 800 rows each; 32: 1,600; 128: 400): the table's gather and its
  # gradient's reduction need no transposed or re-tiled float32 copies of it (v5e-64,
  # docs/COMPILE.md: 128 -> 1024 took bart_base's HBM bytes per update 4.14 -> 3.84 GB).
  c.model.vocab_multiple = 1024
  c.data.mixture = 'muppet_encoder'  # Every dataset but summarization.
  c.data.rows = 8  # 8 x 512 tokens per device.
  c.data.length = 512
  c.train.r3f.one_pass = True  # With R3F on: clean and noised inputs as one doubled batch.
  c.optim.learning_rate = 3e-5
  # ZeRO-1 alone (optim.shard_moments=True) made the v5e-64 step worse (27 -> 33 GB accessed
  # per update); with the weights split (below) the moments follow them.
  # Master weights split over mesh.data as well (with their moments): each update gathers the
  # matmul kernels once in bfloat16 and reduce-scatters the gradient, and no full copy of the
  # weights goes into or out of the step (v5e-64 executable: 27.8 -> 22.7 GB, docs/COMPILE.md).
  c.optim.shard_params = True
  return config_lib.lock(c)
