"""Orbax checkpoints of the train state and the data iterator, written asynchronously and atomically.

Orbax writes each step into a temporary directory and renames it once every
process has finished, so a run killed mid-save leaves the previous checkpoint
as the latest complete one; `cleanup_tmp_directories` removes the leftovers.
A complete checkpoint can still be damaged later (a truncated copy, a bad
disk): restoring reports it in one line and falls back to the one before.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


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


class Checkpointer:
    """Saves every `every` steps; keeps the last `keep` plus every `keep_every`-th (0: none); restores
    `restore_step` (0: the newest that reads)."""

    def __init__(self, workdir, cfg):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, keep_period=cfg.keep_every or None, create=True,
            cleanup_tmp_directories=True, enable_async_checkpointing=True)
        self.every, self.restore_step = cfg.every, cfg.get("restore_step", 0)
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, data_state, force=False):
        """Starts an asynchronous save; returns at once (the next save or `wait` joins it).

        Raises FloatingPointError rather than write a state with NaN or inf. A checkpoint already at this
        step (one that did not read, or that a run restored from an earlier step has now redone) is replaced.
        """
        if not (force or (self.every and step % self.every == 0)):
            return
        if not all_finite(state):
            raise FloatingPointError(f"The train state holds NaN or inf at step {step}; not saved")
        if step in self.manager.all_steps():
            self.manager.delete(step)
        # force: orbax would skip a step below its newest, which a run restored from an earlier one must save.
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

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
        for step in steps:
            try:
                restored, error = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore())), None
            except Exception as e:  # noqa: BLE001 (TensorStore, JSON and file errors have no common type)
                restored, error = None, e
            if everywhere(error is None):
                return step, restored.state, restored.data
            failed.append(step)
            if error is not None:  # on the processes that failed to read it
                print(f"Checkpoint {step} in {self.directory} does not read ({one_line(error)}); "
                      "left in place, trying the one before.", flush=True)
        if failed:
            raise ValueError(f"No checkpoint in {self.directory} reads (tried steps {', '.join(map(str, failed))}): "
                             "pick one with --config.checkpoint.restore_step=STEP, or move the directory away "
                             "to start afresh.")
        return None

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()
