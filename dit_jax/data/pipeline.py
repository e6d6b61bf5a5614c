"""The input pipeline: grain over the prepared ArrayRecord shards, yielding global sharded batches.

What the training loop calls:

  manifest = ensure_prepared(config, data_dir)   # prepares the data first when missing
  check_compatible(manifest, config)             # one-line ValueError, before anything compiles
  model = DiT(**config.model, **model_kwargs(manifest, config), rngs=...)
  loader = make_loader(config, manifest, global_batch_size=B, seed=s, sharding=NamedSharding(mesh, P("data")))
  batch = next(loader)          # {"image", "text", "text_mask", "pooled", "label"}: global jax.Arrays
                                # (and "control_<type>" for each of data.controls)
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

Captions are not dropped here: the model drops them to its learned null text
(model.caption_dropout_prob), and labels likewise, for classifier-free guidance.
"""

import os

import grain
import jax
import numpy as np

from dit_jax.data import augment, prepare, records, repa
from dit_jax.data.prepare import prepared_dir  # pylint: disable=unused-import  # part of this interface


def ensure_prepared(config, data_dir):
    """The manifest of the prepared data for `config`, preparing it first when missing (single process)."""
    folder = prepared_dir(config, data_dir)
    if not os.path.exists(os.path.join(folder, prepare.MANIFEST)) and jax.process_count() > 1:
        raise ValueError(f"No prepared data in {folder}; run `python -m dit_jax.prepare --config=...` "
                         "once before a multi-process run.")
    return prepare.prepare(config, data_dir)


def model_kwargs(manifest, config):
    """The DiT arguments the data decides: input size and channels, text width and length (0 when the
    model reads no text), and the number of classes when model.num_classes is not 0 (-1: from the data)."""
    h, _, c = manifest["image_shape"]
    uses_text = config.model.get("text_cross_attention", True) or config.model.get("text_pooled", False)
    kwargs = dict(input_size=h, in_channels=c, text_dim=manifest["text"]["dim"] if uses_text else 0,
                  text_len=manifest["text"]["max_length"])
    if config.model.get("num_classes", 0):
        kwargs["num_classes"] = manifest["num_classes"]
    return kwargs


def check_compatible(manifest, config):
    """Raises a one-line ValueError when the prepared data cannot feed the model `config` describes."""
    expected = model_kwargs(manifest, config)
    problems = [f"model.{k}={config.model[k]} but the data gives {v}" for k, v in expected.items()
                if config.model.get(k, 0) > 0 and config.model[k] != v]
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
        self.repa = repa.prepared(config)  # REPA features stored with the data: the image's or its mirror's
        self.latent = manifest["space"] == "latent"
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
        if self.repa:
            out["repa"] = r["repa_flip" if flipped else "repa"].astype(np.float32)
        return out


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
