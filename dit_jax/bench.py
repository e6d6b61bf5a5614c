"""Benchmarks: the train step, attention backends, and diffusers' PyTorch DiT side by side.

  python -m dit_jax.bench --mode=train [--config=configs/small.py] [--model=DiT-B/2 --batch=8]
  python -m dit_jax.bench --mode=train --vs_torch        # class-conditional DiT-S/4, 32x32x4, batch 32, fp32
  python -m dit_jax.bench --mode=train --profile=/tmp/trace   # and where the step's time goes, by kind of op
  python -m dit_jax.bench --mode=attention --backends=xla,cudnn,pallas_flash --seq_lens=256,1024,4096,16384
  python -m dit_jax.bench --mode=video [--config=configs/video_fashion.py --batch=8]

--mode=video times a video config's train step (default configs/video_fashion.py) against the image DiT of the
same size on the same frames: both factorised layouts (alternating, spatial_temporal), the image model on the
B*T frames one by one, and full attention over each clip's T*N tokens (the image model on the clip's frames
stacked into one T*H x W picture).

Batches are synthetic, shaped as the data the config names would be once prepared (the VAE's and the text
encoder's configs through pipeline.model_kwargs), so nothing needs preparing.
--vs_torch trains the same objective on both sides: DiT's hybrid loss (noise MSE + variational bound) when the
model learns its variance (the default), the MSE alone with --config.model.learn_sigma=False; printed as
`objective`.
On a GPU the torch side runs on the card too (bf16 autocast for --dtype=bfloat16, fp32 weights as ours), and first,
handing its memory back before JAX compiles: run with XLA_PYTHON_CLIENT_PREALLOCATE=false so JAX takes the card
only then (launch/gpu_check.sh does).
Prints a table; --json adds one JSON line per result.
"""

import gc
import json
import math
import os
import signal
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from dit_jax.data import latents, pipeline
from dit_jax.models import attention
from dit_jax.models.dit import REMAT_POLICIES
from dit_jax.models.variants import train_flops_per_image, variant
from dit_jax.models.video import sample_shape
from dit_jax.text import encoders
from dit_jax.training import sharding, trainer as trainer_lib
from dit_jax.training.recipe import base_config
from dit_jax.utils import profile
from dit_jax.utils.flops import device_peak_flops


def define_flags():
    """Defined only when this module runs as the program, so other CLIs and tests can import it."""
    config_flags.DEFINE_config_file("config", None, "A recipe under configs/; default: class-conditional DiT-S/4 "
                                    "on 32x32x4 latents, batch 32, fp32.")
    flags.DEFINE_enum("mode", "train", ["train", "attention", "video"], "What to measure.")
    flags.DEFINE_string("model", None, "A named size (DiT-B/2, ...) replacing the config's model size.")
    flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
    flags.DEFINE_string("attention", None, "Attention backend for the train step (default: the config's).")
    flags.DEFINE_bool("scan_blocks", None, "Run the blocks as one lax.scan (default: the config's).")
    flags.DEFINE_enum("remat", None, sorted(REMAT_POLICIES), "Rematerialisation policy per block (default: the "
                      "config's).")
    flags.DEFINE_integer("steps", 10, "Timed steps (after warm-up); the median is reported.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
    flags.DEFINE_bool("vs_torch", False, "Also time diffusers' DiTTransformer2DModel with torch AdamW on the same "
                      "batch and objective (DiT's hybrid loss with learn_sigma, the default).")
    flags.DEFINE_alias("vs-torch", "vs_torch")
    flags.DEFINE_string("torch_compile", "", "With --vs_torch: torch.compile diffusers' model with this backend "
                        "(inductor; aot_eager traces without generating code); empty: eager.")
    flags.DEFINE_integer("torch_timeout_s", 0, "With --vs_torch: give up on the torch side after this many seconds "
                         "(a torch.compile that takes too long), reported as torch_error; 0: no limit.")
    flags.DEFINE_list("backends", None, "Attention backends (default: xla, dot_product, and this platform's kernels; "
                      "on CPU only xla and dot_product, since interpreted kernels say nothing about speed).")
    flags.DEFINE_list("seq_lens", None, "Sequence lengths (default 256..16384; 256..2048 on CPU).")
    flags.DEFINE_integer("heads", 16, "Attention heads (attention mode).")
    flags.DEFINE_integer("head_dim", 64, "Head dimension (attention mode).")
    flags.DEFINE_integer("attn_batch", 1, "Batch size (attention mode).")
    flags.DEFINE_string("dtype", None, "Compute dtype: train mode overrides the config; attention mode default "
                        "bfloat16 on accelerators, float32 on CPU.")
    flags.DEFINE_string("profile", None, "Train mode: also trace --steps steps into this directory (Perfetto / "
                        "TensorBoard) and print the kinds of op that take the most time per step.")
    flags.DEFINE_integer("peak_size", 4096, "n of the n x n jnp.dot that measures a CPU's matmul peak.")
    flags.DEFINE_bool("json", False, "Print one JSON line per result as well.")


FLAGS = flags.FLAGS


def default_config():
    """Class-conditional DiT-S/4 on the SD VAE's 32x32x4 latents of 256px images, batch 32, fp32, plain AdamW.

    On CPU the blocks run as a plain loop (not one lax.scan) and keep only their matmul outputs for the
    backward pass (remat "dots"): the same numbers, the fastest of the four combinations there at depth 12
    (BENCHMARKS.md, issue 19).
    """
    c = base_config()
    c.data.resolution = 256
    c.vae.path = "stabilityai/sd-vae-ft-ema"  # only its shape is read (latents.DEFAULT_CONFIGS): 32x32x4
    c.model.update(variant("DiT-S/4"), num_classes=1000, text_cross_attention=False, text_pooled=False,
                   dtype="float32")
    if jax.default_backend() == "cpu":
        c.model.update(scan_blocks=False, remat="dots")
    c.batch_size = 32
    c.optim.grad_clip = 0.0  # as torch's plain AdamW step
    return c


def video_config():
    """configs/video_fashion.py, the default of --mode=video."""
    import importlib.util  # pylint: disable=import-outside-toplevel
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "video_fashion.py")
    spec = importlib.util.spec_from_file_location("video_fashion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def synthetic_manifest(config):
    """The fields of the manifest `prepare` would write for this config that `pipeline.model_kwargs` reads, from
    the VAE's and the text encoder's configs (nothing prepared, no weights loaded). Pixel data is taken as RGB
    (prepare keeps a grayscale source's single channel); num_classes -1 ("from the data") gives 1000."""
    res, t, m = config.data.resolution, config.text, config.model
    side, channels = latents.latent_shape(config.vae.path, res) if config.vae.path else (res, 3)
    reads_text = m.get("text_cross_attention", True) or m.get("text_pooled", False)  # else the width is unused
    text = encoders.text_shape(t.encoder, t.path, t.max_length) if reads_text else dict(max_length=t.max_length)
    return dict(image_shape=[side, side, channels], text=text,
                num_classes=1000 if m.num_classes < 0 else m.num_classes)


def model_kwargs(config):
    """The model the config trains on the data it names, shaped as `pipeline.model_kwargs` shapes training's."""
    return {**config.model.to_dict(), **pipeline.model_kwargs(synthetic_manifest(config), config)}


def synthetic_batch(kw, batch_size, seed=0):
    """Random inputs with the shapes and dtypes the loader would deliver."""
    rng = np.random.default_rng(seed)
    batch = dict(image=rng.standard_normal((batch_size, *sample_shape(kw)), np.float32))  # clips: (T, H, W, C)
    if kw.get("num_classes"):
        batch["label"] = rng.integers(0, kw["num_classes"], batch_size).astype(np.int32)
    if kw["text_dim"]:
        n, d = kw["text_len"], kw["text_dim"]
        batch["text"] = rng.standard_normal((batch_size, n, d), np.float32)
        batch["text_mask"] = np.arange(n)[None] < rng.integers(1, n + 1, batch_size)[:, None]
        batch["pooled"] = rng.standard_normal((batch_size, d), np.float32)
    return batch


def timed(fn, steps, warmup):
    """Median seconds of fn() (which must block) over `steps` calls after `warmup`."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_bytes(compiled):
    m = compiled.memory_analysis()
    return getattr(m, "peak_memory_in_bytes", 0) or (m.argument_size_in_bytes + m.output_size_in_bytes
                                                     + m.temp_size_in_bytes - m.alias_size_in_bytes)


def matmul_peak(dtype=jnp.float32, n=4096, steps=5):
    """FLOP/s of one large jnp.dot on this device: the CPU's practical peak (no table entry for CPUs)."""
    a = jnp.ones((n, n), dtype)
    dot = jax.jit(lambda a: a @ a)
    dot(a).block_until_ready()
    return 2 * n ** 3 / timed(lambda: dot(a).block_until_ready(), steps, 1)


def bench_train(config, overrides=None):
    """Compiles and times our train step; the dict holds the figures of one result row. overrides: model
    kwargs replacing what the config and its data give (bench_video's image models)."""
    if FLAGS.model:
        config.model.update(variant(FLAGS.model))
    if FLAGS.batch:
        config.batch_size = FLAGS.batch
    if FLAGS.attention:
        config.model.attention = FLAGS.attention
    if FLAGS.dtype:
        config.model.dtype = FLAGS.dtype
    if FLAGS.scan_blocks is not None:
        config.model.scan_blocks = FLAGS.scan_blocks
    if FLAGS.remat:
        config.model.remat = FLAGS.remat
    kw = {**model_kwargs(config), **(overrides or {})}
    compared = objective(config, kw) if FLAGS.vs_torch else None  # a bad comparison fails before compiling
    host_batch = synthetic_batch(kw, config.batch_size)
    torch_row = torch_side(kw, host_batch, config) if FLAGS.vs_torch else {}  # first: see the module docstring
    mesh = sharding.make_mesh(config.mesh)
    trainer = trainer_lib.create(config, kw, mesh)
    batch = jax.device_put(host_batch, sharding.batch_sharding(mesh))
    state = trainer.init()
    start = time.perf_counter()
    step = trainer_lib.compile_step(trainer, batch).lower(trainer.abstract_state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = [state]

    def run():
        holder[0], metrics = step(holder[0], batch)
        metrics["loss"].block_until_ready()
    seconds = timed(run, FLAGS.steps, FLAGS.warmup)
    if FLAGS.profile:
        with jax.profiler.trace(FLAGS.profile, create_perfetto_trace=True):
            for _ in range(FLAGS.steps):
                run()
        print(f"Time per step by kind of op, over {FLAGS.steps} traced steps (share of the {seconds:.4g} s median "
              f"step; ops on parallel threads can add up to more; {profile.IDLE}: no thread ran an op, e.g. waits on "
              f"asynchronous dots). Trace: {FLAGS.profile}", flush=True)
        print(profile.report(profile.op_seconds(FLAGS.profile, FLAGS.steps), seconds), flush=True)

    devices = jax.device_count()
    flops = train_flops_per_image(kw) * config.batch_size / seconds / devices
    peak = device_peak_flops()
    peak_source = "table"
    if peak is None:
        peak, peak_source = matmul_peak(jnp.dtype(config.model.dtype), FLAGS.peak_size), "measured jnp.dot"
    name = FLAGS.model or f"hidden {kw['hidden_size']} depth {kw['depth']} patch {kw['patch_size']}"
    result = dict(mode="train", model=name, input="x".join(map(str, sample_shape(kw))),
                  batch=config.batch_size, dtype=config.model.dtype, attention=config.model.attention,
                  scan_blocks=config.model.scan_blocks, remat=config.model.remat,
                  device=jax.devices()[0].device_kind, devices=devices, step_s=seconds,
                  img_per_s=config.batch_size / seconds, tflops_per_device=flops / 1e12,
                  peak_tflops=peak / 1e12, peak_source=peak_source, mfu=flops / peak, compile_s=compile_s,
                  peak_memory_gb=peak_bytes(step) / 1e9)
    if FLAGS.vs_torch:
        result.update(objective=compared, **torch_row)
        if "torch_step_s" in torch_row:
            result.update(torch_img_per_s=config.batch_size / torch_row["torch_step_s"],
                          ratio_vs_torch=torch_row["torch_step_s"] / seconds)
    return [result]


def objective(config, kw):
    """What both sides of --vs_torch train, in words; a ValueError for a model or loss the torch side lacks.

    DiT's objective with learned variances (model.learn_sigma, the default): the MSE of the predicted noise
    plus the variational bound, which trains the variance channels. Without them, the MSE alone.
    """
    if kw["text_dim"] or kw["dtype"] not in ("float32", "bfloat16") or not kw.get("num_classes"):
        raise ValueError("--vs_torch compares class-conditional fp32 or bf16 models (diffusers' DiT has no text "
                         "input).")
    d = config.diffusion
    if d.prediction != "eps" or d.get("min_snr_gamma"):
        raise ValueError("--vs_torch writes out the eps-prediction loss without min-SNR weighting: use "
                         "--config.diffusion.prediction=eps --config.diffusion.min_snr_gamma=0.")
    if config.model.get("learn_sigma", True):
        return "eps MSE + variational bound (DiT's hybrid loss, learn_sigma=True)"
    return "eps MSE (learn_sigma=False)"


def torch_model(kw):
    """diffusers' DiTTransformer2DModel of the size `kw` describes (class-conditional only)."""
    from diffusers import DiTTransformer2DModel  # pylint: disable=import-outside-toplevel

    heads, c = kw["num_heads"], kw["in_channels"]
    return DiTTransformer2DModel(num_attention_heads=heads, attention_head_dim=kw["hidden_size"] // heads,
                                 in_channels=c, out_channels=2 * c if kw.get("learn_sigma", True) else c,
                                 num_layers=kw["depth"], sample_size=kw["input_size"], patch_size=kw["patch_size"],
                                 num_embeds_ada_norm=kw["num_classes"])


def torch_loss(out, x0, x_t, t, noise, betas, learn_sigma):
    """The per-example loss of `objective`, written out in torch on NCHW tensors from the betas alone (our
    diffusion.losses is the JAX side): noise MSE on the first C output channels, plus with learn_sigma the
    variational bound in bits per dim, whose model mean comes from the detached noise prediction."""
    import torch  # pylint: disable=import-outside-toplevel

    c = x0.shape[1]
    eps, v = out[:, :c], out[:, c:]
    flat_mean = lambda x: x.mean(dim=(1, 2, 3))
    mse = flat_mean((noise - eps) ** 2)
    if not learn_sigma:
        return mse
    betas = np.asarray(betas, np.float64)
    acp = np.cumprod(1 - betas)
    acp_prev = np.append(1.0, acp[:-1])
    post_var = betas * (1 - acp_prev) / (1 - acp)
    table = lambda a: torch.as_tensor(a, dtype=torch.float32, device=x0.device)[t].view(-1, 1, 1, 1)
    min_log, max_log = table(np.log(np.append(post_var[1], post_var[1:]))), table(np.log(betas))
    coef_x0 = table(betas * np.sqrt(acp_prev) / (1 - acp))
    coef_xt = table((1 - acp_prev) * np.sqrt(1 - betas) / (1 - acp))
    x0_pred = table(np.sqrt(1 / acp)) * x_t - table(np.sqrt(1 / acp - 1)) * eps.detach()
    mean, true_mean = coef_x0 * x0_pred + coef_xt * x_t, coef_x0 * x0 + coef_xt * x_t
    frac = (v + 1) / 2
    log_var = frac * max_log + (1 - frac) * min_log
    kl = 0.5 * (-1 + log_var - min_log + torch.exp(min_log - log_var) + (true_mean - mean) ** 2 * torch.exp(-log_var))
    # t = 0: -log of the Gaussian mass of x0's 8-bit bin (edge bins open), Phi in its tanh approximation.
    cdf = lambda x: 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    inv_std = torch.exp(-0.5 * log_var)
    upper, lower = cdf(inv_std * (x0 - mean + 1 / 255)), cdf(inv_std * (x0 - mean - 1 / 255))
    log_mass = torch.where(x0 < -0.999, torch.log(upper.clamp(min=1e-12)),
                           torch.where(x0 > 0.999, torch.log((1 - lower).clamp(min=1e-12)),
                                       torch.log((upper - lower).clamp(min=1e-12))))
    vb = torch.where(t == 0, -flat_mean(log_mass), flat_mean(kl)) / math.log(2)
    return mse + vb


def torch_side(kw, batch, config):
    """`bench_torch` within --torch_timeout_s, as result fields: torch_step_s, or torch_error when it fails (out of
    memory, a compile past the limit), so that our side is still measured. Its GPU memory goes back after."""
    import torch  # pylint: disable=import-outside-toplevel

    def give_up(*_):
        raise TimeoutError(f"the torch side took over {FLAGS.torch_timeout_s} s")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(FLAGS.torch_timeout_s)
    try:
        return dict(torch_step_s=bench_torch(kw, batch, config))
    except Exception as e:  # pylint: disable=broad-except
        return dict(torch_error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def bench_torch(kw, batch, config):
    """diffusers' DiTTransformer2DModel, same size, batch and `objective`, torch AdamW + EMA; seconds a step.
    On the GPU when there is one; bf16 as ours is: autocast over fp32 weights, the loss in fp32."""
    import torch  # pylint: disable=import-outside-toplevel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = torch_model(kw).to(device).train()
    forward = torch.compile(model, backend=FLAGS.torch_compile) if FLAGS.torch_compile else model
    ema = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.optim.lr, weight_decay=0.0)
    x0 = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous().to(device)
    labels = torch.from_numpy(batch["label"]).long().to(device)
    betas = trainer_lib.diffusion_schedule(config.diffusion).betas  # the table our side trains with
    acp = torch.as_tensor(np.cumprod(1 - betas), dtype=torch.float32, device=device)

    def step():
        t = torch.randint(0, len(betas), (x0.shape[0],), device=device)
        noise = torch.randn_like(x0)
        a = acp[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=kw["dtype"] == "bfloat16"):
            out = forward(x_t, timestep=t, class_labels=labels).sample
        loss = torch_loss(out.float(), x0, x_t, t, noise, betas, kw.get("learn_sigma", True)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - config.ema.decay)
        if device.type == "cuda":
            torch.cuda.synchronize()  # timed() measures finished steps
    return timed(step, FLAGS.steps, FLAGS.warmup)


def bench_video(config):
    """The video config's step in both factorised layouts, against the image DiT of the same size on the same
    frames a step: apart (B*T images) and under full attention (B images of T frames stacked, T*N tokens)."""
    import copy  # pylint: disable=import-outside-toplevel
    frames, clips = config.model.frames, FLAGS.batch or config.batch_size
    side = config.data.resolution
    image = dict(frames=0)
    FLAGS.batch = None  # each run's batch is set below
    channels = dict(in_channels=1) if config.data.name == "moving_fashion" else {}  # its clips are grey
    runs = [("factorised: alternating", dict(video_blocks="alternating"), clips, {}),
            ("factorised: spatial_temporal", dict(video_blocks="spatial_temporal", temporal_pos="attention"), clips,
             {}),
            ("image DiT, frames apart", {}, clips * frames, image),
            ("image DiT, full attention", {}, clips, dict(image, input_size=(frames * side, side)))]
    rows = []
    for name, model, batch, overrides in runs:
        c = copy.deepcopy(config)
        c.model.update(model)
        c.batch_size = batch
        row = bench_train(c, {**channels, **overrides})[0]
        row.update(layout=name, frames_per_s=clips * frames / row["step_s"])
        rows.append(row)
        print(table([row]), flush=True)
    return rows


def bench_attention():
    """Each backend at each length: forward and forward+backward seconds and compiled memory."""
    platform = jax.default_backend()
    backends = FLAGS.backends or (["xla", "dot_product"] + {"gpu": ["cudnn", "pallas_flash"],
                                                            "tpu": ["pallas_flash", "splash"]}.get(platform, []))
    lengths = [int(n) for n in FLAGS.seq_lens or ([256, 512, 1024, 2048] if platform == "cpu"
                                                  else [256, 1024, 4096, 16384])]
    dtype = jnp.dtype(FLAGS.dtype or ("float32" if platform == "cpu" else "bfloat16"))
    results = []
    for name in backends:
        attend = attention.get_attention(name)
        for length in lengths:
            shape = (FLAGS.attn_batch, length, FLAGS.heads, FLAGS.head_dim)
            q, k, v = (jax.random.normal(key, shape, dtype) for key in jax.random.split(jax.random.PRNGKey(0), 3))
            forward = jax.jit(lambda q, k, v: attend(q, k, v))
            backward = jax.jit(jax.grad(lambda q, k, v: attend(q, k, v).astype(jnp.float32).sum(), (0, 1, 2)))
            row = dict(mode="attention", backend=name, seq_len=length, batch=FLAGS.attn_batch, heads=FLAGS.heads,
                       head_dim=FLAGS.head_dim, dtype=str(dtype), device=jax.devices()[0].device_kind,
                       interpreted=platform == "cpu" and name in ("pallas_flash", "splash"))
            try:
                for label, fn in (("fwd", forward), ("fwd_bwd", backward)):
                    compiled = fn.lower(q, k, v).compile()
                    row[f"{label}_ms"] = 1e3 * timed(lambda: jax.block_until_ready(compiled(q, k, v)),
                                                     FLAGS.steps, 1)
                    row[f"{label}_memory_mb"] = compiled.memory_analysis().temp_size_in_bytes / 1e6
            except Exception as e:  # one backend failing (e.g. out of memory at 16k) must not end the sweep
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            results.append(row)
    return results


def table(rows):
    keys = [k for k in rows[0] if k not in ("mode", "device")]
    for row in rows[1:]:
        keys += [k for k in row if k not in keys and k not in ("mode", "device")]
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)
    cells = [[fmt(row.get(k, "")) for k in keys] for row in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [f"device: {rows[0]['device']}, jax {jax.__version__}",
             "  ".join(k.ljust(w) for k, w in zip(keys, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise SystemExit(f"bench: unexpected arguments {argv[1:]}")
    if FLAGS.profile and FLAGS.mode != "train":
        raise SystemExit("bench: --profile traces train steps; use it with --mode=train.")
    try:
        if FLAGS.mode == "train":
            rows = bench_train(FLAGS.config if FLAGS.config is not None else default_config())
        elif FLAGS.mode == "video":
            rows = bench_video(FLAGS.config if FLAGS.config is not None else video_config())
        else:
            rows = bench_attention()
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"bench: {e}") from None
    print(table(rows), flush=True)
    if FLAGS.json:
        for row in rows:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    define_flags()
    app.run(main)
