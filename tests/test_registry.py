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
    with pytest.raises(ValueError, match="unknown state"):
        ops.operation("x", writes=("pte.colour",))
    with pytest.raises(TypeError, match="tuple of distinct names"):
        ops.operation("x", reads="swap")


# ------------------------------------------------ the interaction relation (ops.STATE) ------
def test_every_operation_declares_the_state_it_touches():
    for op in ops.operations().values():
        assert op.writes or op.reads, f"{op.name} declares no state (writes=/reads=)"
        assert all(x in ops.STATE for x in op.writes + op.reads), op.name
    # only readers: the holder of a GUP reference reads the page through it
    assert ops.get("pin_read").writes == () and "gup.pin" in ops.get("pin_read").reads


def test_the_relation_is_symmetric_deterministic_and_discriminates():
    rel = ops.relation()
    assert list(rel) == list(ops.names())
    for a, partners in rel.items():
        for b, w in partners:
            assert w == len(ops.conflicts(ops.get(a), ops.get(b))) >= 1
            assert (a, w) in rel[b], (a, b)
    # what the declarations say, read back: a zap and writeback meet on the file PTE's dirty
    # bit, PG_dirty and the mapcount; a pipe reader meets only the holders and writers of a
    # GUP reference's page; clear_refs_all (young bits only) never meets writeback
    assert {"pte.dirty:file", "folio.dirty:file", "folio.mapcount:file"} <= set(
        ops.conflicts(ops.get("madvise_dontneed"), ops.get("writeback")))
    assert [b for b, _ in rel["pin_read"]] == ["pin_user_pages", "vmsplice", "pin_write",
                                              "unpin", "proc_mem_write"]
    assert "writeback" not in dict(rel["clear_refs_all"])
    assert ops.relation() is rel     # computed once


def test_the_focused_draw_is_seeded_and_enables_interacting_operations():
    from mmfuzz.explore import swarm_ops_focused
    draws = [swarm_ops_focused(random.Random(f"d{i}"), q=1.0) for i in range(300)]
    assert draws == [swarm_ops_focused(random.Random(f"d{i}"), q=1.0) for i in range(300)]
    rel = ops.relation()
    order = list(ops.names())
    for d in draws:
        assert 2 <= len(d) and list(d) == sorted(d, key=order.index)
        # some drawn operation (the focus) interacts with every other one drawn
        assert any(all(b == f or b in dict(rel[f]) for b in d) for f in d), d


def test_a_grown_draw_is_a_connected_set_of_interacting_operations():
    from mmfuzz.explore import swarm_ops_focused
    rel = ops.relation()
    for i in range(300):
        d = swarm_ops_focused(random.Random(f"g{i}"), q=1.0, more=0.7, grow=True)
        assert d == swarm_ops_focused(random.Random(f"g{i}"), q=1.0, more=0.7, grow=True)
        # from some drawn operation every other one is reached through interacting pairs
        reached = {d[0]}
        for _ in d:
            reached |= {b for a in list(reached) for b, _ in rel[a] if b in d}
        assert reached == set(d), d
