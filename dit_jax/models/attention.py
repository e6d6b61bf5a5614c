"""Attention backends behind one function, chosen by name in the model config.

All take q (B, Lq, H, D), k and v (B, Lk, H, D) and an optional key padding
mask (B, Lk) where True means "attend", and return (B, Lq, H, D).

  xla           the reference: softmax(q k^T / sqrt(D)) v, logits in float32
  dot_product   jax.nn.dot_product_attention (XLA's fused path)
  cudnn         cuDNN flash attention (NVIDIA GPUs)
  pallas_flash  Pallas flash attention: the Triton kernel on GPU, the TPU kernel on TPU
  splash        TPU splash attention, block-sparse
  auto          the fastest of these that fits the platform and shapes

A spec may add a sparse pattern for self-attention, e.g. "splash:local=128"
(keys within 128 tokens), "xla:strided=16" (every 16th token) or both,
"splash:local=64,strided=64" (Sparse Transformer's fixed pattern). Splash
skips the empty blocks; xla, dot_product and cudnn apply the same pattern as a
mask, so results agree. pallas_flash's kernels take no pattern: parse()
refuses one there, and auto picks a backend that applies it. On CPU the
Pallas kernels run in interpret mode (for tests: slow). Under a mesh
(jax.sharding.use_abstract_mesh, which the train step sets) the kernels run
inside shard_map over batch (data, fsdp) and heads (tensor).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import PartitionSpec as P

from dit_jax.models import kernels

BATCH_AXES, HEAD_AXIS = ("data", "fsdp"), "tensor"


@dataclasses.dataclass(frozen=True)
class Sparsity:
    """Which keys a query sees: within `window` positions, or a multiple of `stride` away (or either)."""
    window: int | None = None
    stride: int | None = None

    def allowed(self, rows, cols):
        """Boolean (rows x cols) from index arrays that broadcast (NumPy or jax)."""
        distance = abs(rows - cols)
        near = distance <= self.window if self.window is not None else False
        aligned = distance % self.stride == 0 if self.stride is not None else False
        return near | aligned


NO_PATTERN = ("pallas_flash's kernels take no sparse pattern: use splash:PATTERN on TPU, or "
              "cudnn:, dot_product: or xla:PATTERN, which apply it as a mask.")


def parse(spec):
    """'splash:local=64,strided=8' -> ('splash', Sparsity(64, 8)); a bare name has no pattern."""
    name, _, pattern = spec.partition(":")
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend {name!r}; choose one of {sorted(BACKENDS)}.")
    if not pattern:
        return name, None
    if name == "pallas_flash":
        raise ValueError(f"attention={spec!r}: {NO_PATTERN}")
    fields = {}
    for part in pattern.split(","):
        key, _, value = part.partition("=")
        if key not in ("local", "strided") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"Bad sparse pattern {pattern!r} in {spec!r}: use local=W and/or strided=S "
                             "with positive integers, e.g. 'splash:local=128'.")
        fields["window" if key == "local" else "stride"] = int(value)
    return name, Sparsity(**fields)


def combined_mask(mask, sparsity, q_len, k_len):
    """The key mask and the sparse pattern as one boolean mask broadcastable to (B, H, Lq, Lk), or None."""
    out = None if mask is None else mask[:, None, None, :]
    if sparsity is not None:
        pattern = sparsity.allowed(jnp.arange(q_len)[:, None], jnp.arange(k_len)[None, :])[None, None]
        out = pattern if out is None else out & pattern
    return out


def xla_attention(q, k, v, mask=None, sparsity=None):
    """The reference: softmax(q k^T / sqrt(D)) v, with logits and softmax in float32."""
    return kernels.reference(q, k, v, combined_mask(mask, sparsity, q.shape[1], k.shape[1]))


def dot_product(q, k, v, mask=None, sparsity=None):
    return jax.nn.dot_product_attention(q, k, v, mask=combined_mask(mask, sparsity, q.shape[1], k.shape[1]))


def cudnn(q, k, v, mask=None, sparsity=None):
    """cuDNN flash attention; a sparse pattern becomes a dense mask (correct, not faster)."""
    if not is_nvidia():
        raise ValueError(f"attention='cudnn' needs an NVIDIA GPU, not {jax.devices()[0].device_kind}: "
                         "use auto, xla or pallas_flash.")
    return jax.nn.dot_product_attention(q, k, v, mask=combined_mask(mask, sparsity, q.shape[1], k.shape[1]),
                                        implementation="cudnn")


def pallas_flash(q, k, v, mask=None, sparsity=None, *, platform=None, interpret=None):
    """Pallas flash attention for the platform (GPU: Triton, TPU: Mosaic; on CPU interpreted, default
    the GPU kernel). Its kernels take no sparse pattern (parse refuses one)."""
    if sparsity is not None:
        raise ValueError(NO_PATTERN)
    platform, interpret = kernel_platform(platform, interpret)
    kernel = kernels.tpu_flash if platform == "tpu" else kernels.gpu_flash
    return sharded(lambda q, k, v, m: kernel(q, k, v, m, interpret=interpret), q, k, v, mask)


def splash(q, k, v, mask=None, sparsity=None, *, platform=None, interpret=None):
    platform, interpret = kernel_platform(platform, interpret, default="tpu")
    if platform != "tpu":
        raise ValueError(f"attention='splash' is a TPU kernel and this is {platform}: use pallas_flash or "
                         "cudnn (the same sparse pattern applies there as a mask).")
    return sharded(lambda q, k, v, m: kernels.splash(q, k, v, m, sparsity=sparsity, interpret=interpret),
                   q, k, v, mask)


_announced = set()


def choose(q, platform=None, sparsity=None):
    """auto's choice: cuDNN on NVIDIA where it supports the shapes, else Pallas (or XLA for a sparse
    pattern, which the Pallas GPU kernel cannot apply); splash on TPU; XLA on CPU."""
    platform = platform or jax.default_backend()
    if platform == "tpu":
        return "splash"
    if platform == "gpu":
        head_dim = q.shape[-1]
        cudnn_fits = q.dtype in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
        if is_nvidia() and cudnn_fits:
            return "cudnn"
        return "pallas_flash" if sparsity is None else "xla"
    return "xla"


def auto(q, k, v, mask=None, sparsity=None):
    name = choose(q, sparsity=sparsity)
    key = (name, str(q.dtype), q.shape[-1], sparsity)
    if key not in _announced:
        _announced.add(key)
        logging.warning("attention=auto uses %s on %s (%s, head dim %d%s).", name, jax.default_backend(),
                        q.dtype, q.shape[-1], f", {sparsity}" if sparsity else "")
    return BACKENDS[name](q, k, v, mask, sparsity)


BACKENDS = {
    "auto": auto,
    "xla": xla_attention,
    "dot_product": dot_product,
    "cudnn": cudnn,
    "pallas_flash": pallas_flash,
    "splash": splash,
}


def is_nvidia():
    device = jax.devices()[0]
    return device.platform == "gpu" and "nvidia" in device.device_kind.lower()


def kernel_platform(platform, interpret, default="gpu"):
    """Whose kernel to run and whether to interpret it: on CPU, `default`'s kernel, interpreted."""
    actual = jax.default_backend()
    if interpret is None:
        interpret = actual == "cpu"
    return platform or (default if actual == "cpu" else actual), interpret


def sharded(kernel, q, k, v, mask):
    """kernel(q, k, v, mask) per shard under shard_map when a mesh is set: each device attends its
    own batch rows and heads. Axes the shapes do not divide stay whole; without a mesh, a plain call."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, mask)
    batch = tuple(a for a in BATCH_AXES if mesh.shape.get(a, 1) > 1)
    if q.shape[0] % math.prod(mesh.shape[a] for a in batch):
        batch = ()
    heads = HEAD_AXIS if mesh.shape.get(HEAD_AXIS, 1) > 1 and q.shape[2] % mesh.shape[HEAD_AXIS] == 0 else None
    if not batch and heads is None:
        return kernel(q, k, v, mask)
    qkv, rows = P(batch or None, None, heads, None), P(batch or None, None)
    if mask is None:
        return jax.shard_map(lambda q, k, v: kernel(q, k, v, None), in_specs=(qkv,) * 3, out_specs=qkv,
                             check_vma=False)(q, k, v)
    return jax.shard_map(kernel, in_specs=(qkv, qkv, qkv, rows), out_specs=qkv, check_vma=False)(q, k, v, mask)


def get_attention(spec="xla", *, cross=False, platform=None, interpret=None):
    """attend(q, k, v, mask=None) for a spec such as "auto", "pallas_flash" or "splash:local=128".

    cross=True drops the sparse pattern (it orders image tokens, not text).
    platform picks a Pallas kernel family to interpret on CPU ("gpu" or "tpu");
    interpret=None interprets exactly when running on CPU.
    """
    name, sparsity = parse(spec)
    if cross:
        sparsity = None
    backend = BACKENDS[name]
    options = dict(platform=platform, interpret=interpret) if name in ("pallas_flash", "splash") else {}

    def attend(q, k, v, mask=None):
        if sparsity is not None and q.shape[1] != k.shape[1]:
            raise ValueError(f"A sparse pattern needs self-attention; got {q.shape[1]} queries, {k.shape[1]} keys.")
        return backend(q, k, v, mask, sparsity, **options)
    return attend
