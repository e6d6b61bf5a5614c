"""The input pipeline: grain over the prepared ArrayRecord shards, yielding global sharded batches.

What the training loop calls:

  manifest = ensure_prepared(config, data_dir)   # prepares the data first when missing
  check_compatible(manifest, config)             # one-line ValueError, before anything compiles
  model = DiT(**config.model, **model_kwargs(manifest, config), rngs=...)
  loader = make_loader(config, manifest, global_batch_size=B, seed=s, sharding=NamedSharding(mesh, P("data")))
  batch = next(loader)          # {"image", "text", "text_mask", "pooled", "label"}: global jax.Arrays
                                # (and "control_<type>" for each of data.controls; "style" and
                                # "layout_boxes", "layout_mask", "layout_embeddings" where the data has them;
                                # "cameras" (B, V, 16) for multi-view data)
  state = loader.get_state()    # small JSON dict, saved with checkpoints; loader.set_state(state) resumes

The stream of examples is the prepared set shuffled with the seed and repeated
forever (each epoch reshuffled); global batch k is elements [kB, (k+1)B) of
it, and process p of P reads its p-th contiguous block of B/P elements:
disjoint shares that together cover the data, and the same global batches,
row for row, for any number of processes. Randomness (which caption of several, augmentation, the
latent posterior sample) is drawn from (seed, position in the stream), so a
resumed run sees exactly the batches an uninterrupted one would.

A control image (data.controls) is flipped and rotated with its image (not
colour-jittered), and in latent space is the VAE's mean of it, times the scale.

A layout's boxes are mirrored with a flipped image ((x0, x1) -> (1 - x1,
1 - x0)); captions that say "left" or "right" are never flipped, and
configs/fashion_scenes.py leaves data.flip off. Rotation and colour jitter
are refused for data with layouts or styles: they would move objects out of
their boxes and change what the style labels describe.
Clips (data.name moving_fashion or moving_emoji) come as "image" (B, T, H, W, C),
with every frame of a clip augmented alike (augment.augment_clip): data.flip mirrors
whole clips and never those whose caption says left or right, so a caption and its
`label_motion` stay true.

Captions are not dropped here: the model drops them to its learned null text
(model.caption_dropout_prob), and labels likewise, for classifier-free guidance.
"""

import os

import grain
import jax
import numpy as np

from dit_jax.data import augment, prepare, records, repa
from dit_jax.utils import paths
from dit_jax.data.prepare import prepared_dir  # pylint: disable=unused-import  # part of this interface


def ensure_prepared(config, data_dir):
    """The manifest of the prepared data for `config`, preparing it first when missing (single process)."""
    folder = prepared_dir(config, data_dir)
    if not paths.path(folder).joinpath(prepare.MANIFEST).exists() and jax.process_count() > 1:
        raise ValueError(f"No prepared data in {folder}; run `python -m dit_jax.prepare --config=...` "
                         "once before a multi-process run.")
    return prepare.prepare(config, data_dir)


def model_kwargs(manifest, config):
    """The DiT arguments the data decides: input size and channels, text width and length (0 when the
    model reads no text), and the number of classes when model.num_classes is not 0 (-1: from the data); so too
    the number of styles and boxes (model.num_styles, model.layout_max_boxes) where the data names them."""
    h, _, c = manifest["image_shape"]
    uses_text = config.model.get("text_cross_attention", True) or config.model.get("text_pooled", False)
    kwargs = dict(input_size=h, in_channels=c, text_dim=manifest["text"]["dim"] if uses_text else 0,
                  text_len=manifest["text"]["max_length"])
    if config.model.get("num_classes", 0):
        kwargs["num_classes"] = manifest["num_classes"]
    kwargs.update({k: v for k, v in conditions(manifest).items() if config.model.get(k, 0)})
    if manifest.get("frames"):  # clips: the video model's frame count
        kwargs["frames"] = manifest["frames"]
    return kwargs


def conditions(manifest):
    """{model key: size} of the styles and layout boxes the manifest names (0: none; data prepared before them,
    and bench's synthetic manifest, name neither)."""
    out = {}
    if "styles" in manifest:
        out["num_styles"] = len(manifest["styles"])
    if "layout_max_boxes" in manifest:
        out["layout_max_boxes"] = manifest["layout_max_boxes"]
    return out


def check_compatible(manifest, config):
    """Raises a one-line ValueError when the prepared data cannot feed the model `config` describes."""
    expected = model_kwargs(manifest, config)
    given, named = conditions(manifest), {"num_styles": "styles", "layout_max_boxes": "layouts"}
    problems = [f"model.{k}={config.model[k]} but the data gives {v}" for k, v in expected.items()
                if k not in named and config.model.get(k, 0) > 0 and config.model[k] != v]
    for key, what in named.items():
        wanted = config.model.get(key, 0)
        if wanted and not given.get(key):
            problems.append(f"model.{key}={wanted} but the data has no {what}")
        elif wanted > 0 and wanted != given[key]:
            detail = f" ({', '.join(manifest['styles'])})" if key == "num_styles" else " boxes"
            problems.append(f"model.{key}={wanted} but the data has {given[key]}{detail}")
    if (manifest.get("styles") or manifest.get("layout_max_boxes")) and (
            config.data.get("rotation") or config.data.get("color_jitter")):
        problems.append("data.rotation and data.color_jitter are off for data with layouts or styles (they move "
                        "objects out of their boxes and change what the styles describe)")
    if config.model.get("num_classes", 0) and not manifest["num_classes"]:
        problems.append(f"model.num_classes={config.model.num_classes} but the data has no labels")
    if manifest["resolution"] != config.data.resolution:
        problems.append(f"data.resolution={config.data.resolution} but the data is {manifest['resolution']}px")
    if manifest["text"]["encoder"] != config.text.encoder:
        problems.append(f"text.encoder={config.text.encoder} but the data was encoded with {manifest['text']['encoder']}")
    if manifest["text"]["max_length"] != config.text.max_length and manifest["text"]["encoder"] != "clip":
        problems.append(f"text.max_length={config.text.max_length} but the data has {manifest['text']['max_length']}")
    if (manifest["space"] == "latent") != bool(config.vae.path):
        problems.append(f"the data is in {manifest['space']} space but vae.path={config.vae.path!r}")
    wanted, stored = set(prepare.control_names(config)), set(manifest.get("controls") or [])
    if wanted != stored:
        problems.append(f"data.controls={tuple(sorted(wanted))} but the data has controls {tuple(sorted(stored))}")
    frames = manifest.get("frames", 0)
    if frames and not config.model.get("frames", 0):
        problems.append(f"the data is clips of {frames} frames but model.frames is unset (an image model)")
    if not frames and config.model.get("frames", 0):
        problems.append(f"model.frames={config.model.frames} but the data is images, not clips")
    if (config.data.get("frames", 0) or frames) != frames:
        problems.append(f"data.frames={config.data.frames} but the data has {frames or 'no'} frames")
    if repa.prepared(config):
        stored = manifest.get("repa")
        wanted = repa.manifest_entry(config, repa.token_grid(config, expected["input_size"]))
        if stored != wanted:
            problems.append(f"REPA features {wanted} are wanted but the data has {stored}")
    if expected["input_size"] % config.model.patch_size:
        problems.append(f"input size {expected['input_size']} is not divisible by patch_size {config.model.patch_size}")
    if problems:
        raise ValueError(f"Prepared data {manifest.get('dir', '')} does not fit the config: {'; '.join(problems)}.")


class Example:
    """Decodes one record at position `index` of the stream into training arrays."""

    def __init__(self, config, manifest, seed):
        self.seed, self.data = seed, config.data
        self.controls = manifest.get("controls") or []
        self.styles, self.layout = bool(manifest.get("styles")), bool(manifest.get("layout_max_boxes"))
        self.repa = repa.prepared(config)  # REPA features stored with the data: the image's or its mirror's
        self.latent = manifest["space"] == "latent"
        self.clips = bool(manifest.get("frames"))
        self.scale = manifest["vae"]["scale"] if self.latent else 1.0
        if self.latent and (self.data.color_jitter or self.data.rotation):
            raise ValueError("data.color_jitter and data.rotation need pixel data; latent data supports data.flip only.")

    def __call__(self, index, data):
        r = records.decode(data)
        rng = np.random.default_rng([self.seed, index])
        k = rng.integers(len(r["captions"]))
        flip = bool(self.data.flip) and augment.flippable(r["captions"])
        if self.latent:
            flipped = flip and rng.random() < 0.5
            mean, std = (r["mean_flip"], r["std_flip"]) if flipped else (r["mean"], r["std"])
            noise = rng.standard_normal(mean.shape, dtype=np.float32)
            image = (mean.astype(np.float32) + std.astype(np.float32) * noise) * self.scale
            controls = {name: r[f"control_{name}_flip" if flipped else f"control_{name}"].astype(np.float32)
                        * self.scale for name in self.controls}
        elif self.clips:
            image = augment.augment_clip(r["image"], rng, flip=flip, color_jitter=self.data.color_jitter,
                                         rotation=self.data.rotation)
            controls = {}
        else:
            state = rng.bit_generator.state  # each control replays the image's flip and rotation draws
            flipped = flip and _replay(rng, state).random() < 0.5  # augment's first draw
            image = augment.augment(r["image"], rng, flip=flip, color_jitter=self.data.color_jitter,
                                    rotation=self.data.rotation)
            controls = {name: augment.augment(r[f"control_{name}"], _replay(rng, state), flip=flip,
                                              rotation=self.data.rotation) for name in self.controls}
        out = {"image": image, "text": r["text"][k].astype(np.float32), "text_mask": r["mask"][k].astype(bool),
               "pooled": r["pooled"][k].astype(np.float32), "label": np.int32(r["label"])}
        out.update({f"control_{name}": c for name, c in controls.items()})
        if self.styles:
            out["style"] = np.int32(r["style"])
        if "cameras" in r:  # multi-view data (shapes3d): each view's flattened camera pose (V, 16)
            out["cameras"] = r["cameras"].astype(np.float32)
        if self.layout:
            out.update(layout(r, flipped))
        if self.repa:
            out["repa"] = r["repa_flip" if flipped else "repa"].astype(np.float32)
        return out


def layout(r, flipped):
    """A record's layout as the model reads it; a flipped image's boxes mirrored (masked boxes stay zeros)."""
    boxes, mask = r["layout_boxes"].astype(np.float32), r["layout_mask"].astype(bool)
    if flipped:
        boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], -1) * mask[:, None]
    return {"layout_boxes": boxes, "layout_mask": mask,
            "layout_embeddings": r["layout_embeddings"].astype(np.float32)}


def _replay(rng, state):
    """A Generator that draws what `rng` drew from `state` on."""
    replay = np.random.Generator(type(rng.bit_generator)())
    replay.bit_generator.state = state
    return replay


class Loader:
    """An endless iterator of global batches with a checkpointable position."""

    def __init__(self, dataset, sharding, global_batch_size, is_global):
        self._iterator = iter(dataset)
        self.sharding, self.global_batch_size, self.is_global = sharding, global_batch_size, is_global

    def __iter__(self):
        return self

    def __next__(self):
        local = next(self._iterator)
        if not self.is_global:  # process_index/process_count were overridden: keep this process's share
            return {k: jax.device_put(v, self.sharding) for k, v in local.items()}
        return {k: jax.make_array_from_process_local_data(self.sharding, v, (self.global_batch_size, *v.shape[1:]))
                for k, v in local.items()}

    def get_state(self):
        return self._iterator.get_state()

    def set_state(self, state):
        self._iterator.set_state(state)


def _source(manifest):
    paths = [os.path.join(manifest["dir"], s["file"]) for s in manifest["shards"] if s["count"]]
    return grain.sources.ArrayRecordDataSource(paths)


def make_loader(config, manifest, *, global_batch_size, seed, sharding, process_index=None, process_count=None):
    """An endless, seeded, sharded loader over the prepared data (see the module docstring)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch_size % count:
        raise ValueError(f"Global batch {global_batch_size} is not divisible by {count} processes.")
    source = _source(manifest)
    dataset = (grain.MapDataset.source(source)
               .shuffle(seed=seed)
               .repeat()
               .map_with_index(Example(config, manifest, seed))
               # Process p takes rows [p*b, (p+1)*b) of each global batch: the global batch is the same,
               # in the same order, for any number of processes.
               .batch(global_batch_size // count, drop_remainder=True)
               [index::count])
    threads = min(4, os.cpu_count() or 1)
    dataset = dataset.to_iter_dataset(grain.ReadOptions(num_threads=threads,
                                                        prefetch_buffer_size=max(1, config.data.prefetch)))
    is_global = (index, count) == (jax.process_index(), jax.process_count())
    return Loader(dataset, sharding, global_batch_size, is_global)


def read_prepared(manifest, indices):
    """Prepared examples by position in the manifest's order, decoded (evaluation's prompts and references)."""
    source = _source(manifest)
    return [records.decode(source[int(i)]) for i in indices]
