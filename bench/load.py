"""Load-test a live Atelier server: many clients at once through the REST API and the Gradio endpoint.

    python bench/load.py                          # about 35 s on an idle 2-core CPU
    python bench/load.py --clients 4 --requests 3 # fewer clients, more requests each
    python bench/load.py --deadline 120           # give up (and report) after 2 minutes in all

Starts ``launch.py --api`` on a free port in a temporary folder (its cwd, models, outputs and data),
in its own process group, and stops the group at the end, also on an error, Ctrl-C or ``kill``.
Every request is tiny (64x64, 8 steps) so the figures measure the server, not the model.

* Phase 1, one client: ``--single`` sequential REST txt2img calls after a warm-up call of each kind
  (sent once ``/sdapi/v1`` answers, not merely the page); the median latency gives the single-client
  throughput (1 / median, in requests per second).
* Phase 2, ``--clients`` threads at once, each sending ``--requests`` calls that alternate between
  ``POST /sdapi/v1/txt2img`` (httpx) and the Gradio endpoint ``/txt2img`` (gradio_client), each with a
  prompt and seed of its own. Every answer must carry its own prompt and seed (the response fields and
  the PNG's ``parameters`` chunk); any other is a mismatch, which must never happen.

The engine runs one generation at a time, so phase 2's throughput should be about the single
client's (ratio about 1.0): much more would mean batching, much less contention overhead in the
server. Each call has a timeout (``--timeout``), and the whole run a deadline (``--deadline``,
counted from the start): calls in flight are cut short then, calls not yet sent are cancelled, and
both are reported. The CPU time that other processes took during each phase is reported too, since
on a small machine their work skews every figure. Traffic goes only to 127.0.0.1. Uses the
interpreter that runs this script, so run it with the project's virtualenv. The exit status is 0
only when every call succeeded; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from processes import free_port, stop_group

# Before gradio_client is imported: its telemetry would phone home (the server gets the same setting).
OFFLINE_ENV = {"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "NO_PROXY": "127.0.0.1,localhost"}
os.environ.update(OFFLINE_ENV)

import httpx  # noqa: E402
from gradio_client import Client  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch.py"
PAGE_TIMEOUT_S = 120.0
POLL_S = 0.1
SETTINGS: dict[str, Any] = {
    "steps": 8,
    "width": 64,
    "height": 64,
    "cfg_scale": 7.0,
    "sampler_name": "DPM++ 2M",
}
SCHEDULE = "Karras"
WARM_UP_CLIENT, SINGLE_CLIENT = 900, 901  # prompt and seed numbers of phase 1; phase 2 numbers from 0


def say(text: str) -> None:
    print(text, flush=True)


# -- the server ------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


@contextmanager
def server() -> Iterator[Server]:
    """Spawn ``launch.py --api`` in a temp dir, in a process group of its own; always stops the group."""
    with tempfile.TemporaryDirectory(prefix="atelier-load-") as tmp:
        port = free_port()
        folder = Path(tmp)
        log_path = folder / "server.log"
        command = [
            sys.executable, str(LAUNCH), "--api", "--port", str(port), "--models-dir", str(folder / "models"),
            "--outputs-dir", str(folder / "outputs"), "--data-dir", str(folder / "data"),
        ]  # fmt: skip
        env = os.environ | OFFLINE_ENV
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                command, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                yield Server(proc, f"http://127.0.0.1:{port}/", log_path)
            finally:
                stop_group(proc, POLL_S)


def wait_for(srv: Server, path: str, deadline: float) -> tuple[float, int]:
    """Seconds until ``GET path`` answers 200, and how many 404s came first; raises if the server dies or is slow."""
    started = time.monotonic()
    limit = min(deadline, started + PAGE_TIMEOUT_S)
    not_found = 0
    with httpx.Client(trust_env=False, timeout=2.0) as http:
        while time.monotonic() < limit:
            if srv.proc.poll() is not None:
                raise RuntimeError(
                    f"launch.py exited with code {srv.proc.returncode} before serving:\n{srv.log_tail()}"
                )
            try:
                code = http.get(srv.url + path).status_code
            except httpx.HTTPError:
                code = 0
            if code == 200:
                return time.monotonic() - started, not_found
            not_found += code == 404
            time.sleep(POLL_S / 10 if path else POLL_S)
    raise TimeoutError(f"no HTTP 200 from {srv.url}{path} within {time.monotonic() - started:.0f}s:\n{srv.log_tail()}")


class CpuMeter:
    """CPU seconds used, between two readings, by the server, by this script and by everything else.

    "Everything else" is other people's work on the same machine (other sessions, test runs), which on a
    2-core box slows every generation, and OpenMP's spin-waiting makes that far worse than a fair share.
    """

    def __init__(self, server_pid: int) -> None:
        self.server_pid = server_pid
        self.tick = os.sysconf("SC_CLK_TCK")
        self.start = self.read()

    def read(self) -> tuple[float, float, float]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / self.tick  # all but idle and iowait
        try:
            with open(f"/proc/{self.server_pid}/stat") as stat:
                after_name = stat.read().rsplit(")", 1)[1].split()
            server = (int(after_name[11]) + int(after_name[12])) / self.tick  # utime + stime
        except (OSError, IndexError, ValueError):
            server = float("nan")
        times = os.times()
        return busy, server, times.user + times.system

    def used(self) -> dict[str, float]:
        busy, server, mine = (b - a for a, b in zip(self.start, self.read(), strict=True))
        return {"server_cpu_s": server, "bench_cpu_s": mine, "other_cpu_s": max(0.0, busy - server - mine)}


# -- one call and its checks -----------------------------------------------------------------------


@dataclass
class Outcome:
    client: int
    request: int
    kind: str  # "rest" or "gradio"
    status: str = "cancelled"  # "ok", "mismatch", "error" or "cancelled" (not sent: the deadline had passed)
    latency_s: float = float("nan")
    finished_at: float = float("nan")  # time.monotonic() when the answer came
    detail: str = ""


class Mismatch(Exception):
    """The answer is well-formed but carries another request's prompt or seed."""


def prompt_for(client: int, request: int) -> str:
    return f"load test client {client} request {request}"


def seed_for(client: int, request: int) -> int:
    return 1000 * client + request


def _check_png(data: str, prompt: str, seed: int) -> None:
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    text = image.info.get("parameters", "")
    if not text.startswith(prompt + "\n"):
        raise Mismatch(f"PNG parameters start {text[:60]!r}, not with the prompt {prompt!r}")
    if f"Seed: {seed}," not in text:
        raise Mismatch(f"PNG parameters lack 'Seed: {seed},': {text.splitlines()[-1][:120]!r}")


def rest_call(http: httpx.Client, prompt: str, seed: int, timeout: float) -> None:
    payload = SETTINGS | {"prompt": prompt, "seed": seed, "scheduler": SCHEDULE}
    answer = http.post("sdapi/v1/txt2img", json=payload, timeout=timeout)
    if answer.status_code != 200:
        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:300]}")
    body = answer.json()
    info = json.loads(body["info"])
    if info.get("prompt") != prompt:
        raise Mismatch(f"info.prompt is {info.get('prompt')!r}, sent {prompt!r}")
    if not info.get("all_seeds") or info["all_seeds"][0] != seed:
        raise Mismatch(f"info.all_seeds is {info.get('all_seeds')!r}, sent seed {seed}")
    if len(body.get("images") or []) != 1:
        raise RuntimeError(f"expected 1 image, got {len(body.get('images') or [])}")
    _check_png(body["images"][0], prompt, seed)


def gradio_call(client: Client, prompt: str, seed: int, timeout: float) -> None:
    job = client.submit(prompt=prompt, seed=seed, schedule_type=SCHEDULE, save=False, **SETTINGS, api_name="/txt2img")
    try:
        result = job.result(timeout=timeout)
    except TimeoutError:
        job.cancel()
        raise
    if not isinstance(result, dict):
        raise RuntimeError(f"expected a dict, got {type(result).__name__}: {str(result)[:200]}")
    if not result.get("seeds") or result["seeds"][0] != seed:
        raise Mismatch(f"seeds is {result.get('seeds')!r}, sent seed {seed}")
    infotexts = result.get("infotexts") or [""]
    if not infotexts[0].startswith(prompt + "\n"):
        raise Mismatch(f"infotexts[0] starts {infotexts[0][:60]!r}, not with the prompt {prompt!r}")
    if len(result.get("images") or []) != 1:
        raise RuntimeError(f"expected 1 image, got {len(result.get('images') or [])}")
    _check_png(result["images"][0], prompt, seed)


def timed(outcome: Outcome, call: Any, *args: Any, deadline: float, timeout: float) -> Outcome:
    """Run ``call(*args, prompt, seed, timeout)`` into ``outcome``; not at all once the deadline has passed."""
    left = min(timeout, deadline - time.monotonic())
    if left <= 0:
        outcome.detail = "not sent: the deadline had passed"
        return outcome
    prompt, seed = prompt_for(outcome.client, outcome.request), seed_for(outcome.client, outcome.request)
    started = time.monotonic()
    try:
        call(*args, prompt, seed, left)
        outcome.status = "ok"
    except Mismatch as exc:
        outcome.status, outcome.detail = "mismatch", str(exc)
    except Exception as exc:  # a timeout, a refused connection, a server error: all count as errors
        outcome.status = "error"
        text = str(exc).strip() or f"no answer within {left:.1f}s"
        outcome.detail = f"{type(exc).__name__}: {text.splitlines()[0][:300]}"
    outcome.finished_at = time.monotonic()
    outcome.latency_s = outcome.finished_at - started
    return outcome


def rest_client(url: str, timeout: float) -> httpx.Client:
    return httpx.Client(base_url=url, trust_env=False, timeout=timeout)


def gradio_client(url: str) -> Client:
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


# -- the phases ------------------------------------------------------------------------------------


def warm_up(url: str, deadline: float, timeout: float) -> dict[str, float]:
    """One call of each kind, not counted: the first loads the model. Raises if either fails."""
    warm: dict[str, float] = {}
    with rest_client(url, timeout) as http:
        first = timed(Outcome(WARM_UP_CLIENT, 0, "rest"), rest_call, http, deadline=deadline, timeout=timeout)
    if first.status != "ok":
        raise RuntimeError(f"the warm-up REST call failed: {first.status}: {first.detail}")
    warm["rest_warm_up_s"] = first.latency_s
    started = time.monotonic()
    client = gradio_client(url)
    warm["gradio_connect_s"] = time.monotonic() - started
    try:
        first = timed(Outcome(WARM_UP_CLIENT, 1, "gradio"), gradio_call, client, deadline=deadline, timeout=timeout)
    finally:
        client.close()
    if first.status != "ok":
        raise RuntimeError(f"the warm-up Gradio call failed: {first.status}: {first.detail}")
    warm["gradio_warm_up_s"] = first.latency_s
    return warm


def single_client(url: str, runs: int, deadline: float, timeout: float) -> list[Outcome]:
    """``runs`` sequential REST calls from one client."""
    with rest_client(url, timeout) as http:
        return [
            timed(Outcome(SINGLE_CLIENT, run, "rest"), rest_call, http, deadline=deadline, timeout=timeout)
            for run in range(runs)
        ]


def many_clients(
    url: str, clients: int, requests: int, deadline: float, timeout: float
) -> tuple[list[Outcome], float, float]:
    """``clients`` threads, connected first, then released at once; returns outcomes, start and end times."""
    table = [[Outcome(c, r, "rest" if (c + r) % 2 == 0 else "gradio") for r in range(requests)] for c in range(clients)]
    gate = threading.Barrier(clients + 1)

    def worker(row: list[Outcome]) -> None:
        http = rest_client(url, timeout)
        client: Client | None = None
        problem = ""
        try:
            if any(o.kind == "gradio" for o in row):
                client = gradio_client(url)  # fetches the app's config: done before the gate opens
        except Exception as exc:
            problem = f"gradio_client could not connect: {type(exc).__name__}: {exc}"
        # A broken gate: the main thread gave up waiting for the others; send anyway, the deadline still holds.
        with contextlib.suppress(threading.BrokenBarrierError):
            gate.wait(timeout=max(0.1, deadline - time.monotonic()))
        try:
            for outcome in row:
                if problem and outcome.kind == "gradio":
                    outcome.status, outcome.detail = "error", problem
                elif outcome.kind == "gradio":
                    timed(outcome, gradio_call, client, deadline=deadline, timeout=timeout)
                else:
                    timed(outcome, rest_call, http, deadline=deadline, timeout=timeout)
        finally:
            http.close()
            if client is not None:
                client.close()

    threads = [
        threading.Thread(target=worker, args=(row,), name=f"client-{c}", daemon=True) for c, row in enumerate(table)
    ]
    for thread in threads:
        thread.start()
    try:
        gate.wait(timeout=max(0.1, min(60.0, deadline - time.monotonic())))
    except threading.BrokenBarrierError:
        say("(not every client connected within 60 s; the others started anyway)")
    started = time.monotonic()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 5.0)  # 5 s for calls cut off by their timeout
    outcomes = [replace(o) for row in table for o in row]  # a snapshot: abandoned threads may still write
    for outcome in outcomes:
        if outcome.status == "cancelled" and not outcome.detail:
            outcome.detail = "still running at the deadline: abandoned"
    finished = [o.finished_at for o in outcomes if o.finished_at == o.finished_at]  # not NaN
    return outcomes, started, max(finished, default=started)


# -- figures ---------------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Linear-interpolated percentile (``fraction`` in 0..1); NaN when there are no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def seconds(value: float) -> str:
    return "-" if value != value else f"{value:.2f}s"


def rounded(value: float, digits: int = 3) -> float | None:
    return None if value != value else round(value, digits)  # NaN -> null in the JSON line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=12, help="concurrent clients in phase 2 (default 12)")
    parser.add_argument("--requests", type=int, default=2, help="calls per client in phase 2 (default 2)")
    parser.add_argument("--single", type=int, default=6, help="sequential calls in phase 1 (default 6)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per call (default 120)")
    parser.add_argument("--deadline", type=float, default=240.0, help="seconds allowed in all (default 240)")
    args = parser.parse_args(argv)
    clients, requests, single = min(max(1, args.clients), WARM_UP_CLIENT), max(1, args.requests), max(1, args.single)
    deadline = time.monotonic() + args.deadline
    signal.signal(signal.SIGTERM, _terminate)  # so the `finally` blocks stop the server on `kill` too
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C even when started in the background

    figures: dict[str, Any] = {"clients": clients, "requests": clients * requests}
    say(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (others' work skews every figure)")
    say(f"each call: txt2img {SETTINGS['width']}x{SETTINGS['height']}, {SETTINGS['steps']} steps")
    status = 0
    with server() as srv:
        try:
            page_s, _ = wait_for(srv, "", deadline)
            api_s, early_404s = wait_for(srv, "sdapi/v1/options", deadline)
            say(f"server answered GET / after {page_s:.1f}s; the REST API {api_s:.3f}s later ({early_404s} x 404)")
            figures["api_404s_after_page"] = early_404s
            warm = warm_up(srv.url, deadline, max(args.timeout, PAGE_TIMEOUT_S))  # the first call loads the model
            say(
                f"warm-up: first REST call {warm['rest_warm_up_s']:.2f}s (loads the model), gradio_client connect "
                f"{warm['gradio_connect_s']:.2f}s, first Gradio call {warm['gradio_warm_up_s']:.2f}s"
            )
            meter = CpuMeter(srv.proc.pid)
            phase1_started = time.monotonic()
            sequential = single_client(srv.url, single, deadline, args.timeout)
            cpu = {"phase1": meter.used() | {"wall_s": time.monotonic() - phase1_started}}
            good = [o.latency_s for o in sequential if o.status == "ok"]
            if len(good) < len(sequential):
                bad = next(o for o in sequential if o.status != "ok")
                say(f"phase 1: {len(sequential) - len(good)} of {len(sequential)} calls failed: {bad.detail}")
                status = 1
            single_median = statistics.median(good) if good else float("nan")
            single_rps = 1.0 / single_median if good else float("nan")
            say(
                f"phase 1, one client: {len(good)}/{len(sequential)} ok, median latency {single_median:.3f}s "
                f"(all: {', '.join(f'{t:.2f}' for t in good)}), throughput {single_rps:.2f} req/s"
            )
            say(f"phase 2: {clients} clients x {requests} calls, alternating REST and Gradio ...")
            meter = CpuMeter(srv.proc.pid)
            outcomes, started, ended = many_clients(srv.url, clients, requests, deadline, args.timeout)
            cpu["phase2"] = meter.used() | {"wall_s": ended - started}
        except Exception:
            say(f"FAILED:\n{traceback.format_exc()}\nserver log tail:\n{srv.log_tail()}")
            figures["error"] = traceback.format_exc().strip().splitlines()[-1]
            print(json.dumps(figures), flush=True)
            return 1
        log_tail = srv.log_tail(4000)

    count = {s: sum(o.status == s for o in outcomes) for s in ("ok", "mismatch", "error", "cancelled")}
    nan = float("nan")
    latencies = [o.latency_s for o in outcomes if o.status == "ok"]
    wall = ended - started
    rps = count["ok"] / wall if wall > 0 else float("nan")
    ratio = rps / single_rps if single_rps == single_rps and single_rps > 0 else float("nan")
    say(f"phase 2 successes: {count['ok']}/{len(outcomes)}")
    for kind in ("rest", "gradio"):
        mine = [o for o in outcomes if o.kind == kind]
        ok = [o.latency_s for o in mine if o.status == "ok"]
        p50, slowest = seconds(percentile(ok, 0.5)), seconds(max(ok, default=nan))
        say(f"  {kind:6}: {len(ok)}/{len(mine)} ok, p50 {p50}, max {slowest}")
    say(f"mismatches: {count['mismatch']} (must be 0)")
    for outcome in [o for o in outcomes if o.status == "mismatch"][:5]:
        say(f"  client {outcome.client} request {outcome.request} ({outcome.kind}): {outcome.detail}")
    say(f"errors: {count['error']}")
    for outcome in [o for o in outcomes if o.status == "error"][:5]:
        say(f"  client {outcome.client} request {outcome.request} ({outcome.kind}): {outcome.detail}")
    if count["cancelled"]:
        abandoned = sum(o.status == "cancelled" and not o.detail.startswith("not sent") for o in outcomes)
        say(
            f"cancelled at the deadline: {count['cancelled']} ({count['cancelled'] - abandoned} not sent, "
            f"{abandoned} still running and abandoned)"
        )
    say(f"latency p50 {seconds(percentile(latencies, 0.5))}, p95 {seconds(percentile(latencies, 0.95))}")
    say(f"wall time {wall:.2f}s, throughput {rps:.2f} req/s")
    say(
        f"throughput / single client: {ratio:.2f}x (one generation at a time: about 1.0 expected; "
        "more means batching, much less means contention overhead)"
    )
    cores = os.cpu_count() or 1
    for phase, used in cpu.items():
        share = used["other_cpu_s"] / (used["wall_s"] * cores) if used["wall_s"] > 0 else 0.0
        used["other_share"] = share
        say(
            f"CPU in {phase}: server {used['server_cpu_s']:.1f}s, this script {used['bench_cpu_s']:.1f}s, "
            f"other processes {used['other_cpu_s']:.1f}s ({share:.0%} of the machine)"
            + (": figures skewed by others' work, run again when the machine is idle" if share > 0.1 else "")
        )
    if count["ok"] < len(outcomes) or status:
        say(f"server log tail:\n{log_tail}")
        status = 1

    figures |= {
        "successes": count["ok"],
        "mismatches": count["mismatch"],
        "errors": count["error"],
        "cancelled": count["cancelled"],
        "p50_s": rounded(percentile(latencies, 0.5)),
        "p95_s": rounded(percentile(latencies, 0.95)),
        "wall_s": rounded(wall),
        "throughput_rps": rounded(rps),
        "single_client_rps": rounded(single_rps),
        "single_client_median_s": rounded(single_median),
        "throughput_ratio": rounded(ratio),
        "warm_up_s": {key: rounded(value) for key, value in warm.items()},
        "cpu_s": {phase: {key: rounded(value) for key, value in used.items()} for phase, used in cpu.items()},
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(figures), flush=True)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as stop:  # the server is already stopped: `server()` saw to it
        say(f"interrupted ({str(stop) or 'Ctrl-C'}); the server was stopped")
        print(json.dumps({"interrupted": str(stop) or "Ctrl-C"}), flush=True)
        # Now, without waiting for gradio_client's worker threads, whose streams die with the server.
        os._exit(130)
