"""Style and layout conditions in the DiT (GLIGEN's gated self-attention), each dropped alone, and composable
guidance, checked against closed-form Gaussian denoisers whose composition is a known Gaussian."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from dit_jax.diffusion import Schedule, beta_schedule, classifier_free_guidance
from dit_jax.diffusion import composition
from dit_jax.diffusion.composition import check_guidance, composed_model, parse_guidance, split_prompt
from dit_jax.diffusion.flow import T_SCALE
from dit_jax.diffusion.generate import generate, generate_flow, guided_model
from dit_jax.diffusion.guidance import composable_guidance
from dit_jax.models.dit import CONDITIONS
from dit_jax.models.layout import NUM_FREQS, box_coverage, check_layout, region_tokens
from dit_jax.models.pretrained import build_model, flat_weights, load_matching_weights, save_pretrained
from dit_jax.training import init_from
from dit_jax.training import sharding

K, TEXT_DIM, S, D = 3, 8, 4, 32
TEXT = dict(input_size=8, patch_size=4, in_channels=3, hidden_size=D, depth=1, num_heads=2, num_classes=3,
            text_dim=TEXT_DIM, text_len=5, text_pooled=True, learn_sigma=False)
FULL = dict(TEXT, num_styles=S, layout_max_boxes=K)
STYLE_ONLY = dict(TEXT, num_styles=S)


def inputs(batch=2):
    keys = jax.random.split(jax.random.PRNGKey(7), 6)
    boxes = jnp.sort(jax.random.uniform(keys[0], (batch, K, 2, 2)), axis=2)  # corners (x0, y0) <= (x1, y1)
    return dict(y=jnp.arange(batch) % 3, text=jax.random.normal(keys[1], (batch, 5, TEXT_DIM)),
                text_mask=jnp.arange(5)[None] < jnp.array([5, 3])[:batch, None],
                pooled=jax.random.normal(keys[2], (batch, TEXT_DIM)), style=jnp.arange(batch) % S + 1,
                layout_boxes=boxes.reshape(batch, K, 4), layout_mask=jnp.array([[1, 1, 0], [1, 0, 0]], bool)[:batch],
                layout_embeddings=jax.random.normal(keys[3], (batch, K, TEXT_DIM)))


X = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 3))
T = jnp.array([10, 700])


def open_gates(model, value=0.7, seed=3):
    """Nonzero alphas and weights in the zero-initialised layers, so that no path hides behind a zero."""
    for i, block in enumerate(model.blocks):
        if block.fuser is not None:
            block.fuser.alpha.set_value(jnp.asarray(value + 0.1 * i))
        for layer in (block.adaLN_modulation, block.cross_attn.proj):
            layer.kernel.set_value(0.05 * jax.random.normal(jax.random.PRNGKey(seed + i), layer.kernel.shape))
    model.final_layer.linear.kernel.set_value(
        0.05 * jax.random.normal(jax.random.PRNGKey(seed), model.final_layer.linear.kernel.shape))
    return model


def null_inputs(model, kw, name):
    """`kw` with condition `name` replaced by its null value, spelled out."""
    b = kw["y"].shape[0]
    if name == "class":
        return dict(kw, y=jnp.full((b,), model.num_classes))
    if name == "style":
        return dict(kw, style=jnp.full((b,), model.num_styles))
    if name == "layout":
        return dict(kw, layout_mask=jnp.zeros_like(kw["layout_mask"]))
    tokens, pooled = model.text_embedder.null_text()
    return dict(kw, text=jnp.broadcast_to(tokens, kw["text"].shape), text_mask=jnp.ones_like(kw["text_mask"]),
                pooled=jnp.broadcast_to(pooled, kw["pooled"].shape))


def with_drops(kw, names=(), everything=False):
    b = kw["y"].shape[0]
    return dict(kw, drop=jnp.full((b,), everything), drops={n: jnp.full((b,), n in names) for n in CONDITIONS})


run = nnx.jit(lambda model, x, t, kw: model(x, t, **kw))


@pytest.fixture(scope="module")
def full():
    """The layout + style model (gates open) and its outputs, all variants in one batched call: as given, each
    condition dropped, each condition's null spelled out, everything dropped, masked boxes holding NaN."""
    model = open_gates(build_model(FULL))
    kw = inputs()
    variants = {"given": with_drops(kw), "all": with_drops(kw, everything=True)}
    for name in CONDITIONS:
        variants[f"drop {name}"] = with_drops(kw, [name])
        variants[f"null {name}"] = with_drops(null_inputs(model, kw, name))
    variants["nan"] = with_drops(dict(kw, layout_boxes=kw["layout_boxes"].at[:, 2].set(jnp.nan),
                                      layout_embeddings=kw["layout_embeddings"].at[:, 2].set(jnp.nan)))
    batch = jax.tree.map(lambda *v: jnp.concatenate(v), *variants.values())
    n = len(variants)
    out = run(model, jnp.concatenate([X] * n), jnp.concatenate([T] * n), batch)
    return model, dict(zip(variants, np.split(np.asarray(out), n)))


def test_closed_gates_change_nothing_and_a_text_model_initialises_a_layout_one(tmp_path, full):
    """init_from a model without layout: its weights load into a layout model, the new layers keep their
    init, and with alpha = 0 the layout path adds exactly nothing, whatever the boxes."""
    full_model, outputs = full
    base = open_gates(build_model(STYLE_ONLY), seed=5)
    save_pretrained(base, STYLE_ONLY, str(tmp_path / "export"))
    model = nnx.clone(full_model)
    fresh = flat_weights(model)
    weights = init_from.read(str(tmp_path), FULL)
    init_from.check_weights(str(tmp_path), nnx.eval_shape(lambda: build_model(FULL)), weights)
    load_matching_weights(model, weights)
    loaded = flat_weights(model)
    assert set(loaded) - set(weights) == {n for n in fresh if n.startswith("grounding.") or ".fuser." in n}
    for name in set(loaded) - set(weights):
        np.testing.assert_array_equal(loaded[name], fresh[name])
    kw = with_drops(inputs())
    model.blocks[0].fuser.alpha.set_value(jnp.asarray(0.0))
    want = run(base, X, T, {k: v for k, v in kw.items() if not k.startswith("layout")})
    np.testing.assert_array_equal(run(model, X, T, kw), want)
    model.blocks[0].fuser.alpha.set_value(jnp.asarray(0.5))
    assert np.abs(run(model, X, T, kw) - want).max() > 1e-4  # an open gate does change it
    # A weight the new model lacks, or of another shape, is refused before anything compiles.
    for other in (dict(TEXT, num_classes=0), dict(STYLE_ONLY, num_classes=5)):
        with pytest.raises(ValueError, match="init_from=.*num_classes"):
            init_from.read(str(tmp_path), other)


def test_layout_gates_start_where_the_config_says():
    """Closed by default (GLIGEN, to add layout to a trained model); layout_gate_init opens them for a DiT
    trained from scratch."""
    for init, want in ((None, 0.0), (1.0, 1.0)):
        model = build_model(FULL if init is None else dict(FULL, layout_gate_init=init))
        assert [float(block.fuser.alpha[...]) for block in model.blocks] == [want] * FULL["depth"]


def test_guidance_knows_the_models_conditions():
    assert composition.CONDITIONS == CONDITIONS


@pytest.mark.parametrize("name", CONDITIONS)
def test_each_condition_dropped_alone_equals_its_null(full, name):
    """drops={name} is exactly that condition's null with the others kept, and changes the output."""
    _, out = full
    np.testing.assert_array_equal(out[f"drop {name}"], out[f"null {name}"])
    assert np.abs(out[f"drop {name}"] - out["given"]).max() > 1e-4
    assert np.abs(out[f"drop {name}"] - out["all"]).max() > 1e-4  # the other conditions still act


def test_training_drops_each_condition_on_its_own(full):
    """With rng, a condition of dropout probability 1 (the others 0) is its null; two pairs, one call each."""
    full_model, out = full
    pairs, models = (("class", "style"), ("text", "layout")), []
    for names in pairs:
        model = nnx.clone(full_model)
        model.y_embedder.dropout_prob = float("class" in names)
        model.text_embedder.dropout_prob = float("text" in names)
        model.style_dropout_prob, model.layout_dropout_prob = float("style" in names), float("layout" in names)
        models.append(model)
    kw = with_drops(inputs())
    trained = nnx.jit(lambda ms, kw: [m(X, T, **kw, rng=jax.random.PRNGKey(5)) for m in ms])(models, kw)
    for names, got in zip(pairs, trained):
        # Both nulls spelled out, from the fixture's variants: the first condition's null with the second's
        # dropped through `drops` (shown equal to its null by the test above).
        both = with_drops(null_inputs(full_model, kw, names[0]), [names[1]])
        np.testing.assert_allclose(got, run(full_model, X, T, both), atol=1e-6)


def test_layout_mask_excludes_boxes_and_phrases(full):
    """A masked box's coordinates and phrase (NaN here) do not reach the output."""
    _, out = full
    np.testing.assert_array_equal(out["nan"], out["given"])


def test_box_coverage_is_the_share_of_each_patch_a_box_covers():
    """Against a rasterised oracle: each box drawn on a 240x240 canvas, averaged over every patch of a 4x3 grid;
    a masked box covers nothing, and a patch under two boxes gets each token by its share."""
    boxes = np.array([[[0.1, 0.0, 0.55, 0.4], [0.5, 0.3, 1.0, 0.9], [0.0, 0.0, 1.0, 1.0]]], np.float32)
    keep = np.array([[True, True, False]])
    got = np.asarray(box_coverage(jnp.asarray(boxes), jnp.asarray(keep), 4, 3))  # 4 rows, 3 columns of patches
    px = (np.arange(240) + 0.5) / 240
    want = np.zeros((4 * 3, 3))
    for k, (x0, y0, x1, y1) in enumerate(boxes[0]):
        drawn = ((px[:, None] >= y0) & (px[:, None] < y1) & (px[None] >= x0) & (px[None] < x1)) * keep[0, k]
        want[:, k] = drawn.reshape(4, 60, 3, 80).mean(axis=(1, 3)).reshape(-1)
    np.testing.assert_allclose(got[0], want, atol=1e-5)
    tokens = jnp.asarray(np.random.default_rng(0).standard_normal((1, 3, 5)), jnp.float32)
    regions = np.asarray(region_tokens(jnp.asarray(got), tokens))[0]
    np.testing.assert_allclose(regions[9], 0.0, atol=1e-7)  # row 3, column 0: outside both boxes
    assert 0 < want[0, 0] < 1 and want[0, 1] == 0
    np.testing.assert_allclose(regions[0], want[0, 0] * tokens[0, 0], rtol=1e-5)  # partly under box 0 alone
    both = want[4, :2] / max(want[4].sum(), 1.0)  # row 1, column 1: under boxes 0 and 1
    assert both.min() > 0
    np.testing.assert_allclose(regions[4], both @ np.asarray(tokens[0, :2]), rtol=1e-5)


def test_layout_regions_act_only_through_the_layout(full):
    """layout_regions adds no parameter; with no boxes (the layout dropped) or closed gates the model is the
    plain layout model's, masked boxes (NaN) still reach nothing, and with boxes it differs;
    scan_blocks gives the loop's output."""
    full_model, out = full
    kw = inputs()
    nan = dict(kw, layout_boxes=kw["layout_boxes"].at[:, 2].set(jnp.nan),
               layout_embeddings=kw["layout_embeddings"].at[:, 2].set(jnp.nan))
    variants = [with_drops(kw), with_drops(kw, ["layout"]), with_drops(nan)]
    batch = jax.tree.map(lambda *v: jnp.concatenate(v), *variants)
    models = []
    for options in (dict(), dict(scan_blocks=True)):
        model = build_model(dict(FULL, layout_regions=True), **options)
        nnx.update(model, nnx.state(full_model))
        models.append(model)
    closed = nnx.clone(models[0])
    closed.blocks[0].fuser.alpha.set_value(jnp.asarray(0.0))
    plain_closed = nnx.clone(full_model)
    plain_closed.blocks[0].fuser.alpha.set_value(jnp.asarray(0.0))
    x3, t3 = jnp.concatenate([X] * 3), jnp.concatenate([T] * 3)
    regions, scanned, closed_out, plain_closed_out = (np.split(np.asarray(o), 3) for o in nnx.jit(
        lambda ms: [m(x3, t3, **batch) for m in ms])([*models, closed, plain_closed]))
    # Equal up to the float reordering of another compiled program; the regions' own effect is 1000x that.
    np.testing.assert_allclose(regions[1], out["drop layout"], atol=1e-6)
    np.testing.assert_array_equal(regions[2], regions[0])
    assert np.abs(regions[0] - out["given"]).max() > 1e-3
    np.testing.assert_allclose(closed_out[0], plain_closed_out[0], atol=1e-6)
    np.testing.assert_allclose(scanned[0], regions[0], atol=2e-5)


def test_parameter_counts(full):
    """Per block the gated self-attention (qkv, proj, alpha); once the grounding MLP and the style table."""
    full_model, _ = full
    count = lambda m: sum(x.size for x in jax.tree.leaves(nnx.state(m, nnx.Param)))
    fuser = 4 * D * D + 4 * D + 1
    grounding = (4 * 2 * NUM_FREQS + TEXT_DIM) * D + D + 2 * (D * D + D)
    style = (S + 1) * D
    assert count(full_model.blocks[0].fuser) == fuser
    assert count(full_model.grounding) == grounding
    assert count(full_model.style_embedder) == style
    text_model = nnx.eval_shape(lambda: build_model(dict(TEXT, depth=2)))
    layout_model = nnx.eval_shape(lambda: build_model(dict(FULL, depth=2)))
    assert count(layout_model) - count(text_model) == 2 * fuser + grounding + style


@pytest.mark.parametrize("options", [dict(scan_blocks=True, remat="full", attention="dot_product"),
                                     dict(attention="pallas_flash"), dict(attention="splash")])
def test_scan_remat_and_attention_backends(full, options):
    """scan_blocks with remat, and every other attention backend that runs on CPU (dot_product; the Pallas
    kernels interpreted: the GPU one for pallas_flash, the TPU one for splash), give the loop's XLA output."""
    full_model, out = full
    model = build_model(FULL, **options)
    nnx.update(model, nnx.state(full_model))
    np.testing.assert_allclose(run(model, X, T, with_drops(inputs())), out["given"], atol=2e-5)


def test_every_new_parameter_is_sharded_by_the_rules():
    """Each parameter names a logical axis a dimension; on an 8-device mesh the gated attention's
    weights are placed as the self-attention's are."""
    params = nnx.state(nnx.eval_shape(lambda: build_model(FULL)), nnx.Param)
    for path, var in nnx.to_flat_state(params):
        names = var.get_metadata().get("out_sharding")
        assert names is not None and len(names) == len(var.shape), path
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    placed = sharding.param_shardings(params, mesh)
    spec = lambda var: var.get_value().spec
    block = placed["blocks"][0]
    assert spec(block["fuser"]["attn"]["qkv"]["kernel"]) == spec(block["attn"]["qkv"]["kernel"]) == P("fsdp", "tensor")
    assert spec(placed["grounding"]["fc2"]["kernel"]) == P("fsdp", "tensor")
    assert spec(placed["style_embedder"]["embedding_table"]) == P(None, "fsdp")


def test_one_term_is_classifier_free_guidance_exactly(full):
    """Composed guidance with the text term alone is CFG, bit for bit, through a sampler, when the model's
    other conditions are at their nulls; and its mix of two terms with a negative weight is the formula."""
    model, _ = full
    kw = dict(inputs(), y=jnp.full((2,), 3), style=jnp.full((2,), S), layout_mask=jnp.zeros((2, K), bool))
    both = nnx.jit(lambda m: (composed_model(m, kw, {"text": 3.0})(X, T), guided_model(m, kw, 2, 3.0)(X, T)))
    composed, cfg = both(model)
    np.testing.assert_array_equal(composed, cfg)

    fn = lambda x, t, c: x * c["a"][:, None] + c["b"][:, None]  # a stand-in model, linear in its condition
    c1, c2, null = (dict(a=jnp.full((2,), a), b=jnp.full((2,), b)) for a, b in ((2.0, 1.0), (-1.0, 3.0), (0.5, 0.0)))
    x = jnp.ones((2, 4))
    got = composable_guidance(fn, [c1, c2], null, [2.0, -1.5])(x, jnp.zeros(2))
    u = 0.5 * x
    np.testing.assert_allclose(got, u + 2.0 * ((2 * x + 1) - u) - 1.5 * ((-x + 3) - u), rtol=1e-6)
    np.testing.assert_array_equal(composable_guidance(fn, [c1], null, [4.0], channels=2)(x, jnp.zeros(2)),
                                  classifier_free_guidance(fn, c1, null, 4.0, channels=2)(x, jnp.zeros(2)))


# The oracle: each condition's data is a Gaussian, so every denoiser is closed form. Conditions A and B tilt
# the null's mean (the same covariance), C changes the mean and variance of dim 2, independent of dims 0-1 in
# every density; then the composed score at every noise level is the noised product's (in general composed
# noisy scores are not: Du et al. 2023), and the sampler must draw from
#   p_null (p_A / p_null)^wA (p_B / p_null)^wB (p_C / p_null),  a Gaussian with the mean and covariance below.
NULL_COV = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.0], [0.0, 0.0, 1.0]])
C_COV = np.diag([1.0, 1.0, 0.25]) + np.array([[0, 0.5, 0], [0.5, 0, 0], [0, 0, 0]])
GAUSSIANS = {None: (np.zeros(3), NULL_COV), "class": (np.array([0.5, -0.5, 0.0]), NULL_COV),
             "style": (np.array([0.3, 0.3, 0.0]), NULL_COV), "layout": (np.array([0.0, 0.0, 1.5]), C_COV)}
WEIGHTS = {"class": 2.0, "style": -1.0, "layout": 1.0}
PRODUCT_MEAN = np.array([2 * 0.5 - 0.3, 2 * -0.5 - 0.3, 1.5])
PRODUCT_COV = C_COV


def gaussian_model(kind, schedule=None):
    """model(x, t, drops=...) -> the exact eps (kind="eps") or flow velocity (kind="flow") of the Gaussian of
    the one condition not dropped (all dropped: the null's)."""
    acp = None if schedule is None else jnp.asarray(schedule.alphas_cumprod, jnp.float32)

    def model(x, t, drops, **_):
        t = t[0]  # the samplers step every row at one time
        if kind == "eps":
            a, s = jnp.sqrt(acp[t]), jnp.sqrt(1 - acp[t])
        else:
            s = t / T_SCALE
            a = 1 - s
        out = 0.0
        flat = x.reshape(x.shape[0], 3)
        for name, (mean, cov) in GAUSSIANS.items():
            active = jnp.all(jnp.stack([drops[n] for n in CONDITIONS if n != name]), axis=0)
            if name is not None:
                active = active & ~drops[name]
            r = (flat - a * mean) @ jnp.linalg.inv(a**2 * cov + s**2 * jnp.eye(3))  # Cov_t^-1 (x - a mu), symmetric
            eps = s * r
            value = eps if kind == "eps" else eps - (mean + a * r @ cov)  # eps - E[x0 | x]
            out = out + jnp.where(active[:, None], value, 0.0)
        return out.reshape(x.shape)
    return model


@pytest.mark.parametrize("sampler,steps", [("ddpm", 250), ("dpmpp_2m", 50), ("heun", 40)])
def test_composed_sampler_draws_from_the_product_of_gaussians(sampler, steps):
    n = 4000
    schedule = Schedule(beta_schedule("linear", 1000))
    cond = dict(y=jnp.zeros((n,), jnp.int32))
    shape, key = (n, 1, 1, 3), jax.random.PRNGKey(0)
    if sampler == "heun":
        x = jax.jit(lambda: generate_flow(gaussian_model("flow"), cond, shape, key, sampler=sampler, steps=steps,
                                          guidance=WEIGHTS))()
    else:
        x = jax.jit(lambda: generate(gaussian_model("eps", schedule), cond, shape, key, schedule, sampler=sampler,
                                     steps=steps, learn_sigma=False, guidance=WEIGHTS))()
    x = np.asarray(x).reshape(n, 3)
    np.testing.assert_allclose(x.mean(0), PRODUCT_MEAN, atol=0.07)
    np.testing.assert_allclose(np.cov(x.T), PRODUCT_COV, atol=0.08)


def test_text_parts_are_separate_terms():
    """'a AND b': one text term each (weight 0 where a prompt has fewer parts), in one batched call."""
    calls = []

    def model(x, t, text, drops, **_):
        calls.append(x.shape[0])
        return x * 0 + jnp.where(drops["text"], 0.0, text[:, 0])[:, None]

    text = jnp.array([[[1.0], [10.0]], [[2.0], [20.0]]])  # (B=2, J=2 parts, L=1 -> the value)
    cond = dict(text=text, text_parts=jnp.array([[True, True], [True, False]]))
    out = composed_model(model, cond, {"text": 2.0})(jnp.zeros((2, 1)), jnp.zeros(2))
    np.testing.assert_allclose(out[:, 0], [2 * 1 + 2 * 10, 2 * 2 + 0])
    assert calls == [6]  # 2 parts + the null, batch 2: one call
    assert split_prompt("a sneaker AND a bag") == ["a sneaker", "a bag"]


@pytest.mark.parametrize("spec,match", [("text=4,colour=2", "Unknown guidance condition 'colour'"),
                                        ("text=four", "not a number"), ("text=nan", "not a number"),
                                        ("text", "CONDITION=WEIGHT"), ("text=1,text=2", "twice")])
def test_bad_guidance_is_one_line(spec, match):
    with pytest.raises(ValueError, match=match) as e:
        parse_guidance(spec)
    assert "\n" not in str(e.value)


def test_bad_conditions_are_one_line():
    assert parse_guidance("text=4,style=-3,layout=2,class=2") == dict(text=4.0, style=-3.0, layout=2.0, **{"class": 2.0})
    with pytest.raises(ValueError, match="no style path"):
        check_guidance({"text": 4.0, "style": 1.0}, TEXT)
    check_guidance({"style": 1.0, "layout": 2.0}, FULL)
    for boxes, match in (([[0.2, 0.2, 1.2, 0.5]], "outside the image"), ([[0.5, 0.2, 0.5, 0.6]], "no area"),
                         ([[-0.1, 0, 0.5, 0.5]], "outside"), ([[0, 0, 0.5, 0.5]] * (K + 1), "at most 3")):
        with pytest.raises(ValueError, match=match) as e:
            check_layout(boxes, None, K)
        assert "\n" not in str(e.value)
    check_layout([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], None, K)
    with pytest.raises(ValueError, match="layout_max_boxes"):
        build_model(dict(TEXT, text_dim=0, layout_max_boxes=2))
    with pytest.raises(ValueError, match="layout_regions.*layout_max_boxes > 0") as e:
        build_model(dict(TEXT, layout_regions=True))
    assert "\n" not in str(e.value)


def test_sample_conditions_read_and_encode(monkeypatch):
    """`sample`'s --style, --box, --guidance and AND prompts: checked before anything loads, then encoded as
    the model reads them (a stand-in encoder)."""
    from dit_jax import sampling
    from dit_jax.models.layout import parse_box
    from dit_jax.text import encoders
    setup = sampling.Setup(None, FULL, dict(encoder="minilm"), None, Schedule(beta_schedule("linear", 10)), "eps",
                           [], style_names=["plain", "inverted", "red", "outline"])
    boxes = [parse_box("0.1,0.2,0.5,0.9:a sneaker"), parse_box("0.5,0,1,0.5: a bag")]
    comp = sampling.read_composition(setup, ["a sneaker AND a bag", "a hat"], "Inverted", boxes, "text=4,style=-2")
    assert comp == sampling.Composition(1, tuple(boxes), {"text": 4.0, "style": -2.0})
    assert sampling.read_composition(setup, ["a hat"], "3").style == 3
    for args, match in (((["x"], "sepia"), "Unknown style 'sepia'.*plain, inverted"), ((["x"], "4"), "Unknown style"),
                        ((["a AND b"], None, [], "style=2"), "pass --guidance with a text weight"),
                        ((["x"], None, [], "colour=1"), "Unknown guidance condition"),
                        ((["x"], None, [parse_box("0,0,1,1:a")] * 4), "at most 3")):
        with pytest.raises(ValueError, match=match) as e:
            sampling.read_composition(setup, *args)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no style path"):
        sampling.read_composition(dataclasses.replace(setup, model_config=TEXT), ["x"], "plain")
    for spec in ("0.1,0.2,0.5:x", "0.1,0.2,0.5,0.9", "a,b,c,d:x", "0.5,0.2,0.1,0.9:x", "0,0,1,1.5:x"):
        with pytest.raises(ValueError):
            parse_box(spec)

    def fake(text, captions, encoder=None):
        codes = np.array([float(len(c)) for c in captions], np.float32)
        return dict(text=np.broadcast_to(codes[:, None, None], (len(captions), 5, TEXT_DIM)).copy(),
                    text_mask=np.ones((len(captions), 5), bool),
                    pooled=np.broadcast_to(codes[:, None], (len(captions), TEXT_DIM)).copy())
    monkeypatch.setattr(encoders, "text_conditions", fake)
    cond = sampling.encode_conditions(setup, ["a sneaker AND a bag", "a hat"], [0, 1], comp)
    assert cond["text"].shape == (2, 2, 5, TEXT_DIM) and cond["pooled"][:, :, 0].tolist() == [[9, 5], [5, 5]]
    assert cond["text_parts"].tolist() == [[True, True], [True, False]]
    assert cond["style"].tolist() == [1, 1] and cond["y"].tolist() == [0, 1]
    assert cond["layout_mask"].tolist() == [[True, True, False]] * 2
    np.testing.assert_allclose(cond["layout_boxes"][1, :2], [[0.1, 0.2, 0.5, 0.9], [0.5, 0, 1, 0.5]])
    assert cond["layout_embeddings"][0, :, 0].tolist() == [9, 5, 0]  # "a sneaker", "a bag", none
    plain = sampling.encode_conditions(setup, ["a hat"], None)  # no --style or --box: the nulls
    assert plain["style"].tolist() == [S] and not plain["layout_mask"].any() and plain["text"].shape == (1, 5, TEXT_DIM)
    # No --class for a text model trained with class dropout: the null class, as the style without --style.
    assert sampling.read_conditions(setup, ["a hat"], []) == (["a hat"], None) and plain["y"].tolist() == [3]
    no_null = dataclasses.replace(setup, model_config=dict(FULL, class_dropout_prob=0.0))
    with pytest.raises(ValueError, match="class-conditional: pass --class"):
        sampling.read_conditions(no_null, ["a hat"], [])


def test_init_from_a_text_run_then_a_step_reads_style_and_layout(tmp_path):
    """config.init_from a text model's export into a style + layout model: its weights carried, the new ones at
    their init; the train loss passes the batch's style and layout keys to the model (which refuses to run
    without them), traced without compiling."""
    from configs.tiny import get_config
    from dit_jax.training import trainer as trainer_lib
    config = get_config("runlocal")
    config.batch_size, config.mesh = 8, dict(data=1, fsdp=1, tensor=1)
    config.model.update(hidden_size=32, depth=1, patch_size=4, num_heads=2, scan_blocks=False)
    data_kwargs = dict(input_size=8, in_channels=3, text_dim=TEXT_DIM, text_len=5)
    text_kwargs = {**config.model.to_dict(), **data_kwargs}
    save_pretrained(open_gates(build_model(text_kwargs)), text_kwargs, str(tmp_path / "export"))
    config.init_from = str(tmp_path)
    config.model.update(num_styles=S, layout_max_boxes=K)
    mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
    trainer = trainer_lib.create(config, {**config.model.to_dict(), **data_kwargs}, mesh)
    state = trainer.init()
    params = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in nnx.to_flat_state(state["params"])}
    saved = flat_weights(open_gates(build_model(text_kwargs)))
    for name, value in saved.items():
        np.testing.assert_array_equal(params[name], value, err_msg=name)
    assert params["blocks.0.fuser.alpha"] == 0 and "style_embedder.embedding_table" in params
    rng = np.random.RandomState(0)
    kw = inputs(2)
    batch = dict(image=rng.uniform(-1, 1, (8, 8, 8, 3)).astype(np.float32),
                 **{k: np.concatenate([np.asarray(v)] * 4) for k, v in kw.items() if k != "y"})
    loss = lambda b: trainer_lib.loss_fn(trainer, state["params"], b, jax.random.PRNGKey(0))
    assert jax.eval_shape(loss, batch).shape == ()
    with pytest.raises(ValueError, match="reads a style label"):
        jax.eval_shape(loss, {k: v for k, v in batch.items() if k != "style"})
