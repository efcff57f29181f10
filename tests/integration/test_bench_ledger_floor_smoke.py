"""The ledger-floor benchmark stays runnable: a short bounded run on a small ledger. (Its figures
are reported by `make bench`; timing is never asserted in tests.)"""

import subprocess
import sys

from tests.harness import REPO_ROOT


def test_ledger_floor_benchmark_runs_clean() -> None:
    command = [sys.executable, "-m", "loadtests.bench_ledger_floor", "--runs", "1", "--seconds", "0.3"]
    command += ["--members", "500", "--batch", "20"]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=90, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "run 1:" in output and "median:" in output and "transfers/s" in output, output
