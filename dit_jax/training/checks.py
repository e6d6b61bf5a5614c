"""Start-up checks of a config, before any data, encoder or model is loaded."""

import math

import jax.numpy as jnp

from dit_jax.data import repa
from dit_jax.data.sources import BUILDERS, VIEW_DATASETS, shapes3d_options
from dit_jax.diffusion.flow import FLOW_SAMPLERS, TIME_SAMPLINGS, check_path
from dit_jax.diffusion.generate import DDIM_SAMPLERS, OBJECTIVES, check_objective, check_sampler, check_spacing
from dit_jax.diffusion.prediction import check_prediction
from dit_jax.diffusion.schedules import beta_schedule
from dit_jax.models import attention, controlnet, multiview, video
from dit_jax.models.dit import DIT_BLOCK, REMAT_POLICIES, check_block
from dit_jax.text.encoders import DEFAULT_IDS as ENCODERS
from dit_jax.training import optim, sharding

TASKS = ("diffusion", "classifier")

# key, test, what it must be. Each test sees the key's value; NaN fails every one.
BOUNDS = (
    ("steps", lambda v: v >= 1, "at least 1"),
    ("batch_size", lambda v: v >= 1, "at least 1"),
    ("data.resolution", lambda v: v >= 1, "at least 1"),
    ("data.max_examples", lambda v: v >= 0, "0 (all) or more"),
    ("data.color_jitter", lambda v: v >= 0, "0 (off) or more"),
    ("data.rotation", lambda v: v >= 0, "0 (off) or more degrees"),
    ("data.prefetch", lambda v: v >= 0, "0 or more"),
    ("text.max_length", lambda v: v >= 1, "at least 1"),
    ("vae.scale", lambda v: v > 0, "above 0"),
    ("model.patch_size", lambda v: v >= 1, "at least 1"),
    ("model.hidden_size", lambda v: v >= 1, "at least 1"),
    ("model.depth", lambda v: v >= 1, "at least 1"),
    ("model.num_heads", lambda v: v >= 1, "at least 1"),
    ("model.mlp_ratio", lambda v: v > 0, "above 0"),
    ("model.num_classes", lambda v: v >= -1, "0 (none), -1 (from the data) or a count"),
    ("model.class_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.caption_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.num_styles", lambda v: v >= 0 and v == int(v), "0 (none) or a count"),
    ("model.style_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.layout_max_boxes", lambda v: v >= 0 and v == int(v), "0 (none) or a count"),
    ("model.layout_dropout_prob", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("model.layout_gate_init", math.isfinite, "a finite number (0: the layout path starts closed)"),
    ("diffusion.timesteps", lambda v: v >= 2, "at least 2"),
    ("diffusion.min_snr_gamma", lambda v: v >= 0, "0 (off) or more"),
    ("diffusion.logit_mean", math.isfinite, "a finite number"),
    ("diffusion.logit_std", lambda v: 0 < v < math.inf, "above 0 and finite"),
    ("diffusion.shift", lambda v: 0 < v < math.inf, "above 0 and finite (1: no shift)"),
    ("optim.lr", lambda v: v > 0, "above 0"),
    ("optim.b1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.b2", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("optim.weight_decay", lambda v: v >= 0, "0 or more"),
    ("optim.grad_clip", lambda v: v >= 0, "0 (off) or more"),
    ("optim.accumulate", lambda v: v >= 1, "at least 1"),
    ("optim.warmup_steps", lambda v: v >= 0, "0 (none) or more"),
    ("optim.min_lr", lambda v: v >= 0, "0 or more"),
    ("optim.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("ema.decay", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("checkpoint.every", lambda v: v >= 0, "0 (only at the end) or more"),
    ("checkpoint.keep", lambda v: v >= 1, "at least 1"),
    ("checkpoint.keep_every", lambda v: v >= 0, "0 (none) or more"),
    ("log.every", lambda v: v >= 1, "at least 1"),
    ("sample.every", lambda v: v >= 0, "0 (no sample grids) or more"),
    ("sample.steps", lambda v: v >= 1, "at least 1"),
    ("sample.cfg_scale", lambda v: v >= 1, "1 (no guidance) or more"),
    ("sample.eta", lambda v: v >= 0, "0 (deterministic DDIM) or more"),
    ("sample.guidance_channels", lambda v: v >= 0, "0 (every channel) or more"),
)


def lookup(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def named(key, check, *args):
    """Runs a library's own check, its one-line error prefixed with the config key it is about."""
    try:
        return check(*args)
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None


def check_clip_data(config):
    """A video model trains on clips of its own frame count: data.name one of the clip builders, whose frame count
    (data.frames, default 8) and motion words are checked here, before anything is built."""
    from dit_jax.data.sources import CLIP_DATASETS, moving_options  # pylint: disable=import-outside-toplevel
    if config.data.name not in CLIP_DATASETS:
        raise ValueError(f"model.frames={config.model.frames} makes a video model, which trains on clips; "
                         f"data.name={config.data.name!r} gives images: use one of {CLIP_DATASETS}.")
    frames = moving_options(config.data)["frames"]
    if frames != config.model.frames:
        raise ValueError(f"The {config.data.name} clips have {frames} frames (data.frames) but model.frames="
                         f"{config.model.frames}: set both to the same count.")


def check_task(config):
    """`task`: "diffusion" (the DiT) or "classifier" (a noise-aware classifier for classifier guidance)."""
    task = config.get("task", "diffusion")
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {TASKS}: set --config.task.")
    if task == "diffusion" and config.optim.label_smoothing:
        raise ValueError("optim.label_smoothing is the classifier's: a diffusion run has no labels to smooth; "
                         "set --config.optim.label_smoothing=0 or --config.task=classifier.")
    if task == "classifier":
        if not config.model.num_classes:
            raise ValueError("task=classifier needs classes: set --config.model.num_classes=-1 (from the data) "
                             "or to their number.")
        if config.model.num_classes == 1:
            raise ValueError("task=classifier needs at least 2 classes: set --config.model.num_classes=-1 (from "
                             "the data) or to their number.")
        if config.sample.every:
            raise ValueError("A classifier run draws no sample grids: set --config.sample.every=0.")


def validate(config):
    """Fails within seconds, in one line that names the key, on what would otherwise fail after loading data,
    an encoder or a compile, or silently train nothing. Returns the device mesh."""
    for key, test, need in BOUNDS:
        value = lookup(config, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(value):
            raise ValueError(f"{key}={value!r} must be {need}: set --config.{key}.")
    name = config.data.name
    if name not in BUILDERS and not (name.startswith("tfds:") and name[len("tfds:"):]):
        raise ValueError(f"Unknown data.name {name!r}; use one of {sorted(BUILDERS)} or tfds:<name>.")
    if name in VIEW_DATASETS:
        shapes3d_options(config.data)  # an unknown shape or colour fails here, before any rendering
    if config.text.encoder not in ENCODERS:
        raise ValueError(f"Unknown text.encoder {config.text.encoder!r}; choose one of {sorted(ENCODERS)}.")
    if config.text.layer not in ("last", "penultimate"):
        raise ValueError(f"text.layer must be 'last' or 'penultimate', not {config.text.layer!r}.")

    m = config.model
    if m.hidden_size % m.num_heads:
        raise ValueError(f"model.hidden_size {m.hidden_size} is not divisible by model.num_heads {m.num_heads}.")
    if not config.vae.path and config.data.resolution % m.patch_size:
        raise ValueError(f"data.resolution {config.data.resolution} is not divisible by model.patch_size "
                         f"{m.patch_size}: pick a resolution that is a multiple of it.")
    named("model.attention", attention.parse, m.attention)  # a backend name, optionally with a sparse pattern
    if m.remat not in REMAT_POLICIES:
        raise ValueError(f"Unknown model.remat {m.remat!r}; choose one of {sorted(REMAT_POLICIES)}.")
    check_block(m.hidden_size, m.num_heads, **{k: m.get(k, v) for k, v in DIT_BLOCK.items()})
    if m.null_text not in ("learned", "zeros"):
        raise ValueError(f"model.null_text must be 'learned' or 'zeros', not {m.null_text!r}.")
    try:
        floating = jnp.issubdtype(jnp.dtype(m.dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"model.dtype {m.dtype!r} is not a float type; use float32 or bfloat16.")

    named("diffusion.prediction", check_prediction, config.diffusion.prediction)
    named("diffusion.schedule", beta_schedule, config.diffusion.schedule, config.diffusion.timesteps)
    if config.sample.steps > config.diffusion.timesteps:
        raise ValueError(f"sample.steps {config.sample.steps} exceeds diffusion.timesteps "
                         f"{config.diffusion.timesteps}.")
    named("sample.sampler", check_sampler, config.sample.sampler)
    d = config.diffusion
    if d.objective not in OBJECTIVES:
        raise ValueError(f"Unknown diffusion.objective {d.objective!r}; choose one of {OBJECTIVES}.")
    named("sample.sampler", check_objective, d.objective, config.sample.sampler)
    if d.objective == "flow":
        named("diffusion.flow_path", check_path, d.flow_path)
        if d.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"Unknown diffusion.time_sampling {d.time_sampling!r}; choose one of {TIME_SAMPLINGS}.")
        if m.learn_sigma:
            raise ValueError("model.learn_sigma learns DDPM variances; a flow model predicts a velocity only: set "
                             "--config.model.learn_sigma=False.")
        if config.sample.spacing and config.sample.sampler in FLOW_SAMPLERS:
            raise ValueError("sample.spacing picks DDPM timesteps; the flow samplers walk flow sigmas: leave it "
                             "empty.")
    named("sample.spacing", check_spacing, config.sample.spacing or None)
    if config.sample.eta and config.sample.sampler not in DDIM_SAMPLERS:
        raise ValueError(f"sample.eta is DDIM's; the {config.sample.sampler} sampler does not take it.")
    if config.optim.min_lr > config.optim.lr:
        raise ValueError(f"optim.min_lr {config.optim.min_lr} is above optim.lr {config.optim.lr}.")
    # The optimizer and schedule names, and the restart period and mult, as the trainer will read them.
    named("optim", optim.make_optimizer, config.optim, config.steps)

    if config.get("controlnet") and config.controlnet.get("base"):
        controlnet.check_config(config.controlnet)  # a missing base run fails here
    elif config.get("controlnet") and config.controlnet.get("control_type"):
        raise ValueError(f"controlnet.control_type={config.controlnet.control_type!r} but controlnet.base is empty: "
                         "train the base first and pass its workdir with --config.controlnet.base=DIR.")

    check_task(config)
    if config.model.get("multiview"):  # a multi-view DiT (models/multiview.py), its views the data's frames
        multiview.check_config(config)
    if config.model.get("frames"):  # a video DiT (models/video.py)
        video.check_config(config)
        if not config.model.get("multiview"):
            check_clip_data(config)
    if config.get("init_from"):  # a finished run or an export, whose weights the run starts from
        from dit_jax.training import init_from  # pylint: disable=import-outside-toplevel
        init_from.directory(config.init_from)
        if config.get("controlnet") and config.controlnet.get("base"):
            raise ValueError("init_from and controlnet.base both name a starting model: a ControlNet starts from "
                             "its base; leave init_from empty.")
    repa.check_config(config)

    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch(config.batch_size, mesh, config.optim.accumulate)
    return mesh
