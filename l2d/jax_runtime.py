"""JAX's start-up for a command: the platform and memory flags (read when jax is imported), the
processes of a multi-host job, the persistent compilation cache, and a check that the devices
asked for exist. Each command that computes calls ``start_jax`` once, before any JAX work."""

import os
from pathlib import Path

from l2d.config import RuntimeOptions
from l2d.errors import L2DError, first_line


def configure_jax_environment(runtime: RuntimeOptions) -> None:
    """Must run before jax is imported: platform and memory flags are read at import."""
    if runtime.jax_platform:
        os.environ["JAX_PLATFORMS"] = runtime.jax_platform
    if runtime.mem_frac is not None:
        os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = str(runtime.mem_frac)


def default_compilation_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "l2d" / "jax"


def start_jax(runtime: RuntimeOptions) -> None:
    """Join the other processes (multi-host), switch on the compilation cache, check devices."""
    configure_jax_environment(runtime)
    import jax

    if runtime.coordinator_address is not None:
        # CPU processes exchange gradients through gloo (the default has no cross-process path).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(runtime.coordinator_address, runtime.num_processes,
                                       runtime.process_id)
        except (RuntimeError, ValueError) as error:
            raise L2DError(f"--coordinator-address={runtime.coordinator_address}: cannot join "
                           f"the other processes: {first_line(error)}") from None
    if runtime.compilation_cache:
        folder = Path(runtime.compilation_cache_dir or default_compilation_cache()).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            # JAX would silently compile without the cache: say so instead.
            raise L2DError(f"--compilation-cache-dir={folder}: cannot create it "
                           f"({error.strerror})") from None
        jax.config.update("jax_compilation_cache_dir", str(folder))
        # Cache every program: l2d's many small ones (initialisation, evaluation) add up too.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        jax.devices()
    except RuntimeError as error:
        line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise L2DError(f"--jax-platform={runtime.jax_platform}: {line}") from None
