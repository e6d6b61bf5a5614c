"""Accelerator peaks, for MFU (the model's FLOPs are models.variants.train_flops_per_image)."""

import jax

# Dense bf16 peak FLOP/s per chip.
PEAK_FLOPS = {
    "H100": 989e12, "H200": 989e12, "A100": 312e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
}


def device_peak_flops(device=None):
    """The table's peak for this device kind, or None where it is not known (CPU)."""
    kind = (device or jax.devices()[0]).device_kind
    for name in sorted(PEAK_FLOPS, key=len, reverse=True):
        if name.lower() in kind.lower():
            return PEAK_FLOPS[name]
    return None
