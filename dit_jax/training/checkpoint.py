"""Orbax checkpoints of the train state and the data iterator, written asynchronously and atomically.

Orbax writes each step into a temporary directory and renames it once every
process has finished, so a run killed mid-save leaves the previous checkpoint
as the latest complete one; `cleanup_tmp_directories` removes the leftovers.
"""

import os

import orbax.checkpoint as ocp


class Checkpointer:
    """Saves every `every` steps; keeps the last `keep` plus every `keep_every`-th (0: none)."""

    def __init__(self, workdir, cfg):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, keep_period=cfg.keep_every or None, create=True,
            cleanup_tmp_directories=True, enable_async_checkpointing=True)
        self.every = cfg.every
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data"))

    def latest_step(self):
        return self.manager.latest_step()

    def save(self, step, state, data_state, force=False):
        """Starts an asynchronous save; returns at once (the next save or `wait` joins it)."""
        if force or (self.every and step % self.every == 0):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

    def restore(self, abstract_state, step=None):
        """(state, data_state) of a step (default: the latest), placed by the abstract state's shardings,
        which may describe another mesh than the one that saved it."""
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()

