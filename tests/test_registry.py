"""The operation registry (mmfuzz.ops): declared once, read by every engine and by validation."""

import random

import pytest

from mmfuzz import ops
from mmfuzz.explore import syscall_action
from mmfuzz.kernel import Mainline
from mmfuzz.run import Run, default_world


def test_every_operation_names_a_generator_method_of_mainline():
    first = ("madvise_dontneed", "munmap", "mmap", "writeback", "drop_cache", "clear_refs")
    # registration order: module import order, then definition order (madvise_free follows
    # madvise_dontneed in madvise.py); the first operations keep their relative order
    assert tuple(n for n in ops.names() if n in first) == first
    for op in ops.operations().values():
        assert callable(getattr(Mainline, op.method, None)), op.name
        assert op.context in ops.CONTEXTS and op.doc


def test_drawn_start_actions_are_enabled_and_pass_validation():
    world = default_world()
    # a fourth CPU with no process, so that a drawn fork has somewhere to place its child
    world.update(ncpus=4, cpu_mm=[1, 1, 1, 0])
    rng = random.Random(1)
    for op in ops.names():
        for _ in range(20):
            action = syscall_action(lambda options, label: rng.choice(list(options)), world, 1,
                                    0, op)
            assert ops.check_start(action, world) is None, action
            assert Run(Mainline, world).enabled(action), action


def test_enumeration_covers_every_drawable_value():
    world = default_world()
    ctx = ops.Ctx(world, 0, 1)
    every = ops.enumerate_values(ops.get("madvise_dontneed"), ctx)
    # file VMA [0, 4): 4 + 3 + 2 + 1 ranges; anon VMA [4, 6): 2 + 1
    assert len(every) == 13 and [0, 4] in every and [5, 1] in every
    assert ops.enumerate_values(ops.get("clear_refs"), ctx) == [[]]
    assert ops.enumerate_values(ops.get("drop_cache"), ctx) == [[1, i] for i in range(4)]


@pytest.mark.parametrize("action,needle", [
    (["start", 0, "fork_bomb"], "unknown operation"),
    (["start", 0, "munmap", 1], "takes 2 argument"),
    (["start", 0, "munmap", 0, 99], "must lie inside"),
    (["start", 0, "munmap", True, 1], "must be integers"),
    (["start", 0, "writeback", 7], "file must be one of"),
    (["start", 0, "drop_cache", 1, 4], "index must be a page"),
    (["start", 0, "mmap", -1], "index into the world"),
])
def test_bad_start_actions_are_named(action, needle):
    assert needle in ops.check_start(action, default_world())


def test_declaration_mistakes_are_caught_at_definition():
    with pytest.raises(TypeError, match="is not an mmfuzz.ops.Arg"):
        ops.operation("x", 3)
    with pytest.raises(ValueError, match="context must be one of"):
        ops.operation("x", context="irq")
    with pytest.raises(ValueError, match="declared twice"):
        @ops.operation("munmap")
        def not_munmap(self, t):
            yield "x"
