"""Named DiT sizes and their analytic cost."""

from dit_jax.models.dit import swiglu_dim

VARIANTS = {
        f"DiT-{name}/{patch}": dict(hidden_size=hidden, depth=depth, num_heads=heads, patch_size=patch)
        for name, (hidden, depth, heads) in {
                "S": (384, 12, 6), "B": (768, 12, 12), "L": (1024, 24, 16), "XL": (1152, 28, 16)}.items()
        for patch in (2, 4, 8)
}


def variant(name, **overrides):
    """Model kwargs for a named size ("DiT-XL/2"), with any field overridden."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown DiT variant {name!r}; choose one of {list(VARIANTS)}.")
    return {**VARIANTS[name], **overrides}


def forward_macs(*, input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                                 mlp_ratio=4.0, learn_sigma=True, text_dim=0, text_len=77,
                                 text_cross_attention=True, text_pooled=False, mlp="gelu", **_):
    """Multiply-accumulates of one forward pass for one image, as the DiT paper counts "Gflops".

    Counts every matmul (patch embedding, qkv, attention scores and values,
    projections, MLP, adaLN, final layer, condition embedders); elementwise
    work (norms, rotary positions) is left out. A SwiGLU MLP has three matrices,
    swiglu_dim(mlp_dim) wide.
    """
    size = (input_size, input_size) if isinstance(input_size, int) else input_size
    n = (size[0] // patch_size) * (size[1] // patch_size)
    d, mlp, mlp_kind = hidden_size, int(hidden_size * mlp_ratio), mlp
    out = patch_size * patch_size * in_channels * (2 if learn_sigma else 1)
    mlp_macs = 3 * n * d * swiglu_dim(mlp) if mlp_kind == "swiglu" else 2 * n * d * mlp
    block = n * d * 3 * d + 2 * n * n * d + n * d * d + mlp_macs + d * 6 * d
    cond = 256 * d + d * d
    if text_dim and text_cross_attention:
        cond += text_len * (text_dim * d + d * d)
        block += n * d * d + text_len * d * 2 * d + 2 * n * text_len * d + n * d * d
    if text_dim and text_pooled:
        cond += text_dim * d + d * d
    head = d * 2 * d + n * d * out
    return n * patch_size * patch_size * in_channels * d + cond + depth * block + head


def train_flops_per_image(model_kwargs):
    """A train step costs about 3x the forward pass (forward + two for backward); 2 FLOPs a MAC. A video model's
    (kwargs with `frames`): per clip; a multi-view model's: per object (all its views)."""
    if model_kwargs.get("multiview"):
        from dit_jax.models import multiview  # pylint: disable=import-outside-toplevel
        return 3 * 2 * multiview.forward_macs(**model_kwargs)
    if model_kwargs.get("frames"):
        from dit_jax.models import video  # pylint: disable=import-outside-toplevel
        return 3 * 2 * video.forward_macs(**model_kwargs)
    return 3 * 2 * forward_macs(**model_kwargs)
