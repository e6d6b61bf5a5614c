"""`python -m dit_jax.sample`: outputs, determinism, sharding, editing modes and one-line errors, on toy models."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from dit_jax import sampling
from dit_jax.convert import convert_to_dir
from dit_jax.data import prepare
from dit_jax.models import convert
from dit_jax.models.pretrained import abstract_model, flat_weights, load_flat_weights, load_pretrained, \
    save_pretrained
from dit_jax.diffusion import beta_schedule
from dit_jax.sample import Options, read_setup, run
from dit_jax.text.encoders import resolve
from dit_jax.training.recipe import base_config, emoji_minilm
from dit_jax.utils.visualization import CAPTION_HEIGHT
from test_schedules import reference_space_timesteps
from conftest import FAST_COMPILE_FLAG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = dict(input_size=16, patch_size=4, in_channels=3, hidden_size=32, depth=1, num_heads=2, learn_sigma=True)


def save_random_model(config, directory):
    """A DiT with random weights everywhere (training would start from zero-initialised outputs)."""
    model = abstract_model(config)
    rng = np.random.default_rng(0)
    names = {".".join(map(str, path)): var.shape for path, var in nnx.to_flat_state(nnx.state(model, nnx.Variable))}
    save_pretrained(load_flat_weights(model, {n: rng.normal(0, 0.1, s).astype(np.float32) for n, s in names.items()}),
                    config, directory)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A text-to-image workdir as training leaves it (export/, run.json) and its data's manifest."""
    root = tmp_path_factory.mktemp("sample")
    workdir, data_dir = root / "run", root / "data"
    config = emoji_minilm(base_config(), resolution=32, max_examples=512)
    save_random_model(dict(TOY, num_classes=0, text_dim=384, text_len=32, text_pooled=True), workdir / "export")
    (workdir / "run.json").write_text(json.dumps({"config": config.to_dict()}))
    folder = prepare.prepared_dir(config, str(data_dir))
    os.makedirs(folder)
    text = dict(encoder="minilm", source=resolve("minilm", ""), dim=384, max_length=32, layer="last")
    with open(os.path.join(folder, prepare.MANIFEST), "w") as f:
        json.dump(dict(text=text, space="pixel", vae=None, image_shape=[16, 16, 3], class_names=[]), f)
    return str(workdir), str(data_dir)


@pytest.fixture(scope="module")
def class_checkpoint(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("classes") / "export")
    save_random_model(dict(TOY, num_classes=3), path)
    return path


def cli(*args, devices=1):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAG}")
    return subprocess.run([sys.executable, "-m", "dit_jax.sample", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_writes_grid_singles_and_npz_the_same_on_one_and_eight_devices(run_dir, tmp_path):
    workdir, data_dir = run_dir
    out, npz = tmp_path / "grid.png", tmp_path / "samples.npz"
    result = cli(f"--workdir={workdir}", f"--data_dir={data_dir}", "--prompt=red apple", "--prompt=rocket",
                 "--num_images=3", "--sampler=ddim", "--steps=3", "--cfg_scale=2", f"--out={out}", f"--npz={npz}")
    assert result.returncode == 0, result.stderr
    assert Image.open(out).size == (3 * 128, 2 * (128 + CAPTION_HEIGHT))  # a row per prompt, 16 px images shown at 128 px
    singles = sorted(p for p in os.listdir(tmp_path) if p.startswith("grid_"))
    assert singles == [f"grid_{i:04d}.png" for i in range(6)]
    data = np.load(npz)
    assert data["arr_0"].shape == (6, 16, 16, 3) and data["arr_0"].dtype == np.uint8
    assert list(data["captions"]) == ["red apple"] * 3 + ["rocket"] * 3
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "grid_0004.png")), data["arr_0"][4])

    # The same run in this process, on 8 devices, in batches of 8 (6 images and 2 padding): the same images.
    options = Options(workdir=workdir, data_dir=data_dir, prompt=["red apple", "rocket"], num_images=3,
                      sampler="ddim", steps=3, cfg_scale=2.0, batch_size=8, out=str(tmp_path / "again.png"))
    images, _ = run(options)
    assert np.abs(images.astype(int) - data["arr_0"]).max() <= 1
    assert len({im.tobytes() for im in images}) == 6
    other, _ = run(dataclasses.replace(options, seed=1))
    assert not np.array_equal(other, images)


def test_class_conditional_checkpoint_and_trajectory(class_checkpoint, tmp_path):
    images, captions = run(Options(checkpoint=class_checkpoint, classes=["2", "0"], num_images=2, sampler="ddpm",
                                   steps=4, batch_size=8, npz=str(tmp_path / "s.npz"),
                                   trajectory=str(tmp_path / "trajectory.png")))
    assert images.shape == (4, 16, 16, 3) and captions == ["2", "2", "0", "0"]
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["labels"], [2, 2, 0, 0])
    assert Image.open(tmp_path / "trajectory.png").size == (24 + 4 * 96, 14 + 2 * 96)  # 4 steps, 96 px tiles
    assert sorted(os.listdir(tmp_path)) == ["s.npz", "trajectory.png"]  # --npz alone writes no grid


def test_inpainting_keeps_the_known_pixels_and_img2img_at_strength_zero_returns_the_image(class_checkpoint,
                                                                                          tmp_path):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 2:9] = 255  # white: regenerate
    Image.fromarray(original).save(tmp_path / "image.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    base = Options(checkpoint=class_checkpoint, classes=["1"], num_images=2, steps=3, batch_size=8,
                   image=str(tmp_path / "image.png"), out=str(tmp_path / "edit.png"))
    images, _ = run(dataclasses.replace(base, mode="inpaint", mask=str(tmp_path / "mask.png"), sampler="ddpm",
                                        resample=2))
    keep = mask == 0
    for image in images:
        np.testing.assert_array_equal(image[keep], original[keep])
        assert not np.array_equal(image[~keep], original[~keep])
    images, _ = run(dataclasses.replace(base, mode="img2img", strength=0.0, sampler="dpmpp_2m"))
    np.testing.assert_array_equal(images, np.stack([original] * 2))


def test_checkpoint_schedule_has_the_given_timesteps(class_checkpoint):
    assert len(read_setup(Options(checkpoint=class_checkpoint)).schedule.betas) == 1000
    setup = read_setup(Options(checkpoint=class_checkpoint, schedule="cosine", timesteps=500))
    np.testing.assert_allclose(setup.schedule.betas, beta_schedule("cosine", 500))
    with pytest.raises(ValueError, match="--timesteps must be at least 2"):
        read_setup(Options(checkpoint=class_checkpoint, timesteps=0))


@pytest.mark.parametrize("change, message", [
    (dict(workdir="/nonexistent/run"), "Workdir /nonexistent/run does not exist"),
    (dict(sampler="eulr"), "Unknown sampler 'eulr'"),
    (dict(sampler="euler"), "euler is a flow-matching sampler but the model is trained with DDPM"),
    (dict(classes=["1"]), "--class was given but this model is not class-conditional"),
    (dict(prompt=[]), "This model is text-conditioned: pass --prompt"),
    (dict(mode="inpaint", image=__file__, sampler="dpmpp_2m"), "Inpainting takes ddpm or ddim steps"),
    (dict(mode="inpaint", image=__file__, sampler="ddim_diffusers"), "Inpainting takes ddpm or ddim steps"),
    (dict(mode="img2img"), "--mode=img2img needs --image"),
    (dict(spacing="even"), "Unknown spacing 'even'"),
    (dict(eta=0.5), "eta is DDIM's"),
    (dict(sampler="ddim", eta=-1.0), "eta must be >= 0"),
    (dict(steps=0), "steps must be at least 1"),
])
def test_bad_arguments_fail_in_one_line(run_dir, change, message):
    workdir, data_dir = run_dir
    options = dataclasses.replace(Options(workdir=workdir, data_dir=data_dir, prompt=["rocket"]), **change)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run(options)


def test_cli_error_is_one_line_before_any_work(tmp_path):
    os.makedirs(tmp_path / "run")
    result = cli(f"--workdir={tmp_path / 'run'}", "--prompt=rocket")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(f"sample: {tmp_path / 'run' / 'export' / 'config.json'}"
                                                            " not found: ")


@pytest.fixture(scope="module")
def dit_checkpoint(class_checkpoint, tmp_path_factory):
    """The toy class model written as a facebookresearch/DiT state dict, then converted as a user would."""
    import torch
    root = tmp_path_factory.mktemp("dit")
    model, config = load_pretrained(class_checkpoint)
    state = convert.to_dit(flat_weights(model), config)
    torch.save({k: torch.tensor(np.array(v)) for k, v in state.items()}, root / "toy.pt")
    convert_to_dir("dit", str(root / "toy.pt"), str(root / "converted"), num_heads=2)
    return str(root / "converted")


def test_cli_samples_converted_dit_weights_on_dits_grid(dit_checkpoint, tmp_path):
    """By default: DiT's space_timesteps(1000, "21") from t = 999 (not diffusers' leading grid from 940, nor
    linspace's, which rounds its middle point to 500 where DiT has 499), and DiT's 3 guided channels."""
    assert json.load(open(os.path.join(dit_checkpoint, sampling.SAMPLING_FILE)))["source"] == "dit"
    result = cli(f"--checkpoint={dit_checkpoint}", "--class=1", "--num_images=1", "--sampler=ddpm", "--steps=21",
                 f"--npz={tmp_path / 's.npz'}")
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("Sampling "))
    printed = [int(t) for t in line.split("(t = ")[1].rstrip(").").split()]
    assert printed == reference_space_timesteps(1000, "21")[::-1]
    assert "spacing dit" in line
    settings = json.loads(str(np.load(tmp_path / "s.npz")["settings"]))
    assert settings["spacing"] == "dit" and settings["guidance_channels"] == 3

    setup = read_setup(Options(checkpoint=dit_checkpoint))
    asked = sampling.sampled_timesteps(setup, sampling.Settings(sampler="ddpm", steps=21, spacing="leading"))
    np.testing.assert_array_equal(asked, np.arange(20, -1, -1) * 47)  # a flag still picks another grid


def test_spacing_follows_the_recipe_and_the_export_records_it(run_dir, tmp_path):
    workdir, data_dir = run_dir
    setup = read_setup(Options(workdir=workdir, data_dir=data_dir))
    assert setup.spacing is None  # the recipe sets no sample.spacing: each sampler's diffusers default
    assert setup.resolve(sampling.Settings(sampler="ddim")).spacing == "leading"
    assert setup.resolve(sampling.Settings(sampler="dpmpp_2m")).spacing == "linspace"
    run = json.loads(open(os.path.join(workdir, "run.json")).read())
    run["config"]["sample"].update(spacing="trailing", guidance_channels=2)
    other = tmp_path / "run"
    os.makedirs(other)
    (other / "run.json").write_text(json.dumps(run))
    os.symlink(os.path.join(workdir, "export"), other / "export")
    setup = read_setup(Options(workdir=str(other), data_dir=data_dir))
    assert setup.resolve(sampling.Settings(sampler="ddim")) == sampling.Settings(sampler="ddim", spacing="trailing",
                                                                                   guidance_channels=2)
    assert setup.resolve(sampling.Settings(spacing="dit", guidance_channels=1)).spacing == "dit"

    from ml_collections import ConfigDict
    export = tmp_path / "export"
    os.makedirs(export)
    for name in ("config.json", "model.safetensors"):
        os.symlink(os.path.join(workdir, "export", name), export / name)
    config = ConfigDict(run["config"])
    config.diffusion.update(schedule="cosine", timesteps=500, prediction="v")
    sampling.write_sampling_record(str(export), sampling.run_record(config))
    setup = sampling.read_setup(checkpoint=str(export), text_encoder="minilm")
    assert (setup.spacing, setup.guidance_channels, setup.prediction, len(setup.schedule)) == ("trailing", 2, "v", 500)
    np.testing.assert_allclose(setup.schedule.betas, beta_schedule("cosine", 500))
    assert sampling.read_setup(checkpoint=str(export), text_encoder="minilm", prediction="eps").prediction == "eps"


def test_eta_and_spacing_change_the_samples(class_checkpoint, tmp_path):
    base = Options(checkpoint=class_checkpoint, classes=["1"], num_images=2, sampler="ddim", steps=4, batch_size=8,
                   npz=str(tmp_path / "s.npz"))
    plain, _ = run(base)
    again, _ = run(base)
    np.testing.assert_array_equal(plain, again)
    for change in (dict(eta=1.0), dict(spacing="trailing")):
        other, _ = run(dataclasses.replace(base, **change))
        assert np.abs(other.astype(int) - plain).max() > 8, change


def test_ddim_diffusers_reaches_diffusers_step_rule(class_checkpoint, tmp_path, monkeypatch):
    """--sampler=ddim_diffusers runs DDIM with diffusers' stride T // N and last level alphas_cumprod[0] (that this
    is DDIMScheduler is test_samplers'); a misspelt name fails in one line that lists it."""
    from dit_jax.diffusion import generate as generate_module
    calls, real = [], generate_module.ddim_sample

    def spy(*args, **kwargs):
        calls.append((kwargs["stride"], kwargs["set_alpha_to_one"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(generate_module, "ddim_sample", spy)
    base = Options(checkpoint=class_checkpoint, classes=["1"], num_images=2, steps=3, spacing="trailing",
                   batch_size=8, npz=str(tmp_path / "s.npz"))
    diffusers, _ = run(dataclasses.replace(base, sampler="ddim_diffusers", eta=0.5))
    assert json.loads(str(np.load(tmp_path / "s.npz")["settings"]))["sampler"] == "ddim_diffusers"
    on_grid, _ = run(dataclasses.replace(base, sampler="ddim", eta=0.5))
    assert calls == [(1000 // 3, False), (None, True)]
    assert np.abs(diffusers.astype(int) - on_grid).max() > 0

    result = cli(f"--checkpoint={class_checkpoint}", "--class=1", "--sampler=ddim_diffuser")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("sample: Unknown sampler 'ddim_diffuser'; choose one "
                                                            "of ('ddpm', 'ddim', 'ddim_diffusers',")
