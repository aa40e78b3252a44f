"""Ahead-of-time compilation of the train step for a target topology (`--mode compile`).

  python -m muppet_jax.main --config configs/large.py --workdir /tmp/aot --mode compile \
      --config.compile.topology=v5e-64

The parts, one file each:

- `targets`: TPU chips and slices (libtpu describes them on any machine) or the local devices,
  with the documented peak figures the roofline uses.
- `backbone`: the model's shape without weights (offline).
- `program`: the exact train step of `train.run` on abstract shapes; XLA's FLOPs and bytes of
  one whole update (loops counted in full).
- `hlo`: reading the optimized HLO: collectives, and the attribution of every FLOP and byte to
  the part of the model it belongs to.
- `memory`: per-device bytes of the sharded state; the TPU compiler's out-of-memory verdict.
- `flops`: the model-FLOPs formula (MFU) and parameter counts.
- `report`: compile_report.json and the lines `--mode compile` prints.
- `aot`: `compile_step` and `run`, which join them.
"""

from muppet_jax.compile.aot import compile_step, run
from muppet_jax.compile.backbone import Backbone, backbone_config
from muppet_jax.compile.flops import count_params, model_flops_per_token
from muppet_jax.compile.hlo import hlo_collectives, shape_bytes
from muppet_jax.compile.memory import parse_out_of_memory
from muppet_jax.compile.program import abstract_step
from muppet_jax.compile.report import (GIB, REPORT_NAME, CompileReport, format_bytes,
                                       format_report)
from muppet_jax.compile.targets import (CHIPS, CompileTargetError, LibtpuMissingError, Target,
                                        libtpu_available, parse_topology, resolve_target)
