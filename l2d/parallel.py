"""Data parallelism over every device of every process: a 1-D mesh over the batch.

Each batch is split over the devices along its first axis (``P("data")``); parameters, optimizer
states and metric totals are replicated (``P()``). The jitted steps then compute exactly what one
device would on the whole batch: XLA inserts the all-reduces, and BatchNorm normalises with the
statistics of the global batch. With several processes, each one feeds only its own rows of
every global batch (see ``l2d.data.pipeline``'s ``shard``).
"""

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from l2d.errors import L2DError

AXIS = "data"
# MLflow run ids are 32 hex characters; room to spare.
RUN_ID_BYTES = 64


@dataclasses.dataclass(frozen=True)
class DataParallel:
    mesh: Mesh

    @property
    def batch(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    @property
    def num_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def shard(self) -> tuple[int, int]:
        """(this process, process count): which rows of each global batch this process loads."""
        return jax.process_index(), jax.process_count()

    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.num_devices:
            raise L2DError(f"--batch-size={batch_size}: must be divisible by the number of "
                           f"devices, {self.num_devices}")

    def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a batch -> global arrays sharded over the mesh."""
        return {key: jax.make_array_from_process_local_data(self.batch, value)
                for key, value in local_batch.items()}

    @property
    def is_main(self) -> bool:
        """Process 0: the one that logs to MLflow and prints."""
        return jax.process_index() == 0

    @property
    def is_single_process(self) -> bool:
        return jax.process_count() == 1

    def fetch(self, tree):
        """Replicated arrays -> NumPy, from this process's copy (no cross-process transfer)."""
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

    def share_run_id(self, run_id: str) -> str:
        """Process 0's MLflow run id, on every process (they write to its checkpoint folder)."""
        if self.is_single_process:
            return run_id
        from jax.experimental import multihost_utils

        encoded = np.frombuffer(run_id.encode().ljust(RUN_ID_BYTES), dtype=np.uint8)
        shared = multihost_utils.broadcast_one_to_all(encoded)
        return bytes(np.asarray(shared, dtype=np.uint8)).decode().strip()

    def wait_for_all(self, name: str) -> None:
        """Block until every process gets here (before leaving: process 0 logs longer)."""
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(name)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def abstract(self, tree):
        """Shapes and dtypes of ``tree``, placed replicated: the template to restore into."""
        return jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), tree)


def data_parallel() -> DataParallel:
    """A mesh over all devices that JAX sees, those of other processes included."""
    return DataParallel(Mesh(np.asarray(jax.devices()), (AXIS,)))
