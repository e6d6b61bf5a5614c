"""Samples a trained DiT: text prompts or class labels, from noise or by editing an image.

  python -m dit_jax.sample --workdir=RUN --prompt="red apple" --prompt=rocket --num_images=4 --out=apples.png
  python -m dit_jax.sample --workdir=RUN --prompts=prompts.txt --num_images=100 --npz=samples.npz
  python -m dit_jax.sample --workdir=RUN --prompt="cat face" --mode=inpaint --image=in.png --mask=mask.png
  python -m dit_jax.sample --workdir=RUN --prompt=snowman --mode=img2img --image=in.png --strength=0.6
  python -m dit_jax.sample --checkpoint=weights/xl2 --vae=stabilityai/sd-vae-ft-ema --class=207 --guidance_channels=3

--workdir reads the run's EMA export and run.json, and encodes prompts with
the encoder its data was prepared with (the manifest under --data_dir).
--checkpoint takes any export or converted directory; the text encoder, VAE
and diffusion settings then come from flags. Batches are split over every
device of every process; process 0 writes the outputs. Each image's
starting noise depends on --seed and its index only, so ddim and dpmpp
samples do not change with --batch_size or the device count; ddpm and
inpainting also draw noise per batch and repeat for the same batch size.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import app, flags
from flax import nnx
from jax.experimental import multihost_utils
from PIL import Image

from dit_jax.diffusion import PREDICTIONS, Schedule, beta_schedule
from dit_jax.diffusion.generate import check_sampler, generate
from dit_jax.training import sharding
from dit_jax.utils import distributed
from dit_jax.utils.visualization import captioned_grid, to_uint8, trajectory_frames, trajectory_strip

MODES = ("sample", "inpaint", "img2img")
GRID_MAX = 64  # the grid shows at most this many images; every image is written singly


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    distributed.define_flags()
    flags.adopt_module_key_flags(distributed)  # so --help lists them
    flags.DEFINE_string("workdir", None, "A training run: its export/ weights and run.json settings.")
    flags.DEFINE_string("checkpoint", None, "Instead of --workdir: a directory with config.json + model.safetensors.")
    flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable).")
    flags.DEFINE_string("prompts", None, "A file of prompts, one a line.")
    flags.DEFINE_multi_string("class", [], "A class index or name (repeatable), for class-conditional models.")
    flags.DEFINE_enum("mode", "sample", MODES, "sample from noise, inpaint --image under --mask, or img2img (SDEdit).")
    flags.DEFINE_string("image", None, "The image to edit (inpaint, img2img).")
    flags.DEFINE_string("mask", None, "Inpainting mask: white = regenerate, black = keep.")
    flags.DEFINE_integer("resample", 1, "Inpainting: passes per step (RePaint resampling; 1 = replacement only).")
    flags.DEFINE_float("strength", 0.6, "img2img: how far the image is noised, 0 (kept) to 1 (pure noise).")
    flags.DEFINE_string("sampler", "dpmpp_2m", "ddpm | ddim | dpmpp_2m | dpmpp_3m (inpainting: ddpm | ddim).")
    flags.DEFINE_integer("steps", 25, "Sampling steps.")
    flags.DEFINE_float("cfg_scale", 4.0, "Classifier-free guidance scale (1 = none).")
    flags.DEFINE_integer("guidance_channels", None, "Guide only the first k channels (DiT's latents: 3); default all.")
    flags.DEFINE_integer("seed", 0, "Random seed.")
    flags.DEFINE_integer("num_images", 4, "Images per prompt or class.")
    flags.DEFINE_integer("batch_size", 32, "Images per sampling call over all devices (a multiple of the device "
                         "count).")
    flags.DEFINE_string("out", None, "Captioned PNG grid, single images beside it (default samples.png unless --npz).")
    flags.DEFINE_string("npz", None, "Write every sample as uint8 NHWC `arr_0` (with `captions`) for evaluation.")
    flags.DEFINE_string("trajectory", None, "Write x_t and the predicted x0 over the steps of the first image here.")
    flags.DEFINE_string("text_encoder", None, "--checkpoint only: clip | t5 | minilm, for text-conditioned models.")
    flags.DEFINE_string("text_path", "", "--checkpoint only: the text encoder's local directory or hub id.")
    flags.DEFINE_string("text_layer", "last", "--checkpoint only: last | penultimate.")
    flags.DEFINE_string("vae", None, "--checkpoint only: a diffusers AutoencoderKL for latent models.")
    flags.DEFINE_float("vae_scale", 0.18215, "--checkpoint only: the latent scale.")
    flags.DEFINE_string("schedule", "linear", "--checkpoint only: the beta schedule it was trained with.")
    flags.DEFINE_integer("timesteps", 1000, "--checkpoint only: the number of diffusion timesteps it was trained with.")
    flags.DEFINE_string("prediction", "eps", "--checkpoint only: what it predicts (eps | v | x0).")


FLAGS = flags.FLAGS


@dataclasses.dataclass
class Options:
    """What a sampling run needs, the flags' values (`classes` is --class)."""
    workdir: str = None
    checkpoint: str = None
    data_dir: str = "~/.cache/dit_jax"
    prompt: list = dataclasses.field(default_factory=list)
    prompts: str = None
    classes: list = dataclasses.field(default_factory=list)
    mode: str = "sample"
    image: str = None
    mask: str = None
    resample: int = 1
    strength: float = 0.6
    sampler: str = "dpmpp_2m"
    steps: int = 25
    cfg_scale: float = 4.0
    guidance_channels: int = None
    seed: int = 0
    num_images: int = 4
    batch_size: int = 32
    out: str = None
    npz: str = None
    trajectory: str = None
    text_encoder: str = None
    text_path: str = ""
    text_layer: str = "last"
    vae: str = None
    vae_scale: float = 0.18215
    schedule: str = "linear"
    timesteps: int = 1000
    prediction: str = "eps"


@dataclasses.dataclass
class Setup:
    """Where the weights are and how the model was trained: text encoder, VAE, schedule, class names."""
    export: str
    model_config: dict
    text: dict       # encoder, source, max_length, layer; None for a model that reads no text
    vae: dict        # source, scale; None in pixel space
    schedule: Schedule
    prediction: str
    class_names: list


def read_setup(o):
    """The run's settings, from small JSON files only, so bad arguments fail before anything loads."""
    if bool(o.workdir) == bool(o.checkpoint):
        raise ValueError("Pass exactly one of --workdir (a training run) and --checkpoint (a weights directory).")
    if o.checkpoint:
        export = o.checkpoint
        config = _read_json(os.path.join(export, "config.json"), "--checkpoint needs config.json + model.safetensors "
                            "(written by `python -m dit_jax.convert` or exported by training)")
        text = None
        if config.get("text_dim"):
            if not o.text_encoder:
                raise ValueError("This model reads text: pass --text_encoder (and --text_path) as it was trained.")
            text = dict(encoder=o.text_encoder, source=o.text_path, max_length=config.get("text_len", 77),
                        layer=o.text_layer)
        vae = dict(source=o.vae, scale=o.vae_scale) if o.vae else None
        if o.prediction not in PREDICTIONS:
            raise ValueError(f"Unknown --prediction {o.prediction!r}; choose one of {PREDICTIONS}.")
        if o.timesteps < 2:
            raise ValueError(f"--timesteps must be at least 2, got {o.timesteps}.")
        return Setup(export, config, text, vae, Schedule(beta_schedule(o.schedule, o.timesteps)), o.prediction, [])

    if not os.path.isdir(o.workdir):
        raise FileNotFoundError(f"Workdir {o.workdir} does not exist.")
    export = os.path.join(o.workdir, "export")
    config = _read_json(os.path.join(export, "config.json"), f"{o.workdir} has no exported weights yet: training "
                        "exports them when it reaches config.steps (or pass --checkpoint)")
    run = _read_json(os.path.join(o.workdir, "run.json"), f"{o.workdir} has no run.json: is it a training workdir?")
    from ml_collections import ConfigDict  # pylint: disable=import-outside-toplevel
    from dit_jax.data import prepare  # pylint: disable=import-outside-toplevel
    cfg = ConfigDict(run["config"])
    folder = prepare.prepared_dir(cfg, o.data_dir)
    if os.path.exists(os.path.join(folder, prepare.MANIFEST)):
        manifest = prepare.read_manifest(folder)
        text, vae, class_names = manifest["text"], manifest["vae"], manifest["class_names"]
    else:  # the run's config says the same, except for class names
        print(f"No prepared data at {folder} (see --data_dir): text and VAE settings from run.json.", flush=True)
        t = cfg.text
        text = dict(encoder=t.encoder, source=t.path, max_length=t.max_length, layer=t.layer)
        vae = dict(source=cfg.vae.path, scale=cfg.vae.scale) if cfg.vae.path else None
        class_names = []
    schedule = Schedule(beta_schedule(cfg.diffusion.schedule, cfg.diffusion.timesteps))
    return Setup(export, config, text if config.get("text_dim") else None, vae, schedule, cfg.diffusion.prediction,
                 class_names)


def _read_json(path, howto):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {howto}.")
    with open(path) as f:
        return json.load(f)


def read_conditions(o, setup):
    """The conditions to sample, each `num_images` times: (captions, labels or None), checked against the model."""
    prompts = list(o.prompt)
    if o.prompts:
        with open(o.prompts) as f:
            prompts += [line.strip() for line in f if line.strip()]
    num_classes = setup.model_config.get("num_classes", 0)
    if o.classes and not num_classes:
        raise ValueError("--class was given but this model is not class-conditional: pass --prompt.")
    if prompts and not setup.text:
        raise ValueError("--prompt was given but this model reads no text: pass --class.")
    if setup.text and not prompts:
        raise ValueError("This model is text-conditioned: pass --prompt or --prompts.")
    if num_classes and not o.classes:
        raise ValueError(f"This model is class-conditional: pass --class (0..{num_classes - 1} or a class name).")
    labels = [_class_index(c, num_classes, setup.class_names) for c in o.classes] or None
    if prompts and labels and len(labels) not in (1, len(prompts)):
        raise ValueError(f"Give one --class, or one per prompt ({len(prompts)}), not {len(labels)}.")
    if prompts and labels:
        labels = labels * (len(prompts) // len(labels))
    captions = prompts or [setup.class_names[i] if setup.class_names else str(i) for i in labels]
    return captions, labels


def _class_index(value, num_classes, names):
    by_name = {n.lower(): i for i, n in enumerate(names)}
    if str(value).lower() in by_name:
        return by_name[str(value).lower()]
    if not str(value).isdigit() or int(value) >= num_classes:
        known = f"; names: {', '.join(names)}" if names else ""
        raise ValueError(f"Unknown class {value!r}: this model has classes 0..{num_classes - 1}{known}.")
    return int(value)


def check_options(o):
    """One-line errors for flags that do not fit together, before anything loads or compiles."""
    check_sampler(o.sampler, inpaint=o.mode == "inpaint")
    if o.mode not in MODES:
        raise ValueError(f"Unknown --mode {o.mode!r}; choose one of {MODES}.")
    if o.mode != "sample" and not o.image:
        raise ValueError(f"--mode={o.mode} needs --image.")
    if o.mode == "inpaint" and not o.mask:
        raise ValueError("--mode=inpaint needs --mask (white = regenerate).")
    for path in (o.image, o.mask, o.prompts):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found.")
    if o.resample < 1 or o.steps < 1 or o.num_images < 1:
        raise ValueError("--resample, --steps and --num_images must be at least 1.")
    if not 0 <= o.strength <= 1:
        raise ValueError(f"--strength must be in [0, 1], got {o.strength}.")
    if o.batch_size % jax.device_count():
        raise ValueError(f"--batch_size {o.batch_size} does not divide over {jax.device_count()} devices: "
                         f"use a multiple of {jax.device_count()}.")


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
    from dit_jax.data import images  # pylint: disable=import-outside-toplevel
    with open(path, "rb") as f:
        return images.fit(images.decode(f.read(), channels), resolution)


def encode_conditions(setup, captions, labels):
    """Per-condition model inputs (numpy, leading axis = condition)."""
    cond = {}
    if setup.text:
        from dit_jax.text import encoders  # pylint: disable=import-outside-toplevel
        cond.update(encoders.text_conditions(setup.text, captions))
    if labels is not None:
        cond["y"] = np.asarray(labels, np.int32)
    return cond


def to_global(x, target):
    """A host array, the same on every process, as a global jax.Array placed by `target`."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, target, lambda index: x[index])


def run(o):
    """Samples as `o` says; returns the uint8 images (N, H, W, C) and their captions."""
    check_options(o)
    setup = read_setup(o)
    captions, labels = read_conditions(o, setup)
    model_config = setup.model_config
    is_main = jax.process_index() == 0
    codec = Codec(setup)
    image = mask = None
    if o.mode != "sample":
        image = codec.encode(read_image(o.image, codec.resolution, codec.pixel_channels))
    if o.mode == "inpaint":
        mask = codec.mask(read_image(o.mask, codec.resolution, 1)[..., 0] > 127)
    cond = encode_conditions(setup, captions, labels)

    from dit_jax.models.pretrained import load_pretrained  # pylint: disable=import-outside-toplevel
    model, _ = load_pretrained(setup.export)
    graphdef, state = nnx.split(model)
    mesh = sharding.make_mesh(dict(data=-1, fsdp=1, tensor=1))
    batched, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    state = jax.tree.map(lambda v: to_global(v, replicated), state)
    total = len(captions) * o.num_images
    batch = min(o.batch_size, -(-total // jax.device_count()) * jax.device_count())
    shape = (batch, model_config["input_size"], model_config["input_size"], model_config["in_channels"])
    edit = {k: to_global(v, replicated) for k, v in (("image", image), ("mask", mask)) if v is not None}

    def sample_batch(state, cond, ids, edit):
        """Images `ids` of the run: each one's starting noise is drawn from (seed, its index) alone."""
        noise_key, step_key = jax.random.split(jax.random.PRNGKey(o.seed))
        x_T = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(noise_key, i), shape[1:], jnp.float32))(ids)
        key = jax.random.fold_in(step_key, ids[0])  # the batch's step noise (ddpm, inpainting)
        return generate(nnx.merge(graphdef, state), cond, shape, key, setup.schedule, sampler=o.sampler,
                        steps=o.steps, cfg_scale=o.cfg_scale, guidance_channels=o.guidance_channels,
                        prediction=setup.prediction, learn_sigma=model_config.get("learn_sigma", True),
                        clip_x0=None if setup.vae else 1.0, return_trajectory=bool(o.trajectory),
                        strength=o.strength, resample=o.resample, x_T=x_T, **edit)

    sample_batch = jax.jit(sample_batch)
    order = np.repeat(np.arange(len(captions)), o.num_images)  # condition of each image
    num_batches = -(-total // batch)
    if is_main:
        print(f"Sampling {total} images ({len(captions)} conditions x {o.num_images}) in {num_batches} batches of "
              f"{batch} on {jax.device_count()} devices: {o.sampler}, {o.steps} steps, cfg {o.cfg_scale}.", flush=True)
    outputs, trajectory = [], None
    for b in tqdm.trange(num_batches, desc="sample", unit="batch", disable=not is_main):
        ids = np.arange(b * batch, (b + 1) * batch, dtype=np.int32)
        rows = order[np.minimum(ids, total - 1)]  # the last batch is padded with repeats of the last image
        batch_cond = {k: to_global(v[rows], batched) for k, v in cond.items()}
        x = sample_batch(state, batch_cond, to_global(ids, batched), edit)
        if o.trajectory:
            x, steps = x
            if b == 0:
                trajectory = trajectory_frames(multihost_utils.process_allgather(steps, tiled=True))
        x = multihost_utils.process_allgather(x, tiled=True)
        outputs.append(to_uint8(codec.decode(x[:min(batch, total - b * batch)])) if is_main else None)
    if not is_main:
        return None, captions
    images, captions = np.concatenate(outputs), [captions[i] for i in order]
    write_outputs(o, images, captions, labels and [labels[i] for i in order])
    if trajectory is not None:
        frames = trajectory._replace(x=codec.decode(trajectory.x), x0=codec.decode(trajectory.x0))
        trajectory_strip(frames).save(o.trajectory)
        print(f"Wrote {o.trajectory}", flush=True)
    return images, captions


def write_outputs(o, images, captions, labels):
    out = o.out if o.out is not None else (None if o.npz else "samples.png")
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        columns = min(o.num_images if o.num_images > 1 else len(images), 8)
        captioned_grid(images[:GRID_MAX], captions[:GRID_MAX], columns=columns).save(out)
        stem = os.path.splitext(out)[0]
        for i, image in enumerate(images):
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(f"{stem}_{i:04d}.png")
        print(f"Wrote {out} and {len(images)} images {stem}_0000.png ...", flush=True)
    if o.npz:
        os.makedirs(os.path.dirname(os.path.abspath(o.npz)), exist_ok=True)
        arrays = dict(arr_0=images, captions=np.asarray(captions))
        if labels:
            arrays["labels"] = np.asarray(labels, np.int32)
        np.savez(o.npz, **arrays)
        print(f"Wrote {o.npz}: arr_0 {images.shape} uint8", flush=True)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"sample: unexpected arguments {argv[1:]}")
    distributed.initialize()
    values = {f.name: FLAGS[f.name if f.name != "classes" else "class"].value for f in dataclasses.fields(Options)}
    try:
        run(Options(**values))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"sample: {e}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main)
