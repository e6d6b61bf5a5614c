"""ControlNet on a frozen DiT: exact identity at initialisation, scales, scan == loop, the partitioned train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from configs.tiny import get_config
from dit_jax.models import controlnet
from dit_jax.models.controlnet import ControlledDiT, ControlNet
from dit_jax.models.pretrained import build_model, flat_weights, save_pretrained
from dit_jax.training import sharding, trainer as trainer_lib

TOY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def randomize(module, seed, scale=0.2):
    """Every parameter replaced by noise, so adaLN-Zero blocks and zero layers do something."""
    state = nnx.state(module, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(module, jax.tree.unflatten(tree, [scale * jax.random.normal(k, x.shape, x.dtype)
                                                 for k, x in zip(keys, leaves)]))
    return module


def toy_base(scan_blocks=False, **kw):
    return randomize(build_model({**TOY, **kw}, scan_blocks=scan_blocks), seed=0)


@pytest.fixture(scope="module")
def bases():
    """The same random 'trained' base as a loop and as a scan over its blocks (tests never change them)."""
    return dict(loop=toy_base(), scan=toy_base(scan_blocks=True))


def inputs(batch=2, seed=0):
    rng = np.random.RandomState(seed)
    return dict(x=jnp.asarray(rng.randn(batch, 8, 8, 4), jnp.float32), t=jnp.asarray(rng.randint(0, 1000, batch)),
                y=jnp.asarray(rng.randint(0, 10, batch)))


@nnx.jit
def run(model, args, controls=None, scales=None):
    """One compiled forward pass (op-by-op dispatch costs more on a loaded CPU)."""
    if controls is None:
        return model(**args)
    return model(**args, controls=controls, scales=scales)


def control(channels=3, size=8, seed=1):
    return jnp.asarray(np.random.RandomState(seed).rand(2, size, size, channels), jnp.float32)


@pytest.mark.parametrize("scan_blocks,remat,dtype", [(False, "none", "float32"), (True, "full", "bfloat16")])
def test_fresh_controlnet_leaves_the_base_exactly(bases, scan_blocks, remat, dtype):
    base = bases["loop"] if dtype == "float32" else toy_base(scan_blocks, remat=remat, dtype=dtype)
    model = ControlledDiT(base, [ControlNet(base, 2, 3, rngs=nnx.Rngs(1))])
    for copy, block in zip(model.controlnets[0].blocks, base.blocks):  # the copies start as the base's blocks
        jax.tree.map(np.testing.assert_array_equal, nnx.state(copy), nnx.state(block))
    np.testing.assert_array_equal(run(model, inputs(), control()), run(base, inputs()))


def test_scales_scan_and_loop(bases):
    """Trained (random) zero layers change the output; scale 0 is the base exactly; scan == loop."""
    loop, scan = bases["loop"], bases["scan"]
    nets = [randomize(ControlNet(loop, 2, 3, rngs=nnx.Rngs(1)), seed=2, scale=0.05)]
    model = ControlledDiT(loop, nets)
    out, plain = run(model, inputs(), control()), run(loop, inputs())
    assert float(jnp.abs(out - plain).max()) > 1e-3
    np.testing.assert_array_equal(run(model, inputs(), control(), [0.0]), plain)

    scanned = ControlledDiT(scan, [ControlNet(scan, 2, 3, rngs=nnx.Rngs(1))])
    nnx.update(scanned, nnx.state(model))
    np.testing.assert_allclose(run(scanned, inputs(), control()), out, atol=1e-5)


def test_two_controlnets_add_scaled_residuals(bases):
    """MultiControlNet: base block i gets 0.5 * r1[i] + 2 * r2[i]; nets of different depths, a larger control."""
    base = bases["loop"]
    net1 = randomize(ControlNet(base, 2, 3, rngs=nnx.Rngs(1)), seed=3, scale=0.05)
    net2 = randomize(ControlNet(base, 1, 1, control_size=16, rngs=nnx.Rngs(2)), seed=4, scale=0.05)
    c1, c2 = control(), control(channels=1, size=16, seed=5)
    both = ControlledDiT(base, [net1, net2])
    out = run(both, inputs(), [c1, c2], [0.5, 2.0])

    @nnx.jit
    def expected(base, net1, net2, args):
        def residuals(tokens, c, context, mask, rope):
            r1, r2 = net1(tokens, c, context, mask, c1), net2(tokens, c, context, mask, c2)
            return [0.5 * r1[0] + 2.0 * r2[0], 0.5 * r1[1]]
        return base(**args, residuals=residuals)

    np.testing.assert_allclose(out, expected(base, net1, net2, inputs()), atol=1e-6)
    np.testing.assert_allclose(run(both, inputs(), [c1, c2], [0.5, 0.0]),
                               run(ControlledDiT(base, [net1]), inputs(), [c1], [0.5]), atol=1e-6)


def test_bad_input(tmp_path):
    base = build_model(TOY)
    with pytest.raises(ValueError, match="num_blocks=3 must be between 1 and the base's depth 2"):
        ControlNet(base, 3, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="same whole multiple"):
        ControlNet(base, 1, 3, control_size=12, rngs=nnx.Rngs(0))
    model = ControlledDiT(base, [ControlNet(base, 1, 3, rngs=nnx.Rngs(0))])
    with pytest.raises(ValueError, match="resize the control"):
        model(**inputs(), controls=control(size=16))
    with pytest.raises(ValueError, match="need as many controls"):
        model(**inputs(), controls=[control(), control()])
    with pytest.raises(FileNotFoundError, match="controlnet.base=.*finished training workdir"):
        controlnet.base_directory(tmp_path / "missing")
    save_pretrained(base, TOY, str(tmp_path / "export"))
    assert controlnet.base_directory(tmp_path) == str(tmp_path / "export")  # a run's workdir
    with pytest.raises(ValueError, match="trained with model.hidden_size=32, this config has 64"):
        controlnet.base_model_kwargs(tmp_path, {**TOY, "hidden_size": 64})
    with pytest.raises(ValueError, match="model.learn_sigma=True, this config has False"):
        controlnet.base_model_kwargs(tmp_path, {"learn_sigma": False})
    kwargs = controlnet.base_model_kwargs(tmp_path, {**TOY, "scan_blocks": True, "remat": "full"})
    assert kwargs == {**TOY, "scan_blocks": True, "remat": "full"}


# The train step: a text-conditional toy base (cross-attention in the copies too), one device.
TEXT = dict(input_size=8, in_channels=3, text_dim=12, text_len=6)


def toy_batch(seed=0):
    rng = np.random.RandomState(seed)
    return dict(image=jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32),
                text=jnp.asarray(rng.randn(2, 6, 12), jnp.float32),
                text_mask=jnp.asarray(rng.rand(2, 6) > 0.3).at[:, 0].set(True),
                pooled=jnp.asarray(rng.randn(2, 12), jnp.float32),
                control_edges=jnp.asarray(rng.rand(2, 8, 8, 1) > 0.7, jnp.float32))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random 'trained' base exported as a run's workdir, then 3 steps of ControlNet training on it."""
    config = get_config("runlocal")
    config.batch_size = 2
    config.mesh = dict(data=1, fsdp=1, tensor=1)
    config.model.update(hidden_size=32, depth=2, patch_size=2, scan_blocks=False)
    config.optim.update(lr=1e-3, warmup_steps=0, weight_decay=0.0)  # so a parameter moves only by its gradient
    model_kwargs = {**config.model.to_dict(), **TEXT}
    workdir = tmp_path_factory.mktemp("base")
    base = randomize(build_model(model_kwargs), seed=0)
    save_pretrained(base, {**model_kwargs}, str(workdir / "export"))
    config.controlnet.update(base=str(workdir), num_blocks=1, control_type="edges", control_channels=1,
                             conditioning_dropout_prob=0.5)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    trainer = trainer_lib.create(config, model_kwargs, mesh)
    state = trainer.init()
    initial = jax.tree.map(np.asarray, state["params"])
    step = trainer_lib.compile_step(trainer, toy_batch())
    for i in range(3):
        state, metrics = step(state, toy_batch(i))
        assert np.isfinite(float(metrics["loss"]))
    return dict(trainer=trainer, state=state, initial=initial, base=workdir / "export", kwargs=model_kwargs)


def test_train_step_moves_only_the_controlnet(trained):
    """The base is bit-identical after 3 AdamW steps; every ControlNet parameter moved, so gradients reached
    each (no weight decay: a parameter whose gradient stayed zero would not move). The zero layers get theirs
    in step 1, the copies and the control embedding, behind them, from step 2."""
    state = trained["state"]
    base = load_file(str(trained["base"] / "model.safetensors"))
    frozen = {k: v for k, v in flat_weights(trained["trainer"].model(state["params"], state["frozen"]).base).items()}
    assert frozen.keys() == base.keys()
    for name in base:
        np.testing.assert_array_equal(frozen[name], base[name], err_msg=name)  # bit-identical after training
    # Only the ControlNet is trained: its parameters alone are in params, the optimizer state and the EMA.
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state["opt_state"])[0]]
    assert paths and not any("'base'" in p for p in paths)
    moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != b)), state["params"], trained["initial"])
    flat = nnx.to_flat_state(moved)
    assert flat and all(v.get_value() for _, v in flat), [p for p, v in flat if not v.get_value()]


def test_export_loads_back(trained, tmp_path):
    trainer, state = trained["trainer"], trained["state"]
    model = trainer.model(state["params"], state["frozen"])
    controlnet.save_controlnet(model.controlnets[0], trainer.controlnet, str(tmp_path))
    net, config = controlnet.load_controlnet(str(tmp_path), model.base)
    assert config == dict(num_blocks=1, control_channels=1, control_size=[8, 8], control_type="edges",
                          base=str(trained["base"]))
    saved, loaded = flat_weights(model.controlnets[0]), flat_weights(net)
    assert saved.keys() == loaded.keys() and all(np.array_equal(saved[k], loaded[k]) for k in saved)


def test_bad_base_fails_before_compiling(trained, tmp_path):
    config = trained["trainer"].config.copy_and_resolve_references()
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    with pytest.raises(ValueError, match="model.hidden_size=32, this config has 64"):
        trainer_lib.create(config, {**trained["kwargs"], "hidden_size": 64, "num_heads": 4}, mesh)
    batch = {k: v for k, v in toy_batch().items() if k != "control_edges"}  # data prepared without controls
    with pytest.raises(ValueError, match="no 'control_edges'.*prepare the data with controls 'edges'"):
        jax.eval_shape(lambda s, b: trainer_lib.train_step(trained["trainer"], s, b), trained["state"], batch)
    config.controlnet.base = str(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError, match="controlnet.base="):
        trainer_lib.create(config, trained["kwargs"], mesh)
    config.controlnet.base, config.controlnet.num_blocks = str(trained["base"]), 3  # the base has 2
    with pytest.raises(ValueError, match="num_blocks=3"):
        trainer_lib.create(config, trained["kwargs"], mesh)


def test_controlnet_state_follows_the_sharding_rules(trained):
    """On an FSDP x tensor mesh the copies, zero layers and the frozen base are sharded like the DiT's weights
    (shardings only: nothing is compiled)."""
    config = trained["trainer"].config.copy_and_resolve_references()
    config.mesh = dict(data=1, fsdp=2, tensor=2)
    trainer = trainer_lib.create(config, trained["kwargs"], sharding.make_mesh(config.mesh, jax.devices()[:4]))
    net, base = trainer.state_shardings["params"]["controlnets"][0], trainer.state_shardings["frozen"]["base"]
    P = jax.sharding.PartitionSpec
    assert net["blocks"][0]["mlp"]["fc1"]["kernel"].get_value().spec == P("fsdp", "tensor")
    assert net["zero_linears"][0]["kernel"].get_value().spec == P("tensor", "fsdp")
    assert base["blocks"][1]["attn"]["qkv"]["kernel"].get_value().spec == P("fsdp", "tensor")
    mu = trainer.state_shardings["opt_state"][1][0].mu["controlnets"][0]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert mu.get_value().spec == P("fsdp", "tensor")


def test_train_cli_checks_the_base_before_any_data_or_model(monkeypatch, tmp_path):
    from dit_jax import train as train_cli

    def loaded(*args, **kwargs):
        raise AssertionError("data was prepared or a model built before the ControlNet config was checked")
    monkeypatch.setattr(train_cli.pipeline, "ensure_prepared", loaded)
    monkeypatch.setattr(train_cli.trainer_lib, "create", loaded)
    config = get_config("runlocal")
    config.controlnet.update(base=str(tmp_path / "no_run"), control_type="canny")
    with pytest.raises(FileNotFoundError, match="no_run.*holds no config.json"):
        train_cli.train(config, str(tmp_path / "run"), str(tmp_path / "data"))
    config.controlnet.update(base=str(tmp_path), num_blocks=0)
    with pytest.raises(ValueError, match="controlnet.num_blocks must be a positive integer"):
        train_cli.train(config, str(tmp_path / "run"), str(tmp_path / "data"))


def test_copies_of_a_rope_base_rotate_like_the_base():
    """The copies get the base's rotary tables: the controlled output is the base plus the copies' residuals
    computed with RoPE, and differs from what copies without it would add."""
    base = toy_base(pos_embed="rope")
    net = randomize(ControlNet(base, 2, 3, rngs=nnx.Rngs(1)), seed=3, scale=0.05)
    c1 = control()
    out = run(ControlledDiT(base, [net]), inputs(), [c1], [1.0])

    @nnx.jit(static_argnums=3)
    def expected(base, net, args, rotate):
        return base(**args, residuals=lambda tokens, c, context, mask, rope: net(
            tokens, c, context, mask, c1, None, rope if rotate else None))

    np.testing.assert_allclose(out, expected(base, net, inputs(), True), atol=1e-6)
    assert np.abs(out - expected(base, net, inputs(), False)).max() > 1e-4
