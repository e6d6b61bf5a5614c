"""Weight import and export: facebookresearch/DiT and diffusers' DiTTransformer2DModel.

Our parameter names mirror DiT's models.py, so the mapping is a handful of
renames plus layout changes (PyTorch Linear weights are (out, in), ours
(in, out); convolutions are OIHW there, HWIO here). diffusers' port is first
rewritten into DiT's names, so both sources share one path.
"""

import json
import os
import re

import numpy as np

from dit_jax.models.dit import DIT_BLOCK
from dit_jax.models.embeddings import sincos_2d

# DiT's module names whose counterpart here is named differently (both directions).
DIT_RENAMES = [
    ("t_embedder.mlp.0.", "t_embedder.linear1."),
    ("t_embedder.mlp.2.", "t_embedder.linear2."),
    ("adaLN_modulation.1.", "adaLN_modulation."),
]

# DiT's released models do not record their head count; these are the named sizes'.
HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1152: 16}

# The two numerics: the original DiT, and diffusers' port of it.
NUMERICS = {
    "dit": dict(freq_shift=0.0, mlp_norm_eps=1e-6),
    "diffusers": dict(freq_shift=1.0, mlp_norm_eps=1e-5),
}


def read_state_dict(path):
    """A dict of float32 numpy arrays from .safetensors, or .pt/.pth/.bin via weights_only torch.load."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Weights file {path} not found: pass --src=PATH to a .pt or .safetensors file."
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        tensors = load_file(path)
    else:
        import torch

        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickled code is refused, never executed
            raise ValueError(
                f"{path} is not a plain state dict loadable with weights_only=True ({e}); "
                "re-save just the tensors, e.g. torch.save(ckpt['ema'], 'ema.pt')."
            ) from e
        if "ema" in tensors:  # a DiT training checkpoint: its EMA weights are the ones to sample with
            tensors = tensors["ema"]
        elif "model" in tensors:
            tensors = tensors["model"]
    return {k: v.float().numpy() for k, v in tensors.items()}


def _rename(name, renames):
    for old, new in renames:
        name = name.replace(old, new)
    return name


def dit_config(state_dict, num_heads=None):
    """The model kwargs that a DiT state dict was trained with, read off its shapes."""
    hidden, in_channels, patch, _ = state_dict["x_embedder.proj.weight"].shape
    depth = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k)))
    out_channels = state_dict["final_layer.linear.weight"].shape[0] // (patch * patch)
    if num_heads is None:
        if hidden not in HEADS_BY_WIDTH:
            raise ValueError(f"Cannot tell the head count of a width-{hidden} DiT: pass --num_heads.")
        num_heads = HEADS_BY_WIDTH[hidden]
    config = dict(
        input_size=int(round(state_dict["pos_embed"].shape[1] ** 0.5)) * patch,
        patch_size=patch,
        in_channels=in_channels,
        hidden_size=hidden,
        depth=depth,
        num_heads=num_heads,
        learn_sigma=out_channels == 2 * in_channels,
        num_classes=0,
    )
    if "y_embedder.embedding_table.weight" in state_dict:
        # The reference trains with label dropout, whose null class is the table's last row.
        config.update(
            num_classes=state_dict["y_embedder.embedding_table.weight"].shape[0] - 1, class_dropout_prob=0.1
        )
    return config


def from_dit(state_dict, config):
    """DiT state dict -> our flat weights. Checks the fixed position table matches ours."""
    grid = config["input_size"] // config["patch_size"]
    table = sincos_2d(config["hidden_size"], grid, grid)
    if np.abs(state_dict["pos_embed"][0] - table).max() > 1e-5:
        raise ValueError(
            "The checkpoint's position table differs from DiT's sin-cos table; "
            "it was not trained with this architecture."
        )
    weights = {}
    for name, value in state_dict.items():
        if name == "pos_embed":
            continue
        ours = _rename(name, DIT_RENAMES)
        if ours == "y_embedder.embedding_table.weight":
            weights["y_embedder.embedding_table"] = value
        elif ours == "x_embedder.proj.weight":
            weights["x_embedder.proj.kernel"] = value.transpose(2, 3, 1, 0)
        elif ours.endswith(".weight"):
            weights[ours[: -len("weight")] + "kernel"] = value.T
        else:
            weights[ours] = value
    return weights


def to_dit(weights, config):
    """Our flat weights -> a DiT state dict that facebookresearch/DiT loads with strict=True."""
    changed = {k: config[k] for k, v in DIT_BLOCK.items() if config.get(k, v) != v}
    if changed:
        raise ValueError(f"This model's block differs from DiT's ({changed}); DiT's format holds only DiT's block.")
    inverse = [(new, old) for old, new in DIT_RENAMES]
    state_dict = {}
    for name, value in weights.items():
        value = np.asarray(value)
        if name.startswith("text_embedder.") or ".cross_attn." in name:
            raise ValueError(
                "Text-conditioned models have no DiT counterpart; export a class-conditional one."
            )
        theirs = _rename(name, inverse)
        if theirs == "y_embedder.embedding_table":
            state_dict[theirs + ".weight"] = value
        elif theirs == "x_embedder.proj.kernel":
            state_dict["x_embedder.proj.weight"] = value.transpose(3, 2, 0, 1)
        elif theirs.endswith(".kernel"):
            state_dict[theirs[: -len("kernel")] + "weight"] = value.T
        else:
            state_dict[theirs] = value
    grid = config["input_size"] // config["patch_size"]
    state_dict["pos_embed"] = sincos_2d(config["hidden_size"], grid, grid)[None].astype(np.float32)
    return state_dict


def diffusers_to_dit(state_dict, diffusers_config):
    """diffusers' DiTTransformer2DModel weights in DiT's names, plus our model kwargs.

    diffusers gives every block its own copy of the timestep and class
    embedders; DiT has one. They must be equal (as in every converted DiT).
    """
    emb = "transformer_blocks.{}.norm1.emb."
    depth = diffusers_config["num_layers"]
    for i in range(1, depth):
        for key in [k for k in state_dict if k.startswith(emb.format(0))]:
            if not np.array_equal(state_dict[key], state_dict[key.replace(emb.format(0), emb.format(i))]):
                raise ValueError(
                    f"Block {i} has its own conditioning embedder ({key}); DiT shares one "
                    "across blocks, so this model cannot be converted."
                )
    out = {}
    renames = {
        "pos_embed.proj": "x_embedder.proj",
        emb.format(0) + "timestep_embedder.linear_1": "t_embedder.mlp.0",
        emb.format(0) + "timestep_embedder.linear_2": "t_embedder.mlp.2",
        emb.format(0) + "class_embedder.embedding_table": "y_embedder.embedding_table",
        "proj_out_1": "final_layer.adaLN_modulation.1",
        "proj_out_2": "final_layer.linear",
    }
    for i in range(depth):
        b = f"transformer_blocks.{i}."
        renames.update(
            {
                b + "attn1.to_out.0": f"blocks.{i}.attn.proj",
                b + "ff.net.0.proj": f"blocks.{i}.mlp.fc1",
                b + "ff.net.2": f"blocks.{i}.mlp.fc2",
                b + "norm1.linear": f"blocks.{i}.adaLN_modulation.1",
            }
        )
        for kind in ("weight", "bias"):
            out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate(
                [state_dict[f"{b}attn1.to_{x}.{kind}"] for x in "qkv"], axis=0
            )
    for theirs, dit_name in renames.items():
        for kind in ("weight", "bias"):
            if f"{theirs}.{kind}" in state_dict:
                out[f"{dit_name}.{kind}"] = state_dict[f"{theirs}.{kind}"]
    c = diffusers_config
    hidden = c["num_attention_heads"] * c["attention_head_dim"]
    out_channels = c.get("out_channels") or c["in_channels"]
    rows = out["y_embedder.embedding_table.weight"].shape[0]
    config = dict(
        input_size=c["sample_size"],
        patch_size=c["patch_size"],
        in_channels=c["in_channels"],
        hidden_size=hidden,
        depth=depth,
        num_heads=c["num_attention_heads"],
        learn_sigma=out_channels == 2 * c["in_channels"],
        num_classes=c["num_embeds_ada_norm"],
        class_dropout_prob=0.1 if rows > c["num_embeds_ada_norm"] else 0.0,
        freq_shift=1.0,
        mlp_norm_eps=c.get("norm_eps", 1e-5),
    )
    # diffusers recomputes its (identical) position table instead of saving it.
    grid = config["input_size"] // config["patch_size"]
    out["pos_embed"] = state_dict.get("pos_embed.pos_embed", sincos_2d(hidden, grid, grid)[None])
    return out, config


def read_diffusers(path):
    """(state dict, config) of a DiTTransformer2DModel directory (or a pipeline with transformer/)."""
    if os.path.isdir(os.path.join(path, "transformer")):
        path = os.path.join(path, "transformer")
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"{config_path} not found: pass --src=DIR holding a diffusers "
            "DiTTransformer2DModel (config.json + weights)."
        )
    with open(config_path) as f:
        config = json.load(f)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if os.path.isfile(os.path.join(path, name)):
            return read_state_dict(os.path.join(path, name)), config
    raise FileNotFoundError(f"No diffusion_pytorch_model.safetensors (or .bin) in {path}.")
