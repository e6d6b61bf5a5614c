"""The dataset builders on small slices, and latents from a (random, tiny) diffusers VAE."""

import gzip
import os

import ml_collections
import numpy as np
import pytest

from dit_jax.data import fashion_mnist, images, pipeline, prepare, sources
from test_prepare import tiny_config


def test_emoji_builder(tmp_path):
    source = sources.load(ml_collections.ConfigDict(dict(name="emoji", source_dir="")), str(tmp_path))
    assert len(source) == 1903 + 1875 and source.has_labels and source.channels == 3
    by_key = {source[i]["key"]: i for i in range(len(source))}
    cat = source[by_key["1F431"]]
    assert cat["captions"] == ["cat face", "cat"] and source.class_names[cat["label"]] == "Animals & Nature"
    santa = source[by_key["1F385-1F3FD"]]
    assert santa["captions"][0] == "father christmas, medium skin tone"
    pixels = np.asarray(images.decode(cat["image"]))
    assert pixels.shape == (72, 72, 3) and tuple(pixels[0, 0]) == (255, 255, 255)  # composited on white


def write_idx_slice(folder, n_train=40, n_test=8):
    """The first examples of the real Fashion-MNIST files, as idx files of their own."""
    os.makedirs(folder)
    for split, n in (("train", n_train), ("test", n_test)):
        image_file, label_file = fashion_mnist.FILES[split]
        for name, shape in ((image_file, (n, 28, 28)), (label_file, (n,))):
            data = fashion_mnist.read_idx(os.path.join(fashion_mnist.DEFAULT_DIR, name))[:n]
            header = bytes([0, 0, 8, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape)
            with gzip.open(os.path.join(folder, name), "wb") as f:
                f.write(header + data.tobytes())


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_builder(tmp_path):
    write_idx_slice(tmp_path / "idx")
    source = sources.load(ml_collections.ConfigDict(dict(name="fashion_mnist", source_dir=str(tmp_path / "idx"))),
                          str(tmp_path))
    assert len(source) == 40 and source.channels == 1 and source.class_names[7] == "sneaker"
    labels = fashion_mnist.read_idx(tmp_path / "idx" / "train-labels-idx1-ubyte.gz")
    originals = fashion_mnist.read_idx(tmp_path / "idx" / "train-images-idx3-ubyte.gz")
    for i in range(len(source)):
        example = source[i]
        j = int(example["key"].split("_")[1])
        assert example["label"] == labels[j]
        assert fashion_mnist.CLASSES[labels[j]] in example["captions"][0]
        pixels = np.asarray(images.decode(example["image"], channels=1))
        assert pixels.shape == (32, 32) and not pixels[:2].any()  # padded with black
        np.testing.assert_array_equal(pixels[2:30, 2:30], originals[j])


def test_missing_fashion_mnist_files_say_how(tmp_path):
    with pytest.raises(ValueError, match="dataset-fashion-mnist"):
        sources.load(ml_collections.ConfigDict(dict(name="fashion_mnist", source_dir=str(tmp_path))), str(tmp_path))


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR), reason="apt-get install dataset-fashion-mnist")
def save_tiny_vae(path):
    """A randomly initialised diffusers AutoencoderKL that halves the resolution into 4 latent channels."""
    from diffusers import AutoencoderKL
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=8, latent_channels=4,
                  sample_size=32).save_pretrained(path)


def test_latents_from_a_vae(tmp_path):
    import jax
    save_tiny_vae(tmp_path / "vae")
    write_idx_slice(tmp_path / "idx", n_train=24)
    config = tiny_config(name="fashion_mnist", source_dir=str(tmp_path / "idx"), max_examples=0, flip=True)
    config.vae.path = str(tmp_path / "vae")
    manifest = prepare.prepare(config, tmp_path / "data")
    assert manifest["space"] == "latent" and manifest["image_shape"] == [16, 16, 4]
    assert manifest["pixel_channels"] == 3 and manifest["num_classes"] == 10
    config.model.num_classes = -1  # labels on, their number from the data
    pipeline.check_compatible(manifest, config)
    assert pipeline.model_kwargs(manifest, config)["num_classes"] == 10
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    loader = pipeline.make_loader(config, manifest, global_batch_size=8, seed=0, sharding=sharding)
    batch = next(loader)
    assert batch["image"].shape == (8, 16, 16, 4) and batch["label"].dtype == np.int32
    # Posterior samples times the scale: finite, and not a fixed encoding.
    again = next(pipeline.make_loader(config, manifest, global_batch_size=8, seed=1, sharding=sharding))
    assert np.isfinite(np.asarray(batch["image"])).all()
    assert not np.allclose(np.asarray(batch["image"]), np.asarray(again["image"]))
