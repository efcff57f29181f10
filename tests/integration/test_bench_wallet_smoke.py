"""The wallet benchmark stays runnable: a short bounded run on a small ledger, every response
checked and the ledger balanced at the end. (Its figures are reported by `make bench`; timing is
never asserted in tests.)"""

import subprocess
import sys

from tests.harness import REPO_ROOT

SCENARIOS = ("echo", "single", "batch100", "hot")


def test_wallet_benchmark_runs_clean() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench_wallet",
            "--runs",
            "1",
            "--seconds",
            "0.5",
            "--members",
            "200",
            "--in-flight",
            "16",
            # The other writer setting than the service's default, which every other test uses.
            "--parallel-transfers-min",
            "100",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for scenario in SCENARIOS:
        lines = [
            line for line in result.stdout.splitlines() if line.strip().startswith(f"{scenario} ") and "errors" in line
        ]
        assert len(lines) == 2, output  # the run and the median
        assert all(line.endswith("errors 0") for line in lines), output
    assert "sum of posted 0," in result.stdout, output
    assert "(equal)" in result.stdout, output
    assert "a second transaction at 100 transfers waiting" in result.stdout, output
