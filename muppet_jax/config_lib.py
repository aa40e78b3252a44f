"""Default experiment configuration shared by the files in configs/.

Every field is commented here once; the files in configs/ start from `default()` and override
what differs (model shape, token budget, learning rate). Any field can be overridden on the
command line with `--config.section.field=value`; the returned ConfigDict is locked, so a typo
in a key fails instead of being silently ignored.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import ml_collections

from muppet_jax import errors


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
  # Round the token-embedding table's rows up to a multiple of this (0: no padding), e.g. 1024:
  # RoBERTa/BART's 50,265 rows become 51,200, which 64 (or 32, 128, ...) devices split evenly
  # in whole 8-row TPU tiles, so that `optim.shard_params` / `shard_moments` split the table's
  # rows instead of its hidden dimension (whose gathers and gradient reductions then need
  # transposed float32 copies of the whole table) and the gathered shards need no re-tiling
  # copy. The extra rows are zero, never looked up and get no LM logits; Hugging Face exports
  # drop them.
  c.model.vocab_multiple = 0
  c.model.dropout = 0.1  # Hidden dropout (paper: 0.1).
  c.model.attention_dropout = 0.1  # Attention-probability dropout.
  # Dropout of every classification and multiple-choice head (exported as HF
  # `classifier_dropout`). 0.0 = fairseq's `pooler_dropout` default, the authors' setting;
  # 0.1 = Hugging Face's convention.
  c.model.head_dropout = 0.0
  c.model.dtype = 'float32'  # Compute dtype: 'float32' or 'bfloat16' (params stay param_dtype).
  c.model.param_dtype = 'float32'  # Master-weight dtype.
  c.model.remat = 'none'  # Per-layer rematerialisation: 'none', 'full' or 'dots_saveable'.
  # Stack each layer stack's parameters on a leading 'layers' axis and run the layers with a
  # scan: one compiled layer body whatever the depth (compile time and compiler memory stop
  # growing with depth). False: a Python loop of separate layers (unrolled). Same numerics
  # and the same Hugging Face export either way; checkpoints of one layout do not restore
  # into the other.
  c.model.scan_layers = False
  # How attention is computed: 'auto' = the Pallas flash kernel with in-kernel dropout where
  # the step is compiled for TPU (also by `--mode compile` on a CPU host), XLA elsewhere;
  # 'xla' = XLA's fused attention, or with attention dropout the explicit float32 softmax;
  # 'pallas' = the kernel everywhere (Pallas interpret mode off TPU: slow, for tests); 'cudnn'
  # = cuDNN's fused attention (GPU; no attention dropout: JAX fixes its dropout seed at
  # compile time). docs/COMPILE.md compares them.
  c.model.attention = 'auto'

  # --- Data --------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.mixture = 'muppet_encoder'  # seqio mixture: muppet_all, muppet_encoder, muppet_demo.
  # -1: every task of the mixture; k: k of its tasks, `data.required_tasks` and a seeded random
  # choice of the others (paper section 5.1: nested subsets, the same targets in each).
  c.data.num_tasks = -1
  # Comma-separated tasks (names or slugs: 'muppet_rte' or 'rte') every subset of
  # `data.num_tasks` includes (the paper's fine-tuning targets).
  c.data.required_tasks = ''
  # Comma-separated tasks removed from the mixture before anything is chosen (held-out
  # fine-tuning tasks, e.g. 'qnli,cola' for the paper's low-resource study, section 5.3).
  c.data.excluded_tasks = ''
  # Seed of the random choice of `data.num_tasks` tasks. With one seed, a larger k holds every
  # task of a smaller k. -1: the first k of the mixture's order (required tasks first).
  c.data.subset_seed = 0
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
  # Worker processes that build this host's sub-batches (tokenization, packing); 0 = a
  # background thread of the training process. Each worker builds every n-th local slot, so
  # the batches are the same for any value; raise it when one thread cannot feed the devices.
  c.data.num_workers = 0
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
  # Summarization: per-token KL 'sum'med over each example's target tokens (the authors'
  # weight) or their 'mean' (T times weaker, T = the example's real target tokens).
  c.train.r3f.token_reduction = 'sum'
  # Also divide the KL term by log(n) like the task loss (False: only the task loss is).
  c.train.r3f.scale_by_log_n = False
  # The clean and the noised inputs through the backbone as one doubled batch (weights read
  # once, matmuls twice as tall; the same loss and gradients, other dropout draws) instead of
  # two passes. The paper configs turn it on where their compile reports show it pays.
  c.train.r3f.one_pass = False
  # Random-number generator of dropout and R3F noise: 'auto' (the hardware generator 'rbg'
  # when the step is built for TPU or GPU, 'threefry' on CPU), 'threefry', 'rbg', 'unsafe_rbg'.
  # Checkpoints resume only with the generator they were written with (muppet_jax/rng.py).
  c.train.rng_impl = 'auto'
  # Steps whose execution `jax.profiler` traces into WORKDIR/profile/ for TensorBoard's profile
  # plugin (XProf): 'first:last' (e.g. '20:25'), '' = none. Compare the device's time per step
  # with the compile report's roofline estimate.
  c.train.profile_steps = ''
  # R4F: spectral normalisation of the classification and multiple-choice heads' out_proj.
  c.train.r4f = False

  # --- Optimizer (paper Tables 7-8) --------------------------------------------------------
  c.optim = ml_collections.ConfigDict()
  c.optim.learning_rate = 3e-5  # Peak learning rate (RoBERTa 3e-5, BART 6e-5).
  c.optim.warmup_steps = 5_000  # Linear warmup from 0 to the peak.
  c.optim.end_learning_rate = 0.0  # Learning rate at train.steps.
  c.optim.decay_power = 1.0  # Polynomial decay power (1.0 = linear, fairseq's default).
  c.optim.b1 = 0.9  # Adam beta1.
  c.optim.b2 = 0.999  # Adam beta2.
  c.optim.eps = 1e-8  # Adam epsilon.
  c.optim.weight_decay = 0.01  # Decoupled weight decay (AdamW).
  # Decay biases and LayerNorm scales too: True = fairseq's Adam (decays every parameter, the
  # authors' setting); False = the BERT / Hugging Face convention (weights only).
  c.optim.decay_norms_and_biases = True
  c.optim.clip_norm = 0.0  # Global gradient-norm clipping (0 = off, fairseq's default).
  c.optim.shard_moments = False  # ZeRO-1: split Adam moments over mesh.data (1/D memory each).
  # Split the float32 master weights over mesh.data too: each update gathers them once and
  # reduce-scatters the gradient, and the optimizer updates each shard in place (no full
  # copy of the weights in or out of the step).
  c.optim.shard_params = False

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
  c.eval.step = -1  # --mode eval: the checkpoint step to evaluate (-1 = the newest).
  # --mode eval: also write WORKDIR/eval_<step>_predictions/<task>.jsonl (id, prediction, gold).
  c.eval.write_predictions = False

  # --- Fine-tuning (paper section 4; configs/finetune.py) ----------------------------------
  c.finetune = ml_collections.ConfigDict()
  # Pre-finetuned run to start from (its newest checkpoint): backbone, shared multiple-choice
  # and span heads, and (with reuse_head) the task's own classification head. Its model shape
  # and tokenizer replace this config's. Empty: start from model.init_from / random init.
  c.finetune.from_workdir = ''
  c.finetune.reuse_head = False  # Start the task's head from its pre-finetuning head.
  # Train on a random fraction of the train split's records (the paper's low-resource splits,
  # section 5.3), drawn with `finetune.fraction_seed`: the same subset for every run seed and
  # starting point, and a smaller fraction's records are part of every larger one's.
  c.finetune.train_fraction = 1.0
  c.finetune.fraction_seed = 0  # Which random subset `train_fraction` keeps.
  # Epoch-based schedule (fairseq's fine-tuning): > 0 sets train.steps to this many passes over
  # the (fractional) train split, measured by packing a sample of it into sub-batches, and
  # evaluates on the dev split after every epoch. 0: train.steps updates, train.eval_every.
  c.finetune.epochs = 0.0
  # Warmup as a fraction of train.steps (fairseq's RoBERTa GLUE recipe: 0.06); -1: use
  # optim.warmup_steps.
  c.finetune.warmup_fraction = -1.0

  # --- Mesh ----------------------------------------------------------------------------------
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1  # Devices on the data axis; -1 = all (divided by mesh.model).
  c.mesh.model = 1  # Devices on the model (tensor-parallel) axis.

  # --- Multi-process runs (`jax.distributed`; docs/ARCHITECTURE.md, Faults) -------------------
  c.distributed = ml_collections.ConfigDict()
  # A process whose heartbeats stop for this long (killed, crashed, frozen, its host gone) is
  # declared lost: every other process stops with one line naming it and the step, instead of
  # waiting in the next collective. JAX's coordination service gets a longer deadline of its own
  # (260 s for 60; `multihost.service_heartbeat_timeout_s`), a backstop that ends the processes
  # with a fatal error naming no step and must not fire before they have stopped by this one.
  c.distributed.heartbeat_timeout_s = 60
  # The longest the processes wait for each other at a barrier: joining the run
  # (jax.distributed.initialize), a checkpoint's asynchronous commit (orbax) and shutdown.
  c.distributed.barrier_timeout_s = 300

  # --- Ahead-of-time compilation (`--mode compile`, docs/COMPILE.md) ------------------------
  c.compile = ml_collections.ConfigDict()
  # Target: '' = this machine's devices; a Cloud TPU accelerator type 'v4-N', 'v5e-N',
  # 'v5p-N', 'v6e-N' or a JAX topology string such as 'v5e:8x8' (needs libtpu, no TPU); or
  # NVIDIA GPU nodes 'h100x8', 'h200x8', 'a100-80gbx8', '2x8xh100' (nodes x GPUs x GPU; needs
  # the CUDA plugin, jax[cuda12], no GPU).
  c.compile.topology = ''
  c.compile.num_slices = 1  # TPU slices of that topology joined over the data-center network.
  # Memory of one device; 0 = the chip's HBM (TPU), JAX's allocator share of it (GPU), or the
  # local device's.
  c.compile.device_memory_gib = 0.0
  c.compile.peak_tflops = 0.0  # Peak bf16 TFLOP/s of one device (roofline); 0 = the tables.
  c.compile.memory_bandwidth_gbps = 0.0  # Memory GB/s of one device (roofline); 0 = the tables.
  # XLA's own FLOPs and bytes accessed (cost analysis), their attribution and `roofline_xla`.
  # With scanned layers they need two more compiles (the step unrolled at 2 and 3 layers, XLA
  # counts a scan body once): most of the compile time. False: memory, fits, collectives and
  # the headline roofline (from the executable's own count) only.
  c.compile.costs = True
  return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Locks the config so that assigning an unknown key raises (typos fail loudly)."""
  config.lock()
  return config


# --- Validation ------------------------------------------------------------------------------

# (field, test, what a valid value is). Checked by `validate` before any heavy work; a field a
# config does not have (an older saved config) is skipped.
_Rule = tuple[str, Callable[[Any], bool], str]
_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
_RULES: tuple[_Rule, ...] = (
    ('model.type', lambda v: v in ('roberta', 'bart'), "'roberta' or 'bart'"),
    ('model.dtype', lambda v: v in ('float32', 'bfloat16', 'float16'),
     "'float32', 'bfloat16' or 'float16'"),
    ('model.param_dtype', lambda v: v in ('float32', 'bfloat16', 'float16'),
     "'float32', 'bfloat16' or 'float16'"),
    ('model.remat', lambda v: v in ('none', 'full', 'dots_saveable'),
     "'none', 'full' or 'dots_saveable'"),
    ('model.scan_layers', lambda v: isinstance(v, bool), 'True or False'),
    ('model.attention', lambda v: v in ('auto', 'xla', 'pallas', 'cudnn'),
     "'auto', 'xla', 'pallas' or 'cudnn'"),
    ('model.dropout', lambda v: _num(v) and 0 <= v < 1, 'a rate in [0, 1)'),
    ('model.attention_dropout', lambda v: _num(v) and 0 <= v < 1, 'a rate in [0, 1)'),
    ('model.head_dropout', lambda v: _num(v) and 0 <= v < 1, 'a rate in [0, 1)'),
    ('model.vocab_size', lambda v: _int(v) and v >= 0, '>= 0 (0 = the tokenizer size)'),
    ('model.vocab_multiple', lambda v: _int(v) and v >= 0, '>= 0 (0 = no padding)'),
    ('data.num_tasks', lambda v: _int(v) and (v == -1 or v >= 1), '-1 (all tasks) or >= 1'),
    ('data.required_tasks', lambda v: isinstance(v, str), 'comma-separated task names'),
    ('data.excluded_tasks', lambda v: isinstance(v, str), 'comma-separated task names'),
    ('data.subset_seed', lambda v: _int(v) and v >= -1, '-1 (the first tasks) or a seed >= 0'),
    ('data.rows', lambda v: _int(v) and v >= 1, '>= 1'),
    ('data.length', lambda v: _int(v) and v >= 8, '>= 8 tokens'),
    ('data.max_examples', lambda v: _int(v) and v >= 1, '>= 1'),
    ('data.max_choices', lambda v: _int(v) and v >= 2, '>= 2'),
    ('data.decoder_length', lambda v: _int(v) and v >= 1, '>= 1'),
    ('data.span_stride', lambda v: _int(v) and v >= 0, '>= 0 tokens'),
    ('data.batching', lambda v: v in ('heterogeneous', 'batch_homogeneous',
                                      'dataset_homogeneous'),
     "'heterogeneous', 'batch_homogeneous' or 'dataset_homogeneous'"),
    ('data.num_workers', lambda v: _int(v) and v >= 0, '>= 0'),
    ('data.eval_examples', lambda v: _int(v) and (v == -1 or v >= 1), '-1 (all) or >= 1'),
    ('train.steps', lambda v: _int(v) and v >= 1, '>= 1 optimizer updates'),
    ('train.grad_accum', lambda v: _int(v) and v >= 1, '>= 1 accumulation steps'),
    ('train.label_smoothing', lambda v: _num(v) and 0 <= v < 1, 'in [0, 1)'),
    ('train.log_every', lambda v: _int(v) and v >= 1, '>= 1 steps'),
    ('train.eval_every', lambda v: _int(v) and v >= 0, '>= 0 steps (0 = only at the end)'),
    ('train.checkpoint_every', lambda v: _int(v) and v >= 1, '>= 1 steps'),
    ('train.keep_checkpoints', lambda v: _int(v) and v >= 1, '>= 1'),
    ('train.r3f.lambda_', lambda v: _num(v) and v >= 0, '>= 0'),
    ('train.r3f.eps', lambda v: _num(v) and v > 0, '> 0'),
    ('train.r3f.noise', lambda v: v in ('uniform', 'normal'), "'uniform' or 'normal'"),
    ('train.r3f.token_reduction', lambda v: v in ('sum', 'mean'), "'sum' or 'mean'"),
    ('train.r3f.scale_by_log_n', lambda v: isinstance(v, bool), 'True or False'),
    ('train.r3f.one_pass', lambda v: isinstance(v, bool), 'True or False'),
    ('train.rng_impl', lambda v: v in ('auto', 'threefry', 'rbg', 'unsafe_rbg'),
     "'auto', 'threefry', 'rbg' or 'unsafe_rbg'"),
    ('train.profile_steps', lambda v: isinstance(v, str) and (
        v == '' or (v.count(':') == 1 and all(p.isdigit() for p in v.split(':'))
                    and int(v.split(':')[0]) <= int(v.split(':')[1]))),
     "'' or 'first:last' step numbers, e.g. '20:25'"),
    ('optim.learning_rate', lambda v: _num(v) and v > 0, '> 0'),
    ('optim.warmup_steps', lambda v: _int(v) and v >= 0, '>= 0 steps'),
    ('optim.end_learning_rate', lambda v: _num(v) and v >= 0, '>= 0'),
    ('optim.decay_power', lambda v: _num(v) and v > 0, '> 0'),
    ('optim.b1', lambda v: _num(v) and 0 <= v < 1, 'in [0, 1)'),
    ('optim.b2', lambda v: _num(v) and 0 <= v < 1, 'in [0, 1)'),
    ('optim.eps', lambda v: _num(v) and v > 0, '> 0'),
    ('optim.weight_decay', lambda v: _num(v) and v >= 0, '>= 0'),
    ('optim.decay_norms_and_biases', lambda v: isinstance(v, bool), 'True or False'),
    ('optim.clip_norm', lambda v: _num(v) and v >= 0, '>= 0 (0 = off)'),
    ('eval.max_answer_length', lambda v: _int(v) and v >= 1, '>= 1 tokens'),
    ('eval.num_beams', lambda v: _int(v) and v >= 1, '>= 1 (1 = greedy)'),
    ('eval.max_length', lambda v: _int(v) and v >= 2, '>= 2 decoder tokens'),
    ('eval.min_length', lambda v: _int(v) and v >= 0, '>= 0'),
    ('eval.no_repeat_ngram_size', lambda v: _int(v) and v >= 0, '>= 0 (0 = off)'),
    ('eval.step', lambda v: _int(v) and v >= -1, '-1 (the newest checkpoint) or a step >= 0'),
    ('eval.write_predictions', lambda v: isinstance(v, bool), 'True or False'),
    ('finetune.train_fraction', lambda v: _num(v) and 0 < v <= 1, 'in (0, 1]'),
    ('finetune.fraction_seed', lambda v: _int(v) and v >= 0, '>= 0'),
    ('finetune.epochs', lambda v: _num(v) and v >= 0, '>= 0 (0 = train.steps updates)'),
    ('finetune.warmup_fraction', lambda v: _num(v) and (v == -1 or 0 <= v < 1),
     '-1 (optim.warmup_steps) or in [0, 1)'),
    ('mesh.data', lambda v: _int(v) and (v == -1 or v >= 1), '-1 (all devices) or >= 1'),
    ('mesh.model', lambda v: _int(v) and v >= 1, '>= 1'),
    ('distributed.heartbeat_timeout_s', lambda v: _int(v) and v >= 2, '>= 2 seconds'),
    ('distributed.barrier_timeout_s', lambda v: _int(v) and v >= 1, '>= 1 second'),
    ('compile.num_slices', lambda v: _int(v) and v >= 1, '>= 1'),
    ('compile.device_memory_gib', lambda v: _num(v) and v >= 0, '>= 0 (0 = the chip\'s)'),
    ('compile.peak_tflops', lambda v: _num(v) and v >= 0, '>= 0 (0 = the TPU table)'),
    ('compile.memory_bandwidth_gbps', lambda v: _num(v) and v >= 0, '>= 0 (0 = the TPU table)'),
    ('compile.costs', lambda v: isinstance(v, bool), 'True or False'),
)
# Shape fields: only used (and so only checked) for a random-init model.
_SHAPE_RULES: tuple[_Rule, ...] = tuple(
    (f'model.{name}', lambda v: _int(v) and v >= 1, '>= 1')
    for name in ('hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
                 'max_position_embeddings'))


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[bool, Any]:
  node = config
  for part in key.split('.'):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      return False, None
    node = node[part]
  return True, node


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field's value before any heavy work (no files, devices or network).

  Raises:
    errors.ConfigError: the first bad field, named with its value, what would be valid and
      the override that sets it (e.g. `train.steps=-5 ... --config.train.steps=100`).
  """
  rules = _RULES
  found, init_from = _lookup(config, 'model.init_from')
  if not (found and init_from):
    rules += _SHAPE_RULES
  for key, ok, requirement in rules:
    found, value = _lookup(config, key)
    if found and not ok(value):
      raise errors.ConfigError(f'{key}={value!r} is not valid: it must be {requirement}; fix '
                               f'it in the config file or with --config.{key}=...')
  found_heads, heads = _lookup(config, 'model.num_heads')
  found_hidden, hidden = _lookup(config, 'model.hidden_size')
  if not init_from and found_heads and found_hidden and hidden % heads:
    raise errors.ConfigError(
        f'model.hidden_size={hidden} is not divisible by model.num_heads={heads}: every '
        'attention head gets hidden_size / num_heads dimensions; change one of them')
  found_min, min_length = _lookup(config, 'eval.min_length')
  found_max, max_length = _lookup(config, 'eval.max_length')
  if found_min and found_max and min_length > max_length:
    raise errors.ConfigError(f'eval.min_length={min_length} is larger than '
                             f'eval.max_length={max_length}; lower eval.min_length')


def flat_keys(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Every field of `config` as a dotted path ('train.r3f.eps'), sections included."""
  keys = []
  for name, value in config.items():
    keys.append(prefix + name)
    if isinstance(value, ml_collections.ConfigDict):
      keys += flat_keys(value, prefix + name + '.')
  return keys


def unknown_key_message(config: ml_collections.ConfigDict, key: str) -> str | None:
  """Why `--config.<key>=...` cannot be applied (None if `key` is a field of `config`).

  The message names the key, the section that lacks it and the closest existing fields, e.g.
  "Could not override config key 'train.stepz': the config has no field 'train.stepz'; did you
  mean train.steps?".
  """
  found, _ = _lookup(config, key)
  if found:
    return None
  parent, _, leaf = key.rpartition('.')
  found, section = _lookup(config, parent) if parent else (True, config)
  close = []
  if found and isinstance(section, ml_collections.ConfigDict):  # A typo in the last part.
    close = [f'{parent}.{k}' if parent else k
             for k in difflib.get_close_matches(leaf, list(section.keys()), n=3, cutoff=0.6)]
  if not close:  # A typo elsewhere in the path: the closest full paths.
    close = difflib.get_close_matches(key, flat_keys(config), n=3, cutoff=0.75)
  hint = f'did you mean {" or ".join(close)}?' if close else (
      f'the top-level fields are {", ".join(config.keys())}')
  return f"Could not override config key '{key}': the config has no field '{key}'; {hint}"
