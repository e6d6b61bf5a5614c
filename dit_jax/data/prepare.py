"""Precomputes what training reads: every caption encoded once, and every image resized (or VAE-encoded).

The output is a folder of ArrayRecord shards plus `manifest.json`. Shards are
written to a temporary name and renamed when complete, each with a small
`.json` beside it, so a killed run keeps its finished shards and continues
where it stopped; the work is deterministic, so the result is the same.
In a multi-process job (jax.distributed: --coordinator_address, a TPU pod,
SLURM) every process writes its share of the shards (i, i + count, ...) into
the shared data_dir, process 0 having built the raw dataset first; process 0
writes the manifest once all are done. The files are those of one process.
An Apache Beam pipeline (dit_jax/data/beam_prepare.py) writes the same shards
through the same Preparer.prepare_shard, in its workers.
An unreadable image is skipped and counted; the run goes on.

With `data.controls` (e.g. ("canny", "silhouette")) every record also holds
each control image (dit_jax/data/controls.py) computed from the resized
image, under `control_<type>`: uint8 pixels, or in latent space the VAE
posterior's mean of the control (and of its mirror image). A dataset's own
control image (image_folder's `conditioning_image` column, "user"; circles'
outline, "outline") is read instead of computed.

A dataset with styles and layouts (fashion_scenes) also stores `style` and,
padded to the manifest's `layout_max_boxes` (K) boxes, `layout_boxes` (K, 4)
(x0, y0, x1, y1 in [0, 1]), `layout_mask` (K,), `layout_embeddings` (K, D):
each box's phrase encoded as the captions are (their pooled embedding), and
for evaluation `layout_labels` (K,; -1 where masked) and `layout_phrases`.
A clip dataset (moving_fashion, moving_emoji: sources.CLIP_DATASETS) stores
each clip as uint8 (T, H, W, C) under `image`, and its motion as `label_motion`;
the manifest's `frames` is T (0 for images). Clips are pixel data without
controls. The multi-view set (shapes3d: sources.VIEW_DATASETS) is stored as
clips of its V views, each record with `cameras` (V, 16), the views' flattened
camera-to-world poses.
"""

import hashlib
import json
import math
import os

import numpy as np
import tqdm
from absl import logging
from array_record.python import array_record_module
from PIL import Image

from dit_jax.data import controls, images, moving, records, repa, sources
from dit_jax.utils import distributed
from dit_jax.utils import paths as epaths  # `paths` names a local in prepared_dir

SHARD_SIZE = 1024
BATCH = 64
MANIFEST = "manifest.json"


def control_names(config):
    """The control types config.data.controls asks for, in its order (a string may list them with commas)."""
    names = config.data.get("controls") or ()
    return tuple(n.strip() for n in names.split(",") if n.strip()) if isinstance(names, str) else tuple(names)


def given_control(config):
    """(name, channels) of the control image the dataset comes with, ("", 0) when it has none."""
    name, channels = sources.GIVEN_CONTROLS.get(config.data.name, ("", 0))
    user_name = (config.get("controls") or {}).get("user_name", "")
    return (user_name or name, channels) if name else ("", 0)


def control_settings(config):
    """{type: options} of the controls asked for; a dataset's own control is {"given": True}. An unknown type,
    a repeated one or an unknown option fails in one line."""
    names = control_names(config)
    given, _ = given_control(config)
    for name in names:
        if name != given and name in ("user", "outline"):
            raise ValueError(f"Control {name!r} is the control image a dataset comes with: image_folder's "
                             f"conditioning_image column (\"user\") or circles' outline (\"outline\"); "
                             f"data.name={config.data.name} has none.")
        controls.check_name(name, extra=(given,) if given else ())
    if len(set(names)) != len(names):
        raise ValueError(f"data.controls={names} names a control twice.")
    settings = {}
    for name in names:
        settings[name] = ({"given": True} if name == given else
                          controls.options_from_config(config.get("controls"), name))
    return settings


def prepared_dir(config, data_dir):
    """DATA_DIR/prepared/<dataset>_<res>px_<encoder><len>[_vae-…][_n<max>][_ctl-<types>][_<hash of paths and
    settings>]."""
    c = config
    parts = [c.data.name.replace("tfds:", "tfds-").replace("/", "-"), f"{c.data.resolution}px",
             f"{c.text.encoder}{c.text.max_length}" + ("p" if c.text.layer == "penultimate" else "")]
    if c.vae.path:
        parts.append("vae")
    if c.data.max_examples:
        parts.append(f"n{c.data.max_examples}")
    if c.data.name in sources.CLIP_DATASETS:
        parts.append(f"f{sources.moving_options(c.data)['frames']}")
    if c.data.name in sources.VIEW_DATASETS:
        parts.append(f"v{sources.shapes3d_options(c.data)['views']}")
    settings = control_settings(c)
    if settings:
        parts.append("ctl-" + "-".join(sorted(settings)))
    if repa.prepared(c):
        parts.append(f"repa-{c.repa.encoder}")
    paths = "|".join([c.data.source_dir, c.text.path, c.vae.path])
    extra = {}
    if c.data.name == "circles":
        extra["circles"] = sources.circles_options(c.data)
    if c.data.name == "fashion_scenes":
        extra["fashion_scenes"] = {k: v for k, v in sources.fashion_scenes_options(c.data).items()
                                   if k != "source_dir"}  # the source_dir is in `paths` already
    if c.data.name in sources.CLIP_DATASETS:
        extra["moving"] = sources.moving_options(c.data)
    if c.data.name in sources.VIEW_DATASETS:
        extra["shapes3d"] = sources.shapes3d_options(c.data)
    if settings:
        extra["controls"] = settings
    if repa.prepared(c):  # what decides the stored features: the encoder, its input size and the token grid
        extra["repa"] = dict(encoder=c.repa.encoder, path=c.repa.encoder_path, resolution=c.repa.resolution,
                             patch_size=c.model.patch_size)
    if extra:  # only then, so the folders of data prepared before these settings existed keep their names
        paths += "|" + json.dumps(extra, sort_keys=True)
    if paths.strip("|"):
        parts.append(sources.short_hash(paths))
    return epaths.join(data_dir, "prepared", "_".join(parts))


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Preparer:
    """Holds the encoder, the optional VAE and the source while shards are written."""

    def __init__(self, config, data_dir):
        from dit_jax.data import latents  # pylint: disable=import-outside-toplevel
        from dit_jax.text import encoders  # pylint: disable=import-outside-toplevel
        self.config, self.out = config, prepared_dir(config, data_dir)
        if epaths.is_remote(self.out):  # ArrayRecord writes local files: prepared in a mirror that prepare() copies up
            self.out, data_dir = epaths.mirror(self.out), epaths.mirror(data_dir)
        self.control_settings = control_settings(config)
        check_clips(config)
        # Models first: a missing control model, encoder or VAE fails before any data work.
        self.control_fns = {name: None if options.get("given") else controls.control_fn(name, **options)
                            for name, options in self.control_settings.items()}
        t = config.text
        self.encoder = encoders.load(t.encoder, t.path, max_length=t.max_length, layer=t.layer)
        self.vae = latents.Vae(config.vae.path) if config.vae.path else None
        self.source = load_source(config, data_dir)
        self.channels = 3 if self.vae is not None else self.source.channels
        self.frames = self.source.frames
        self.repa = self.repa_encoder = None
        if repa.prepared(config):  # REPA's targets: the encoder's features of each image and of its mirror
            side = config.data.resolution // (self.vae.downsample if self.vae is not None else 1)
            self.repa = repa.manifest_entry(config, repa.token_grid(config, side))
            self.repa_encoder = repa.load_encoder(config, self.repa["resolution"])
        self.given_channels = given_control(config)[1]
        self.resized_logged = False
        n = len(self.source)
        self.count = min(n, config.data.max_examples) if config.data.max_examples else n

    def shard_path(self, i, num_shards):
        return os.path.join(self.out, f"data.array_record-{i:05d}-of-{num_shards:05d}")

    def shard_size(self):
        return shard_size(self.config)

    def num_shards(self):
        return num_shards(self.config, len(self.source))

    def prepare_shard(self, i):
        """Writes shard i unless an earlier run finished it (its summary is there); the in-process run and a Beam
        worker (dit_jax/data/beam_prepare.py) both write through it."""
        num_shards_ = self.num_shards()
        if not os.path.exists(self.shard_path(i, num_shards_) + ".json"):
            self.write_shard(i, num_shards_)

    def read_summaries(self):
        """Every shard's summary, in order; one that is missing (written where this process does not see) fails in
        one line."""
        summaries = [self.shard_path(i, self.num_shards()) + ".json" for i in range(self.num_shards())]
        missing = [path for path in summaries if not os.path.exists(path)]
        if missing:
            raise ValueError(f"{missing[0]} is missing once every process is done: in a multi-process job "
                             "--data_dir must be a folder every process sees (and every Beam worker): a shared "
                             "filesystem or bucket.")
        shards = []
        for path in summaries:
            with open(path) as f:
                shards.append(json.load(f))
        return shards

    def write_manifest(self, shards):
        epaths.write_json(os.path.join(self.out, MANIFEST), self.manifest(shards), indent=1)

    def write_shard(self, i, num_shards):
        """Encodes examples [i*shard_size, ...) into shard i; returns its summary."""
        os.makedirs(self.out, exist_ok=True)
        path = self.shard_path(i, num_shards)
        size = self.shard_size()
        start, stop = i * size, min((i + 1) * size, self.count)
        writer = array_record_module.ArrayRecordWriter(path + ".tmp", "group_size:1")
        self.caption_cache = {}
        skipped = []
        for begin in range(start, stop, BATCH):
            batch = []
            for index in range(begin, min(begin + BATCH, stop)):
                example = self.source[index]
                try:
                    image = images.decode(example["image"], self.channels)
                    pixels = self.fit(image)
                    extras = self.control_inputs(example, image.size)
                except Exception as e:  # pylint: disable=broad-except  # PIL raises many kinds for bad files
                    skipped.append({"key": example["key"], "error": f"{type(e).__name__}: {e}"})
                    continue
                batch.append((index, example, pixels, extras))
            for example in self.encode(batch):
                writer.write(records.encode(example))
        writer.close()
        os.replace(path + ".tmp", path)
        summary = {"file": os.path.basename(path), "count": stop - start - len(skipped), "skipped": skipped,
                   "sha256": _sha256(path)}
        epaths.write_json(path + ".json", summary, indent=1)
        return summary

    def fit(self, image):
        """The decoded image resized to data.resolution: uint8 (H, W, C), or (T, H, W, C) for a clip's strip."""
        res = self.config.data.resolution
        if not self.frames:
            return images.fit(image, res)
        strip = np.asarray(image)
        frames = moving.strip_frames(strip[..., None] if strip.ndim == 2 else strip, self.frames)
        return np.stack([images.fit(Image.fromarray(f.squeeze(-1) if f.shape[-1] == 1 else f), res) for f in frames])

    def control_inputs(self, example, size):
        """What the controls need beyond the resized image: the alpha channel (silhouette) and the dataset's
        own control image, resized as the image was (one of another size is first brought to the image's)."""
        res, extras = self.config.data.resolution, {}
        if "silhouette" in self.control_fns:
            a = images.alpha(example["image"])
            extras["alpha"] = None if a is None else images.fit(a, res)[..., 0]
        if None in self.control_fns.values():
            data = example.get("control")
            if not data:
                raise ValueError("no conditioning image")
            control = images.decode(data, self.given_channels)
            if control.size != size:
                if not self.resized_logged:
                    logging.warning("Conditioning images of another size than their images are resized to it "
                                    "(first: %s, %s against %s).", example["key"], control.size, size)
                    self.resized_logged = True
                control = control.resize(size, Image.Resampling.BICUBIC)
            extras["given"] = images.fit(control, res)
        return extras

    def compute_controls(self, pixels, extras):
        """{name: uint8 (B, H, W, c)} for the batch."""
        out = {}
        for name, fn in self.control_fns.items():
            if fn is None:
                out[name] = np.stack([e["given"] for e in extras])
            elif name == "silhouette":
                out[name] = fn(pixels, alpha=[e["alpha"] for e in extras])
            else:
                out[name] = fn(pixels)
        return out

    def encode_captions(self, captions):
        """Encodes each distinct caption once per shard (Fashion-MNIST has 40 in all); the cache is cleared with
        every shard, so a resumed run encodes exactly as an uninterrupted one."""
        new = [c for c in dict.fromkeys(captions) if c not in self.caption_cache]
        if new:
            self.caption_cache.update(zip(new, zip(*self.encoder.encode(new))))
        return [np.stack(a) for a in zip(*(self.caption_cache[c] for c in captions))]

    def encode_layout(self, layout):
        """The layout keys of one record, padded to the dataset's K boxes; each phrase's embedding is the pooled
        embedding of the text encoder, as a caption's (zeros where masked)."""
        k, n = self.source.layout_max_boxes, len(layout["phrases"])
        boxes, mask = np.zeros((k, 4), np.float32), np.arange(k) < n
        embeddings = np.zeros((k, self.encoder.dim), np.float16)
        labels = np.full(k, -1, np.int32)
        if n:
            boxes[:n], labels[:n] = layout["boxes"], layout["labels"]
            embeddings[:n] = self.encode_captions(layout["phrases"])[2]
        return {"layout_boxes": boxes, "layout_mask": mask, "layout_embeddings": embeddings,
                "layout_labels": labels, "layout_phrases": list(layout["phrases"])}

    def encode(self, batch):
        if not batch:
            return []
        captions = [c for _, example, _, _ in batch for c in example["captions"]]
        tokens, mask, pooled = self.encode_captions(captions)
        pixels = np.stack([p for _, _, p, _ in batch])
        control_pixels = self.compute_controls(pixels, [e for _, _, _, e in batch])
        if self.vae is not None:
            mean, std = self.vae.encode(pixels)
            mean_flip, std_flip = self.vae.encode(pixels[:, :, ::-1])
            control_means = {}
            for name, c in control_pixels.items():
                c = np.repeat(c, 3, -1) if c.shape[-1] == 1 else c  # the VAE reads RGB
                control_means[name] = (self.vae.encode(c)[0], self.vae.encode(c[:, :, ::-1])[0])
        if self.repa is not None:
            features, features_flip = (repa.to_tokens(self.repa_encoder(p / 127.5 - 1), self.repa["grid"])
                                       .astype(np.float16) for p in (pixels, pixels[:, :, ::-1]))
        out, offset = [], 0
        for j, (index, example, _, _) in enumerate(batch):
            n = len(example["captions"])
            row = {"index": index, "key": example["key"], "label": example["label"], "captions": example["captions"],
                   "text": tokens[offset:offset + n], "mask": mask[offset:offset + n], "pooled": pooled[offset:offset + n]}
            row.update({f"label_{k}": v for k, v in example.get("labels", {}).items()})
            if "style" in example:
                row["style"] = example["style"]
            if "cameras" in example:
                row["cameras"] = example["cameras"]
            if "layout" in example:
                row.update(self.encode_layout(example["layout"]))
            offset += n
            if self.repa is not None:
                row.update(repa=features[j], repa_flip=features_flip[j])
            if self.vae is None:
                row["image"] = pixels[j]
                row.update({f"control_{name}": c[j] for name, c in control_pixels.items()})
            else:
                row.update(mean=mean[j], std=std[j], mean_flip=mean_flip[j], std_flip=std_flip[j])
                for name, (m, m_flip) in control_means.items():
                    row.update({f"control_{name}": m[j], f"control_{name}_flip": m_flip[j]})
            out.append(row)
        return out

    def run(self, index=0, count=1):
        """Writes shards index, index + count, ... that an earlier run did not finish; the manifest is written by
        process 0 once every process has written its share."""
        name = os.path.basename(self.out)
        mine = range(index, self.num_shards(), count)
        if count > 1:
            logging.info("Process %d of %d prepares shards %s of %d.", index, count, list(mine), self.num_shards())
        for i in tqdm.tqdm(mine, desc=f"prepare {name}", unit="shard"):
            self.prepare_shard(i)
        if count > 1:
            distributed.barrier(f"prepare {name}: shards")
        shards = self.read_summaries()  # every process checks: one that does not see the others' shards stops
        if index == 0:
            self.write_manifest(shards)
        if count > 1:
            distributed.barrier(f"prepare {name}: manifest")

    def manifest(self, shards):
        c, res = self.config, self.config.data.resolution
        if self.vae is None:
            shape, space = [res, res, self.channels], "pixel"
        else:
            side = res // self.vae.downsample
            shape, space = [side, side, self.vae.channels], "latent"
        skipped = [s for shard in shards for s in shard["skipped"]]
        control_shapes = {name: shape if self.vae is not None else
                          [res, res, self.given_channels if options.get("given") else
                           controls.channels(name, self.channels)]
                          for name, options in self.control_settings.items()}
        return {
            "dataset": c.data.name, "source_dir": c.data.source_dir, "resolution": res,
            "space": space, "image_shape": shape, "pixel_channels": self.channels, "frames": self.frames,
            "examples": sum(s["count"] for s in shards), "source_examples": len(self.source),
            "skipped": len(skipped), "skipped_items": skipped[:100],
            "text": {"encoder": self.encoder.kind, "source": self.encoder.source, "dim": self.encoder.dim,
                     "max_length": self.encoder.max_length, "layer": self.encoder.layer},
            "vae": {"source": c.vae.path, "scale": c.vae.scale} if self.vae is not None else None,
            "num_classes": len(self.source.class_names) if self.source.has_labels else 0,
            "class_names": self.source.class_names if self.source.has_labels else [],
            "extra_labels": self.source.extra_labels,
            "controls": list(self.control_settings), "control_options": self.control_settings,
            "control_shapes": control_shapes,
            "styles": self.source.styles, "layout_max_boxes": self.source.layout_max_boxes,
            "repa": self.repa,
            "shards": [{k: s[k] for k in ("file", "count", "sha256")} for s in shards],
        }


def shard_size(config):
    return config.data.get("shard_size") or SHARD_SIZE  # data.shard_size=0: SHARD_SIZE


def num_shards(config, num_source):
    """How many shards the first data.max_examples (0: all) of num_source examples fill."""
    count = min(num_source, config.data.max_examples) if config.data.max_examples else num_source
    return max(1, math.ceil(count / shard_size(config)))


def load_source(config, data_dir):
    """The raw dataset (sources.load); in a multi-process job process 0 builds it when missing, and the others
    open it after."""
    index, count = distributed.process_index_count()
    barrier = f"prepare {os.path.basename(prepared_dir(config, data_dir))}: source"
    if index > 0:
        distributed.barrier(barrier)
    source = sources.load(config.data, os.path.expanduser(data_dir))
    if index == 0 and count > 1:
        distributed.barrier(barrier)
    return source


def check_clips(config):
    """Clip datasets are prepared in pixels without controls: a one-line error otherwise."""
    if config.data.name not in sources.CLIP_DATASETS + sources.VIEW_DATASETS:
        return
    # an unknown motion word, shape or colour fails here, before any work
    (sources.moving_options if config.data.name in sources.CLIP_DATASETS else sources.shapes3d_options)(config.data)
    if config.vae.path or control_names(config):
        raise ValueError(f"data.name={config.data.name} is a clip dataset, prepared in pixel space without "
                         "controls: set vae.path='' and data.controls=().")


def read_manifest(folder, shards=True):
    """The manifest in `folder`, its "dir" where the shards read: `folder`, or for a remote folder its local
    mirror (ArrayRecord reads local files), copied down when it differs; shards=False: the manifest alone."""
    manifest = epaths.read_json(epaths.join(folder, MANIFEST))
    local = epaths.mirror(folder) if epaths.is_remote(folder) and shards else folder
    if local != folder:
        mirrored = os.path.join(local, MANIFEST)
        if not os.path.exists(mirrored) or epaths.read_json(mirrored) != manifest:
            epaths.download(folder, local, last=MANIFEST)
    manifest["dir"] = local
    return manifest


def prepare(config, data_dir):
    """Prepares the dataset `config` names under data_dir (resuming a killed run); returns the manifest. In a
    multi-process job every process calls it and writes its share."""
    folder = prepared_dir(config, data_dir)
    if epaths.path(folder).joinpath(MANIFEST).exists():
        return read_manifest(folder)
    index, count = distributed.process_index_count()
    if count > 1 and epaths.is_remote(folder):
        raise ValueError(f"--data_dir={data_dir} is remote: a multi-process prepare writes into one shared folder; "
                         "prepare with one process (or --runner=...), or onto a mount every host shares.")
    Preparer(config, data_dir).run(index, count)
    if epaths.is_remote(folder):
        epaths.upload(epaths.mirror(folder), folder, last=MANIFEST)
    return read_manifest(folder)
