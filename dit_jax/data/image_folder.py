"""`image_folder`: a user's own images with captions, the usual format.

A directory (searched recursively) of .png/.jpg/.jpeg/.webp/.bmp/.gif files.
Captions come from `metadata.jsonl` beside them (one {"file_name": ..., "text":
... } line an image; "caption"/"captions" also read, a list gives alternate
captions) or from a sidecar `name.txt` (one caption a line). Files are stored
as they are: `prepare` decodes them, and skips and counts the unreadable ones.

A `conditioning_image` column in metadata.jsonl (the layout diffusers'
ControlNet training reads) names each image's control image, a path relative
to that metadata.jsonl; the files it names are controls, not training images.
They are stored beside their images and `prepare` reads them as the "user"
control (`--config.data.controls=user`).
"""

import json
import os

import numpy as np
import tensorflow_datasets as tfds

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _as_list(value):
    return [value] if isinstance(value, str) else list(value)


def read_metadata(folder):
    """({relative path: [captions]}, {relative path: relative path of its conditioning image}) from
    metadata.jsonl files and .txt sidecars."""
    captions, controls = {}, {}
    for root, _, files in os.walk(folder):
        for name in sorted(files):
            path = os.path.join(root, name)
            if name == "metadata.jsonl":
                with open(path) as f:
                    for line in filter(str.strip, f):
                        row = json.loads(line)
                        text = row.get("text") or row.get("caption") or row.get("captions")
                        image = os.path.relpath(os.path.join(root, row["file_name"]), folder)
                        captions[image] = _as_list(text)
                        if row.get("conditioning_image"):
                            controls[image] = os.path.relpath(os.path.join(root, row["conditioning_image"]), folder)
            elif name.endswith(".txt"):
                with open(path) as f:
                    lines = [l.strip() for l in f if l.strip()]
                for ext in EXTENSIONS:
                    image = os.path.relpath(path[:-4] + ext, folder)
                    captions.setdefault(image, lines)
    return captions, controls


class ImageFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Images of any size, each with one or more captions."""

    name = "image_folder"
    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {"1.1.0": "conditioning_image: the control image metadata.jsonl names (empty when none)."}

    def __init__(self, *, source_dir, **kwargs):
        if not source_dir or not os.path.isdir(source_dir):
            raise ValueError(f"image_folder needs --config.data.source_dir=DIR, a directory of images "
                             f"with captions; got {source_dir!r}.")
        self.source_dir = source_dir
        super().__init__(**kwargs)

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format=None),
                "conditioning_image": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes or b""
                "captions": tfds.features.Sequence(tfds.features.Text()),
                "label": tfds.features.ClassLabel(num_classes=1),
                "key": tfds.features.Text(),
            }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        captions, controls = read_metadata(self.source_dir)
        missing = sorted(c for c in controls.values() if not os.path.isfile(os.path.join(self.source_dir, c)))
        if missing:
            raise ValueError(f"{len(missing)} conditioning images named in metadata.jsonl are not in "
                             f"{self.source_dir} (first: {missing[0]}); fix the conditioning_image column.")
        control_files = set(controls.values())
        files = sorted(path for path in (os.path.relpath(os.path.join(root, name), self.source_dir)
                                         for root, _, names in os.walk(self.source_dir) for name in names
                                         if name.lower().endswith(EXTENSIONS))
                       if path not in control_files)
        missing = [f for f in files if not captions.get(f)]
        if missing:
            raise ValueError(f"{len(missing)} images in {self.source_dir} have no caption (first: {missing[0]}); "
                             "list them in metadata.jsonl or add a .txt beside each.")
        for relpath in files:
            with open(os.path.join(self.source_dir, relpath), "rb") as f:
                image = f.read()
            control = b""
            if relpath in controls:
                with open(os.path.join(self.source_dir, controls[relpath]), "rb") as f:
                    control = f.read()
            yield relpath, {"image": image, "conditioning_image": control, "captions": captions[relpath],
                            "label": 0, "key": relpath}
