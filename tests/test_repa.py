"""REPA: the projector, the cosine loss against NumPy, the loss in the train step (DDPM and flow), where its
gradient goes, the encoders' grids, the features `prepare` stores and the loader hands out, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit_jax.data import pipeline, prepare, repa as repa_data
from dit_jax.models import inception
from dit_jax.models.repa import Projector, alignment_loss, pool_matrix, to_tokens
from dit_jax.training import checks, sharding, trainer as trainer_lib
from dit_jax.training.recipe import base_config

SIZE, PATCH, GRID, FEATURE_DIM, BATCH = 8, 4, 2, 24, 8  # 8x8 images, 2x2 tokens; a batch over 8 devices


def toy_config(objective="ddpm", weight=0.5, block=2, scan_blocks=False):
    c = base_config()
    c.model.update(hidden_size=32, depth=3, num_heads=2, patch_size=PATCH, scan_blocks=scan_blocks,
                   learn_sigma=objective == "ddpm", caption_dropout_prob=0.0, text_cross_attention=False,
                   text_pooled=False)
    c.diffusion.objective = objective
    c.batch_size = BATCH
    c.repa.update(weight=weight, block=block, projector_dim=16)
    return c


def make_trainer(config, feature_dim=FEATURE_DIM):
    kwargs = {**config.model.to_dict(), "input_size": SIZE, "in_channels": 3, "text_dim": 0}
    with pytest.MonkeyPatch.context() as patch:  # prepared features of FEATURE_DIM channels, without an encoder
        patch.setattr(repa_data, "geometry", lambda config, grid: (0, grid, feature_dim))
        return trainer_lib.create(config, kwargs, sharding.make_mesh(config.mesh))


def toy_batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.uniform(-1, 1, (BATCH, SIZE, SIZE, 3)), jnp.float32),
            "repa": jnp.asarray(rng.normal(size=(BATCH, GRID * GRID, FEATURE_DIM)), jnp.float32)}


def random_params(trainer, seed=1):
    """Random parameters of the trainer's shapes, drawn on the host (no compile): off adaLN-Zero's start, where
    every block is the identity and its inner weights get no gradient."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: jnp.asarray(0.1 * rng.standard_normal(x.shape), x.dtype),
                        trainer.abstract_state["params"])


def numpy_alignment(projected, target):
    p = projected / np.linalg.norm(projected, axis=-1, keepdims=True)
    t = target / np.linalg.norm(target, axis=-1, keepdims=True)
    return -np.einsum("ntc,ntc->nt", p, t).mean(-1)


def test_projector_is_three_layers_to_the_encoder_width():
    projector = Projector(32, 16, FEATURE_DIM, rngs=nnx.Rngs(0))
    tokens = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 32))
    assert projector(tokens).shape == (2, 4, FEATURE_DIM)
    sizes = sorted(x.size for x in jax.tree.leaves(nnx.state(projector, nnx.Param)))
    assert sizes == sorted([32 * 16, 16, 16 * 16, 16, 16 * FEATURE_DIM, FEATURE_DIM])
    h = jax.nn.silu(tokens @ projector.fc1.kernel[...] + projector.fc1.bias[...])
    h = jax.nn.silu(h @ projector.fc2.kernel[...] + projector.fc2.bias[...])
    np.testing.assert_allclose(projector(tokens), h @ projector.fc3.kernel[...] + projector.fc3.bias[...],
                               rtol=1e-5, atol=1e-6)


def test_alignment_loss_is_minus_the_mean_cosine():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 5, 7)), rng.normal(size=(3, 5, 7))
    np.testing.assert_allclose(alignment_loss(jnp.asarray(a), jnp.asarray(b)), numpy_alignment(a, b), rtol=1e-5)
    np.testing.assert_allclose(alignment_loss(jnp.asarray(a), jnp.asarray(3 * a)), -1.0, rtol=1e-6)


def test_features_are_area_averaged_to_the_token_grid():
    features = np.random.default_rng(0).normal(size=(2, 6, 6, 3))
    pooled = features.reshape(2, 3, 2, 3, 2, 3).mean((2, 4)).reshape(2, 9, 3)  # 2x2 average pool
    np.testing.assert_allclose(to_tokens(features, 3), pooled, rtol=1e-6)
    m = pool_matrix(17, 8)  # uneven: cell 0 is input cells 0, 1 and an eighth of 2
    np.testing.assert_allclose(m.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(m[0, :3], np.array([1, 1, 0.125]) / 2.125, rtol=1e-6)
    with pytest.raises(ValueError, match="cannot map"):
        to_tokens(features, 7)


def test_inception_grid_formula_matches_the_network():
    shapes = jax.eval_shape(inception.load_params)
    for size in (299, 139, 75):
        out = jax.eval_shape(inception.mixed_6e, shapes, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
        assert out.shape == (1, inception.mixed_6e_grid(size), inception.mixed_6e_grid(size), 768)
    config = toy_config()
    assert repa_data.geometry(config, 8) == (155, 8, 768)  # the smallest input whose Mixed_6e map is 8x8
    config.repa.resolution = 100
    with pytest.raises(ValueError, match=r"feature grid at repa.resolution=100 is 4x4, coarser than the 8x8 token "
                                         r"grid, so it cannot map to the tokens: .*at least 155"):
        repa_data.geometry(config, 8)


@pytest.mark.parametrize("objective", ["ddpm", "flow"])
def test_repa_adds_its_weighted_loss_and_weight_zero_is_the_plain_loss(objective):
    trainer = make_trainer(toy_config(objective))
    plain = make_trainer(toy_config(objective, weight=0.0))
    assert plain.repa is None and trainer.repa.block == 2
    params = random_params(trainer)
    dit_params = nnx.state(trainer.model(params), nnx.Param)
    assert jax.tree.structure(dit_params) == jax.tree.structure(plain.abstract_state["params"])  # no projector
    batch, key = toy_batch(), jax.random.PRNGKey(4)
    k_t, k_noise, k_model = jax.random.split(key, 3)

    @jax.jit
    def losses(params, dit_params):
        loss, stats = trainer_lib.loss_and_stats(trainer, params, batch, key)
        plain_loss, plain_stats = trainer_lib.loss_and_stats(plain, dit_params, batch, key)
        # The DDPM path's x_t, and the projection of its tokens after block 2, for the NumPy oracle.
        t = jax.random.randint(k_t, (BATCH,), 0, len(trainer.schedule))
        x_t = trainer_lib.q_sample(batch["image"], t, jax.random.normal(k_noise, batch["image"].shape),
                                   trainer.schedule)
        whole = nnx.merge(trainer.graphdef, params)
        projected = whole.projector(whole.dit(x_t, t, rng=k_model, return_block=2)[1])
        return loss, stats, plain_loss, plain_stats, projected

    loss, stats, plain_loss, plain_stats, projected = losses(params, dit_params)
    assert plain_stats == {} and set(stats) == {"repa_loss"}
    np.testing.assert_allclose(loss - 0.5 * stats["repa_loss"], plain_loss, rtol=1e-6)
    if objective == "ddpm":  # the alignment loss against NumPy's cosine
        expected = numpy_alignment(np.asarray(projected, np.float64), np.asarray(batch["repa"]))
        np.testing.assert_allclose(stats["repa_loss"], expected.mean(), rtol=1e-5)


def test_the_repa_gradient_reaches_the_projector_and_blocks_up_to_k_only():
    """From the REPA term alone: the projector, the embedding and blocks 1..k get gradient, later blocks and the
    final layer none; with scan_blocks the scan is split at k and gives what the loop gives."""
    batch, t = toy_batch(), jnp.arange(BATCH) * 120
    outputs = []
    for scan_blocks in (False, True):
        trainer = make_trainer(toy_config(block=2, scan_blocks=scan_blocks))
        params = random_params(trainer)

        def repa_term(params):
            whole = nnx.merge(trainer.graphdef, params)
            out, tokens = whole.dit(batch["image"], t, return_block=2)
            return trainer.repa.loss(whole.projector, tokens, batch), (out, tokens)

        grads, out_tokens = jax.jit(jax.grad(repa_term, has_aux=True))(params)
        outputs.append(out_tokens)
        norm = lambda tree: float(sum(jnp.abs(x).sum() for x in jax.tree.leaves(tree)))
        assert norm(grads["projector"]) > 0 and norm(grads["dit"]["x_embedder"]) > 0
        for i in (0, 1):  # blocks 1 and 2, each of their weights
            assert all(float(jnp.abs(g).sum()) > 0 for g in jax.tree.leaves(grads["dit"]["blocks"][i]))
        assert norm(grads["dit"]["blocks"][2]) == 0 and norm(grads["dit"]["final_layer"]) == 0
    for loop, scan in zip(*outputs):
        np.testing.assert_allclose(scan, loop, rtol=1e-5, atol=1e-5)


def test_the_export_holds_the_dit_alone_and_a_step_logs_repa_loss():
    config = toy_config()
    config.optim.warmup_steps = 0  # a first step that moves the weights
    trainer = make_trainer(config)
    params = random_params(trainer)
    assert set(params) == {"dit", "projector"}
    model = trainer.model(params)
    assert type(model).__name__ == "DiT"
    assert not any("projector" in str(path) for path, _ in nnx.to_flat_state(nnx.state(model)))
    state = dict(params=params, opt_state=trainer.optimizer.init(params), ema=params,
                 step=jnp.zeros((), jnp.int32), rng=jax.random.PRNGKey(0))
    state, metrics = jax.jit(lambda s, b: trainer_lib.train_step(trainer, s, b))(state, toy_batch())
    assert {"loss", "repa_loss"} <= set(metrics) and -1 <= float(metrics["repa_loss"]) <= 1
    assert float(jnp.abs(state["params"]["projector"]["fc3"]["kernel"][...] -
                         params["projector"]["fc3"]["kernel"][...]).max()) > 0  # the projector is trained


def test_online_inception_features_trace_into_the_loss():
    """repa.features=online: the Inception runs inside the step on the batch's pixels (traced, not compiled)."""
    config = toy_config()
    config.repa.features = "online"
    kwargs = {**config.model.to_dict(), "input_size": SIZE, "in_channels": 3, "text_dim": 0}
    trainer = trainer_lib.create(config, kwargs, sharding.make_mesh(config.mesh))
    assert trainer.repa.feature_dim == 768 and trainer.repa.projector_dim == 16
    batch = {"image": toy_batch()["image"]}  # no prepared features
    loss, stats = jax.eval_shape(lambda p: trainer_lib.loss_and_stats(trainer, p, batch, jax.random.PRNGKey(0)),
                                 trainer.abstract_state["params"])
    assert loss.shape == stats["repa_loss"].shape == ()
    assert jax.eval_shape(trainer.repa.encode, batch["image"]).shape == (BATCH, GRID * GRID, 768)


# ------------------------------------------------------------------------------------------------- DINOv2, prepare

@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    """A randomly initialised DINOv2 of patch 4, saved as transformers saves one."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    path = str(tmp_path_factory.mktemp("dinov2"))
    config = transformers.Dinov2Config(hidden_size=FEATURE_DIM, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, patch_size=4, image_size=16)
    transformers.Dinov2Model(config).save_pretrained(path)
    return path


def test_dinov2_loads_and_gives_its_patch_grid(tiny_dinov2):
    config = toy_config()
    config.repa.update(encoder="dinov2", encoder_path=tiny_dinov2)
    assert repa_data.geometry(config, 4) == (16, 4, FEATURE_DIM)  # patch x grid: 16 px
    encode = repa_data.load_encoder(config, 16)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    features = encode(images)
    assert features.shape == (2, 4, 4, FEATURE_DIM) and np.isfinite(features).all()
    # The patch tokens after the final layer norm: each token's features have mean 0 before its affine part.
    assert not np.allclose(features[0], features[1])
    config.repa.resolution = 12
    with pytest.raises(ValueError, match="dinov2 feature grid at repa.resolution=12 is 3x3, coarser than the 4x4"):
        repa_data.geometry(config, 4)


@pytest.fixture(scope="module")
def repa_prepared(tiny_dinov2, tmp_path_factory):
    from test_prepare import tiny_config  # pylint: disable=import-outside-toplevel
    config = tiny_config(name="circles", max_examples=0, resolution=16, flip=True)
    config.data.circles.examples = 6
    config.repa.update(weight=0.5, encoder="dinov2", encoder_path=tiny_dinov2)
    return config, prepare.prepare(config, tmp_path_factory.mktemp("data"))


def test_prepare_stores_the_features_and_the_loader_hands_out_the_flipped_ones(repa_prepared, tiny_dinov2):
    config, manifest = repa_prepared
    assert manifest["repa"] == dict(encoder="dinov2", source=tiny_dinov2, resolution=16, grid=4, dim=FEATURE_DIM)
    assert "repa-dinov2" in manifest["dir"]
    encode = repa_data.load_encoder(config, 16)
    rows = pipeline.read_prepared(manifest, range(6))
    pixels = np.stack([r["image"] for r in rows]) / 127.5 - 1
    assert rows[0]["repa"].dtype == np.float16 and rows[0]["repa"].shape == (16, FEATURE_DIM)
    np.testing.assert_allclose(np.stack([r["repa"] for r in rows]), to_tokens(encode(pixels), 4), atol=2e-2)
    np.testing.assert_allclose(np.stack([r["repa_flip"] for r in rows]), to_tokens(encode(pixels[:, :, ::-1]), 4),
                               atol=2e-2)
    pipeline.check_compatible(manifest, config)
    loader = pipeline.make_loader(config, manifest, global_batch_size=6, seed=0,
                                  sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    batch = next(loader)  # flipped or not, each image comes with its own features
    np.testing.assert_allclose(batch["repa"], to_tokens(encode(np.asarray(batch["image"])), 4), atol=2e-2)
    other = config.copy_and_resolve_references()
    other.repa.resolution = 20
    with pytest.raises(ValueError, match="REPA features .* are wanted but the data has"):
        pipeline.check_compatible(manifest, other)


# ------------------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("change, words", [
    (dict(block=4), "repa.block=4 is beyond the model's 3 blocks: set --config.repa.block to 1..3"),
    (dict(encoder="clip"), "Unknown repa.encoder 'clip'"),
    (dict(features="cached"), "Unknown repa.features 'cached'"),
    (dict(weight=-1.0), "repa.weight=-1.0 must be 0 (off) or more"),
    (dict(encoder="dinov2", encoder_path="x", features="online"), "DINOv2 runs in PyTorch, not inside the jitted"),
    (dict(encoder="dinov2"), "repa.encoder=dinov2 needs repa.encoder_path"),
])
def test_bad_repa_settings_fail_in_one_line_before_anything_loads(change, words):
    config = toy_config()
    config.repa.update(change)
    with pytest.raises(ValueError) as error:
        checks.validate(config)
    assert words in str(error.value) and "\n" not in str(error.value)


def test_online_features_need_pixels_and_prepared_ones_no_rotation():
    config = toy_config()
    config.repa.features = "online"
    config.vae.path = "stabilityai/sd-vae-ft-ema"
    with pytest.raises(ValueError, match="this data is VAE latents: set --config.repa.features=prepare"):
        repa_data.check_config(config)
    config = toy_config()
    config.data.rotation = 10.0
    with pytest.raises(ValueError, match="unrotated image"):
        repa_data.check_config(config)
