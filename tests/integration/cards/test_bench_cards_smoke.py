"""The cards benchmark stays runnable: a short bounded run (small batches, few members), every
answer checked. (Its figures are reported by `make bench`; timing is never asserted in tests.)"""

import subprocess
import sys

from tests.harness import REPO_ROOT

SCENARIOS = ("echo", "resolve", "batch50")


def test_cards_benchmark_runs_clean() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench_cards",
            "--runs",
            "1",
            "--seconds",
            "0.5",
            "--batch-size",
            "2000",
            "--members",
            "40",
            "--in-flight",
            "16",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "checked: ok" in result.stdout, output
    for scenario in SCENARIOS:
        lines = [
            line for line in result.stdout.splitlines() if line.strip().startswith(f"{scenario} ") and "errors" in line
        ]
        assert len(lines) == 2, output  # the run and the median
        assert all(line.endswith("errors 0") for line in lines), output
