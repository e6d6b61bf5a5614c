"""DiT-B/2 (768 wide, 12 deep, 12 heads) text-to-image on COCO captions at 256px, in SD-VAE latent space.

Needs coco_captions prepared for tfds under data.source_dir (no download
offline), the VAE (stabilityai/sd-vae-ft-ema, a hub id or a local copy) and
CLIP ViT-L/14 (its penultimate layer, as Stable Diffusion and PixArt read it).
"""

from dit_jax.training.recipe import apply_runlocal, base_config


def get_config(arg=None):
    c = base_config()
    c.data.update(name="tfds:coco_captions", resolution=256, flip=True)
    c.text.update(encoder="clip", path="openai/clip-vit-large-patch14", max_length=77, layer="penultimate")
    c.vae.update(path="stabilityai/sd-vae-ft-ema", scale=0.18215)
    c.model.update(patch_size=2, hidden_size=768, depth=12, num_heads=12, dtype="bfloat16")
    c.batch_size = 256
    c.optim.update(lr=1e-4, schedule="constant", warmup_steps=1000)
    c.sample.prompts = ["a cat sitting on a sofa", "a red double-decker bus on a city street",
                        "a bowl of fruit on a wooden table", "a surfer riding a large wave",
                        "a plate of pasta with tomato sauce", "a train crossing a bridge at sunset",
                        "two dogs playing in the snow", "a kitchen with white cabinets"]
    return apply_runlocal(c) if arg == "runlocal" else c
