"""Load test of the running app: many chats at once through its public API (gradio_client).

    python bench/load.py                              # start the app, batching off then on, 1 and 8 clients
    python bench/load.py --quick                      # a smoke run: 2 clients, 8 tokens, 2 requests each
    python bench/load.py --url http://127.0.0.1:7860  # attach to an app that is already running
    python bench/load.py --endpoint ask_image --clients 4 --requests 8 --json load.json

What it does. By default, for each batching setting (``--batching off,on``) it starts the app as
a subprocess on 127.0.0.1 (``python app.py --port P --concurrency C --[no-]batch-decoding
--preset NAME``, the default preset unless ``--preset`` says otherwise; ``C`` = the largest
client count), waits until the page is served, runs the phases and stops the app (its process
group, by id). With ``--url`` it uses that app as it runs (its batching and concurrency are
whatever it was started with; the rows say "as served").

A phase is ``n`` clients (``--clients``, default 8; every phase of 1 and of ``n`` is run), each a
thread with its own ``gradio_client.Client`` (its own session), all released together, each
sending ``--requests`` questions one after the other. Before the phases every client sends
``--warmup`` untimed requests at the same time (lazy imports, thread pools, the batcher's slots).
A request is one question through the app's public endpoint: ``/chat`` (default; a text-only
question; each client is one chat, a session whose questions follow one another with their
history, started afresh at every phase, as a browser tab per user would) or ``/ask_image`` (a generated
640x480 picture and a question), with ``--max-new-tokens`` (default 32), temperature 0 (greedy)
and the settings' other defaults, so that the answers, hence the token counts, are the same in
every case. Questions differ per client and request but the same set is sent in every case.

Figures per (batching, clients):

* **tokens/s** = the tokens of every answer of the phase / the phase's wall time (from the
  release of the clients to the last answer). Tokens are counted by re-encoding the final answer
  with the model's tokenizer (no BOS): the default preset's tokenizer, or ``--tokenizer PATH``;
  ``--count words`` counts whitespace-separated words instead (also the fallback when no
  tokenizer is known, e.g. ``--url`` to a released model without ``--tokenizer``). For a trained
  model the re-encoded count is the generated count; for random weights, whose answers contain
  broken UTF-8 (shown as U+FFFD), it is a few percent lower (column ``tok/ans`` against
  ``--max-new-tokens`` shows by how much).
* **latency p50 / p95**: per request, from ``submit`` to the final answer (queue wait included).
* **TTFT p50 / p95** (time to first token): from ``submit`` to the first streamed update that
  holds answer text. The app streams at most one update per ``--stream-interval`` (50 ms by
  default), so this is the first token's arrival rounded up to the app's update interval (and
  the client's 5 ms polling, which stops at the first text: the rest of the request is waited
  for without waking up, so that the clients take as little CPU from the app as they can).
* **errors**: requests that raised or timed out (``--timeout``); the first message is printed.
* **app CPU s**: the CPU time the app process used during the phase (all its threads, from
  ``/proc``; only for an app started here), and tokens per app CPU second, a figure that other
  processes on the machine disturb much less than tokens/s; **client CPU s**: this process's.

Last, the scaling ``tokens/s with n clients / tokens/s with 1 client`` per batching setting,
against the target of the issue (at least 4x with 8 clients), and batching on / off at ``n``.

The load generator runs in this process (threads; it takes some CPU of its own) and the app in
another: on a machine with few cores both compete, and any other process slows both down (the
load average is printed).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_SCALING = 4.0
POLL_S = 0.005  # how often a client looks for the first streamed text (the app streams every 50 ms)
CLIENT_READ_S = 0.005  # the longest sleep of gradio_client's message reader (its own: 50 ms)

QUESTIONS = (
    "What is a cat?",
    "Describe a sunny beach in a few words.",
    "Why is the sky blue?",
    "Name three things found in a kitchen.",
    "What sound does a dog make?",
    "How does rain form?",
    "What is in this picture?",
    "Tell me about the city at night.",
    "What colour is grass?",
    "What happens when water freezes?",
)


# ------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------


def _batching(values: str) -> list[bool]:
    out = []
    for value in (v.strip().lower() for v in values.split(",") if v.strip()):
        if value not in ("on", "off"):
            raise argparse.ArgumentTypeError(f"--batching: 'on' or 'off' expected, got {value!r}")
        out.append(value == "on")
    if not out:
        raise argparse.ArgumentTypeError("--batching: give on, off or off,on")
    return list(dict.fromkeys(out))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/load.py",
                                description="Tokens/s, latency and errors of the app under concurrent chats.")
    p.add_argument("--url", help="attach to this running app instead of starting one (e.g. http://127.0.0.1:7860)")
    p.add_argument("--clients", type=int, default=None, help="concurrent clients of the big phase (default 8)")
    p.add_argument("--requests", type=int, default=None, help="timed requests per client (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed requests per client before the phases (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens per answer (default 32; greedy)")
    p.add_argument("--endpoint", choices=("chat", "ask_image"), default="chat",
                   help="chat: text questions, one chat (session) per client (default); "
                        "ask_image: a picture and a question")
    p.add_argument("--batching", type=_batching, default=None,
                   help="batched decoding settings to start the app with: off,on (default), on or off")
    p.add_argument("--concurrency", type=int, default=None,
                   help="the app's --concurrency (default: --clients)")
    p.add_argument("--preset", default=None, help="the app's model preset (default: the default preset)")
    p.add_argument("--random-llm", default=None, metavar="DIM,LAYERS",
                   help="serve the toy-world model's ImageBind and tokenizer with a language model of this "
                        "width and depth and random weights (written to a temporary folder in float32, about "
                        "55 x DIM^2 x LAYERS bytes: 3.7 GB for 2048,16): a model whose decoding takes most of the time, as a "
                        "released model's does (e.g. 2048,16: 0.9 B parameters)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer.model to count tokens with (default: the preset's, when it has one)")
    p.add_argument("--count", choices=("tokens", "words"), default="tokens",
                   help="count answer tokens (default) or words")
    p.add_argument("--port", type=int, default=None, help="port of the started app (default: a free one)")
    p.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for the app (default 300)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds one request may take (default 300)")
    p.add_argument("--app-arg", action="append", default=[], metavar="ARG",
                   help="one more argument for the started app (repeatable, e.g. --app-arg=--dtype=bfloat16)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 clients, 2 requests each, 8 tokens (explicit options win)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.clients = args.clients or 2
        args.requests = args.requests or 2
        args.max_new_tokens = args.max_new_tokens or 8
    args.clients = args.clients or 8
    args.requests = args.requests or 4
    args.max_new_tokens = args.max_new_tokens or 32
    args.batching = args.batching if args.batching is not None else [False, True]
    args.concurrency = args.concurrency or args.clients
    if args.random_llm is not None:
        try:
            args.random_llm = tuple(int(v) for v in args.random_llm.split(","))
            if len(args.random_llm) != 2 or min(args.random_llm) < 1 or args.random_llm[0] % 64:
                raise ValueError
        except ValueError:
            p.error(f"--random-llm: expected DIM,LAYERS with DIM a multiple of 64, got {args.random_llm!r}")
        if args.url or args.preset:
            p.error("--random-llm starts its own app: it goes with neither --url nor --preset")
    if args.clients < 1 or args.requests < 1 or args.warmup < 0 or args.max_new_tokens < 1 or args.concurrency < 1:
        p.error("--clients, --requests, --max-new-tokens and --concurrency must be >= 1, --warmup >= 0")
    return args


# ------------------------------------------------------------------------------------------
# The app
# ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_proxy_open(url: str, timeout: float):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(url, timeout=timeout)


class App:
    """``python app.py`` in its own process group, serving on 127.0.0.1."""

    def __init__(self, args, batching: bool, model: list[str]):
        """``model``: the app's model flags (``--preset NAME``, or the files of a model)."""
        self.port = args.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.command = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(self.port),
                        "--concurrency", str(args.concurrency),
                        "--batch-decoding" if batching else "--no-batch-decoding", *model, *args.app_arg]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="imagebind-load-app-", suffix=".log", delete=False)
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(self.command, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def wait_until_serving(self, timeout: float) -> float:
        start = time.perf_counter()
        while time.perf_counter() - start < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with status {self.process.returncode} before serving:\n"
                                   f"{self.log_tail()}")
            try:
                with _no_proxy_open(self.url, timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the app did not serve {self.url} within {timeout:g} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)  # our child's own group (start_new_session)
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
            except ProcessLookupError:
                pass
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------


def make_counter(args, preset: str | None):
    """``(count(text) -> int, description)``."""
    if args.count == "words":
        return (lambda text: len(text.split())), "words (whitespace-separated)"
    path = args.tokenizer
    if path is None and preset is not None:
        from imagebind_llm import presets

        if preset == presets.UNTRAINED_PRESET:
            path = presets.untrained_tokenizer()
        elif preset == presets.TOYWORLD_PRESET and (presets.TOYWORLD_DIR / "tokenizer.model").is_file():
            path = presets.TOYWORLD_DIR / "tokenizer.model"
    if path is None:
        return (lambda text: len(text.split())), "words (no tokenizer known for this model: pass --tokenizer)"
    from imagebind_llm.tokenizer import Tokenizer

    tokenizer = Tokenizer(path)
    lock = threading.Lock()

    def count(text: str) -> int:
        with lock:
            return len(tokenizer.encode(text, bos=False)) if text else 0

    return count, f"tokens (the answer re-encoded with {Path(path).name}, no BOS)"


# ------------------------------------------------------------------------------------------
# Requests and phases
# ------------------------------------------------------------------------------------------


@dataclass
class RequestResult:
    client: int
    index: int
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class PhaseResult:
    batching: str
    clients: int
    requests: int = 0
    errors: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    tokens_per_s: float | None = None
    tokens_per_answer: float | None = None
    latency_p50_s: float | None = None
    latency_p95_s: float | None = None
    ttft_p50_s: float | None = None
    ttft_p95_s: float | None = None
    first_error: str | None = None
    loadavg: float | None = None
    app_cpu_s: float | None = None  # CPU time of the app process during the phase (when started here)
    tokens_per_app_cpu_s: float | None = None
    client_cpu_s: float | None = None  # CPU time of this process (the clients) during the phase
    results: list[RequestResult] = field(default_factory=list)


def _answer_of(output: Any, endpoint: str) -> str:
    if endpoint == "chat":  # (history, input box, answer)
        return output[-1] if isinstance(output, (list, tuple)) and output and isinstance(output[-1], str) else ""
    return output if isinstance(output, str) else ""


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


_SSL_CONTEXT: list = []


def shared_ssl_context():
    """The context httpx builds by default (certificates verified against certifi's bundle),
    made once for every client."""
    import ssl

    import certifi

    if not _SSL_CONTEXT:
        _SSL_CONTEXT.append(ssl.create_default_context(cafile=certifi.where()))
    return _SSL_CONTEXT[0]


class _ShortSleeps:
    """The ``time`` module, except that a sleep lasts at most ``CLIENT_READ_S``."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, CLIENT_READ_S))


def prompt_client_reads() -> None:
    """gradio_client reads a job's stream messages in a loop that sleeps 50 ms whenever none is
    waiting, so an answer that ends just after its first streamed update reached the client
    took 50 ms longer to arrive (a browser handles each server-sent event as it comes). Its
    sleeps are shortened to ``CLIENT_READ_S``: latencies then measure the app, not that loop."""
    import gradio_client.utils

    gradio_client.utils.time = _ShortSleeps()


class Chatter:
    """One simulated user: a gradio_client Client (its own session) sending questions."""

    def __init__(self, url: str, number: int, args, image: str | None, count):
        from gradio_client import Client

        prompt_client_reads()
        # gradio_client opens a new httpx client for every request and stream, and each would
        # build an SSL context (load the CA bundle: tens of ms of CPU) even for http://; one
        # shared context, the same default one, spares the app's CPU from that.
        self.client = Client(url, verbose=False, download_files=False, analytics_enabled=False,
                             ssl_verify=shared_ssl_context())  # passed on to httpx as verify=
        self.number = number
        self.args = args
        self.image = image
        self.count = count

    def new_chat(self) -> None:
        """A new session, as a new browser tab: an empty conversation."""
        self.client.reset_session()

    def ask(self, index: int) -> RequestResult:
        from gradio_client import handle_file

        args = self.args
        question = QUESTIONS[(self.number * 3 + index) % len(QUESTIONS)]
        settings = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0}
        start = time.perf_counter()
        ttft = None
        try:
            if args.endpoint == "chat":
                job = self.client.submit({"text": question, "files": []}, **settings, api_name="/chat")
            else:
                job = self.client.submit(handle_file(self.image), question, **settings, api_name="/ask_image")
            deadline = start + args.timeout
            # Poll only until the first text arrives, then wait for the end without waking up:
            # the clients share the machine with the app, and every wake-up takes CPU from it.
            while ttft is None and not job.done():
                outputs = job.outputs()
                if outputs and _answer_of(outputs[-1], args.endpoint):
                    ttft = time.perf_counter() - start
                elif time.perf_counter() > deadline:
                    job.cancel()
                    raise TimeoutError(f"no answer within --timeout {args.timeout:g} s")
                else:
                    time.sleep(POLL_S)
            try:
                final = job.result(timeout=max(0.0, deadline - time.perf_counter()))
            except concurrent.futures.TimeoutError:
                job.cancel()
                raise TimeoutError(f"no answer within --timeout {args.timeout:g} s") from None
            answer = _answer_of(final, args.endpoint)
            latency = time.perf_counter() - start
            if ttft is None and answer:
                ttft = latency  # the answer came in a single update
            if not answer:
                raise RuntimeError("empty answer")
            return RequestResult(self.number, index, True, latency, ttft, self.count(answer))
        except Exception as error:  # noqa: BLE001 - every failure is counted and reported
            return RequestResult(self.number, index, False, time.perf_counter() - start,
                                 error=f"{type(error).__name__}: {error}"[:300])

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a client is best effort
            pass


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc; None elsewhere."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def run_phase(chatters: list[Chatter], requests: int, label: str, app_pid: int | None = None) -> PhaseResult:
    """Every chatter sends ``requests`` questions one after another, all chatters at once."""
    results: list[RequestResult] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(chatters) + 1)

    def work(chatter: Chatter) -> None:
        chatter.new_chat()  # every phase's chats start empty, so every run sends the same prompts
        barrier.wait()
        for index in range(requests):
            result = chatter.ask(index)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in chatters]
    for thread in threads:
        thread.start()
    app_cpu = process_cpu_seconds(app_pid)
    client_cpu = time.process_time()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    phase = PhaseResult(label, len(chatters), requests=len(results), wall_s=wall, results=results,
                        loadavg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                        client_cpu_s=time.process_time() - client_cpu)
    app_cpu_end = process_cpu_seconds(app_pid)
    if app_cpu is not None and app_cpu_end is not None:
        phase.app_cpu_s = app_cpu_end - app_cpu
    good = [r for r in results if r.ok]
    bad = [r for r in results if not r.ok]
    phase.errors = len(bad)
    phase.first_error = bad[0].error if bad else None
    phase.tokens = sum(r.tokens for r in good)
    if good:
        phase.tokens_per_s = phase.tokens / wall
        phase.tokens_per_answer = phase.tokens / len(good)
        if phase.app_cpu_s:
            phase.tokens_per_app_cpu_s = phase.tokens / phase.app_cpu_s
        latencies = [r.latency_s for r in good]
        phase.latency_p50_s, phase.latency_p95_s = percentile(latencies, 50), percentile(latencies, 95)
        ttfts = [r.ttft_s for r in good if r.ttft_s is not None]
        phase.ttft_p50_s, phase.ttft_p95_s = percentile(ttfts, 50), percentile(ttfts, 95)
    return phase


def warm_up(chatters: list[Chatter], count: int) -> list[RequestResult]:
    if count < 1:
        return []
    phase = run_phase(chatters, count, "warm-up")
    return phase.results


def make_image(folder: Path) -> str:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    rgb = np.stack([x / 640 * 255, y / 480 * 255, 128 + 100 * np.sin(x / 23) * np.cos(y / 17)], -1)
    path = folder / "question.png"
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path)
    return str(path)


def measure(url: str, label: str, args, image: str | None, count, app_pid: int | None = None) -> list[PhaseResult]:
    """Warm-up, then the phase of 1 client and the phase of ``--clients`` clients."""
    chatters = [Chatter(url, number, args, image, count) for number in range(args.clients)]
    try:
        failed = [r for r in warm_up(chatters, args.warmup) if not r.ok]
        if failed:
            print(f"#   warm-up: {len(failed)} request(s) failed, first: {failed[0].error}", flush=True)
        phases = []
        for clients in sorted({1, args.clients}):
            phase = run_phase(chatters[:clients], args.requests, label, app_pid)
            print(f"#   batching {label:9s} {clients} client(s): {phase.requests} requests, "
                  f"{phase.errors} error(s), {_fmt(phase.tokens_per_s)} tokens/s in {phase.wall_s:.1f} s",
                  flush=True)
            phases.append(phase)
        return phases
    finally:
        for chatter in chatters:
            chatter.close()


# ------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def scalings(phases: list[PhaseResult], clients: int) -> dict[str, Any]:
    out: dict[str, Any] = {"clients_over_one": {}, "batching_on_over_off": None}
    by = {(p.batching, p.clients): p for p in phases}
    for label in dict.fromkeys(p.batching for p in phases):
        one, many = by.get((label, 1)), by.get((label, clients))
        if clients > 1 and one and many and one.tokens_per_s and many.tokens_per_s:
            out["clients_over_one"][label] = many.tokens_per_s / one.tokens_per_s
    on, off = by.get(("on", clients)), by.get(("off", clients))
    if on and off and on.tokens_per_s and off.tokens_per_s:
        out["batching_on_over_off"] = on.tokens_per_s / off.tokens_per_s
    return out


def busy_cores(phase: PhaseResult) -> float | None:
    """CPU cores the app and the clients kept busy during ``phase`` (None when attached with --url)."""
    if phase.app_cpu_s is None or phase.client_cpu_s is None or not phase.wall_s:
        return None
    return (phase.app_cpu_s + phase.client_cpu_s) / phase.wall_s


def cpu_ceiling(one: PhaseResult, cores: int, clients: int) -> float | None:
    """The most ``clients`` clients can gain over one when every request costs the CPU it cost
    alone: the app and the clients share ``cores`` cores, so throughput stops growing once they
    are all busy. Only a request that costs less CPU when batched can beat it."""
    busy = busy_cores(one)
    if not busy:
        return None
    return min(float(clients), cores / busy)


def report(info: dict[str, Any], args, phases: list[PhaseResult]) -> str:
    out = [f"app: {info['app']}; endpoint /{args.endpoint}; {args.max_new_tokens} new tokens, greedy; "
           f"{args.requests} timed request(s) per client after {args.warmup} warm-up",
           f"counted: {info['counted']}",
           f"machine: {info['cpu_count']} CPU cores; load average at start {info['loadavg_start']:.2f}, "
           f"at end {info['loadavg_end']:.2f} (other processes slow both the app and the clients)",
           ""]
    rows = []
    for p in phases:
        rows.append([p.batching, str(p.clients), str(p.requests), str(p.errors), str(p.tokens),
                     _fmt(p.tokens_per_answer), f"{p.wall_s:.2f}", _fmt(p.tokens_per_s),
                     _fmt(p.latency_p50_s), _fmt(p.latency_p95_s), _fmt(p.ttft_p50_s), _fmt(p.ttft_p95_s),
                     _fmt(p.app_cpu_s), _fmt(p.tokens_per_app_cpu_s), _fmt(p.client_cpu_s)])
    unit = "tokens" if info["counted"].startswith("tokens") else "words"
    out.append(table(["batching", "clients", "requests", "errors", unit, "tok/ans", "wall s", f"{unit}/s",
                      "p50 s", "p95 s", "TTFT p50", "TTFT p95", "app CPU s", f"{unit}/app CPU s", "client CPU s"],
                     rows))
    out.append(f"{unit}/s = all {unit} of the phase / its wall time; p50/p95 = per-request latency "
               "(submit to final answer); TTFT = submit to the first streamed text (the app streams at most every "
               "--stream-interval, 50 ms by default); "
               "app CPU s = CPU time the app process used during the phase (all threads; '-' when attached with "
               "--url), client CPU s = this process's")
    ratios = scalings(phases, args.clients)
    out.append("")
    for label, ratio in ratios["clients_over_one"].items():
        if args.clients == 8:
            target = f"target >= {TARGET_SCALING:g}x: {'met' if ratio >= TARGET_SCALING else 'NOT met'}"
        else:
            target = f"the target, >= {TARGET_SCALING:g}x, is for 8 clients"
        out.append(f"scaling, batching {label}: {args.clients} clients / 1 client = {ratio:.2f}x ({target})")
    for p in phases:
        ceiling = cpu_ceiling(p, info["cpu_count"], args.clients) if p.clients == 1 and args.clients > 1 else None
        if ceiling is not None:
            out.append(f"CPU bound, batching {p.batching}: 1 client kept {busy_cores(p):.2f} of {info['cpu_count']} "
                       f"cores busy (app + clients), so {args.clients} clients can reach at most {ceiling:.2f}x "
                       "at the same CPU per request")
    if ratios["batching_on_over_off"] is not None:
        out.append(f"batching on / off with {args.clients} clients: {ratios['batching_on_over_off']:.2f}x")
    errors = [p for p in phases if p.errors]
    out.append(f"errors: {sum(p.errors for p in phases)}" +
               (f" (first: {errors[0].first_error})" if errors else ""))
    return "\n".join(out)


# ------------------------------------------------------------------------------------------
# Entry
# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    began = time.perf_counter()
    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg()[0]}
    preset = None
    if args.url is None:
        from imagebind_llm.presets import DEFAULT_PRESET

        preset = args.preset or DEFAULT_PRESET
    else:
        preset = args.preset  # only to find the tokenizer
    phases: list[PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="imagebind-load-") as tmp:
        model_flags, described = ["--preset", preset], f"preset {preset}"
        if args.random_llm is not None:
            from common import write_random_llm

            dim, layers = args.random_llm
            print(f"# writing a random {dim}-wide, {layers}-layer language model ...", flush=True)
            files = write_random_llm(Path(tmp) / "model", dim, layers)
            model_flags = [f"--{name.replace('_', '-')}={path}" for name, path in files.items()]
            described = f"random language model {dim} wide, {layers} layers (toy-world ImageBind and tokenizer)"
            args.tokenizer = args.tokenizer or files["tokenizer"]
        count, info["counted"] = make_counter(args, preset)
        image = make_image(Path(tmp)) if args.endpoint == "ask_image" else None
        if args.url is not None:
            info["app"] = f"{args.url} as served"
            print(f"# attached to {args.url}", flush=True)
            phases += measure(args.url, "as served", args, image, count)
        else:
            info["app"] = (f"started here: {described}, --concurrency {args.concurrency}"
                           + (f", {' '.join(args.app_arg)}" if args.app_arg else ""))
            for batching in args.batching:
                label = "on" if batching else "off"
                app = App(args, batching, model_flags)
                try:
                    print(f"# starting the app: {' '.join(app.command[1:])}", flush=True)
                    took = app.wait_until_serving(args.startup_timeout)
                    print(f"#   serving on {app.url} after {took:.1f} s", flush=True)
                    phases += measure(app.url, label, args, image, count, app.process.pid)
                finally:
                    app.stop()
    info["loadavg_end"] = os.getloadavg()[0]
    info["total_s"] = round(time.perf_counter() - began, 1)
    text = report(info, args, phases)
    print()
    print(text)
    print(f"total time: {info['total_s']:.0f} s")
    results = {
        "machine": info,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "phases": [asdict(p) for p in phases],
        "scaling": scalings(phases, args.clients),
    }
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
