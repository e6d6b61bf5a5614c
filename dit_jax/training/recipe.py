"""What the recipes under configs/ share: the defaults, the named pieces they pick, and their arg parser.

A recipe reads on its own: it names its data, text encoder, model variant and
schedule with the helpers here, spells out its `runlocal` shrink, and leaves
the rest to `base_config()`; any key can be overridden with --config.KEY=VALUE.
"""

import ml_collections

from dit_jax.data import controls
from dit_jax.data.latents import VAE_SCALE
from dit_jax.diffusion.generate import CFG_SCALE, SAMPLER, STEPS
from dit_jax.models import variants
from dit_jax.training.sharding import DEFAULT_RULES

# Sizes below DiT-S, for CPU runs, named like DiT's (width, depth, heads, patch); the DiT sizes are in
# dit_jax/models/variants.py.
CPU_VARIANTS = {
    "DiT-T/4": dict(hidden_size=128, depth=4, num_heads=4, patch_size=4),   # configs/tiny.py, fashion_tiny.py
    "DiT-Toy/4": dict(hidden_size=64, depth=2, num_heads=4, patch_size=4),  # every `:runlocal`
}

# Training examples of the datasets the recipes name, for schedules set in epochs (coco_captions: tfds's
# "train" split, Karpathy's 2014 train images).
EXAMPLES = {"emoji": 3778, "fashion_mnist": 60_000, "fashion_scenes": 60_000, "tfds:coco_captions": 82_783}


def parse_arg(arg, **defaults):
    """big_vision's `bvcc.parse_arg`: "variant=DiT-B/2,runlocal" -> ConfigDict(variant="DiT-B/2", runlocal=True).

    Each option must be one of `defaults` and takes its type; a bare name sets a bool option to True.
    """
    options = ml_collections.ConfigDict(defaults)
    for item in filter(None, (arg or "").split(",")):
        key, has_value, value = item.partition("=")
        if key not in defaults:
            raise ValueError(f"Unknown recipe option {key!r} in {arg!r}; this recipe takes {sorted(defaults)}.")
        kind = type(defaults[key])
        if kind is bool:
            if has_value and value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"Recipe option {key} is on or off: write {key} or {key}=false, not {item!r}.")
            options[key] = not has_value or value.lower() in ("true", "1")
        elif not has_value:
            raise ValueError(f"Recipe option {key!r} needs a value: {key}=...")
        else:
            options[key] = kind(value)
    return options


def variant(name):
    """Model sizes by name: DiT's ("DiT-B/2") or the CPU ones above."""
    return dict(CPU_VARIANTS[name]) if name in CPU_VARIANTS else variants.variant(name)


def base_config():
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""             # a finished run (or export) whose weights this run starts from, e.g. an image DiT
    c.task = "diffusion"         # or "classifier": a noise-aware classifier for guidance (configs/classifier_fashion.py)
    c.data = dict(
        name="emoji",            # emoji | fashion_mnist | image_folder | circles | fashion_scenes | tfds:<name>
        resolution=32,
        source_dir="",           # image_folder: the directory; fashion_mnist: the idx files; tfds: manual_dir
        max_examples=0,          # 0: all
        shard_size=0,            # examples per prepared ArrayRecord shard (prepare); 0: 1,024
        flip=False,              # never applied to captions that speak of left or right
        color_jitter=0.0,
        rotation=0.0,            # degrees
        prefetch=2,
        # Control images `prepare` stores with each example (dit_jax/data/controls.py): canny, silhouette, tile,
        # gray, depth, pose; "user" (image_folder's conditioning_image column), "outline" (circles).
        controls=(),
        circles=dict(examples=50_000, seed=0),  # data.name=circles: how many, from which seed
    )
    # How the controls are computed: <type>_<option> (canny_low=100, ...), and the depth or pose model
    # (a local directory or hub id; "depth=A,pose=B" for both). user_name renames the "user" control.
    c.controls = dict(model_path="", user_name="",
                      **{f"{name}_{k}": v for name in controls.CONTROL_TYPES
                         for k, v in controls.options_of(name).items() if k != "model_path"})
    c.text = dict(encoder="minilm", path="", max_length=32, layer="last")  # run once by `prepare`
    c.vae = dict(path="", scale=VAE_SCALE)  # empty path: pixel space
    c.model = dict(
        patch_size=2, hidden_size=384, depth=12, num_heads=6, mlp_ratio=4.0,
        num_classes=0, class_dropout_prob=0.1, learn_sigma=True,
        text_cross_attention=True, text_pooled=True, null_text="learned", caption_dropout_prob=0.1,
        # A style label (num_styles > 0) and a layout of up to layout_max_boxes boxes with phrases (GLIGEN),
        # each dropped alone with its probability (dit_jax/models/dit.py, layout.py); the layout's gates start at
        # tanh(layout_gate_init): 0 (closed) to add layout to a trained model (init_from), as GLIGEN does;
        # layout_regions gives each image token the tokens of the boxes over it (models/layout.py).
        num_styles=0, style_dropout_prob=0.1, layout_max_boxes=0, layout_dropout_prob=0.1, layout_gate_init=0.0,
        layout_regions=False,
        dropout=0.0, attention="xla", remat="none", scan_blocks=True, dtype="float32",
        norm="layernorm", qk_norm=False, mlp="gelu", pos_embed="sincos",  # DiT's block; see modern_block
    )
    c.diffusion = dict(
        schedule="linear", timesteps=1000, prediction="eps", min_snr_gamma=0.0,
        # flow: flow matching (dit_jax/diffusion/flow.py), which reads the keys below and none of those above;
        # it needs model.learn_sigma=False and a flow sampler (sample.sampler=euler | heun | euler_maruyama).
        objective="ddpm",          # ddpm | flow
        flow_path="linear",        # linear (rectified flow, SD3, SiT) | gvp (SiT's cos / sin)
        time_sampling="uniform",   # uniform | logit_normal (SD3): t = sigmoid(logit_mean + logit_std * n)
        logit_mean=0.0, logit_std=1.0,
        shift=1.0,                 # SD3's t' = shift t / (1 + (shift - 1) t), in training and the sampling grid
    )
    c.init_from = ""  # a finished run (or weights directory) to start from; layers it lacks keep their init
    c.batch_size = 256
    c.steps = 400_000
    c.optim = dict(name="adamw", lr=1e-4, b1=0.9, b2=0.999, weight_decay=0.0, grad_clip=1.0, accumulate=1,
                   schedule="constant", warmup_steps=1000, restart_period=0, restart_mult=1, min_lr=0.0,
                   label_smoothing=0.0)  # task=classifier only: optax.smooth_labels of the one-hot targets
    c.ema = dict(decay=0.9999, warmup=True)
    # REPA (dit_jax/training/repa.py): the tokens after block `block` (1-based; 0: a third of the depth), through
    # a 3-layer MLP of width projector_dim (0: by the model's width, 2048 as the paper's from DiT-B's up, 256
    # below; data/repa.py: projector_dim), aligned by cosine similarity to a frozen encoder's patch features,
    # weighted by `weight` (0: off; the paper's 0.5). encoder: inception (the FID InceptionV3's Mixed_6e, offline)
    # | dinov2 (transformers, from encoder_path); features: prepare (stored with the data) | online (inception).
    c.repa = dict(weight=0.0, block=0, encoder="inception", encoder_path="", features="prepare", resolution=0,
                  projector_dim=0)  # resolution: the encoder's input side, 0: the smallest that covers the tokens
    c.mesh = dict(data=-1, fsdp=1, tensor=1, dcn_data=1)
    # Logical parameter axis -> mesh axis (None: replicated); batches split over data x fsdp.
    c.sharding_rules = [list(rule) for rule in DEFAULT_RULES]
    c.checkpoint = dict(every=5000, keep=3, keep_every=50_000, restore_step=0)  # 0: the newest that reads
    c.log = dict(every=100, tensorboard=True, wandb=False, mlflow=False)
    c.sample = dict(every=10_000, sampler=SAMPLER, steps=STEPS, cfg_scale=CFG_SCALE, seed=0,
                    spacing="",  # "": the sampler's default
                    eta=0.0,  # DDIM's noise (ddim, ddim_diffusers)
                    guidance_channels=0,  # 0: guide every channel
                    prompts=["red apple", "cat face", "smiling face with sunglasses", "rocket",
                             "green heart", "pizza", "snowman", "thumbs up"])
    # A ControlNet on a frozen base (models/controlnet.py): trained when `base` names a finished run or export.
    c.controlnet = dict(base="", num_blocks=1, control_type="", control_channels=0, control_size=0,
                        conditioning_dropout_prob=0.0)  # 0: the data's channels / resolution
    return c


def modern_block(c):
    """LightningDiT's block in place of DiT's: RMSNorm pre-norms, QK-norm, a SwiGLU MLP (about the same
    parameters) and 2-D rotary positions instead of the sin-cos table (dit_jax/models/dit.py)."""
    c.model.update(norm="rmsnorm", qk_norm=True, mlp="swiglu", pos_embed="rope")
    return c


def flow_matching(c):
    """SiT's and SD3's objective in place of DDPM's: the linear path with velocity targets, logit-normal times and
    Heun's sampler (dit_jax/diffusion/flow.py). At equal wall clock on fashion_tiny it beat DDPM's v-prediction
    with min-SNR on FID and adherence (BENCHMARKS.md, "Faster convergence")."""
    c.model.learn_sigma = False
    c.diffusion.update(objective="flow", time_sampling="logit_normal", logit_mean=0.0, logit_std=1.0)
    c.sample.sampler = "heun"
    return c


def video_model(c, frames=8, t_patch=1, blocks="alternating", temporal_attention=""):
    """A video DiT (dit_jax/models/video.py) over clips of `frames` frames, with `t_patch`-frame tubelets and
    temporal layers laid out as `blocks` (alternating | spatial_temporal); temporal_attention: their attention
    spec ("": model.attention's backend; "xla:local=2": keys within 2 frames)."""
    c.model.update(frames=frames, t_patch=t_patch, video_blocks=blocks, temporal_pos="attention", adaln="block",
                   temporal_attention=temporal_attention)
    c.data.frames = frames
    return c


def cosine_restarts(c, epochs=10, mult=2, cycles=0):
    """Cosine warm restarts as the tutorial sets them: a first period of `epochs` epochs, each next one
    `mult` times longer, in steps of c.batch_size over c.data's examples, after the warm-up; with `cycles`,
    c.steps ends with the last of them, where the rate is lowest. Set c.data, c.batch_size and the warm-up
    first (a --config.batch_size given later leaves the period in steps as it is)."""
    examples = c.data.max_examples or EXAMPLES[c.data.name]
    period = round(epochs * examples / c.batch_size)
    c.optim.update(schedule="cosine_restarts", restart_period=period, restart_mult=mult)
    if cycles:
        periods = (mult ** cycles - 1) // (mult - 1) if mult > 1 else cycles
        c.steps = c.optim.warmup_steps + period * periods
    return c



def runlocal_toy(c, **model):
    """The toy a recipe's `runlocal` trains, once its data is set: DiT-Toy/4 (with `model`'s overrides), batch 32,
    200 steps at 3e-4 after 20 warm-up steps with cosine_restarts' periods, a checkpoint every 100 steps, logs
    every 20 and samples at the end."""
    c.model.update(variant("DiT-Toy/4"), **model)
    c.batch_size, c.steps = 32, 200
    c.optim.update(lr=3e-4, warmup_steps=20)
    cosine_restarts(c, epochs=10, mult=2)
    c.checkpoint.every, c.log.every, c.sample.every = 100, 20, 200
    return c

def emoji_minilm(c, resolution, max_examples=0):
    """The emoji that ship in packages, in pixel space, with MiniLM captions (offline, real weights)."""
    c.data.update(name="emoji", resolution=resolution, source_dir="", max_examples=max_examples, flip=False)
    c.text.update(encoder="minilm", path="", max_length=32, layer="last")
    c.vae.path = ""
    return c


def coco_latents_256(c):
    """COCO captions at 256px in SD-VAE latents with CLIP ViT-L/14 text (its penultimate layer, as Stable
    Diffusion and PixArt read it). Needs coco_captions prepared for tfds under data.source_dir (no
    download offline) and the VAE and CLIP as hub ids or local copies."""
    c.data.update(name="tfds:coco_captions", resolution=256, flip=True)
    c.text.update(encoder="clip", path="openai/clip-vit-large-patch14", max_length=77, layer="penultimate")
    c.vae.update(path="stabilityai/sd-vae-ft-ema")
    c.sample.prompts = ["a cat sitting on a sofa", "a red double-decker bus on a city street",
                        "a bowl of fruit on a wooden table", "a surfer riding a large wave",
                        "a plate of pasta with tomato sauce", "a train crossing a bridge at sunset",
                        "two dogs playing in the snow", "a kitchen with white cabinets"]
    return c


def cpu_text_to_image(c):
    """What configs/tiny.py and configs/fashion_tiny.py share: a DiT-T/4 trained on a CPU in under an hour.
    Each sets its schedule with `cosine_restarts` once its data and batch are set."""
    # At depth 4 the plain loop over blocks is ~10% faster on CPU than scan_blocks, and compiles in 11 s
    # against 17 s (BENCHMARKS.md); the scan pays off from about depth 12.
    c.model.update(variant("DiT-T/4"), attention="auto", scan_blocks=False)
    # v-prediction with min-SNR weighting: on a CPU budget it learns the high-noise steps (where an
    # eps-model's x0 estimate is eps error times sigma/alpha) far sooner than DiT's eps loss.
    c.diffusion.update(prediction="v", min_snr_gamma=5.0)
    c.optim.lr = 5e-4
    c.ema.decay = 0.999
    c.checkpoint.update(every=500, keep=2, keep_every=0)
    c.log.every = 50
    c.sample.update(steps=25, cfg_scale=3.0)
    return c
