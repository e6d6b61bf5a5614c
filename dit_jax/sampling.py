"""Sampling a trained DiT: the library behind train's grids, `sample`, `evaluate` and any other front end.

  setup = read_setup(workdir=RUN)                      # or checkpoint=DIR; small JSON files only
  captions, labels = read_conditions(setup, ["red apple"], [])
  out = sample_images(setup, Settings(steps=25), captions, labels, num_images=4)

`Setup` is how the model was trained (schedule, prediction, text encoder, VAE,
the spacing its recipe samples with); `Settings` how to sample it now, with
None meaning "what the setup says", optionally guided by a noise-aware
classifier (`read_classifier`) toward each condition's class. `Codec` maps
pixels to the model's space and back; `generate_batch` is the one call of
`generate` that fills in the schedule, prediction, clip_x0 policy and
sampler settings.
"""

import dataclasses
import io
import json
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from flax import nnx
from jax.experimental import multihost_utils

from dit_jax.data.latents import VAE_SCALE
from dit_jax.diffusion import PREDICTIONS, Schedule, beta_schedule, classifier_gradient
from dit_jax.diffusion.composition import AND, check_guidance, parse_guidance, split_prompt
from dit_jax.diffusion.flow import FLOW_SAMPLERS, T_SCALE, check_path, flow_sigmas
from dit_jax.diffusion.generate import (CFG_SCALE, DDIM_SAMPLERS, DEFAULT_SPACING, FLOW_SAMPLER, OBJECTIVES, SAMPLER,
                                        STEPS, check_objective, check_sampler, check_spacing, generate, generate_flow,
                                        sampler_grid)
from dit_jax.models.layout import check_layout
from dit_jax.models.pretrained import load_pretrained
from dit_jax.models.video import sample_shape
from dit_jax.training import sharding
from dit_jax.utils import paths
from dit_jax.utils.visualization import to_uint8, trajectory_frames

SAMPLING_FILE = "sampling.json"  # beside config.json: the diffusion a checkpoint was trained with, how it samples
CHECKPOINT_DEFAULTS = dict(schedule="linear", timesteps=1000, prediction="eps", spacing=None, guidance_channels=None)
FLOW_DEFAULTS = dict(objective="ddpm", flow_path="linear", shift=1.0)  # what a run or record without them means


@dataclasses.dataclass
class Settings:
    """How to sample. spacing and guidance_channels None: the model's own (Setup), else each sampler's default."""
    sampler: str = SAMPLER
    steps: int = STEPS
    spacing: str = None
    eta: float = 0.0
    cfg_scale: float = CFG_SCALE
    guidance_channels: int = None
    seed: int = 0
    classifier: str = None         # a noise-aware classifier (dit_jax/models/classifier.py) guiding toward the class
    classifier_scale: float = 1.0  # the weight of its gradient (1: exact Bayes, more: sharper)
    guidance: str = None           # composable guidance "text=4,style=3,layout=2,class=2" instead of cfg_scale


def check_settings(settings, inpaint=False, objective=None):
    """One-line errors for settings that cannot sample, before anything loads; with `objective` (the model's),
    also that the sampler is one of its kind."""
    check_sampler(settings.sampler, inpaint=inpaint, classifier=bool(settings.classifier))
    if objective is not None:
        check_objective(objective, settings.sampler)
    check_spacing(settings.spacing)
    if settings.spacing and settings.sampler in FLOW_SAMPLERS:
        raise ValueError(f"spacing picks DDPM timesteps; the {settings.sampler} sampler walks flow sigmas "
                         "(shifted by the model's diffusion.shift).")
    if settings.steps < 1:
        raise ValueError(f"steps must be at least 1, got {settings.steps}.")
    if settings.eta < 0:
        raise ValueError(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM's noise), got {settings.eta}.")
    if settings.eta and settings.sampler not in DDIM_SAMPLERS:
        raise ValueError(f"eta is DDIM's; the {settings.sampler} sampler does not take it.")
    if not settings.classifier_scale >= 0:
        raise ValueError(f"classifier_scale must be >= 0 (0: no guidance), got {settings.classifier_scale}.")
    if settings.classifier_scale != 1 and not settings.classifier:
        raise ValueError("classifier_scale was given without a classifier: pass --classifier (its directory).")
    if settings.guidance:
        parse_guidance(settings.guidance)
    if settings.classifier and not paths.path(settings.classifier).exists():
        raise FileNotFoundError(f"Classifier {settings.classifier} not found: pass the workdir of one trained by "
                                "`python -m dit_jax.train` with a classifier config (configs/classifier_*.py).")


def run_settings(sample_config):
    """Settings from a recipe's `sample` block; its spacing and guidance_channels go to the Setup."""
    c = sample_config
    return Settings(sampler=c.sampler, steps=c.steps, eta=c.get("eta", 0.0), cfg_scale=c.cfg_scale, seed=c.seed)


def recipe_defaults(sample_config):
    """How a recipe's models sample unless told: `sample.spacing` ("" or absent: each sampler's default) and
    `sample.guidance_channels` (0 or absent: all)."""
    return dict(spacing=sample_config.get("spacing") or None,
                guidance_channels=sample_config.get("guidance_channels") or None)


@dataclasses.dataclass
class Setup:
    """Where the weights are and how the model was trained: text encoder, VAE, schedule, class names."""
    export: str              # config.json + model.safetensors; None for a model in memory (train's grids)
    model_config: dict
    text: dict               # encoder, source, max_length, layer; None for a model that reads no text
    vae: dict                # source, scale; None in pixel space
    schedule: Schedule
    prediction: str
    class_names: list
    spacing: str = None      # the spacing this model samples with unless told (None: each sampler's default)
    guidance_channels: int = None  # channels guided unless told (None: all; DiT's weights: 3)
    objective: str = "ddpm"  # ddpm, or flow: a flow-matching model (diffusion/flow.py), sampled by the flow samplers
    flow_path: str = "linear"  # flow: its interpolant, linear | gvp
    shift: float = 1.0       # flow: SD3's shift of the sigma grid
    style_names: list = dataclasses.field(default_factory=list)  # the data's names of the style labels, if any
    sampler: str = SAMPLER   # the sampler `sample` and `evaluate` use unless told (model_sampler)
    controlnets: tuple = ()  # a ControlNet run's own ControlNet exports (its base is `export`)

    @property
    def clip_x0(self):
        """Pixels are in [-1, 1], so each step's predicted image is clipped there (DiT, diffusers); latents are not."""
        return None if self.vae else 1.0

    def resolve(self, settings):
        """`settings` with what it leaves to the model filled in, spacing named even when it is the sampler's."""
        spacing = settings.spacing or self.spacing or DEFAULT_SPACING.get(settings.sampler)
        if settings.sampler in FLOW_SAMPLERS:
            spacing = None
        channels = self.guidance_channels if settings.guidance_channels is None else settings.guidance_channels
        return dataclasses.replace(settings, spacing=spacing, guidance_channels=channels)


def run_setup(config, manifest, model_config, export=None):
    """The Setup of a training run from its config and its data's manifest (None: the config's own words)."""
    if manifest is not None:
        text, vae, class_names = manifest["text"], manifest["vae"], manifest.get("class_names") or []
        style_names = manifest.get("styles") or []
    else:
        t = config.text
        text = dict(encoder=t.encoder, source=t.path, max_length=t.max_length, layer=t.layer)
        vae = dict(source=config.vae.path, scale=config.vae.scale) if config.vae.path else None
        class_names = style_names = []
    d, defaults = config.diffusion, recipe_defaults(config.sample)
    check_spacing(defaults["spacing"])
    flow_defaults = flow_settings(d)
    return Setup(export, dict(model_config), text if model_config.get("text_dim") else None, vae,
                 Schedule(beta_schedule(d.schedule, d.timesteps)), d.prediction, class_names, **defaults,
                 **flow_defaults, sampler=model_sampler(flow_defaults["objective"], config.sample.get("sampler")),
                 style_names=list(style_names))


def model_sampler(objective, recipe_sampler=None):
    """The sampler a model samples with unless told: a flow model its recipe's (sample.sampler) or heun, a DDPM
    model dpmpp_2m (its recipe's may be one for the training grids only, such as xl's 250 ddpm steps)."""
    if objective == "flow":
        return recipe_sampler if recipe_sampler in FLOW_SAMPLERS else FLOW_SAMPLER
    return SAMPLER


def flow_settings(d):
    """objective, flow_path and shift of a diffusion config or sampling record (older ones lack them: ddpm)."""
    d = {k: d.get(k, v) for k, v in FLOW_DEFAULTS.items()}
    if d["objective"] not in OBJECTIVES:
        raise ValueError(f"Unknown diffusion objective {d['objective']!r}; choose one of {OBJECTIVES}.")
    check_path(d["flow_path"])
    return d


def read_setup(workdir=None, checkpoint=None, data_dir="~/.cache/dit_jax", *, text_encoder=None, text_path="",
               text_layer="last", vae=None, vae_scale=VAE_SCALE, schedule=None, timesteps=None, prediction=None):
    """The Setup of a training run (its export, run.json and prepared data) or of a weights directory.

    For a checkpoint, schedule / timesteps / prediction None take the
    directory's sampling.json (written by convert and by training's export),
    else linear / 1000 / eps. Reads small JSON files only, so bad arguments
    fail before anything loads.
    """
    if bool(workdir) == bool(checkpoint):
        raise ValueError("Pass exactly one of --workdir (a training run) and --checkpoint (a weights directory).")
    if checkpoint:
        config = _read_json(paths.join(checkpoint, "config.json"), "--checkpoint needs config.json + "
                            "model.safetensors (written by `python -m dit_jax.convert` or exported by training)")
        path = paths.join(checkpoint, SAMPLING_FILE)
        recorded = _read_json(path, "") if paths.path(path).is_file() else {}
        given = dict(schedule=schedule, timesteps=timesteps, prediction=prediction)
        d = {**CHECKPOINT_DEFAULTS, **recorded, **{k: v for k, v in given.items() if v is not None}}
        text = None
        if config.get("text_dim"):
            if not text_encoder:
                raise ValueError("This model reads text: pass --text_encoder (and --text_path) as it was trained.")
            text = dict(encoder=text_encoder, source=text_path, max_length=config.get("text_len", 77),
                        layer=text_layer)
        if d["prediction"] not in PREDICTIONS:
            raise ValueError(f"Unknown --prediction {d['prediction']!r}; choose one of {PREDICTIONS}.")
        if d["timesteps"] < 2:
            raise ValueError(f"--timesteps must be at least 2, got {d['timesteps']}.")
        check_spacing(d["spacing"])
        flow_defaults = flow_settings(d)
        return Setup(checkpoint, config, text, dict(source=vae, scale=vae_scale) if vae else None,
                     Schedule(beta_schedule(d["schedule"], d["timesteps"])), d["prediction"], [],
                     spacing=d["spacing"], guidance_channels=d["guidance_channels"], **flow_defaults,
                     sampler=model_sampler(flow_defaults["objective"], d.get("sampler")))

    if not paths.path(workdir).is_dir():
        raise FileNotFoundError(f"Workdir {workdir} does not exist.")
    export = paths.join(workdir, "export")
    own_controlnets = ()
    if not paths.path(export).joinpath("config.json").is_file() and is_controlnet_run(workdir):
        own_controlnets = (paths.join(workdir, CONTROLNET_EXPORT),)
        export = controlnet_config(own_controlnets[0])["base"]  # a ControlNet run samples its base with it
    model_config = _read_json(paths.join(export, "config.json"), f"{workdir} has no exported weights yet: "
                              "training exports them when it reaches config.steps (or pass --checkpoint)")
    run = _read_json(paths.join(workdir, "run.json"), f"{workdir} has no run.json: is it a training workdir?")
    from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel
    from dit_jax.data import prepare  # pylint: disable=import-outside-toplevel
    config = ConfigDict(run["config"])
    folder = prepare.prepared_dir(config, data_dir)
    manifest = None
    if paths.path(folder).joinpath(prepare.MANIFEST).exists():
        manifest = prepare.read_manifest(folder, shards=False)
    else:
        print(f"No prepared data at {folder} (see --data_dir): text and VAE settings from run.json.", flush=True)
    return dataclasses.replace(run_setup(config, manifest, model_config, export), controlnets=own_controlnets)


def converted_record(source):
    """sampling.json for weights trained by facebookresearch/DiT, read from its files or diffusers' port: DiT's
    respaced grid, so its published FIDs carry over, and from DiT's files its 3 guided channels (diffusers' pipeline
    guides all 4)."""
    return dict(CHECKPOINT_DEFAULTS, source=source, spacing="dit", guidance_channels=3 if source == "dit" else None)


def run_record(config):
    """sampling.json for a training run's export (`config`: its recipe)."""
    d = config.diffusion
    return dict(schedule=d.schedule, timesteps=d.timesteps, prediction=d.prediction, **recipe_defaults(config.sample),
                **flow_settings(d), sampler=config.sample.sampler)


def write_sampling_record(directory, record):
    paths.write_json(paths.join(directory, SAMPLING_FILE), record, indent=2, sort_keys=True)


def _read_json(path, howto):
    if not paths.path(path).is_file():
        raise FileNotFoundError(f"{path} not found: {howto}.")
    return paths.read_json(path)


def read_classifier(path, setup):
    """The noise-aware classifier at `path` as (logits_fn or nnx model, metadata), checked against the model it
    is to guide before anything compiles."""
    from dit_jax.models.classifier import load_classifier  # pylint: disable=import-outside-toplevel
    logits_fn, meta = load_classifier(path)
    check_classifier(setup, meta)
    return logits_fn, meta


def check_classifier(setup, meta):
    """One-line errors for a classifier (its metadata) that cannot guide this model: it must see what the model
    samples (the same space, input size and channels) and know the model's classes."""
    c, latent = setup.model_config, bool(setup.vae)
    space = {True: "VAE latents", False: "pixels"}
    if bool(meta["latent"]) != latent:
        raise ValueError(f"The classifier was trained on {space[bool(meta['latent'])]} but this model samples "
                         f"{space[latent]}: train the classifier on the model's data.")
    for key, model_key, what in (("resolution", "input_size", "inputs of side"), ("channels", "in_channels",
                                                                                  "channels")):
        if meta[key] != c[model_key]:
            raise ValueError(f"The classifier was trained on {what} {meta[key]} but this model samples {what} "
                             f"{c[model_key]}: train the classifier on the model's data.")
    known = c.get("num_classes") or len(setup.class_names)
    if known and meta["num_classes"] != known:
        raise ValueError(f"The classifier has {meta['num_classes']} classes but this model's data has {known}: "
                         "train the classifier on the model's data.")
    if meta.get("timesteps", len(setup.schedule)) != len(setup.schedule):
        raise ValueError(f"The classifier was trained on {meta['timesteps']} diffusion timesteps but this model on "
                         f"{len(setup.schedule)}.")
    if meta.get("schedule") and not np.allclose(beta_schedule(meta["schedule"], len(setup.schedule)),
                                                setup.schedule.betas):
        raise ValueError(f"The classifier was trained on the {meta['schedule']} beta schedule, this model on "
                         "another: its t would mean other noise levels.")
    scale = (meta.get("vae") or {}).get("scale")
    if latent and scale is not None and scale != setup.vae["scale"]:
        raise ValueError(f"The classifier's latents are scaled by {scale}, this model's by {setup.vae['scale']}.")


def read_conditions(setup, prompts, classes, classifier=None):
    """The conditions to sample, checked against the model: (captions, labels or None).

    `classes` are indices or class names; one class goes with every prompt,
    or one per prompt; none, for a model that reads text and was trained
    with class dropout, is the null class (as the style is without --style).
    Captions name the classes of a label-only model.
    With a `classifier` (its metadata) the classes are also its targets, so
    every model takes them, text-conditioned or unconditional ones too.
    """
    prompts = list(prompts)
    num_classes = setup.model_config.get("num_classes", 0)
    targets = classifier["num_classes"] if classifier else 0
    if classes and not num_classes and not targets:
        raise ValueError("--class was given but this model is not class-conditional: pass --prompt.")
    if prompts and not setup.text:
        raise ValueError("--prompt was given but this model reads no text: pass --class.")
    if setup.text and not prompts:
        raise ValueError("This model is text-conditioned: pass --prompt or --prompts.")
    if num_classes and not classes and not (setup.text and setup.model_config.get("class_dropout_prob", 0.1) > 0):
        raise ValueError(f"This model is class-conditional: pass --class (0..{num_classes - 1} or a class name).")
    if targets and not classes:
        raise ValueError(f"Classifier guidance steers toward a class: pass --class (0..{targets - 1} or a class "
                         "name).")
    if num_classes:
        labels = [_class_index(c, num_classes, setup.class_names) for c in classes] or None
    else:
        labels = [_class_index(c, targets, setup.class_names, "the classifier") for c in classes] or None
    for label in labels if targets else ():
        if label >= targets:
            raise ValueError(f"Class {label} is outside the classifier's classes 0..{targets - 1}.")
    if prompts and labels and len(labels) not in (1, len(prompts)):
        raise ValueError(f"Give one --class, or one per prompt ({len(prompts)}), not {len(labels)}.")
    if prompts and labels:
        labels = labels * (len(prompts) // len(labels))
    if not prompts and labels is None:
        return [""], None  # an unconditional model: one empty condition
    captions = prompts or [setup.class_names[i] if setup.class_names else str(i) for i in labels]
    return captions, labels


def grid_conditions(setup, prompts):
    """Conditions for a fixed grid: the prompts, and for a class-conditional model the classes in turn
    (named by the captions when the model reads no text)."""
    num_classes = setup.model_config.get("num_classes", 0)
    labels = list(np.arange(len(prompts)) % num_classes) if num_classes else None
    if setup.text or not labels:
        return list(prompts), labels
    return [setup.class_names[i] if setup.class_names else str(i) for i in labels], labels


def _class_index(value, num_classes, names, whose="this model"):
    by_name = {n.lower(): i for i, n in enumerate(names)}
    if str(value).lower() in by_name:
        return by_name[str(value).lower()]
    if not str(value).isdigit() or int(value) >= num_classes:
        known = f"; names: {', '.join(names)}" if names else ""
        raise ValueError(f"Unknown class {value!r}: {whose} has classes 0..{num_classes - 1}{known}.")
    return int(value)


class Composition(NamedTuple):
    """Conditions beyond prompts and classes: a style label, boxes with phrases, composable guidance weights."""
    style: int = None      # None: the null style
    boxes: tuple = ()      # ((x0, y0, x1, y1), phrase) each
    guidance: dict = None  # {condition: weight}; None: classifier-free guidance at cfg_scale


def read_composition(setup, prompts, style=None, boxes=(), guidance=None):
    """The style, boxes and guidance weights checked against the model (its config.json and the data's style
    names) before anything loads: one-line errors for a style or box it cannot read or a weight it has no
    path for. `boxes` as models/layout.parse_box returns them; `guidance` a spec "text=4,style=3"."""
    c = setup.model_config
    num_styles, max_boxes = c.get("num_styles", 0), c.get("layout_max_boxes", 0)
    index = None
    if style is not None and str(style) != "":
        if not num_styles:
            raise ValueError("--style was given but this model has no style path (model.num_styles=0): drop it.")
        by_name = {n.lower(): i for i, n in enumerate(setup.style_names)}
        if str(style).lower() in by_name:
            index = by_name[str(style).lower()]
        elif str(style).isdigit() and int(style) < num_styles:
            index = int(style)
        else:
            known = f"; names: {', '.join(setup.style_names)}" if setup.style_names else ""
            raise ValueError(f"Unknown style {style!r}: this model has styles 0..{num_styles - 1}{known}.")
    check_layout([box for box, _ in boxes], None, max_boxes)
    weights = parse_guidance(guidance) if guidance else None
    if weights is not None:
        check_guidance(weights, c)
    if any(AND in p for p in prompts):
        if weights is None or "text" not in weights:
            raise ValueError(f"{AND.strip()!r} in a prompt makes one text term a part: pass --guidance with a text "
                             "weight, e.g. --guidance=text=4.")
        for p in prompts:
            split_prompt(p)
    return Composition(index, tuple(boxes), weights)


def example_conditions(setup, examples):
    """Each prepared record's own `style` and layout_* (what the model read in training), stacked as the
    per-example model inputs `encode_conditions` takes, for the paths the model has."""
    c, keys = setup.model_config, []
    if c.get("num_styles"):
        keys.append("style")
    if c.get("layout_max_boxes"):
        keys += ["layout_boxes", "layout_mask", "layout_embeddings"]
    missing = [k for k in keys if k not in examples[0]]
    if missing:
        raise ValueError(f"The prepared records have no {', '.join(missing)} for this model's style/layout paths: "
                         "prepare the data the run was trained on (e.g. fashion_scenes).")
    out = {k: np.stack([np.asarray(e[k]) for e in examples]) for k in keys}
    if "style" in out:
        out["style"] = out["style"].astype(np.int32)
    if "layout_boxes" in out:
        if out["layout_boxes"].shape[1] != c["layout_max_boxes"]:
            raise ValueError(f"The records hold {out['layout_boxes'].shape[1]} boxes but the model reads "
                             f"{c['layout_max_boxes']} (model.layout_max_boxes): evaluate on its own data.")
        out.update(layout_boxes=out["layout_boxes"].astype(np.float32), layout_mask=out["layout_mask"].astype(bool),
                   layout_embeddings=out["layout_embeddings"].astype(np.float32))
    return out


def encode_conditions(setup, captions, labels, composition=None, inputs=None, encoder=None):
    """Per-condition model inputs (numpy, leading axis = condition): text embeddings and/or labels `y`, and for
    a model with style or layout paths its `style` and layout_* inputs (the nulls unless `composition` sets
    them). With composable guidance each caption's " AND " parts are encoded on axis 1 with `text_parts`.
    `inputs` (e.g. `example_conditions`) gives each condition its own style and layout_* (leading axis =
    len(captions)) in place of the composition's one for all. `encoder`: the text encoder, loaded once by a
    caller that encodes often (serve); None loads it here."""
    cond, c = {}, setup.model_config
    composition = composition or Composition()
    if setup.text:
        from dit_jax.text import encoders  # pylint: disable=import-outside-toplevel
        if composition.guidance and "text" in composition.guidance:
            parts = [split_prompt(caption) for caption in captions]
            width = max(map(len, parts))
            padded = [p + [p[-1]] * (width - len(p)) for p in parts]  # padding parts get weight 0
            flat = encoders.text_conditions(setup.text, [q for p in padded for q in p], encoder)
            cond.update({k: v.reshape(len(captions), width, *v.shape[1:]) for k, v in flat.items()})
            cond["text_parts"] = np.arange(width)[None] < np.array([len(p) for p in parts])[:, None]
        else:
            cond.update(encoders.text_conditions(setup.text, captions, encoder))
    n = len(captions)
    if c.get("num_classes"):  # no labels: the null class (its table row num_classes; read_conditions checks it)
        cond["y"] = np.full((n,), c["num_classes"], np.int32) if labels is None else np.asarray(labels, np.int32)
    if c.get("num_styles"):
        cond["style"] = np.full((n,), c["num_styles"] if composition.style is None else composition.style, np.int32)
    if c.get("layout_max_boxes"):
        k, boxes = c["layout_max_boxes"], composition.boxes
        layout_boxes, mask = np.zeros((n, k, 4), np.float32), np.zeros((n, k), bool)
        embeddings = np.zeros((n, k, c["text_dim"]), np.float32)
        if boxes:
            from dit_jax.text import encoders  # pylint: disable=import-outside-toplevel
            layout_boxes[:, :len(boxes)] = [box for box, _ in boxes]
            mask[:, :len(boxes)] = True
            embeddings[:, :len(boxes)] = encoders.text_conditions(setup.text, [p for _, p in boxes],
                                                                  encoder)["pooled"]
        cond.update(layout_boxes=layout_boxes, layout_mask=mask, layout_embeddings=embeddings)
    if c.get("multiview"):  # each view's camera: the ring the model was trained around (models/multiview.py)
        from dit_jax.models.multiview import sample_cameras  # pylint: disable=import-outside-toplevel
        poses = sample_cameras(c["frames"], c.get("camera_elevation", 30.0), c.get("camera_distance", 3.0))
        cond["cameras"] = np.broadcast_to(poses, (n, *poses.shape)).copy()
        if c.get("novel_view"):  # the given view: `inputs` sets it (sample --mode=views); blank otherwise
            size = c["input_size"] if isinstance(c["input_size"], int) else c["input_size"][0]
            cond["given"] = np.zeros((n, size, size, c["in_channels"]), np.float32)
    for k, v in (inputs or {}).items():
        if k not in cond or len(v) != n:
            raise ValueError(f"Per-condition input {k!r} ({len(v)} rows) is not one of this model's inputs "
                             f"({', '.join(cond)}) for {n} conditions.")
        cond[k] = np.asarray(v, cond[k].dtype)
    return cond


class Codec:
    """Pixels <-> the model's space: identity scaled to [-1, 1], or the VAE's latents times its scale."""

    def __init__(self, setup):
        self.vae, self.scale = None, 1.0
        if setup.vae:
            from dit_jax.data.latents import Vae  # pylint: disable=import-outside-toplevel
            self.vae, self.scale = Vae(setup.vae["source"]), setup.vae["scale"]
        size, channels = setup.model_config["input_size"], setup.model_config["in_channels"]
        self.factor = self.vae.downsample if self.vae else 1
        self.resolution, self.pixel_channels = size * self.factor, 3 if self.vae else channels

    def encode(self, pixels):
        """uint8 (H, W, C) -> the model's input space (h, w, c), float32."""
        if self.vae is None:
            return pixels.astype(np.float32) / 127.5 - 1.0
        mean, _ = self.vae.encode(pixels[None])
        return mean[0].astype(np.float32) * self.scale

    def mask(self, mask):
        """bool (H, W) at pixel resolution -> (h, w, 1): a latent is regenerated if any of its pixels is."""
        f = self.factor
        h, w = mask.shape[0] // f, mask.shape[1] // f
        return mask.reshape(h, f, w, f).max(axis=(1, 3))[..., None].astype(np.float32)

    def decode(self, x):
        """(B, h, w, c) in the model's space -> [-1, 1] pixels (B, H, W, C)."""
        if self.vae is None:
            return np.asarray(x)
        return self.vae.decode(np.asarray(x, np.float32) / self.scale)


def read_image(path, resolution, channels):
    """An image file fitted to the model's pixel resolution, uint8 (H, W, C)."""
    from dit_jax.data import images  # pylint: disable=import-outside-toplevel
    return images.fit(images.decode(paths.path(path).read_bytes(), channels), resolution)


def initial_noise(seed, ids, shape):
    """Each image's starting noise, drawn from (seed, its index) alone: the same in any batch or on any device."""
    key = jax.random.split(jax.random.PRNGKey(seed))[0]
    return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), shape, jnp.float32))(ids)


def generate_batch(model, setup, settings, cond, ids, *, return_trajectory=False, image=None, mask=None,
                   strength=1.0, resample=1, classifier=None, targets=None, guidance=None):
    """`generate` for images `ids` under `cond` (leading axis = len(ids)), as `setup` and `settings` say.

    The starting noise is `initial_noise`; the step noise of ddpm, ddim with
    eta > 0 and inpainting is drawn per batch from the seed and its first index.
    `classifier(x, t) -> logits` guides each image toward its class in `targets`
    with weight settings.classifier_scale. `guidance` {condition: weight} (numbers, or traced scalars so that
    changing them does not recompile) replaces settings.guidance's weights.
    """
    s = setup.resolve(settings)
    c = setup.model_config
    if guidance is None:
        guidance = parse_guidance(s.guidance) if s.guidance else None
    x_T = initial_noise(s.seed, ids, sample_shape(c))  # (H, W, C), or (T, H, W, C) for a video model
    key = jax.random.fold_in(jax.random.split(jax.random.PRNGKey(s.seed))[1], ids[0])
    if setup.objective == "flow":
        return generate_flow(model, cond, x_T.shape, key, sampler=s.sampler, steps=s.steps, shift=setup.shift,
                             path=setup.flow_path, cfg_scale=s.cfg_scale, guidance_channels=s.guidance_channels,
                             return_trajectory=return_trajectory, image=image, mask=mask, strength=strength,
                             resample=resample, x_T=x_T, guidance=guidance)
    cond_fn = None if classifier is None else classifier_gradient(classifier, targets, s.classifier_scale)
    return generate(model, cond, x_T.shape, key, setup.schedule, sampler=s.sampler, steps=s.steps,
                    spacing=s.spacing, eta=s.eta, cfg_scale=s.cfg_scale, guidance_channels=s.guidance_channels,
                    prediction=setup.prediction, learn_sigma=c.get("learn_sigma", True), clip_x0=setup.clip_x0,
                    return_trajectory=return_trajectory, image=image, mask=mask, strength=strength,
                    resample=resample, x_T=x_T, cond_fn=cond_fn, guidance=guidance)


def is_video(setup):
    """A clip model (a multi-view model's frames are its views, which it samples as a set)."""
    return bool(setup.model_config.get("frames")) and not setup.model_config.get("multiview")


def sampled_timesteps(setup, settings):
    """The model timesteps `settings` visit on this setup, in order (what the CLI reports)."""
    s = setup.resolve(settings)
    if setup.objective == "flow":
        return np.round(flow_sigmas(s.steps, setup.shift)[:-1] * T_SCALE, 1)
    return setup.schedule.timesteps[sampler_grid(setup.schedule, s.sampler, s.steps, s.spacing)]


class Samples(NamedTuple):
    """uint8 images (N, H, W, C) with the caption and label of each (None off process 0), and the first
    batch's trajectory (`trajectory_frames`, decoded to pixels) when asked for."""
    images: np.ndarray
    captions: list
    labels: list
    trajectory: object


def to_global(x, target):
    """A host array, the same on every process, as a global jax.Array placed by `target`."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def sample_images(setup, settings, captions, labels, num_images=1, batch_size=32, *, codec=None, image=None,
                  mask=None, strength=1.0, resample=1, trajectory=False, verbose=True, classifier=None,
                  composition=None, controls=(), null_control="blank", inputs=None):
    """Each condition `num_images` times, in batches split over every device of every process.

    `image` and `mask` are in the model's space (`codec.encode`, `codec.mask`):
    with a mask, inpaint; with an image alone, img2img from `strength`.
    With settings.classifier each image is guided toward its label by that
    classifier (`classifier`: what `read_classifier` returned, else read here).
    `composition` (read_composition) adds a style, boxes and composable guidance weights; `inputs`
    (example_conditions) a style and layout per condition instead.
    Images come back on process 0 only; each one's starting noise depends on
    the seed and its index, so ddim and dpmpp samples do not change with the
    batch size or the device count. `controls` (a list of `Control`) steer the
    model with their ControlNets (`null_control`: see `with_controls`).
    """
    check_settings(settings, inpaint=mask is not None, objective=setup.objective)
    logits_fn = None
    if settings.classifier:
        logits_fn, meta = classifier or read_classifier(settings.classifier, setup)
        if labels is None:
            raise ValueError("Classifier guidance steers toward a class: give each condition a label (--class).")
        if max(labels) >= meta["num_classes"]:
            raise ValueError(f"Class {max(labels)} is outside the classifier's classes 0..{meta['num_classes'] - 1}.")
    codec = codec or Codec(setup)
    cond = encode_conditions(setup, captions, labels, composition, inputs)
    model, _ = load_pretrained(setup.export)
    if controls:
        model = controlled_model(model, controls)
        cond.update(control_conditions(controls, len(captions)))
    graphdef, state = nnx.split(model)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    batched, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    state = jax.tree.map(lambda v: to_global(v, replicated), state)
    # The classifier's weights enter the compiled function as an argument, like the model's; a plain function
    # (a closed-form classifier) is closed over.
    guide, guide_state = logits_fn, None
    if isinstance(guide, nnx.Module):
        guide, guide_state = nnx.split(guide)
        guide_state = jax.tree.map(lambda v: to_global(v, replicated), guide_state)
    edit = {k: to_global(v, replicated) for k, v in (("image", image), ("mask", mask)) if v is not None}
    total, devices = len(captions) * num_images, jax.device_count()
    batch = min(batch_size, -(-total // devices) * devices)

    @jax.jit
    def sample_batch(state, cond, ids, edit, guide_state, targets):
        classifier_fn = guide if guide_state is None else nnx.merge(guide, guide_state)
        net = nnx.merge(graphdef, state)
        net = with_controls(net, len(controls), null_control) if controls else net
        return generate_batch(net, setup, settings, cond, ids, return_trajectory=trajectory,
                              strength=strength, resample=resample, classifier=classifier_fn, targets=targets,
                              **edit)

    is_main = jax.process_index() == 0
    order = np.repeat(np.arange(len(captions)), num_images)  # the condition of each image
    num_batches = -(-total // batch)
    if verbose and is_main:
        s = setup.resolve(settings)
        t = sampled_timesteps(setup, settings)
        shown = " ".join(map(str, t)) if len(t) <= 30 else f"{' '.join(map(str, t[:3]))} ... {t[-1]}"
        guided = f", classifier scale {s.classifier_scale}" if s.classifier else ""
        print(f"Sampling {total} images ({len(captions)} conditions x {num_images}) in {num_batches} batches of "
              f"{batch} on {devices} devices: {s.sampler}, {s.steps} steps, "
              f"{f'guidance {s.guidance}' if s.guidance else f'cfg {s.cfg_scale}'}{guided}, spacing "
              f"{s.spacing} (t = {shown}).", flush=True)
    outputs, frames = [], None
    for b in tqdm.trange(num_batches, desc="sample", unit="batch", disable=not (verbose and is_main)):
        ids = np.arange(b * batch, (b + 1) * batch, dtype=np.int32)
        rows = order[np.minimum(ids, total - 1)]  # the last batch is padded with repeats of the last image
        targets = to_global(np.asarray(labels, np.int32)[rows], batched) if settings.classifier else None
        x = sample_batch(state, {k: to_global(v[rows], batched) for k, v in cond.items()}, to_global(ids, batched),
                         edit, guide_state, targets)
        if trajectory:
            x, steps = x
            if b == 0:
                frames = trajectory_frames(multihost_utils.process_allgather(steps, tiled=True))
                frames = frames._replace(x=codec.decode(frames.x), x0=codec.decode(frames.x0))
        x = multihost_utils.process_allgather(x, tiled=True)
        outputs.append(to_uint8(codec.decode(x[:min(batch, total - b * batch)])) if is_main else None)
    if not is_main:
        return Samples(None, None, None, None)
    return Samples(np.concatenate(outputs), [captions[i] for i in order],
                   None if labels is None else [labels[i] for i in order], frames)


def write_npz(path, images, captions, labels=None, settings=None):
    """The samples as DiT's sample_ddp.py writes them (uint8 NHWC `arr_0`), with captions, labels and the
    resolved sampler settings (JSON) beside them."""
    paths.path(paths.absolute(path)).parent.mkdir(parents=True, exist_ok=True)
    arrays = dict(arr_0=images, captions=np.asarray(captions))
    if labels is not None:
        arrays["labels"] = np.asarray(labels, np.int32)
    if settings is not None:
        arrays["settings"] = np.asarray(json.dumps(dataclasses.asdict(settings), sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    paths.write_bytes(path if str(path).endswith(".npz") else f"{path}.npz", buffer.getvalue())  # as np.savez names it


# ---------------------------------------------------------------------------------------------------- ControlNet

CONTROLNET_EXPORT = "controlnet_export"  # what a ControlNet run exports (models/controlnet.py, save_controlnet)
NULL_CONTROLS = ("blank", "same")


@dataclasses.dataclass
class Control:
    """One ControlNet and what steers it: `image`, the control in the model's space (`control_input`), one
    (H, W, C) for every condition or one per condition (N, H, W, C); `pixels`, the same as uint8 for grids."""
    directory: str
    image: np.ndarray
    scale: float = 1.0
    pixels: np.ndarray = None


def is_controlnet_run(workdir):
    return paths.path(workdir).joinpath(CONTROLNET_EXPORT, "config.json").is_file()


def controlnet_config(directory):
    """A ControlNet export's config.json (num_blocks, control_type, control_size, control_channels, base), its
    base checked to hold weights; one line otherwise."""
    config = _read_json(paths.join(directory, "config.json"), "pass a ControlNet run's workdir or its "
                        f"{CONTROLNET_EXPORT} directory (training writes it when it reaches config.steps)")
    base = config.get("base", "")
    if not paths.path(base).joinpath("config.json").is_file():
        raise FileNotFoundError(f"The ControlNet in {directory} was trained on the base {base!r}, which is gone: "
                                "restore that run's export/ (or retrain the ControlNet).")
    return config


def controlnet_directory(path):
    """A ControlNet run's workdir or its export -> the export directory."""
    return paths.join(path, CONTROLNET_EXPORT) if is_controlnet_run(path) else path


def control_input(pixels, codec):
    """uint8 control pixels (..., H, W, C) -> the model's space, as training read them: [-1, 1] pixels, or the
    VAE latents (times the scale) of the control in latent space."""
    pixels = np.asarray(pixels)
    if codec.vae is None:
        return pixels.astype(np.float32) / 127.5 - 1.0
    flat = pixels.reshape((-1,) + pixels.shape[-3:])
    mean, _ = codec.vae.encode(np.repeat(flat, 3, -1) if flat.shape[-1] == 1 else flat)
    return (np.asarray(mean, np.float32) * codec.scale).reshape(pixels.shape[:-3] + mean.shape[1:])


def fit_control(pixels, size, channels, what="control"):
    """uint8 control pixels (H, W, C) at `size` (H, W) and `channels`: another size is resized (bicubic; the
    nearest for binary maps), and said so."""
    from PIL import Image  # pylint: disable=import-outside-toplevel
    pixels = np.asarray(pixels, np.uint8)
    if pixels.shape[-1] != channels:
        if pixels.shape[-1] == 1:
            pixels = np.repeat(pixels, channels, -1)
        elif pixels.shape[-1] == 3 and channels == 1:
            pixels = np.asarray(Image.fromarray(pixels).convert("L"))[..., None]
        else:
            raise ValueError(f"The {what} has {pixels.shape[-1]} channels, the ControlNet takes {channels}.")
    h, w = size
    if pixels.shape[:2] != (h, w):
        print(f"Resizing the {what} from {pixels.shape[1]}x{pixels.shape[0]} to the ControlNet's {w}x{h}.",
              flush=True)
        binary = np.isin(pixels, (0, 255)).all()  # edges, outlines, masks: kept binary, thin lines unbroken
        image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
        shrink = w < pixels.shape[1]
        image = image.resize((w, h), (Image.Resampling.BOX if shrink else Image.Resampling.NEAREST) if binary
                             else Image.Resampling.BICUBIC)
        pixels = np.asarray(image, np.uint8).reshape(h, w, channels)
        if binary:
            pixels = np.where(pixels >= 64, 255, 0).astype(np.uint8)  # a quarter of a pixel's area or more
    return pixels


def control_channels(config, codec):
    """The channels of the control pixels `config`'s ControlNet takes (in latent space: RGB, for the VAE)."""
    return config["control_channels"] if codec.vae is None else 3


def make_control(directory, config, codec, pixels, scale=1.0, what="control"):
    """The Control of `directory`'s ControlNet (`config`: its controlnet_config) from uint8 control pixels
    (H, W, C) of any size, fitted to what it was trained on (`fit_control`)."""
    size = [s * codec.factor for s in config["control_size"]]
    pixels = fit_control(pixels, size, control_channels(config, codec), what=what)
    return Control(directory, control_input(pixels, codec), scale, pixels)


def control_options(controls_config, name, model_path=""):
    """The detector settings `name` was computed with in training: a run's `controls.*` (None: the defaults,
    with `model_path` for the depth and pose models)."""
    from dit_jax.data import controls as controls_lib  # pylint: disable=import-outside-toplevel
    if name == "outline":
        return {}
    config = controls_config if controls_config is not None else dict(model_path=model_path) if model_path else {}
    return controls_lib.options_from_config(config, name)


def compute_control(name, image, options):
    """The `name` control of a uint8 image; `outline` (circles'): the one-pixel ring of its foreground."""
    from dit_jax.data import controls as controls_lib  # pylint: disable=import-outside-toplevel
    if name == "outline":
        from dit_jax.data.circles import outline  # pylint: disable=import-outside-toplevel
        return (outline(controls_lib.silhouette(image)[..., 0] > 0) * np.uint8(255))[..., None]
    return controls_lib.control_fn(name, **options)(image)


def controlled_model(base, controls):
    """The base DiT with the ControlNet of each Control attached, at its scale."""
    from dit_jax.models.controlnet import ControlledDiT, load_controlnet  # pylint: disable=import-outside-toplevel
    nets = [load_controlnet(c.directory, base)[0] for c in controls]
    return ControlledDiT(base, nets, scales=[c.scale for c in controls])


def control_conditions(controls, num_conditions):
    """Per-condition model inputs `control_<j>` (leading axis = condition), so they follow their conditions
    through batching and guidance."""
    out = {}
    for j, c in enumerate(controls):
        image = np.asarray(c.image, np.float32)
        if image.ndim == 3:
            image = np.broadcast_to(image, (num_conditions,) + image.shape)
        if len(image) != num_conditions:
            raise ValueError(f"Control {j} has {len(image)} images for {num_conditions} conditions: give one, or "
                             "one per condition.")
        out[f"control_{j}"] = image
    return out


def with_controls(model, count, null_control="blank", scales=None):
    """`fn(x, t, **cond)` for `generate`: the ControlledDiT under the cond's `control_<j>` inputs, at `scales`
    (one per ControlNet, traced ones too; None: the model's own).

    null_control "blank": where the condition is dropped (guidance's null half) the controls are zeros too,
    what control dropout trained as "no control", so guidance pushes toward the control as it does toward the
    prompt; "same": the null half keeps the controls (diffusers' ControlNet pipelines), guiding the prompt only.
    """
    if null_control not in NULL_CONTROLS:
        raise ValueError(f"Unknown null_control {null_control!r}; choose one of {NULL_CONTROLS}.")

    def fn(x, t, drop=None, **cond):
        controls = [cond.pop(f"control_{j}") for j in range(count)]
        if null_control == "blank" and drop is not None:
            controls = [jnp.where(drop.reshape((-1,) + (1,) * (c.ndim - 1)), 0.0, c) for c in controls]
        if scales is not None:
            cond["scales"] = scales
        return model(x, t, drop=drop, controls=controls, **cond)
    return fn
