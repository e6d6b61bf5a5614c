"""Attention backends behind one function, chosen by name in the model config.

All take q (B, Lq, H, D), k and v (B, Lk, H, D) and an optional key padding
mask (B, Lk) where True means "attend", and return (B, Lq, H, D).
"""

import jax
import jax.numpy as jnp


def xla_attention(q, k, v, mask=None):
    """The reference: softmax(q k^T / sqrt(D)) v, with logits and softmax in float32."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
    logits = logits * (q.shape[-1] ** -0.5)
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _dot_product(implementation):
    def attend(q, k, v, mask=None):
        if mask is not None:
            mask = mask[:, None, None, :]
        return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)
    return attend


BACKENDS = {
        "xla": xla_attention,
        # jax.nn.dot_product_attention: XLA's fused path, or cuDNN flash attention on NVIDIA.
        "dot_product": _dot_product(None),
        "cudnn": _dot_product("cudnn"),
}


def get_attention(name):
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}.")
    return BACKENDS[name]
