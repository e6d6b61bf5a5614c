"""Checkpoints under faults: files damaged after the save, and states that went NaN.

The end-to-end cases (train resuming past a damaged checkpoint, a diverging run, pre-emption of one of two
processes) are in test_train.py, which has the prepared data.
"""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ml_collections import ConfigDict

from dit_jax.training.checkpoint import Checkpointer, all_finite

DEVICE = jax.sharding.SingleDeviceSharding(jax.devices()[0])


def state_at(step):
    """A small train-state-like tree whose values depend on the step."""
    return dict(params=dict(w=jnp.full((64, 64), float(step)), b=jnp.arange(8.0) + step),
                step=jnp.array(step, jnp.int32))


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=DEVICE), state_at(0))


def checkpointer(workdir, **overrides):
    return Checkpointer(str(workdir), ConfigDict(dict(dict(every=1, keep=3, keep_every=0, restore_step=0),
                                                      **overrides)))


def restore(workdir, **overrides):
    reader = checkpointer(workdir, **overrides)
    try:
        return reader.restore(ABSTRACT)
    finally:
        reader.close()


@pytest.fixture
def two_saved(tmp_path):
    """A workdir with checkpoints at steps 1 and 2."""
    saver = checkpointer(tmp_path)
    for step in (1, 2):
        saver.save(step, state_at(step), {"position": step})
    saver.close()
    return tmp_path


def damage(workdir, step):
    """Truncates every array data file of a checkpoint to half its size, as an interrupted copy would."""
    files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", str(step), "state", "**", "d", "*"),
                                  recursive=True) if os.path.isfile(f)]
    assert files, "no data files found: the checkpoint layout changed"
    for f in files:
        os.truncate(f, os.path.getsize(f) // 2)


def assert_state(restored, step):
    got, data = restored[1], restored[2]
    assert restored[0] == step and data == {"position": step}
    jax.tree.map(np.testing.assert_array_equal, got, state_at(step))


def test_restores_the_newest(two_saved):
    assert_state(restore(two_saved), 2)


def test_damaged_newest_is_reported_in_one_line_and_the_one_before_is_used(two_saved, capsys):
    damage(two_saved, 2)
    restored = restore(two_saved)
    assert_state(restored, 1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Checkpoint 2 in ") and "does not read" in lines[0], lines
    assert os.path.isdir(two_saved / "checkpoints" / "2"), "the damaged checkpoint must stay in place"


def test_none_readable_says_which_failed_and_how_to_pick(two_saved, capsys):
    damage(two_saved, 1)
    damage(two_saved, 2)
    with pytest.raises(ValueError) as error:
        restore(two_saved)
    message = str(error.value)
    assert "\n" not in message and "tried steps 2, 1; step 1: " in message, message
    assert "--config.checkpoint.restore_step" in message
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_restore_step_picks_an_older_checkpoint(two_saved):
    assert_state(restore(two_saved, restore_step=1), 1)
    with pytest.raises(ValueError, match=r"restore_step=5 is not in .* \(steps there: 2, 1\)"):
        restore(two_saved, restore_step=5)


def test_a_run_restored_from_an_older_step_replaces_the_newer_checkpoint(two_saved):
    """After a fallback past a damaged step, saving that step again overwrites the damaged files."""
    damage(two_saved, 2)
    saver = checkpointer(two_saved)
    assert saver.restore(ABSTRACT)[0] == 1
    saver.save(2, state_at(20), {"position": 20})
    saver.close()
    restored = restore(two_saved)
    assert restored[0] == 2 and restored[2] == {"position": 20}


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_state_with_nan_or_inf_is_never_saved(tmp_path, bad):
    saver = checkpointer(tmp_path)
    saver.save(1, state_at(1), {"position": 1})
    state = state_at(2)
    state["params"]["b"] = state["params"]["b"].at[3].set(bad)
    with pytest.raises(FloatingPointError, match=r"NaN or inf at step 2 \(not saved\)"):
        saver.save(2, state, {"position": 2})
    saver.close()
    assert os.listdir(tmp_path / "checkpoints") == ["1"]


def test_all_finite_looks_at_every_float_leaf():
    state = state_at(1)
    assert bool(all_finite(state))
    assert not bool(all_finite(dict(state, opt=dict(mu=jnp.array([0.0, -np.inf])))))
    assert bool(all_finite(dict(step=jnp.array(3), rng=jax.random.PRNGKey(0))))  # integers only
