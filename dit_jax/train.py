"""Trains a DiT: the same command on one CPU, a GPU, a GPU cluster or every host of a TPU pod.

  python -m dit_jax.train --config=configs/tiny.py --workdir=/tmp/tiny [--config.steps=1000 ...]
  python -m dit_jax.train --config=configs/classifier_fashion.py --workdir=/tmp/cls   # task=classifier

With `task=classifier` the same loop trains a noise-aware classifier for
classifier guidance (dit_jax/models/classifier.py) and logs its accuracy by
timestep bucket and its calibration error.

Prepares the dataset on first use, resumes from the latest complete
checkpoint in the workdir, saves on SIGTERM/SIGINT, and leaves TensorBoard
logs, sample grids and an EMA export (safetensors) in the workdir.
"""

import os
import signal
import subprocess
import sys
import time
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from jax.experimental import multihost_utils
from ml_collections import config_flags

from dit_jax import sampling
from dit_jax.data import pipeline
from dit_jax.models import classifier
from dit_jax.models.controlnet import save_controlnet
from dit_jax.models.pretrained import save_pretrained
from dit_jax.training import sharding, trainer as trainer_lib
from dit_jax.training.checks import validate
from dit_jax.training.checkpoint import Checkpointer
from dit_jax.training.writers import MetricWriter, Progress, check_trackers
from dit_jax.utils import distributed, paths
from dit_jax.models.variants import train_flops_per_image
from dit_jax.utils.flops import device_peak_flops
from dit_jax.utils.video import sample_grid
from dit_jax.utils.visualization import to_uint8


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    distributed.define_flags()
    flags.adopt_module_key_flags(distributed)  # so --help lists them
    config_flags.DEFINE_config_file("config", None, "A recipe under configs/, e.g. configs/tiny.py[:runlocal].")
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs, samples and exports go.")
    flags.mark_flags_as_required(["config", "workdir"])


FLAGS = flags.FLAGS

STARTED = time.time()  # for "time from command to first step"
VERSIONED = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers", "torch", "numpy")


def write_run_info(workdir, config):
    """The resolved config, package versions and git commit, next to the checkpoints."""
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    info = dict(config=config.to_dict(), versions=versions, git_commit=commit or None,
                devices=[str(d) for d in jax.devices()[:1]], device_count=jax.device_count(),
                process_count=jax.process_count(), argv=sys.argv)
    paths.write_json(paths.join(workdir, "run.json"), info, indent=2, default=str)


class SampleGrid:
    """Fixed prompts (or classes, for a label-only model), sampled from the EMA weights every `every` steps."""

    def __init__(self, config, manifest, trainer, model_kwargs, workdir):
        self.workdir = workdir
        setup = sampling.run_setup(config, manifest, model_kwargs)
        settings = sampling.run_settings(config.sample)
        sampling.check_settings(settings)
        self.captions, labels = sampling.grid_conditions(setup, config.sample.prompts)
        cond = {k: jnp.asarray(v) for k, v in sampling.encode_conditions(setup, self.captions, labels).items()}
        ids = jnp.arange(len(self.captions), dtype=jnp.int32)
        self.codec = sampling.Codec(setup)  # latent grids show images: decoded on the host with the data's VAE
        self.sample = jax.jit(lambda ema: sampling.generate_batch(trainer.model(ema), setup, settings, cond, ids))

    def __call__(self, step, ema, writer):
        samples = np.asarray(multihost_utils.process_allgather(self.sample(ema), tiled=True))
        grid = sample_grid(to_uint8(self.codec.decode(samples)), self.captions)  # frame strips for clips
        if jax.process_index() == 0:
            folder = paths.path(self.workdir).joinpath("samples")
            folder.mkdir(parents=True, exist_ok=True)
            paths.save_image(grid, os.fspath(folder / f"step_{step:08d}.png"))
            writer.image(step, "samples", grid)
        return grid


class StopSignal:
    """Turns SIGTERM / SIGINT (pre-emption, Ctrl-C) into a save and exit at a step all processes agree on.

    One process acts on its own flag. Several use JAX's pre-emption service, which jax.distributed sets up:
    it catches SIGTERM on whichever host gets it, tells the others, and makes `reached(step)` true at the
    same step everywhere (one past the furthest any process had got), so they all join one save. SIGINT is
    passed on to it as SIGTERM.
    """

    def __init__(self, start):
        self.requested = None
        self.shared = jax.process_count() > 1
        signal.signal(signal.SIGINT, self._handle)
        if self.shared:
            multihost_utils.reached_preemption_sync_point(start)  # the service counts steps from here
        else:
            signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, _):
        self.requested = signal.Signals(signum).name
        if self.shared:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's handler, which tells the other processes

    def reached(self, step):
        """Called once every step, on every process."""
        if self.shared:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested is not None

    @property
    def reason(self):
        return self.requested if not self.shared else "Pre-emption notice (SIGTERM to a process)"


def export_ema(trainer, state, model_kwargs, workdir, classifier_metadata=None):
    """EMA weights as safetensors + config.json in workdir/export, for sampling and sharing, and sampling.json:
    the run's diffusion and sampling defaults, so `sample --checkpoint` samples it as `--workdir` does. A
    classifier's export also holds classifier.json, what `load_classifier` returns beside the model."""
    ema = multihost_utils.process_allgather(state["ema"], tiled=True)
    if jax.process_index() == 0:
        model = trainer.model(jax.tree.map(jnp.asarray, ema))
        config = {k: (str(jnp.dtype(v)) if k.endswith("dtype") else v) for k, v in model_kwargs.items()}
        export = paths.join(workdir, "export")
        save_pretrained(model, config, export)
        sampling.write_sampling_record(export, sampling.run_record(trainer.config))
        if classifier_metadata is not None:
            classifier.write_metadata(export, classifier_metadata)


def controlnet_from_data(config, manifest):
    """The ControlNet's control channels and size (when 0) from the data's control; one line when the data
    does not carry controlnet.control_type."""
    cn = config.controlnet
    shapes = manifest.get("control_shapes") or {}
    if cn.control_type not in shapes:
        raise ValueError(f"controlnet.control_type={cn.control_type!r} but the data has controls "
                         f"{sorted(shapes) or 'none'}: add it to data.controls or pick one of those.")
    h, _, c = shapes[cn.control_type]  # prepared data is square
    with config.unlocked():
        cn.control_channels = cn.control_channels or c
        cn.control_size = cn.control_size or h


def train(config, workdir, data_dir):
    """The training loop; returns the final state."""
    mesh = validate(config)
    check_trackers(config.log)  # a tracker turned on but not installed fails here, not after the data and compile
    paths.check(workdir, "--workdir")
    paths.check(data_dir, "--data_dir")
    workdir, data_dir = paths.absolute(workdir), os.fspath(paths.path(data_dir))
    is_main = jax.process_index() == 0
    paths.path(workdir).mkdir(parents=True, exist_ok=True)

    manifest = pipeline.ensure_prepared(config, data_dir)
    is_classifier = config.get("task", "diffusion") == "classifier"
    if is_classifier:
        classifier.check_data(manifest)
    pipeline.check_compatible(manifest, config)
    if config.get("controlnet") and config.controlnet.get("base"):
        controlnet_from_data(config, manifest)
    model_kwargs = {**config.model.to_dict(), **pipeline.model_kwargs(manifest, config)}
    classifier_meta = None
    if is_classifier:
        model_kwargs = classifier.classifier_kwargs(model_kwargs)
        classifier_meta = classifier.run_metadata(config, manifest, model_kwargs)
    trainer = trainer_lib.create(config, model_kwargs, mesh)
    loader = pipeline.make_loader(config, manifest, global_batch_size=config.batch_size, seed=config.seed,
                                  sharding=sharding.batch_sharding(mesh))
    checkpoints = Checkpointer(workdir, config.checkpoint)
    restored = checkpoints.restore(trainer.abstract_state)
    if restored:
        start, state, data_state = restored
        loader.set_state(data_state)
        print(f"Resumed from step {start} in {checkpoints.directory}", flush=True)
    else:
        start, state = 0, trainer.init()
    if is_main:
        write_run_info(workdir, config)

    writer = MetricWriter(workdir, config.log, config.to_dict(), active=is_main)
    grids = config.sample.every and trainer.controlnet is None  # sampling with a control: not built yet
    samples = SampleGrid(config, manifest, trainer, model_kwargs, workdir) if grids else None
    stop = StopSignal(start)
    step_fn = None
    flops_per_image = (3 * 2 * classifier.forward_macs(**model_kwargs) if is_classifier
                       else train_flops_per_image(model_kwargs))
    peak = device_peak_flops()
    progress = Progress(start, config.steps, active=is_main)
    window_start, window_steps = time.time(), 0

    try:
        for step in range(start + 1, config.steps + 1):
            batch = next(loader)
            if step_fn is None:  # compiled on every process before any runs its first collective
                step_fn = trainer_lib.compile_step(trainer, batch).lower(state, batch).compile()
                distributed.barrier("train_step_compiled")
            state, metrics = step_fn(state, batch)
            # The host waits for the device only to fetch metrics (first and log steps, as big_vision does),
            # at saves (the finiteness check) and for sample grids; otherwise it dispatches ahead.
            logging_step = step % config.log.every == 0 or step == config.steps
            if step == start + 1 or logging_step:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                # A classifier's t bucket that this batch did not draw has no accuracy (NaN): left out.
                values = {k: v for k, v in values.items() if not k.startswith("accuracy_t") or np.isfinite(v)}
                loss = values["loss"]
                if not np.isfinite(loss):
                    raise FloatingPointError(f"Loss is {loss} at step {step}")
            if step == start + 1:
                if is_main:
                    print(f"First step done {time.time() - STARTED:.1f}s after the command started "
                          "(imports, data, init, compile).", flush=True)
                window_start = time.time()
            else:
                window_steps += 1
            progress.update(loss)  # the count every step, the loss of the last log step

            if logging_step:
                if window_steps:
                    seconds = (time.time() - window_start) / window_steps
                    values["steps_per_s"] = 1 / seconds
                    values["img_per_s"] = config.batch_size / seconds
                    values["tflops_per_device"] = (flops_per_image * config.batch_size / seconds
                                                   / jax.device_count() / 1e12)
                    if peak:
                        values["mfu"] = values["tflops_per_device"] * 1e12 / peak
                writer.scalars(step, values)
                if is_main:
                    progress.summary(step, values)
                window_start, window_steps = time.time(), 0
            if samples and step % config.sample.every == 0:
                samples(step, state["ema"], writer)
            stopping = stop.reached(step)
            checkpoints.save(step, state, loader.get_state(), force=stopping or step == config.steps)
            if stopping:
                print(f"{stop.reason}: saved step {step}; exiting.", flush=True)
                break
    except FloatingPointError as e:
        progress.close()
        checkpoints.close()  # the saves under way finish: they were checked
        last = checkpoints.latest_step()
        kept = f"the last good checkpoint is step {last}" if last else "no checkpoint was written yet"
        raise FloatingPointError(f"{e}; stopped, {kept} ({checkpoints.directory}). "
                                 "Lower optim.lr or raise optim.warmup_steps, then resume.") from None

    progress.close()
    checkpoints.close()
    if int(state["step"]) == config.steps:
        if trainer.controlnet is not None:  # the ControlNet alone; its config.json names the base
            ema = multihost_utils.process_allgather(state["ema"], tiled=True)
            if is_main:
                model = trainer.model(jax.tree.map(jnp.asarray, ema), state["frozen"])
                save_controlnet(model.controlnets[0], trainer.controlnet, paths.join(workdir, "controlnet_export"))
        else:
            export_ema(trainer, state, model_kwargs, workdir, classifier_meta)
        if samples and config.steps % config.sample.every:
            samples(config.steps, state["ema"], writer)
    writer.close()
    return state


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax reports every file it writes at INFO
    distributed.initialize()
    try:
        train(FLAGS.config, FLAGS.workdir, FLAGS.data_dir)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        raise SystemExit(f"train: {e}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main)
