"""A video DiT: the image DiT's blocks, with attention factorised over space and time (Latte, Open-Sora 1.0).

A clip (B, T, H, W, C) becomes T frames of N patch tokens each (or T/t_patch
tubelets of t_patch frames). Spatial layers are the DiT's blocks run on every
frame as one batch (B*T, N, D), with the clip's condition (timestep, label,
pooled text; per-token text through cross-attention) given to each frame.
Temporal layers attend across the frames at each patch position (B*N, T, D).
`video_blocks` picks where they go:

  alternating       a temporal block (self-attention + MLP) after each spatial block (Latte's variant 1)
  spatial_temporal  a temporal attention layer inside each block, right after its spatial attention and
                    gated by it (Open-Sora 1.0's STDiT block)

Positions: the DiT's sin-cos table within each frame plus a 1-D sin-cos table
over frames, added to each temporal attention's input (temporal_pos="attention")
or, as Latte does, to the token stream before the first temporal layer
(temporal_pos="first"). adaln="single" is PixArt-alpha's and Latte's
conditioning: one shared adaLN projection of the timestep plus a learned table
per block, instead of DiT's adaLN-Zero projection in every block.

Every temporal layer starts as the identity: adaLN-Zero's gates are zero
(adaln="block"), the output projections are zero (adaln="single" and the
temporal attention of spatial_temporal, which the spatial gate scales). So
loading an image DiT's weights (`init_from`) gives a video model whose every
frame is the image model's output for that frame, exactly.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit_jax.models.attention import get_attention, parse
from dit_jax.models.dit import (REMAT_POLICIES, Attention, DiTBlock, FinalLayer, check_model, init_weights,
                                materialize_grad, modulate)
from dit_jax.models.embeddings import (LabelEmbedder, PatchEmbed, TextEmbedder, TimestepEmbedder, linear, param,
                                       param_axes, rope_2d, sincos_1d, sincos_2d)

VIDEO_BLOCKS = ("alternating", "spatial_temporal")
TEMPORAL_POS = ("attention", "first")
ADALN = ("block", "single")
# The model kwargs only a video model takes; build_model builds a VideoDiT when `frames` is set.
VIDEO_KEYS = ("frames", "t_patch", "video_blocks", "temporal_pos", "adaln", "temporal_attention")


def check_video(frames, t_patch=1, video_blocks="alternating", temporal_pos="attention", adaln="block",
                temporal_attention=""):
    """One-line errors for the video keys, naming each (model.*)."""
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"model.frames must be a positive frame count, got {frames!r}: set --config.model.frames.")
    if not isinstance(t_patch, int) or t_patch < 1:
        raise ValueError(f"model.t_patch must be a positive integer (1: per-frame patches), got {t_patch!r}.")
    if frames < t_patch:
        raise ValueError(f"model.frames={frames} is shorter than one tubelet (model.t_patch={t_patch} frames): use "
                         f"clips of at least {t_patch} frames, or a smaller t_patch.")
    if frames % t_patch:
        raise ValueError(f"model.frames={frames} is not a multiple of model.t_patch={t_patch}: each tubelet takes "
                         f"t_patch frames; use a frame count divisible by {t_patch} or t_patch=1.")
    for key, value, choices in (("video_blocks", video_blocks, VIDEO_BLOCKS), ("temporal_pos", temporal_pos,
                                TEMPORAL_POS), ("adaln", adaln, ADALN)):
        if value not in choices:
            raise ValueError(f"model.{key}={value!r} is not one of {choices}: set --config.model.{key}.")
    if temporal_pos == "first" and video_blocks != "alternating":
        raise ValueError("model.temporal_pos='first' (Latte's) adds the frame positions before the first temporal "
                         "block, which only video_blocks='alternating' has: use temporal_pos='attention'.")
    if temporal_attention:
        parse(temporal_attention)


class VideoBlock(DiTBlock):
    """DiT's block with two options: adaLN-single modulation (a learned (6, D) table added to the shared
    projection of the condition) and a temporal attention layer after the spatial one (spatial_temporal)."""

    def __init__(self, hidden_size, num_heads, mlp_ratio, *, adaln="block", temporal=None, **kw):
        super().__init__(hidden_size, num_heads, mlp_ratio, **kw)
        if adaln == "single":
            self.adaLN_modulation = None
            self.scale_shift_table = param((6, hidden_size), (None, "embed"), kw["param_dtype"])
        self.temporal_attn = (Attention(hidden_size, num_heads, cross=False, backend=temporal,
                                        qk_norm=kw.get("qk_norm", False), dtype=kw["dtype"],
                                        param_dtype=kw["param_dtype"], rngs=kw["rngs"])
                              if temporal is not None else None)

    def modulation(self, c):
        """(N, 6D) shifts, scales and gates: adaLN(c) from c (N, D), or the table plus c (N, 6D) (adaLN-single)."""
        if self.adaLN_modulation is None:
            return c + self.scale_shift_table[...].reshape(-1).astype(c.dtype)
        return self.adaLN_modulation(jax.nn.silu(c))

    def __call__(self, x, c, context=None, context_mask=None, rng=None, rope=None, frames=None, pos=None,
                 repeat=1):
        """x (N, L, D); c (N / repeat, D), or (N / repeat, 6D) under adaLN-single: one condition for each
        `repeat` rows of x (a clip's), so the modulation is computed once a clip; context (N, M, D) + mask, rope;
        pos (L, D) is added to the self-attention's input; with a temporal layer, x holds `frames` frames of a
        clip in a row and pos (frames, D) goes to the temporal attention instead. -> (N, L, D)."""
        mod = jnp.repeat(self.modulation(c), repeat, axis=0)  # (N, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)  # (N, D) each
        keys = jax.random.split(rng, 4) if rng is not None else [None] * 4
        drop = lambda h, key: self.dropout(h, deterministic=key is None, rngs=key)
        h = modulate(self.norm(x, 1e-6), shift_msa, scale_msa)
        if pos is not None and self.temporal_attn is None:
            h = h + pos.astype(h.dtype)
        x = x + gate_msa[:, None] * drop(self.attn(h, rope=rope), keys[0])
        if self.temporal_attn is not None:
            n, length, d = x.shape  # (B*T, L, D) -> (B*L, T, D)
            to_time = lambda a: a.reshape(n // frames, frames, length, d).swapaxes(1, 2).reshape(-1, frames, d)
            from_time = lambda a: a.reshape(n // frames, length, frames, d).swapaxes(1, 2).reshape(n, length, d)
            h = to_time(modulate(self.norm(x, 1e-6), shift_msa, scale_msa))
            if pos is not None:
                h = h + pos.astype(h.dtype)
            x = x + gate_msa[:, None] * drop(from_time(self.temporal_attn(h)), keys[3])
        if self.cross_attn is not None:
            x = x + drop(self.cross_attn(x, context, context_mask), keys[1])
        h = self.mlp(modulate(self.norm(x, self.mlp_norm_eps), shift_mlp, scale_mlp))
        return x + gate_mlp[:, None] * drop(h, keys[2])


class SingleFinalLayer(FinalLayer):
    """The final layer under adaLN-single: shift and scale are a learned (2, D) table plus the embedding."""

    def __init__(self, hidden_size, outputs, *, param_dtype, **kw):
        super().__init__(hidden_size, 1, outputs, param_dtype=param_dtype, **kw)
        self.adaLN_modulation = None
        self.scale_shift_table = param((2, hidden_size), (None, "embed"), param_dtype)

    def __call__(self, x, c):
        shift, scale = (self.scale_shift_table[...][None].astype(c.dtype) + c[:, None]).swapaxes(0, 1)
        return self.linear(modulate(self.norm(x, 1e-6), shift, scale))


class TubeletEmbed(nnx.Module):
    """t_patch x p x p tubelets of a clip, linearly projected to tokens (a strided 3-D conv)."""

    def __init__(self, t_patch, patch_size, in_channels, hidden_size, *, dtype, param_dtype, rngs):
        size = (t_patch, patch_size, patch_size)
        self.proj = nnx.Conv(in_channels, hidden_size, kernel_size=size, strides=size, padding="VALID",
                             kernel_init=nnx.initializers.zeros, bias_init=nnx.initializers.zeros,
                             kernel_metadata=param_axes(None, None, None, None, "embed"),
                             bias_metadata=param_axes("embed"), dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    def __call__(self, x):
        x = self.proj(x)  # (B, T/t, H/p, W/p, D)
        return x.reshape(x.shape[0], x.shape[1], -1, x.shape[-1])  # (B, T/t, N, D)


class VideoDiT(nnx.Module):
    """Diffusion transformer over clips (B, T, H, W, C), with the DiT's arguments plus:

    frames: T, the clip length it is trained on; t_patch: frames per tubelet (1: per-frame patches, the
    image DiT's patch embedding); video_blocks, temporal_pos, adaln: see the module docstring;
    temporal_attention: the temporal layers' attention spec (e.g. "xla:local=2", keys within 2 frames;
    "" = model.attention's backend without its sparse pattern).
    """

    def __init__(self, *, frames, t_patch=1, video_blocks="alternating", temporal_pos="attention", adaln="block",
                 temporal_attention="", input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28,
                 num_heads=16, mlp_ratio=4.0, num_classes=1000, class_dropout_prob=0.1, learn_sigma=True,
                 text_dim=0, text_len=77, text_cross_attention=True, text_pooled=False, null_text="learned",
                 caption_dropout_prob=0.1, dropout=0.0, freq_shift=0.0, mlp_norm_eps=1e-6, norm="layernorm",
                 qk_norm=False, mlp="gelu", pos_embed="sincos", attention="xla", remat="none", scan_blocks=False,
                 dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        check_model(hidden_size, num_heads, remat, text_dim, text_cross_attention, text_pooled, norm=norm,
                    qk_norm=qk_norm, mlp=mlp, pos_embed=pos_embed)
        check_video(frames, t_patch, video_blocks, temporal_pos, adaln, temporal_attention)
        self.frames, self.t_patch, self.video_blocks, self.temporal_pos = frames, t_patch, video_blocks, temporal_pos
        self.adaln = adaln
        self.input_size, self.patch_size, self.in_channels = input_size, patch_size, in_channels
        self.out_channels = 2 * in_channels if learn_sigma else in_channels
        self.hidden_size, self.num_classes, self.text_dim = hidden_size, num_classes, text_dim
        self.remat, self.scan_blocks = remat, scan_blocks
        self.head_dim, self.rope = hidden_size // num_heads, pos_embed == "rope"
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        temporal_spec = temporal_attention or parse(attention)[0]

        if t_patch == 1:
            self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size, **kw)
        else:
            self.x_embedder = TubeletEmbed(t_patch, patch_size, in_channels, hidden_size, **kw)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=freq_shift, **kw)
        self.t_block = linear(hidden_size, 6 * hidden_size, ("embed", "adaln"), **kw) if adaln == "single" else None
        self.y_embedder = (LabelEmbedder(num_classes, hidden_size, class_dropout_prob, param_dtype=param_dtype)
                           if num_classes else None)
        cross = bool(text_dim and text_cross_attention)
        self.text_embedder = (TextEmbedder(text_dim, text_len, hidden_size, cross=cross, pooled=bool(text_pooled),
                                           null_text=null_text, dropout_prob=caption_dropout_prob, **kw)
                              if text_dim else None)
        block = dict(mlp_norm_eps=mlp_norm_eps, dropout=dropout, norm=norm, qk_norm=qk_norm, mlp=mlp, adaln=adaln,
                     **kw)
        inner = temporal_spec if video_blocks == "spatial_temporal" else None
        self.blocks = nnx.List([VideoBlock(hidden_size, num_heads, mlp_ratio, cross_attention=cross,
                                           attention=attention, temporal=inner, **block) for _ in range(depth)])
        self.temporal_blocks = (nnx.List([VideoBlock(hidden_size, num_heads, mlp_ratio, cross_attention=False,
                                                     attention=temporal_spec, **block) for _ in range(depth)])
                                if video_blocks == "alternating" else None)
        outputs = t_patch * self.out_channels  # per token: t_patch frames of p x p x C_out
        if adaln == "single":
            self.final_layer = SingleFinalLayer(hidden_size, patch_size * patch_size * outputs, norm=norm, **kw)
        else:
            self.final_layer = FinalLayer(hidden_size, patch_size, outputs, norm=norm, **kw)
        self.initialize_weights(rngs)

    def initialize_weights(self, rngs):
        """DiT's initialisation (dit.init_weights) for the parts the image DiT has; temporal layers start as the
        identity (module docstring); adaLN-single's tables as PixArt-alpha's (normal, std D^-1/2)."""
        blocks = list(self.blocks) + list(self.temporal_blocks or [])
        zero = [block.temporal_attn.proj for block in blocks if block.temporal_attn is not None]
        if self.adaln == "single":  # the gates are not zero: the temporal blocks' outputs are
            zero += [layer for block in self.temporal_blocks or [] for layer in (block.attn.proj, block.mlp.fc2)]
        init_weights(self, rngs, blocks, zero=zero)

    # ------------------------------------------------------------------ forward

    def check_input(self, x):
        """One-line errors for a clip the model was not built for (raised while tracing, before compiling)."""
        if x.ndim != 5:
            raise ValueError(f"A video model takes clips (B, T, H, W, C); got an array of shape {tuple(x.shape)}.")
        _, t, h, w, c = x.shape
        size = self.input_size if isinstance(self.input_size, (tuple, list)) else (self.input_size,) * 2
        if t < self.t_patch:
            raise ValueError(f"A clip of {t} frames is shorter than one tubelet of t_patch={self.t_patch} frames: give "
                             f"clips of {self.frames} frames.")
        if t % self.t_patch:
            raise ValueError(f"A clip of {t} frames does not divide into tubelets of t_patch={self.t_patch} frames: "
                             f"give clips of {self.frames} frames.")
        if (t, h, w, c) != (self.frames, *size, self.in_channels):
            raise ValueError(f"This model was trained on clips of {self.frames} frames of {size[0]}x{size[1]}x"
                             f"{self.in_channels}, got {t} frames of {h}x{w}x{c}: sample or train with "
                             f"model.frames={self.frames} and its resolution.")

    def unpatchify(self, x, grid_t, grid_h, grid_w):
        """(B*T', h*w, t*p*p*C) -> (B, T'*t, h*p, w*p, C); each token's outputs in (t, p, q, C) order."""
        t, p, c = self.t_patch, self.patch_size, self.out_channels
        x = x.reshape(-1, grid_t, grid_h, grid_w, t, p, p, c).transpose(0, 1, 4, 2, 5, 3, 6, 7)
        return x.reshape(x.shape[0], grid_t * t, grid_h * p, grid_w * p, c)

    def temporal_table(self, frames):
        """(frames, D): the 1-D sin-cos table over frame (tubelet) indices."""
        return jnp.asarray(sincos_1d(self.hidden_size, np.arange(frames)), jnp.float32)

    def conditions(self, b, t, y, text, text_mask, pooled, drop, keys):
        """The clip's condition c (B, D), adaLN-single's projection of it (B, 6D) or None, and the text
        context (B, L, D) with its mask; as the DiT builds them, condition dropout included."""

        def dropped(prob, key_index):
            if keys is None or prob == 0:
                return drop
            return drop | (jax.random.uniform(keys[key_index], (b,)) < prob)

        c = self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:
                raise ValueError("This model is class-conditional: pass y (class labels).")
            c = c + self.y_embedder(y, dropped(self.y_embedder.dropout_prob, 0))
        context = context_mask = None
        if self.text_embedder is not None:
            text_drop = dropped(self.text_embedder.dropout_prob, 1)
            if self.text_embedder.cross:
                if text is None:
                    raise ValueError("This model cross-attends to text: pass text (B, L, D) and text_mask.")
                mask = jnp.ones(text.shape[:2], bool) if text_mask is None else text_mask
                context, context_mask = self.text_embedder.tokens(text, mask, text_drop)
            if self.text_embedder.pooled:
                if pooled is None:
                    raise ValueError("This model uses a pooled text embedding: pass pooled (B, D).")
                c = c + self.text_embedder.pooled_embedding(pooled, text_drop)
        c6 = self.t_block(jax.nn.silu(c)) if self.t_block is not None else None
        return c, c6, context, context_mask

    def layers(self):
        """The blocks in the order they run, each as (spatial block, temporal block or None)."""
        temporal = self.temporal_blocks or [None] * len(self.blocks)
        return list(zip(self.blocks, temporal))

    def __call__(self, x, t, y=None, text=None, text_mask=None, pooled=None, drop=None, residuals=None, *,
                 rng=None):
        """Predicts noise (and variance) for noisy clips x (B, T, H, W, C); the other arguments as DiT's, one
        condition per clip. Returns (B, T, H, W, C_out) in float32."""
        if residuals is not None:
            raise ValueError("ControlNet residuals are for the image DiT; a video model takes none.")
        self.check_input(x)
        b, frames, h, w, _ = x.shape
        p, grid_t = self.patch_size, frames // self.t_patch
        gh, gw = h // p, w // p
        n = gh * gw
        depth = len(self.blocks)
        keys = list(jax.random.split(rng, 2 + 2 * depth)) if rng is not None else None
        drop = jnp.zeros((b,), bool) if drop is None else drop.astype(bool)
        c, c6, context, context_mask = self.conditions(b, t, y, text, text_mask, pooled, drop, keys)

        if self.t_patch == 1:
            tokens = self.x_embedder(x.reshape(b * frames, h, w, x.shape[-1]))  # (B*T, N, D)
        else:
            tokens = self.x_embedder(x).reshape(b * grid_t, n, self.hidden_size)  # (B*T', N, D)
        if not self.rope:
            tokens = tokens + jnp.asarray(sincos_2d(self.hidden_size, gh, gw), jnp.float32)[None].astype(x.dtype)
        rope = tuple(jnp.asarray(a) for a in rope_2d(self.head_dim, gh, gw)) if self.rope else None
        tpos = self.temporal_table(grid_t) if grid_t > 1 else None

        block_c = c if c6 is None else c6  # each frame, and each patch position's frames, get their clip's
        if context is not None:
            context = jnp.repeat(context, grid_t, axis=0)
            context_mask = jnp.repeat(context_mask, grid_t, axis=0)
        to_time = lambda a: a.reshape(b, grid_t, n, -1).swapaxes(1, 2).reshape(b * n, grid_t, -1)
        from_time = lambda a: a.reshape(b, n, grid_t, -1).swapaxes(1, 2).reshape(b * grid_t, n, -1)

        def layer(spatial, temporal, tokens, key_s, key_t, first):
            """One spatial block and what follows it in time: (B*T', N, D) -> (B*T', N, D)."""
            inner_pos = tpos if spatial.temporal_attn is not None else None
            tokens = spatial(tokens, block_c, context, context_mask, key_s, rope, frames=grid_t, pos=inner_pos,
                             repeat=grid_t)
            if temporal is not None:
                tokens = to_time(tokens)
                pos = tpos
                if self.temporal_pos == "first":
                    if first and tpos is not None:
                        tokens = tokens + tpos.astype(tokens.dtype)
                    pos = None
                tokens = from_time(temporal(tokens, block_c, rng=key_t, pos=pos, repeat=n))
            return tokens

        policy = REMAT_POLICIES[self.remat]
        pairs = self.layers()
        key_of = lambda i: (keys[2 + 2 * i], keys[3 + 2 * i]) if keys else (None, None)
        if self.scan_blocks:
            tokens = self.scan(layer, tokens, pairs, keys and keys[2:], policy)
        else:
            run = nnx.remat(layer, policy=policy, static_argnums=(5,)) if policy is not None else layer
            for i, (spatial, temporal) in enumerate(pairs):
                tokens = materialize_grad(tokens)
                tokens = run(spatial, temporal, tokens, *key_of(i), i == 0)
        out = self.final_layer(tokens, jnp.repeat(c, grid_t, axis=0))  # (B*T', N, t*p*p*C_out)
        return self.unpatchify(out, grid_t, gh, gw).astype(jnp.float32)  # (B, T, H, W, C_out)

    def scan(self, layer, tokens, pairs, keys, policy):
        """The layers as one lax.scan over their stacked weights (DiT.scan's idea): Latte's temporal position
        table (temporal_pos="first") goes in before the scan's first temporal block, so the first layer runs
        on its own and the rest are scanned."""
        start = 0
        if self.temporal_pos == "first" and pairs[0][1] is not None:
            tokens = layer(*pairs[0], tokens, *(keys[:2] if keys else (None, None)), True)
            start = 1
        rest = pairs[start:]
        if not rest:
            return tokens
        graphdefs = [nnx.graphdef(m) if m is not None else None for m in rest[0]]
        stack = lambda modules: jax.tree.map(lambda *w: jnp.stack(w), *[nnx.state(m) for m in modules])
        weights = [stack([pair[j] for pair in rest]) if graphdefs[j] is not None else None for j in range(2)]
        step_keys = jnp.stack(keys[2 * start:]).reshape(len(rest), 2, *keys[0].shape) if keys else None

        def body(tokens, per_layer):
            (w_s, w_t), key = per_layer
            spatial = nnx.merge(graphdefs[0], w_s)
            temporal = nnx.merge(graphdefs[1], w_t) if w_t is not None else None
            k_s, k_t = (key[0], key[1]) if key is not None else (None, None)
            return layer(spatial, temporal, tokens, k_s, k_t, False), None

        if policy is not None:
            body = jax.checkpoint(body, policy=policy)
        return jax.lax.scan(body, tokens, ((weights[0], weights[1]), step_keys))[0]


def sample_shape(model_config):
    """One sample's shape: (H, W, C) for an image model, (T, H, W, C) for a video model."""
    size = model_config["input_size"]
    size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
    image = (*size, model_config["in_channels"])
    return (model_config["frames"], *image) if model_config.get("frames") else image


def frame_strips(x):
    """(B, T, H, W, C) clips -> (B, H, T*W, C): each clip's frames side by side (4-D input passes through)."""
    x = np.asarray(x)
    if x.ndim != 5:
        return x
    b, t, h, w, c = x.shape
    return x.transpose(0, 2, 1, 3, 4).reshape(b, h, t * w, c)


def check_config(config):
    """The video keys of a config (`model.frames` set) and their fit with the data's clips, before anything loads."""
    m = config.model
    check_video(m.frames, m.get("t_patch", 1), m.get("video_blocks", "alternating"),
                m.get("temporal_pos", "attention"), m.get("adaln", "block"), m.get("temporal_attention", ""))
    frames = config.data.get("frames")
    if frames and frames != m.frames:
        raise ValueError(f"data.frames={frames} but model.frames={m.frames}: the model is built for the clips it "
                         "trains on; set both to the same count.")
    if config.get("controlnet") and config.controlnet.get("base"):
        raise ValueError("A ControlNet is built on an image DiT: leave controlnet.base empty for a video model.")
    if config.get("task", "diffusion") != "diffusion":
        raise ValueError(f"task={config.task!r} is for images: a video model trains with task=diffusion.")


def forward_macs(*, frames, t_patch=1, video_blocks="alternating", input_size=32, patch_size=2, in_channels=4,
                 hidden_size=1152, depth=28, mlp_ratio=4.0, learn_sigma=True, **kw):
    """Multiply-accumulates of one forward pass for one clip, counted as variants.forward_macs counts the DiT's:
    the spatial blocks, patch embedding and head on each of the T/t_patch frames (tubelets), the conditioning and
    adaLN once, and the temporal layers over T/t_patch positions at each of the N patch positions."""
    from dit_jax.models import variants  # pylint: disable=import-outside-toplevel
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    n, d, grid_t = (size[0] // patch_size) * (size[1] // patch_size), hidden_size, frames // t_patch
    common = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels * t_patch, hidden_size=d,
                  mlp_ratio=mlp_ratio, learn_sigma=learn_sigma, **kw)
    # Once a clip: the condition embedders and each block's adaLN; the rest of the DiT's count once a frame.
    once = variants.forward_macs(depth=0, **common) - n * patch_size**2 * in_channels * t_patch * d * (
        1 + (2 if learn_sigma else 1)) - d * 2 * d + depth * d * 6 * d
    per_frame = variants.forward_macs(depth=depth, **common) - once
    attention = n * grid_t * 4 * d * d + 2 * n * grid_t * grid_t * d  # qkv + projection, scores + values
    mlp = 2 * n * grid_t * d * int(d * mlp_ratio) + d * 6 * d if video_blocks == "alternating" else 0
    return grid_t * per_frame + once + depth * (attention + mlp)
