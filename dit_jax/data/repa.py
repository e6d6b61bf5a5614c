"""REPA's config keys and its encoders' geometry, and the encoders `prepare` runs to store each example's
features (see dit_jax/models/repa.py for the method).

Encoders (`repa.encoder`):
  inception  the project's FID InceptionV3 in JAX, its Mixed_6e map (768 channels, 17x17 at 299 px); offline,
             and it can also run inside the train step (`repa.features=online`).
  dinov2     transformers' Dinov2Model from `repa.encoder_path` (a local directory or hub id), in PyTorch: its
             patch tokens after the final layer norm, as REPA aligns to; from `prepare` only.
The encoder sees the image at `repa.resolution` (0: the smallest whose feature grid covers the token grid;
DINOv2: patch size x token grid, REPA's 224 for 16x16 tokens), and its grid is area-averaged to the tokens.
`repa.features=prepare` stores the features of each example and of its mirror image (for data.flip) in the
prepared records, float16; `online` computes them from each augmented batch.
"""

import math

import jax
import numpy as np

from dit_jax.models import inception
from dit_jax.models.repa import INCEPTION_DIM, inception_features, to_tokens  # pylint: disable=unused-import

ENCODERS = ("inception", "dinov2")
FEATURES = ("prepare", "online")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # DINOv2's input normalisation


def enabled(config):
    r = config.get("repa")
    return bool(r and r.get("weight", 0))


def prepared(config):
    """Whether `prepare` stores REPA features for this config."""
    return enabled(config) and config.repa.features == "prepare"


def block_index(config):
    """repa.block, 1-based; 0: a third of the depth (REPA's SiT-B aligns block 4 of 12)."""
    return config.repa.block or max(1, config.model.depth // 3)


def projector_dim(config):
    """repa.projector_dim; 0: by the model's width, REPA's 2048 from DiT-B's (768) up and 256 below (DiT-S and
    the CPU sizes), where a 2048-wide projector (6M weights to Inception's 768 channels) would outweigh the DiT."""
    return config.repa.projector_dim or (2048 if config.model.hidden_size >= 768 else 256)


def check_config(config):
    """One-line errors for the repa keys, from the config alone (no files, no encoder)."""
    r = config.get("repa")
    if not r:
        return
    if isinstance(r.weight, bool) or not isinstance(r.weight, (int, float)) or not 0 <= r.weight < math.inf:
        raise ValueError(f"repa.weight={r.weight!r} must be 0 (off) or more: set --config.repa.weight (REPA: 0.5).")
    if not enabled(config):
        return
    if r.encoder not in ENCODERS:
        raise ValueError(f"Unknown repa.encoder {r.encoder!r}; choose one of {ENCODERS}.")
    if r.features not in FEATURES:
        raise ValueError(f"Unknown repa.features {r.features!r}; choose one of {FEATURES}.")
    depth = config.model.depth
    if not 0 <= r.block <= depth:
        raise ValueError(f"repa.block={r.block} is beyond the model's {depth} blocks: set --config.repa.block to "
                         f"1..{depth} (0: a third of the depth).")
    if r.projector_dim < 0 or r.resolution < 0:
        raise ValueError("repa.projector_dim must be 0 (by the model's width) or more and repa.resolution 0 (the "
                         "encoder's fit) or more.")
    if config.get("task", "diffusion") != "diffusion":
        raise ValueError("REPA aligns a diffusion model's tokens: set --config.repa.weight=0 for task=classifier.")
    if config.get("controlnet") and config.controlnet.get("base"):
        raise ValueError("REPA trains the DiT's blocks, which a ControlNet run freezes: set --config.repa.weight=0.")
    if r.encoder == "dinov2" and not r.encoder_path:
        raise ValueError("repa.encoder=dinov2 needs repa.encoder_path: a local directory or hub id "
                         "(e.g. facebook/dinov2-base).")
    if r.features == "online":
        if r.encoder == "dinov2":
            raise ValueError("DINOv2 runs in PyTorch, not inside the jitted train step: set "
                             "--config.repa.features=prepare (or repa.encoder=inception).")
        if config.vae.path:
            raise ValueError("repa.features=online encodes the batch's pixels, and this data is VAE latents: set "
                             "--config.repa.features=prepare.")
    elif config.data.get("rotation"):
        raise ValueError("Prepared REPA features are of the unrotated image: set --config.data.rotation=0 or "
                         "--config.repa.features=online.")


def token_grid(config, image_side):
    """The DiT's token grid side for images (or latents) of image_side."""
    return image_side // config.model.patch_size


def geometry(config, grid):
    """(resolution, feature grid side, feature dim) of the encoder for a grid x grid token grid; a feature grid
    that cannot map to the tokens (coarser than they are) fails in one line. DINOv2 reads only its config."""
    r = config.repa
    if r.encoder == "inception":
        least = next(s for s in range(75, 100_000) if inception.mixed_6e_grid(s) >= grid)
        resolution = r.resolution or least
        side, dim = (inception.mixed_6e_grid(resolution) if resolution >= 75 else 0), INCEPTION_DIM
    else:
        import transformers  # pylint: disable=import-outside-toplevel
        try:
            cfg = transformers.AutoConfig.from_pretrained(r.encoder_path)
        except (OSError, ValueError) as e:
            raise ValueError(f"repa.encoder_path {r.encoder_path!r}: no DINOv2 config there ({e}).") from None
        if cfg.model_type != "dinov2":
            raise ValueError(f"repa.encoder_path {r.encoder_path!r} is a {cfg.model_type} model, not dinov2.")
        least = cfg.patch_size * grid
        resolution = r.resolution or least
        side, dim = resolution // cfg.patch_size, cfg.hidden_size
    if side < grid:
        raise ValueError(f"repa: the {r.encoder} feature grid at repa.resolution={resolution} is {side}x{side}, "
                         f"coarser than the {grid}x{grid} token grid, so it cannot map to the tokens: set "
                         f"--config.repa.resolution to 0 (the encoder's fit) or at least {least}.")
    return resolution, side, dim


def manifest_entry(config, grid):
    """What the manifest records of prepared features, and pipeline.check_compatible compares."""
    resolution, _, dim = geometry(config, grid)
    r = config.repa
    return dict(encoder=r.encoder, source=r.encoder_path, resolution=resolution, grid=grid, dim=dim)


class Dinov2:
    """transformers' Dinov2Model in PyTorch: images -> its patch tokens on their grid."""

    def __init__(self, path):
        import torch  # pylint: disable=import-outside-toplevel
        import transformers  # pylint: disable=import-outside-toplevel
        self.torch = torch
        self.model = transformers.Dinov2Model.from_pretrained(path).eval()
        self.patch = self.model.config.patch_size

    def __call__(self, images, resolution):
        """(N, H, W, 1 or 3) in [-1, 1] -> (N, f, f, C), f = resolution // patch: bicubic resize (antialiased),
        ImageNet normalisation, and the patch tokens of the last hidden state (after its layer norm)."""
        torch = self.torch
        x = torch.from_numpy(np.array(images, np.float32)).permute(0, 3, 1, 2)  # a writable copy
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = torch.nn.functional.interpolate((x + 1) / 2, size=(resolution, resolution), mode="bicubic",
                                            antialias=True, align_corners=False)
        x = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
        with torch.no_grad():
            tokens = self.model(pixel_values=x).last_hidden_state[:, 1:]  # after the CLS token
        side = resolution // self.patch
        return tokens.reshape(len(x), side, side, -1).numpy()


def load_encoder(config, resolution):
    """images (N, H, W, C) in [-1, 1], numpy -> features (N, f, f, C), numpy: the encoder `prepare` runs."""
    r = config.repa
    if r.encoder == "dinov2":
        model = Dinov2(r.encoder_path)
        return lambda images: model(images, resolution)
    params = inception.load_params(r.encoder_path or None)
    fn = jax.jit(lambda images: inception_features(params, images, resolution))
    return lambda images: np.asarray(fn(images))
