"""The benchmark itself stays runnable: a short bounded run, every response checked.
(Its figures are reported by `make bench`; timing is never asserted in tests.)"""

import subprocess
import sys

from tests.harness import REPO_ROOT


def test_calibration_benchmark_runs_clean() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "loadtests.bench_calibration", "--runs", "1", "--seconds", "0.5", "--in-flight", "8"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "errors 0" in result.stdout
    assert "runtime / bare =" in result.stdout
