"""MUPPET pre-finetuning of BART-base on all four families (paper Table 7), with R3F.

  python -m muppet_jax.data.prepare --mixture muppet_all --data_dir gs://BUCKET/tensorflow_datasets
  python -m muppet_jax.main --config configs/bart_base.py --workdir gs://BUCKET/muppet/bart_base \
      --config.data.tfds_data_dir=gs://BUCKET/tensorflow_datasets

Token budget 1,024 per device (one 1,024-token row); summaries up to 256 tokens.
"""

from muppet_jax import config_lib


def get_config():
  c = config_lib.default()  # Paper Table 7: lr 6e-5, otherwise as RoBERTa.
  c.model.type = 'bart'
  c.model.init_from = 'facebook/bart-base'  # HF hub id or local directory.
  c.model.hidden_size = 768  # Shape for random init only; init_from's config.json wins.
  c.model.num_layers = 6
  c.model.num_heads = 12
  c.model.intermediate_size = 3072
  c.model.max_position_embeddings = 1024
  # bf16 compute with float32 master weights (parameters, gradients, Adam state): the norm on
  # TPU (the chip's matmul unit is bf16; a float32 matmul is one bf16 pass at default precision
  # anyway) and what the paper did in fp16. It halves the activations' bytes, which bound the step
  # (docs/COMPILE.md). --config.model.dtype=float32 for full-precision activations.
  c.model.dtype = 'bfloat16'
  # Keep the matmul outputs, recompute the elementwise rest in the backward pass. Measured on
  # v5e-64 without R3F (docs/COMPILE.md): 'none' 2.1 GiB per chip, 16.9 GB per update (XLA),
  # 6.4 GB of it in HBM, 21 ms estimated; 'dots_saveable' 1.2 GiB, 13.4 GB, 4.1 GB, 16 ms (+7%
  # FLOPs).
  c.model.remat = 'dots_saveable'
  c.model.scan_layers = True  # Stacked layers run by a scan: compile cost independent of depth.
  # Embedding rows padded 50,265 -> 51,200, so that they split over the data axis in whole
  # 8-row tiles (64 devices: 800 rows each; 32: 1,600; 128: 400): the table's gather and its
  # gradient's reduction need no transposed or re-tiled float32 copies of it (v5e-64,
  # docs/COMPILE.md: 128 -> 1024 took bart_base's HBM bytes per update 4.14 -> 3.84 GB).
  c.model.vocab_multiple = 1024
  c.data.mixture = 'muppet_all'  # Classification, commonsense, MRC and summarization.
  c.data.rows = 1  # One 1,024-token row per device (paper: max tokens 1,024).
  c.data.length = 1024
  c.data.max_examples = 32
  c.data.decoder_length = 256
  c.train.r3f.enabled = True  # The paper found R3F pivotal for BART.
  c.train.r3f.noise = 'normal'  # Seq2seq default of the authors' R3F code.
  c.train.r3f.one_pass = True  # Clean and noised inputs as one doubled batch (same gradients).
  c.optim.learning_rate = 6e-5
  # ZeRO-1: each data replica keeps and updates 1/D of the Adam moments. Not for memory (the
  # replicated state fits) but for bytes: replicated AdamW reads and writes every float32
  # parameter, gradient and moment on every device, each update. On v5e-64 it cuts the
  # step's bytes by 28% (21% with R3F): 39 -> 28 ms (docs/COMPILE.md).
  c.optim.shard_moments = True
  # Master weights split over mesh.data as well (with their moments): each update gathers the
  # matmul kernels once in bfloat16 and reduce-scatters the gradient, and no full copy of the
  # weights goes into or out of the step (v5e-64 executable: 18.4 -> 15.7 GB, docs/COMPILE.md).
  c.optim.shard_params = True
  return config_lib.lock(c)
