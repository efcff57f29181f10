"""py-spy for the benchmarks: record a service process during one step and tell where its CPU
went, aggregated per function from the speedscope file py-spy writes (which also opens in
https://www.speedscope.app).

Recorded with --native: Python frames interleaved with C ones (gRPC's core, uvloop, asyncpg's
protocol, upb, the interpreter's GC, system calls), because most of a gRPC service's time is
spent below Python. Native stacks need py-spy to pause the process for each sample, so the
recorded step is an extra one whose latency is not reported. py-spy's idea of "busy" is not
reliable with native stacks (a thread blocked in epoll_wait is counted), so samples whose
innermost frame is a blocking wait are left out here: what remains is where the CPU went.
"""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SAMPLES_PER_S = 100
ATTACH_S = 0.5  # py-spy needs a moment to attach before the step it records starts
# Cut off in frame names: everything up to the package, the standard library or the repository.
PATH_MARKERS = (
    "site-packages/",
    f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/",
    f"{Path(__file__).resolve().parents[1]}/",
)
# A sample whose innermost frame is one of these is a thread waiting, not working: the event
# loop's epoll, gRPC's poller thread, the metrics HTTP server's poll, sleeps, futex waits.
IDLE_LEAVES = frozenset(
    {
        "epoll_wait",
        "epoll_pwait",
        "poll",
        "ppoll",
        "select",
        "pselect",
        "nanosleep",
        "clock_nanosleep",
        "pthread_cond_wait",
        "pthread_cond_timedwait",
        "__futex_abstimed_wait_common",
        "__futex_abstimed_wait_common64",
        "sem_wait",
        "sem_timedwait",
    }
)
# Self time by where the code lives: the first area one of whose markers is in the file name.
AREAS = (
    ("grpc (Python, Cython and C core)", ("grpc/", "grpc_", "cygrpc")),
    ("asyncpg", ("asyncpg/",)),
    ("protobuf (upb)", ("google/protobuf/", "google/_upb")),
    ("event loop (asyncio, uvloop, libuv)", ("asyncio/", "uvloop/", "selectors.py", "libuv")),
    ("redis client", ("redis/",)),
    ("metrics, tracing, logging", ("prometheus_client/", "opentelemetry/", "pythonjsonlogger/", "logging/")),
    ("services/ (ours)", ("services/",)),
    ("shared/ (ours)", ("shared/",)),
    ("interpreter (incl. garbage collection)", ("libpython", "Python-3.", "<frozen")),
    ("C library, system calls", ("libc.so", "libstdc++", "/usr/lib/", "/lib/x86_64", "/lib/aarch64")),
)
LIBC = AREAS[-1][0]
OURS = ("services/", "shared/")
ROOT_SHARE = 0.8  # frames on more than this share of the samples are the process's roots


def py_spy_binary() -> str:
    """py-spy from this virtualenv (a dev dependency), else from PATH."""
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise RuntimeError("py-spy is not installed: pip install py-spy (it is in the dev extras)")
    return found


async def start_recording(pid: int, seconds: float, output: Path) -> asyncio.subprocess.Process:
    output.parent.mkdir(parents=True, exist_ok=True)
    process = await asyncio.create_subprocess_exec(
        py_spy_binary(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(math.ceil(seconds)),
        "--rate",
        str(SAMPLES_PER_S),
        "--native",
        "--format",
        "speedscope",
        "--output",
        str(output),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(ATTACH_S)
    return process


async def finish_recording(process: asyncio.subprocess.Process, output: Path, timeout_s: float) -> None:
    _, stderr = await asyncio.wait_for(process.communicate(), timeout_s)
    if process.returncode != 0:
        raise RuntimeError(f"py-spy failed ({process.returncode}) writing {output}: {stderr.decode()[-2000:]}")


@dataclass(frozen=True)
class FunctionShare:
    function: str  # "name (file)"
    self_share: float  # of the working time, as the innermost frame
    total_share: float  # of the working time, anywhere on the stack


@dataclass(frozen=True)
class Summary:
    samples: int  # working samples (waits left out)
    seconds: float  # the working time they stand for
    idle_seconds: float  # samples left out as waits
    by_self: list[FunctionShare]
    by_total: list[FunctionShare]  # our code only, without the process's roots
    by_area: list[tuple[str, float]]  # C library frames charged to their caller's area
    libc_share: float  # innermost frame in the C library: mostly system calls


Frame = tuple[str, str]  # function, short file name


def summarize(speedscope: Path, top: int = 15) -> Summary:
    """The top functions by self and by total time, over all threads, waits left out."""
    document = json.loads(speedscope.read_text())
    frames = [_frame(frame) for frame in document["shared"]["frames"]]
    own: Counter[Frame] = Counter()  # weights: seconds
    anywhere: Counter[Frame] = Counter()
    areas: Counter[str] = Counter()
    samples, seconds, idle, libc = 0, 0.0, 0.0, 0.0
    for profile in document["profiles"]:
        for stack, weight in zip(profile["samples"], profile["weights"], strict=True):
            if not stack or frames[stack[-1]][0] in IDLE_LEAVES:
                idle += weight
                continue
            samples += 1
            seconds += weight
            own[frames[stack[-1]]] += weight
            for frame in {frames[index] for index in stack}:
                anywhere[frame] += weight
            area = _caller_area([frames[index] for index in reversed(stack)])
            areas[area] += weight
            libc += weight if _area(frames[stack[-1]][1]) == LIBC else 0.0
    total = max(seconds, 1e-9)

    def share(frame: Frame) -> FunctionShare:
        return FunctionShare(f"{frame[0]} ({frame[1]})", own[frame] / total, anywhere[frame] / total)

    ours = Counter({f: w for f, w in anywhere.items() if f[1].startswith(OURS) and w < ROOT_SHARE * total})
    return Summary(
        samples=samples,
        seconds=seconds,
        idle_seconds=idle,
        by_self=[share(frame) for frame, _ in own.most_common(top)],
        by_total=[share(frame) for frame, _ in ours.most_common(top)],
        by_area=[(area, weight / total) for area, weight in areas.most_common()],
        libc_share=libc / total,
    )


def _caller_area(innermost_first: list[Frame]) -> str:
    """The area of the innermost frame outside the C library (a write() belongs to whoever
    called it: gRPC's core, libuv, asyncpg...)."""
    for _, file in innermost_first:
        area = _area(file)
        if area != LIBC:
            return area
    return LIBC


def _area(file: str) -> str:
    for area, markers in AREAS:
        if any(marker in file for marker in markers):
            return area
    return "other (standard library, ...)"


def _frame(frame: dict[str, object]) -> Frame:
    """Function and a short file name: site-packages, the standard library's folder and the
    repository root are cut off."""
    file = str(frame.get("file") or "")
    for marker in PATH_MARKERS:
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    return str(frame.get("name")), file


def report_lines(service: str, speedscope: Path, top: int = 15) -> list[str]:
    summary = summarize(speedscope, top)
    lines = [
        f"py-spy, {service}: {summary.seconds:.1f} s of work in {summary.samples} samples, all threads"
        f" ({summary.idle_seconds:.1f} s of waits left out); {speedscope}",
        "  by self time:",
    ]
    lines += [f"    {share.self_share:6.1%}  {share.function}" for share in summary.by_self]
    lines.append(
        f"  self time by area (C library frames, {summary.libc_share:.0%} of the work, mostly system calls,"
        " charged to their caller):"
    )
    lines += [f"    {fraction:6.1%}  {area}" for area, fraction in summary.by_area]
    lines.append("  by total time, our code (the function and what it calls):")
    lines += [f"    {share.total_share:6.1%}  {share.function}" for share in summary.by_total]
    return lines
