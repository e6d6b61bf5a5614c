"""Every attention backend and sparse pattern against an explicit masked softmax in NumPy (float64):
forward and gradients, padding, key masks, cross-attention, and the shard_map path on an 8-device mesh
(the Pallas kernels interpreted on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from dit_jax.models import attention
from dit_jax.models.attention import Sparsity, get_attention, parse
from dit_jax.models.pretrained import build_model
from dit_jax.training.sharding import make_mesh

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
# (spec, kernel family to interpret): the GPU Triton kernel, the TPU flash kernel, TPU splash; then XLA's.
KERNELS = [("pallas_flash", "gpu"), ("pallas_flash", "tpu"), ("splash", "tpu")]
BACKENDS = KERNELS + [("dot_product", None), ("xla", None), ("auto", None)]
# Backends that take a sparse pattern, and the patterns as (spec suffix, window, stride).
SPARSE_BACKENDS = ["splash", "dot_product", "xla", "auto"]
PATTERNS = [("local=5", 5, None), ("strided=4", None, 4), ("local=3,strided=8", 3, 8)]


def inputs(q_len, k_len, dtype=jnp.float32, batch=2, heads=2, head_dim=8):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), dtype)
    k, v = (jax.random.normal(key, (batch, k_len, heads, head_dim), dtype) for key in keys[1:3])
    mask = jnp.arange(k_len)[None] < (k_len - 5 * (jnp.arange(batch) % 2))[:, None]  # odd rows: 5 keys padded
    cotangent = jax.random.normal(keys[3], (batch, q_len, heads, head_dim))
    return q, k, v, mask, cotangent


def numpy_attention(q, k, v, allowed, cotangent):
    """softmax(q k^T / sqrt(D)) v over the allowed (B, 1, Lq, Lk) keys, and the gradients of
    <out, cotangent> w.r.t. q, k, v, written out by hand in float64."""
    q, k, v, g = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v, cotangent))
    assert allowed.any(-1).all(), "every query must see a key"
    scale = q.shape[-1] ** -0.5
    logits = np.where(allowed, np.einsum("bqhd,bkhd->bhqk", q, k) * scale, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", p, v)
    dp = np.einsum("bqhd,bkhd->bhqk", g, v)
    dlogits = p * (dp - (dp * p).sum(-1, keepdims=True))
    dq = np.einsum("bhqk,bkhd->bqhd", dlogits, k) * scale
    dk = np.einsum("bhqk,bqhd->bkhd", dlogits, q) * scale
    dv = np.einsum("bhqk,bqhd->bkhd", p, g)
    return out, (dq, dk, dv)


def allowed_keys(mask, q_len, k_len, window=None, stride=None):
    """The key mask and a sparse pattern as one boolean (B, 1, Lq, Lk), spelled out."""
    batch = 1 if mask is None else mask.shape[0]
    allowed = np.ones((batch, 1, q_len, k_len), bool)
    if mask is not None:
        allowed &= np.asarray(mask)[:, None, None, :]
    if window is not None or stride is not None:
        distance = np.abs(np.arange(q_len)[:, None] - np.arange(k_len)[None, :])
        pattern = np.zeros((q_len, k_len), bool)
        if window is not None:
            pattern |= distance <= window
        if stride is not None:
            pattern |= distance % stride == 0
        allowed &= pattern
    return allowed


def assert_matches(spec, q, k, v, mask, cotangent, platform=None):
    """Output and the gradients of <out, cotangent> w.r.t. q, k, v agree with the NumPy reference."""
    attend = get_attention(spec, platform=platform)
    sparsity = parse(spec)[1] or Sparsity()

    @jax.jit
    def forward_and_grads(q, k, v, cotangent):
        out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask), q, k, v)
        return out, vjp(cotangent.astype(out.dtype))

    out, grads = forward_and_grads(q, k, v, cotangent)
    ref_out, ref_grads = numpy_attention(q, k, v, allowed_keys(mask, q.shape[1], k.shape[1], sparsity.window,
                                                                  sparsity.stride), cotangent)
    f32 = lambda x: np.asarray(jnp.asarray(x, jnp.float32))
    tol = TOL[q.dtype.type]
    np.testing.assert_allclose(f32(out), ref_out, atol=tol, rtol=tol, err_msg=f"{spec} {platform} output")
    for name, got, want in zip("qkv", grads, ref_grads):
        np.testing.assert_allclose(f32(got), want, atol=tol * 4, rtol=tol, err_msg=f"{spec} {platform} d{name}")


@pytest.mark.parametrize("spec,platform", BACKENDS)
def test_self_attention_unpadded_length(spec, platform):
    q, k, v, _, cotangent = inputs(24, 24)  # 24 is not a multiple of any block size
    assert_matches(spec, q, k, v, None, cotangent, platform)


@pytest.mark.parametrize("spec,platform", BACKENDS)
def test_cross_attention_with_key_mask(spec, platform):
    q, k, v, mask, cotangent = inputs(24, 12)  # image tokens attending to padded text tokens
    assert_matches(spec, q, k, v, mask, cotangent, platform)


@pytest.mark.parametrize("spec,platform", BACKENDS)
def test_self_attention_with_key_mask_bfloat16(spec, platform):
    q, k, v, mask, cotangent = inputs(24, 24, jnp.bfloat16)
    assert_matches(spec, q, k, v, mask, cotangent, platform)


@pytest.mark.parametrize("backend", SPARSE_BACKENDS)
@pytest.mark.parametrize("pattern,window,stride", PATTERNS)
def test_sparse_patterns_with_key_mask(backend, pattern, window, stride):
    q, k, v, mask, cotangent = inputs(40, 40)
    spec = f"{backend}:{pattern}"
    assert parse(spec) == (backend, Sparsity(window, stride))
    assert_matches(spec, q, k, v, mask, cotangent)


def test_pallas_flash_refuses_a_sparse_pattern_and_auto_picks_one_that_applies_it():
    """The Pallas GPU/TPU flash kernels cannot apply a pattern: an error at parse (config validation), never
    a silent dense fallback; auto on a GPU without cuDNN picks XLA, which applies it as a mask."""
    for spec in ("pallas_flash:local=3", "pallas_flash:strided=2,local=1"):
        with pytest.raises(ValueError, match="take no sparse pattern: use splash") as error:
            parse(spec)
        assert "\n" not in str(error.value)
    q, k, v, _, _ = inputs(8, 8)
    with pytest.raises(ValueError, match="take no sparse pattern"):
        attention.pallas_flash(q, k, v, sparsity=Sparsity(window=2))
    assert attention.choose(q, "gpu", Sparsity(window=2)) == "xla"  # no NVIDIA GPU here, so not cudnn
    assert attention.choose(q, "gpu") == "pallas_flash"
    assert attention.choose(q, "tpu", Sparsity(window=2)) == "splash"


def test_specs_and_platform_errors_are_one_line():
    assert parse("splash:local=64,strided=8") == ("splash", Sparsity(64, 8))
    assert parse("auto") == ("auto", None)
    for bad in ("flash", "splash:window=3", "xla:local=0"):
        with pytest.raises(ValueError, match="attention backend|sparse pattern"):
            parse(bad)
    q, k, v, _, _ = inputs(8, 8)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU"):
        get_attention("cudnn")(q, k, v)
    with pytest.raises(ValueError, match="is a TPU kernel"):
        get_attention("splash", platform="gpu")(q, k, v)
    with pytest.raises(ValueError, match="needs self-attention"):
        get_attention("xla:local=2")(q, k[:, :4], v[:, :4])


@pytest.mark.parametrize("spec,platform", KERNELS)
def test_kernels_under_an_8_device_mesh(spec, platform):
    """data=2, fsdp=2 split the batch and tensor=2 the heads; gradients flow through shard_map."""
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    q, k, v, mask, cotangent = inputs(24, 12, batch=4)
    attend = get_attention(spec, platform=platform)
    rows = NamedSharding(mesh, P(("data", "fsdp")))

    def loss(q, k, v, mask):
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            return jnp.sum(attend(q, k, v, mask) * cotangent)

    step = jax.jit(jax.value_and_grad(loss, (0, 1, 2)), in_shardings=(rows,) * 4)
    assert "shard_map" in str(jax.make_jaxpr(step)(q, k, v, mask))
    # Interpreted kernels run host callbacks: finish them before dispatching anything else.
    value, grads = jax.block_until_ready(step(q, k, v, mask))
    ref_out, ref_grads = numpy_attention(q, k, v, allowed_keys(mask, 24, 12), cotangent)
    np.testing.assert_allclose(value, np.sum(ref_out * np.asarray(cotangent)), rtol=1e-5)
    for got, want in zip(grads, ref_grads):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_dit_with_pallas_flash_equals_xla():
    """A toy text-conditioned DiT (self- and cross-attention) gives the same output with either backend."""
    kw = dict(input_size=8, patch_size=2, in_channels=3, hidden_size=32, depth=1, num_heads=2, num_classes=0,
              text_dim=8, text_len=6, learn_sigma=False)
    xla_model, flash_model = (build_model(kw, attention=a) for a in ("xla", "pallas_flash"))
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
    t = jnp.array([3, 500])
    text = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 8))
    text_mask = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], bool)
    # The zero-initialised cross-attention output would hide a wrong cross-attention: give it weights.
    for model in (xla_model, flash_model):
        proj = model.blocks[0].cross_attn.proj.kernel
        proj.set_value(jax.random.normal(jax.random.PRNGKey(2), proj.shape) * 0.1)
    run = lambda m: nnx.jit(lambda m: m(x, t, text=text, text_mask=text_mask))(m)
    np.testing.assert_allclose(run(flash_model), run(xla_model), atol=1e-5)


# The compiled kernels (not interpreted) on the accelerator the tests run on, at lengths past one block:
#   JAX_PLATFORMS=cuda python -m pytest -q tests/test_attention.py -k accelerator    (or JAX_PLATFORMS=tpu)
ACCELERATOR_SPECS = {"gpu": ["cudnn", "pallas_flash", "dot_product", "auto", "cudnn:local=64", "auto:local=64"],
                     "tpu": ["pallas_flash", "splash", "splash:local=64", "auto", "auto:local=64"]}


@pytest.mark.skipif(jax.default_backend() == "cpu", reason="the compiled kernels need a GPU or TPU")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("q_len,k_len", [(300, 300), (300, 77)])
def test_compiled_kernels_on_this_accelerator(dtype, q_len, k_len):
    platform = jax.default_backend()
    q, k, v, mask, cotangent = inputs(q_len, k_len, dtype, heads=4, head_dim=64)
    with jax.default_matmul_precision("highest"):  # fp32 means fp32, not TF32, on both sides
        for spec in ACCELERATOR_SPECS[platform]:
            if spec == "cudnn" and dtype == jnp.float32:
                continue  # cuDNN's flash attention takes half precision only
            if ":" in spec and q_len != k_len:
                continue  # sparse patterns are for self-attention
            assert_matches(spec, q, k, v, mask, cotangent)
