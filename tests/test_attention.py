"""Every attention backend against the reference softmax: forward and gradients, padding, key masks,
cross-attention, sparse patterns, and the shard_map path on an 8-device mesh (Pallas interpreted on CPU)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from dit_jax.models.attention import Sparsity, get_attention, parse, xla_attention
from dit_jax.models.pretrained import build_model
from dit_jax.training.sharding import make_mesh

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
# (spec, kernel family to interpret): the GPU Triton kernel, the TPU flash kernel, TPU splash.
KERNELS = [("pallas_flash", "gpu"), ("pallas_flash", "tpu"), ("splash", "tpu"), ("dot_product", None)]


def inputs(q_len, k_len, dtype=jnp.float32, batch=2, heads=2, head_dim=8):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim), dtype)
    k, v = (jax.random.normal(key, (batch, k_len, heads, head_dim), dtype) for key in keys[1:3])
    mask = jnp.arange(k_len)[None] < (k_len - 5 * (jnp.arange(batch) % 2))[:, None]  # odd rows are padded
    cotangent = jax.random.normal(keys[3], (batch, q_len, heads, head_dim))
    return q, k, v, mask, cotangent


def assert_matches(spec, q, k, v, mask, cotangent, platform=None):
    """Output and the gradients of <out, cotangent> w.r.t. q, k, v agree with the float32 reference."""
    attend = jax.jit(get_attention(spec, platform=platform))
    _, sparsity = parse(spec)
    f32 = lambda x: x.astype(jnp.float32)
    reference = lambda q, k, v: xla_attention(f32(q), f32(k), f32(v), mask, sparsity)
    out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, mask), q, k, v)
    ref_out, ref_vjp = jax.vjp(reference, q, k, v)
    tol = TOL[q.dtype.type]
    np.testing.assert_allclose(f32(out), ref_out, atol=tol, rtol=tol)
    for got, want in zip(vjp(cotangent.astype(out.dtype)), ref_vjp(cotangent)):
        np.testing.assert_allclose(f32(got), want, atol=tol * 4, rtol=tol)


@pytest.mark.parametrize("spec,platform", KERNELS)
def test_self_attention_unpadded_length(spec, platform):
    q, k, v, _, cotangent = inputs(24, 24)  # 24 is not a multiple of any block size
    assert_matches(spec, q, k, v, None, cotangent, platform)


@pytest.mark.parametrize("spec,platform", KERNELS)
def test_cross_attention_with_key_mask(spec, platform):
    q, k, v, mask, cotangent = inputs(24, 12)  # image tokens attending to padded text tokens
    assert_matches(spec, q, k, v, mask, cotangent, platform)


@pytest.mark.parametrize("spec,platform", KERNELS[:3])
def test_self_attention_with_key_mask_bfloat16(spec, platform):
    q, k, v, mask, cotangent = inputs(24, 24, jnp.bfloat16)
    assert_matches(spec, q, k, v, mask, cotangent, platform)


@pytest.mark.parametrize("spec", ["splash:local=5", "splash:strided=4", "splash:local=3,strided=8",
                                  "xla:local=5", "pallas_flash:local=3,strided=8"])
def test_sparse_patterns_match_an_explicitly_masked_reference(spec):
    q, k, v, mask, cotangent = inputs(40, 40)
    _, sparsity = parse(spec)
    i, j = np.arange(40)[:, None], np.arange(40)[None, :]
    pattern = np.zeros((40, 40), bool)
    if sparsity.window is not None:
        pattern |= np.abs(i - j) <= sparsity.window
    if sparsity.stride is not None:
        pattern |= np.abs(i - j) % sparsity.stride == 0
    explicit = jnp.asarray(pattern)[None, None] & mask[:, None, None, :]
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    weights = jax.nn.softmax(jnp.where(explicit, logits, -jnp.inf), axis=-1)
    np.testing.assert_allclose(jax.jit(get_attention(spec))(q, k, v, mask), jnp.einsum("bhqk,bkhd->bqhd", weights, v),
                               atol=1e-5)
    assert_matches(spec, q, k, v, mask, cotangent)


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
    np.testing.assert_array_equal(get_attention("auto")(q, k, v), xla_attention(q, k, v))  # xla on CPU


@pytest.mark.parametrize("spec,platform", KERNELS[:3])
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
    ref_value, ref_grads = jax.value_and_grad(lambda q, k, v: jnp.sum(xla_attention(q, k, v, mask) * cotangent),
                                              (0, 1, 2))(q, k, v)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
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
ACCELERATOR_SPECS = {"gpu": ["cudnn", "pallas_flash", "dot_product", "auto"],
                     "tpu": ["pallas_flash", "splash", "splash:local=64", "auto"]}


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
