"""The device mesh (data, fsdp, tensor) and the rules that place parameters and batches on it.

Parameters carry logical axis names (embed, mlp, heads, ...); the config's
rules map each to a mesh axis. Batches split over data and fsdp together:
FSDP is data parallelism whose parameters are also split.
"""

import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (None: replicated).
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("adaln", "tensor"),
    ("vocab", None),
)


def mesh_shape(mesh_cfg, num_devices):
    """Axis sizes from the config, -1 taking the devices that remain; one clear error if they do not fit."""
    sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"Only one mesh axis may be -1, got {dict(zip(MESH_AXES, sizes))}.")
    fixed = math.prod(s for s in sizes if s != -1)
    if any(s == 0 or s < -1 for s in sizes) or num_devices % fixed:
        raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} does not fit {num_devices} devices: "
                         f"set --config.mesh.data/fsdp/tensor so that their product is {num_devices}.")
    sizes = [num_devices // fixed if s == -1 else s for s in sizes]
    if math.prod(sizes) != num_devices:
        raise ValueError(f"Mesh {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices but there are "
                         f"{num_devices}: set --config.mesh.data/fsdp/tensor so that their product is {num_devices}.")
    return tuple(sizes)


def make_mesh(mesh_cfg, devices=None):
    """A mesh over all devices; with mesh.dcn_data > 1, data parallelism spans slices (multi-slice/DCN)."""
    devices = jax.devices() if devices is None else devices
    shape = mesh_shape(mesh_cfg, len(devices))
    dcn = int(mesh_cfg.get("dcn_data", 1))
    if dcn > 1:
        from jax.experimental import mesh_utils
        if shape[0] % dcn:
            raise ValueError(f"mesh.data={shape[0]} is not divisible by mesh.dcn_data={dcn}.")
        grid = mesh_utils.create_hybrid_device_mesh(
            (shape[0] // dcn, shape[1], shape[2]), (dcn, 1, 1), devices=devices)
    else:
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_mesh(names, shape, mesh, rules):
    """A PartitionSpec for one array: each logical name mapped by the rules, a mesh axis used once,
    and an axis left replicated where its size does not divide."""
    rules, used, spec = dict(rules), set(), []
    for name, size in zip(names or (None,) * len(shape), shape):
        axis = rules.get(name)
        if axis is None or axis in used or size % mesh.shape[axis]:
            spec.append(None)
        else:
            spec.append(axis)
            used.add(axis)
    return P(*spec)


def param_shardings(abstract_params, mesh, rules=DEFAULT_RULES):
    """The parameter State with each value replaced by its NamedSharding, from the logical axis names."""
    def place(var):
        names = var.get_metadata().get("out_sharding")
        return var.replace(NamedSharding(mesh, logical_to_mesh(names, var.shape, mesh, rules)))
    return jax.tree.map(place, abstract_params, is_leaf=lambda x: hasattr(x, "get_metadata"))


def batch_sharding(mesh):
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
    return NamedSharding(mesh, P())


def check_batch(global_batch, mesh, accumulate=1):
    """The batch must split evenly over the data-parallel devices and the accumulation steps."""
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    if global_batch % (ways * accumulate):
        raise ValueError(f"batch_size {global_batch} does not divide into {ways} data-parallel devices x "
                         f"{accumulate} accumulation steps: use a multiple of {ways * accumulate}.")
