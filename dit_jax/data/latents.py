"""A diffusers AutoencoderKL: images to the posterior's mean and std (run once by `prepare`), latents to images.

Training samples latents from the stored posterior (mean + std * noise, times
the VAE's scale), as latent DiTs are trained, instead of a fixed encoding.
torch is imported where a VAE runs: the many commands that never load one skip its seconds of import.
"""

import os

import numpy as np

from dit_jax.utils.hub import weights_source

HOWTO = ("pass --config.vae.path=DIR holding a diffusers AutoencoderKL (save_pretrained, or a pipeline "
         "directory with vae/), or a hub id such as stabilityai/sd-vae-ft-ema on a machine that can reach the hub; "
         "an empty path trains in pixel space")

# Stable Diffusion's VAEs (8x smaller, 4 channels): latent shapes known without downloading them.
VAE_SCALE = 0.18215  # Stable Diffusion's VAE latents times this have unit variance
SD_VAE = dict(block_out_channels=[128, 256, 512, 512], latent_channels=4)
DEFAULT_CONFIGS = {"stabilityai/sd-vae-ft-ema": SD_VAE, "stabilityai/sd-vae-ft-mse": SD_VAE}


def _geometry(config):
    """(downsampling factor, latent channels) of an AutoencoderKL config: one halving per block after the first."""
    return 2 ** (len(config["block_out_channels"]) - 1), config["latent_channels"]


def _subfolder(source):
    return "vae" if os.path.isdir(os.path.join(source, "vae")) else None


def latent_shape(path, resolution):
    """(side, channels) of the latents of `resolution`px images under the VAE at `path`, read from its config
    (no weights loaded): the single source of the latent shape that `prepare` records and bench synthesises."""
    source = weights_source(path, "VAE", HOWTO)
    config = DEFAULT_CONFIGS.get(source)
    if config is None:
        from diffusers import AutoencoderKL  # pylint: disable=import-outside-toplevel
        try:
            config = AutoencoderKL.load_config(source, subfolder=_subfolder(source))
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot read a VAE config from {path!r} ({str(e).splitlines()[0]}); {HOWTO}.") from None
    downsample, channels = _geometry(config)
    return resolution // downsample, channels


class Vae:
    def __init__(self, path, device=None):
        import torch  # pylint: disable=import-outside-toplevel
        from diffusers import AutoencoderKL  # pylint: disable=import-outside-toplevel
        source = weights_source(path, "VAE", HOWTO)
        try:
            model = AutoencoderKL.from_pretrained(source, subfolder=_subfolder(source))
        except (OSError, ValueError) as e:
            raise ValueError(f"Cannot load a VAE from {path!r} ({str(e).splitlines()[0]}); {HOWTO}.") from None
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().to(self.device)
        self.downsample, self.channels = _geometry(model.config)

    def encode(self, images):
        """uint8 (B, H, W, 3) -> posterior mean and std, float16 (B, h, w, c)."""
        import torch  # pylint: disable=import-outside-toplevel
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2)
        with torch.no_grad():
            posterior = self.model.encode(x.float() / 127.5 - 1.0).latent_dist
        to_np = lambda t: t.permute(0, 2, 3, 1).float().cpu().numpy().astype(np.float16)
        return to_np(posterior.mean), to_np(posterior.std)

    def decode(self, latents, chunk=16):
        """float (B, h, w, c) latents, already divided by the scale -> float32 pixels in [-1, 1] (B, H, W, 3)."""
        import torch  # pylint: disable=import-outside-toplevel
        latents = np.asarray(latents, np.float32)
        out = []
        for part in np.array_split(latents, max(1, len(latents) // chunk)):
            z = torch.from_numpy(np.ascontiguousarray(part)).permute(0, 3, 1, 2).to(self.device)
            with torch.no_grad():
                out.append(self.model.decode(z).sample.permute(0, 2, 3, 1).float().cpu().numpy())
        return np.concatenate(out)
