"""Writes guided_diffusion_oracle.npz: openai/guided-diffusion's classifier-guided samplers on closed-form inputs.

For a maintainer, not the suite (it needs PyTorch and a guided-diffusion checkout):

  git clone https://github.com/openai/guided-diffusion /tmp/guided-diffusion
  python tests/data/make_guided_diffusion_oracle.py /tmp/guided-diffusion

A closed-form eps model and a closed-form linear classifier, both written on
NHWC arrays so that tests/test_classifier_guidance.py rebuilds them in JAX
from the parameters saved here, are run through guided-diffusion's own
`p_sample_loop_progressive` (ancestral steps, its `condition_mean`) and
`ddim_sample_loop_progressive` (its `condition_score`), full and respaced
(`SpacedDiffusion`), with a `cond_fn` written as scripts/classifier_sample.py
writes it, and without it (the last sample only, to show what guidance changes). Its step noise is replaced
by fixed draws saved beside the results.
"""

import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

B, H, W, C, K, T = 3, 2, 2, 2, 3, 20
SCALE = 5.0

# name: (sampler, model variance, eta, kept timesteps (None: all), clip_denoised)
CASES = {
    "ddpm_fixed_small": ("ddpm", "FIXED_SMALL", 0.0, None, True),
    "ddpm_fixed_large": ("ddpm", "FIXED_LARGE", 0.0, None, False),
    "ddpm_learned_range_spaced": ("ddpm", "LEARNED_RANGE", 0.0, [0, 3, 6, 9, 12, 15, 18], True),
    "ddim_eta0": ("ddim", "FIXED_SMALL", 0.0, None, True),
    "ddim_eta05_spaced": ("ddim", "FIXED_SMALL", 0.5, [1, 5, 9, 13, 17], False),
}


def parameters(rng):
    return dict(
        betas=np.linspace(1e-3, 0.2, T),
        eps_w=rng.normal(0, 0.7, (C, C)), eps_b=rng.normal(0, 1.0, C), var_w=rng.normal(0, 1.0, (C, C)),
        cls_w=rng.normal(0, 1.0, (H * W * C, K)), cls_b=rng.normal(0, 1.0, K),
        y=np.array([0, 2, 1]), x_T=rng.normal(0, 1.0, (B, H, W, C)),
    )


def nhwc(x):
    return x.permute(0, 2, 3, 1)


def nchw(x):
    return x.permute(0, 3, 1, 2)


def make_model(p, learned):
    """eps = tanh(x W + b t / T) per pixel; with learned variance also v = tanh(x V), in [-1, 1]."""
    w, b, v = (torch.tensor(p[k]) for k in ("eps_w", "eps_b", "var_w"))

    def model(x, t, y=None):
        h = nhwc(x)
        eps = torch.tanh(h @ w + b * t.double()[:, None, None, None] / T)
        out = torch.cat([eps, torch.tanh(h @ v)], dim=-1) if learned else eps
        return nchw(out)

    return model


def make_cond_fn(p):
    """scale * grad log softmax(logits)[y] with logits = flatten(x) W / (1 + t / T) + b, as classifier_sample.py."""
    w, b = torch.tensor(p["cls_w"]), torch.tensor(p["cls_b"])

    def classifier(x, t):
        return nhwc(x).reshape(len(x), -1) @ w / (1 + t.double()[:, None] / T) + b

    def cond_fn(x, t, y=None):
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            log_probs = F.log_softmax(classifier(x_in, t), dim=-1)
            selected = log_probs[range(len(x_in)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * SCALE

    return cond_fn


def run_case(gd, respace, p, sampler, var_type, eta, kept, clip, noise, guided=True):
    kwargs = dict(betas=p["betas"], model_mean_type=gd.ModelMeanType.EPSILON,
                  model_var_type=getattr(gd.ModelVarType, var_type), loss_type=gd.LossType.MSE)
    diffusion = respace.SpacedDiffusion(kept, **kwargs) if kept else gd.GaussianDiffusion(**kwargs)
    draws = iter(noise)
    randn_like = torch.randn_like
    torch.randn_like = lambda x: nchw(torch.tensor(next(draws)))  # the fixed step noise, in order
    try:
        loop = diffusion.p_sample_loop_progressive if sampler == "ddpm" else diffusion.ddim_sample_loop_progressive
        extra = {} if sampler == "ddpm" else dict(eta=eta)
        steps = list(loop(make_model(p, var_type == "LEARNED_RANGE"), (B, C, H, W), noise=nchw(torch.tensor(p["x_T"])),
                          clip_denoised=clip, cond_fn=make_cond_fn(p) if guided else None, model_kwargs=dict(y=torch.tensor(p["y"])),
                          device="cpu", **extra))
    finally:
        torch.randn_like = randn_like
    return (np.stack([nhwc(s["sample"]).double().numpy() for s in steps]),
            np.stack([nhwc(s["pred_xstart"]).double().numpy() for s in steps]))


def main(checkout, out):
    sys.path.insert(0, checkout)
    from guided_diffusion import gaussian_diffusion as gd, respace  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(0)
    p = parameters(rng)
    arrays = dict(p, scale=np.float64(SCALE))
    t = torch.tensor([19, 7, 0])
    arrays["gradient_t"] = t.numpy()
    arrays["gradient"] = nhwc(make_cond_fn(p)(nchw(torch.tensor(p["x_T"])), t, torch.tensor(p["y"]))).numpy()
    for name, (sampler, var_type, eta, kept, clip) in CASES.items():
        grid = sorted(kept or range(T), reverse=True)
        noise = rng.normal(0, 1.0, (len(grid), B, H, W, C))
        x, x0 = run_case(gd, respace, p, sampler, var_type, eta, kept, clip, noise)
        unguided, _ = run_case(gd, respace, p, sampler, var_type, eta, kept, clip, noise, guided=False)
        arrays.update({f"{name}/grid": np.array(grid), f"{name}/noise": noise, f"{name}/x": x, f"{name}/x0": x0,
                       f"{name}/unguided": unguided[-1]})
    np.savez_compressed(out, **arrays)
    print(f"Wrote {out}: {', '.join(CASES)}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: python {sys.argv[0]} PATH_TO_GUIDED_DIFFUSION_CHECKOUT")
    main(sys.argv[1], os.path.join(os.path.dirname(os.path.abspath(__file__)), "guided_diffusion_oracle.npz"))
