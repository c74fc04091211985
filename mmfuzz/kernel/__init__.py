"""Kernel operations, one module per kernel source file they model. ``Mainline`` combines
them; a kernel variant is a subclass that overrides exactly the functions a patch changes."""

from .base import KernelBase, Task, Wait
# The import order is the registration order of the operations (mmfuzz.ops): the order in
# which engines list them and swarm testing switches them on or off. Append new modules.
from .madvise import Madvise  # isort: skip
from .vma import VmaOps  # isort: skip
from .page_writeback import PageWriteback  # isort: skip
from .filemap import Filemap  # isort: skip
from .task_mmu import TaskMmu  # isort: skip
from .memory import Memory  # isort: skip
from .mmu_gather import MmuGatherOps  # isort: skip
from .rmap import Rmap  # isort: skip
from .tlbflush import TlbFlushX86  # isort: skip
from .fork import ForkOps  # isort: skip
from .gup import Gup  # isort: skip
from .swap import Swap  # isort: skip
from .vmscan import Vmscan  # isort: skip
from .mprotect import Mprotect  # isort: skip
from .mapping_dirty_helpers import MappingDirtyHelpers  # isort: skip
from .ksm import Ksm  # isort: skip
from .truncate import Truncate  # isort: skip
from .mremap import Mremap  # isort: skip


class Mainline(Memory, MmuGatherOps, Rmap, Filemap, PageWriteback, Madvise, VmaOps, TaskMmu,
               ForkOps, Gup, TlbFlushX86, Swap, Vmscan, Mprotect, MappingDirtyHelpers, Ksm,
               Truncate, Mremap, KernelBase):
    """Mainline (v6.12 baseline) with every catalogued fix in."""

    name = "mainline"


__all__ = ["Mainline", "KernelBase", "Task", "Wait"]
