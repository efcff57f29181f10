"""Calibration benchmark: the ceiling of one trivial unary RPC on this machine.

Two servers answer `DiagnosticsService/Echo`, each in its own process, one at a time:
  * bare     - a plain grpc.aio server on uvloop, nothing else;
  * runtime  - a real loyalty service process (wallet) with our whole edge: metrics + error
               mapping interceptor, health, reflection, bounded concurrency.
The client is a separate process (so the two cores are used as in production), keeps
`--in-flight` calls running, and every response is checked. Each server gets `--runs` runs;
the report gives medians, and the ratio runtime/bare from the same run.

    python -m loadtests.bench_calibration [--runs 3] [--seconds 5] [--in-flight 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from grpc import aio
from loyalty.diagnostics.v1 import diagnostics_pb2, diagnostics_pb2_grpc

from loadtests.bench_stack import PRODUCTION_CHECKS
from loadtests.driver import RunResult, closed_loop
from shared.embedded import EmbeddedPostgres, EmbeddedRedis, free_port, port_is_open
from shared.servicers import DiagnosticsServicer
from tests.harness import Infra, ServiceProcess

CALLS_MAX_PER_RUN = 500_000
PAYLOAD = b"calibration"


async def serve_bare(port: int) -> None:
    server = aio.server(options=[("grpc.so_reuseport", 0)])
    diagnostics_pb2_grpc.add_DiagnosticsServiceServicer_to_server(DiagnosticsServicer("bare"), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def drive(target: str, *, seconds: float, in_flight: int) -> RunResult:
    async with aio.insecure_channel(target) as channel:
        echo = diagnostics_pb2_grpc.DiagnosticsServiceStub(channel).Echo
        request = diagnostics_pb2.EchoRequest(payload=PAYLOAD)

        async def call() -> None:
            response = await echo(request, timeout=5)
            if response.payload != PAYLOAD:
                raise AssertionError("wrong echo payload")

        await closed_loop(call, in_flight=in_flight, duration_s=0.5, calls_max=5_000)  # warm-up
        return await closed_loop(call, in_flight=in_flight, duration_s=seconds, calls_max=CALLS_MAX_PER_RUN)


def run_client(target: str, seconds: float, in_flight: int) -> RunResult:
    """The client in its own process; it prints its result as JSON."""
    command = [
        sys.executable,
        "-m",
        "loadtests.bench_calibration",
        "--client",
        target,
        "--seconds",
        str(seconds),
        "--in-flight",
        str(in_flight),
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    return RunResult(**json.loads(output.strip().splitlines()[-1]))


def measure(name: str, target: str, args: argparse.Namespace) -> list[RunResult]:
    results = []
    for index in range(args.runs):
        result = run_client(target, args.seconds, args.in_flight)
        print(
            f"  {name:<8} run {index + 1}: {result.rate:8.0f} calls/s  p50 {result.p50_ms:6.2f} ms"
            f"  p99 {result.p99_ms:6.2f} ms  errors {result.errors}",
            flush=True,
        )
        results.append(result)
    return results


def summary(results: list[RunResult]) -> tuple[float, float, float]:
    return (
        statistics.median(r.rate for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (1 <= args.runs <= 10 and 0.5 <= args.seconds <= 60 and 1 <= args.in_flight <= 1000):
        parser.error("bounds: runs 1..10, seconds 0.5..60, in-flight 1..1000")
    if args.client:
        result = uvloop.run(drive(args.client, seconds=args.seconds, in_flight=args.in_flight))
        print(json.dumps(result.__dict__))
        return 0
    if args.bare_server:
        uvloop.run(serve_bare(args.bare_server))
        return 0

    print(
        f"calibration: Echo, {args.in_flight} in flight, {args.runs} x {args.seconds:.0f} s, client and server "
        f"in separate processes on {os.cpu_count()} cores"
    )
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-m", "loadtests.bench_calibration", "--bare-server", str(bare_port)])
    try:
        deadline = time.monotonic() + 15
        while not port_is_open(bare_port):
            if time.monotonic() > deadline:
                raise RuntimeError("bare server did not start")
            time.sleep(0.05)
        bare_results = measure("bare", f"127.0.0.1:{bare_port}", args)
    finally:
        bare.terminate()
        bare.wait()

    with tempfile.TemporaryDirectory(prefix="loyalty-bench-") as data:
        postgres = EmbeddedPostgres(Path(data) / "postgres", free_port()).start()
        redis = EmbeddedRedis(Path(data) / "redis", free_port()).start()
        try:
            infra = Infra(database_server_url=postgres.url, redis_url=redis.url)
            infra.migrate("wallet")
            service = ServiceProcess("wallet", infra.service_env("wallet", **PRODUCTION_CHECKS)).start()
            try:
                runtime_results = measure("runtime", service.grpc_address, args)
            finally:
                service.stop()
        finally:
            redis.stop()
            postgres.stop(mode="immediate")

    bare_rate, bare_p50, bare_p99 = summary(bare_results)
    rate, p50, p99 = summary(runtime_results)
    print("medians:")
    print(f"  bare     {bare_rate:8.0f} calls/s  p50 {bare_p50:6.2f} ms  p99 {bare_p99:6.2f} ms")
    print(f"  runtime  {rate:8.0f} calls/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(
        f"  runtime / bare = {rate / bare_rate:.2f}  (calibration ceiling for service benchmarks: {rate:.0f} calls/s)"
    )
    errors = sum(r.errors for r in bare_results + runtime_results)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
