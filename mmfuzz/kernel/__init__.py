"""Kernel operations, one module per kernel source file they model. ``Mainline`` combines
them; a kernel variant is a subclass that overrides exactly the functions a patch changes."""

from .base import KernelBase, Task, Wait
from .filemap import Filemap
from .madvise import Madvise
from .mapping_dirty_helpers import MappingDirtyHelpers
from .memory import Memory
from .mmu_gather import MmuGatherOps
from .mprotect import Mprotect
from .page_writeback import PageWriteback
from .rmap import Rmap
from .task_mmu import TaskMmu
from .tlbflush import TlbFlushX86
from .vma import VmaOps


class Mainline(Memory, MmuGatherOps, Rmap, Filemap, PageWriteback, Madvise, VmaOps, TaskMmu,
               TlbFlushX86, Mprotect, MappingDirtyHelpers, KernelBase):
    """Mainline (v6.12 baseline) with every catalogued fix in."""

    name = "mainline"


__all__ = ["Mainline", "KernelBase", "Task", "Wait"]
