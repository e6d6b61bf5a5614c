"""Samples a trained DiT: text prompts or class labels, from noise or by editing an image.

  python -m dit_jax.sample --workdir=RUN --prompt="red apple" --prompt=rocket --num_images=4 --out=apples.png
  python -m dit_jax.sample --workdir=RUN --prompts=prompts.txt --num_images=100 --npz=samples.npz
  python -m dit_jax.sample --workdir=RUN --prompt="cat face" --mode=inpaint --image=in.png --mask=mask.png
  python -m dit_jax.sample --workdir=RUN --prompt=snowman --mode=img2img --image=in.png --strength=0.6
  python -m dit_jax.sample --checkpoint=weights/xl2 --vae=stabilityai/sd-vae-ft-ema --class=207 --guidance_channels=3
  python -m dit_jax.sample --workdir=RUN --classifier=CLS --classifier_scale=4 --class=3 --cfg_scale=1
  python -m dit_jax.sample --workdir=RUN --prompt="a sneaker AND a bag" --style=inverted \
      --box="0.05,0.3,0.45,0.7:a sneaker" --box="0.55,0.3,0.95,0.7:a bag" --guidance=text=4,style=3,layout=2
  python -m dit_jax.sample --workdir=CONTROLNET_RUN --prompt="red apple" --control=edges.png --control_scale=0.8
  python -m dit_jax.sample --workdir=CONTROLNET_RUN --prompt="red apple" --control_from=photo.png --control_type=canny
  python -m dit_jax.sample --workdir=MULTIVIEW_RUN --prompt="a blue torus" --views=4 --out=torus.gif
  python -m dit_jax.sample --workdir=NOVEL_VIEW_RUN --prompt="a blue torus" --mode=views --image=front.png --out=t.gif
  python -m dit_jax.sample --workdir=VIDEO_RUN --prompt="a bag moving up" --out=bag.gif

--workdir reads the run's EMA export and run.json, and encodes prompts with
the encoder its data was prepared with (the manifest under --data_dir).
--checkpoint takes any export or converted directory; the text encoder, VAE
and diffusion settings then come from flags. Batches are split over every
device of every process; process 0 writes the outputs. Each image's
starting noise depends on --seed and its index only, so ddim and dpmpp
samples do not change with --batch_size or the device count; ddpm and
inpainting also draw noise per batch and repeat for the same batch size.
--spacing defaults to the model's: DiT's respaced grid for converted DiT
weights, the recipe's `sample.spacing` for a run, else each sampler's own.
--classifier (a noise-aware classifier's workdir) adds classifier guidance
toward --class to any model, unconditional and text ones included, on top
of classifier-free guidance (--cfg_scale=1 for none).
--style (a name from the data or an index) and --box (repeatable) set a
style and a layout for models with those paths (model.num_styles,
model.layout_max_boxes). --guidance replaces --cfg_scale by composable
guidance, eps(null) + sum_i w_i (eps(c_i) - eps(null)) with c_i the null
conditions but condition i (text, style, layout, class), all terms in one
batched call; each " AND " part of a prompt is a text term of its own.
A ControlNet run's --workdir samples its base under its ControlNet; more
ControlNets join with --controlnet (each a ControlNet run or its
controlnet_export). Each ControlNet takes one control, in order: the
--control images, then the controls computed from the --control_from images
as --control_type says (its detector settings and model are the run's
`controls.*`); each with its --control_scale. A control of another size is
resized (and said so). The grid shows each control beside its sample.
The --box boxes are drawn on the grid's pictures; the single images stay clean.
A multi-view model (model.multiview) samples each prompt's views together on the ring of cameras it was
trained around (--views must be its view count); --out=x.gif writes them as a turntable GIF with x.png, a
strip a sample. --mode=views gives a novel-view model (model.novel_view) --image as its input view, seen
from the first camera, and generates the others.
A video model (model.frames) samples clips with the same samplers:
--out=bag.gif writes bag.gif (the clips side by side, animated), bag.png
(a frame strip a clip), bag.mp4 when imageio-ffmpeg is installed, and each
clip's GIF (bag_0000.gif ...); --image for img2img and inpaint is then a GIF
or a frame strip of the model's frame count and size (one --mask for all
frames).
The work is in dit_jax/sampling.py; this module holds the flags and outputs.
"""

import dataclasses
import os

import jax
import numpy as np
from absl import app, flags
from PIL import Image

from dit_jax import sampling
from dit_jax.data import controls as controls_lib
from dit_jax.diffusion import BETA_SCHEDULES, PREDICTIONS, SPACINGS
from dit_jax.diffusion.flow import FLOW_SAMPLERS
from dit_jax.diffusion.generate import CFG_SCALE, SAMPLER, SAMPLERS, STEPS
from dit_jax.models import classifier
from dit_jax.models.layout import parse_box
from dit_jax.utils import distributed, paths, video
from dit_jax.utils.visualization import captioned_grid, trajectory_strip

MODES = ("sample", "inpaint", "img2img", "views")
GRID_MAX = 64  # the grid shows at most this many images; every image is written singly


def option(default, help_text, flag=None):
    """A field of Options and, through `define_flags`, the flag of the same name (or `flag`)."""
    meta = dict(help=help_text, flag=flag)
    if isinstance(default, list):
        return dataclasses.field(default_factory=list, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass
class Options:
    """What a sampling run needs: the flags' values, each flag defined from its field."""
    workdir: str = option(None, "A training run: its export/ weights and run.json settings.")
    checkpoint: str = option(None, "Instead of --workdir: a directory with config.json + model.safetensors.")
    data_dir: str = "~/.cache/dit_jax"  # the shared flag of distributed.define_flags
    prompt: list = option([], "A prompt (repeatable).")
    prompts: str = option(None, "A file of prompts, one a line.")
    classes: list = option([], "A class index or name (repeatable), for class-conditional models.", flag="class")
    mode: str = option("sample", f"{' | '.join(MODES)}: from noise, --image under --mask, SDEdit from --image, or "
                       "a novel-view model's other views of --image.")
    views: int = option(0, "A multi-view model: the views of each sample, its trained count (0: that count).")
    image: str = option(None, "The image to edit (inpaint, img2img).")
    mask: str = option(None, "Inpainting mask: white = regenerate, black = keep.")
    resample: int = option(1, "Inpainting: passes per step (RePaint resampling; 1 = replacement only).")
    strength: float = option(0.6, "img2img: how far the image is noised, 0 (kept) to 1 (pure noise).")
    sampler: str = option(None, f"{' | '.join(SAMPLERS)} (inpainting: ddpm | ddim); a flow-matching model: "
                          f"{' | '.join(FLOW_SAMPLERS)}. Default: the model's (a flow run: its sample.sampler, "
                          f"else heun; DDPM: {SAMPLER}).")
    steps: int = option(STEPS, "Sampling steps.")
    spacing: str = option(None, f"{' | '.join(SPACINGS)}; default: the model's (DiT's weights: dit), else the "
                          "sampler's.")
    eta: float = option(0.0, "DDIM's noise: 0 deterministic, 1 DDPM's variance (ddim samplers only).")
    cfg_scale: float = option(CFG_SCALE, "Classifier-free guidance scale (1 = none).")
    guidance_channels: int = option(None, "Guide only the first k channels (DiT: 3); default: the model's, else all.")
    classifier: str = option(None, "A noise-aware classifier's workdir: guide each image toward its --class.")
    classifier_scale: float = option(1.0, "Classifier guidance scale: 1 exact Bayes, more sharper, 0 none.")
    guidance: str = option(None, "Composable guidance weights, e.g. text=4,style=3,layout=2,class=2 (negative "
                           "ones push away); replaces --cfg_scale. Prompts may join text terms with ' AND '.")
    style: str = option(None, "A style name (from the data) or index, for models with a style path.")
    boxes: list = option([], "A layout box x0,y0,x1,y1:phrase in [0, 1] of the image (repeatable).", flag="box")
    seed: int = option(0, "Random seed.")
    num_images: int = option(4, "Images per prompt or class.")
    batch_size: int = option(32, "Images per sampling call over all devices (a multiple of the device count).")
    out: str = option(None, "Captioned PNG grid, single images beside it (default samples.png unless --npz). A "
                      "video model: x.gif (animated), x.png (frame strips) and x.mp4 (with imageio-ffmpeg) for "
                      "--out=x.gif, .png or .mp4, each clip's GIF beside them (default samples.gif).")
    npz: str = option(None, "Write every sample as uint8 NHWC `arr_0` (clips: NTHWC) with `captions`, for "
                      "evaluation.")
    trajectory: str = option(None, "Write x_t and the predicted x0 over the steps of the first image here.")
    text_encoder: str = option(None, "--checkpoint only: clip | t5 | minilm, for text-conditioned models.")
    text_path: str = option("", "--checkpoint only: the text encoder's local directory or hub id.")
    text_layer: str = option("last", "--checkpoint only: last | penultimate.")
    vae: str = option(None, "--checkpoint only: a diffusers AutoencoderKL for latent models.")
    vae_scale: float = option(sampling.VAE_SCALE, "--checkpoint only: the latent scale.")
    schedule: str = option(None, f"--checkpoint only: {' | '.join(BETA_SCHEDULES)}, the beta schedule it was "
                           "trained with (default: its sampling.json, else linear).")
    timesteps: int = option(None, "--checkpoint only: its diffusion timesteps (default: its sampling.json, "
                            "else 1000).")
    prediction: str = option(None, f"--checkpoint only: {' | '.join(PREDICTIONS)} (default: its sampling.json, "
                             "else eps).")
    control: list = option([], "A control image (repeatable): one per ControlNet, the workdir's first, then each "
                           "--controlnet's.")
    control_from: list = option([], "An image to compute a control from, as --control_type says (repeatable; "
                                "these follow the --control images).")
    control_type: list = option([], f"The type of each --control_from ({' | '.join(controls_lib.CONTROL_TYPES)} "
                                "| outline), one for all or one each; it must be the ControlNet's.")
    control_scale: list = option([], "The weight of each ControlNet (one for all or one each; default 1).")
    controlnet: list = option([], "Another ControlNet (a ControlNet run or its controlnet_export; repeatable).")
    null_control: str = option("blank", "Guidance's null half: blank (zero controls: guides toward the control "
                               "too, as control dropout trained) or same (keeps the controls, as diffusers).")
    control_model_path: str = option("", "--checkpoint only: the depth or pose model of --control_from (a "
                                     "--workdir uses its run's controls.model_path).")

    @property
    def settings(self):
        return sampling.Settings(sampler=self.sampler, steps=self.steps, spacing=self.spacing, eta=self.eta,
                                 cfg_scale=self.cfg_scale, guidance_channels=self.guidance_channels, seed=self.seed,
                                 classifier=self.classifier, classifier_scale=self.classifier_scale,
                                 guidance=self.guidance)


DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
          list: flags.DEFINE_multi_string}


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    distributed.define_flags()
    flags.adopt_module_key_flags(distributed)  # so --help lists them
    for f in dataclasses.fields(Options):
        if f.metadata:
            DEFINE[f.type](f.metadata["flag"] or f.name, [] if f.type is list else f.default, f.metadata["help"])


FLAGS = flags.FLAGS


def check_options(o):
    """One-line errors for flags that do not fit together, before anything loads or compiles."""
    if o.mode not in MODES:
        raise ValueError(f"Unknown --mode {o.mode!r}; choose one of {MODES}.")
    if o.sampler is not None:  # else checked with the model's sampler, once its setup is read
        sampling.check_settings(o.settings, inpaint=o.mode == "inpaint")
    if o.mode != "sample" and not o.image:
        raise ValueError(f"--mode={o.mode} needs --image.")
    if o.mode == "inpaint" and not o.mask:
        raise ValueError("--mode=inpaint needs --mask (white = regenerate).")
    for name in ("workdir", "checkpoint", "data_dir", "out", "npz", "trajectory", "image", "mask", "prompts"):
        if getattr(o, name):
            paths.check(getattr(o, name), f"--{name}")
    for path in (o.image, o.mask, o.prompts):
        if path and not paths.path(path).is_file():
            raise FileNotFoundError(f"{path} not found.")
    if o.views < 0:
        raise ValueError(f"--views must be a view count (0: the model's), got {o.views}.")
    if o.resample < 1 or o.num_images < 1:
        raise ValueError("--resample and --num_images must be at least 1.")
    if not 0 <= o.strength <= 1:
        raise ValueError(f"--strength must be in [0, 1], got {o.strength}.")
    if o.out:  # images or clips: the model is not read yet
        video.check_out(o.out)
    for box in o.boxes:
        parse_box(box)
    check_control_options(o)
    if o.batch_size % jax.device_count():
        raise ValueError(f"--batch_size {o.batch_size} does not divide over {jax.device_count()} devices: "
                         f"use a multiple of {jax.device_count()}.")


def read_setup(o):
    """The model's Setup; a classifier run (task=classifier) is refused in one line."""
    setup = sampling.read_setup(o.workdir, o.checkpoint, o.data_dir, text_encoder=o.text_encoder,
                                text_path=o.text_path, text_layer=o.text_layer, vae=o.vae, vae_scale=o.vae_scale,
                                schedule=o.schedule, timesteps=o.timesteps, prediction=o.prediction)
    classifier.refuse(setup.model_config, "sample")
    return setup


def with_model_sampler(o, setup):
    """`o` with --sampler, when not given, the model's own (sampling.model_sampler), checked."""
    if o.sampler is not None:
        return o
    o = dataclasses.replace(o, sampler=setup.sampler)
    sampling.check_settings(o.settings, inpaint=o.mode == "inpaint", objective=setup.objective)
    return o


def run(o):
    """Samples as `o` says and writes the outputs; returns the uint8 images (N, H, W, C) and their captions."""
    check_options(o)
    setup = read_setup(o)
    check_clip_options(o, setup)
    o = with_model_sampler(o, setup)
    prompts = list(o.prompt)
    if o.prompts:
        prompts += [line.strip() for line in paths.path(o.prompts).read_text().splitlines() if line.strip()]
    guide = sampling.read_classifier(o.classifier, setup) if o.classifier else None
    captions, labels = sampling.read_conditions(setup, prompts, o.classes, guide and guide[1])
    composition = sampling.read_composition(setup, captions if prompts else [], o.style,
                                            [parse_box(b) for b in o.boxes], o.guidance)
    codec = sampling.Codec(setup)
    controls = read_controls(o, setup, codec)
    inputs = multiview_inputs(o, setup, codec, len(captions))
    image = mask = None
    if o.mode in ("inpaint", "img2img"):
        image = codec.encode(read_edited(o, setup, codec))
    if o.mode == "inpaint":
        mask = codec.mask(sampling.read_image(o.mask, codec.resolution, 1)[..., 0] > 127)
    out = sampling.sample_images(setup, o.settings, captions, labels, o.num_images, o.batch_size, codec=codec,
                                 image=image, mask=mask, strength=o.strength if o.mode == "img2img" else 1.0,
                                 resample=o.resample, trajectory=bool(o.trajectory), classifier=guide,
                                 composition=composition, controls=controls, null_control=o.null_control,
                                 inputs=inputs)
    if jax.process_index():
        return None, out.captions
    write_outputs(o, out, setup.resolve(o.settings), controls)
    return out.images, out.captions


def multiview_inputs(o, setup, codec, count):
    """A multi-view model's checks (--views its view count; --mode=views for a novel-view model, which reads
    --image at its size) and, for --mode=views, {"given": the input view, one per condition}; else None."""
    c = setup.model_config
    if not c.get("multiview"):
        if o.views or o.mode == "views":
            raise ValueError("--views and --mode=views are for a multi-view model (model.multiview); this one is not.")
        return None
    if o.views and o.views != c["frames"]:
        raise ValueError(f"--views={o.views} but this model was trained on {c['frames']} cameras: pass "
                         f"--views={c['frames']}, or train one for {o.views} (configs/multiview_shapes.py:views={o.views}).")
    if c.get("novel_view") and o.mode != "views":
        raise ValueError("This is a novel-view model: pass --mode=views --image=VIEW.png, the view to start from.")
    if o.mode != "views":
        return None
    if not c.get("novel_view"):
        raise ValueError("--mode=views needs a novel-view model (model.novel_view, configs/multiview_shapes.py:novel); "
                         "this one generates every view from text.")
    with Image.open(o.image) as picture:
        size = picture.size
    if size != (codec.resolution, codec.resolution):
        raise ValueError(f"--image {o.image} is {size[0]}x{size[1]}; this model takes {codec.resolution}x"
                         f"{codec.resolution} views: give a view at that size.")
    given = codec.encode(sampling.read_image(o.image, codec.resolution, codec.pixel_channels))
    return {"given": np.broadcast_to(given, (count, *given.shape))}


def check_clip_options(o, setup):
    """Once the model's config is read (JSON only): --out's extension for what it makes (clips: .gif, .mp4,
    .png; images: an image format), and the flags that make images only, refused for a video model."""
    if o.out:
        video.check_out(o.out, clips=bool(setup.model_config.get("frames")))
    if not sampling.is_video(setup):
        return
    if setup.vae:
        raise ValueError("A video model samples in pixel space here: the VAE decodes images, not clips.")
    if o.trajectory:
        raise ValueError("--trajectory draws an image model's steps; a video model has no trajectory strip.")
    if o.mode != "sample":  # the clip to edit: its frame count and size are checked before anything loads
        read_edited(o, setup, None)


def read_edited(o, setup, codec):
    """The image (uint8 (H, W, C)) or, for a video model, the clip (T, H, W, C) that --image names."""
    if sampling.is_video(setup):
        c = setup.model_config
        return video.read_clip(o.image, c["frames"], c["input_size"], c["in_channels"])
    return sampling.read_image(o.image, codec.resolution, codec.pixel_channels)


def write_clips(o, out, path):
    """A video model's samples: path's .gif, .png (frame strips) and .mp4 (with imageio-ffmpeg) of the first
    GRID_MAX, and every clip's own GIF stem_0000.gif ..."""
    written = video.save_clips(path, out.images[:GRID_MAX], out.captions[:GRID_MAX],
                               columns=min(o.num_images if o.num_images > 1 else len(out.images), 8))
    stem = os.path.splitext(path)[0]
    for i, clip in enumerate(out.images):
        video.write_gif(f"{stem}_{i:04d}.gif", clip)
    print(f"Wrote {', '.join(written)} and {len(out.images)} clips {stem}_0000.gif ...", flush=True)


def write_outputs(o, out, settings, controls=()):
    images, captions = out.images, out.captions
    clips = images.ndim == 5
    path = o.out if o.out is not None else (None if o.npz else "samples.gif" if clips else "samples.png")
    if path and clips:
        write_clips(o, out, path)
    elif path:
        paths.path(paths.absolute(path)).parent.mkdir(parents=True, exist_ok=True)
        layout = [parse_box(b) for b in o.boxes]  # drawn on the grid's pictures; the single images stay clean
        if controls:
            grid = control_grid(images[:GRID_MAX], captions[:GRID_MAX], controls)
        else:
            columns = min(o.num_images if o.num_images > 1 else len(images), 8)
            grid = captioned_grid(images[:GRID_MAX], captions[:GRID_MAX], columns=columns,
                                  boxes=[layout] * len(images[:GRID_MAX]) if layout else None)
        paths.save_image(grid, path)
        stem = path[:-len(paths.path(path).suffix) or None]
        for i, image in enumerate(images):
            paths.save_image(Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image),
                             f"{stem}_{i:04d}.png")
        print(f"Wrote {path} and {len(images)} images {stem}_0000.png ...", flush=True)
    if o.npz:
        sampling.write_npz(o.npz, images, captions, out.labels, settings)
        print(f"Wrote {o.npz}: arr_0 {images.shape} uint8", flush=True)
    if out.trajectory is not None:
        paths.save_image(trajectory_strip(out.trajectory), o.trajectory)
        print(f"Wrote {o.trajectory}", flush=True)


def parse_control_scales(o):
    try:
        return [float(v) for v in o.control_scale]
    except ValueError:
        raise ValueError(f"--control_scale takes numbers, got {o.control_scale}.") from None


def check_control_options(o):
    """One-line errors for the control flags, before anything loads."""
    for path in o.control + o.control_from:
        if not paths.path(path).is_file():
            raise FileNotFoundError(f"Control image {path} not found.")
    if o.control_type and not o.control_from:
        raise ValueError("--control_type says how to compute each --control_from image; --control images are "
                         "used as they are.")
    if o.control_from and len(o.control_type) not in (1, len(o.control_from)):
        raise ValueError(f"Give one --control_type for all {len(o.control_from)} --control_from images or one each, "
                         f"not {len(o.control_type)}.")
    for name in o.control_type:
        controls_lib.check_name(name, extra=("outline",))
    count = len(o.control) + len(o.control_from)
    scales = parse_control_scales(o)
    if scales and (not count or len(scales) not in (1, count)):
        raise ValueError(f"Give one --control_scale for all {count} controls or one each, not {len(scales)}.")
    if o.null_control not in sampling.NULL_CONTROLS:
        raise ValueError(f"Unknown --null_control {o.null_control!r}; choose one of {sampling.NULL_CONTROLS}.")


def control_options(o, name):
    """The settings `name` was computed with in training: the run's `controls.*` (--checkpoint: the defaults)."""
    config = None
    if o.workdir and paths.path(o.workdir).joinpath("run.json").is_file():
        config = paths.read_json(paths.join(o.workdir, "run.json"))["config"].get("controls") or {}
    return sampling.control_options(config, name, o.control_model_path)


def read_controls(o, setup, codec):
    """A sampling.Control per ControlNet (the workdir's, then each --controlnet) from the control flags, checked
    against what each ControlNet was trained on (type, base) before any model loads."""
    from dit_jax.data import images as images_lib  # pylint: disable=import-outside-toplevel
    from dit_jax.models.controlnet import base_model_kwargs  # pylint: disable=import-outside-toplevel
    directories = list(setup.controlnets) + [sampling.controlnet_directory(d) for d in o.controlnet]
    count = len(o.control) + len(o.control_from)
    if len(directories) != count:
        raise ValueError(f"{len(directories)} ControlNets (the workdir's and --controlnet) need one control each "
                         f"(--control or --control_from), got {count}.")
    configs = [sampling.controlnet_config(d) for d in directories]
    for directory, config in zip(directories, configs):
        base_model_kwargs(config["base"], setup.model_config)  # another base's architecture fails here
    types = list(o.control_type) * (len(o.control_from) if len(o.control_type) == 1 else 1)
    sources = [("file", path, None) for path in o.control] + [("from", path, t) for path, t in
                                                               zip(o.control_from, types)]
    scales = parse_control_scales(o) or [1.0]
    scales = scales * count if len(scales) == 1 else scales
    out = []
    for directory, config, (kind, path, name), scale in zip(directories, configs, sources, scales):
        trained = config["control_type"]
        if name and name != trained:
            raise ValueError(f"--control_type={name} but the ControlNet {directory} was trained on {trained!r} "
                             f"controls: pass --control_type={trained}.")
        if kind == "file":
            channels = sampling.control_channels(config, codec)
            pixels = np.asarray(images_lib.decode(paths.path(path).read_bytes(), 1 if channels == 1 else 3))
            pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        else:
            photo = sampling.read_image(path, codec.resolution, codec.pixel_channels)
            pixels = sampling.compute_control(name, photo, control_options(o, name))
        out.append(sampling.make_control(directory, config, codec, pixels, scale,
                                         what=f"control {paths.path(path).name}"))
    return out


def control_grid(images, captions, controls):
    """Each sample in a row after its controls (one per ControlNet, captioned with its scale)."""
    def rgb(x):
        return np.repeat(x, 3, -1) if x.shape[-1] == 1 else x
    size = images.shape[1:3]
    cells, labels = [], []
    for image, caption in zip(images, captions):
        for j, c in enumerate(controls):
            cells.append(rgb(sampling.fit_control(c.pixels, size, c.pixels.shape[-1]) if c.pixels.shape[:2] != size
                             else c.pixels))
            labels.append(f"control {j + 1} (x{c.scale:g})")
        cells.append(rgb(image))
        labels.append(caption)
    return captioned_grid(np.stack(cells), labels, columns=len(controls) + 1)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"sample: unexpected arguments {argv[1:]}")
    distributed.initialize()
    values = {f.name: FLAGS[f.metadata.get("flag") or f.name].value for f in dataclasses.fields(Options)}
    try:
        run(Options(**values))
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"sample: {e}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main)
