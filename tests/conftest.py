import os
import shutil
import sys
import tempfile

# Tests run on the CPU; the 8-device pod simulation is opt-in per subprocess (see test_sharding).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent XLA compilation cache for the whole run, shared by the xdist workers and the
# subprocesses they start (they inherit the environment): many tests compile the same tiny programs.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="recap_jax_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
sys.path.insert(0, os.path.dirname(__file__))

MAX_WORKERS = 4  # each worker holds jax, torch and its tests' models (~2-4 GiB)


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


def pytest_sessionfinish(session, exitstatus) -> None:
    if _OWN_CACHE and "PYTEST_XDIST_WORKER" not in os.environ:  # the process that made it
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
