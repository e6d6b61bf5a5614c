"""A multi-view DiT: V views of one object denoised together, each at a given camera (MVDream, Zero123).

The input is a set of views (B, V, H, W, C). Everything is the image DiT's and runs on each view as one batch
(B*V, N, D), except two things:

  multi-view attention  each block's self-attention sees the tokens of all V views of an object at once,
                        a reshape from (B*V, N, D) to (B, V*N, D) and back (MVDream's 3-D self-attention);
  cameras               an MLP of each view's camera (its flattened 4x4 camera-to-world pose,
                        utils/cameras.py) is added to the timestep embedding of that view, so every view's
                        adaLN modulation knows where it is seen from.

Novel-view mode (novel_view=True, Zero123's): one given view (B, H, W, C), clean, is concatenated channel-wise
to every view's noisy input, and the cameras become relative to the first view's, the given view's camera
(cameras.relative). In training the given view is the clip's first view (the trainer passes it).

The camera MLP's output layer and, in novel-view mode, the patch embedding's weights of the given view's
channels start at zero, so an untrained multi-view model is the image DiT run on each view with attention
across views, and with V = 1 and a zero camera embedding it is exactly the image DiT (tested).
Class and text conditions are the DiT's, one per object; style, layout and ControlNet are image-only.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit_jax.models.dit import REMAT_POLICIES, DiT, DiTBlock, materialize_grad, modulate, weight_initializer
from dit_jax.models.embeddings import PatchEmbed, linear
from dit_jax.utils import cameras as camera_lib

# The model kwargs only a multi-view model takes; build_model builds a MultiViewDiT when `multiview` is set, with
# `frames` (the views travel through the data as a clip's frames) as its view count.
MULTIVIEW_KEYS = ("multiview", "novel_view", "camera_elevation", "camera_distance")
POSE = 16  # a camera: its flattened 4x4 pose


class CameraEmbedder(nnx.Module):
    """Camera pose (..., 16) -> (..., D): Linear, SiLU, Linear (the timestep MLP's shape)."""

    def __init__(self, hidden_size, *, dtype, param_dtype, rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.linear1 = linear(POSE, hidden_size, (None, "embed"), **kw)
        self.linear2 = linear(hidden_size, hidden_size, ("embed", "embed"), **kw)

    def __call__(self, poses):
        return self.linear2(jax.nn.silu(self.linear1(poses)))


class MultiViewBlock(DiTBlock):
    """DiT's adaLN-Zero block whose self-attention runs over the tokens of all of an object's views."""

    def __call__(self, x, c, context=None, context_mask=None, rng=None, rope=None, *, views=1):
        """x (B*V, N, D), one condition per view c (B*V, D), context (B*V, L, D) and mask, rope (cos, sin) for
        V*N tokens -> (B*V, N, D)."""
        mod = self.adaLN_modulation(jax.nn.silu(c))  # (B*V, 6D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, axis=-1)
        keys = jax.random.split(rng, 3) if rng is not None else [None] * 3
        drop = lambda h, key: self.dropout(h, deterministic=key is None, rngs=key)
        n, length, d = x.shape
        h = modulate(self.norm(x, 1e-6), shift_msa, scale_msa).reshape(n // views, views * length, d)
        h = self.attn(h, rope=rope).reshape(n, length, d)  # every view's tokens attend to all views'
        x = x + gate_msa[:, None] * drop(h, keys[0])
        if self.cross_attn is not None:
            x = x + drop(self.cross_attn(x, context, context_mask), keys[1])
        h = self.mlp(modulate(self.norm(x, self.mlp_norm_eps), shift_mlp, scale_mlp))
        return x + gate_mlp[:, None] * drop(h, keys[2])


class MultiViewDiT(DiT):
    """The DiT over sets of `views` views (B, V, H, W, C), with the DiT's arguments (less style and layout) plus:

    views: V, the view count it is trained on; novel_view: Zero123's mode (module docstring);
    camera_elevation, camera_distance: the ring of cameras (utils/cameras.ring, the first at azimuth 0) it
    assumes when called without cameras, the data's default ring.
    """

    block_class = MultiViewBlock

    def __init__(self, *, views, novel_view=False, camera_elevation=30.0, camera_distance=3.0, **kw):
        if not isinstance(views, int) or isinstance(views, bool) or views < 1:
            raise ValueError(f"model.frames (the view count) must be a positive integer, got {views!r}.")
        if kw.get("num_styles") or kw.get("layout_max_boxes"):
            raise ValueError("A multi-view DiT has no style or layout path: set model.num_styles=0 and "
                             "model.layout_max_boxes=0.")
        super().__init__(**kw)  # the DiT, its blocks MultiViewBlocks, initialised as DiT.initialize_weights does
        self.views, self.novel_view = views, bool(novel_view)
        self.camera_elevation, self.camera_distance = float(camera_elevation), float(camera_distance)
        rngs = kw["rngs"]
        dt = dict(dtype=kw.get("dtype", jnp.float32), param_dtype=kw.get("param_dtype", jnp.float32), rngs=rngs)
        self.camera_embedder = CameraEmbedder(self.hidden_size, **dt)
        if self.novel_view:
            self.x_embedder = PatchEmbed(self.patch_size, 2 * self.in_channels, self.hidden_size, **dt)
        self.initialize_multiview(rngs)

    def initialize_multiview(self, rngs):
        """The multi-view parts' initial values: the camera MLP as the timestep MLP (normal, std 0.02) but with
        its output layer at zero; in novel-view mode the patch embedding as DiT's (xavier-uniform over the
        noisy view's channels) with the given view's weights at zero. So the camera and the given view start
        with no effect."""
        init = weight_initializer(rngs)
        init(self.camera_embedder.linear1.kernel, nnx.initializers.normal(0.02))
        if self.novel_view:
            kernel = self.x_embedder.proj.kernel  # (p, p, 2C, D): the noisy view's channels, then the given's
            c = self.in_channels
            noisy = nnx.initializers.xavier_uniform(in_axis=(0, 1, 2), out_axis=3)(
                jax.random.fold_in(rngs.params(), 0), (*kernel.shape[:2], c, kernel.shape[3]), kernel.dtype)
            kernel.set_value(jnp.concatenate([noisy, jnp.zeros_like(noisy)], axis=2))

    # ------------------------------------------------------------------ inputs

    def default_cameras(self, batch):
        """(batch, V, 16): the ring the model assumes, the first view at azimuth 0."""
        poses = camera_lib.ring(self.views, self.camera_elevation, self.camera_distance)[3].reshape(self.views, POSE)
        return jnp.broadcast_to(jnp.asarray(poses), (batch, self.views, POSE))

    def check_input(self, x, cameras=None, given=None):
        """One-line errors for views, cameras or a given view the model was not built for (raised while
        tracing, before compiling)."""
        size = self.input_size if isinstance(self.input_size, (tuple, list)) else (self.input_size,) * 2
        if x.ndim != 5:
            raise ValueError(f"A multi-view model takes sets of views (B, V, H, W, C); got shape {tuple(x.shape)}.")
        b, v, h, w, c = x.shape
        if (v, h, w, c) != (self.views, *size, self.in_channels):
            raise ValueError(f"This model was trained on {self.views} views of {size[0]}x{size[1]}x"
                             f"{self.in_channels}, got {v} views of {h}x{w}x{c}: sample {self.views} views "
                             f"(--views={self.views}) at its resolution.")
        if cameras is not None and tuple(cameras.shape[1:]) not in ((self.views, POSE), (self.views, 4, 4)):
            raise ValueError(f"cameras {tuple(cameras.shape)} do not fit this model: give (B, {self.views}, 4, 4) "
                             f"poses or (B, {self.views}, 16), one camera per view of the {self.views} it was "
                             "trained on.")
        if self.novel_view:
            if given is None:
                raise ValueError("This is a novel-view model: pass `given` (B, H, W, C), the input view.")
            if tuple(given.shape) != (b, h, w, c):
                raise ValueError(f"The given view is {tuple(given.shape)[1:]}, this model takes {h}x{w}x{c} views "
                                 f"(batch {b}): resize the input image to {h}x{w} with {c} channels.")
        elif given is not None:
            raise ValueError("A given view is for a novel-view model (model.novel_view=True); this one generates "
                             "every view from text.")

    # ------------------------------------------------------------------ forward

    def __call__(self, x, t, y=None, text=None, text_mask=None, pooled=None, drop=None, residuals=None, *,
                 cameras=None, given=None, rng=None, **unused):
        """Predicts noise (and variance) for noisy views x (B, V, H, W, C) at cameras (B, V, 16) or (B, V, 4, 4)
        (None: the default ring), given view (B, H, W, C) in novel-view mode; the other arguments as DiT's, one
        condition per object. Returns (B, V, H, W, C_out) in float32."""
        if residuals is not None or any(v is not None for v in unused.values()):
            raise ValueError(f"A multi-view DiT takes no ControlNet residuals, style or layout; got "
                             f"{['residuals'] * (residuals is not None) + [k for k, v in unused.items() if v is not None]}.")
        self.check_input(x, cameras, given)
        b, v, h, w, _ = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        keys = list(jax.random.split(rng, 2 + len(self.blocks))) if rng is not None else None
        drop = jnp.zeros((b,), bool) if drop is None else drop.astype(bool)

        def dropped(prob, key):
            return drop if keys is None or prob == 0 else drop | (jax.random.uniform(key, (b,)) < prob)

        c = self.t_embedder(t)  # (B, D): the DiT's conditions, one per object
        if self.y_embedder is not None:
            if y is None:
                raise ValueError("This model is class-conditional: pass y (class labels).")
            c = c + self.y_embedder(y, dropped(self.y_embedder.dropout_prob, keys and keys[0]))
        context = context_mask = None
        if self.text_embedder is not None:
            text_drop = dropped(self.text_embedder.dropout_prob, keys and keys[1])
            if self.text_embedder.cross:
                if text is None:
                    raise ValueError("This model cross-attends to text: pass text (B, L, D) and text_mask.")
                mask = jnp.ones(text.shape[:2], bool) if text_mask is None else text_mask
                context, context_mask = self.text_embedder.tokens(text, mask, text_drop)
                context, context_mask = jnp.repeat(context, v, axis=0), jnp.repeat(context_mask, v, axis=0)
            if self.text_embedder.pooled:
                if pooled is None:
                    raise ValueError("This model uses a pooled text embedding: pass pooled (B, D).")
                c = c + self.text_embedder.pooled_embedding(pooled, text_drop)

        poses = self.default_cameras(b) if cameras is None else cameras.reshape(b, v, 4, 4)
        poses = poses.reshape(b, v, 4, 4).astype(jnp.float32)
        if self.novel_view:  # Zero123: cameras in the given (first) view's frame
            poses = jnp.linalg.inv(poses[:, :1]) @ poses
        c = jnp.repeat(c, v, axis=0) + self.camera_embedder(poses.reshape(b * v, POSE)).astype(c.dtype)  # (B*V, D)

        inputs = x.reshape(b * v, h, w, x.shape[-1])
        if self.novel_view:
            inputs = jnp.concatenate([inputs, jnp.repeat(given.astype(x.dtype), v, axis=0)], axis=-1)
        tokens = self.x_embedder(inputs)  # (B*V, N, D)
        if not self.rope:
            tokens = tokens + self.pos_embed(gh, gw).astype(x.dtype)  # the same grid positions in every view
        rope = self.rope_tables(gh, gw)
        rope = tuple(jnp.tile(a, (v, 1)) for a in rope) if rope is not None else None  # for V*N joint tokens

        def run_block(block, tokens, key):
            return block(tokens, c, context, context_mask, key, rope, views=v)

        policy = REMAT_POLICIES[self.remat]
        if policy is not None:
            run_block = nnx.remat(run_block, policy=policy)
        for i, block in enumerate(self.blocks):
            tokens = materialize_grad(tokens)
            tokens = run_block(block, tokens, keys[2 + i] if keys else None)
        out = self.unpatchify(self.final_layer(tokens, c), gh, gw)  # (B*V, H, W, C_out)
        return out.reshape(b, v, h, w, -1).astype(jnp.float32)


def check_config(config):
    """A multi-view config (`model.multiview` set) before anything loads: its views are its frames, its data
    multi-view data, and nothing mirrors or turns the views (that would break their cameras)."""
    m, d = config.model, config.data
    if not m.get("frames"):
        raise ValueError("model.multiview needs model.frames, the view count (the views travel as a clip's frames): "
                         "set --config.model.frames=V and data.frames=V.")
    if d.get("flip") or d.get("rotation"):
        raise ValueError("data.flip and data.rotation mirror or turn every view, which no longer fits its camera: "
                         "set data.flip=False and data.rotation=0 for multi-view data.")
    if m.get("scan_blocks"):
        raise ValueError("model.scan_blocks is not available for a multi-view DiT: set model.scan_blocks=False.")
    if d.get("name") != "shapes3d":
        raise ValueError(f"A multi-view model trains on data with cameras (data.name='shapes3d'), not "
                         f"{d.get('name')!r}.")
    if config.get("vae") and config.vae.get("path"):
        raise ValueError("Multi-view data is prepared in pixels: set vae.path=''.")


def forward_macs(*, frames, novel_view=False, input_size=32, patch_size=2, in_channels=4, hidden_size=1152,
                 depth=28, **kw):
    """Multiply-accumulates of one forward pass for one object's `frames` views, counted as variants.forward_macs
    counts the DiT's: the image DiT's on each view (twice the input channels in novel-view mode), plus the joint
    attention's larger score and value products (V*N keys, not N) and the camera MLP of each view."""
    from dit_jax.models import variants  # pylint: disable=import-outside-toplevel
    size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
    n, d, v = (size[0] // patch_size) * (size[1] // patch_size), hidden_size, frames
    kw = {k: value for k, value in kw.items() if k not in MULTIVIEW_KEYS}
    per_view = variants.forward_macs(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                                     hidden_size=d, depth=depth, **kw)
    if novel_view:  # the given view's channels in the patch embedding
        per_view += n * patch_size * patch_size * in_channels * d
    joint = depth * 2 * n * n * d * (v * v - v)  # scores and values over V*N keys instead of N, per view's queries
    return v * (per_view + POSE * d + d * d) + joint


def sample_cameras(views, elevation=30.0, distance=3.0):
    """(V, 16) float32: the ring the data renders by default, as the model reads it (for sampling)."""
    return np.asarray(camera_lib.ring(views, elevation, distance)[3]).reshape(views, POSE)
