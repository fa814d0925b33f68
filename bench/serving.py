"""Load test of the OpenAI-compatible server: N concurrent clients for T seconds on loopback.

    python bench/serving.py out/eve-tiny                         # 16 clients x 60 s, the server started here
    python bench/serving.py out/eve-tiny --clients 4 --seconds 20 --max-batch 8
    python bench/serving.py --url http://127.0.0.1:8000 --pid 1234   # a server already running

Each client loops: one chat completion with a freshly drawn image (so the vision engine runs for every
request, nothing comes from the image cache) and one of a few questions, greedy, `--max-tokens` new tokens;
every other request is streamed (time to first token measured on those). Reported: requests/s, generated
tokens/s, latency p50/p99 (whole request), TTFT p50/p99 (streamed ones), errors (any non-200, a stream that
ends in an error event, a connection failure), and the server's RSS: after the warm-up, at the end, the
peak, sampled every 0.5 s from /proc. Requests finishing in the first `--warmup` seconds are not counted.
The clients run in this process (threads, http.client): on a small machine they share the cores with the
server, as the results table says.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import platform
import random
import re
import select
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["What colour is the shape?", "What shape is this?", "How many shapes are there?",
             "Describe the image in a few words."]


def random_image(rng: random.Random) -> str:
    """A data: URL of a new picture: a few shapes in random colours on a canvas of random size."""
    w, h = rng.randint(120, 480), rng.randint(120, 480)
    image = Image.new("RGB", (w, h), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 4)):
        x, y = rng.randint(0, w - 40), rng.randint(0, h - 40)
        size = rng.randint(20, max(21, min(w - x, h - y)))
        colour = tuple(rng.randint(0, 200) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + size, y + size), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@dataclass
class Sample:
    end: float  # seconds since the start
    latency: float
    ok: bool
    stream: bool
    ttft: float | None = None
    tokens: int = 0
    error: str = ""


@dataclass
class Load:
    url: str
    model: str
    max_tokens: int
    deadline: float
    headers: dict = field(default_factory=dict)  # with --api-key: its Authorization header
    start: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, sample: Sample) -> None:
        with self.lock:
            self.samples.append(sample)


def one_request(conn: http.client.HTTPConnection, load: Load, rng: random.Random, stream: bool) -> Sample:
    body = {"model": load.model, "max_tokens": load.max_tokens, "temperature": 0, "stream": stream,
            "stream_options": {"include_usage": True} if stream else None,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": random_image(rng)}},
                {"type": "text", "text": rng.choice(QUESTIONS)}]}]}
    sent = time.monotonic()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json", **load.headers})
    response = conn.getresponse()
    if not stream:
        data = response.read()
        done = time.monotonic()
        if response.status != 200:
            return Sample(done - load.start, done - sent, False, False, error=f"{response.status} {data[:200]!r}")
        usage = json.loads(data)["usage"]
        return Sample(done - load.start, done - sent, True, False, tokens=usage["completion_tokens"])
    if response.status != 200:
        data = response.read()
        done = time.monotonic()
        return Sample(done - load.start, done - sent, False, True, error=f"{response.status} {data[:200]!r}")
    ttft, tokens, error = None, 0, ""
    while line := response.readline():
        if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        if "error" in chunk:
            error = chunk["error"]["message"]
        elif chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content") and ttft is None:
            ttft = time.monotonic() - sent
    done = time.monotonic()
    return Sample(done - load.start, done - sent, not error, True, ttft, tokens, error)


def client(load: Load, index: int) -> None:
    rng = random.Random(index)
    host, port = load.url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=300)
    stream = index % 2 == 0
    while time.monotonic() < load.deadline:
        try:
            sample = one_request(conn, load, rng, stream)
        except (OSError, http.client.HTTPException, ValueError, KeyError) as e:
            now = time.monotonic()
            sample = Sample(now - load.start, 0.0, False, stream, error=f"{type(e).__name__}: {e}")
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=300)
        load.record(sample)
        stream = not stream
    conn.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "runtime", "serve", str(args.engine_dir), "--port", "0", "--model-name", "bench",
               "--max-batch", str(args.max_batch), "--max-tokens", str(max(args.max_tokens, 512)),
               "--max-queue", str(max(64, args.clients * 2))]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if args.image_cache_mb is not None:
        command += ["--image-cache-mb", str(args.image_cache_mb)]
    env = {**os.environ, "AERIE_API_KEY": args.api_key} if args.api_key else None
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env)
    end = time.monotonic() + 300
    seen = ""
    while time.monotonic() < end and proc.poll() is None:
        if select.select([proc.stderr], [], [], 1.0)[0]:
            line = proc.stderr.readline()
            seen += line
            match = re.search(r"(http://[\d.]+:\d+)", line)
            if match:
                threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining its log
                return proc, match.group(1)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{seen}")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def model_id(url: str, headers: dict) -> str:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/v1/models", headers=headers)
    data = json.loads(conn.getresponse().read())
    conn.close()
    return data["data"][0]["id"]


def run(args: argparse.Namespace) -> dict:
    proc, url, pid = None, args.url, args.pid
    if url is None:
        proc, url = start_server(args)
        pid = proc.pid
    try:
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        model = model_id(url, headers)
        load = Load(url, model, args.max_tokens, deadline=time.monotonic() + args.warmup + args.seconds,
                    headers=headers)
        rss: list[tuple[float, float]] = []
        threads = [threading.Thread(target=client, args=(load, i), daemon=True) for i in range(args.clients)]
        for t in threads:
            t.start()
        next_report = args.warmup
        while any(t.is_alive() for t in threads):
            now = time.monotonic() - load.start
            if pid:
                rss.append((now, rss_mb(pid)))
            if now >= next_report:
                with load.lock:
                    done = [s for s in load.samples if s.end >= args.warmup]
                print(f"  t={now:5.0f} s  {len(done):5d} requests  {sum(not s.ok for s in done)} errors"
                      + (f"  server RSS {rss[-1][1]:.0f} MB" if rss else ""), file=sys.stderr, flush=True)
                next_report += 10
            time.sleep(0.5)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    counted = [s for s in load.samples if s.end >= args.warmup]
    ok = [s for s in counted if s.ok]
    after_warmup = [m for t, m in rss if t >= args.warmup]
    half = [m for t, m in rss if t >= args.warmup + args.seconds / 2]
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "engine": str(args.engine_dir) if args.engine_dir else url, "clients": args.clients, "seconds": args.seconds,
        "max_tokens": args.max_tokens, "max_batch": args.max_batch,
        "requests": len(counted), "errors": len(counted) - len(ok),
        "requests_per_s": len(ok) / args.seconds, "tokens_per_s": sum(s.tokens for s in ok) / args.seconds,
        "latency_p50_s": percentile([s.latency for s in ok], 50),
        "latency_p99_s": percentile([s.latency for s in ok], 99),
        "ttft_p50_s": percentile([s.ttft for s in ok if s.ttft is not None], 50),
        "ttft_p99_s": percentile([s.ttft for s in ok if s.ttft is not None], 99),
        "mean_tokens": statistics.mean(s.tokens for s in ok) if ok else 0.0,
        "rss_after_warmup_mb": after_warmup[0] if after_warmup else None,
        "rss_end_mb": after_warmup[-1] if after_warmup else None,
        "rss_peak_mb": max(after_warmup) if after_warmup else None,
        "first_errors": sorted({s.error for s in counted if not s.ok})[:5],
    }
    if after_warmup:
        result["rss_growth_mb"] = result["rss_end_mb"] - result["rss_after_warmup_mb"]
        # Bounded memory: what it still grew over the second half, once caches and pools have filled.
        result["rss_growth_second_half_mb"] = (half[-1] - half[0]) if half else None
        result["rss_every_10s_mb"] = [round(m) for t, m in rss if t >= args.warmup][::20]
    return result


def markdown_row(r: dict) -> str:
    def ms(x):
        return f"{x * 1e3:.0f}"

    rss = (f"{r['rss_after_warmup_mb']:.0f} → {r['rss_end_mb']:.0f} (peak {r['rss_peak_mb']:.0f}; "
           f"+{r['rss_growth_second_half_mb']:.0f} in the 2nd half)" if r.get("rss_after_warmup_mb") else "n/a")
    return (f"| {r['engine']} | {r['clients']} × {r['seconds']:.0f} s | {r['max_batch']} | {r['max_tokens']} | "
            f"{r['requests']} | {r['errors']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
            f"{ms(r['latency_p50_s'])} / {ms(r['latency_p99_s'])} | "
            f"{ms(r['ttft_p50_s'])} / {ms(r['ttft_p99_s'])} | {rss} |")


HEADER = ("| engine | clients × time | batch | max tokens | requests | errors | req/s | tokens/s "
          "| latency p50 / p99 (ms) | TTFT p50 / p99 (ms) | server RSS MB: after warm-up → end |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine_dir", type=Path, nargs="?", help="engine directory (the server is started here)")
    p.add_argument("--url", help="benchmark a server already running at this URL instead")
    p.add_argument("--pid", type=int, help="with --url: the server's process id, for its RSS")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=60.0, help="measured time, after the warm-up")
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=32, help="new tokens per request (greedy; EOS may end earlier)")
    p.add_argument("--max-batch", type=int, default=4, help="the server's decoder slots")
    p.add_argument("--threads", type=int, help="the server's CPU threads per engine")
    p.add_argument("--image-cache-mb", type=float, help="the server's image cache (default: the server's, 256)")
    p.add_argument("--api-key", help="the server's API key (sent by the clients; given to a server started here)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if (args.engine_dir is None) == (args.url is None):
        p.error("give an engine directory, or --url of a running server")
    print(f"{args.clients} clients for {args.seconds:.0f} s (+{args.warmup:.0f} s warm-up) against "
          f"{args.url or args.engine_dir}", file=sys.stderr, flush=True)
    result = run(args)
    print(json.dumps(result, indent=2))
    print("\n" + HEADER + "\n" + markdown_row(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
