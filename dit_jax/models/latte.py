"""Weight import from diffusers' LatteTransformer3DModel (Latte, Ma et al., 2024) into the video DiT.

Latte is the video DiT's `alternating` layout with PixArt-alpha's conditioning:
one shared adaLN projection of the timestep plus a learned table per block
(adaln="single"), a final layer modulated by a table plus the timestep
embedding, and its frame positions added to the token stream before the first
temporal block (temporal_pos="first"). Its captions (T5 tokens) go through
PixArt's projection, which is our text embedder's. The converter sets those
keys; the numbers then agree with diffusers'. Only safetensors are read.
"""

import json
import os

import numpy as np

from dit_jax.models.convert import read_state_dict

WEIGHTS = "diffusion_pytorch_model.safetensors"

# Latte's options that our model expresses, and the value each must have.
REQUIRED = dict(norm_type="ada_norm_single", activation_fn="gelu-approximate", norm_elementwise_affine=False)


def read_latte(path):
    """(state dict, config) of a LatteTransformer3DModel: a directory (or a pipeline with transformer/) holding
    config.json and diffusion_pytorch_model.safetensors, or a .safetensors file with config.json beside it."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: pass --src=DIR holding a diffusers LatteTransformer3DModel "
                                f"(config.json + {WEIGHTS}), or its .safetensors file beside config.json.")
    if os.path.isdir(os.path.join(path, "transformer")):
        path = os.path.join(path, "transformer")
    directory, weights = (path, os.path.join(path, WEIGHTS)) if os.path.isdir(path) else (os.path.dirname(path), path)
    if not weights.endswith(".safetensors"):
        raise ValueError(f"{weights} is not a .safetensors file: Latte's weights are read from safetensors only "
                         "(re-save them with save_pretrained(safe_serialization=True)).")
    config_path = os.path.join(directory, "config.json")
    for needed in (config_path, weights):
        if not os.path.isfile(needed):
            raise FileNotFoundError(f"{needed} not found: pass --src=DIR holding a diffusers LatteTransformer3DModel "
                                    f"(config.json + {WEIGHTS}), or its .safetensors file beside config.json.")
    with open(config_path) as f:
        config = json.load(f)
    return read_state_dict(weights), config


def latte_model_kwargs(c, text_len=120):
    """Our VideoDiT kwargs for a Latte config; a one-line error for what our model cannot express."""
    for key, value in REQUIRED.items():
        if c.get(key) != value:
            raise ValueError(f"Latte {key}={c.get(key)!r}: only {value!r} (Latte's released models) converts.")
    hidden = c["num_attention_heads"] * c["attention_head_dim"]
    if c.get("norm_eps", 1e-5) != 1e-6:
        raise ValueError(f"Latte norm_eps={c.get('norm_eps', 1e-5)}: only 1e-6 (Latte's released models) converts.")
    if c.get("cross_attention_dim") != hidden:
        raise ValueError(f"Latte cross_attention_dim={c.get('cross_attention_dim')} differs from its width {hidden}; "
                         "our cross-attention reads the projected captions at the model width.")
    if not c.get("caption_channels"):
        raise ValueError("This Latte has no caption_channels (no caption projection); it cannot convert.")
    if c["sample_size"] >= 128:
        raise ValueError(f"Latte sample_size={c['sample_size']}: diffusers interpolates the position table from "
                         "128 up; our table is DiT's, so only sample sizes below 128 convert.")
    out_channels = c.get("out_channels") or c["in_channels"]
    if out_channels not in (c["in_channels"], 2 * c["in_channels"]):
        raise ValueError(f"Latte out_channels={out_channels} is neither in_channels nor twice it.")
    return dict(frames=c.get("video_length", 16), t_patch=1, video_blocks="alternating", temporal_pos="first",
                adaln="single", input_size=c["sample_size"], patch_size=c["patch_size"],
                in_channels=c["in_channels"], hidden_size=hidden, depth=c["num_layers"],
                num_heads=c["num_attention_heads"], mlp_ratio=4.0, num_classes=0, class_dropout_prob=0.0,
                learn_sigma=out_channels == 2 * c["in_channels"], text_dim=c["caption_channels"], text_len=text_len,
                text_cross_attention=True, text_pooled=False, null_text="zeros", caption_dropout_prob=0.0,
                freq_shift=0.0, mlp_norm_eps=c.get("norm_eps", 1e-5))


def _linear(state_dict, theirs, ours, out, width):
    """A torch Linear (out, in) as ours (in, out); a missing bias (attention_bias=False) is zeros."""
    out[ours + ".kernel"] = state_dict[theirs + ".weight"].T
    out[ours + ".bias"] = state_dict.get(theirs + ".bias", np.zeros(width, np.float32))


def _fused(state_dict, names, ours, out):
    """Several torch Linears (q, k, v) as one of ours with their outputs side by side."""
    out[ours + ".kernel"] = np.concatenate([state_dict[n + ".weight"].T for n in names], axis=1)
    out[ours + ".bias"] = np.concatenate([state_dict.get(n + ".bias", np.zeros(state_dict[n + ".weight"].shape[0],
                                                                                 np.float32)) for n in names])


def _block(state_dict, theirs, ours, out, cross):
    d = state_dict[theirs + "attn1.to_out.0.weight"].shape[0]
    _fused(state_dict, [f"{theirs}attn1.to_{x}" for x in "qkv"], ours + "attn.qkv", out)
    _linear(state_dict, theirs + "attn1.to_out.0", ours + "attn.proj", out, d)
    if cross:
        _linear(state_dict, theirs + "attn2.to_q", ours + "cross_attn.q", out, d)
        _fused(state_dict, [f"{theirs}attn2.to_{x}" for x in "kv"], ours + "cross_attn.kv", out)
        _linear(state_dict, theirs + "attn2.to_out.0", ours + "cross_attn.proj", out, d)
    _linear(state_dict, theirs + "ff.net.0.proj", ours + "mlp.fc1", out, d)
    _linear(state_dict, theirs + "ff.net.2", ours + "mlp.fc2", out, d)
    out[ours + "scale_shift_table"] = state_dict[theirs + "scale_shift_table"]


def from_latte(state_dict, config):
    """Latte's state dict -> our flat VideoDiT weights (the names load_flat_weights checks)."""
    out = {"x_embedder.proj.kernel": state_dict["pos_embed.proj.weight"].transpose(2, 3, 1, 0),
           "x_embedder.proj.bias": state_dict["pos_embed.proj.bias"]}
    renames = {"adaln_single.emb.timestep_embedder.linear_1": "t_embedder.linear1",
               "adaln_single.emb.timestep_embedder.linear_2": "t_embedder.linear2",
               "adaln_single.linear": "t_block",
               "caption_projection.linear_1": "text_embedder.caption_fc1",
               "caption_projection.linear_2": "text_embedder.caption_fc2",
               "proj_out": "final_layer.linear"}
    for theirs, ours in renames.items():
        _linear(state_dict, theirs, ours, out, state_dict[theirs + ".weight"].shape[0])
    out["final_layer.scale_shift_table"] = state_dict["scale_shift_table"]
    for i in range(config["num_layers"]):
        _block(state_dict, f"transformer_blocks.{i}.", f"blocks.{i}.", out, cross=True)
        _block(state_dict, f"temporal_transformer_blocks.{i}.", f"temporal_blocks.{i}.", out, cross=False)
    return out
