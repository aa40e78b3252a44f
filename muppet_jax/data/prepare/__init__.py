r"""Prepares the datasets as TFDS ArrayRecord (once, online) and checks them before a run.

  # On a machine with internet access (pip install -r requirements-data.txt):
  python -m muppet_jax.data.prepare --mixture muppet_encoder --data_dir ~/tensorflow_datasets
  python -m muppet_jax.data.prepare --tasks rte,boolq,swag --data_dir gs://BUCKET/tfds
  # Offline, anywhere: what is there, what is missing (exit status 1 if anything is missing);
  # --verify also reads every record of every shard against the datasets' metadata.
  python -m muppet_jax.data.prepare --mixture muppet_all --data_dir DIR --check [--verify]

Every dataset is written in TFDS's ArrayRecord format (`file_format='array_record'`), which
`tfds.data_source` reads with random access: that is what the training streams
(`streams.open_source`) read, offline. For each dataset of the selection, `prepare`

- skips it if it is already prepared as ArrayRecord;
- converts it in place if it was prepared as TFRecord (e.g. by an earlier `tfds.load`), without
  downloading anything: each TFRecord shard's serialized examples are copied unchanged into an
  ArrayRecord shard of the same name and length, and `array_record` is added to the formats of
  its dataset_info.json (the TFRecord files stay, so `tfds.load` keeps working). TFDS's own
  converter needs apache_beam; this one does not;
- otherwise downloads and prepares it with its TFDS builder (TFDS-native datasets; RACE is two
  configs, race/high + race/middle) or with the local builder of `hf_builders.py` for the six
  datasets that exist only on the Hugging Face hub (these need the `datasets` package);
- for datasets that need a manual download (XSum), prints what to fetch and where to put it
  (`--manual_dir`, TFDS's default `<data_dir>/downloads/manual`), and goes on with the others.

A table at the end lists each dataset, its splits with their number of examples, and its status.
A `prepare` killed in the middle of a dataset leaves it missing (never present): running it
again prepares that dataset again and goes on.

Before a run, `preflight(task_names, data_dir)` checks the same offline in seconds (dataset
directories, formats, splits, shard files and their record counts; no network and no TFDS
builder code) and samples a few records of each split through the dataset's mapper, and raises
one `DataNotPreparedError` naming everything that is missing and the command that prepares it
(or `shards.DamagedDataError` for a damaged shard).

Your own datasets: every function here takes `catalogue.DatasetRecord`s, so a dataset
registered with `tasks.register_dataset` (a TFDS builder of your own, imported before the call)
is prepared by `prepare_records([record], data_dir)` or, once registered in the process, by
`--tasks <slug>`.

The modules: `datasets.py` (TFDS datasets, statuses, reports), `check.py` (on disk, --verify),
`convert.py` (TFRecord -> ArrayRecord), `build.py` (preparing), `readiness.py` (the preflight),
`cli.py` (the command line; `__main__.py` runs it).
"""

from muppet_jax.data.prepare.build import default_manual_dir
from muppet_jax.data.prepare.build import manual_download_problem
from muppet_jax.data.prepare.build import needs_manual_download
from muppet_jax.data.prepare.build import prepare_dataset
from muppet_jax.data.prepare.build import prepare_records
from muppet_jax.data.prepare.check import check_dataset
from muppet_jax.data.prepare.check import check_records
from muppet_jax.data.prepare.check import verify_dataset
from muppet_jax.data.prepare.check import verify_reports
from muppet_jax.data.prepare.cli import format_table
from muppet_jax.data.prepare.cli import main
from muppet_jax.data.prepare.cli import select_records
from muppet_jax.data.prepare.convert import Conversion
from muppet_jax.data.prepare.convert import convert_to_array_record
from muppet_jax.data.prepare.datasets import DataNotPreparedError
from muppet_jax.data.prepare.datasets import DatasetState
from muppet_jax.data.prepare.datasets import RecordReport
from muppet_jax.data.prepare.datasets import Status
from muppet_jax.data.prepare.datasets import TfdsDataset
from muppet_jax.data.prepare.datasets import resolve_data_dir
from muppet_jax.data.prepare.datasets import split_names
from muppet_jax.data.prepare.datasets import tfds_datasets
from muppet_jax.data.prepare.readiness import PREFLIGHT_SAMPLE
from muppet_jax.data.prepare.readiness import MapperSample
from muppet_jax.data.prepare.readiness import prepare_command
from muppet_jax.data.prepare.readiness import preflight
from muppet_jax.data.prepare.readiness import preflight_records
from muppet_jax.data.prepare.readiness import sample_mapper
from muppet_jax.data.shards import DamagedDataError
