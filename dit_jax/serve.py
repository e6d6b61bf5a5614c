"""A browser demo of a trained run: text (or class) to image, inpainting, image-to-image, and the controls,
layouts, clips or views the run makes.

  python -m dit_jax.serve --workdir=RUN [--port=7860] [--host=127.0.0.1] [--max_images=4]

A Gradio Blocks app over dit_jax/sampling.py, the module behind `sample`:
the same Setup, conditions, starting noise and samplers, so a seed gives
the images `sample` gives for one prompt. The tabs are those the run
supports: Generate, Inpaint and Image to image for an image model; Control
for a ControlNet run (its base under its ControlNet, the control uploaded
or computed from a photo); Layout & style for a model with style labels or
layout boxes (composable guidance, one weight a condition); Video for a
clip model and Views for a multi-view one (an animated GIF and frame
strips; a novel-view model's views of an uploaded image). The weights load
once, and the sampler is compiled at start-up for each tab's defaults, so
the first click is fast; another sampler, step count, strength or number of
images compiles once on first use. The seed, the guidance scale, the
composable guidance weights and the control scale are inputs of the
compiled program, not constants, so changing them does not recompile.
Requests queue and run one at a time. The progress bar follows the
sampler's steps as they run: the model reports each call's timestep to the
host (jax.debug.callback) while a worker thread runs it, and the request
shows each step as it is reached.
Bad settings come back as messages in the page (gr.Error), never tracebacks.
"""

import dataclasses
import functools
import os
import queue
import socket
import tempfile
import threading
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a demo server phones nowhere

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from absl import app, flags  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position

from dit_jax import sampling  # pylint: disable=wrong-import-position
from dit_jax.data import images as image_io  # pylint: disable=wrong-import-position
from dit_jax.diffusion.composition import model_conditions  # pylint: disable=wrong-import-position
from dit_jax.diffusion.flow import FLOW_SAMPLERS, T_SCALE, flow_sigmas  # pylint: disable=wrong-import-position
from dit_jax.diffusion.generate import INPAINT_SAMPLERS, SAMPLERS  # pylint: disable=wrong-import-position
from dit_jax.models import classifier  # pylint: disable=wrong-import-position
from dit_jax.models.layout import parse_box  # pylint: disable=wrong-import-position
from dit_jax.models.pretrained import load_pretrained  # pylint: disable=wrong-import-position
from dit_jax.utils import paths, video  # pylint: disable=wrong-import-position
from dit_jax.utils.visualization import captioned_grid, to_uint8  # pylint: disable=wrong-import-position

PORT, MAX_IMAGES, MAX_STEPS = 7860, 4, 250
MODES = ("generate", "inpaint", "img2img", "control", "layout", "video", "views")  # one tab each
STRENGTH = 0.6  # img2img's default, as sample's
WEIGHTS = {"text": 4.0, "style": 3.0, "layout": 2.0, "class": 2.0}  # the Layout tab's guidance defaults
AS_IS = "as is"  # the Control tab's upload is the control image itself
NO_STYLE = "none"


def check_port(host, port):
    """A one-line error when the port cannot be served, before anything loads."""
    if not 0 < port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {port}.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds it
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f"Port {port} on {host} is in use or not available ({e.strerror}): pass --port with a "
                             "free one, or stop what is serving there.") from None


def check_run(workdir):
    """A one-line error for a workdir that cannot be served, before anything loads."""
    if not workdir:
        raise ValueError("Pass --workdir: a training run with exported weights (its export/ folder).")
    paths.check(workdir, "--workdir")
    if not paths.path(workdir).is_dir():
        raise FileNotFoundError(f"Workdir {workdir} does not exist: pass a training run's --workdir.")
    if not (paths.path(paths.join(workdir, "export", "config.json")).is_file() or
            sampling.is_controlnet_run(workdir)):
        raise FileNotFoundError(f"{workdir} has no export (export/config.json, or a ControlNet run's "
                                f"{sampling.CONTROLNET_EXPORT}/): training writes it when it reaches config.steps; "
                                "serve a finished run, or finish this one.")


class Demo:
    """A run's model loaded once, with one compiled sampler per set of static choices (sampler, steps, strength,
    images, guided, guidance terms, control)."""

    def __init__(self, workdir, data_dir="~/.cache/dit_jax", max_images=MAX_IMAGES):
        check_run(workdir)
        if max_images < 1:
            raise ValueError(f"--max_images must be at least 1, got {max_images}.")
        self.setup = sampling.read_setup(workdir=workdir, data_dir=data_dir)
        classifier.refuse(self.setup.model_config, "serve")
        if self.setup.model_config.get("frames") and self.setup.vae:
            raise ValueError("A video or multi-view model is served in pixel space: the VAE decodes images.")
        run = paths.read_json(paths.join(workdir, "run.json"))
        self.defaults = sampling.run_settings(_Config(run["config"]["sample"]))
        self.name, self.max_images = paths.path(workdir).name, max_images
        self.codec = sampling.Codec(self.setup)
        self.encoder = None
        if self.setup.text:
            from dit_jax.text import encoders  # pylint: disable=import-outside-toplevel
            t = self.setup.text
            self.encoder = encoders.load(t["encoder"], t.get("source", ""), t["max_length"], t["layer"])
        model, _ = load_pretrained(self.setup.export)
        self.controlnet = None  # a ControlNet run: (its export directory, its config.json, the run's controls.*)
        if self.setup.controlnets:
            directory = self.setup.controlnets[0]
            self.controlnet = (directory, sampling.controlnet_config(directory), run["config"].get("controls") or {})
            model = sampling.controlled_model(model, [sampling.Control(directory, None)])  # the base under it
        self.graphdef, state = nnx.split(model)
        self.device = jax.devices()[0]
        self.state = jax.device_put(state, self.device)
        self.compiled = {}
        self.reached = queue.Queue()  # timesteps the running sampler has reached (one request runs at a time)
        self.outdir = tempfile.mkdtemp(prefix="dit_jax_serve_")  # the GIFs of clips and views
        self.made = 0

    # What the model takes.
    @property
    def num_classes(self):
        return self.setup.model_config.get("num_classes", 0)

    @property
    def class_choices(self):
        names = self.setup.class_names
        return [names[i] if i < len(names) else str(i) for i in range(self.num_classes)]

    @property
    def style_choices(self):
        names, count = self.setup.style_names, self.setup.model_config.get("num_styles", 0)
        return [names[i] if i < len(names) else str(i) for i in range(count)]

    @property
    def conditions_guided(self):
        """The conditions composable guidance weighs on this model (the Layout tab's weights)."""
        return model_conditions(self.setup.model_config)

    @property
    def samplers(self):
        return FLOW_SAMPLERS if self.setup.objective == "flow" else SAMPLERS

    @property
    def inpaint_samplers(self):
        return FLOW_SAMPLERS if self.setup.objective == "flow" else INPAINT_SAMPLERS

    @property
    def tabs(self):
        """The modes (MODES) this run supports, one tab each."""
        c = self.setup.model_config
        if c.get("multiview"):
            return ("views",)
        if sampling.is_video(self.setup):
            return ("video",)
        tabs = ["generate", "inpaint", "img2img"]
        if self.controlnet:
            tabs.append("control")
        if c.get("num_styles") or c.get("layout_max_boxes"):
            tabs.append("layout")
        return tuple(tabs)

    @property
    def views(self):
        """A multi-view model's view count (its ring of cameras), else 0."""
        c = self.setup.model_config
        return c["frames"] if c.get("multiview") else 0

    @property
    def novel_view(self):
        return bool(self.setup.model_config.get("novel_view"))

    def describe(self):
        c = self.setup.model_config
        takes = [w for w, on in (("text", self.setup.text), ("class labels", self.num_classes),
                                 ("a style", c.get("num_styles")), ("layout boxes", c.get("layout_max_boxes")))
                 if on]
        space = "VAE latents" if self.setup.vae else "pixels"
        r = self.codec.resolution
        makes = f"{r}x{r} images"
        if self.views:
            makes = (f"{self.views} views ({r}x{r}) of an object on a ring of cameras"
                     + (", the first one given" if self.novel_view else ""))
        elif "video" in self.tabs:
            makes = f"clips of {c['frames']} frames of {r}x{r}"
        net = ""
        if self.controlnet:
            net = (f" A ControlNet steers it with {self.controlnet[1]['control_type']} controls in the Control tab; "
                   "the other tabs sample the base alone.")
        return (f"**{self.name}**: a DiT ({c['hidden_size']} wide, {c['depth']} blocks, patch {c['patch_size']}) "
                f"trained with {self.setup.objective} on {space}; it makes {makes} from "
                f"{', '.join(takes) or 'nothing (unconditional)'}.{net}")

    # Requests.
    def settings(self, sampler, steps, cfg_scale, seed, num_images, mode):
        """Checked Settings from the page's values; one-line ValueErrors for what cannot sample."""
        for name, value in (("steps", steps), ("seed", seed), ("number of images", num_images)):
            if value is None or float(value) != int(value):
                raise ValueError(f"The {name} must be a whole number, got {value!r}.")
        if not 1 <= int(num_images) <= self.max_images:
            raise ValueError(f"The number of images must be 1..{self.max_images} (the server's --max_images), "
                             f"got {int(num_images)}.")
        if not 0 <= int(seed) < 2**31:
            raise ValueError(f"The seed must be in 0..{2**31 - 1}, got {int(seed)}.")
        if not 1 <= int(steps) <= min(MAX_STEPS, len(self.setup.schedule)):
            raise ValueError(f"Steps must be 1..{min(MAX_STEPS, len(self.setup.schedule))}, got {int(steps)}.")
        if cfg_scale is None or not np.isfinite(cfg_scale) or cfg_scale < 0:
            raise ValueError(f"The guidance scale must be a number >= 0 (1: none), got {cfg_scale!r}.")
        settings = sampling.Settings(sampler=sampler, steps=int(steps), cfg_scale=float(cfg_scale), seed=int(seed))
        sampling.check_settings(settings, inpaint=mode == "inpaint", objective=self.setup.objective)
        return settings

    def conditions(self, prompt, class_name, composition=None, inputs=None):
        """Model inputs for one prompt and/or class (and a composition, per-condition inputs), numpy with a
        leading axis of 1."""
        prompt = (prompt or "").strip()
        if self.setup.text and not prompt:
            raise ValueError("Type a prompt: this model draws from text.")
        if prompt and not self.setup.text:
            raise ValueError("This model reads no text: leave the prompt empty and pick a class.")
        labels = None
        if self.num_classes:
            if class_name in (None, ""):
                raise ValueError("Pick a class: this model is class-conditional.")
            labels = [self.class_choices.index(class_name) if class_name in self.class_choices
                      else sampling._class_index(class_name, self.num_classes, self.setup.class_names)]  # pylint: disable=protected-access
        return sampling.encode_conditions(self.setup, [prompt], labels, composition, inputs, self.encoder)

    def composition(self, prompt, style, boxes, weights):
        """The Layout tab's style name (or NO_STYLE), boxes (one `x0,y0,x1,y1:phrase` a line) and guidance
        weights {condition: weight}, checked as `sample --style --box --guidance` are."""
        for name, w in weights.items():
            if w is None or not np.isfinite(w):
                raise ValueError(f"The {name} guidance weight must be a number, got {w!r}.")
        parsed = []
        for line in (boxes or "").splitlines():
            if line.strip():
                parsed.append(parse_box(line.strip()))
        spec = ",".join(f"{name}={weights[name]!r}" for name in self.conditions_guided)
        return sampling.read_composition(self.setup, [(prompt or "").strip()],
                                         None if style in (None, "", NO_STYLE) else style, parsed, spec or None)

    def control(self, image, kind, scale):
        """The Control tab's Control: the uploaded image as the control (AS_IS), or its `kind` control computed
        as the run's data computed them (`sample --control_from`)."""
        directory, config, options = self.controlnet
        if image is None:
            raise ValueError("Upload a control image, or a picture to compute the control from.")
        if scale is None or not np.isfinite(scale):
            raise ValueError(f"The control scale must be a number, got {scale!r}.")
        pixels = np.asarray(image, np.uint8)
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels[..., :3]
        if kind != AS_IS:
            if kind != config["control_type"]:
                raise ValueError(f"This ControlNet was trained on {config['control_type']!r} controls, not "
                                 f"{kind!r}: pick {config['control_type']} or {AS_IS!r}.")
            photo = self.fit(image, "a picture to compute the control from")
            pixels = sampling.compute_control(kind, photo, sampling.control_options(options, kind))
        return sampling.make_control(directory, config, self.codec, pixels, float(scale))

    def fit(self, array, what):
        """An uploaded image (H, W[, C]) uint8 fitted to the model's resolution; too small ones are refused."""
        if array is None:
            raise ValueError(f"Upload {what}.")
        h, w = array.shape[:2]
        r = self.codec.resolution
        if min(h, w) < r:
            raise ValueError(f"The image is {w}x{h} pixels but this model makes {r}x{r}: upload one at least {r} "
                             "pixels on each side.")
        mode = "L" if self.codec.pixel_channels == 1 else "RGB"
        array = np.asarray(array, np.uint8)
        array = array[..., 0] if array.ndim == 3 and array.shape[-1] == 1 else array
        return image_io.fit(Image.fromarray(array).convert(mode), r)

    def visited(self, settings, mode, strength):
        """The model timesteps the sampler will call the model at, in order (what the progress bar counts)."""
        full = np.asarray(sampling.sampled_timesteps(self.setup, settings), np.float64)
        if mode != "img2img" or strength == 1:
            return full
        kept = int(round(strength * settings.steps))
        if self.setup.objective == "flow":
            return flow_sigmas(kept, self.setup.shift, start=strength)[:-1] * T_SCALE
        return full[len(full) - kept:]

    def program(self, settings, strength, num_images, terms=(), controlled=False):
        """The compiled sampler for these static choices (built on first use, then reused): `terms` the
        conditions composable guidance weighs (their weights are inputs), `controlled` under the ControlNet."""
        guided = settings.cfg_scale != 1
        key = (settings.sampler, settings.steps, strength, num_images, guided, terms, controlled)
        if key in self.compiled:
            return self.compiled[key]
        setup, graphdef, reached, has_net = self.setup, self.graphdef, self.reached, bool(self.controlnet)

        def report(t):
            reached.put(float(t))

        @jax.jit
        def run(state, cond, seed, cfg_scale, edit, weights, control_scale):
            model = nnx.merge(graphdef, state)
            if has_net:  # the ControlledDiT: under its ControlNet at the request's scale, or its base alone
                model = sampling.with_controls(model, 1, scales=[control_scale]) if controlled else model.base

            def reporting_model(x, t, **kwargs):
                jax.debug.callback(report, t[0])
                return model(x, t, **kwargs)

            s = dataclasses.replace(settings, seed=seed, cfg_scale=cfg_scale if guided else 1.0)
            return sampling.generate_batch(reporting_model, setup, s, cond, jnp.arange(num_images, dtype=jnp.int32),
                                           strength=strength, guidance=weights or None, **edit)

        self.compiled[key] = run
        return run

    def sample(self, mode, prompt, class_name, sampler, steps, cfg_scale, seed, num_images, image=None, mask=None,
               strength=1.0, progress=None, *, composition=None, control=None, given=None):
        """uint8 images (N, H, W[, C]), or clips and views (N, T, H, W, C), for one request; `progress(fraction,
        desc)` is told each step reached. `composition` (read_composition) for the Layout tab, `control` (a
        sampling.Control) for the Control tab, `given` (uint8, fitted) a novel-view model's input view."""
        if mode not in self.tabs:
            raise ValueError(f"This run has no {mode} tab; it has {', '.join(self.tabs)}.")
        settings = self.settings(sampler, steps, cfg_scale, seed, num_images, mode)
        n = int(num_images)
        if mode == "img2img":
            if not 0 <= strength <= 1:
                raise ValueError(f"The strength must be in [0, 1], got {strength}.")
            strength = round(strength * settings.steps) / settings.steps  # only the number of kept steps matters
            if strength == 0:
                raise ValueError(f"At strength below {0.5 / settings.steps:.3g} no step of {settings.steps} runs: "
                                 "raise the strength or the steps.")
        if mode == "views" and self.novel_view and given is None:
            raise ValueError("Upload the view to start from: this novel-view model makes the other views of it.")
        inputs = {"given": self.codec.encode(given)[None]} if given is not None else None
        cond = self.conditions(prompt, class_name, composition, inputs)
        if control is not None:
            cond.update(sampling.control_conditions([control], 1))
        cond = {k: jax.device_put(np.repeat(v, n, axis=0), self.device) for k, v in cond.items()}
        edit = {}
        if image is not None:
            edit["image"] = jax.device_put(self.codec.encode(image), self.device)
        if mask is not None:
            edit["mask"] = jax.device_put(self.codec.mask(mask), self.device)
        weights = dict((composition.guidance if composition else None) or {})
        visited = self.visited(settings, mode, strength)
        run = self.program(settings, strength, n, tuple(weights), control is not None)
        while not self.reached.empty():
            self.reached.get_nowait()
        # The sampler runs in a thread (on CPU the call returns only when it is done) while this one shows the
        # steps it reaches.
        result = {}
        args = (self.state, cond, jnp.int32(settings.seed), jnp.float32(settings.cfg_scale), edit,
                {k: jnp.float32(w) for k, w in weights.items()}, jnp.float32(control.scale if control else 1.0))

        def work():
            try:
                result["x"] = np.asarray(run(*args))
            except Exception as e:  # pylint: disable=broad-except  # raised again in the request's thread
                result["error"] = e

        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        shown = 0
        while worker.is_alive() or not self.reached.empty():
            try:
                t = self.reached.get(timeout=0.05)
            except queue.Empty:
                continue
            index = int(np.argmin(np.abs(visited - t))) + 1
            if progress is not None and index > shown:
                shown = index
                progress(index / len(visited), f"step {index} of {len(visited)}")
        worker.join()
        if "error" in result:
            raise result["error"]
        return to_uint8(self.codec.decode(result["x"]))

    def animation(self, clips, captions):
        """A GIF file of clips or views (N, T, H, W, C), each frame the N side by side (a turntable for views)."""
        self.made += 1
        path = os.path.join(self.outdir, f"{self.tabs[0]}_{self.made:05d}.gif")
        return video.write_gif(path, video.grid_frames(clips, captions))

    def warm_up(self, tabs=None):
        """Compiles (and runs once) the default request of each tab (or of `tabs`), so the first click does not
        wait for XLA."""
        started = time.time()
        d, r = self.defaults, self.codec.resolution
        blank = np.zeros((r, r, self.codec.pixel_channels), np.uint8)
        half = np.zeros((r, r), bool)
        half[:, r // 2:] = True
        args = dict(prompt="warm-up" if self.setup.text else "", class_name=(self.class_choices or [None])[0],
                    steps=d.steps, cfg_scale=d.cfg_scale, seed=0, num_images=min(MAX_IMAGES, self.max_images))
        for mode in tabs or self.tabs:
            extra = {}
            if mode == "inpaint":
                extra = dict(image=blank, mask=half, sampler=self.default_inpaint_sampler)
            elif mode == "img2img":
                extra = dict(image=blank, strength=STRENGTH)
            elif mode == "control":
                extra = dict(control=self.control(blank, AS_IS, 1.0))
            elif mode == "layout":
                extra = dict(composition=self.composition(args["prompt"], NO_STYLE, "", self.default_weights))
            elif mode == "views" and self.novel_view:
                extra = dict(given=blank)
            self.sample(mode, **{"sampler": self.default_sampler, **args, **extra})
        return time.time() - started

    @property
    def default_sampler(self):
        return self.defaults.sampler if self.defaults.sampler in self.samplers else self.samplers[-1]

    @property
    def default_inpaint_sampler(self):
        return self.inpaint_samplers[-1] if self.setup.objective != "flow" else self.default_sampler

    @property
    def default_weights(self):
        return {name: WEIGHTS[name] for name in self.conditions_guided}


class _Config(dict):
    """A recipe's `sample` block read from run.json, with the attribute access run_settings uses."""
    __getattr__ = dict.__getitem__


def mask_of(editor):
    """The inpainting mask drawn in a gr.ImageMask value: True where any layer was painted."""
    layers = (editor or {}).get("layers") or []
    painted = [np.asarray(layer)[..., 3] > 0 for layer in layers if layer is not None and np.ndim(layer) == 3
               and np.shape(layer)[-1] == 4]
    return np.any(painted, axis=0) if painted else None


def build(demo):
    """The Gradio Blocks page of `demo`: shared controls, a tab for each mode the run supports, one gallery."""
    import gradio as gr  # pylint: disable=import-outside-toplevel

    d, c = demo.defaults, demo.setup.model_config

    def handle(fn):
        """Runs fn, turning the errors a request can make into messages in the page. fn's signature stays visible
        (functools.wraps): Gradio reads its parameter names for the API and its gr.Progress() default."""
        @functools.wraps(fn)
        def wrapped(*args):
            try:
                return fn(*args)
            except (ValueError, FileNotFoundError) as e:
                raise gr.Error(str(e), print_exception=False) from None
        return wrapped

    def picture(image):
        return image.squeeze(-1) if image.shape[-1] == 1 else image

    def gallery(images, caption):
        return [(picture(image), caption) for image in images]

    def caption_of(prompt, class_name):
        return " / ".join(str(x) for x in (prompt, class_name) if x)

    def generate(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, progress=gr.Progress()):
        images = demo.sample("generate", prompt, class_name, sampler, steps, cfg_scale, seed, num_images,
                             progress=progress)
        return gallery(images, caption_of(prompt, class_name))

    def inpaint(prompt, class_name, steps, cfg_scale, seed, num_images, editor, sampler, progress=gr.Progress()):
        background = (editor or {}).get("background")
        if background is None:
            raise ValueError("Upload an image to inpaint, then paint over what to regenerate.")
        mask = mask_of(editor)
        if mask is None or not mask.any():
            raise ValueError("Paint over the part of the image to regenerate: the mask is empty.")
        image = demo.fit(background, "an image to inpaint")
        fitted_mask = demo.fit(mask.astype(np.uint8) * 255, "a mask")[..., 0] > 127
        if not fitted_mask.any():
            raise ValueError("The painted mask vanishes at the model's resolution: paint a larger area.")
        images = demo.sample("inpaint", prompt, class_name, sampler, steps, cfg_scale, seed, num_images,
                             image=image, mask=fitted_mask, progress=progress)
        return gallery(images, caption_of(prompt, class_name))

    def img2img(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, image, strength,
                progress=gr.Progress()):
        images = demo.sample("img2img", prompt, class_name, sampler, steps, cfg_scale, seed, num_images,
                             image=demo.fit(image, "an image to start from"), strength=strength, progress=progress)
        return gallery(images, caption_of(prompt, class_name))

    def control(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, control_image, control_kind,
                control_scale, progress=gr.Progress()):
        made = demo.control(control_image, control_kind, control_scale)
        images = demo.sample("control", prompt, class_name, sampler, steps, cfg_scale, seed, num_images,
                             control=made, progress=progress)
        return [(picture(made.pixels), f"control (x{made.scale:g})")] + gallery(images, caption_of(prompt, class_name))

    def layout(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, style, boxes, text_weight,
               style_weight, layout_weight, class_weight, progress=gr.Progress()):
        given = {"text": text_weight, "style": style_weight, "layout": layout_weight, "class": class_weight}
        composition = demo.composition(prompt, style, boxes, {k: given[k] for k in demo.conditions_guided})
        images = demo.sample("layout", prompt, class_name, sampler, steps, cfg_scale, seed, num_images,
                             composition=composition, progress=progress)
        caption = caption_of(prompt, class_name) + ("" if style in (None, "", NO_STYLE) else f" [{style}]")
        out = gallery(images, caption)
        if composition.boxes:  # the boxes drawn over the first image (the images themselves stay clean)
            drawn = captioned_grid(images[:1], None, columns=1, boxes=[composition.boxes])
            out.append((np.asarray(drawn), "layout"))
        return out

    def clips(mode):
        def make(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, given=None, progress=None):
            if given is not None:
                given = demo.fit(given, "the view to start from")
            made = demo.sample(mode, prompt, class_name, sampler, steps, cfg_scale, seed, num_images, given=given,
                               progress=progress)
            caption = caption_of(prompt, class_name)
            return (demo.animation(made, [caption] * len(made)),
                    [(picture(video.frame_strip(clip)), caption) for clip in made])
        return make

    def make_video(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, progress=gr.Progress()):
        return clips("video")(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, progress=progress)

    def make_views(prompt, class_name, sampler, steps, cfg_scale, seed, num_images, view, progress=gr.Progress()):
        if demo.novel_view and view is None:
            raise ValueError("Upload the view to start from: this novel-view model makes the other views of it.")
        return clips("views")(prompt, class_name, sampler, steps, cfg_scale, seed, num_images,
                              view if demo.novel_view else None, progress=progress)

    mode = "L" if demo.codec.pixel_channels == 1 else "RGB"
    tabs = demo.tabs
    with gr.Blocks(title=f"dit_jax: {demo.name}") as page:
        gr.Markdown(f"# dit_jax demo\n{demo.describe()}")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", placeholder="a red apple", visible=bool(demo.setup.text),
                                elem_id="prompt", scale=3)
            choices = demo.class_choices
            class_name = gr.Dropdown(choices=choices, value=choices[0] if choices else None, label="Class",
                                     visible=bool(choices), elem_id="class", scale=1)
        with gr.Row():
            sampler = gr.Dropdown(list(demo.samplers), value=demo.default_sampler, label="Sampler")
            steps = gr.Slider(1, min(MAX_STEPS, len(demo.setup.schedule)), value=d.steps, step=1, label="Steps")
            cfg_scale = gr.Slider(0, 15, value=d.cfg_scale, step=0.1, label="Guidance scale (1: none)")
            seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
            num_images = gr.Slider(1, demo.max_images, value=min(MAX_IMAGES, demo.max_images), step=1,
                                   label="Images" if "video" not in tabs and "views" not in tabs else "Samples")
        common = [prompt, class_name]
        settings = [steps, cfg_scale, seed, num_images]
        buttons = {}  # mode: (button, handler, inputs)
        with gr.Tabs():
            if "generate" in tabs:
                with gr.Tab("Generate"):
                    buttons["generate"] = (gr.Button("Generate", variant="primary", elem_id="generate"), generate,
                                           common + [sampler] + settings)
            if "inpaint" in tabs:
                with gr.Tab("Inpaint"):
                    editor = gr.ImageMask(label="Image: paint over what to regenerate", type="numpy",
                                          image_mode="RGBA", layers=False, transforms=(), elem_id="inpaint_image")
                    inpaint_sampler = gr.Dropdown(list(demo.inpaint_samplers), value=demo.default_inpaint_sampler,
                                                  label="Inpainting sampler")
                    buttons["inpaint"] = (gr.Button("Inpaint", variant="primary", elem_id="inpaint"), inpaint,
                                          common + settings + [editor, inpaint_sampler])
            if "img2img" in tabs:
                with gr.Tab("Image to image"):
                    source = gr.Image(label="Start from", type="numpy", image_mode=mode, elem_id="img2img_image")
                    strength = gr.Slider(0, 1, value=STRENGTH, step=0.05,
                                         label="Strength (0: keep the image, 1: ignore it)")
                    buttons["img2img"] = (gr.Button("Transform", variant="primary", elem_id="img2img"), img2img,
                                          common + [sampler] + settings + [source, strength])
            if "control" in tabs:
                trained = demo.controlnet[1]["control_type"]
                with gr.Tab("Control"):
                    gr.Markdown(f"The ControlNet was trained on **{trained}** controls: upload a picture to compute "
                                f"them from (as the run's data did), or a ready control image ({AS_IS}).")
                    control_image = gr.Image(label="Picture or control image", type="numpy", image_mode="RGB",
                                             elem_id="control_image")
                    with gr.Row():
                        control_kind = gr.Dropdown([trained, AS_IS], value=trained, label="Control")
                        control_scale = gr.Slider(0, 2, value=1.0, step=0.05, label="Control scale (0: none)")
                    buttons["control"] = (gr.Button("Generate under the control", variant="primary",
                                                    elem_id="control"), control,
                                          common + [sampler] + settings + [control_image, control_kind, control_scale])
            if "layout" in tabs:
                with gr.Tab("Layout & style"):
                    gr.Markdown("Composable guidance: one weight a condition (the guidance scale above is unused "
                                "here); a prompt's ' AND ' parts are terms of their own.")
                    styles = [NO_STYLE] + demo.style_choices
                    style = gr.Dropdown(styles, value=NO_STYLE, label="Style", visible=bool(c.get("num_styles")))
                    boxes = gr.Textbox(label=f"Boxes (up to {c.get('layout_max_boxes', 0)}, one a line: "
                                             "x0,y0,x1,y1:phrase, coordinates in [0, 1])", lines=3,
                                       placeholder="0.05,0.3,0.45,0.7:a sneaker",
                                       visible=bool(c.get("layout_max_boxes")), elem_id="boxes")
                    with gr.Row():
                        weights = [gr.Slider(-5, 15, value=WEIGHTS[name], step=0.1, label=f"{name} weight",
                                             visible=name in demo.conditions_guided) for name in WEIGHTS]
                    buttons["layout"] = (gr.Button("Compose", variant="primary", elem_id="layout"), layout,
                                         common + [sampler] + settings + [style, boxes] + weights)
            animation = None
            if "video" in tabs:
                with gr.Tab("Video"):
                    buttons["video"] = (gr.Button("Make clips", variant="primary", elem_id="video"), make_video,
                                        common + [sampler] + settings)
                    animation = gr.Image(label="Clips", type="filepath", elem_id="animation")
            if "views" in tabs:
                with gr.Tab("Views"):
                    r = demo.codec.resolution
                    gr.Markdown(f"{demo.views} views on the ring of cameras the model was trained around (its "
                                "view count is fixed by training): a turntable GIF and a strip a sample."
                                + (" Upload the first camera's view: the model makes the others." if demo.novel_view
                                   else ""))
                    view = gr.Image(label=f"The view to start from (fitted to {r}x{r})", type="numpy",
                                    image_mode=mode, visible=demo.novel_view, elem_id="view_image")
                    buttons["views"] = (gr.Button("Make views", variant="primary", elem_id="views"), make_views,
                                        common + [sampler] + settings + [view])
                    animation = gr.Image(label="Turntable", type="filepath", elem_id="animation")
        images = gr.Gallery(label="Images" if animation is None else "Frame strips", format="png", columns=4,
                            object_fit="contain", height=360, buttons=["download", "download_all", "fullscreen"],
                            elem_id="gallery")
        queue = dict(concurrency_id="sampler", concurrency_limit=1)  # one sampler: requests wait their turn
        for name, (button, fn, inputs) in buttons.items():
            outputs = [animation, images] if name in ("video", "views") else images
            button.click(handle(fn), inputs, outputs, api_name=name, **queue)
    return page.queue(max_size=64, default_concurrency_limit=1)


def launch(page, host="127.0.0.1", port=PORT, block=True):
    """Serves the page; with block=False returns once it listens (tests)."""
    page.launch(server_name=host, server_port=port, prevent_thread_lock=not block, show_error=True, quiet=not block,
                footer_links=[])
    return page


def start(workdir, port=PORT, host="127.0.0.1", data_dir="~/.cache/dit_jax", max_images=MAX_IMAGES):
    """Everything before serving, in order of cost: the checks, the model, the compiles."""
    check_port(host, port)
    check_run(workdir)
    try:
        import gradio  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        raise ValueError("The demo needs gradio: pip install -e .[serve] && pip install --no-deps "
                         "gradio==6.31.0 (see README).") from None
    demo = Demo(workdir, data_dir, max_images)
    print(f"Compiling {demo.name}'s sampler for the page's defaults ...", flush=True)
    print(f"Ready in {demo.warm_up():.1f} s: http://{host}:{port}", flush=True)
    return demo, build(demo)


FLAGS = flags.FLAGS


def define_flags():
    from dit_jax.utils import distributed  # pylint: disable=import-outside-toplevel
    distributed.define_data_dir()
    flags.DEFINE_string("workdir", None, "A training run: its export/ weights and run.json settings.")
    flags.DEFINE_integer("port", PORT, "The port to serve on.")
    flags.DEFINE_string("host", "127.0.0.1", "The address to serve on (0.0.0.0: every interface).")
    flags.DEFINE_integer("max_images", MAX_IMAGES, "The most images one request may ask for.")


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"serve: unexpected arguments {argv[1:]}")
    try:
        _, page = start(FLAGS.workdir, FLAGS.port, FLAGS.host, FLAGS.data_dir, FLAGS.max_images)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"serve: {e}") from None
    launch(page, FLAGS.host, FLAGS.port)


if __name__ == "__main__":
    define_flags()
    app.run(main)
