"""`python -m dit_jax.train` end to end, in subprocesses: outputs, kill and resume, signals, errors, multi-host."""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from PIL import Image
from safetensors.numpy import load_file

from dit_jax.data import fashion_mnist
from conftest import FAST_COMPILE_FLAG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = ["--config.steps=12", "--config.batch_size=8", "--config.data.max_examples=64", "--config.checkpoint.every=3", "--config.log.every=1", "--config.sample.every=0",
       "--config.model.hidden_size=32", "--config.model.depth=1", "--config.model.patch_size=8"]


def env(devices=1):
    """The runs inherit conftest's compilation cache: identical programs compile once across the suite."""
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE_FLAG}")


def command(workdir, data_dir, *extra):
    return [sys.executable, "-m", "dit_jax.train", "--config=configs/tiny.py:runlocal",
            f"--workdir={workdir}", f"--data_dir={data_dir}", *TOY, *extra]


def train(workdir, data_dir, *extra, devices=1, check=True):
    return subprocess.run(command(workdir, data_dir, *extra), cwd=ROOT, env=env(devices),
                          capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    subprocess.run([sys.executable, "-m", "dit_jax.prepare", "--config=configs/tiny.py:runlocal",
                    f"--data_dir={path}", "--config.data.max_examples=64"],
                   cwd=ROOT, env=env(), check=True, capture_output=True, timeout=600)
    return path


def losses(workdir):
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return {row["step"]: row["loss"] for row in rows}


def test_run_leaves_checkpoints_logs_samples_and_export(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    train(workdir, data_dir, "--config.sample.every=6", "--config.checkpoint.keep=2")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["12", "9"]
    run = json.load(open(os.path.join(workdir, "run.json")))
    assert run["config"]["steps"] == 12 and run["versions"]["jax"] and run["git_commit"]
    assert sorted(losses(workdir)) == list(range(1, 13))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(workdir, "tensorboard")))
    assert sorted(os.listdir(os.path.join(workdir, "samples"))) == ["step_00000006.png", "step_00000012.png"]
    from dit_jax.models.pretrained import load_pretrained
    model, config = load_pretrained(os.path.join(workdir, "export"))
    assert config["text_dim"] == 384 and config["hidden_size"] == 32


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEFAULT_DIR), reason="apt-get install dataset-fashion-mnist")
def test_latent_run_grids_show_decoded_images(tmp_path):
    """A latent model's grids are VAE-decoded 32 px images (4x4 px blocks at 128 px), not its 16 px latents (8x8)."""
    from test_data import save_tiny_vae, write_idx_slice
    save_tiny_vae(tmp_path / "vae")
    write_idx_slice(tmp_path / "idx", n_train=16)
    workdir = str(tmp_path / "run")
    train(workdir, str(tmp_path / "data"), "--config.data.name=fashion_mnist", "--config.data.resolution=32",
          f"--config.data.source_dir={tmp_path / 'idx'}", f"--config.vae.path={tmp_path / 'vae'}",
          "--config.steps=2", "--config.sample.every=2", "--config.sample.steps=2")
    assert json.load(open(os.path.join(workdir, "run.json")))["config"]["vae"]["path"]
    cell = np.asarray(Image.open(os.path.join(workdir, "samples", "step_00000002.png")).convert("RGB"))[:128, :128]
    blocks = cell.astype(int).reshape(16, 8, 16, 8, 3)
    assert (blocks.max(axis=(1, 3)) != blocks.min(axis=(1, 3))).any()  # detail finer than a latent


def wait_for_step(proc, workdir, step):
    """Polls metrics.jsonl (a line per step) until the run has logged `step`."""
    path = os.path.join(workdir, "metrics.jsonl")
    while proc.poll() is None:
        if os.path.exists(path) and any(json.loads(l)["step"] >= step for l in open(path) if l.strip()):
            return
        time.sleep(0.02)
    raise AssertionError(f"the run ended before step {step}")


def assert_same_run(run, reference, step):
    """Bit-identical exported weights and the same loss at the last step."""
    a = load_file(os.path.join(reference, "export", "model.safetensors"))
    b = load_file(os.path.join(run, "export", "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert losses(run)[step] == losses(reference)[step]


def test_sigkill_and_resume_is_bit_identical(tmp_path, data_dir):
    steps = ["--config.steps=30"]
    reference = str(tmp_path / "reference")
    train(reference, data_dir, *steps)
    killed = str(tmp_path / "killed")
    rng = random.Random(0)
    for kill_at in sorted(rng.sample(range(4, 29), 2)):  # two random moments mid-run
        proc = subprocess.Popen(command(killed, data_dir, *steps), cwd=ROOT, env=env(1),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_step(proc, killed, kill_at)
        proc.kill()
        proc.wait()
        assert not os.path.exists(os.path.join(killed, "export")), "killed after the end: nothing tested"
    assert os.listdir(os.path.join(killed, "checkpoints")), "no checkpoint survived to resume from"
    train(killed, data_dir, *steps)
    assert_same_run(killed, reference, step=30)


def test_sigterm_saves_the_current_step(tmp_path, data_dir):
    workdir = str(tmp_path / "run")
    proc = subprocess.Popen(command(workdir, data_dir, "--config.steps=100000", "--config.checkpoint.every=0"),
                            cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_step(proc, workdir, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0
    saved = int(out.split("SIGTERM: saved step ")[1].split(";")[0])
    assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(saved)]


# 2 processes x 4 CPU devices: the batch over data=2, parameters and optimizer state sharded over fsdp=4.
MULTI = ["--config.steps=16", "--config.mesh.data=2", "--config.mesh.fsdp=4", "--config.checkpoint.every=0"]


def launch(workdir, data_dir):
    args = command(workdir, data_dir, *MULTI)[3:]
    return subprocess.Popen(["bash", "launch/local.sh", "2", "4", *args], cwd=ROOT,
                            env=dict(env(), PYTHON=sys.executable), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def report(out, workdir):
    """What a failed two-process run said: each process's first error line and last lines (an abort at the
    shutdown barrier hides the error that caused it)."""
    logs = {"process 0": out}
    if os.path.exists(path := os.path.join(workdir, "process_1.log")):
        logs["process 1"] = open(path).read()
    parts = []
    for name, text in logs.items():
        errors = [l for l in text.splitlines() if "Error" in l or "Traceback" in l][:3]
        parts.append(f"--- {name}: first errors {errors}\n{text[-1500:]}")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, data_dir):
    """The workdir of an uninterrupted two-process run."""
    workdir = str(tmp_path_factory.mktemp("multi") / "run")
    out, _ = (proc := launch(workdir, data_dir)).communicate(timeout=600)
    assert proc.returncode == 0, report(out, workdir)
    return workdir


def test_two_processes_match_one(tmp_path, data_dir, two_processes):
    single = str(tmp_path / "single")
    train(single, data_dir, *MULTI, devices=8)
    a, b = losses(single), losses(two_processes)
    assert sorted(a) == sorted(b) == list(range(1, 17))
    np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], atol=1e-5)


def child_with(pid, flag):
    """The pid of the child process of `pid` whose command line holds `flag`."""
    for child in open(f"/proc/{pid}/task/{pid}/children").read().split():
        if flag in open(f"/proc/{child}/cmdline").read().split("\0"):
            return int(child)
    raise AssertionError(f"no child of {pid} with {flag}")


def test_sigterm_to_one_of_two_processes_saves_one_step_on_both_and_resumes_exactly(tmp_path, data_dir,
                                                                                    two_processes):
    workdir = str(tmp_path / "preempted")
    proc = launch(workdir, data_dir)
    try:
        wait_for_step(proc, workdir, 3)
    except AssertionError:
        raise AssertionError(report(proc.communicate()[0], workdir)) from None
    os.kill(child_with(proc.pid, "--process_id=1"), signal.SIGTERM)  # process 0 hears of it only from JAX
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, report(out, workdir)
    saved = os.listdir(os.path.join(workdir, "checkpoints"))
    assert len(saved) == 1 and int(saved[0]) < 16, saved
    line = f"Pre-emption notice (SIGTERM to a process): saved step {saved[0]}; exiting."
    assert line in out and line in open(os.path.join(workdir, "process_1.log")).read(), report(out, workdir)

    out, _ = (proc := launch(workdir, data_dir)).communicate(timeout=600)
    assert proc.returncode == 0, report(out, workdir)
    assert f"Resumed from step {saved[0]}" in out
    assert_same_run(workdir, two_processes, step=16)


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory, data_dir):
    """A run stopped at step 6 with checkpoints at 3 and 6, for the fault tests to copy."""
    workdir = str(tmp_path_factory.mktemp("six") / "run")
    train(workdir, data_dir, "--config.steps=6", "--config.checkpoint.keep=2")
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
    return workdir


def test_damaged_latest_checkpoint_is_reported_and_the_one_before_resumed(tmp_path, data_dir, six_steps):
    workdir = shutil.copytree(six_steps, tmp_path / "run")
    files = glob.glob(str(workdir / "checkpoints" / "6" / "state" / "**" / "d" / "*"), recursive=True)
    assert files, "no data files: the checkpoint layout changed"
    for f in files:
        os.truncate(f, os.path.getsize(f) // 2)
    result = train(str(workdir), data_dir, "--config.steps=9", "--config.checkpoint.keep=2",
                   check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.splitlines()
    damaged = [line for line in out if "does not read" in line]
    assert len(damaged) == 1 and damaged[0].startswith(f"Checkpoint 6 in {workdir}/checkpoints"), out
    assert f"Resumed from step 3 in {workdir}/checkpoints" in out
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["6", "9"]  # 6 redone over the damaged files


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, six_steps):
    """The next test's diverging run (its compiled program too), with the loss looked at every step."""
    workdir = str(shutil.copytree(six_steps, tmp_path / "run"))
    result = train(workdir, data_dir, "--config.steps=12", "--config.optim.lr=1e30", check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train: Loss is nan at step") or last.startswith("train: Loss is inf at step"), last
    bad_step = int(last.split(" at step ")[1].split(";")[0])
    assert all(int(step) < bad_step for step in os.listdir(os.path.join(workdir, "checkpoints")))


def test_diverging_run_never_leaves_a_nan_checkpoint(tmp_path, data_dir, six_steps):
    """Logging every 100 steps, the loss is not looked at before step 9's save: the state check stops it."""
    workdir = shutil.copytree(six_steps, tmp_path / "run")
    result = train(str(workdir), data_dir, "--config.steps=12", "--config.log.every=100", "--config.optim.lr=1e30",
                   check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("train: The train state holds NaN or inf at step 9 (not saved); stopped, the last good "
                           "checkpoint is step 6"), last
    assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
    for step in (3, 6):
        state = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state)), step
