"""The modern block options (RMSNorm, QK-norm, SwiGLU, 2-D RoPE): each off is DiT's block, each on against NumPy
formulas written out here, parameter counts by hand, every attention backend on RoPE'd queries and keys, the
scan, remat, bf16, sharding and one train step with all of them on."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.tiny import get_config
from dit_jax.models.attention import get_attention, parse
from dit_jax.models.convert import to_dit
from dit_jax.models.dit import DIT_BLOCK, Attention, Mlp, RMSNorm, rms_norm, swiglu_dim
from dit_jax.models.embeddings import apply_rope, rope_2d
from dit_jax.models.pretrained import abstract_model, build_model, count_parameters
from dit_jax.models.variants import forward_macs
from dit_jax.training import sharding, trainer as trainer_lib
from dit_jax.training.checks import validate
from dit_jax.training.recipe import modern_block

TOY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)
TEXT = dict(TOY, num_classes=0, text_dim=12, text_len=5, text_pooled=True)
MODERN = dict(norm="rmsnorm", qk_norm=True, mlp="swiglu", pos_embed="rope")


def inputs(batch=3, seed=0):
    rng = np.random.RandomState(seed)
    return dict(x=jnp.asarray(rng.randn(batch, 8, 8, 4), jnp.float32), t=jnp.asarray(rng.randint(0, 1000, batch)),
                y=jnp.asarray(rng.randint(0, 10, batch)))


def text_inputs(batch=3, seed=1):
    rng = np.random.RandomState(seed)
    mask = np.ones((batch, 5), bool)
    mask[0, 3:] = False
    return dict(text=jnp.asarray(rng.randn(batch, 5, 12), jnp.float32), text_mask=jnp.asarray(mask),
                pooled=jnp.asarray(rng.randn(batch, 12), jnp.float32))


def randomize(model, seed=0, scale=0.2):
    """Every parameter drawn by its name (so models with more parameters share the values of the common ones)."""
    state = nnx.state(model, nnx.Param)
    flat = nnx.to_flat_state(state)
    for path, var in flat:
        key = jax.random.fold_in(jax.random.key(seed), zlib.crc32("/".join(map(str, path)).encode()))
        var.set_value(scale * jax.random.normal(key, var.shape, var.get_value().dtype))
    nnx.update(model, nnx.from_flat_state(flat))
    return model


def forward(model, **args):
    """The model on `args`, compiled whole (one compile is cheaper than running it op by op)."""
    return nnx.jit(lambda m, args: m(**args))(model, args)


def flat_params(model):
    return {"/".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# ---------------------------------------------------------------- NumPy references (float64)

def np_rms(x, eps=1e-6):
    return x / np.sqrt(np.mean(x**2, -1, keepdims=True) + eps)


def np_layer_norm(x, eps):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)


def np_rope(x, grid_h, grid_w, theta=10000.0):
    """Axial RoPE from its definition: pairs (x[2i], x[2i+1]) as complex numbers times e^(i angle); the first
    D/4 pairs turn by row * theta^(-j / (D/4)), the last D/4 by column * theta^(-j / (D/4)); x (N, T, H, D)."""
    d = x.shape[-1]
    z = x[..., 0::2] + 1j * x[..., 1::2]  # (N, T, H, D/2)
    row, col = np.divmod(np.arange(grid_h * grid_w), grid_w)
    freq = theta ** (-np.arange(d // 4) / (d // 4))
    angle = np.concatenate([row[:, None] * freq, col[:, None] * freq], axis=1)  # (T, D/2)
    z = z * np.exp(1j * angle)[None, :, None, :]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def np_attention(q, k, v, allowed=None):
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1])
    if allowed is not None:
        logits = np.where(allowed, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), v)


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def np_silu(x):
    return x / (1 + np.exp(-x))


def np_block(w, x, c, heads, grid, options):
    """One DiT block (no text) from its equations, with the block options of `options`."""
    lin = lambda name, h: h @ w[f"{name}/kernel"] + w[f"{name}/bias"]
    norm = np_rms if options["norm"] == "rmsnorm" else lambda h, eps: np_layer_norm(h, eps)
    shift1, scale1, gate1, shift2, scale2, gate2 = np.split(lin("adaLN_modulation", np_silu(c))[:, None], 6, -1)
    n, t, d = x.shape
    q, k, v = (a.reshape(n, t, heads, d // heads) for a in np.split(lin("attn/qkv", norm(x, 1e-6) * (1 + scale1)
                                                                         + shift1), 3, -1))
    if options["qk_norm"]:
        q, k = np_rms(q) * w["attn/q_norm/scale"], np_rms(k) * w["attn/k_norm/scale"]
    if options["pos_embed"] == "rope":
        q, k = np_rope(q, *grid), np_rope(k, *grid)
    x = x + gate1 * lin("attn/proj", np_attention(q, k, v).reshape(n, t, d))
    h = norm(x, 1e-6) * (1 + scale2) + shift2
    h = np_silu(lin("mlp/gate", h)) * lin("mlp/fc1", h) if options["mlp"] == "swiglu" else np_gelu_tanh(lin("mlp/fc1", h))
    return x + gate2 * lin("mlp/fc2", h)


# ---------------------------------------------------------------- off: DiT's block

# One DiT block's parameters, as DiT's checkpoints name them (convert.py maps these names).
DIT_BLOCK_PARAMS = {f"{layer}/{kind}" for layer in ("attn/qkv", "attn/proj", "mlp/fc1", "mlp/fc2", "adaLN_modulation")
                    for kind in ("kernel", "bias")}


def test_defaults_are_dits_block():
    """The option defaults are DiT's: the same parameter tree (DiT's names, the position table) and the same
    output as a model that names DiT's choices."""
    default, named = randomize(build_model(TOY)), randomize(build_model(dict(TOY, **DIT_BLOCK)))
    assert DIT_BLOCK == dict(norm="layernorm", qk_norm=False, mlp="gelu", pos_embed="sincos")
    a, b = flat_params(default), flat_params(named)
    assert {k[len("blocks/0/"):] for k in a if k.startswith("blocks/0/")} == DIT_BLOCK_PARAMS
    assert {k for k in a if not k.startswith("blocks/")} == {"y_embedder/embedding_table"} | {
        f"{layer}/{kind}" for kind in ("kernel", "bias") for layer in (
            "x_embedder/proj", "t_embedder/linear1", "t_embedder/linear2", "final_layer/adaLN_modulation",
            "final_layer/linear")}
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(forward(default, **inputs()), forward(named, **inputs()))
    assert not default.rope and count_parameters(default) == sum(x.size for x in a.values()) + 16 * 32


@pytest.mark.parametrize("options", [dict(DIT_BLOCK), MODERN] + [dict(DIT_BLOCK, **{k: MODERN[k]}) for k in MODERN],
                         ids=lambda o: "+".join(f"{k}={v}" for k, v in o.items() if DIT_BLOCK[k] != v) or "dit")
def test_block_matches_numpy(options):
    """A block's output against its equations in NumPy (float64): DiT's block with every option off, and with
    each option, or all four, on."""
    model = randomize(build_model(dict(TOY, depth=1, **options)))
    block = model.blocks[0]
    w = {k[len("blocks/0/"):]: v.astype(np.float64) for k, v in flat_params(model).items() if k.startswith("blocks/0/")}
    rng = np.random.RandomState(3)
    x, c = rng.randn(2, 16, 32), rng.randn(2, 32)
    rope = model.rope_tables(4, 4)
    got = block(jnp.asarray(x, jnp.float32), jnp.asarray(c, jnp.float32), rope=rope)
    np.testing.assert_allclose(got, np_block(w, x, c, 4, (4, 4), options), rtol=2e-5, atol=2e-5)
    dit = dict(DIT_BLOCK, mlp=options["mlp"])  # DiT's block on the same weights (SwiGLU's need its MLP)
    if options != dit:  # the options change what it computes
        assert np.abs(np.asarray(got) - np_block(w, x, c, 4, (4, 4), dit)).max() > 1e-3
    assert (options["pos_embed"] == "rope") == (rope is not None)


def test_rope_turns_off_the_position_table():
    """At initialisation the blocks are the identity (adaLN-Zero), so with a final linear layer the output shows
    the tokens: the patch embedding plus the sin-cos table, or with rope the patch embedding alone."""
    outputs = []
    for pos_embed in ("sincos", "rope"):
        model = build_model(dict(TOY, pos_embed=pos_embed))
        kernel = model.final_layer.linear.kernel
        kernel.set_value(jax.random.normal(jax.random.key(0), kernel.shape))
        args = inputs()
        tokens = model.x_embedder(args["x"]) + (model.pos_embed(4, 4) if pos_embed == "sincos" else 0)
        want = model.unpatchify(model.final_layer(tokens, jnp.zeros((3, 32))), 4, 4)
        outputs.append(forward(model, **args))
        np.testing.assert_allclose(outputs[-1], want, atol=1e-5)
    assert float(jnp.abs(outputs[0] - outputs[1]).max()) > 0.1


# ---------------------------------------------------------------- each piece against its formula

def test_rms_norm_and_qk_norm_scale_match_numpy():
    x = np.random.RandomState(0).randn(3, 5, 16) * 3 + 1
    np.testing.assert_allclose(rms_norm(jnp.asarray(x, jnp.float32), 1e-6), np_rms(x), rtol=1e-5, atol=1e-6)
    norm = RMSNorm(16, param_dtype=jnp.float32)
    scale = np.linspace(0.5, 2.0, 16)
    norm.scale.set_value(jnp.asarray(scale, jnp.float32))
    np.testing.assert_allclose(norm(jnp.asarray(x, jnp.float32)), np_rms(x) * scale, rtol=1e-5, atol=1e-6)
    assert norm(jnp.asarray(x, jnp.bfloat16)).dtype == jnp.bfloat16
    model = build_model(dict(TOY, qk_norm=True))  # QK-norm's scales start at one
    assert np.all(np.asarray(model.blocks[1].attn.k_norm.scale[...]) == 1)


def test_swiglu_matches_numpy_and_keeps_the_parameters():
    assert [swiglu_dim(4 * d) for d in (32, 128, 384, 1152)] == [88, 344, 1024, 3072]  # 2/3 of 4D, up to 8s
    mlp = randomize(Mlp(32, 128, swiglu=True, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0)))
    w = {k: v.astype(np.float64) for k, v in flat_params(mlp).items()}
    x = np.random.RandomState(1).randn(2, 5, 32)
    want = (np_silu(x @ w["gate/kernel"] + w["gate/bias"]) * (x @ w["fc1/kernel"] + w["fc1/bias"])) @ w["fc2/kernel"]
    np.testing.assert_allclose(mlp(jnp.asarray(x, jnp.float32)), want + w["fc2/bias"], rtol=2e-5, atol=2e-5)
    for d in (128, 1152):  # within 2% of the GELU MLP's parameters
        gelu, swiglu = 2 * d * 4 * d + 4 * d + d, 3 * d * swiglu_dim(4 * d) + 2 * swiglu_dim(4 * d) + d
        assert abs(swiglu / gelu - 1) < 0.02


def test_rope_matches_numpy_and_scores_depend_only_on_the_offset():
    rng = np.random.RandomState(0)
    x = rng.randn(2, 12, 3, 8)  # a 3 x 4 grid, 3 heads of 8
    cos, sin = rope_2d(8, 3, 4)
    np.testing.assert_allclose(apply_rope(jnp.asarray(x, jnp.float32), cos, sin), np_rope(x, 3, 4), atol=1e-5)
    # The same query and key at every position of a 5 x 6 grid: q_i . k_j after RoPE is a function of the
    # offset (row_i - row_j, col_i - col_j) alone, and a function that varies with it.
    q, k = rng.randn(16), rng.randn(16)
    cos, sin = rope_2d(16, 5, 6)
    turn = lambda v: np.asarray(apply_rope(jnp.broadcast_to(jnp.asarray(v, jnp.float32), (1, 30, 1, 16)), cos, sin))
    scores = turn(q)[0, :, 0] @ turn(k)[0, :, 0].T  # (30, 30)
    row, col = np.divmod(np.arange(30), 6)
    by_offset = {}
    for i in range(30):
        for j in range(30):
            by_offset.setdefault((row[i] - row[j], col[i] - col[j]), []).append(scores[i, j])
    assert all(np.ptp(s) < 1e-4 for s in by_offset.values())
    assert len({round(s[0], 3) for s in by_offset.values()}) > 50
    # Row shifts and column shifts both matter (both axes are encoded).
    assert abs(by_offset[(1, 0)][0] - by_offset[(0, 0)][0]) > 1e-3 and abs(by_offset[(0, 1)][0] - by_offset[(0, 0)][0]) > 1e-3


# ---------------------------------------------------------------- parameters and cost

def dit_parameters(d=32, depth=2, p=2, c=4, classes=10, mlp_width=128, mlp_matrices=2):
    """TOY's trainable parameters by hand: patch conv, timestep MLP, class table with the null class, blocks
    (qkv, proj, MLP, adaLN), final layer."""
    mlp = mlp_matrices * d * mlp_width + (mlp_matrices - 1) * mlp_width + d
    block = (d * 3 * d + 3 * d) + (d * d + d) + mlp + (d * 6 * d + 6 * d)
    return (p * p * c * d + d) + (256 * d + d + d * d + d) + (classes + 1) * d + depth * block + (
        d * 2 * d + 2 * d) + (d * p * p * 2 * c + p * p * 2 * c)


@pytest.mark.parametrize("option,expected", [
    (dict(), dit_parameters()),
    (dict(norm="rmsnorm"), dit_parameters()),  # no affine parameters: adaLN scales and shifts
    (dict(qk_norm=True), dit_parameters() + 2 * 2 * 8),  # a scale of head_dim 8 for q and k, in 2 blocks
    (dict(mlp="swiglu"), dit_parameters(mlp_width=88, mlp_matrices=3)),
    (dict(pos_embed="rope"), dit_parameters()),
    (MODERN, dit_parameters(mlp_width=88, mlp_matrices=3) + 2 * 2 * 8),
])
def test_parameter_counts_by_hand(option, expected):
    model = abstract_model(dict(TOY, **option))
    trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert trainable == expected
    table = 0 if option.get("pos_embed") == "rope" else 16 * 32  # DiT counts its fixed table; RoPE has none
    assert count_parameters(model) == expected + table


def test_qk_norm_on_cross_attention_and_forward_macs():
    plain, normed = (abstract_model(dict(TEXT, qk_norm=q)) for q in (False, True))
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    assert count(normed) - count(plain) == 2 * 2 * 2 * 8  # self- and cross-attention, q and k, 2 blocks
    assert normed.blocks[0].cross_attn.q_norm is not None
    n, d, depth = 16, 32, 2  # SwiGLU: three matrices 88 wide against two 128 wide
    assert forward_macs(**TOY, mlp="swiglu") - forward_macs(**TOY) == depth * n * d * (3 * 88 - 2 * 128)
    assert forward_macs(**dict(TOY, **MODERN)) == forward_macs(**TOY, mlp="swiglu")


# ---------------------------------------------------------------- backends, scan, remat, bf16, sharding

# (spec, kernel family to interpret on CPU): every backend that runs here, dense and with a sparse pattern.
BACKENDS = [("xla", None), ("dot_product", None), ("auto", None), ("pallas_flash", "gpu"), ("pallas_flash", "tpu"),
            ("splash", "tpu"), ("xla:local=3", None), ("dot_product:strided=4", None), ("splash:local=3", "tpu")]


@pytest.mark.parametrize("spec,platform", BACKENDS)
def test_every_backend_takes_rope(spec, platform):
    """Self-attention with QK-norm and RoPE against NumPy, through each backend: RoPE turns q and k before
    dispatch, so every backend (and sparse pattern) sees the turned ones."""
    attn = randomize(Attention(32, 4, cross=False, backend="xla", qk_norm=True, dtype=jnp.float32,
                               param_dtype=jnp.float32, rngs=nnx.Rngs(0)), scale=0.3)
    attn.attend = get_attention(spec, platform=platform)
    w = {k: v.astype(np.float64) for k, v in flat_params(attn).items()}
    x = np.random.RandomState(2).randn(2, 16, 32)
    got = jax.jit(lambda x: attn(x, rope=tuple(map(jnp.asarray, rope_2d(8, 4, 4)))))(jnp.asarray(x, jnp.float32))
    q, k, v = (a.reshape(2, 16, 4, 8) for a in np.split(x @ w["qkv/kernel"] + w["qkv/bias"], 3, -1))
    q, k = np_rope(np_rms(q) * w["q_norm/scale"], 4, 4), np_rope(np_rms(k) * w["k_norm/scale"], 4, 4)
    sparsity = parse(spec)[1]
    allowed = None if sparsity is None else sparsity.allowed(np.arange(16)[:, None], np.arange(16)[None])
    want = np_attention(q, k, v, allowed).reshape(2, 16, 32) @ w["proj/kernel"] + w["proj/bias"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"{spec} {platform}")


def test_scan_equals_loop_with_every_option():
    """scan_blocks with full remat against the plain loop with "dots" remat, all four options on, with text
    (QK-norm in cross-attention) and dropout: the same output. (The train step below differentiates the scan.)"""
    config = dict(TEXT, num_classes=10, dropout=0.1, **MODERN)
    loop = randomize(build_model(dict(config, remat="dots")))
    scanned = randomize(build_model(dict(config, scan_blocks=True, remat="full")))
    run = lambda m: nnx.jit(lambda m: m(**inputs(), **text_inputs(), rng=jax.random.key(1)))(m)
    np.testing.assert_allclose(run(scanned), run(loop), rtol=1e-5, atol=1e-6)


def test_bf16_with_every_option():
    args = inputs()
    f32 = randomize(build_model(dict(TOY, **MODERN)))
    bf16 = randomize(build_model(dict(TOY, dtype=jnp.bfloat16, **MODERN)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    a, b = forward(f32, **args), forward(bf16, **args)
    assert b.dtype == jnp.float32 and 0 < float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())


def test_new_parameters_carry_logical_axes():
    model = abstract_model(dict(TEXT, **MODERN))
    specs = dict(nnx.to_flat_state(nnx.get_partition_spec(nnx.state(model, nnx.Param))))
    P = jax.sharding.PartitionSpec
    assert specs[("blocks", 0, "mlp", "gate", "kernel")].get_value() == P("embed", "mlp")
    assert specs[("blocks", 0, "attn", "q_norm", "scale")].get_value() == P(None)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    placed = dict(nnx.to_flat_state(sharding.param_shardings(nnx.state(model, nnx.Param), mesh)))
    assert placed[("blocks", 0, "mlp", "gate", "kernel")].get_value().spec == P("fsdp", "tensor")
    assert placed[("blocks", 0, "cross_attn", "k_norm", "scale")].get_value().spec == P(None)
    # The model placed by the rules on a fsdp x tensor mesh computes what it computes on one device.
    model = randomize(build_model(dict(TEXT, depth=1, **MODERN)))
    graphdef, params = nnx.split(model, nnx.Param)
    forward = jax.jit(lambda p: nnx.merge(graphdef, p)(**inputs(), **text_inputs()))
    mesh = sharding.make_mesh(dict(data=1, fsdp=2, tensor=2), jax.devices()[:4])
    placed = jax.device_put(params, sharding.param_shardings(params, mesh))
    assert placed["blocks"][0]["mlp"]["gate"]["kernel"].get_value().sharding.spec == P("fsdp", "tensor")
    np.testing.assert_allclose(forward(placed), forward(params), atol=1e-5)


def test_one_train_step_with_the_preset():
    """modern_block on the tiny recipe's toy: train steps run, give finite losses and gradients, and reach
    QK-norm's scales."""
    rng = np.random.RandomState(0)
    batch = dict(image=jnp.asarray(rng.uniform(-1, 1, (2, 8, 8, 3)), jnp.float32),
                 text=jnp.asarray(rng.randn(2, 6, 12), jnp.float32), text_mask=jnp.ones((2, 6), bool),
                 pooled=jnp.asarray(rng.randn(2, 12), jnp.float32))
    config = modern_block(get_config("runlocal"))
    assert (config.model.norm, config.model.qk_norm, config.model.mlp, config.model.pos_embed) == tuple(MODERN.values())
    config.batch_size, config.mesh, config.optim.warmup_steps = 2, dict(data=1, fsdp=1, tensor=1), 0
    config.model.update(hidden_size=32, depth=1, patch_size=2)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    trainer = trainer_lib.create(config, {**config.model.to_dict(), **dict(input_size=8, in_channels=3, text_dim=12,
                                                                             text_len=6)}, mesh)
    state = trainer.init()
    before = np.asarray(state["params"]["blocks"][0]["attn"]["q_norm"]["scale"].get_value())
    step = trainer_lib.compile_step(trainer, batch)
    for _ in range(3):  # from zero-initialised outputs, the final layer moves first, then adaLN, then the rest
        state, metrics = step(state, batch)
        assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    after = np.asarray(state["params"]["blocks"][0]["attn"]["q_norm"]["scale"].get_value())
    assert np.all(before == 1) and np.any(after != 1)


# ---------------------------------------------------------------- bad input

def test_bad_block_options_are_one_line_errors():
    for bad, match in ((dict(pos_embed="rope", hidden_size=36, num_heads=6), r"model.pos_embed='rope' needs a head "
                        r"dimension divisible by 4.*hidden_size 36 / num_heads 6 = 6"),
                       (dict(pos_embed="rope", hidden_size=28, num_heads=4), "divisible by 4"),  # head dim 7: odd
                       (dict(norm="batchnorm"), "model.norm='batchnorm' is not one of"),
                       (dict(mlp="relu"), "model.mlp='relu'"), (dict(qk_norm="yes"), "model.qk_norm='yes'"),
                       (dict(pos_embed="learned"), "model.pos_embed='learned'")):
        with pytest.raises(ValueError, match=match) as error:
            abstract_model(dict(TOY, **bad))
        assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="DiT's format holds only DiT's block"):  # export to DiT's checkpoints
        to_dit({}, dict(TOY, **MODERN))
    config = modern_block(get_config("runlocal"))
    config.model.update(hidden_size=60, num_heads=6)  # head dim 10: even, not a multiple of 4
    with pytest.raises(ValueError, match="model.pos_embed='rope' needs"):
        validate(config)  # before any data, encoder or model
