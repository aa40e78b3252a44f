"""Hugging Face checkpoints <-> Flax NNX backbones (`RobertaModel`, `BartModel`).

Public API (docs/ARCHITECTURE.md section 3): `load(path_or_hub_id) -> (model, hf_config)` and
`save(model, hf_config, path)`, plus the pieces the export code reuses: `build`,
`config_from_shape`, `read_tensors`, `to_hf_state_dict`, `from_hf_state_dict`.

The parts, one file each:

- `config`: `config_from_shape` (a `RobertaConfig` / `BartConfig` from `config.model`'s shape
  fields), `build` (the randomly initialised backbone of a config), `usable_positions`.
- `state_dict`: the name mapping between our variables and the PyTorch tensor names, for both
  architectures and both layer layouts (unrolled, scanned): `to_hf_state_dict`,
  `from_hf_state_dict`.
- `files`: checkpoint directories: `check_source` (fail fast on a bad path or hub id),
  `read_tensors` (safetensors / pytorch_model.bin, sharded or not), `read_config`, and the
  errors that name a bad file or source.
- `checkpoint`: `load` and `save`, which join them.
"""

from muppet_jax.models.hf.checkpoint import load, save
from muppet_jax.models.hf.config import (Backbone, Dtype, HFConfig, build, config_from_shape,
                                         usable_positions)
from muppet_jax.models.hf.files import (SourceNotFoundError, WeightsFileError, check_source,
                                        is_hub_id, read_config, read_tensors)
from muppet_jax.models.hf.state_dict import LoadReport, from_hf_state_dict, to_hf_state_dict
