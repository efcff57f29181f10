"""The Purchase benchmark stays runnable: a short bounded run at a low rate on a tiny seed, all
five services up, every answer checked and the ledgers consistent at the end. (Its figures are
reported by `make bench`; timing is never asserted in tests, so a step that misses its p99 bound
here is fine: only errors are not.)"""

import subprocess
import sys

from tests.harness import REPO_ROOT

REPORT_LINES = (
    "max sustained Purchase rate",
    "at 5/s ",
    "calibration: Echo on processing",
    "ratio sustained / Echo",
    "cpu per purchase at 5/s",
    "mean time per saga step at 5/s",
)


def test_purchase_benchmark_runs_clean() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests.bench_processing",
            *("--runs", "1", "--seconds", "1", "--members", "40"),
            *("--rate-min", "10", "--rate-max", "15", "--at-rate", "5"),
            *("--partners", "1", "--outlets", "1", "--terminals", "2"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for line in REPORT_LINES:
        assert line in result.stdout, output
    assert "wrong answers 0; errors: warm-up 0, at 5/s 0, echo 0" in result.stdout, output
    assert "(balanced)" in result.stdout and "(equal)" in result.stdout and "(consistent)" in result.stdout, output
    at_rate = [line for line in result.stderr.splitlines() if line.rstrip().endswith("us") and "at-rate" in line]
    assert len(at_rate) == 1 and "errors 0 " in at_rate[0], output
    # processing's step histograms reach the report: every step of a purchase has a mean
    steps = next(line for line in result.stdout.splitlines() if "mean time per saga step at 5/s" in line)
    for step in ("replay_cache", "resolve", "accounts", "calculate", "record_plan", "wallet", "record_outcome"):
        assert f" {step} " in steps, output
