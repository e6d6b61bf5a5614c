"""The raw dataset a config names, as a tfds ArrayRecord data source read without TensorFlow.

`data.name` is `emoji`, `fashion_mnist`, `image_folder`, `circles`, `fashion_scenes`, the clip sets
`moving_fashion` and `moving_emoji`, the multi-view set `shapes3d` (its views stored as a clip's frames, each
with its camera pose) (our builders, built on first use under DATA_DIR/tfds) or `tfds:<name>`
for any registered tfds
dataset with an image and captions or a label (imagenet2012, coco_captions)
that is already prepared in `data.source_dir` (a tfds data_dir), or whose
manual files are there. Nothing is downloaded when offline.
"""

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from dit_jax.data import circles, emoji, fashion_mnist, fashion_scenes, image_folder, moving, shapes3d

BUILDERS = {"emoji": emoji.Emoji, "fashion_mnist": fashion_mnist.FashionMnist,
            "image_folder": image_folder.ImageFolder, "circles": circles.Circles,
            "fashion_scenes": fashion_scenes.FashionScenes,
            "moving_fashion": moving.MovingFashion, "moving_emoji": moving.MovingEmoji,
            "shapes3d": shapes3d.Shapes3d}
CLIP_DATASETS = ("moving_fashion", "moving_emoji")  # their `image` is a frame strip of data.frames frames
VIEW_DATASETS = ("shapes3d",)  # their `image` is a strip of data.frames views, each with a camera `pose`
CAPTION_FEATURES = ("captions", "caption", "text")
CONTROL_FEATURE = "conditioning_image"  # a control image that comes with the data (diffusers' name for it)
LAYOUT_FEATURE = "objects"  # a sequence of {box: (x0, y0, x1, y1) in [0, 1], label, phrase}
# The name a dataset's own control image goes by (controls.user_name renames it) and its channels.
GIVEN_CONTROLS = {"image_folder": ("user", 3), "circles": ("outline", 1)}


def short_hash(text):
    return hashlib.sha256(text.encode()).hexdigest()[:8]


@dataclasses.dataclass
class Source:
    """Random access to examples {image: encoded bytes, captions: [str], label: int, key: str}."""
    name: str
    records: object  # a tfds data source: len() and [i]
    class_names: list
    has_labels: bool
    channels: int  # of the stored images: 1 (grayscale) or 3
    extra_labels: dict = dataclasses.field(default_factory=dict)  # other ClassLabel features: {name: names}
    has_control: bool = False  # examples carry their own control image (CONTROL_FEATURE)
    styles: list = dataclasses.field(default_factory=list)  # names of the `style` feature's values, if any
    layout_max_boxes: int = 0  # examples carry a layout (LAYOUT_FEATURE) of at most this many boxes
    frames: int = 0  # > 0: each image is a clip stored as a strip of this many frames, left to right
    has_cameras: bool = False  # examples carry each view's camera-to-world pose (multi-view data)

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        row = self.records[index]
        captions = _captions(row)
        label = int(row["label"]) if self.has_labels else 0
        if not captions:
            captions = [f"a photo of a {self.class_names[label].replace('_', ' ')}"]
        example = {"image": row["image"], "captions": captions, "label": label,
                   "key": _text(row.get("key", str(index)))}
        if self.extra_labels:
            example["labels"] = {name: int(row[name]) for name in self.extra_labels}
        if self.has_control:
            control = row[CONTROL_FEATURE]
            control = control.item() if isinstance(control, np.ndarray) else control
            example["control"] = bytes(control) or None  # encoded bytes; None where an example has none
        if self.styles:
            example["style"] = int(row["style"])
        if self.has_cameras:  # (V, 16): each view's flattened 4x4 pose, what the multi-view model reads
            example["cameras"] = np.asarray(row["pose"], np.float32).reshape(self.frames, 16)
        if self.layout_max_boxes:
            objects = row[LAYOUT_FEATURE]
            example["layout"] = {"boxes": np.asarray(objects["box"], np.float32).reshape(-1, 4),
                                 "labels": [int(k) for k in objects["label"]],
                                 "phrases": [_text(p) for p in objects["phrase"]]}
        return example


def _text(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def _captions(row):
    for name in CAPTION_FEATURES:
        if name in row:
            value = row[name]
            if isinstance(value, dict):  # e.g. coco_captions: {"text": [...], "id": [...]}
                value = value["text"]
            values = [value] if isinstance(value, (bytes, str)) else list(value)
            return [_text(v) for v in values]
    return []


def load(data, data_dir):
    """Builds our datasets on first use (a tfds ArrayRecord dataset) and returns the `train` split."""
    name = data.name
    if name.startswith("tfds:"):
        builder = tfds.builder(name[len("tfds:"):], data_dir=data.source_dir or None)
        if not builder.is_prepared():
            builder.download_and_prepare(file_format="array_record", download_config=tfds.download.DownloadConfig(
                manual_dir=data.source_dir or None))
    elif name in ("circles", "fashion_scenes"):
        kwargs = circles_options(data) if name == "circles" else fashion_scenes_options(data)
        tfds_dir = os.path.join(data_dir, "tfds", short_hash(json.dumps(kwargs, sort_keys=True)))
        builder = BUILDERS[name](data_dir=tfds_dir, file_format="array_record", **kwargs)
        if not builder.is_prepared():
            builder.download_and_prepare()
    elif name in CLIP_DATASETS or name in VIEW_DATASETS:
        kwargs = moving_options(data) if name in CLIP_DATASETS else shapes3d_options(data)
        tfds_dir = os.path.join(data_dir, "tfds", short_hash(json.dumps(kwargs, sort_keys=True)))
        builder = BUILDERS[name](data_dir=tfds_dir, file_format="array_record", **kwargs)
        if not builder.is_prepared():
            builder.download_and_prepare()
    elif name in BUILDERS:
        tfds_dir = os.path.join(data_dir, "tfds", short_hash(data.source_dir) if data.source_dir else "")
        kwargs = {"source_dir": data.source_dir} if name != "emoji" else {}
        builder = BUILDERS[name](data_dir=tfds_dir, file_format="array_record", **kwargs)
        if not builder.is_prepared():
            builder.download_and_prepare()
    else:
        raise ValueError(f"Unknown dataset {name!r}; use one of {sorted(BUILDERS)} or tfds:<name>.")
    features = builder.info.features
    label = features["label"] if "label" in features else None
    if not any(f in features for f in CAPTION_FEATURES) and label is None:
        raise ValueError(f"Dataset {name!r} has neither captions nor a label.")
    has_control = CONTROL_FEATURE in features
    decoders = {"image": tfds.decode.SkipDecoding()}
    if has_control and isinstance(features[CONTROL_FEATURE], tfds.features.Image):
        decoders[CONTROL_FEATURE] = tfds.decode.SkipDecoding()
    records = builder.as_data_source("train", decoders=decoders)
    class_names = list(label.names) if label is not None else []
    channels = features["image"].shape[-1] or 3
    extra_labels = {k: list(f.names) for k, f in features.items()
                    if k != "label" and isinstance(f, tfds.features.ClassLabel)}
    styles = list(features["style"].names) if "style" in features else []
    layout_max_boxes = getattr(builder, "MAX_OBJECTS", 0) if LAYOUT_FEATURE in features else 0
    frames = builder.frames if name in CLIP_DATASETS or name in VIEW_DATASETS else 0
    return Source(name, records, class_names, has_labels=len(class_names) > 1, channels=channels,
                  extra_labels=extra_labels, has_control=has_control, styles=styles,
                  layout_max_boxes=layout_max_boxes, frames=frames, has_cameras=name in VIEW_DATASETS)


def circles_options(data):
    """The circles builder's arguments from the data config (data.circles.examples and .seed; the size is
    data.resolution, so the circles are drawn at the size trained on)."""
    options = data.get("circles") or {}
    return {"num_examples": int(options.get("examples", 50_000)), "seed": int(options.get("seed", 0)),
            "size": int(data.resolution)}


def fashion_scenes_options(data):
    """The fashion_scenes builder's arguments from the data config (data.fashion_scenes.train_examples,
    .test_examples and .seed; the idx files from data.source_dir; the canvas is data.resolution)."""
    options = data.get("fashion_scenes") or {}
    return {"source_dir": data.source_dir, "train_examples": int(options.get("train_examples", 60_000)),
            "test_examples": int(options.get("test_examples", 10_000)), "seed": int(options.get("seed", 0)),
            "size": int(data.resolution)}
def moving_options(data):
    """The moving_* builders' arguments from the data config: data.frames, data.resolution, and
    data.moving.examples, .seed and .motions (a tuple or a comma-separated string of MOTIONS words)."""
    options = data.get("moving") or {}
    kwargs = {"num_examples": int(options.get("examples", 20_000)), "seed": int(options.get("seed", 0)),
              "size": int(data.resolution), "frames": int(data.get("frames", 0) or 8),
              "motions": list(moving.check_motions(options.get("motions", moving.MOTIONS)))}
    if data.name == "moving_fashion" and data.source_dir:
        kwargs["source_dir"] = data.source_dir
    return kwargs


def shapes3d_options(data):
    """The shapes3d builder's arguments from the data config: data.frames (the views, default 4),
    data.resolution, and data.shapes3d.examples, .seed, .elevation, .random_elevation, .distance, .shapes and
    .colours (tuples or comma-separated strings of shapes3d.SHAPES and COLOURS names)."""
    options = data.get("shapes3d") or {}
    names = shapes3d.check_names(options.get("shapes", shapes3d.SHAPES), options.get("colours", shapes3d.COLOURS))
    return {"num_examples": int(options.get("examples", 20_000)), "seed": int(options.get("seed", 0)),
            "size": int(data.resolution), "views": int(data.get("frames", 0) or 4),
            "elevation": float(options.get("elevation", 30.0)),
            "random_elevation": float(options.get("random_elevation", 0.0)),
            "distance": float(options.get("distance", 3.0)), "shapes": list(names[0]), "colours": list(names[1])}
