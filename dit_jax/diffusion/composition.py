"""Composable guidance over the DiT's conditions: a weight for each of text, style, layout and class.

  eps = eps(null) + sum_i w_i (eps(c_i) - eps(null))        (Liu et al. 2022, guidance.composable_guidance)

Each term c_i is the null condition with only condition i set; a prompt
"a sneaker AND a bag" gives one text term per part, each with the text
weight. All terms and the null run in one batched model call. The spec is
what `sample --guidance` takes: "text=4,style=3,layout=2,class=2".
"""

import math

import jax
import jax.numpy as jnp

from dit_jax.diffusion.guidance import composable_guidance
AND = " AND "
# The conditions the DiT can drop one by one (models/dit.py CONDITIONS; diffusion does not import models).
CONDITIONS = ("text", "style", "layout", "class")
TEXT_KEYS = ("text", "text_mask", "pooled")


def parse_guidance(spec):
    """"text=4,style=-1" -> {"text": 4.0, "style": -1.0}, with a one-line error for a bad item."""
    weights = {}
    for item in (spec or "").split(","):
        name, has_value, value = item.strip().partition("=")
        if not has_value:
            raise ValueError(f"Bad guidance item {item!r} in {spec!r}: write CONDITION=WEIGHT, e.g. "
                             "--guidance=text=4,style=3.")
        if name not in CONDITIONS:
            raise ValueError(f"Unknown guidance condition {name!r} in {spec!r}; choose from {', '.join(CONDITIONS)}.")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise ValueError(f"Guidance weight {name}={value!r} is not a number: write e.g. {name}=3 or {name}=-1.")
        if name in weights:
            raise ValueError(f"Guidance condition {name!r} is given twice in {spec!r}.")
        weights[name] = weight
    return weights


def split_prompt(prompt):
    """"a sneaker AND a bag" -> ["a sneaker", "a bag"]: one text term each."""
    parts = [p.strip() for p in prompt.split(AND)]
    if not all(parts):
        raise ValueError(f"Prompt {prompt!r} has an empty part around {AND.strip()!r}: write 'a sneaker AND a bag'.")
    return parts


def model_conditions(model_config):
    """The conditions a DiT (its config.json kwargs) has a path for."""
    c = model_config
    has = dict(text=bool(c.get("text_dim")), style=bool(c.get("num_styles")),
               layout=bool(c.get("layout_max_boxes")), **{"class": bool(c.get("num_classes", 1000))})
    return tuple(name for name in CONDITIONS if has[name])


def check_guidance(weights, model_config):
    """A guidance key the model has no path for is a one-line error."""
    known = model_conditions(model_config)
    for name in weights:
        if name not in known:
            raise ValueError(f"--guidance names {name!r} but this model has no {name} path (it reads "
                             f"{', '.join(known) or 'no condition'}): drop {name}=... from --guidance.")


def with_drops(inputs, keep, batch):
    """The model's inputs with every condition but `keep` (None: none) dropped to its null."""
    return dict(inputs, drops={name: jnp.full((batch,), name != keep) for name in CONDITIONS})


def composed_model(model, cond, weights, channels=None):
    """`fn(x, t)` for the samplers: composable guidance of `model(x, t, **inputs)` with `weights` {condition: w}.

    `cond` holds the model's inputs (batch B first). With `text_parts` (B, J) (which AND parts are real), the
    text inputs carry the J parts on axis 1 (text (B, J, L, D), text_mask (B, J, L), pooled (B, J, D)) and
    each part is a text term of weight w_text (0 where a prompt has fewer parts).
    """
    parts = cond.get("text_parts")
    batch = jax.tree_util.tree_leaves(cond)[0].shape[0]
    base = {k: v for k, v in cond.items() if k != "text_parts"}

    def inputs(j):
        if parts is None:
            return base
        return dict(base, **{k: base[k][:, j] for k in TEXT_KEYS if k in base})

    terms, term_weights = [], []
    for name, w in weights.items():
        for j in range(1 if parts is None or name != "text" else parts.shape[1]):
            terms.append(with_drops(inputs(j), name, batch))
            term_weights.append(w if parts is None or name != "text" else w * jnp.asarray(parts[:, j], jnp.float32))
    return composable_guidance(lambda x, t, c: model(x, t, **c), terms, with_drops(inputs(0), None, batch),
                               term_weights, channels)
