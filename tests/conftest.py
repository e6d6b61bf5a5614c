import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tests run on CPU; 8 host devices let sharding tests build real meshes.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# For the toy programs the tests start (train, sample, ...): they run for milliseconds but take seconds to
# compile, and LLVM's optimisations off halves that. Not for the test processes themselves, whose FID and
# judge networks run for real.
FAST_COMPILE_FLAG = "--xla_backend_optimization_level=0"

# JAX's persistent compilation cache, shared by the test processes (pytest -n) and the programs the tests
# start (they inherit the environment): what one compiles, the others and later runs read back.
# Compiles under 0.1 s are not worth a file.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(ROOT, ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
