"""The Diffusion Transformer (Peebles & Xie, 2023) in Flax NNX, with text conditioning.

Numerically the same network as facebookresearch/DiT's models.py: adaLN-Zero
blocks, the fixed sin-cos position table, the reference initialisation (all of
it in DiT.initialize_weights) and unpatchify order, so its weights load (see
convert.py). Images are NHWC. Shapes: N batch, T image tokens, D width, L text
tokens, C channels, p patch size.

Conditioning is a sum of embeddings driving adaLN (timestep + class label +
pooled text) plus optional per-token text read by cross-attention in every
block (PixArt-alpha). Each condition can be dropped to its null value, which
is what classifier-free guidance needs.

Four options, each off by default (DiT's block), give LightningDiT's block
(Yao et al., 2025): norm="rmsnorm" (RMSNorm pre-norms, adaLN kept),
qk_norm=True (RMSNorm with a learned scale on queries and keys),
mlp="swiglu" (a SwiGLU MLP of about the same parameters) and pos_embed="rope"
(2-D axial rotary positions on the self-attention's queries and keys, no
sin-cos table).
"""

import itertools

import jax
import jax.numpy as jnp
from flax import nnx

from dit_jax.models.attention import get_attention
from dit_jax.models.layout import Grounding, GroundingTokens, box_coverage, region_tokens
from dit_jax.models.embeddings import (
    LabelEmbedder,
    PatchEmbed,
    TextEmbedder,
    TimestepEmbedder,
    apply_rope,
    linear,
    param,
    rope_2d,
    sincos_2d,
)

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


# The block options and DiT's choice for each (the default; converted DiT weights need it).
DIT_BLOCK = dict(norm="layernorm", qk_norm=False, mlp="gelu", pos_embed="sincos")
CHOICES = dict(norm=("layernorm", "rmsnorm"), qk_norm=(False, True), mlp=("gelu", "swiglu"),
               pos_embed=("sincos", "rope"))


def check_block(hidden_size, num_heads, **options):
    """One-line errors for the block options (norm, qk_norm, mlp, pos_embed), naming the config key."""
    for key, value in options.items():
        if key not in CHOICES:
            raise ValueError(f"Unknown block option {key!r}; the block takes {sorted(CHOICES)}.")
        if not any(value is c or (isinstance(c, str) and value == c) for c in CHOICES[key]):
            raise ValueError(f"model.{key}={value!r} is not one of {CHOICES[key]}: set --config.model.{key}.")
    head_dim = hidden_size // num_heads
    if options.get("pos_embed") == "rope" and head_dim % 4:
        raise ValueError(f"model.pos_embed='rope' needs a head dimension divisible by 4 (two axes of rotated "
                         f"pairs), got hidden_size {hidden_size} / num_heads {num_heads} = {head_dim}: change "
                         "model.hidden_size or model.num_heads, or use model.pos_embed='sincos'.")



def check_model(hidden_size, num_heads, remat, text_dim=0, text_cross_attention=True, text_pooled=False, **block):
    """One-line errors for the arguments of every model built of DiT blocks (DiT, VideoDiT, Classifier); `block`
    are the block options, as check_block takes them."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
    if remat not in REMAT_POLICIES:
        raise ValueError(f"Unknown remat policy {remat!r}; choose one of {sorted(REMAT_POLICIES)}.")
    if text_dim and not (text_cross_attention or text_pooled):
        raise ValueError("text_dim > 0 needs text_cross_attention or text_pooled.")
    check_block(hidden_size, num_heads, **block)

# The conditions a DiT can read, each with its own null value: the names of `drops` and of guidance terms.
CONDITIONS = ("text", "style", "layout", "class")


def check_conditions(num_styles, layout_max_boxes, text_dim, layout_regions=False):
    """One-line errors for the style and layout options, naming the config key."""
    for key, value in (("num_styles", num_styles), ("layout_max_boxes", layout_max_boxes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"model.{key}={value!r} must be 0 (off) or a count: set --config.model.{key}.")
    if layout_max_boxes and not text_dim:
        raise ValueError("model.layout_max_boxes > 0 reads each box's phrase as a pooled text embedding, but this "
                         "model reads no text (text_dim=0): enable model.text_pooled or text_cross_attention.")
    if layout_regions and not layout_max_boxes:
        raise ValueError("model.layout_regions acts through the layout path, which this model does not have: set "
                         "model.layout_max_boxes > 0 or drop layout_regions.")


def weight_initializer(rngs):
    """`init(param, initializer)`: sets param to a fresh draw. One key is drawn and folded with a counter:
    under `nnx.eval_shape` or `jax.jit` every draw from `rngs` updates its traced counter at a cost that grows
    with the traced program (8 s for DiT-XL/2's abstract model, against 2 s this way)."""
    key, count = rngs.params(), itertools.count()

    def init(param, initializer):
        param.set_value(initializer(jax.random.fold_in(key, next(count)), param.shape, param.dtype))
    return init


def init_weights(model, rngs, blocks, normal=(), zero=()):
    """Every parameter's initial value, as DiT's initialize_weights sets them (text parts as PixArt-alpha's), for
    the DiT and the models built of its parts (VideoDiT, Classifier): each part `model` has gets the DiT's value.
    `blocks` are the model's DiTBlocks; `normal` (parameters) and `zero` (layers) are its own parts, drawn from
    normal(0.02) and set to zero after the DiT's."""
    init = weight_initializer(rngs)

    # Every Linear: xavier-uniform weight, zero bias.
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Linear):
            init(module.kernel, nnx.initializers.xavier_uniform())
            init(module.bias, nnx.initializers.zeros)
    # The patch embedding like a Linear over the flattened p x p x C patch (or t x p x p x C tubelet).
    rank = model.x_embedder.proj.kernel.ndim
    init(model.x_embedder.proj.kernel,
         nnx.initializers.xavier_uniform(in_axis=tuple(range(rank - 1)), out_axis=rank - 1))
    init(model.x_embedder.proj.bias, nnx.initializers.zeros)
    # The class and style tables (null rows included), the timestep MLP and the text projections: normal, std 0.02.
    std = nnx.initializers.normal(0.02)
    for name in ("y_embedder", "style_embedder"):
        if getattr(model, name, None) is not None:
            init(getattr(model, name).embedding_table, std)
    init(model.t_embedder.linear1.kernel, std)
    init(model.t_embedder.linear2.kernel, std)
    text = getattr(model, "text_embedder", None)
    if text is not None:
        for name in ("caption_fc1", "caption_fc2", "pooled_fc1", "pooled_fc2"):
            if hasattr(text, name):
                init(getattr(text, name).kernel, std)
        # The learned null text: vectors of about unit norm.
        for name in ("null_tokens", "null_pooled"):
            if hasattr(text, name):
                init(getattr(text, name), nnx.initializers.normal(model.text_dim**-0.5))
    # QK-norm's scales: ones; adaLN-single's tables (video.py) as PixArt-alpha's: normal, std D^-1/2.
    for _, module in nnx.iter_modules(model):
        if isinstance(module, RMSNorm):
            init(module.scale, nnx.initializers.ones)
        if hasattr(module, "scale_shift_table"):
            init(module.scale_shift_table, nnx.initializers.normal(model.hidden_size**-0.5))
    # GLIGEN's gates: tanh(0) = 0, so the layout path starts closed; a DiT trained from scratch may open them.
    for block in blocks:
        if block.fuser is not None:
            init(block.fuser.alpha, nnx.initializers.constant(model.layout_gate_init))
    for value in normal:
        init(value, std)
    # adaLN-Zero: the modulation of every block and of the final layer, the text cross-attention's output
    # projection and the final linear layer start at zero, so each block starts as the identity.
    zero = list(zero)
    final = getattr(model, "final_layer", None)
    if final is not None:
        zero += [final.adaLN_modulation, final.linear]
    for block in blocks:
        zero.append(block.adaLN_modulation)
        if block.cross_attn is not None:
            zero.append(block.cross_attn.proj)
    for layer in zero:
        if layer is not None:  # adaLN-single's layers have no modulation
            init(layer.kernel, nnx.initializers.zeros)
            init(layer.bias, nnx.initializers.zeros)


def layer_norm(x, eps):
    """LayerNorm without affine parameters, computed in float32."""
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    return ((x32 - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype)


def rms_norm(x, eps):
    """RMSNorm without affine parameters (adaLN scales the pre-norms), computed in float32."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + eps)).astype(x.dtype)


PRE_NORMS = {"layernorm": layer_norm, "rmsnorm": rms_norm}


def swiglu_dim(mlp_dim):
    """SwiGLU's hidden width: 2/3 of the GELU MLP's, rounded up to a multiple of 8, so that its three
    matrices hold about the parameters of the GELU MLP's two (LightningDiT's rule, rounded for tiling)."""
    return (int(2 * mlp_dim / 3) + 7) // 8 * 8


class RMSNorm(nnx.Module):
    """RMSNorm with a learned scale (ones at first), computed in float32: QK-norm's, over each head's dims."""

    def __init__(self, dim, eps=1e-6, *, param_dtype):
        self.eps = eps
        self.scale = param((dim,), (None,), param_dtype)

    def __call__(self, x):
        return (rms_norm(x.astype(jnp.float32), self.eps) * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def modulate(x, shift, scale):
    """x (N, T, D) scaled and shifted per example by (N, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


@jax.custom_vjp
def materialize_grad(x):
    """The identity, whose gradient XLA on CPU must compute into its own buffer.

    In an unrolled stack the residual stream's gradient is a chain of cheap
    elementwise adds, one per layer norm; XLA's CPU fusion copies the chain
    into every consumer (each weight gradient's transpose) and recomputes it
    there, from up to all the later blocks' layer norms. Multiplying the
    gradient by the identity matrix (exact) makes it a dot's output, which
    fusion cannot duplicate. (optimization_barrier does not help: XLA CPU
    removes it before fusing.) Elsewhere this is a plain identity.
    """
    return x


def _materialize_fwd(x):
    return x, None


def _materialize_bwd(_, g):
    if jax.default_backend() != "cpu":
        return (g,)
    eye = jnp.eye(g.shape[-1], dtype=g.dtype)
    return (jnp.einsum("...d,de->...e", g, eye, precision=jax.lax.Precision.HIGHEST),)


materialize_grad.defvjp(_materialize_fwd, _materialize_bwd)


class Attention(nnx.Module):
    """Multi-head attention: self-attention with a fused qkv, or cross-attention to a context.

    qk_norm: RMSNorm on each head's queries and keys. Rotary positions (self-attention only) turn the queries
    and keys before the backend sees them, so every backend takes them. sparse=False drops the backend's
    sparse pattern (the gated self-attention's tokens are not one image grid).
    """

    def __init__(self, hidden_size, num_heads, *, cross, backend, qk_norm=False, sparse=True, dtype, param_dtype,
                 rngs):
        self.num_heads, self.cross = num_heads, cross
        self.attend = get_attention(backend, cross=cross or not sparse)
        head_dim = hidden_size // num_heads
        self.q_norm = RMSNorm(head_dim, param_dtype=param_dtype) if qk_norm else None
        self.k_norm = RMSNorm(head_dim, param_dtype=param_dtype) if qk_norm else None
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        if cross:
            self.q = linear(hidden_size, hidden_size, ("embed", "heads"), **kw)
            self.kv = linear(hidden_size, 2 * hidden_size, ("embed", "heads"), **kw)
        else:
            self.qkv = linear(hidden_size, 3 * hidden_size, ("embed", "heads"), **kw)
        self.proj = linear(hidden_size, hidden_size, ("heads", "embed"), **kw)

    def __call__(self, x, context=None, mask=None, rope=None):
        """x (N, T, D), context (N, L, D) with its key mask (N, L), rope (cos, sin) (T, D/heads) -> (N, T, D)."""
        b, n, d = x.shape
        split = lambda h: h.reshape(*h.shape[:2], self.num_heads, d // self.num_heads)  # (N, ., heads, D/heads)
        if self.cross:
            q = split(self.q(x))
            k, v = map(split, jnp.split(self.kv(context), 2, axis=-1))
        else:
            q, k, v = map(split, jnp.split(self.qkv(x), 3, axis=-1))
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None and not self.cross:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.proj(self.attend(q, k, v, mask).reshape(b, n, d))


class Mlp(nnx.Module):
    """DiT's MLP, fc2(gelu(fc1 x)), or with swiglu fc2(silu(gate x) * fc1 x) at swiglu_dim(mlp_dim) wide."""

    def __init__(self, hidden_size, mlp_dim, *, swiglu=False, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        mlp_dim = swiglu_dim(mlp_dim) if swiglu else mlp_dim
        self.fc1 = linear(hidden_size, mlp_dim, ("embed", "mlp"), **kw)
        self.gate = linear(hidden_size, mlp_dim, ("embed", "mlp"), **kw) if swiglu else None
        self.fc2 = linear(mlp_dim, hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x):
        h = self.fc1(x)  # (N, T, D) -> (N, T, 4D), or (N, T, swiglu_dim(4D))
        h = jax.nn.gelu(h, approximate=True) if self.gate is None else jax.nn.silu(self.gate(x)) * h
        return self.fc2(h)  # (N, T, D)


class GatedSelfAttention(nnx.Module):
    """GLIGEN's gated self-attention: the image tokens attend over themselves and the grounding tokens; the image
    tokens' outputs enter the residual times tanh(alpha), alpha a learned scalar starting at 0 (no change)."""

    def __init__(self, hidden_size, num_heads, *, norm, backend, qk_norm, dtype, param_dtype, rngs):
        self.norm = PRE_NORMS[norm]
        self.attn = Attention(hidden_size, num_heads, cross=False, backend=backend, qk_norm=qk_norm, sparse=False,
                              dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.alpha = param((), (), param_dtype)

    def __call__(self, x, grounding):
        """x (N, T, D), a layout.Grounding -> the residual update (N, T, D)."""
        t = x.shape[1]
        image = x if grounding.regions is None else x + grounding.regions.astype(x.dtype)
        h = self.norm(jnp.concatenate([image, grounding.tokens.astype(x.dtype)], axis=1), 1e-6)  # (N, T + K, D)
        mask = jnp.concatenate([jnp.ones(x.shape[:2], bool), grounding.mask.astype(bool)], axis=1)
        out = self.attn(h, mask=mask)[:, :t]  # the image tokens' outputs
        return jnp.tanh(self.alpha[...]).astype(x.dtype) * out


class DiTBlock(nnx.Module):
    """adaLN-Zero block: self-attention, optional gated self-attention over grounding tokens (layout), optional
    text cross-attention, MLP."""

    def __init__(
        self,
        hidden_size,
        num_heads,
        mlp_ratio,
        *,
        cross_attention,
        mlp_norm_eps,
        dropout,
        attention,
        norm="layernorm",
        qk_norm=False,
        mlp="gelu",
        layout=False,
        dtype,
        param_dtype,
        rngs,
    ):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.mlp_norm_eps, self.norm = mlp_norm_eps, PRE_NORMS[norm]
        self.attn = Attention(hidden_size, num_heads, cross=False, backend=attention, qk_norm=qk_norm, **kw)
        self.fuser = (GatedSelfAttention(hidden_size, num_heads, norm=norm, backend=attention, qk_norm=qk_norm, **kw)
                      if layout else None)
        self.cross_attn = (
            Attention(hidden_size, num_heads, cross=True, backend=attention, qk_norm=qk_norm, **kw)
            if cross_attention
            else None
        )
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), swiglu=mlp == "swiglu", **kw)
        self.adaLN_modulation = linear(hidden_size, 6 * hidden_size, ("embed", "adaln"), **kw)
        self.dropout = nnx.Dropout(dropout)

    def __call__(self, x, c, context=None, context_mask=None, rng=None, rope=None, grounding=None):
        """x (N, T, D), condition c (N, D), context (N, L, D) and mask (N, L), rotary (cos, sin), a
        layout.Grounding -> (N, T, D)."""
        mod = self.adaLN_modulation(jax.nn.silu(c))  # (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)  # (N, D) each
        keys = jax.random.split(rng, 3) if rng is not None else [None] * 3
        drop = lambda h, key: self.dropout(h, deterministic=key is None, rngs=key)
        h = self.attn(modulate(self.norm(x, 1e-6), shift_msa, scale_msa), rope=rope)  # (N, T, D)
        x = x + gate_msa[:, None] * drop(h, keys[0])
        if self.fuser is not None and grounding is not None:
            x = x + self.fuser(x, grounding)  # GLIGEN: after self-, before cross-attention
        if self.cross_attn is not None:
            x = x + drop(self.cross_attn(x, context, context_mask), keys[1])  # (N, T, D)
        h = self.mlp(modulate(self.norm(x, self.mlp_norm_eps), shift_mlp, scale_mlp))  # (N, T, D)
        return x + gate_mlp[:, None] * drop(h, keys[2])


class FinalLayer(nnx.Module):
    def __init__(self, hidden_size, patch_size, out_channels, *, norm="layernorm", dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm = PRE_NORMS[norm]
        self.adaLN_modulation = linear(hidden_size, 2 * hidden_size, ("embed", "adaln"), **kw)
        self.linear = linear(hidden_size, patch_size * patch_size * out_channels, ("embed", None), **kw)

    def __call__(self, x, c):
        """x (N, T, D), c (N, D) -> (N, T, p*p*C_out)."""
        shift, scale = jnp.split(self.adaLN_modulation(jax.nn.silu(c)), 2, axis=-1)  # (N, D) each
        return self.linear(modulate(self.norm(x, 1e-6), shift, scale))


class DiT(nnx.Module):
    """Diffusion model with a Transformer backbone.

    Arguments beyond the reference's: text_dim > 0 enables text conditioning,
    through cross-attention to per-token embeddings (text_cross_attention),
    a pooled embedding added to the timestep embedding (text_pooled), or both;
    num_classes = 0 disables labels. freq_shift and mlp_norm_eps select
    diffusers' variant of the numerics (1 and 1e-5) instead of DiT's (0, 1e-6).
    norm, qk_norm, mlp and pos_embed choose the block (DIT_BLOCK: DiT's).
    num_styles > 0 adds a style table (with its null row) to the adaLN
    condition; layout_max_boxes = K > 0 adds GLIGEN's grounding tokens and a
    gated self-attention in every block (models/layout.py; needs text_dim, the
    width of the phrases' pooled embeddings), its gates starting at
    tanh(layout_gate_init); layout_regions also gives each image token the
    tokens of the boxes over it (layout.py). Each of class, text, style and
    layout is dropped on its own in training, with its *_dropout_prob.
    """

    block_class = DiTBlock  # a subclass may run other blocks with DiTBlock's arguments (models/multiview.py)

    def __init__(
        self,
        *,
        input_size=32,
        patch_size=2,
        in_channels=4,
        hidden_size=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        num_classes=1000,
        class_dropout_prob=0.1,
        learn_sigma=True,
        text_dim=0,
        text_len=77,
        text_cross_attention=True,
        text_pooled=False,
        null_text="learned",
        caption_dropout_prob=0.1,
        num_styles=0,
        style_dropout_prob=0.1,
        layout_max_boxes=0,
        layout_dropout_prob=0.1,
        layout_gate_init=0.0,
        layout_regions=False,
        dropout=0.0,
        freq_shift=0.0,
        mlp_norm_eps=1e-6,
        norm="layernorm",
        qk_norm=False,
        mlp="gelu",
        pos_embed="sincos",
        attention="xla",
        remat="none",
        scan_blocks=False,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        check_model(hidden_size, num_heads, remat, text_dim, text_cross_attention, text_pooled, norm=norm,
                    qk_norm=qk_norm, mlp=mlp, pos_embed=pos_embed)
        check_conditions(num_styles, layout_max_boxes, text_dim, layout_regions)
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size, self.num_classes, self.text_dim = hidden_size, num_classes, text_dim
        self.num_styles, self.layout_max_boxes = num_styles, layout_max_boxes
        self.style_dropout_prob, self.layout_dropout_prob = style_dropout_prob, layout_dropout_prob
        self.layout_gate_init, self.layout_regions = layout_gate_init, layout_regions
        self.remat, self.scan_blocks = remat, scan_blocks
        self.head_dim, self.rope = hidden_size // num_heads, pos_embed == "rope"
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size, **kw)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=freq_shift, **kw)
        self.y_embedder = (
            LabelEmbedder(num_classes, hidden_size, class_dropout_prob, param_dtype=param_dtype)
            if num_classes
            else None
        )
        self.style_embedder = (LabelEmbedder(num_styles, hidden_size, style_dropout_prob, param_dtype=param_dtype,
                                             null=True) if num_styles else None)
        self.grounding = GroundingTokens(text_dim, hidden_size, **kw) if layout_max_boxes else None
        cross = bool(text_dim and text_cross_attention)
        self.text_embedder = (
            TextEmbedder(
                text_dim,
                text_len,
                hidden_size,
                cross=cross,
                pooled=bool(text_pooled),
                null_text=null_text,
                dropout_prob=caption_dropout_prob,
                **kw,
            )
            if text_dim
            else None
        )
        self.blocks = nnx.List(
            [
                self.block_class(
                    hidden_size,
                    num_heads,
                    mlp_ratio,
                    cross_attention=cross,
                    mlp_norm_eps=mlp_norm_eps,
                    dropout=dropout,
                    attention=attention,
                    norm=norm,
                    qk_norm=qk_norm,
                    mlp=mlp,
                    layout=bool(layout_max_boxes),
                    **kw,
                )
                for _ in range(depth)
            ]
        )
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels, norm=norm, **kw)
        self.initialize_weights(rngs)

    def initialize_weights(self, rngs):
        init_weights(self, rngs, self.blocks)

    def scan(self, tokens, c, context, context_mask, keys, residuals, policy, rope=None, grounding=None,
             blocks=None):
        """The blocks (or a run of them, `blocks`) as one lax.scan over their stacked weights: one compiled block
        body, whatever the depth (faster compiles; on CPU it stops XLA from fusing the backward pass across blocks)."""
        blocks = list(self.blocks) if blocks is None else blocks
        graphdef = nnx.graphdef(blocks[0])
        weights = jax.tree.map(lambda *w: jnp.stack(w), *[nnx.state(block) for block in blocks])
        if residuals is not None:
            residuals = jnp.stack([jnp.zeros_like(tokens) if r is None else r for r in residuals])

        def body(tokens, per_block):
            block_weights, key, residual = per_block
            tokens = nnx.merge(graphdef, block_weights)(tokens, c, context, context_mask, key, rope, grounding)
            return (tokens if residual is None else tokens + residual), None

        if policy is not None:
            body = jax.checkpoint(body, policy=policy)
        keys = jnp.stack(keys) if keys else None
        return jax.lax.scan(body, tokens, (weights, keys, residuals))[0]

    def pos_embed(self, grid_h, grid_w):
        """(1, grid_h * grid_w, D): the fixed sin-cos table."""
        return jnp.asarray(sincos_2d(self.hidden_size, grid_h, grid_w), jnp.float32)[None]

    def rope_tables(self, grid_h, grid_w):
        """(cos, sin), each (grid_h * grid_w, D/heads): the rotary angles of the token grid, or None."""
        if not self.rope:
            return None
        return tuple(jnp.asarray(t) for t in rope_2d(self.head_dim, grid_h, grid_w))

    def unpatchify(self, x, grid_h, grid_w):
        """(N, h*w, p*p*C) -> (N, h*p, w*p, C), each token's outputs in (p, q, C) order."""
        p, c = self.patch_size, self.out_channels
        x = x.reshape(x.shape[0], grid_h, grid_w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(x.shape[0], grid_h * p, grid_w * p, c)

    def __call__(
        self, x, t, y=None, text=None, text_mask=None, pooled=None, drop=None, residuals=None, *, style=None,
        layout_boxes=None, layout_mask=None, layout_embeddings=None, drops=None, rng=None, return_block=0,
    ):
        """Predicts noise (and variance) for a noisy NHWC batch.

        x: (N, H, W, C) noisy input; t: (N,) timesteps; y: (N,) class labels;
        text: (N, L, text_dim) per-token embeddings with text_mask (N, L);
        pooled: (N, text_dim); style: (N,) style labels; layout_boxes (N, K, 4)
        as (x0, y0, x1, y1) in [0, 1], layout_mask (N, K) (True: a box),
        layout_embeddings (N, K, text_dim): each box's phrase, pooled;
        drop: (N,) bool, replace every condition by its null value (guidance);
        drops: {condition: (N,) bool} for one condition alone (CONDITIONS:
        composable guidance); residuals: optional per-block additions (ControlNet), a list
        with None for blocks left alone, or a callable (tokens, c, context, context_mask, rope) -> that list,
        called on the embedded tokens and conditions (models/controlnet.py).
        rng: a key turns on training-time label/caption/style/layout dropout and dropout.
        return_block: k > 0 also returns the tokens (N, T, D) after block k, 1-based (REPA aligns them).
        Returns (N, H, W, C_out) in float32: the noise (and variance values) prediction; with return_block,
        (that, the tokens).
        """
        if not 0 <= return_block <= len(self.blocks):
            raise ValueError(f"return_block {return_block} is not a block of this {len(self.blocks)}-block DiT.")
        b, h, w, _ = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"Input {h}x{w} is not divisible by the patch size {p}.")
        keys = list(jax.random.split(rng, 2 + len(self.blocks))) if rng is not None else None
        # Style and layout draw from keys of their own, so the other draws are those of a model without them.
        keys = keys and keys + list(jax.random.split(jax.random.fold_in(rng, len(CONDITIONS)), 2))
        drop = jnp.zeros((b,), bool) if drop is None else drop.astype(bool)
        drops = drops or {}
        unknown = set(drops) - set(CONDITIONS)
        if unknown:
            raise ValueError(f"drops names {sorted(unknown)}; the conditions are {CONDITIONS}.")

        def dropped(prob, key, name):
            out = drop if drops.get(name) is None else drop | drops[name].astype(bool)
            if keys is None or prob == 0:
                return out
            return out | (jax.random.uniform(key, (b,)) < prob)

        tokens = self.x_embedder(x)  # (N, T, D), T = HW/p^2
        if not self.rope:
            tokens = tokens + self.pos_embed(h // p, w // p).astype(x.dtype)
        rope = self.rope_tables(h // p, w // p)
        c = self.t_embedder(t)  # (N, D)
        if self.y_embedder is not None:
            if y is None:
                raise ValueError("This DiT is class-conditional: pass y (class labels).")
            c = c + self.y_embedder(y, dropped(self.y_embedder.dropout_prob, keys and keys[0], "class"))  # (N, D)
        if self.style_embedder is not None:
            if style is None:
                raise ValueError("This DiT reads a style label (model.num_styles > 0): pass style (N,).")
            c = c + self.style_embedder(style, dropped(self.style_dropout_prob, keys and keys[-2], "style"))
        grounding = None
        if self.grounding is not None:
            if layout_boxes is None or layout_mask is None or layout_embeddings is None:
                raise ValueError("This DiT reads a layout (model.layout_max_boxes > 0): pass layout_boxes (N, K, 4), "
                                 "layout_mask (N, K) and layout_embeddings (N, K, text_dim); all masked = none.")
            if layout_boxes.shape[1:] != (self.layout_max_boxes, 4):
                raise ValueError(f"layout_boxes is {layout_boxes.shape}; this DiT reads (N, {self.layout_max_boxes}, "
                                 "4): pad with masked boxes.")
            layout_drop = dropped(self.layout_dropout_prob, keys and keys[-1], "layout")
            grounding_mask = layout_mask.astype(bool) & ~layout_drop[:, None]  # (N, K): dropped = no boxes
            tokens_k = self.grounding(layout_boxes, layout_embeddings, grounding_mask)  # (N, K, D)
            regions = (region_tokens(box_coverage(layout_boxes, grounding_mask, h // p, w // p), tokens_k)
                       if self.layout_regions else None)
            grounding = Grounding(tokens_k, grounding_mask, regions)
        context = context_mask = None
        if self.text_embedder is not None:
            text_drop = dropped(self.text_embedder.dropout_prob, keys and keys[1], "text")
            if self.text_embedder.cross:
                if text is None:
                    raise ValueError("This DiT cross-attends to text: pass text (B, L, D) and text_mask.")
                mask = jnp.ones(text.shape[:2], bool) if text_mask is None else text_mask
                context, context_mask = self.text_embedder.tokens(text, mask, text_drop)  # (N, L, D), (N, L)
            if self.text_embedder.pooled:
                if pooled is None:
                    raise ValueError("This DiT uses a pooled text embedding: pass pooled (B, D).")
                c = c + self.text_embedder.pooled_embedding(pooled, text_drop)  # (N, D)

        def run_block(block, tokens, c, context, context_mask, key, rope, grounding):
            return block(tokens, c, context, context_mask, key, rope, grounding)

        if callable(residuals):
            residuals = residuals(tokens, c, context, context_mask, rope)
        policy = REMAT_POLICIES[self.remat]  # the blocks: (N, T, D) -> (N, T, D)
        depth, block_tokens = len(self.blocks), None
        if self.scan_blocks:
            # Split in two at return_block, so the tokens after it leave the scan.
            for start, stop in ((0, return_block), (return_block, depth)) if return_block else ((0, depth),):
                if start < stop:
                    tokens = self.scan(tokens, c, context, context_mask, keys and keys[2 + start:2 + stop],
                                       residuals and residuals[start:stop], policy, rope, grounding,
                                       [self.blocks[i] for i in range(start, stop)])
                if stop == return_block:
                    block_tokens = tokens
        else:
            if policy is not None:
                run_block = nnx.remat(run_block, policy=policy)
            for i, block in enumerate(self.blocks):
                tokens = materialize_grad(tokens)  # the scan's carry does this for scan_blocks
                tokens = run_block(block, tokens, c, context, context_mask, keys[2 + i] if keys else None, rope,
                                   grounding)
                if residuals is not None and residuals[i] is not None:
                    tokens = tokens + residuals[i]
                if i + 1 == return_block:
                    block_tokens = tokens
        out = self.final_layer(tokens, c)  # (N, T, p*p*C_out)
        out = self.unpatchify(out, h // p, w // p).astype(jnp.float32)  # (N, H, W, C_out)
        return (out, block_tokens) if return_block else out
