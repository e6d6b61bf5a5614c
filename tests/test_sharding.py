"""The sharded train step on 8 CPU devices: same loss on every mesh, FSDP memory, restore across meshes."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.tiny import get_config
from dit_jax.training import sharding, trainer as trainer_lib
from dit_jax.training.checkpoint import Checkpointer

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (CPU) devices")

MODEL = dict(input_size=8, in_channels=3, text_dim=12, text_len=6)
# These toy steps run for milliseconds but take seconds to compile: LLVM's optimisations off halves that.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def toy_config(data=1, fsdp=1, tensor=1, **model):
    config = get_config("runlocal")
    config.batch_size = 16
    config.mesh = dict(data=data, fsdp=fsdp, tensor=tensor)
    config.model.update({**dict(hidden_size=32, depth=1, patch_size=2), **model})
    config.diffusion.update(prediction="eps", min_snr_gamma=0.0)  # DiT's loss, whatever the recipe uses
    return config


def toy_batch(seed=0):
    rng = np.random.RandomState(seed)
    return dict(image=jnp.asarray(rng.uniform(-1, 1, (16, 8, 8, 3)), jnp.float32),
                text=jnp.asarray(rng.randn(16, 6, 12), jnp.float32),
                text_mask=jnp.asarray(rng.rand(16, 6) > 0.3).at[:, 0].set(True),
                pooled=jnp.asarray(rng.randn(16, 12), jnp.float32))


def run(config, steps=3):
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:np.prod(list(config.mesh.values()))])
    trainer = trainer_lib.create(config, {**config.model.to_dict(), **MODEL}, mesh)
    state = trainer.init()
    step = trainer_lib.compile_step(trainer, toy_batch()).lower(state, toy_batch()).compile(FAST_COMPILE)
    losses = []
    for i in range(steps):
        state, metrics = step(state, jax.device_put(toy_batch(i), sharding.batch_sharding(mesh)))
        losses.append(float(metrics["loss"]))
    return losses, state, trainer


def test_loss_is_the_same_on_every_mesh():
    reference, _, _ = run(toy_config())
    for shape in [(8, 1, 1), (2, 2, 2)]:  # all data, then every axis at once
        losses, state, _ = run(toy_config(*shape))
        np.testing.assert_allclose(losses, reference, atol=1e-5, err_msg=str(shape))
    kernel = state["params"]["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


def test_scanned_blocks_train_the_same_on_a_mesh():
    """scan_blocks (the large recipes' default) stacks sharded weights inside the step: same losses as the loop."""
    loop, _, _ = run(toy_config(depth=2, scan_blocks=False))
    scanned, state, _ = run(toy_config(2, 2, 2, depth=2, scan_blocks=True))
    np.testing.assert_allclose(scanned, loop, atol=1e-5)
    kernel = state["params"]["blocks"][1]["mlp"]["fc1"]["kernel"].get_value()
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")  # stored per block, as sharded


def test_gradient_accumulation_matches_one_big_batch(monkeypatch):
    """accumulate=2 on a 2x2 mesh: the same loss, gradients and AdamW update as one step on the whole batch.

    The step draws timesteps and noise per micro-batch; here the real loss runs on each row alone with a
    key of its own (the row's index), so both steps see the same draws and only the accumulation differs.
    The gradients are read from AdamW's first moment after one step (mu = (1 - b1) g, clipping off).
    """
    loss_and_stats = trainer_lib.loss_and_stats

    def per_row_loss(trainer, params, batch, key, frozen=None):
        rows = {name: x[:, None] for name, x in batch.items() if name != "row"}  # (B, 1, ...): batches of one
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(7), i))(batch["row"])
        losses = jax.vmap(lambda row, key: loss_and_stats(trainer, params, row, key, frozen)[0])(rows, keys)
        return losses.mean(), {}

    monkeypatch.setattr(trainer_lib, "loss_and_stats", per_row_loss)
    batch = dict(toy_batch(), row=jnp.arange(16))

    def one_step(accumulate):
        config = toy_config(data=2, fsdp=2, caption_dropout_prob=0.0)  # the model's own draws would differ
        config.optim.update(accumulate=accumulate, grad_clip=0.0, schedule="constant", warmup_steps=0)
        mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
        trainer = trainer_lib.create(config, {**config.model.to_dict(), **MODEL}, mesh)
        state = trainer.init()
        # Away from adaLN-Zero's zeros, where only the final layer has a gradient.
        leaves, treedef = jax.tree.flatten(state["params"])
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        state["params"] = treedef.unflatten([jax.device_put(x + 0.1 * jax.random.normal(key, x.shape), x.sharding)
                                             for x, key in zip(leaves, keys)])
        state, metrics = trainer_lib.compile_step(trainer, batch).lower(state, batch).compile(FAST_COMPILE)(state, batch)
        grads = optax.tree_utils.tree_get(state["opt_state"], "mu")
        return flat(grads), flat(state["params"]), metrics

    with jax.default_matmul_precision("highest"):
        grads, params, metrics = one_step(1)
        accumulated_grads, accumulated_params, accumulated_metrics = one_step(2)
    for name in ("loss", "grad_norm"):
        np.testing.assert_allclose(accumulated_metrics[name], metrics[name], rtol=1e-5, err_msg=name)
    unused = {name for name, g in grads.items() if not np.abs(g).max()}
    assert len(grads) == len(params) and all("null_" in name for name in unused), unused  # no caption dropout
    for name, want in grads.items():
        np.testing.assert_allclose(accumulated_grads[name], want, rtol=1e-5, atol=1e-5 * np.abs(want).max(),
                                   err_msg=name)
    # The key bias's gradient is zero but for rounding (~1e-9), which Adam divides by eps=1e-8: its update
    # differs by a few 1e-6; a wrong gradient anywhere moves its update by up to 2 lr = 6e-4.
    for name, want in params.items():
        np.testing.assert_allclose(accumulated_params[name], want, rtol=1e-5, atol=1e-5, err_msg=name)


def flat(tree):
    """{path: float64 NumPy array} of a tree of arrays."""
    return {jax.tree_util.keystr(path): np.asarray(x, np.float64)
            for path, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_fsdp_divides_state_memory():
    def state_bytes(fsdp):
        config = toy_config(data=8 // fsdp, fsdp=fsdp, hidden_size=256, num_heads=4)
        mesh = sharding.make_mesh(config.mesh)
        trainer = trainer_lib.create(config, {**config.model.to_dict(), **MODEL}, mesh)
        batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), toy_batch())
        compiled = trainer_lib.compile_step(trainer, batch).lower(trainer.abstract_state, batch).compile(FAST_COMPILE)
        return trainer_lib.state_bytes_per_device(compiled)

    ratio = state_bytes(1) / state_bytes(8)
    assert ratio > 6, f"fsdp=8 keeps {1 / ratio:.2f} of the per-device state, expected about 1/8"


def test_restore_onto_another_mesh(tmp_path):
    _, state, _ = run(toy_config(2, 4, 1), steps=1)
    checkpoints = Checkpointer(str(tmp_path), ml_collections.ConfigDict(dict(every=1, keep=2, keep_every=0)))
    checkpoints.save(1, state, {"position": 7}, force=True)
    checkpoints.close()
    # A save cut off by a kill leaves only a temporary directory: it must be ignored (and cleaned up).
    partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "manifest.ocdbt").write_bytes(b"cut off")
    checkpoints = Checkpointer(str(tmp_path), ml_collections.ConfigDict(dict(every=1, keep=2, keep_every=0)))
    assert checkpoints.latest_step() == 1
    config = toy_config(1, 2, 2)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:4])
    trainer = trainer_lib.create(config, {**config.model.to_dict(), **MODEL}, mesh)
    step, restored, data_state = checkpoints.restore(trainer.abstract_state)
    checkpoints.close()
    assert step == 1 and data_state == {"position": 7}
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    kernel = restored["params"]["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()
    assert kernel.sharding.mesh.shape == {"data": 1, "fsdp": 2, "tensor": 2}


def test_mesh_and_batch_errors():
    with pytest.raises(ValueError, match="does not fit 8 devices"):
        sharding.make_mesh(dict(data=3, fsdp=1, tensor=1))
    with pytest.raises(ValueError, match="uses 4 devices but there are 8"):
        sharding.make_mesh(dict(data=2, fsdp=2, tensor=1))
    with pytest.raises(ValueError, match="Only one mesh axis may be -1"):
        sharding.make_mesh(dict(data=-1, fsdp=-1, tensor=1))
    assert sharding.make_mesh(dict(data=-1, fsdp=2, tensor=2)).shape == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="use a multiple of 8"):
        sharding.check_batch(12, sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1)))


def test_logical_rules_use_each_mesh_axis_once():
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    rules = sharding.DEFAULT_RULES
    assert sharding.logical_to_mesh(("embed", "embed"), (4, 4), mesh, rules) == jax.sharding.PartitionSpec("fsdp", None)
    assert sharding.logical_to_mesh(("embed", "mlp"), (3, 4), mesh, rules) == jax.sharding.PartitionSpec(None, "tensor")
    assert sharding.logical_to_mesh(("vocab", "embed"), (11, 4), mesh, rules) == jax.sharding.PartitionSpec(None, "fsdp")
