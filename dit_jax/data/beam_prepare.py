"""`prepare` as an Apache Beam pipeline, for datasets too big for one job (`python -m dit_jax.prepare --runner=…`).

    shard indices → WriteShard → all indices → WriteManifest

WriteShard's setup() builds a Preparer (dit_jax/data/prepare.py: the text encoder, VAE and control models), once
per worker process; its process() writes one shard through the same Preparer.prepare_shard an in-process prepare
runs, so shards already finished are kept (a failed pipeline resumes). WriteManifest then writes the manifest
once, with the Preparer its worker already holds. The raw dataset is built here first, before the workers open
it. Every worker must see data_dir (a shared filesystem or bucket on a cluster); the folder is then the one an
in-process prepare writes, file for file.
"""

import os
import shlex

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from dit_jax.data import prepare

_PREPARERS = {}  # one per settings and worker process, shared by the DoFns that run there


def _preparer(config, data_dir):
    key = (config.to_json_best_effort(sort_keys=True), str(data_dir))
    if key not in _PREPARERS:
        _PREPARERS[key] = prepare.Preparer(config, data_dir)
    return _PREPARERS[key]


class WriteShard(beam.DoFn):
    """Writes the shards whose indices it is given; yields each index when its shard is on disk."""

    def __init__(self, config, data_dir):
        super().__init__()
        self.config, self.data_dir = config, data_dir
        self.preparer = None

    def setup(self):
        self.preparer = _preparer(self.config, self.data_dir)

    def process(self, element):
        self.preparer.prepare_shard(element)
        yield element


class WriteManifest(beam.DoFn):
    """Given the list of every shard index (so it runs after the last shard), writes the manifest."""

    def __init__(self, config, data_dir):
        super().__init__()
        self.config, self.data_dir = config, data_dir

    def process(self, element):
        preparer = _preparer(self.config, self.data_dir)
        if len(element) != preparer.num_shards():
            raise ValueError(f"{len(element)} of {preparer.num_shards()} shards written")
        preparer.write_manifest(preparer.read_summaries())
        yield preparer.out


def pipeline_options(runner, options=""):
    """Beam's options: --runner and the command line `options` (e.g. "--direct_num_workers=2
    --direct_running_mode=multi_processing", or a cluster's --project/--region/--temp_location...)."""
    return PipelineOptions([f"--runner={runner}", *shlex.split(options)])


def local_runner(options):
    """Beam's FnApiRunner, which DirectRunner runs when it does not first fetch and start its Go runner (Prism, a
    download from GitHub that an offline machine cannot make): it honours --direct_num_workers and
    --direct_running_mode=multi_processing, so DirectRunner means the same on and off line."""
    from apache_beam.portability.api import beam_provision_api_pb2  # pylint: disable=import-outside-toplevel
    from apache_beam.runners.portability import portable_runner  # pylint: disable=import-outside-toplevel
    from apache_beam.runners.portability.fn_api_runner import fn_runner  # pylint: disable=import-outside-toplevel
    encoded = portable_runner.JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def run(config, data_dir, runner, options=""):
    """Prepares the dataset `config` names under data_dir with Beam's `runner`; returns the manifest."""
    folder = prepare.prepared_dir(config, data_dir)  # a bad control setting fails here, in one line
    if os.path.exists(os.path.join(folder, prepare.MANIFEST)):
        return prepare.read_manifest(folder)
    prepare.check_clips(config)
    source = prepare.load_source(config, data_dir)  # built once here; the workers only open it
    num_shards = prepare.num_shards(config, len(source))
    options = pipeline_options(runner, options)
    with beam.Pipeline(runner=local_runner(options) if runner == "DirectRunner" else None,
                       options=options) as pipeline:
        _ = (pipeline
             | "Shards" >> beam.Create(range(num_shards))
             | "Spread" >> beam.Reshuffle()
             | "WriteShard" >> beam.ParDo(WriteShard(config, data_dir))
             | "AllShards" >> beam.combiners.ToList()
             | "WriteManifest" >> beam.ParDo(WriteManifest(config, data_dir)))
    return prepare.read_manifest(folder)
