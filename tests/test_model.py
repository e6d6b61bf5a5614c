"""The DiT backbone: sizes, options and text conditioning (parity with diffusers is in test_convert)."""

import contextlib
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dit_jax.models.dit import DiT
from dit_jax.models.embeddings import sincos_2d, timestep_frequencies
from dit_jax.models.pretrained import abstract_model, build_model
from dit_jax.models.variants import VARIANTS, forward_macs, variant

TOY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=32, depth=2, num_heads=4, num_classes=10)
TEXT = dict(TOY, num_classes=0, text_dim=12, text_len=5)


def inputs(batch=3, seed=0):
    rng = np.random.RandomState(seed)
    return dict(
        x=jnp.asarray(rng.randn(batch, 8, 8, 4), jnp.float32),
        t=jnp.asarray(rng.randint(0, 1000, batch)),
        y=jnp.asarray(rng.randint(0, 10, batch)),
    )


def text_inputs(batch=3, seed=1):
    rng = np.random.RandomState(seed)
    mask = np.ones((batch, 5), bool)
    mask[0, 3:] = False
    return dict(
        text=jnp.asarray(rng.randn(batch, 5, 12), jnp.float32),
        text_mask=jnp.asarray(mask),
        pooled=jnp.asarray(rng.randn(batch, 12), jnp.float32),
    )


def randomize(model, seed=0, scale=0.2):
    """Replace every parameter by noise, so zero-initialised paths matter in a test."""
    state = nnx.state(model, nnx.Param)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    nnx.update(
        model,
        jax.tree.unflatten(
            tree, [scale * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        ),
    )
    return model


@pytest.fixture(scope="module")
def models_table():
    """`python -m dit_jax.models`'s table, built once: the parameter counts of every variant at full size."""
    from dit_jax.models.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main()
    return out.getvalue()


@pytest.mark.parametrize(
    "name,expected",
    [("DiT-S/2", 32_963_360), ("DiT-B/2", 130_512_416), ("DiT-L/2", 458_102_816), ("DiT-XL/2", 675_129_632)],
)
def test_parameter_counts_equal_reference(models_table, name, expected):
    """The paper's counts, as the table reports them from count_parameters(abstract_model(config))."""
    row = next(line.split() for line in models_table.splitlines() if line.startswith(name + " "))
    assert int(row[5].replace(",", "")) == expected


def test_forward_macs_match_paper():
    ref = dict(input_size=32, in_channels=4, learn_sigma=True)
    gmacs = {n: forward_macs(**ref, **VARIANTS[n]) / 1e9 for n in ("DiT-S/2", "DiT-B/2", "DiT-XL/2")}
    assert gmacs["DiT-XL/2"] == pytest.approx(118.6, abs=0.05)
    assert gmacs["DiT-B/2"] == pytest.approx(23.01, abs=0.05)
    assert gmacs["DiT-S/2"] == pytest.approx(6.06, abs=0.05)


def test_models_table_prints_every_variant(models_table):
    assert all(name in models_table for name in VARIANTS)
    assert "675,129,632" in models_table and "118.62" in models_table


def test_position_table_layout():
    # Column coordinate in the first half, row coordinate in the second, as DiT's meshgrid(w, h).
    table = sincos_2d(8, 2, 3)
    assert table.shape == (6, 8)
    np.testing.assert_allclose(table[1, :2], [np.sin(1.0), np.sin(1e-2)], rtol=1e-12)  # column 1
    np.testing.assert_allclose(table[1, 4:6], [0.0, 0.0], atol=1e-12)  # row 0
    np.testing.assert_allclose(table[3, 4:6], [np.sin(1.0), np.sin(1e-2)], rtol=1e-12)  # row 1


def test_timestep_frequencies():
    t = jnp.array([0.0, 10.0])
    emb = np.asarray(timestep_frequencies(t, dim=8))
    freqs = np.exp(-np.log(10000) * np.arange(4) / 4)
    np.testing.assert_allclose(emb[1], np.concatenate([np.cos(10 * freqs), np.sin(10 * freqs)]), rtol=1e-6)
    shifted = np.asarray(timestep_frequencies(t, dim=8, freq_shift=1.0))
    freqs = np.exp(-np.log(10000) * np.arange(4) / 3)
    np.testing.assert_allclose(
        shifted[1], np.concatenate([np.cos(10 * freqs), np.sin(10 * freqs)]), rtol=1e-6
    )


def test_reference_initialisation():
    model = build_model(dict(TOY, depth=1))
    zero = [
        model.blocks[0].adaLN_modulation.kernel,
        model.final_layer.adaLN_modulation.kernel,
        model.final_layer.linear.kernel,
        model.final_layer.linear.bias,
        model.blocks[0].attn.qkv.bias,
    ]
    assert all(float(jnp.abs(p[...]).max()) == 0 for p in zero)
    table = model.y_embedder.embedding_table[...]
    assert table.shape == (11, 32) and abs(float(table.std()) - 0.02) < 0.005
    # xavier-uniform bound sqrt(6 / (fan_in + fan_out)) for qkv (32 -> 96) and the patch conv (16 -> 32).
    qkv = np.asarray(model.blocks[0].attn.qkv.kernel[...])
    assert np.abs(qkv).max() <= np.sqrt(6 / 128) and np.abs(qkv).max() > 0.8 * np.sqrt(6 / 128)
    conv = np.asarray(model.x_embedder.proj.kernel[...])
    assert np.abs(conv).max() <= np.sqrt(6 / 48) and np.abs(conv).max() > 0.8 * np.sqrt(6 / 48)
    # adaLN-Zero: at init the model outputs exactly zero.
    assert float(jnp.abs(model(**inputs())).max()) == 0


def test_output_shape_and_learn_sigma():
    assert randomize(build_model(TOY))(**inputs()).shape == (3, 8, 8, 8)
    assert build_model(dict(TOY, learn_sigma=False))(**inputs()).shape == (3, 8, 8, 4)
    wide = build_model(dict(TOY, input_size=(8, 12)))
    assert wide(jnp.zeros((2, 8, 12, 4)), jnp.zeros(2, int), jnp.zeros(2, int)).shape == (2, 8, 12, 8)


def test_unpatchify_puts_each_token_in_its_patch():
    model = build_model(TOY)
    tokens = jnp.arange(2 * 16 * 32, dtype=jnp.float32).reshape(2, 16, 32)  # 4x4 grid, p=2, C=8
    img = np.asarray(model.unpatchify(tokens, 4, 4))
    # token (row 1, col 2) holds outputs in (p, q, c) order for pixels rows 2-3, cols 4-5
    np.testing.assert_array_equal(img[0, 2:4, 4:6, :], np.asarray(tokens[0, 1 * 4 + 2]).reshape(2, 2, 8))


def test_label_dropout_uses_null_class():
    model = randomize(build_model(TOY))
    args = inputs()
    forced = model(**args, drop=jnp.ones(3, bool))
    null = model(args["x"], args["t"], jnp.full(3, 10))
    np.testing.assert_allclose(forced, null, atol=1e-6)
    # training-time dropout (rate 0.1 in the reference) drops some labels, not all
    big = dict(x=jnp.zeros((400, 8, 8, 4)), t=jnp.full(400, 5), y=jnp.full(400, 3))
    out = model(**big, rng=jax.random.key(0))
    kept = model(**big)[0]
    dropped = np.mean(np.abs(np.asarray(out) - np.asarray(kept)).max(axis=(1, 2, 3)) > 1e-6)
    assert 0.05 < dropped < 0.16


def test_dropout_is_random_only_in_training():
    model = randomize(build_model(dict(TOY, dropout=0.5, class_dropout_prob=0.0)))
    a = model(**inputs())
    np.testing.assert_array_equal(a, model(**inputs()))
    assert float(jnp.abs(model(**inputs(), rng=jax.random.key(1)) - a).max()) > 1e-3


@pytest.mark.parametrize("policy", ["full", "dots", "dots_no_batch"])
def test_remat_keeps_values_and_gradients(policy):
    args = inputs()
    plain = randomize(build_model(TOY))
    remat = randomize(build_model(dict(TOY, remat=policy)))

    def loss(m):
        return jnp.mean(m(**args) ** 2)

    np.testing.assert_allclose(loss(plain), loss(remat), rtol=1e-6)
    g1, g2 = nnx.grad(loss)(plain), nnx.grad(loss)(remat)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g1, g2)


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_blocks_equal_the_loop(remat):
    """scan_blocks: same weights, same outputs and gradients, with dropout keys, text and per-block residuals."""
    config = dict(TEXT, num_classes=10, text_pooled=True, depth=3, dropout=0.1, remat=remat)
    loop, scanned = randomize(build_model(config)), randomize(build_model(dict(config, scan_blocks=True)))
    residuals = [None, jax.random.normal(jax.random.key(0), (3, 16, 32)), None]

    def loss(m):
        out = m(**inputs(), **text_inputs(), residuals=residuals, rng=jax.random.key(1))
        return jnp.mean(out**2)

    np.testing.assert_allclose(loss(loop), loss(scanned), rtol=1e-6)
    g1, g2 = nnx.grad(loss)(loop), nnx.grad(loss)(scanned)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g1, g2)


def test_bf16_compute_keeps_fp32_params():
    args = inputs()
    f32 = randomize(build_model(TOY))
    bf16 = randomize(build_model(dict(TOY, dtype=jnp.bfloat16)))
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    a, b = f32(**args), bf16(**args)
    assert b.dtype == jnp.float32
    assert float(jnp.abs(a - b).max()) < 0.05 * float(jnp.abs(a).max())
    assert float(jnp.abs(a - b).max()) > 0  # it really ran in bf16


def test_attention_backends_agree():
    args = dict(inputs(), **text_inputs())
    cfg = dict(TEXT, num_classes=10, text_pooled=True)
    ref = randomize(build_model(cfg))(**args)
    other = randomize(build_model(dict(cfg, attention="dot_product")))(**args)
    np.testing.assert_allclose(ref, other, atol=1e-5)
    with pytest.raises(ValueError, match="Unknown attention backend"):
        build_model(dict(cfg, attention="nope"))


def test_text_cross_attention_starts_as_identity():
    # The cross-attention output projection starts at zero, so text cannot change the output yet.
    fresh = build_model(TEXT)
    proj = [b.cross_attn.proj for b in fresh.blocks]
    assert all(not np.any(np.asarray(p.kernel[...])) and not np.any(np.asarray(p.bias[...])) for p in proj)
    model = randomize(build_model(TEXT))
    for block, zero in zip(model.blocks, proj):
        block.cross_attn.proj.kernel[...] = zero.kernel[...]
        block.cross_attn.proj.bias[...] = zero.bias[...]
    args = dict(inputs(), **text_inputs())
    np.testing.assert_allclose(model(**args), model(**dict(args, text=args["text"] + 1.0)), atol=1e-6)


def test_text_padding_is_ignored_and_text_matters():
    model = randomize(build_model(TEXT))
    args = dict(inputs(), **text_inputs())
    base = model(**args)
    padded = args["text"].at[0, 3:].set(100.0)  # only row 0 has padding (positions 3, 4)
    np.testing.assert_allclose(model(**dict(args, text=padded)), base, atol=1e-5)
    changed = model(**dict(args, text=args["text"].at[0, 1].add(1.0)))
    assert float(jnp.abs(changed - base)[0].max()) > 1e-3


@pytest.mark.parametrize("null_text", ["learned", "zeros"])
def test_dropped_caption_is_the_null_text(null_text):
    cfg = dict(TEXT, text_pooled=True, null_text=null_text)
    model = randomize(build_model(cfg))
    args = dict(inputs(), **text_inputs())
    dropped = model(**args, drop=jnp.ones(3, bool))
    tokens, pooled = model.text_embedder.null_text()
    null_tokens = np.broadcast_to(np.asarray(tokens), (3, 5, 12))
    null_pooled = np.broadcast_to(np.asarray(pooled), (3, 12))
    if null_text == "zeros":
        assert not np.any(null_tokens) and not np.any(null_pooled)
    explicit = model(
        args["x"],
        args["t"],
        text=jnp.asarray(null_tokens),
        text_mask=jnp.ones((3, 5), bool),
        pooled=jnp.asarray(null_pooled),
    )
    np.testing.assert_allclose(dropped, explicit, atol=1e-6)
    learned = {p for p in ("null_tokens", "null_pooled") if hasattr(model.text_embedder, p)}
    assert learned == ({"null_tokens", "null_pooled"} if null_text == "learned" else set())


def test_pooled_only_and_missing_condition_errors():
    model = randomize(build_model(dict(TEXT, text_cross_attention=False, text_pooled=True)))
    assert model.blocks[0].cross_attn is None
    args = dict(inputs(), **text_inputs())
    base = model(args["x"], args["t"], pooled=args["pooled"])
    assert float(jnp.abs(model(args["x"], args["t"], pooled=args["pooled"] + 1) - base).max()) > 1e-3
    with pytest.raises(ValueError, match="pass pooled"):
        model(args["x"], args["t"])
    with pytest.raises(ValueError, match="pass y"):
        build_model(TOY)(args["x"], args["t"])
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        DiT(**dict(TOY, num_heads=5), rngs=nnx.Rngs(0))


def test_block_residuals_are_added():
    model = randomize(build_model(TOY))
    args = inputs()
    zeros = [jnp.zeros((3, 16, 32))] * 2
    np.testing.assert_allclose(model(**args, residuals=zeros), model(**args), atol=1e-6)
    residual = jax.random.normal(jax.random.key(0), (3, 16, 32))
    assert float(jnp.abs(model(**args, residuals=[None, residual]) - model(**args)).max()) > 1e-3


def test_parameters_carry_logical_axes():
    model = abstract_model(dict(TEXT, text_pooled=True, num_classes=10))
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    flat = dict(nnx.to_flat_state(specs))
    assert flat[("blocks", 0, "mlp", "fc1", "kernel")].get_value() == jax.sharding.PartitionSpec(
        "embed", "mlp"
    )
    assert flat[("blocks", 0, "attn", "qkv", "kernel")].get_value() == jax.sharding.PartitionSpec(
        "embed", "heads"
    )
    shapes = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    for path, spec in flat.items():
        assert len(spec.get_value()) == len(shapes[path].shape), path
