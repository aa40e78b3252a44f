"""Test-session setup: 8 fake CPU devices, set before JAX is imported anywhere.

Sharding tests use the 8 devices; single-device tests build their mesh from one of them.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (TFDS, seqio) start-up noise.
os.environ.setdefault('HF_HUB_OFFLINE', '1')  # Tests use only what they create.
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
