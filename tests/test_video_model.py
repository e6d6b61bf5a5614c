"""The video DiT (models/video.py): diffusers' Latte as the oracle of the converted weights, init_from an image DiT
exact frame by frame, the scan and remat, bf16, sharding, every CPU attention backend (a sparse temporal pattern
against masked attention written out here), a train step, a DDIM step on clips, and bad input."""

import json
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.tiny import get_config
from dit_jax.diffusion import Schedule, beta_schedule
from dit_jax.diffusion.generate import generate
from dit_jax.models import kernels, video
from dit_jax.models.attention import get_attention
from dit_jax.models.pretrained import abstract_model, build_model, load_matching_weights, load_pretrained, save_pretrained
from dit_jax.training import init_from, sharding, trainer as trainer_lib
from dit_jax.training.checks import validate
from dit_jax.training.recipe import video_model

IMAGE = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=4, num_classes=0,
             text_dim=12, text_len=5, text_pooled=True)
VIDEO = dict(IMAGE, frames=4)
B, T = 2, 4


def clip_inputs(seed=0):
    rng = np.random.RandomState(seed)
    mask = np.ones((B, 5), bool)
    mask[0, 3:] = False
    return dict(x=jnp.asarray(rng.randn(B, T, 8, 8, 3), jnp.float32), t=jnp.asarray([7, 640]),
                text=jnp.asarray(rng.randn(B, 5, 12), jnp.float32), text_mask=jnp.asarray(mask),
                pooled=jnp.asarray(rng.randn(B, 12), jnp.float32))


def randomize(model, seed=0, scale=0.2, skip=()):
    """Every parameter drawn (by NumPy, no compiles) from its name, so that models share the values of the
    parameters they share; names containing a `skip` string keep their value. Takes abstract models too."""
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        name = ".".join(map(str, path))
        if not any(s in name for s in skip):
            value = np.random.RandomState(zlib.crc32(name.encode()) + seed).randn(*var.shape) * scale
            var.set_value(jnp.asarray(value, var.get_raw_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def forward(model, args):
    return nnx.jit(lambda m, args: m(**args))(model, args)


# ---------------------------------------------------------------- the oracle: diffusers' Latte

def test_latte_weights_reproduce_diffusers(tmp_path):
    """A random tiny LatteTransformer3DModel, saved by diffusers and converted by `convert --from=latte`'s function:
    the same clips out, to 1e-4 in float32."""
    torch = pytest.importorskip("torch")
    from diffusers import LatteTransformer3DModel
    from dit_jax.convert import convert_to_dir

    torch.manual_seed(0)
    theirs = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2, activation_fn="gelu-approximate",
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=12,
        video_length=4).eval()
    with torch.no_grad():  # diffusers zero-inits nothing here, but give every weight a visible part
        for p in theirs.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "latte")
    convert_to_dir("latte", str(tmp_path / "latte"), str(tmp_path / "ours"), text_len=5)
    ours, config = load_pretrained(str(tmp_path / "ours"))
    assert (config["video_blocks"], config["adaln"], config["temporal_pos"]) == ("alternating", "single", "first")
    assert json.loads((tmp_path / "ours" / "sampling.json").read_text())["source"] == "latte"

    rng = np.random.RandomState(0)
    x = rng.randn(2, 4, 4, 8, 8).astype(np.float32)  # Latte's (B, C, T, H, W)
    t, text = np.array([3, 700]), rng.randn(2, 5, 12).astype(np.float32)
    with torch.no_grad():
        want = theirs(torch.tensor(x), timestep=torch.tensor(t), encoder_hidden_states=torch.tensor(text)).sample
    got = forward(ours, dict(x=jnp.asarray(x.transpose(0, 2, 3, 4, 1)), t=jnp.asarray(t), text=jnp.asarray(text)))
    want = want.numpy().transpose(0, 2, 3, 4, 1)
    assert np.abs(want).max() > 0.5
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-4, rtol=0)

    # What our model cannot express is refused in one line, before any weight is read.
    cfg = json.loads((tmp_path / "latte" / "config.json").read_text())
    from dit_jax.models.latte import latte_model_kwargs
    for bad, match in ((dict(norm_type="ada_norm_zero"), "norm_type"), (dict(norm_eps=1e-5), "norm_eps"),
                       (dict(sample_size=128), "sample_size=128")):
        with pytest.raises(ValueError, match=match):
            latte_model_kwargs(dict(cfg, **bad))


# ---------------------------------------------------------------- init_from an image DiT

@pytest.fixture(scope="module")
def image_export(tmp_path_factory):
    """A trained-looking image DiT (every weight random, none zero) exported as training exports it."""
    path = tmp_path_factory.mktemp("image") / "export"
    save_pretrained(randomize(abstract_model(IMAGE)), IMAGE, str(path))
    return str(path.parent)


@pytest.mark.parametrize("options", [dict(video_blocks="alternating"),
                                     dict(video_blocks="spatial_temporal", scan_blocks=True, remat="dots")])
def test_init_from_an_image_dit_gives_its_frames_exactly(image_export, options):
    """Temporal layers start as the identity, whatever their other weights: every frame of the video model's
    output is, bit for bit, the image model's output for that frame (same clip condition per frame), computed op
    by op; compiled, XLA fuses the two programs differently, and they agree to float32 rounding."""
    kwargs = dict(VIDEO, **options)
    weights = init_from.read(image_export, kwargs)
    model = build_model(kwargs)
    init_from.check_weights(image_export, model, weights)
    model = load_matching_weights(model, weights)
    # The temporal layers' own weights are random too, except what starts them as the identity.
    model = randomize(model, seed=3, skip=("blocks.0.", "embedder", "final_layer", "adaLN", "proj"))
    args = clip_inputs()
    image = load_pretrained(image_export + "/export")[0]
    frames = lambda a: jnp.repeat(a, T, axis=0)
    per_frame = dict(x=args["x"].reshape(B * T, 8, 8, 3), t=frames(args["t"]), text=frames(args["text"]),
                     text_mask=frames(args["text_mask"]), pooled=frames(args["pooled"]))
    with jax.disable_jit():
        got, want = model(**args), image(**per_frame).reshape(B, T, 8, 8, 6)
    assert float(jnp.abs(want).max()) > 0.1
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_init_from_refuses_other_architectures(image_export, tmp_path):
    with pytest.raises(ValueError, match="model.hidden_size=32, this config has 64"):
        init_from.read(image_export, dict(VIDEO, hidden_size=64))
    with pytest.raises(ValueError, match=r"is \(96,\), this model.s \(192,\).*t_patch=1"):
        init_from.check_weights(image_export, abstract_model(dict(VIDEO, t_patch=2)), init_from.read(image_export, VIDEO))
    with pytest.raises(ValueError, match="adaLN_modulation.bias, which this model lacks"):
        init_from.check_weights(image_export, abstract_model(dict(VIDEO, adaln="single")),
                                init_from.read(image_export, VIDEO))
    with pytest.raises(FileNotFoundError, match="init_from="):
        init_from.directory(tmp_path)
    config = get_config("runlocal")
    config.init_from = image_export
    config.controlnet.update(base=image_export, control_type="canny")
    with pytest.raises(ValueError, match="init_from and controlnet.base"):
        validate(config)


# ---------------------------------------------------------------- scan, remat, bf16, backends, sharding

def test_scan_remat_and_bf16():
    """Latte's layout (adaLN-single, positions before the first temporal block, tubelets): the scanned, rematerialised stack computes what the plain loop does; in bfloat16, nearly. (spatial_temporal's
    scan is checked exactly against the image DiT above.)"""
    run = lambda m: nnx.jit(lambda m: m(**clip_inputs(), rng=jax.random.key(1)))(m)
    config = dict(VIDEO, depth=2, video_blocks="alternating", adaln="single", temporal_pos="first", t_patch=2)
    loop = run(randomize(abstract_model(config)))
    scanned = run(randomize(abstract_model(dict(config, scan_blocks=True, remat="full"))))
    assert float(jnp.abs(loop).max()) > 0.1
    np.testing.assert_allclose(loop, scanned, rtol=1e-5, atol=1e-5)
    bf16 = run(randomize(abstract_model(dict(config, dtype="bfloat16"))))
    assert bf16.dtype == jnp.float32 and 0 < float(jnp.abs(loop - bf16).max()) < 0.05 * float(jnp.abs(loop).max())


def band_attention(q, k, v, mask=None, window=1):
    """Masked full attention written out: frame i attends to frames within `window` of it."""
    frames = np.arange(q.shape[1])
    allowed = jnp.asarray(np.abs(frames[:, None] - frames[None]) <= window)[None, None]
    return kernels.reference(q, k, v, allowed)


def test_every_backend_with_a_sparse_temporal_pattern():
    """Spatial attention through each CPU backend (the Pallas kernels interpreted) and temporal attention through
    a local pattern (pallas_flash's kernels take none: dot_product's mask there), against the model with masked
    full attention written out for time and xla's reference for space; dense temporal attention differs."""
    config = dict(VIDEO, video_blocks="spatial_temporal", attention="xla", temporal_attention="xla")
    args = clip_inputs()
    full = forward(randomize(abstract_model(dict(config, attention="dot_product", temporal_attention="dot_product"))),
                   args)
    reference = randomize(abstract_model(config))
    for block in reference.blocks:
        block.temporal_attn.attend = band_attention
    want = forward(reference, args)
    assert float(jnp.abs(full - want).max()) > 1e-3  # the pattern matters
    for spatial, temporal in (("pallas_flash", "dot_product:local=1"), ("splash", "splash:local=1")):
        model = randomize(abstract_model(dict(config, attention=spatial, temporal_attention=temporal)))
        np.testing.assert_allclose(forward(model, args), want, rtol=2e-4, atol=2e-4, err_msg=spatial)


def test_temporal_parameters_carry_logical_axes_and_shard():
    model = abstract_model(dict(VIDEO, video_blocks="spatial_temporal", adaln="single", t_patch=2))
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    placed = dict(nnx.to_flat_state(sharding.param_shardings(nnx.state(model, nnx.Param), mesh)))
    P = jax.sharding.PartitionSpec
    assert placed[("blocks", 0, "temporal_attn", "qkv", "kernel")].get_value().spec == P("fsdp", "tensor")
    assert placed[("blocks", 0, "temporal_attn", "proj", "kernel")].get_value().spec == P("tensor", "fsdp")
    assert placed[("t_block", "kernel")].get_value().spec == P("fsdp", "tensor")
    assert placed[("blocks", 0, "scale_shift_table")].get_value().spec == P(None, "fsdp")
    assert placed[("x_embedder", "proj", "kernel")].get_value().spec == P(None, None, None, None, "fsdp")


# ---------------------------------------------------------------- the trainer and the samplers

def video_config(**model):
    config = video_model(get_config("runlocal"), frames=T)
    config.batch_size, config.optim.warmup_steps = 4, 0
    config.model.update(dict(hidden_size=32, depth=1, num_heads=4, patch_size=4, **model))
    return config


def test_one_train_step_from_an_image_dit_on_a_mesh(image_export):
    """The trainer builds the video model from the config, starts it from the image DiT (init_from) and takes
    a step on a (B, T, H, W, C) batch split over two devices."""
    config = video_config()
    config.init_from, config.mesh = image_export, dict(data=2, fsdp=1, tensor=1)
    config.model.update(scan_blocks=False, remat="none")
    rng = np.random.RandomState(0)
    batch = dict(image=jnp.asarray(rng.uniform(-1, 1, (4, T, 8, 8, 3)), jnp.float32),
                 text=jnp.asarray(rng.randn(4, 5, 12), jnp.float32), text_mask=jnp.ones((4, 5), bool),
                 pooled=jnp.asarray(rng.randn(4, 12), jnp.float32))
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:2])
    kwargs = {**config.model.to_dict(), **dict(input_size=8, in_channels=3, text_dim=12, text_len=5)}
    trainer = trainer_lib.create(config, kwargs, mesh)
    state = trainer.init()
    image = load_pretrained(image_export + "/export")[0]
    np.testing.assert_array_equal(state["params"]["blocks"][0]["mlp"]["fc1"]["kernel"].get_value(),
                                  image.blocks[0].mlp.fc1.kernel.get_value())
    step = trainer_lib.compile_step(trainer, batch)
    state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(mesh)))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    # The temporal blocks learn from the first step: their adaLN gates get a gradient.
    assert np.abs(np.asarray(state["params"]["temporal_blocks"][0]["adaLN_modulation"]["kernel"].get_value())).max() > 0


def test_a_ddim_step_on_clips():
    """The samplers are shape-agnostic: DDIM with guidance on (B, T, H, W, C) noise, the shape sampling draws."""
    model = randomize(build_model(VIDEO))
    assert video.sample_shape(VIDEO) == (T, 8, 8, 3) and video.sample_shape(IMAGE) == (8, 8, 3)
    args = clip_inputs()
    cond = dict(text=args["text"], text_mask=args["text_mask"], pooled=args["pooled"])
    schedule = Schedule(beta_schedule("linear", 1000))
    out = generate(model, cond, (B, *video.sample_shape(VIDEO)), jax.random.key(0), schedule, sampler="ddim",
                   steps=1, cfg_scale=2.0, clip_x0=1.0)
    assert out.shape == (B, T, 8, 8, 3) and bool(jnp.all(jnp.isfinite(out)))
    strips = video.frame_strips(np.asarray(out))
    assert strips.shape == (B, 8, T * 8, 3) and np.array_equal(strips[1, :, 8:16], np.asarray(out)[1, 1])


# ---------------------------------------------------------------- bad input

def test_bad_clips_and_keys_are_one_line_errors():
    model = abstract_model(dict(VIDEO, t_patch=2))
    args = clip_inputs()
    for x, match in ((jnp.zeros((B, 3, 8, 8, 3)), "3 frames does not divide into tubelets of t_patch=2"),
                     (jnp.zeros((B, 6, 8, 8, 3)), "trained on clips of 4 frames of 8x8x3, got 6 frames of 8x8x3"),
                     (jnp.zeros((B, 4, 16, 16, 3)), "got 4 frames of 16x16x3"),
                     (jnp.zeros((B, 8, 8, 3)), r"takes clips \(B, T, H, W, C\)")):
        with pytest.raises(ValueError, match=match):
            model(x, args["t"], text=args["text"], pooled=args["pooled"])
    for bad, match in ((dict(frames=6, t_patch=4), "model.frames=6 is not a multiple of model.t_patch=4"),
                       (dict(video_blocks="full"), "model.video_blocks='full' is not one of"),
                       (dict(temporal_pos="first", video_blocks="spatial_temporal"), "temporal_pos='first'"),
                       (dict(temporal_attention="flash"), "Unknown attention backend 'flash'")):
        with pytest.raises(ValueError, match=match):
            validate(video_config(**bad))
    config = video_config()
    config.data.frames = 8
    with pytest.raises(ValueError, match="data.frames=8 but model.frames=4"):
        validate(config)


def test_forward_macs_count_frames_and_temporal_layers():
    from dit_jax.models.variants import forward_macs, train_flops_per_image
    n, d, depth = 4, 32, 1
    one = video.forward_macs(**dict(VIDEO, frames=1, video_blocks="spatial_temporal"))
    assert one == forward_macs(**IMAGE) + depth * (n * 4 * d * d + 2 * n * d)  # one frame: the DiT + its time layer
    temporal = depth * (n * T * 4 * d * d + 2 * n * T * T * d + 2 * n * T * d * 4 * d + 6 * d * d)
    once = forward_macs(**dict(IMAGE, depth=0)) - n * 48 * d * 3 - 2 * d * d + depth * 6 * d * d
    assert video.forward_macs(**VIDEO) == T * (forward_macs(**IMAGE) - once) + once + temporal
    assert train_flops_per_image(VIDEO) == 6 * video.forward_macs(**VIDEO)
