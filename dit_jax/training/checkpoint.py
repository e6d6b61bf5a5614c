"""Orbax checkpoints of the train state and the data iterator, written asynchronously and atomically.

Orbax writes each step into a temporary directory and renames it once every
process has finished, so a run killed mid-save leaves the previous checkpoint
as the latest complete one; `cleanup_tmp_directories` removes the leftovers.
A complete checkpoint can still be damaged later (a truncated copy, a bad
disk): restoring reports it in one line and falls back to the one before.

The workdir may be remote. Orbax writes gs:// itself (TensorStore's GCS driver); TensorStore writes no other
remote scheme, so there the steps are saved (synchronously) into a local mirror and copied up after each save,
and the remote ones copied down before a restore.
"""

import logging
import os
import shutil
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from dit_jax.utils import paths


@jax.jit
def all_finite(tree):
    """Whether every float in the tree is finite: one scalar, reduced where the arrays live."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.array(True)


def everywhere(ok):
    """True if `ok` holds on every process, so that all of them take the same branch."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.array(ok))))


def one_line(error):
    """The root cause of an error (orbax wraps TensorStore's), cut to one short line."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def quiet_abandoned_reads():
    """When a restore fails, TensorStore still finishes the other reads it had started, and their callbacks
    find orbax's event loop closed; Python would print each as a traceback, through the unraisable hook or,
    from TensorStore's callback threads, through the except hook. They are harmless, so only those are
    dropped."""
    if getattr(sys.unraisablehook, "quiet_abandoned_reads", False):
        return

    def closed_loop(error):
        return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)

    default_unraisable, default_except = sys.unraisablehook, sys.excepthook

    def unraisable_hook(unraisable):
        if not closed_loop(unraisable.exc_value):
            default_unraisable(unraisable)

    def except_hook(kind, error, traceback):
        if not closed_loop(error):
            default_except(kind, error, traceback)
    unraisable_hook.quiet_abandoned_reads = True
    sys.unraisablehook, sys.excepthook = unraisable_hook, except_hook
    # The failed reads whose errors nobody retrieved: asyncio logs each when it collects it (timing-dependent).
    logging.getLogger("asyncio").addFilter(lambda record: not (
        record.getMessage().startswith("Task exception was never retrieved")
        and "async_deserialize" in record.getMessage()))
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited")


class Checkpointer:
    """Saves every `every` steps; keeps the last `keep` plus every `keep_every`-th (0: none); restores
    `restore_step` (0: the newest that reads)."""

    def __init__(self, workdir, cfg):
        self.directory = paths.join(paths.absolute(workdir), "checkpoints")
        self.mirrored = paths.is_remote(self.directory) and paths.scheme(self.directory) != "gs"
        local = self.directory
        if self.mirrored:
            if jax.process_count() > 1:
                raise ValueError(f"Checkpoints on {paths.scheme(workdir)}:// are staged through one host's disk, "
                                 "which a multi-process run cannot share: put the workdir on gs:// or a shared mount.")
            local = paths.mirror(self.directory)
            shutil.rmtree(local, ignore_errors=True)  # the remote steps are the truth
            if paths.path(self.directory).exists():
                paths.download(self.directory, local)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, keep_period=cfg.keep_every or None, create=True,
            cleanup_tmp_directories=True, enable_async_checkpointing=not self.mirrored)
        self.every, self.restore_step = cfg.every, cfg.get("restore_step", 0)
        self.manager = ocp.CheckpointManager(local, options=options, item_names=("state", "data"))
        self.local = local

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, data_state, force=False):
        """Checks that the state is finite (waiting for it: one scalar) and starts an asynchronous save (the
        next save or `wait` joins it); raises FloatingPointError rather than write NaN or inf.

        A checkpoint already at this step (one that did not read, or one newer than the step a run was
        restored from) is replaced.
        """
        if not (force or (self.every and step % self.every == 0)):
            return
        if not all_finite(state):
            raise FloatingPointError(f"The train state holds NaN or inf at step {step} (not saved)")
        if step in self.manager.all_steps():
            self.manager.delete(step)
        # force: orbax would skip a step below its newest, which a run restored from an earlier one must save.
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
        if self.mirrored:
            self._upload(step)

    def _upload(self, step):
        """Copies the finished step up and removes the remote steps the manager no longer keeps."""
        remote, kept = paths.path(self.directory), {str(s) for s in self.manager.all_steps()}
        if remote.exists():
            for child in remote.iterdir():
                if child.name.isdigit() and (child.name not in kept or child.name == str(step)):
                    child.rmtree()
        paths.upload(os.path.join(self.local, str(step)), paths.join(self.directory, str(step)))

    def restore(self, abstract_state):
        """(step, state, data_state) of `restore_step`, else of the newest checkpoint that reads; None if
        there are no checkpoints. The state is placed by the abstract state's shardings, which may describe
        another mesh than the one that saved it. A checkpoint that does not read is reported in one line
        and left in place; if none reads, ValueError says which failed."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if self.restore_step:
            if self.restore_step not in steps:
                raise ValueError(f"checkpoint.restore_step={self.restore_step} is not in {self.directory} "
                                 f"(steps there: {', '.join(map(str, steps)) or 'none'}).")
            steps = [self.restore_step]
        failed = []
        quiet_abandoned_reads()  # before the first read: a failing one's siblings may finish before it raises
        for step in steps:
            try:
                restored, error = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())), None
            except Exception as e:  # noqa: BLE001 (TensorStore, JSON and file errors have no common type)
                restored, error = None, e
            if everywhere(error is None):
                return step, restored.state, restored.data
            failed.append(step)
            cause = one_line(error) if error is not None else "it failed to read on another process"
            if error is not None:
                then = "trying the one before" if step != steps[-1] else "no older one"
                print(f"Checkpoint {step} in {self.directory} does not read ({cause}); left in place, {then}.",
                      flush=True)
        if failed:
            raise ValueError(f"No checkpoint in {self.directory} reads (tried steps {', '.join(map(str, failed))}; "
                             f"step {failed[-1]}: {cause}). Pick one with --config.checkpoint.restore_step=STEP, "
                             "or move the directory away to start afresh.")
        return None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
