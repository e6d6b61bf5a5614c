"""`python -m dit_jax.models`: every named variant with its parameter count and forward GMACs."""

from dit_jax.models.pretrained import abstract_model, count_parameters
from dit_jax.models.variants import VARIANTS, forward_macs

# The class-conditional ImageNet setting of the DiT paper: 256px images as 32x32x4 latents.
REFERENCE = dict(input_size=32, in_channels=4, num_classes=1000, learn_sigma=True)


def main():
    print("Class-conditional DiT (1000 classes, learn_sigma, 256px = 32x32x4 latents).")
    print("Parameters count the fixed position table, as the reference does.\n")
    print(f"{'variant':<10} {'hidden':>6} {'depth':>5} {'heads':>5} {'tokens':>6} {'parameters':>14} {'GMACs':>8}")
    for name, kw in VARIANTS.items():
        cfg = {**REFERENCE, **kw}
        tokens = (cfg["input_size"] // cfg["patch_size"]) ** 2
        params = count_parameters(abstract_model(cfg))
        print(f"{name:<10} {cfg['hidden_size']:>6} {cfg['depth']:>5} {cfg['num_heads']:>5} {tokens:>6} "
                    f"{params:>14,} {forward_macs(**cfg) / 1e9:>8.2f}")


if __name__ == "__main__":
    main()
