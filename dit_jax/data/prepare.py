"""Precomputes what training reads: every caption encoded once, and every image resized (or VAE-encoded).

The output is a folder of ArrayRecord shards plus `manifest.json`. Shards are
written to a temporary name and renamed when complete, each with a small
`.json` beside it, so a killed run keeps its finished shards and continues
where it stopped; the work is deterministic, so the result is the same.
An unreadable image is skipped and counted; the run goes on.
"""

import hashlib
import json
import math
import os

import numpy as np
import tqdm
from array_record.python import array_record_module

from dit_jax.data import images, records, sources

SHARD_SIZE = 1024
BATCH = 64
MANIFEST = "manifest.json"


def prepared_dir(config, data_dir):
    """DATA_DIR/prepared/<dataset>_<res>px_<encoder><len>[_vae-…][_n<max>][_<hash of paths>]."""
    c = config
    parts = [c.data.name.replace("tfds:", "tfds-").replace("/", "-"), f"{c.data.resolution}px",
             f"{c.text.encoder}{c.text.max_length}" + ("p" if c.text.layer == "penultimate" else "")]
    if c.vae.path:
        parts.append("vae")
    if c.data.max_examples:
        parts.append(f"n{c.data.max_examples}")
    paths = "|".join([c.data.source_dir, c.text.path, c.vae.path])
    if paths.strip("|"):
        parts.append(sources.short_hash(paths))
    return os.path.join(os.path.expanduser(data_dir), "prepared", "_".join(parts))


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=1)
    os.replace(path + ".tmp", path)


class Preparer:
    """Holds the encoder, the optional VAE and the source while shards are written."""

    def __init__(self, config, data_dir):
        from dit_jax.data import latents  # pylint: disable=import-outside-toplevel
        from dit_jax.text import encoders  # pylint: disable=import-outside-toplevel
        self.config, self.out = config, prepared_dir(config, data_dir)
        # Models first: a missing encoder or VAE fails before any data work.
        t = config.text
        self.encoder = encoders.load(t.encoder, t.path, max_length=t.max_length, layer=t.layer)
        self.vae = latents.Vae(config.vae.path) if config.vae.path else None
        self.source = sources.load(config.data, os.path.expanduser(data_dir))
        self.channels = 3 if self.vae is not None else self.source.channels
        n = len(self.source)
        self.count = min(n, config.data.max_examples) if config.data.max_examples else n

    def shard_path(self, i, num_shards):
        return os.path.join(self.out, f"data.array_record-{i:05d}-of-{num_shards:05d}")

    def write_shard(self, i, num_shards):
        """Encodes examples [i*SHARD_SIZE, ...) into shard i; returns its summary."""
        path = self.shard_path(i, num_shards)
        start, stop = i * SHARD_SIZE, min((i + 1) * SHARD_SIZE, self.count)
        writer = array_record_module.ArrayRecordWriter(path + ".tmp", "group_size:1")
        self.caption_cache = {}
        skipped = []
        for begin in range(start, stop, BATCH):
            batch = []
            for index in range(begin, min(begin + BATCH, stop)):
                example = self.source[index]
                try:
                    pixels = images.fit(images.decode(example["image"], self.channels), self.config.data.resolution)
                except Exception as e:  # pylint: disable=broad-except  # PIL raises many kinds for bad files
                    skipped.append({"key": example["key"], "error": f"{type(e).__name__}: {e}"})
                    continue
                batch.append((index, example, pixels))
            for example in self.encode(batch):
                writer.write(records.encode(example))
        writer.close()
        os.replace(path + ".tmp", path)
        summary = {"file": os.path.basename(path), "count": stop - start - len(skipped), "skipped": skipped,
                   "sha256": _sha256(path)}
        _write_json(path + ".json", summary)
        return summary

    def encode_captions(self, captions):
        """Encodes each distinct caption once per shard (Fashion-MNIST has 40 in all); the cache is cleared with
        every shard, so a resumed run encodes exactly as an uninterrupted one."""
        new = [c for c in dict.fromkeys(captions) if c not in self.caption_cache]
        if new:
            self.caption_cache.update(zip(new, zip(*self.encoder.encode(new))))
        return [np.stack(a) for a in zip(*(self.caption_cache[c] for c in captions))]

    def encode(self, batch):
        if not batch:
            return []
        captions = [c for _, example, _ in batch for c in example["captions"]]
        tokens, mask, pooled = self.encode_captions(captions)
        pixels = np.stack([p for _, _, p in batch])
        if self.vae is not None:
            mean, std = self.vae.encode(pixels)
            mean_flip, std_flip = self.vae.encode(pixels[:, :, ::-1])
        out, offset = [], 0
        for j, (index, example, _) in enumerate(batch):
            n = len(example["captions"])
            row = {"index": index, "key": example["key"], "label": example["label"], "captions": example["captions"],
                   "text": tokens[offset:offset + n], "mask": mask[offset:offset + n], "pooled": pooled[offset:offset + n]}
            offset += n
            if self.vae is None:
                row["image"] = pixels[j]
            else:
                row.update(mean=mean[j], std=std[j], mean_flip=mean_flip[j], std_flip=std_flip[j])
            out.append(row)
        return out

    def run(self):
        os.makedirs(self.out, exist_ok=True)
        num_shards = max(1, math.ceil(self.count / SHARD_SIZE))
        shards = []
        for i in tqdm.trange(num_shards, desc=f"prepare {os.path.basename(self.out)}", unit="shard"):
            path = self.shard_path(i, num_shards)
            if os.path.exists(path + ".json"):  # finished by an earlier run
                with open(path + ".json") as f:
                    shards.append(json.load(f))
            else:
                shards.append(self.write_shard(i, num_shards))
        manifest = self.manifest(shards)
        _write_json(os.path.join(self.out, MANIFEST), manifest)
        return manifest

    def manifest(self, shards):
        c, res = self.config, self.config.data.resolution
        if self.vae is None:
            shape, space = [res, res, self.channels], "pixel"
        else:
            side = res // self.vae.downsample
            shape, space = [side, side, self.vae.channels], "latent"
        skipped = [s for shard in shards for s in shard["skipped"]]
        return {
            "dataset": c.data.name, "source_dir": c.data.source_dir, "resolution": res,
            "space": space, "image_shape": shape, "pixel_channels": self.channels,
            "examples": sum(s["count"] for s in shards), "source_examples": len(self.source),
            "skipped": len(skipped), "skipped_items": skipped[:100],
            "text": {"encoder": self.encoder.kind, "source": self.encoder.source, "dim": self.encoder.dim,
                     "max_length": self.encoder.max_length, "layer": self.encoder.layer},
            "vae": {"source": c.vae.path, "scale": c.vae.scale} if self.vae is not None else None,
            "num_classes": len(self.source.class_names) if self.source.has_labels else 0,
            "class_names": self.source.class_names if self.source.has_labels else [],
            "shards": [{k: s[k] for k in ("file", "count", "sha256")} for s in shards],
        }


def read_manifest(folder):
    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    manifest["dir"] = folder
    return manifest


def prepare(config, data_dir):
    """Prepares the dataset `config` names under data_dir (resuming a killed run); returns the manifest."""
    folder = prepared_dir(config, data_dir)
    if os.path.exists(os.path.join(folder, MANIFEST)):
        return read_manifest(folder)
    Preparer(config, data_dir).run()
    return read_manifest(folder)
