"""`python -m dit_jax.bench` runs each mode at toy size and prints a table and JSON lines."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-m", "dit_jax.bench", "--json", "--steps=1", "--warmup=0", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows and "device: cpu" in out.stdout
    return rows


def test_train_mode_against_torch():
    row, = bench("--mode=train", "--vs_torch", "--batch=4", "--peak_size=512", "--config=configs/tiny.py:runlocal",
                 "--config.model.num_classes=10", "--config.model.text_cross_attention=False",
                 "--config.model.text_pooled=False")
    assert row["img_per_s"] > 0 and row["torch_img_per_s"] > 0 and row["ratio_vs_torch"] > 0
    assert row["peak_source"] == "measured jnp.dot" and 0 < row["mfu"] < 1.5
    assert row["peak_memory_gb"] > 0 and row["compile_s"] > 0


def test_attention_mode():
    rows = bench("--mode=attention", "--backends=xla,pallas_flash", "--seq_lens=48", "--heads=2", "--head_dim=16")
    assert [(r["backend"], r["interpreted"]) for r in rows] == [("xla", False), ("pallas_flash", True)]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and "error" not in r for r in rows)
