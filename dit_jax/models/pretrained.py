"""Our own weights format: a directory with config.json (the DiT kwargs) and model.safetensors.

This is what convert writes, training exports and sampling loads. Only
safetensors are read, so loading never executes code from the file.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dit_jax.models.dit import DiT
from dit_jax.utils import paths

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"

# The style and layout paths' model keys (models/dit.py; a video DiT has neither).
CONDITION_KEYS = ("num_styles", "style_dropout_prob", "layout_max_boxes", "layout_dropout_prob", "layout_gate_init",
                  "layout_regions")


def export_directory(path, key):
    """The export directory of a finished run (RUN/export) or an export itself; a one-line error naming the
    config `key` that gave `path` otherwise."""
    path = str(path)
    for directory in (paths.join(path, "export"), paths.join(path)):
        if all(paths.path(directory).joinpath(f).is_file() for f in (CONFIG_FILE, WEIGHTS_FILE)):
            return directory
    raise FileNotFoundError(f"{key}={path!r} holds no {CONFIG_FILE} + {WEIGHTS_FILE} (nor under export/): "
                            "pass a finished training workdir or an export directory.")



def first_difference(ours, theirs, keys=None, skip=()):
    """(key, our value, their value) for the first DiT argument (sorted; of `keys` if given, all of them if not,
    less `skip`) where two model configs differ, an absent key read as the DiT's default and lists as tuples;
    None where they agree."""
    defaults = {k: p.default for k, p in inspect.signature(DiT.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    for key in sorted(defaults if keys is None else keys):
        if key in skip or key not in defaults:
            continue
        a, b = ours.get(key, defaults[key]), theirs.get(key, defaults[key])
        if (list(a) != list(b)) if isinstance(a, (list, tuple)) else a != b:
            return key, a, b
    return None

def build_model(config, seed=0, **overrides):
    """A DiT from its kwargs (plain JSON values; dtype names such as "bfloat16" allowed), the noise-aware
    classifier when they say `"model": "classifier"` (models/classifier.py), a multi-view DiT when they say
    `multiview` (models/multiview.py; `frames` views), or a video DiT when they give `frames` (models/video.py;
    frames 0 or absent: an image model, the video and multi-view keys ignored)."""
    kw = {**config, **overrides}
    for key in ("dtype", "param_dtype"):
        if isinstance(kw.get(key), str):
            kw[key] = jnp.dtype(kw[key])
    if kw.pop("model", "dit") == "classifier":
        from dit_jax.models.classifier import Classifier  # pylint: disable=import-outside-toplevel
        return Classifier(**kw, rngs=nnx.Rngs(seed))
    from dit_jax.models.multiview import MULTIVIEW_KEYS  # pylint: disable=import-outside-toplevel
    if kw.get("multiview"):  # a multi-view DiT: its views are the data's frames
        from dit_jax.models.multiview import MultiViewDiT  # pylint: disable=import-outside-toplevel
        from dit_jax.models.video import VIDEO_KEYS  # pylint: disable=import-outside-toplevel
        views = kw.get("frames")
        kw = {k: v for k, v in kw.items() if k not in VIDEO_KEYS + CONDITION_KEYS and k != "multiview"}
        return MultiViewDiT(views=views, **kw, rngs=nnx.Rngs(seed))
    kw = {k: v for k, v in kw.items() if k not in MULTIVIEW_KEYS}
    if kw.get("frames"):
        from dit_jax.models.video import VideoDiT  # pylint: disable=import-outside-toplevel
        if kw.get("num_styles") or kw.get("layout_max_boxes"):
            raise ValueError("A video DiT has no style or layout path: set model.num_styles=0 and "
                             "model.layout_max_boxes=0.")
        return VideoDiT(**{k: v for k, v in kw.items() if k not in CONDITION_KEYS}, rngs=nnx.Rngs(seed))
    from dit_jax.models.video import VIDEO_KEYS  # pylint: disable=import-outside-toplevel
    kw = {k: v for k, v in kw.items() if k not in VIDEO_KEYS}
    return DiT(**kw, rngs=nnx.Rngs(seed))


def abstract_model(config):
    """The model's shapes without allocating it: full sizes on a laptop."""
    return nnx.eval_shape(lambda: build_model(config))


def count_parameters(model):
    """Trainable parameters plus the fixed position table (none with rotary positions), as the DiT paper counts."""
    params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    if model.rope:
        return params
    p = model.patch_size
    size = model.input_size if isinstance(model.input_size, (tuple, list)) else (model.input_size,) * 2
    return params + (size[0] // p) * (size[1] // p) * model.hidden_size


def flat_weights(model):
    """{"blocks.0.attn.qkv.kernel": array, ...} of every Param and fixed Variable."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Variable)):
        out[".".join(str(k) for k in path)] = np.asarray(var[...])
    return out


def load_flat_weights(model, weights):
    """Copies named arrays into the model, checking that names and shapes match exactly."""
    state = nnx.state(model, nnx.Variable)
    flat = {".".join(str(k) for k in path): var for path, var in nnx.to_flat_state(state)}
    missing, unexpected = sorted(set(flat) - set(weights)), sorted(set(weights) - set(flat))
    if missing or unexpected:
        raise ValueError(
            f"Weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    for name, var in flat.items():
        if tuple(var.shape) != tuple(weights[name].shape):
            raise ValueError(f"Weight {name} has shape {weights[name].shape}, the model wants {var.shape}.")
        var.set_value(jnp.asarray(weights[name], dtype=var.get_raw_value().dtype))
    nnx.update(model, state)
    return model


def load_matching_weights(model, weights):
    """Copies the named arrays into the model (a subset of its weights, checked by training/init_from.py); the rest
    keep their values. Returns the model."""
    state = nnx.state(model, nnx.Variable)
    for path, var in nnx.to_flat_state(state):
        name = ".".join(str(k) for k in path)
        if name in weights:
            var.set_value(jnp.asarray(weights[name], dtype=var.get_raw_value().dtype))
    nnx.update(model, state)
    return model


def save_pretrained(model, config, directory):
    """Writes config.json and model.safetensors, each whole (paths.write_bytes); `directory` may be remote."""
    paths.path(directory).mkdir(parents=True, exist_ok=True)
    paths.save_safetensors(flat_weights(model), paths.join(directory, WEIGHTS_FILE))
    paths.write_json(paths.join(directory, CONFIG_FILE), config, indent=2, sort_keys=True)


def load_pretrained(directory, **overrides):
    """The model saved in directory; overrides change run-time options (dtype, attention, remat)."""
    config_path, weights_path = (paths.join(directory, f) for f in (CONFIG_FILE, WEIGHTS_FILE))
    for path in (config_path, weights_path):
        if not paths.path(path).is_file():
            raise FileNotFoundError(
                f"{path} not found: pass a directory written by `python -m dit_jax.convert` "
                "or exported by training."
            )
    config = paths.read_json(config_path)
    model = nnx.eval_shape(lambda: build_model(config, **overrides))
    return load_flat_weights(model, paths.load_safetensors(weights_path)), config
