"""Where training reports go: metrics.jsonl, TensorBoard, optionally W&B and MLflow, and the console.

Only process 0 writes. W&B and MLflow are imported only when the config asks.
"""

import json
import os

import numpy as np
import tqdm


class MetricWriter:
    def __init__(self, workdir, cfg, config_dict, active=True):
        self.active, self.writers = active, []
        if not active:
            return
        self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        if cfg.tensorboard:
            from tensorboardX import SummaryWriter
            self.tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self.writers.append("tensorboard")
        if cfg.wandb:
            import wandb
            wandb.init(dir=workdir, config=config_dict, resume="allow", id=os.path.basename(workdir.rstrip("/")))
            self.wandb = wandb
            self.writers.append("wandb")
        if cfg.mlflow:
            import mlflow
            mlflow.start_run(run_name=os.path.basename(workdir.rstrip("/")))
            mlflow.log_params({k: str(v) for k, v in config_dict.items()})
            self.mlflow = mlflow
            self.writers.append("mlflow")

    def scalars(self, step, values):
        if not self.active:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        if "tensorboard" in self.writers:
            for name, value in values.items():
                self.tensorboard.add_scalar(name, value, step)
            self.tensorboard.flush()
        if "wandb" in self.writers:
            self.wandb.log(values, step=step)
        if "mlflow" in self.writers:
            self.mlflow.log_metrics(values, step=step)

    def image(self, step, name, image):
        """image: a PIL image (e.g. a captioned grid)."""
        if not self.active:
            return
        array = np.asarray(image)
        if "tensorboard" in self.writers:
            self.tensorboard.add_image(name, array, step, dataformats="HWC")
            self.tensorboard.flush()
        if "wandb" in self.writers:
            self.wandb.log({name: self.wandb.Image(array)}, step=step)
        if "mlflow" in self.writers:
            self.mlflow.log_image(array, f"{name}_{step:08d}.png")

    def close(self):
        if self.active:
            self.jsonl.close()
        if "tensorboard" in self.writers:
            self.tensorboard.close()
        if "wandb" in self.writers:
            self.wandb.finish()
        if "mlflow" in self.writers:
            self.mlflow.end_run()


class Progress:
    """A progress bar with ETA on process 0, and one summary line per log interval."""

    def __init__(self, start, total, active=True):
        self.bar = tqdm.tqdm(initial=start, total=total, unit="step", dynamic_ncols=True,
                             disable=not active, smoothing=0.1)

    def update(self, loss):
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        self.bar.update(1)

    def summary(self, step, values):
        text = "  ".join(f"{k}={v:.4g}" for k, v in values.items())
        self.bar.write(f"step {step}: {text}")

    def close(self):
        self.bar.close()
