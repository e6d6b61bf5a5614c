"""launch/gpu_check.sh --dry runs every step of the GPU check on CPU at toy sizes, so the script cannot rot;
and launch/gpu_wheels.sh fetches the versions setup.py pins."""

import ast
import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest
from conftest import FAST_COMPILE_FLAG

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(REPO, "launch", "gpu_check.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def numbers(value):
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


@pytest.fixture(scope="module")
def dry_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHON": sys.executable, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": f"--xla_force_host_platform_device_count=1 {FAST_COMPILE_FLAG}"}
    proc = subprocess.run(["bash", "launch/gpu_check.sh", "--dry", f"--out={out}", f"--wheels={out}/none"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "gpu_check.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert "===== " in (out / "gpu_check.log").read_text()
    return rows


def test_dry_run_writes_a_line_per_step(dry_rows):
    by_step = {}
    for row in dry_rows:
        by_step.setdefault(row["step"], []).append(row)
        assert {"step", "status", "wall_s"} <= row.keys() and row["status"] == "ok", row
        assert all(math.isfinite(n) for n in numbers(row)), row
    assert list(by_step) == ["env", "train_b2_auto_vs_torch", "kernel_tests", "attention", "summary"]
    env = by_step["env"][0]
    assert env["dry"] and env["installed"].startswith("none") and env["versions"]["jax"]

    # The train step in bf16 at batch 2 against diffusers' DiT under bf16 autocast on the same batch and loss.
    row, = by_step["train_b2_auto_vs_torch"]
    assert (row["batch"], row["dtype"], row["attention"]) == (2, "bfloat16", "auto")
    assert row["img_per_s"] > 0 and row["mfu"] > 0 and row["compile_s"] > 0 and row["peak_memory_gb"] > 0
    assert row["torch_img_per_s"] > 0 and row["ratio_vs_torch"] > 0 and "torch_error" not in row
    row, = by_step["kernel_tests"]  # the compiled kernels skip on CPU, and the line says so
    assert row["skipped"] > 0 and row["passed"] == row["failed"] == row["errors"] == 0, row
    rows = by_step["attention"]
    assert [(r["backend"], r["seq_len"]) for r in rows] == [("xla", 16), ("xla", 32)]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and "error" not in r for r in rows)
    assert by_step["summary"][0]["counts"] == {"ok": len(dry_rows) - 1}


def test_the_gpu_steps_pass_only_flags_bench_defines():
    """The steps --dry leaves out differ from its own in flag values only: each flag must be one of bench's."""
    source = open(os.path.join(REPO, "dit_jax", "bench.py")).read()
    defined = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source.replace("config_flags.", "flags.")))
    steps = load_gpu_check().plan(dry=False)
    names = [s.name for s in steps]
    assert names[:3] == ["train_b64_auto_vs_torch", "kernel_tests", "attention"] and len(set(names)) == len(names)
    assert {f"train_b{b}_{a}" for b in (64, 128, 256) for a in ("xla", "cudnn")} < set(names)
    for step in steps:
        if step.kind == "bench":
            args = step.args([{"step": "train_b64_auto_vs_torch", "scan_blocks": True}]) if callable(step.args) \
                else step.args
            used = {re.match(r"--(?:no)?([\w]+)", a).group(1) for a in args if a.startswith("--")}
            assert used <= defined, (step.name, used - defined)
            if step.name != "attention":
                assert "--model=DiT-XL/2" in args and "--dtype=bfloat16" in args, step.name
    loop, = [s for s in steps if s.name == "loop_vs_scan"]
    assert "--noscan_blocks" in loop.args([{"step": "train_b64_auto_vs_torch", "scan_blocks": True}])
    assert "--scan_blocks" in loop.args([{"step": "train_b64_auto_vs_torch", "scan_blocks": False}])


def test_steps_past_the_budget_or_their_limit_leave_a_line(tmp_path, monkeypatch):
    """A step that outlasts its limit is killed, one with no room left is skipped, and each says so."""
    gpu_check = load_gpu_check()
    row = json.dumps(dict(mode="train", img_per_s=1.0))
    follow = lambda rows: ["-c", f"print({json.dumps(dict(seen=rows[-1]['img_per_s']))!r})"]  # args from the rows
    steps = [gpu_check.Step("quick", ["-c", f"print('table'); print({row!r})"], 30, 1),
             gpu_check.Step("follows", follow, 30, 1),
             gpu_check.Step("hangs", ["-c", "import time; time.sleep(60)"], 1, 1),
             gpu_check.Step("fails", ["-c", "raise SystemExit('bench: no such model')"], 30, 1),
             gpu_check.Step("last", ["-c", "pass"], 30, 1000)]
    monkeypatch.setattr(gpu_check, "plan", lambda dry: steps)
    gpu_check.main(["--budget_s=100", f"--out={tmp_path}"])
    rows = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [(r["step"], r["status"]) for r in rows] == [
        ("env", "ok"), ("quick", "ok"), ("follows", "ok"), ("hangs", "timeout"), ("fails", "error"), ("last", "skipped"),
        ("summary", "ok")]
    assert rows[1]["img_per_s"] == 1.0 and rows[2]["seen"] == 1.0 and rows[3]["wall_s"] < 30
    assert rows[4]["error"] == "bench: no such model" and "needs 1000 s" in rows[5]["error"]
    assert rows[6]["counts"] == {"ok": 3, "timeout": 1, "error": 1, "skipped": 1}
    with pytest.raises(SystemExit, match="--only=nothing names no step"):
        gpu_check.main(["--only=nothing", f"--out={tmp_path}"])


def pins(text):
    return dict(re.findall(r"[\"\s(]([A-Za-z0-9_.-]+)==([0-9][^\"\s)]*)", text))


def test_wheels_are_the_versions_setup_py_pins():
    setup = ast.parse(open(os.path.join(REPO, "setup.py")).read())
    required = next(ast.literal_eval(node.value) for node in ast.walk(setup)
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "INSTALL_REQUIRES")
    pinned = dict(r.split("==") for r in required)
    script = open(os.path.join(REPO, "launch", "gpu_wheels.sh")).read()
    in_setup = pins(script.split("# Not in setup.py")[0].split("IN_SETUP=(")[1])
    extra = pins(script.split("# Not in setup.py")[1])
    assert in_setup and extra
    assert {name: pinned.get(name) for name in in_setup} == in_setup  # the same names and versions as setup.py
    assert not set(extra) & set(pinned)  # anything setup.py pins is fetched at its pin
    assert {"ml-collections", "diffusers"} <= set(in_setup)
