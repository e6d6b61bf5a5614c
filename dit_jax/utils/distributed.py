"""Flags shared by train, sample and prepare: joining the other processes, and the prepared-data directory."""

import importlib.util
import os

import jax
from absl import flags
from orbax.checkpoint import multihost

FLAGS = flags.FLAGS
BARRIER_TIMEOUT_S = 24 * 3600  # a barrier may wait for hours of data preparation on the slowest process


def define_data_dir():
    flags.DEFINE_string("data_dir", "~/.cache/dit_jax", "Where prepared datasets live (prepare writes, train and "
                        "sample read).")


def define_flags():
    """For the CLIs that may run as several processes; each defines them only when it is the program."""
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs "
                        "outside TPU pods and SLURM (which are detected automatically).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
    flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
    define_data_dir()


def initialize():
    """Explicit flags, else automatic on TPU pods and SLURM jobs; a single process needs nothing."""
    if FLAGS.coordinator_address:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or importlib.util.find_spec("libtpu"):
        jax.distributed.initialize()


def process_index_count():
    """(index, count) of this process in a job that jax.distributed joined; (0, 1) otherwise, without starting a
    backend (a one-process prepare must not claim the accelerators)."""
    if not jax.distributed.is_initialized():
        return 0, 1
    return jax.process_index(), jax.process_count()


def barrier(name, timeout_s=BARRIER_TIMEOUT_S):
    """Waits until every process has reached `name` (unique per barrier). It goes through the coordination
    service, not a collective: on CPU the first collective of a device group gives up after 30 s (gloo's key
    exchange), too soon when another process is still compiling or preparing its share."""
    if jax.distributed.is_initialized():
        multihost.get_barrier_sync_fn()(key=name, timeout_ms=int(timeout_s * 1000))
