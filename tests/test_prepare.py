"""`prepare`: killed mid-run and resumed gives the same shards; bad inputs fail or are counted clearly."""

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from dit_jax.data import pipeline, prepare, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**data):
    spec = importlib.util.spec_from_file_location("tiny", os.path.join(ROOT, "configs", "tiny.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("runlocal")
    config.data.update(data)
    return config


def test_killed_and_resumed_matches_uninterrupted(tmp_path, monkeypatch):
    killed_dir, clean_dir = tmp_path / "killed", tmp_path / "clean"
    script = ("import sys; from dit_jax.data import prepare; prepare.SHARD_SIZE = 16; "
              "sys.path.insert(0, 'tests'); import test_prepare; "
              f"prepare.prepare(test_prepare.tiny_config(max_examples=96), {str(killed_dir)!r})")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    config = tiny_config(max_examples=96)
    folder = prepare.prepared_dir(config, killed_dir)
    first = os.path.join(folder, "data.array_record-00000-of-00006.json")
    deadline = time.time() + 120
    while not os.path.exists(first) and time.time() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert os.path.exists(first) and not os.path.exists(os.path.join(folder, "manifest.json"))
    finished_at = os.path.getmtime(first)

    monkeypatch.setattr(prepare, "SHARD_SIZE", 16)
    os.makedirs(clean_dir)
    os.symlink(killed_dir / "tfds", clean_dir / "tfds")  # the same raw emoji dataset, built once
    resumed = prepare.prepare(config, killed_dir)
    clean = prepare.prepare(config, clean_dir)
    assert os.path.getmtime(first) == finished_at  # the finished shard was kept, not redone
    assert resumed["examples"] == clean["examples"] == 96
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]
    assert not [f for f in os.listdir(folder) if f.endswith(".tmp")]


def write_image_folder(folder):
    os.makedirs(folder / "sub")
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[10:30, 5:25] = (255, 0, 0, 255)
    Image.fromarray(rgba).save(folder / "red.png")
    Image.fromarray(np.full((20, 20), 90, np.uint8)).save(folder / "sub" / "gray.jpg")
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).convert("P").save(folder / "pale.gif")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows = [{"file_name": "red.png", "text": "a red square"}, {"file_name": "broken.png", "text": "nothing"},
            {"file_name": "pale.gif", "captions": ["a pale square", "light gray"]}]
    (folder / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (folder / "sub" / "gray.txt").write_text("a gray square\n")


def test_image_folder_corrupt_image_skipped_and_counted(tmp_path):
    write_image_folder(tmp_path / "images")
    config = tiny_config(name="image_folder", source_dir=str(tmp_path / "images"), max_examples=0)
    manifest = prepare.prepare(config, tmp_path / "data")
    assert manifest["examples"] == 3 and manifest["skipped"] == 1
    assert manifest["skipped_items"][0]["key"] == "broken.png"
    assert manifest["image_shape"] == [32, 32, 3] and manifest["num_classes"] == 0
    path = os.path.join(manifest["dir"], manifest["shards"][0]["file"])
    from array_record.python import array_record_data_source
    rows = {r["key"]: r for r in map(records.decode, array_record_data_source.ArrayRecordDataSource([path]))}
    assert rows["pale.gif"]["captions"] == ["a pale square", "light gray"]
    assert rows["pale.gif"]["text"].shape == (2, 32, 384)
    red = rows["red.png"]["image"]
    assert tuple(red[0, 16]) == (255, 255, 255) and tuple(red[16, 16]) == (255, 0, 0)  # alpha on white


def test_image_folder_without_captions_fails_clearly(tmp_path):
    os.makedirs(tmp_path / "images")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "x.png")
    config = tiny_config(name="image_folder", source_dir=str(tmp_path / "images"))
    with pytest.raises(ValueError, match="no caption"):
        prepare.prepare(config, tmp_path / "data")


def test_missing_encoder_or_vae_fails_at_once(tmp_path, monkeypatch):
    def no_data(*args):
        raise AssertionError("the data source was opened before the encoder and VAE were checked")
    monkeypatch.setattr(prepare.sources, "load", no_data)
    config = tiny_config()
    config.text.path = str(tmp_path / "no_such_encoder")
    with pytest.raises(ValueError, match="--config.text.path"):
        prepare.prepare(config, tmp_path)
    config = tiny_config()
    config.vae.path = str(tmp_path / "no_such_vae")
    with pytest.raises(ValueError, match="--config.vae.path"):
        prepare.prepare(config, tmp_path)
    assert not os.path.exists(tmp_path / "tfds")


def test_mismatched_manifest_fails_in_one_line():
    manifest = {"dir": "/data/emoji", "image_shape": [32, 32, 3], "resolution": 32, "space": "pixel",
                "num_classes": 0, "text": {"encoder": "minilm", "dim": 384, "max_length": 32}}
    config = tiny_config()
    pipeline.check_compatible(manifest, config)
    assert pipeline.model_kwargs(manifest, config) == dict(input_size=32, in_channels=3, text_dim=384, text_len=32)
    config.model.text_dim = 768
    with pytest.raises(ValueError) as error:
        pipeline.check_compatible(manifest, config)
    assert "model.text_dim=768 but the data gives 384" in str(error.value) and "\n" not in str(error.value)
    config = tiny_config(resolution=64)
    config.model.num_classes = 10
    with pytest.raises(ValueError) as error:
        pipeline.check_compatible(manifest, config)
    assert "data.resolution=64 but the data is 32px" in str(error.value) and "no labels" in str(error.value)


class TinyShapes(tfds.core.GeneratorBasedBuilder):
    """A registered tfds dataset standing in for imagenet2012 / coco_captions: built locally, no download."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(20, 24, 3)),
            "label": tfds.features.ClassLabel(names=["red square", "blue square"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(6):
            image = np.full((20, 24, 3), 255, np.uint8)
            image[5:15, 6:18] = (200, 0, 0) if i % 2 == 0 else (0, 0, 200)
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")  # encoded bytes: tfds needs no TensorFlow
            yield i, {"image": png.getvalue(), "label": i % 2}


def test_registered_tfds_dataset_with_labels(tmp_path):
    config = tiny_config(name="tfds:tiny_shapes", source_dir=str(tmp_path / "tfds"), max_examples=0)
    manifest = prepare.prepare(config, str(tmp_path / "data"))
    assert manifest["examples"] == 6 and manifest["class_names"] == ["red square", "blue square"]
    assert manifest["image_shape"] == [32, 32, 3]
    loader = pipeline.make_loader(config, manifest, global_batch_size=6, seed=0,
                                  sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    batch = next(loader)
    labels = np.asarray(batch["label"])
    centre = np.asarray(batch["image"])[:, 16, 16]  # red (label 0) or blue (label 1) at the centre
    assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert all((c[0] > c[2]) == (label == 0) for c, label in zip(centre, labels))
