"""The image-fetch step of ``mm1 acquire`` against a loopback server with a network's latency (issue 26, item 2).

Threaded HTTP servers on ``--hosts`` loopback addresses (127.0.0.2, 127.0.0.3, ...: every 127/8
address is the loopback interface on Linux; the fetch step rate-limits per host name) serve
``--images`` distinct JPEGs spread over them. Each response waits
``--latency-ms`` first, standing in for a remote server's round trip and time to first byte, and
5% of the URLs answer 404 (dead links). :func:`mm1.data.fetch_images.fetch_images` then fetches
every URL into an empty cache:

- with 1 worker (the baseline: one download at a time) and with ``data.fetch.workers`` (16), no rate limit;
- with 16 workers and the default per-host limit (2 per second), whose bound is hosts x rate x N / (N - 1)
  for N requests per host (the first request to a host goes at once);
- again into the filled cache (a rerun after a kill: nothing is requested).

Headline: images per second of 16 workers against 1 (the ratio), and the rate-limited run against
its bound. Writes bench/results/fetch_images.json and prints a table.

    python bench/fetch_images.py            # about 30 s on 2 cores
    python bench/fetch_images.py --quick    # fewer images
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image
from run import report, row, write  # bench/run.py: the harness's report format

from mm1.config.data import FetchConfig
from mm1.data.fetch_images import fetch_images

DEAD_EVERY = 20  # 5% dead links


def _jpeg(rng: np.random.Generator) -> bytes:
    pixels = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
    im = Image.fromarray(pixels).resize((160, 160), Image.BICUBIC)
    noisy = np.clip(np.asarray(im, dtype=np.int16) + rng.normal(0, 20, (160, 160, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, images: dict[str, bytes], latency_s: float, counter: list[int], *args) -> None:
        self.images, self.latency_s, self.counter = images, latency_s, counter
        super().__init__(*args)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.counter[0] += 1
        time.sleep(self.latency_s)
        body = self.images.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _timed(urls: list[str], cache: Path, cfg: FetchConfig) -> tuple[float, int]:
    t0 = time.perf_counter()
    outcomes = fetch_images(urls, cache, cfg, desc="bench")
    return time.perf_counter() - t0, sum(o.path is not None for o in outcomes.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--hosts", type=int, default=8)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--quick", action="store_true", help="160 images")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "fetch_images.json")
    args = parser.parse_args(argv)
    n = 160 if args.quick else args.images
    rng = np.random.default_rng(0)
    images = {f"/img/{i}.jpg": _jpeg(rng) for i in range(n) if i % DEAD_EVERY}
    counter = [0]
    handler = partial(_Handler, images, args.latency_ms / 1000, counter)
    servers = [ThreadingHTTPServer((f"127.0.0.{2 + h}", 0), handler) for h in range(args.hosts)]  # one per host
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    urls = [f"http://{servers[i % args.hosts].server_address[0]}:{servers[i % args.hosts].server_address[1]}"
            f"/img/{i}.jpg" for i in range(n)]  # fmt: skip
    fast = dict(timeout_s=10.0, retries=0, per_host_per_second=1e6)
    results: dict = {"images": n, "dead": n - len(images), "hosts": args.hosts, "latency_ms": args.latency_ms,
                     "mean_image_bytes": round(sum(map(len, images.values())) / len(images))}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "1 worker": (FetchConfig(workers=1, **fast), "serial"),
            "16 workers": (FetchConfig(workers=16, **fast), "parallel"),
            "16 workers, 2/s per host": (FetchConfig(workers=16, timeout_s=10.0, retries=0), "limited"),
        }
        for label, (cfg, folder) in runs.items():
            seconds, got = _timed(urls, Path(tmp, folder), cfg)
            results[label] = {"seconds": round(seconds, 3), "fetched": got, "images_per_s": round(n / seconds, 1)}
        before = counter[0]
        seconds, got = _timed(urls, Path(tmp, "parallel"), runs["16 workers"][0])
        results["rerun on a filled cache"] = {"seconds": round(seconds, 3), "fetched": got,
                                              "requests": counter[0] - before}  # fmt: skip
    for server in servers:
        server.shutdown()
    serial, parallel = results["1 worker"]["images_per_s"], results["16 workers"]["images_per_s"]
    per_host = n / args.hosts  # a host's first request goes at once: its N requests take >= (N - 1) / rate
    limited = n / results["16 workers, 2/s per host"]["seconds"]
    bound = round(2.0 * args.hosts * per_host / (per_host - 1), 2)
    rows = [
        row("16 workers vs 1 worker", parallel, "img/s", serial),
        row("rate-limited (2/s per host) vs its bound", round(limited, 2), "img/s", bound, "<= 1x", limited <= bound),
        row("rerun on a filled cache: requests", float(results["rerun on a filled cache"]["requests"]), "requests"),
    ]
    write(args.out, report("fetch_images", args.quick, results, rows))
    print(f"{'run':<28} {'s':>8} {'img/s':>8} fetched")
    for label in runs:
        r = results[label]
        print(f"{label:<28} {r['seconds']:>8.2f} {r['images_per_s']:>8.1f} {r['fetched']}/{n}")
    print(f"rerun on a filled cache: {results['rerun on a filled cache']['requests']} requests")
    return 0


if __name__ == "__main__":
    sys.exit(main())
