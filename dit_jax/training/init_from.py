"""`init_from=RUN`: a run starts from another run's exported weights instead of random ones.

The main uses: a video DiT from a trained image DiT (models/video.py): every
weight of the image model has its counterpart under the same name, and the
video model's temporal layers, which the image model lacks, keep their fresh
initialisation, the identity; so at step 0 every frame is the image model's
output for that frame. And a style or layout model from a text model: the new
condition layers start closed (GLIGEN's gates at 0), so the text model's
output is unchanged. A multi-view DiT (models/multiview.py) from an image DiT:
its camera MLP starts fresh (its output layer at zero), and a novel-view
model's patch embedding takes the image model's kernel for the noisy view's
channels and zeros for the given view's, as its own initialisation has them;
so at step 0 each view is the image model's, with attention across views. An
image DiT from an image DiT (fine-tuning) works the same way with every weight
loaded. Anything else that differs (a width, the text conditioning, the block
options, tubelets) is a one-line error before anything is compiled.
"""


import numpy as np
from flax import nnx

from dit_jax.models.controlnet import RUNTIME_KEYS
from dit_jax.models.pretrained import (CONDITION_KEYS, CONFIG_FILE, WEIGHTS_FILE, export_directory,
                                       first_difference)
from dit_jax.utils import paths

# Names of the parameters that may start fresh: the video model's temporal layers, the style and layout paths,
# the multi-view model's camera MLP.
FRESH = ("temporal_blocks.", ".temporal_attn.", "style_embedder.", "grounding.", ".fuser.", "camera_embedder.")
PATCH_KERNEL = "x_embedder.proj.kernel"


def directory(path):
    """RUN/export of a finished run, or an export directory itself."""
    return export_directory(path, "init_from")


def check_config(path, model_kwargs):
    """One line naming the first architecture key where this run's model differs from init_from's."""
    source = paths.read_json(paths.join(directory(path), CONFIG_FILE))
    if source.get("model", "dit") != "dit":
        raise ValueError(f"init_from={path!r} is a {source['model']}, not a diffusion model.")
    diff = first_difference(model_kwargs, source, skip=RUNTIME_KEYS + CONDITION_KEYS)
    if diff:
        key, ours, theirs = diff
        raise ValueError(f"init_from={path!r} was trained with model.{key}={theirs!r}, this config has "
                         f"{ours!r}: only the video keys (frames, t_patch, video_blocks...) and the style and layout "
                         "keys may differ.")


def read(path, model_kwargs):
    """init_from's weights (host arrays by name), its config checked against this run's. A novel-view model
    from a model without the given view's input: the patch kernel's given-view channels are zeros."""
    check_config(path, model_kwargs)
    weights = paths.load_safetensors(paths.join(directory(path), WEIGHTS_FILE))
    kernel = weights.get(PATCH_KERNEL)
    if model_kwargs.get("novel_view") and kernel is not None and kernel.shape[2] == model_kwargs["in_channels"]:
        weights[PATCH_KERNEL] = np.concatenate([kernel, np.zeros_like(kernel)], axis=2)
    return weights


def check_weights(path, abstract_model, weights):
    """Every weight has a counterpart of the same shape, and only temporal layers are left fresh."""
    wanted = {".".join(str(k) for k in p): tuple(v.shape)
              for p, v in nnx.to_flat_state(nnx.state(abstract_model, nnx.Param))}
    for name, value in sorted(weights.items()):
        if name not in wanted:
            raise ValueError(f"init_from={path!r} has {name}, which this model lacks: the architectures differ.")
        if tuple(value.shape) != wanted[name]:
            raise ValueError(f"init_from={path!r}'s {name} is {tuple(value.shape)}, this model's {wanted[name]}: "
                             "the architectures differ (tubelets need model.t_patch=1 to start from an image "
                             "model).")
    fresh = sorted(n for n in wanted if n not in weights and not any(f in n or n.startswith(f) for f in FRESH))
    if fresh:
        raise ValueError(f"init_from={path!r} lacks {fresh[:3]}: only a video model's temporal layers, the style "
                         "and layout layers and a multi-view model's camera MLP may start fresh.")

