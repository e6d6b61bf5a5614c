"""Weight import: our DiT with converted weights reproduces diffusers' DiTTransformer2DModel."""

import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from dit_jax.convert import export_dit, import_weights
from dit_jax.models import convert
from dit_jax.models.pretrained import flat_weights, save_pretrained

DEPTH = 2


@pytest.fixture(scope="module")
def diffusers_dir(tmp_path_factory):
    """A random tiny diffusers DiT, saved as diffusers saves it, sharing one conditioning embedder."""
    torch.manual_seed(0)
    model = DiTTransformer2DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=8,
        num_layers=DEPTH,
        sample_size=8,
        patch_size=2,
        num_embeds_ada_norm=10,
    ).eval()
    state = model.state_dict()
    for key in [k for k in state if k.startswith("transformer_blocks.0.norm1.emb.")]:
        for i in range(1, DEPTH):
            state[key.replace("blocks.0.", f"blocks.{i}.")].copy_(state[key])
    path = str(tmp_path_factory.mktemp("diffusers"))
    model.save_pretrained(path)
    return path


def example(seed=0):
    rng = np.random.RandomState(seed)
    return (rng.randn(3, 4, 8, 8).astype(np.float32), np.array([0, 17, 999]), np.array([1, 5, 10]))


def run_diffusers(model, x, t, y):
    with torch.no_grad():
        return model(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(y)).sample.numpy()


def run_ours(model, x, t, y):
    out = model(jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(y))
    return np.asarray(out).transpose(0, 3, 1, 2)


def test_diffusers_weights_reproduce_diffusers(diffusers_dir):
    theirs = DiTTransformer2DModel.from_pretrained(diffusers_dir).eval()
    ours, config = import_weights("diffusers", diffusers_dir)
    assert config["freq_shift"] == 1.0 and config["mlp_norm_eps"] == 1e-5
    x, t, y = example()
    ref = run_diffusers(theirs, x, t, y)
    assert np.abs(ref).max() > 0.5  # a non-trivial output (diffusers does not zero-init)
    np.testing.assert_allclose(run_ours(ours, x, t, y), ref, atol=1e-4, rtol=0)


def test_dit_numerics_match_the_original_model(diffusers_dir):
    # Patched to DiT's numerics (frequency shift 0, MLP LayerNorm eps 1e-6), diffusers computes
    # the original DiT; our model under --numerics=dit must follow it, and differ from the port.
    theirs = DiTTransformer2DModel.from_pretrained(diffusers_dir).eval()
    for block in theirs.transformer_blocks:
        block.norm1.emb.time_proj.downscale_freq_shift = 0
        block.norm3.eps = 1e-6
    ours, config = import_weights("diffusers", diffusers_dir, numerics="dit")
    assert config["freq_shift"] == 0.0 and config["mlp_norm_eps"] == 1e-6
    x, t, y = example(1)
    ref = run_diffusers(theirs, x, t, y)
    np.testing.assert_allclose(run_ours(ours, x, t, y), ref, atol=1e-4, rtol=0)
    port, _ = import_weights("diffusers", diffusers_dir)
    assert np.abs(run_ours(port, x, t, y) - ref).max() > 1e-3


def test_dit_checkpoint_names_and_round_trip(diffusers_dir, tmp_path):
    ours, config = import_weights("diffusers", diffusers_dir, numerics="dit")
    src = str(tmp_path / "ours")
    save_pretrained(ours, config, src)
    pt = str(tmp_path / "dit.pt")
    export_dit(src, pt)
    state = torch.load(pt, weights_only=True)
    # Exactly the names of facebookresearch/DiT's models.py state dict.
    expected = {
        "pos_embed",
        "x_embedder.proj.weight",
        "x_embedder.proj.bias",
        "t_embedder.mlp.0.weight",
        "t_embedder.mlp.0.bias",
        "t_embedder.mlp.2.weight",
        "t_embedder.mlp.2.bias",
        "y_embedder.embedding_table.weight",
        "final_layer.linear.weight",
        "final_layer.linear.bias",
        "final_layer.adaLN_modulation.1.weight",
        "final_layer.adaLN_modulation.1.bias",
    }
    for i in range(DEPTH):
        for m in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            expected |= {f"blocks.{i}.{m}.weight", f"blocks.{i}.{m}.bias"}
    assert set(state) == expected
    assert tuple(state["x_embedder.proj.weight"].shape) == (32, 4, 2, 2)
    assert tuple(state["blocks.0.mlp.fc1.weight"].shape) == (128, 32)
    back, back_config = import_weights("dit", pt, num_heads=2)
    assert back_config == config
    a, b = flat_weights(ours), flat_weights(back)
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_dit_training_checkpoint_uses_ema(diffusers_dir, tmp_path):
    ours, config = import_weights("diffusers", diffusers_dir, numerics="dit")
    state = {k: torch.tensor(np.array(v)) for k, v in convert.to_dit(flat_weights(ours), config).items()}
    path = str(tmp_path / "0001000.pt")
    torch.save({"model": {k: v * 0 for k, v in state.items()}, "ema": state}, path)
    sd = convert.read_state_dict(path)
    np.testing.assert_array_equal(sd["blocks.1.mlp.fc2.weight"], state["blocks.1.mlp.fc2.weight"].numpy())


def test_pickled_code_is_refused(tmp_path):
    path = str(tmp_path / "evil.pt")
    torch.save({"model": {}, "args": object()}, path)
    with pytest.raises(ValueError, match="weights_only"):
        convert.read_state_dict(path)


def test_differing_block_embedders_are_refused(diffusers_dir):
    state, config = convert.read_diffusers(diffusers_dir)
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight"
    state[key] = state[key] + 1
    with pytest.raises(ValueError, match="own conditioning embedder"):
        convert.diffusers_to_dit(state, config)


def test_cli_converts_and_reports_missing_source(diffusers_dir, tmp_path):
    out = str(tmp_path / "converted")
    cmd = [
        sys.executable,
        "-m",
        "dit_jax.convert",
        "--from=diffusers",
        f"--src={diffusers_dir}",
        f"--out={out}",
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "sampling.json"]
    cmd = [sys.executable, "-m", "dit_jax.convert", "--from=dit", "--src=/nonexistent.pt", f"--out={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode != 0
    assert "/nonexistent.pt not found" in result.stderr.strip().splitlines()[-1]
