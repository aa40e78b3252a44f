"""Default experiment configuration shared by the files in configs/.

Every field is commented here once; the files in configs/ start from `default()` and override
what differs (model shape, token budget, learning rate). Any field can be overridden on the
command line with `--config.section.field=value`; the returned ConfigDict is locked, so a typo
in a key fails instead of being silently ignored.
"""

from __future__ import annotations

import ml_collections


def default() -> ml_collections.ConfigDict:
  """Paper defaults (Tables 7-8) for a RoBERTa-base run on the full encoder mixture."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds parameter init, dropout, R3F noise, the task sampler and data shuffling.

  # --- Model -------------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.type = 'roberta'  # 'roberta' (encoder) or 'bart' (encoder-decoder).
  # Hugging Face directory (config.json + safetensors/pytorch_model.bin) or hub id to start
  # from. Empty: random init from the shape fields below.
  c.model.init_from = ''
  # Shape used when init_from is empty (ignored otherwise: the checkpoint's config wins;
  # the dropout rates below apply in both cases).
  c.model.hidden_size = 768  # d_model.
  c.model.num_layers = 12  # Transformer layers (BART: per stack, encoder and decoder).
  c.model.num_heads = 12  # Attention heads.
  c.model.intermediate_size = 3072  # Feed-forward width.
  c.model.max_position_embeddings = 514  # RoBERTa: 512 + padding offset 2; BART: 1024.
  c.model.vocab_size = 0  # 0: the tokenizer's vocabulary size.
  c.model.dropout = 0.1  # Hidden dropout (paper: 0.1).
  c.model.attention_dropout = 0.1  # Attention-probability dropout.
  c.model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16' (params stay param_dtype).
  c.model.param_dtype = 'float32'  # Master-weight dtype.
  c.model.remat = 'none'  # Per-layer rematerialisation: 'none', 'full' or 'dots_saveable'.

  # --- Data --------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.mixture = 'muppet_encoder'  # seqio mixture: muppet_all, muppet_encoder, muppet_demo.
  c.data.num_tasks = -1  # -1: every task of the mixture; k: the first k (paper section 5.1).
  # Tokenizer: '' = the one stored with model.init_from; 'demo' = the offline demo BPE
  # (trained on the demo text and cached in the workdir); otherwise a directory or hub id.
  c.data.tokenizer = ''
  c.data.tfds_data_dir = ''  # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets).
  c.data.rows = 8  # R: rows per device sub-batch.
  c.data.length = 512  # L: tokens per row (R x L is the per-device token budget).
  c.data.max_examples = 64  # E: most examples packed into one sub-batch.
  c.data.max_choices = 5  # C: most choices of a multiple-choice example.
  c.data.decoder_length = 1  # Ld: decoder tokens per row (summarization; BART only).
  c.data.span_stride = 128  # Tokens of overlap between sliding MRC windows over long contexts.
  # 'heterogeneous' (each slot its own task, paper default), 'batch_homogeneous' (all slots of
  # an update share one task) or 'dataset_homogeneous' (tasks one after another).
  c.data.batching = 'heterogeneous'
  c.data.shuffle_buffer = 10_000  # Examples in each task stream's shuffle buffer.
  c.data.eval_examples = 1_000  # Examples per task at each periodic evaluation (-1 = all).

  # --- Training ----------------------------------------------------------------------------
  c.train = ml_collections.ConfigDict()
  c.train.steps = 200_000  # Total optimizer updates (paper: 200k).
  c.train.grad_accum = 1  # A: accumulation steps per update (slots per update = devices x A).
  c.train.loss_scaling = True  # Divide each example's loss by log(n) (paper eq. 1).
  c.train.label_smoothing = 0.1  # Label smoothing of the summarization loss.
  c.train.log_every = 100  # Steps between metric lines (metrics.jsonl, TensorBoard, stdout).
  c.train.eval_every = 10_000  # Steps between evaluations (0 = only at the end).
  c.train.checkpoint_every = 2_000  # Steps between checkpoints.
  c.train.keep_checkpoints = 3  # Checkpoints kept (oldest deleted first).
  c.train.r3f = ml_collections.ConfigDict()
  c.train.r3f.enabled = False  # R3F: symmetric-KL term between clean and noised forward passes.
  c.train.r3f.lambda_ = 1.0  # Weight of the symmetric KL term.
  c.train.r3f.eps = 1e-5  # Noise scale.
  c.train.r3f.noise = 'uniform'  # 'uniform' (U(-eps, eps)) or 'normal' (N(0, eps)).
  c.train.r4f = False  # R4F: spectral normalisation of classification heads' out_proj.

  # --- Optimizer (paper Tables 7-8) --------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 3e-5  # Peak learning rate (RoBERTa 3e-5, BART 6e-5).
  c.optim.warmup_steps = 5_000  # Linear warmup from 0 to the peak.
  c.optim.end_learning_rate = 0.0  # Learning rate at train.steps.
  c.optim.decay_power = 1.0  # Polynomial decay power (1.0 = linear, fairseq's default).
  c.optim.b1 = 0.9  # Adam beta1.
  c.optim.b2 = 0.999  # Adam beta2.
  c.optim.eps = 1e-8  # Adam epsilon.
  c.optim.weight_decay = 0.01  # Decoupled weight decay (not on biases and LayerNorm).
  c.optim.clip_norm = 0.0  # Global gradient-norm clipping (0 = off, fairseq's default).
  c.optim.shard_moments = False  # ZeRO-1: split Adam moments over mesh.data (1/D memory each).

  # --- Evaluation: span decoding (SQuAD EM/F1) and generation for summarization (ROUGE) ----
  c.eval = ml_collections.ConfigDict()
  # Longest predicted answer span, in tokens. Without a cap the best start + end score is
  # often a long span around the answer; 30 is the SQuAD evaluation convention (BERT's and
  # Hugging Face's run_qa max_answer_length), and gold answers are rarely longer.
  c.eval.max_answer_length = 30
  c.eval.num_beams = 4  # Beam size (1 = greedy).
  c.eval.max_length = 64  # Most decoder tokens, decoder-start token included (HF semantics).
  c.eval.min_length = 0  # Fewest decoder tokens before </s> is allowed.
  c.eval.length_penalty = 1.0  # Beam scores divided by length ** length_penalty.
  c.eval.no_repeat_ngram_size = 3  # Never repeat an n-gram of this size (0 = off).
  c.eval.early_stopping = True  # Stop a beam search once num_beams hypotheses are finished.

  # --- Fine-tuning (paper section 4; configs/finetune.py) ----------------------------------
  c.finetune = ml_collections.ConfigDict()
  # Pre-finetuned run to start from (its newest checkpoint): backbone, shared multiple-choice
  # and span heads, and (with reuse_head) the task's own classification head. Its model shape
  # and tokenizer replace this config's. Empty: start from model.init_from / random init.
  c.finetune.from_workdir = ''
  c.finetune.reuse_head = False  # Start the task's head from its pre-finetuning head.
  c.finetune.train_fraction = 1.0  # Train on the first fraction of the train split.

  # --- Mesh ----------------------------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Devices on the data axis; -1 = all (divided by mesh.model).
  c.mesh.model = 1  # Devices on the model (tensor-parallel) axis.
  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so that assigning an unknown key raises (typos fail loudly)."""
  config.lock()
  return config
