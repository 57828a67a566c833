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
have neither. What was fetched is then written in the formats the pipeline reads
(``<source folder>/fetched/documents.parquet``, ``fetched/captions-000000.tar``) and the manifest points
there. Missing images are recorded in the quarantine (source, key = document id#position or the URL,
reason) but are not bad samples: ``max_missing_fraction`` is their limit.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path
from urllib.parse import urlparse

from mm1 import __version__
from mm1.atomic import write_bytes, write_text
from mm1.config.data import FetchConfig
from mm1.data.download import AcquireError, free_space_note
from mm1.data.formats._common import image_problem
from mm1.data.formats.obelics import write_documents
from mm1.data.formats.url_sources import UrlCaption, UrlDoc, read_url_captions, read_url_documents
from mm1.data.formats.webdataset import write_caption_shards
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample, InterleavedDoc
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


def fetch_images(urls: list[str], cache_dir: Path, cfg: FetchConfig, desc: str = "images") -> dict[str, Fetched]:
    """Fetch every distinct URL of ``urls`` into the cache ``cache_dir``; {url: outcome}."""
    cache, limiter = ImageCache(cache_dir), HostLimiter(cfg.per_host_per_second)
    cache.folder.mkdir(parents=True, exist_ok=True)
    distinct = list(dict.fromkeys(urls))
    out: dict[str, Fetched] = {}
    todo = []
    for url in distinct:
        known = cache.known(url)
        if known is not None:
            out[url] = known
        else:
            todo.append(url)
    bar = progress(total=len(distinct), initial=len(out), desc=desc, unit="img")
    with bar, ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="mm1-fetch") as pool:
        try:
            for url, outcome in zip(todo, pool.map(lambda u: fetch_one(u, cache, limiter, cfg), todo), strict=True):
                out[url] = outcome
                bar.update(1)
        except OSError as e:  # writing the cache: disk full, quota, read-only (network errors are caught per URL)
            pool.shutdown(cancel_futures=True)
            raise AcquireError(
                f"{desc}: cannot write fetched images to {cache.folder} ({e.strerror or e}; "
                f"{free_space_note(cache.folder)}); make room and run again (fetched images are kept)"
            ) from e
    if todo:
        missing = sum(o.path is None for o in out.values())
        log.info("%s: %d of %d images fetched now, %d missing", desc, len(todo), len(distinct), missing)
    return out


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


# ---- materialising what was fetched ----------------------------------------------------------------


@dataclass(frozen=True)
class Materialised:
    """The files a URL source became, in a format the pipeline reads, and its image counts."""

    format: str  # obelics or webdataset
    path: Path | None  # None: no pair had its image (the source then holds no samples)
    samples: int
    images: int  # distinct image URLs tried
    images_missing: int


def materialise(
    name: str, fmt: str, path: Path, cfg: FetchConfig, quarantine: Quarantine, missing: Quarantine
) -> Materialised:
    """Read the URL source ``path`` (format obelics_urls or url_captions), fetch its images and write
    what came as ``<its folder>/fetched/documents.parquet`` or ``fetched/captions-000000.tar``.
    Malformed rows go to ``quarantine``; missing images, and documents or pairs left without them, to
    ``missing`` (not counted as bad samples)."""
    folder = Path(path).parent
    if fmt == "obelics_urls":
        docs = list(read_url_documents(path, quarantine, name))
        outcomes = fetch_images([u for d in docs for u in d.urls if u], folder / "images", cfg, f"{name} images")
        kept = [d for d in (_document(d, outcomes, name, path, missing) for d in docs) if d is not None]
        out = write_documents(kept, folder / "fetched" / "documents.parquet")
        fmt_out = "obelics"
    else:
        pairs = list(read_url_captions(path, quarantine, name))
        outcomes = fetch_images([p.url for p in pairs], folder / "images", cfg, f"{name} images")
        kept = [s for s in (_pair(p, outcomes, name, path, missing) for p in pairs) if s is not None]
        shards = write_caption_shards(kept, folder / "fetched", shard_size=max(1, len(kept)))  # one shard
        out, fmt_out = (shards[0] if shards else None), "webdataset"
    failed = sum(o.path is None for o in outcomes.values())
    return Materialised(fmt_out, out, len(kept), len(outcomes), failed)


def _document(doc: UrlDoc, outcomes: dict[str, Fetched], name: str, path: Path, missing: Quarantine):
    texts, images = [], []
    for pos, (text, url) in enumerate(zip(doc.texts, doc.urls, strict=True)):
        if url is None:
            texts.append(text)
            images.append(None)
        elif (got := outcomes[url]).path is None:
            missing.add(name, path, f"{doc.id}#{pos} {url}", f"image not fetched: {got.reason}")
        else:
            texts.append(None)
            images.append(got.path.read_bytes())
    if all(im is None for im in images):
        missing.add(name, path, doc.id, "document left with no image after fetching (its images are missing)")
        return None
    return InterleavedDoc(id=doc.id, texts=tuple(texts), images=tuple(images), meta=doc.meta)


def _pair(pair: UrlCaption, outcomes: dict[str, Fetched], name: str, path: Path, missing: Quarantine):
    got = outcomes[pair.url]
    if got.path is None:
        missing.add(name, path, pair.url, f"image not fetched: {got.reason}")
        return None
    meta = {**pair.meta, "url": pair.url}
    return CaptionSample(key=pair.key, image=got.path.read_bytes(), captions={"alt": pair.caption}, meta=meta)
