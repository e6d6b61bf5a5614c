"""What each recipe resolves to (model size, data, encoder, schedule, attention, mesh), and its runlocal toy."""

import importlib.util
import os

import jax
import pytest

from dit_jax.data import pipeline
from dit_jax.models.pretrained import abstract_model, count_parameters
from dit_jax.models.variants import VARIANTS
from dit_jax.training import sharding
from dit_jax.training.checks import validate
from dit_jax.training.optim import learning_rate
from dit_jax.training.recipe import parse_arg

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RECIPES = ["tiny", "fashion_tiny", "fashion_uncond", "classifier_fashion", "small", "base", "large", "xl"]
DIT_T4 = dict(hidden_size=128, depth=4, num_heads=4, patch_size=4)

# recipe: (model size, data name, resolution, latents?, encoder, schedule, restart period, steps)
EXPECTED = {
    # 10 epochs of 3,778 emoji in batches of 32; of Fashion-MNIST's 60,000 images in batches of 64.
    "tiny": (DIT_T4, "emoji", 32, False, "minilm", "cosine_restarts", 1181, 2000),
    "fashion_tiny": (DIT_T4, "fashion_mnist", 32, False, "minilm", "cosine_restarts", 9375, 3000),
    "fashion_uncond": (DIT_T4, "fashion_mnist", 32, False, "minilm", "cosine_restarts", 9375, 6000),
    # DiT-T/4, warm-up then cosine over its 3,000 steps.
    "classifier_fashion": (DIT_T4, "fashion_mnist", 32, False, "minilm", "warmup_cosine", 0, 3000),
    # 10 epochs of 3,778 emoji in batches of 256 = 148 steps; 1000 warm-up steps, then 8 doubling periods.
    "small": (VARIANTS["DiT-S/4"], "emoji", 64, False, "minilm", "cosine_restarts", 148, 1000 + 148 * 255),
    # 10 epochs of COCO's 82,783 training images in batches of 256 = 3,234 steps; warm-up, then 7 periods.
    "base": (VARIANTS["DiT-B/2"], "tfds:coco_captions", 256, True, "clip", "cosine_restarts", 3234, 1000 + 3234 * 127),
    "large": (VARIANTS["DiT-L/2"], "tfds:coco_captions", 256, True, "clip", "cosine_restarts", 3234, 1000 + 3234 * 127),
    "xl": (VARIANTS["DiT-XL/2"], "tfds:imagenet2012", 256, True, "minilm", "constant", 0, 7_000_000),
}


def load(name, arg=None):
    spec = importlib.util.spec_from_file_location(name, os.path.join(CONFIGS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_resolves_to_what_it_says(name):
    size, data, resolution, latents, encoder, schedule, period, steps = EXPECTED[name]
    c = load(name)
    assert {k: c.model[k] for k in size} == size
    assert (c.data.name, c.data.resolution, bool(c.vae.path), c.text.encoder) == (data, resolution, latents, encoder)
    assert (c.optim.schedule, c.optim.restart_period, c.steps) == (schedule, period, steps)
    assert c.model.attention == "auto"
    assert validate(c).devices.size == 8  # the 8 CPU test devices


@pytest.mark.parametrize("name", ["small", "base", "large", "xl"])
def test_accelerator_recipes_shard_over_any_device_count(name):
    c = load(name)
    assert sharding.make_mesh(c.mesh, jax.devices()[:1]).devices.shape == (1, 1, 1)
    assert sharding.make_mesh(c.mesh, jax.devices()[:2]).devices.shape == (1, 2, 1)
    assert sharding.make_mesh(c.mesh).devices.shape == (1, 8, 1)
    c.mesh.fsdp = 8  # a mesh the user fixes still has to fit
    with pytest.raises(ValueError, match="does not fit 1 devices"):
        sharding.make_mesh(c.mesh, jax.devices()[:1])


def test_restarts_double_their_period():
    c = load("base")
    lr = learning_rate(c.optim, c.steps)
    warmup, period, peak = c.optim.warmup_steps, c.optim.restart_period, c.optim.lr
    starts = [warmup + period * (2 ** k - 1) for k in range(7)]  # 1000, 4234, 10702, ...
    for start in starts:
        assert float(lr(start)) == pytest.approx(peak)
        assert float(lr(start - 1)) < 1e-3 * peak or start == warmup
    assert float(lr(starts[1] + period)) == pytest.approx(peak / 2, rel=1e-3)  # halfway through the second period
    assert float(lr(c.steps)) == pytest.approx(peak)  # the 7th period ends with the run: its last update
    assert float(lr(c.steps - 1)) < 1e-6 * peak       # (optax counts from 0) takes the lowest rate


def test_fashion_tiny_trains_flow_matching_unless_told():
    c = load("fashion_tiny")
    assert (c.diffusion.objective, c.diffusion.time_sampling, c.model.learn_sigma) == ("flow", "logit_normal", False)
    assert c.sample.sampler == "heun"
    validate(c)
    c = load("fashion_tiny", "flow=false")  # the DDPM recipe it replaced: v-prediction with min-SNR
    assert (c.diffusion.objective, c.diffusion.prediction, c.diffusion.min_snr_gamma) == ("ddpm", "v", 5.0)
    assert (c.model.learn_sigma, c.sample.sampler) == (True, "dpmpp_2m")
    validate(c)


@pytest.mark.parametrize("name", RECIPES)
def test_runlocal_is_a_cpu_toy(name):
    c = load(name, "runlocal")
    validate(c)
    assert (c.data.name, c.data.max_examples, c.vae.path, c.text.encoder) == ("emoji", 512, "", "minilm")
    assert c.steps == 200 and c.model.hidden_size == 64 and c.model.dtype == "float32"
    if c.optim.schedule == "cosine_restarts":
        assert c.optim.restart_period == 160  # 10 epochs of 512 examples in batches of 32


def test_variant_option_picks_the_size():
    c = load("base", "variant=DiT-B/4,runlocal=false")
    assert (c.model.patch_size, c.model.hidden_size, c.data.name) == (4, 768, "tfds:coco_captions")
    assert load("small", "variant=DiT-B/4").model.hidden_size == 768
    with pytest.raises(ValueError, match="Unknown DiT variant 'DiT-Q/2'"):
        load("large", "variant=DiT-Q/2")


def test_parse_arg():
    assert parse_arg(None, variant="DiT-B/2", runlocal=False).to_dict() == dict(variant="DiT-B/2", runlocal=False)
    assert parse_arg("runlocal,variant=DiT-S/2", variant="DiT-B/2", runlocal=False).to_dict() == dict(
        variant="DiT-S/2", runlocal=True)
    assert parse_arg("steps=7", steps=1).steps == 7
    with pytest.raises(ValueError, match=r"Unknown recipe option 'runlocl'.*\['runlocal'\]"):
        parse_arg("runlocl", runlocal=False)
    with pytest.raises(ValueError, match="on or off"):
        parse_arg("runlocal=maybe", runlocal=False)


def test_xl_recipe_is_the_reference_dit_xl2():
    c = load("xl")
    kwargs = dict(c.model.to_dict(), input_size=32, in_channels=4, num_classes=1000, text_dim=0)
    assert count_parameters(abstract_model(kwargs)) == 675_129_632
    # DiT's train.py: float32, a fixed EMA of 0.9999, AdamW 1e-4 constant without warm-up, decay or clipping.
    assert (c.model.dtype, c.ema.decay, c.ema.warmup) == ("float32", 0.9999, False)
    assert (c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay, c.optim.grad_clip) == (1e-4, 0, 0.0, 0.0)
    assert (c.batch_size, c.diffusion.schedule, c.diffusion.timesteps) == (256, "linear", 1000)
    assert c.model.learn_sigma
    # DiT's sample.py: 250 DDPM steps on its respaced grid, guidance 1.5.
    assert (c.sample.sampler, c.sample.steps, c.sample.spacing, c.sample.cfg_scale) == ("ddpm", 250, "dit", 1.5)
    assert c.sample.guidance_channels == 3  # DiT guides the first three latent channels


def test_validation_reads_attention_specs():
    config = load("tiny")
    config.model.attention = "splash:local=64,strided=8"  # a backend with a sparse pattern
    validate(config)
    config.model.attention = "splash:window=64"
    with pytest.raises(ValueError, match="use local=W and/or strided=S"):
        validate(config)


def test_the_guidance_classifier_is_trained_with_label_smoothing():
    """0.1 guided better than 0 (BENCHMARKS.md, issue 13); the toy keeps it."""
    for arg in (None, "runlocal"):
        assert load("classifier_fashion", arg).optim.label_smoothing == 0.1


@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_fashion_uncond_reads_neither_text_nor_labels(arg):
    """fashion_tiny's data (the same prepared folder) feeding a DiT with no condition at all."""
    c, tiny = load("fashion_uncond", arg), load("fashion_tiny", arg)
    assert (c.data.to_dict(), c.text.to_dict()) == (tiny.data.to_dict(), tiny.text.to_dict())
    manifest = dict(image_shape=[32, 32, 1], text=dict(dim=384, max_length=c.text.max_length), num_classes=10)
    kwargs = pipeline.model_kwargs(manifest, c)
    assert kwargs["text_dim"] == 0 and "num_classes" not in kwargs and c.model.num_classes == 0
    assert c.sample.cfg_scale == 1.0
