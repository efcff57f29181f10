"""The benchmarks' CPU meter counts a process tree's CPU between two snapshots, including a child
that ended in between (a PostgreSQL backend of a closed connection, an autovacuum worker): it is
neither lost nor allowed to make the figure negative, as a plain sum over the live processes
did (the wallet benchmark once printed -995 µs of PostgreSQL CPU per transfer)."""

from __future__ import annotations

import subprocess
import sys
import time

from loadtests.bench_stack import CpuMeter, cpu_spent

# A parent that starts a child burning CPU, tells us the child's pid, reaps it when it exits, and
# then idles until its stdin closes.
TREE = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read(1); sum(i * i for i in range(8_000_000))"],
                         stdin=subprocess.PIPE)
print(child.pid, flush=True)
sys.stdin.readline()
child.stdin.close()  # the child burns its CPU now, then exits
child.wait()  # reaped: its CPU moves to this process's children times
print("reaped", flush=True)
sys.stdin.read()
"""


def test_a_child_that_ends_between_snapshots_counts_its_cpu_after_the_first() -> None:
    parent = subprocess.Popen([sys.executable, "-c", TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert parent.stdin is not None and parent.stdout is not None
    try:
        child_pid = int(parent.stdout.readline())
        meter = CpuMeter({"tree": parent.pid}, trees=frozenset({"tree"}))
        before = meter.snapshot()
        child_before = before[f"tree#{child_pid}"]  # its start-up, before it burns

        parent.stdin.write("go\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        after = meter.snapshot()

        assert f"tree#{child_pid}" not in after
        child_total = after["tree#reaped"] - before["tree#reaped"]
        assert child_total > 0.1  # the burn, credited to the parent on reaping
        spent = cpu_spent(before, after)["tree"]
        parent_own = after[f"tree#{parent.pid}"] - before[f"tree#{parent.pid}"]
        assert abs(spent - (child_total - child_before + parent_own)) < 1e-9
        assert spent > 0.1
    finally:
        parent.kill()
        parent.wait()


def test_a_process_gone_but_not_reaped_yet_is_lost_not_subtracted() -> None:
    # Seen in the first snapshot, unreadable in the second (ended, its parent has not reaped it).
    before = {"postgres#1": 5.0, "postgres#2": 3.0, "postgres#reaped": 1.0, "wallet": 2.0}
    after = {"postgres#1": 5.5, "postgres#reaped": 1.0, "wallet": 2.5}
    assert cpu_spent(before, after) == {"postgres": 0.5, "wallet": 0.5}


def test_processes_that_started_in_between_count_whole() -> None:
    before = {"postgres#1": 5.0, "postgres#reaped": 0.0, "box_busy": 100.0}
    after = {"postgres#1": 5.25, "postgres#7": 0.5, "postgres#reaped": 0.0, "box_busy": 101.0}
    assert cpu_spent(before, after) == {"postgres": 0.75, "box_busy": 1.0}


def test_the_meter_names_its_own_process() -> None:
    snapshot = CpuMeter({}, own="client").snapshot()
    assert snapshot["client"] <= time.process_time()
    assert "driver" not in snapshot
