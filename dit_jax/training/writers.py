"""Where training reports go: metrics.jsonl, TensorBoard, optionally W&B and MLflow, and the console.

Only process 0 writes. W&B and MLflow are imported only when the config asks.
"""

import hashlib
import importlib.util
import json
import os
import time

import numpy as np
import tqdm

from dit_jax.utils import paths

# What each tracker needs installed, and the extra of setup.py that installs it.
TRACKERS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}
MLFLOW_RUN_FILE = "mlflow_run_id"  # in the workdir: a restarted run logs to the same MLflow run


def check_trackers(cfg):
    """One-line errors for a tracker the config turns on but is not installed, before anything loads."""
    for name, (module, extra) in TRACKERS.items():
        if cfg.get(name) and importlib.util.find_spec(module) is None:
            raise ValueError(f"log.{name} is on but {module} is not installed: pip install -e .[{extra}] "
                             f"(or set --config.log.{name}=False).")


def wandb_id(workdir):
    """The W&B run id of a workdir: its name and a hash of its path, so a resumed run continues its own run and
    two workdirs of the same name do not share one."""
    path = paths.absolute(workdir)
    return f"{paths.path(path).name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def flat_config(config, prefix=""):
    """A nested config as {"a.b": value}, for trackers whose parameters are flat (MLflow)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat_config(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class MetricWriter:
    """Every report to every writer the config turns on: the same scalars (by step), sample grids and resolved
    config go to TensorBoard (text "config"), W&B (the run's config) and MLflow (params + config.json)."""

    def __init__(self, workdir, cfg, config_dict, active=True):
        self.active, self.writers = active, []
        if not active:
            return
        check_trackers(cfg)
        self.jsonl = paths.append_file(paths.join(workdir, "metrics.jsonl"))
        config_text = json.dumps(config_dict, indent=2, sort_keys=True, default=str)
        if cfg.tensorboard:
            self.tensorboard = paths.summary_writer(paths.join(workdir, "tensorboard"))
            self.tensorboard.add_text("config", "\n".join("    " + line for line in config_text.splitlines()), 0)
            self.writers.append("tensorboard")
        if cfg.wandb:
            import wandb
            # WANDB_MODE=offline writes the run under WANDB_DIR (default: the workdir) for `wandb sync` later.
            local = paths.mirror(workdir) if paths.is_remote(workdir) else workdir  # W&B writes local files
            self.wandb = wandb.init(dir=os.environ.get("WANDB_DIR", local), config=config_dict,
                                    project=os.environ.get("WANDB_PROJECT", "dit_jax"), id=wandb_id(workdir),
                                    name=paths.path(workdir).name, resume="allow")
            self.writers.append("wandb")
        if cfg.mlflow:
            self._start_mlflow(workdir, config_dict, config_text)
            self.writers.append("mlflow")

    def _start_mlflow(self, workdir, config_dict, config_text):
        """MLFLOW_TRACKING_URI's server or store, else a file store in WORKDIR/mlruns; MLFLOW_EXPERIMENT_NAME's
        experiment, else dit_jax. A restarted run continues the MLflow run whose id the workdir keeps."""
        from mlflow import MlflowClient
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri and paths.is_remote(workdir):
            raise ValueError(f"log.mlflow with the workdir on {paths.scheme(workdir)}:// needs MLFLOW_TRACKING_URI "
                             "(a server or database): MLflow's file store is local.")
        if not uri:  # MLflow 3 keeps its file store only on request; a local run without a server is one
            uri = "file://" + os.path.join(os.path.abspath(workdir), "mlruns")
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.mlflow = client = MlflowClient(uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "dit_jax")
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        path, run = paths.path(workdir).joinpath(MLFLOW_RUN_FILE), None
        if path.is_file():
            run_id = path.read_text().strip()
            try:
                run = client.get_run(run_id)
            except Exception:  # pylint: disable=broad-except  # another store, or deleted: start a new run
                run = None
        if run is None:
            run = client.create_run(experiment_id, run_name=paths.path(workdir).name)
            path.write_text(run.info.run_id)
        else:
            client.update_run(run.info.run_id, status="RUNNING")
        self.mlflow_run = run.info.run_id
        from mlflow.entities import Param  # pylint: disable=import-outside-toplevel
        logged = run.data.params
        params = [Param(k, str(v)[:500]) for k, v in flat_config(config_dict).items() if k not in logged]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            client.log_batch(self.mlflow_run, params=params[i:i + 100])
        client.log_text(self.mlflow_run, config_text, "config.json")  # the whole config (params cut at 500 chars)

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
            from mlflow.entities import Metric  # pylint: disable=import-outside-toplevel
            now = int(time.time() * 1000)
            self.mlflow.log_batch(self.mlflow_run, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def image(self, step, name, image):
        """image: a PIL image (e.g. a captioned grid)."""
        if not self.active:
            return
        array = np.asarray(image)
        if "tensorboard" in self.writers:
            self.tensorboard.add_image(name, array, step, dataformats="HWC")
            self.tensorboard.flush()
        if "wandb" in self.writers:
            self.wandb.log({name: self.wandb_image(array)}, step=step)
        if "mlflow" in self.writers:
            self.mlflow.log_image(self.mlflow_run, array, key=name, step=step)

    def wandb_image(self, array):
        import wandb  # pylint: disable=import-outside-toplevel
        return wandb.Image(array)

    def close(self):
        if self.active:
            self.jsonl.close()
        if "tensorboard" in self.writers:
            self.tensorboard.close()
        if "wandb" in self.writers:
            self.wandb.finish()
        if "mlflow" in self.writers:
            self.mlflow.set_terminated(self.mlflow_run)


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
