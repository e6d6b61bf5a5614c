"""Issue 18's accelerator figures in one run that fits a short lease of one GPU.

  launch/gpu_check.sh [--budget_s=480] [--out=DIR] [--only=NAME,...]   # on the GPU host
  launch/gpu_check.sh --dry --out=DIR                                  # one step of each kind, CPU, toy sizes

Most important first: DiT-XL/2 256px bf16 (32x32x4 latents, class-conditional) train step against diffusers'
in PyTorch at batch 64; the compiled attention kernels against the reference (tests/test_attention.py -k
accelerator); the attention sweep; batches 128 and 256; the xla and cudnn backends; loop against scan; and
torch.compile. Each step is its own process under its own time limit, started only while the budget has room
for it; one that fails or times out leaves a line saying so, and the rest go on. Every result is one JSON line
in OUT/gpu_check.jsonl, written as it comes (a run cut short keeps what it measured), and every step's command
and output go to OUT/gpu_check.log. This program imports nothing heavy, so it holds no GPU memory itself.

--dry runs one step of each kind through the same code on CPU at toy sizes (a DiT-Toy/4 at batch 2 in bf16
against diffusers' under autocast, the kernel tests, which skip there, and the attention sweep): the other
steps differ from these only in flag values, and each JAX process costs tens of seconds of CPU to start and
compile. tests/test_gpu_check.py runs it, and checks every step's flags against bench's.
"""

import argparse
import dataclasses
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Callable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda13-plugin", "flax", "optax", "orbax-checkpoint", "numpy",
            "torch", "diffusers", "transformers", "ml-collections", "grain", "tensorflow-datasets"]
# A train step that runs out of memory is measured once more keeping only the matmuls' outputs per block.
OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory")


@dataclasses.dataclass
class Step:
    name: str
    args: list | Callable  # after the interpreter; or a function of the rows so far that returns them
    limit_s: float         # this step's own time limit
    min_s: float           # not started with less than this left of the budget
    kind: str = "bench"    # "bench": its JSON lines are the rows; "pytest": one row of the counts
    env: dict = dataclasses.field(default_factory=dict)
    retry_oom: bool = False
    dry: bool = False      # also run by --dry


def plan(dry):
    """The steps in order. GPU: DiT-XL/2 at the issue's sizes; dry: those marked dry, a DiT-Toy/4 at batch 2."""
    bench = ["-m", "dit_jax.bench", "--json"]
    if dry:
        model = ["--config=configs/tiny.py:runlocal", "--config.model.num_classes=10",
                 "--config.model.text_cross_attention=False", "--config.model.text_pooled=False",
                 "--config.diffusion.prediction=eps", "--config.diffusion.min_snr_gamma=0",
                 "--config.data.resolution=16", "--dtype=bfloat16", "--steps=1", "--warmup=0", "--peak_size=128"]
        batches, sweep = [2], ["--backends=xla", "--seq_lens=16,32", "--heads=2", "--head_dim=16", "--steps=1"]
        limits = dict(train=120, torch=120, kernels=120, attention=120)
    else:
        model = ["--model=DiT-XL/2", "--dtype=bfloat16", "--steps=8", "--warmup=2"]
        batches, sweep = [64, 128, 256], ["--seq_lens=256,1024,2048,4096,8192,16384"]
        limits = dict(train=150, torch=210, kernels=150, attention=180)
    # JAX takes GPU memory as it needs it (up to 90%), after the torch side has given its back.
    jax_env = dict(XLA_PYTHON_CLIENT_PREALLOCATE="false", XLA_PYTHON_CLIENT_MEM_FRACTION="0.9")
    kernels_env = dict(JAX_PLATFORMS="cpu" if dry else "cuda")  # tests/conftest.py defaults to the CPU

    def train(batch, attention, *extra, limit="train", name=None):
        name = name or f"train_b{batch}_{attention}" + "".join(f"_{e.strip('-').split('=')[0]}" for e in extra)
        return Step(name, bench + ["--mode=train", *model, f"--batch={batch}", f"--attention={attention}", *extra],
                    limits[limit], limits[limit] / 2, env=jax_env, retry_oom=True)

    def opposite_blocks(rows):
        """Loop against scan: the other of the two from the first batch's auto row."""
        first = next((r for r in rows if r.get("step") == f"train_b{batches[0]}_auto_vs_torch" and "scan_blocks" in r),
                     {"scan_blocks": True})
        flag = "--noscan_blocks" if first["scan_blocks"] else "--scan_blocks"
        return bench + ["--mode=train", *model, f"--batch={batches[0]}", "--attention=auto", flag]

    first, rest = batches[0], batches[1:]
    steps = [dataclasses.replace(train(first, "auto", "--vs_torch", limit="torch"), dry=True),
             Step("kernel_tests", ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_attention.py",
                                   "-k", "accelerator"], limits["kernels"], 30, kind="pytest", env=kernels_env,
                  dry=True),
             Step("attention", bench + ["--mode=attention", *sweep], limits["attention"], 60, dry=True)]
    steps += [train(b, "auto", "--vs_torch", limit="torch") for b in rest]
    steps += [train(first, a) for a in ("xla", "cudnn")]
    steps.append(Step("loop_vs_scan", opposite_blocks, limits["train"], limits["train"] / 2, env=jax_env))
    steps += [train(b, a) for b in rest for a in ("xla", "cudnn")]
    compile_args = ["--vs_torch", "--torch_compile=inductor", f"--torch_timeout_s={limits['torch'] - 60}"]
    steps.append(train(first, "auto", *compile_args, limit="torch", name=f"train_b{first}_auto_torch_compile"))
    return [s for s in steps if s.dry] if dry else steps


def error_line(text):
    """The line of a failed program's output that says why: bench's one-line errors, else the last exception."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for pattern in (r"^bench: ", r"(Error|Exception|RESOURCE_EXHAUSTED)\b"):
        found = [line for line in lines if re.search(pattern, line)]
        if found:
            return found[-1][:300]
    return lines[-1][:300] if lines else ""


def run(args, limit_s, env, log):
    """(exit code or None on timeout, stdout, stderr, seconds) of one process group, killed at the limit."""
    cmd = [sys.executable, *args]
    log.write(f"\n===== {time.strftime('%H:%M:%S')} {' '.join(cmd)}  (limit {limit_s:.0f} s)\n")
    log.flush()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit_s)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # with what it started (compile workers)
        out, err = proc.communicate()
        code = None
    seconds = time.monotonic() - start
    log.write(f"{out}\n----- stderr (last 20000 characters)\n{err[-20000:]}\n----- exit {code}, {seconds:.1f} s\n")
    log.flush()
    return code, out, err, seconds


def pytest_counts(out):
    """{"passed": n, "skipped": n, ...} from pytest's summary line, and the lines naming failures."""
    counts = {k: 0 for k in ("passed", "failed", "skipped", "errors", "deselected")}
    summary = [line for line in out.splitlines() if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)]
    for n, what in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)\b", summary[-1] if summary else ""):
        counts["errors" if what.startswith("error") else what] = int(n)
    counts["failures"] = [line[:300] for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))][:10]
    return counts


def run_step(step, args, limit_s, log):
    """The rows of one step: each with its name, status (ok, error, timeout) and the step's seconds."""
    code, out, err, seconds = run(args, limit_s, step.env, log)
    base = dict(step=step.name, wall_s=round(seconds, 1))
    if step.kind == "pytest":
        counts = pytest_counts(out)
        status = "timeout" if code is None else "ok" if code == 0 else "failed" if code == 1 else "error"
        row = dict(base, status=status, exit_code=code, **counts)
        if status in ("timeout", "error"):
            row["error"] = f"no result within {limit_s:.0f} s" if code is None else error_line(out + "\n" + err)
        return [row]
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    if code == 0 and rows:
        return [dict(base, status="ok", **row) for row in rows]
    if code is None:
        return [dict(base, status="timeout", error=f"no result within {limit_s:.0f} s")]
    return [dict(base, status="error", exit_code=code, error=error_line(err) or error_line(out))]


def environment(args):
    """What ran: versions, the card (nvidia-smi), the budget, and what launch/gpu_check.sh installed."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    gpu = ""
    if shutil.which("nvidia-smi"):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60, check=False)
        gpu = smi.stdout.strip() or smi.stderr.strip()[:200]
    return dict(step="env", status="ok", wall_s=0.0, dry=args.dry, budget_s=args.budget_s, python=sys.version.split()[0],
                versions=versions, gpu=gpu, installed=os.environ.get("GPU_CHECK_INSTALLED", ""),
                pythonpath=os.environ.get("PYTHONPATH", ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry", action="store_true", help="the same steps on CPU at toy sizes")
    parser.add_argument("--budget_s", type=float, default=480, help="total seconds; steps that would not fit are "
                        "skipped")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="folder of the results "
                        "(default $OUT, else ./gpu_check_out)")
    parser.add_argument("--only", default="", help="comma-separated step names (prefixes) to run, e.g. "
                        "loop_vs_scan,train_b256 for a second lease")
    parser.add_argument("--wheels", default="", help="read by launch/gpu_check.sh (the wheels it installs)")
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        raise SystemExit("gpu_check: --budget_s must be positive (seconds for all the steps together).")
    steps = plan(args.dry)
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        steps = [s for s in steps if any(s.name.startswith(w) for w in wanted)]
        if not steps:
            raise SystemExit(f"gpu_check: --only={args.only} names no step; the steps: "
                             f"{', '.join(s.name for s in plan(args.dry))}.")
    if args.dry:
        os.environ["JAX_PLATFORMS"] = "cpu"
    os.makedirs(args.out, exist_ok=True)
    start = time.monotonic()
    counts = {}
    with open(os.path.join(args.out, "gpu_check.jsonl"), "w") as results, \
            open(os.path.join(args.out, "gpu_check.log"), "w") as log:

        def write(row):
            counts[row["status"]] = counts.get(row["status"], 0) + 1
            results.write(json.dumps(row) + "\n")
            results.flush()
            os.fsync(results.fileno())
            print(json.dumps(row), flush=True)

        write(environment(args))
        rows = []
        for step in steps:
            left = args.budget_s - (time.monotonic() - start)
            if left < step.min_s:
                write(dict(step=step.name, status="skipped", wall_s=0.0,
                           error=f"{left:.0f} s of the budget left, the step needs {step.min_s:.0f} s"))
                continue
            step_args = step.args(rows) if callable(step.args) else step.args
            new = run_step(step, step_args, min(step.limit_s, left), log)
            left = args.budget_s - (time.monotonic() - start)
            if (step.retry_oom and new[0]["status"] == "error" and OUT_OF_MEMORY.search(new[0]["error"])
                    and left >= step.min_s):
                new[0]["retried"] = "--remat=dots"
                new += [dict(r, step=step.name + "_remat_dots")
                        for r in run_step(step, step_args + ["--remat=dots"], min(step.limit_s, left), log)]
            for row in new:
                write(row)
            rows += new
        write(dict(step="summary", status="ok", wall_s=round(time.monotonic() - start, 1), counts=dict(counts)))


if __name__ == "__main__":
    main()
