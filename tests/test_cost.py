"""The cost record (mmfuzz.cost): flushes, flush IPIs and CPUs interrupted per operation, kept
in the checker's notes and summed over a campaign."""

from mmfuzz import cost
from mmfuzz.explore import explore
from mmfuzz.kernel import Mainline
from mmfuzz.kernels import resolve_kernel
from mmfuzz.run import default_world, execute


def test_one_writeback_flush_costs_one_flush_two_ipis_two_cpus():
    # CPU0 dirtied file page 0 in the prefault; writeback on CPU0 runs folio_mkclean, whose
    # ptep_clear_flush IPIs CPUs 1 and 2 (mm_cpumask holds all three).
    w = default_world()
    w["prefault"] = [[0, 0, 1]]
    run, out = execute(Mainline, w, [["start", 0, "writeback", 1]], quiesce=False)
    while run.runnable_cpus() or run.ipi_cpus():
        run.apply(["step", run.runnable_cpus()[0]] if run.runnable_cpus()
                  else ["ipi", run.ipi_cpus()[0]])
    assert out.violation is None
    assert run.m.cost == {"writeback": [1, 2, 2]}


def test_campaign_record_is_deterministic_and_consistent():
    def record():
        col = cost.start()
        try:
            found, _ = explore(Mainline, 1, runs_max=200)
        finally:
            cost.stop()
        assert found is None
        return col.record
    a, b = record(), record()
    assert a.to_json() == b.to_json()
    assert a.runs == 200
    for op, (flushes, ipis, cpus) in a.ops.items():
        assert flushes > 0 and ipis >= cpus, op
    assert set(a.ops) >= {"writeback", "munmap", "madvise_dontneed", "clear_refs"}


def test_compare_replays_the_same_schedules_on_the_second_kernel():
    col = cost.start(resolve_kernel("bug:zap-rmap-before-flush"))
    try:
        explore(Mainline, 1, runs_max=600)   # (the first run that differs is past 300)
    finally:
        cost.stop()
    assert col.compare.runs == col.record.runs == 600
    # the same schedules cost differently on the two kernels
    assert col.compare.ops["writeback"][0] > 0
    assert col.record.ops != col.compare.ops
