"""`python -m dit_jax.bench` runs each mode at toy size and prints a table and JSON lines."""

import gzip
import json
import os
import subprocess
import sys

import pytest

from dit_jax.utils import profile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bench(*args, stdout=None):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    out = subprocess.run([sys.executable, "-m", "dit_jax.bench", "--json", "--steps=1", "--warmup=0", *args],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert rows and "device: cpu" in out.stdout
    if stdout is not None:
        stdout.append(out.stdout)
    return rows


def test_train_mode_against_torch_with_a_profile(tmp_path):
    stdout = []  # --vs-torch is an alias of --vs_torch
    row, = bench("--mode=train", "--vs-torch", "--batch=4", "--peak_size=512", "--config=configs/tiny.py:runlocal",
                 "--config.model.num_classes=10", "--config.model.text_cross_attention=False",
                 "--config.model.text_pooled=False", "--remat=dots", f"--profile={tmp_path}", stdout=stdout)
    assert row["remat"] == "dots"
    assert row["img_per_s"] > 0 and row["torch_img_per_s"] > 0 and row["ratio_vs_torch"] > 0
    assert row["peak_source"] == "measured jnp.dot" and 0 < row["mfu"] < 1.5
    assert row["peak_memory_gb"] > 0 and row["compile_s"] > 0
    assert "Time per step by kind of op" in stdout[0]
    assert sum(profile.op_seconds(str(tmp_path), steps=1).values()) > 0  # the trace it wrote holds ops


def test_default_comparison_is_dit_s4_rematerialised_on_cpu():
    from dit_jax.bench import default_config
    c = default_config()
    assert (c.model.hidden_size, c.model.depth, c.model.patch_size, c.batch_size) == (384, 12, 4, 32)
    assert c.model.dtype == "float32" and c.model.remat == "dots"  # the tests run on CPU


def test_profile_sums_op_kinds_per_step(tmp_path):
    # fusion.2 runs on another thread alongside fusion.1; nothing runs from 3500 to 4500 us.
    events = [dict(ph="X", name="fusion.1", ts=0, dur=1000), dict(ph="X", name="fusion.2", ts=500, dur=3000),
              dict(ph="X", name="dot", ts=4500, dur=2000), dict(ph="X", name="$train.py:10 run", dur=10**6),
              dict(ph="X", name="ThunkExecutor::Execute", dur=10**6), dict(ph="X", name="end: fusion", dur=7),
              dict(ph="i", name="marker")]
    folder = tmp_path / "plugins" / "profile" / "2026_11_26"
    folder.mkdir(parents=True)
    with gzip.open(folder / "perfetto_trace.json.gz", "wt") as f:
        json.dump(dict(traceEvents=events), f)
    totals = profile.op_seconds(str(tmp_path), steps=2)  # microseconds over 2 steps -> seconds per step
    assert totals == {"fusion": pytest.approx(0.002), "dot": pytest.approx(0.001),
                      profile.IDLE: pytest.approx(0.0005)}
    lines = profile.report(totals, step_seconds=0.004, top=1).splitlines()
    assert lines[0].split() == ["0.0020", "s", "50.0%", "fusion"]
    assert lines[1].split() == ["0.0015", "s", "37.5%", "(2", "other", "kinds)"]
    with pytest.raises(FileNotFoundError, match="create_perfetto_trace"):
        profile.op_seconds(str(tmp_path / "none"), steps=1)


def test_attention_mode():
    rows = bench("--mode=attention", "--backends=xla,pallas_flash", "--seq_lens=48", "--heads=2", "--head_dim=16")
    assert [(r["backend"], r["interpreted"]) for r in rows] == [("xla", False), ("pallas_flash", True)]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and "error" not in r for r in rows)


@pytest.mark.parametrize("args, message", [
    (["--mode=attention", "--profile=/tmp/trace"], "bench: --profile traces train steps"),
    (["--model=DiT-Q/3"], "bench: Unknown DiT variant 'DiT-Q/3'"),
    (["--remat=bogus"], "flag --remat=bogus: value should be one of"),
])
def test_bad_input_fails_in_one_line(args, message):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-m", "dit_jax.bench", "--steps=1", "--warmup=0", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert message in out.stderr
