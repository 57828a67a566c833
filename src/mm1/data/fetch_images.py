"""The image-fetch step of the acquire stage, for sources whose images are URLs (obelics_urls, url_captions).

After the source file is downloaded and verified, its image URLs are fetched the way img2dataset does:

- in parallel (``data.fetch.workers`` threads), at most ``per_host_per_second`` requests to one host
  (a token bucket per host holding one token: N requests to a host take at least (N - 1) / rate s);
- each request with ``timeout_s`` (connect, each read, and the whole body) and a User-Agent naming mm1;
- transient failures (connection errors, timeouts, HTTP 408 / 429 / 5xx) are retried ``retries`` times,
  waiting ``backoff_s`` doubled each time, or a 429's / 503's Retry-After up to ``max_retry_after_s``;
  if they persist the image is missing for this run only;
- permanent failures are remembered: HTTP 403 / 404 / 410 and other 4xx, an ``X-Robots-Tag: noai`` or
  ``noimageai`` answer (the site opts out of AI training), more than ``max_image_bytes``, bytes PIL
  cannot decode, a URL that is not http(s).

Each image lands atomically in ``<source folder>/images/<sha256 of the URL>`` and each permanent failure
in ``<sha256 of the URL>.failed`` (its reason): a rerun, also after a kill, requests only the URLs that
have neither. The source is fetched and written ``block_size`` documents or pairs at a time (see
mm1.data.materialise: one block's images in memory) to ``fetched/documents.parquet`` or webdataset shards
``fetched/captions-000000.tar``...; the manifest has a row per file. Missing images are recorded in the
quarantine (source, key = document id#position or the URL, reason) but are not bad samples:
``max_missing_fraction`` is their limit.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

from mm1 import __version__
from mm1.atomic import write_bytes, write_text
from mm1.config.data import FetchConfig
from mm1.data.download import AcquireError, free_space_note
from mm1.data.formats._common import image_problem
from mm1.progress import progress

log = logging.getLogger(__name__)
USER_AGENT = f"mm1/{__version__} (image fetch for research pre-training, like img2dataset)"
TRANSIENT_HTTP = frozenset({408, 425, 429, 500, 502, 503, 504})
OPT_OUT = ("noai", "noimageai")
"""X-Robots-Tag values that refuse AI training (img2dataset honours them)."""
CHUNK = 1 << 16


@dataclass(frozen=True)
class Fetched:
    """What became of one URL: ``path`` of the cached image, else ``reason`` it is missing."""

    path: Path | None
    reason: str | None = None
    permanent: bool = False


class _Permanent(Exception):
    """The URL will not give an image; remembered so that no later run asks again."""


class _Transient(Exception):
    """Worth another try; ``wait_s`` set when the server said how long (Retry-After)."""

    def __init__(self, message: str, wait_s: float | None = None) -> None:
        super().__init__(message)
        self.wait_s = wait_s


class HostLimiter:
    """A token bucket per host, one token deep, refilled at ``rate`` per second: each request to a
    host waits until 1 / rate s after the one before it."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait(self, host: str) -> None:
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next.get(host, now))
            self._next[host] = at + self.interval
        if at > now:
            time.sleep(at - now)


class ImageCache:
    """Fetched images and permanent failures of one source, by sha256 of the URL, in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _stem(self, url: str) -> Path:
        return self.folder / hashlib.sha256(url.encode()).hexdigest()

    def known(self, url: str) -> Fetched | None:
        """The cached outcome of ``url``, or None when it was never fetched nor failed for good."""
        stem = self._stem(url)
        if stem.is_file():
            return Fetched(stem)
        failed = stem.with_suffix(".failed")
        if failed.is_file():
            return Fetched(None, failed.read_text(errors="replace"), permanent=True)
        return None

    def store(self, url: str, data: bytes) -> Fetched:
        return Fetched(write_bytes(self._stem(url), data))

    def fail(self, url: str, reason: str) -> Fetched:
        write_text(self._stem(url).with_suffix(".failed"), reason)
        return Fetched(None, reason, permanent=True)


class Fetcher:
    """The image URLs of one source into the cache ``cache_dir`` a block at a time (``submit``, then
    ``collect``: the next block fetches while one is written); one pool, per-host limiter and count of
    distinct URLs (``tried`` / ``missing``, 64-bit digests) for the whole source."""

    def __init__(self, cache_dir: Path, cfg: FetchConfig, desc: str = "images") -> None:
        self.cache, self.limiter = ImageCache(cache_dir), HostLimiter(cfg.per_host_per_second)
        self.cfg, self.desc = cfg, desc
        self.missing = self.requested = 0
        self._seen: set[int] = set()
        self._running: dict[str, Future] = {}

    def __enter__(self) -> Fetcher:
        self.cache.folder.mkdir(parents=True, exist_ok=True)
        self._bar = progress(desc=self.desc, unit="img")
        self._pool = ThreadPoolExecutor(max_workers=self.cfg.workers, thread_name_prefix="mm1-fetch")
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(cancel_futures=True)
        self._bar.close()
        if self.requested:
            log.info("%s: %d of %d images fetched now, %d missing", self.desc, self.requested, self.tried, self.missing)

    def submit(self, urls: list[str]) -> dict[str, tuple[Fetched | Future, bool]]:
        """Start fetching the distinct URLs of ``urls`` that are neither cached nor running; for each
        URL its outcome or future, and whether this is the source's first sight of it."""
        block = {}
        for url in dict.fromkeys(urls):
            digest = int.from_bytes(hashlib.sha256(url.encode()).digest()[:8])
            first, got = digest not in self._seen, self._running.get(url) or self.cache.known(url)
            self._seen.add(digest)
            if got is None and not first:  # failed for this run only, in an earlier block
                got = Fetched(None, "not fetched earlier in this run (see its first record); a later run tries again")
            if got is None:
                got = self._running[url] = self._pool.submit(fetch_one, url, self.cache, self.limiter, self.cfg)
                self.requested += 1
            block[url] = (got, first)
        return block

    def collect(self, block: dict[str, tuple[Fetched | Future, bool]]) -> dict[str, Fetched]:
        """{url: outcome} of a submitted block, once every one of its URLs is done."""
        out = {}
        try:
            for url, (got, first) in block.items():
                if isinstance(got, Future):
                    got = got.result()
                    self._running.pop(url, None)
                out[url] = got
                self.missing += first and got.path is None
                self._bar.update(1)
        except OSError as e:  # writing the cache: disk full, quota, read-only (network errors are caught per URL)
            self._pool.shutdown(cancel_futures=True)
            raise AcquireError(
                f"{self.desc}: cannot write fetched images to {self.cache.folder} ({e.strerror or e}; "
                f"{free_space_note(self.cache.folder)}); make room and run again (fetched images are kept)"
            ) from e
        return out

    @property
    def tried(self) -> int:
        return len(self._seen)


def fetch_images(urls: list[str], cache_dir: Path, cfg: FetchConfig, desc: str = "images") -> dict[str, Fetched]:
    """Fetch every distinct URL of ``urls`` into the cache ``cache_dir``; {url: outcome}."""
    with Fetcher(cache_dir, cfg, desc) as fetcher:
        return fetcher.collect(fetcher.submit(urls))


def fetch_one(url: str, cache: ImageCache, limiter: HostLimiter, cfg: FetchConfig) -> Fetched:
    """One URL into the cache, with retries; its outcome (a permanent failure is remembered)."""
    try:
        parsed = urlparse(url)
        host = parsed.hostname
    except ValueError as e:  # a malformed netloc ("http://[::1")
        return cache.fail(url, f"not a valid URL ({e})")
    if parsed.scheme.lower() not in ("http", "https"):
        return cache.fail(url, f"unsupported URL scheme {parsed.scheme!r} (only http and https are fetched)")
    if not host:
        return cache.fail(url, "URL names no host")
    wait = cfg.backoff_s
    for attempt in range(cfg.retries + 1):
        limiter.wait(host)
        try:
            return cache.store(url, _get(url, cfg))
        except _Permanent as e:
            return cache.fail(url, str(e))
        except _Transient as e:
            last = e
        if attempt < cfg.retries:
            time.sleep(min(last.wait_s, cfg.max_retry_after_s) if last.wait_s is not None else wait)
            wait *= 2
    return Fetched(None, f"{last} (after {cfg.retries + 1} tries; a later run tries again)")


def _get(url: str, cfg: FetchConfig) -> bytes:
    """The image at ``url``: _Permanent or _Transient when there is none."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    deadline = time.monotonic() + cfg.timeout_s
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_s) as resp:
            _check_headers(resp.headers, cfg)
            data = _read_capped(resp, cfg.max_image_bytes, deadline)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code in TRANSIENT_HTTP:
            raise _Transient(f"HTTP {e.code} {e.reason}", _retry_after(e.headers.get("Retry-After"))) from None
        raise _Permanent(f"HTTP {e.code} {e.reason}") from None
    except (_Permanent, _Transient):
        raise
    except (OSError, HTTPException, ValueError) as e:  # URLError, timeouts, resets, a malformed URL
        raise _Transient(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
    problem = image_problem(data)
    if problem:
        raise _Permanent(f"not an image: {problem}")
    return data


def _check_headers(headers, cfg: FetchConfig) -> None:
    robots = ",".join(headers.get_all("X-Robots-Tag") or []).lower().replace(" ", "")
    refused = [tag for tag in OPT_OUT if tag in robots.replace(":", ",").split(",")]
    if refused:
        raise _Permanent(f"the site opts out of AI training (X-Robots-Tag: {refused[0]})")
    length = headers.get("Content-Length")
    if length and length.isdigit() and int(length) > cfg.max_image_bytes:
        raise _Permanent(f"image of {length} bytes is larger than data.fetch.max_image_bytes {cfg.max_image_bytes}")


def _read_capped(resp, cap: int, deadline: float) -> bytes:
    parts, size = [], 0
    while chunk := resp.read(CHUNK):
        size += len(chunk)
        if size > cap:
            raise _Permanent(f"image sends more than data.fetch.max_image_bytes {cap} bytes")
        if time.monotonic() > deadline:
            raise _Transient("timed out reading the image (data.fetch.timeout_s)")
        parts.append(chunk)
    return b"".join(parts)


def _retry_after(value: str | None) -> float | None:
    """Seconds of a Retry-After header given in seconds (an HTTP date is treated as absent)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
