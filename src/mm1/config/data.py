"""Config of the data side: the synthetic MM1 world, acquisition of real data, the mixture, the tokenizer."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from mm1.config.base import FILE_NAME, Section, Seed


class WorldConfig(Section):
    """The built-in synthetic "MM1 world": seeded procedural scenes and every data type of the paper."""

    seed: Seed = 0
    """Seed of the generator; the same seed gives byte-identical datasets."""
    render_size: int = Field(64, ge=16, le=4096)
    """Images are rendered once at this size; the encoder's resolution is applied at load time."""
    max_objects: int = Field(6, ge=1, le=6)
    """Each scene holds between 1 and this many objects (up to 3 on a 2x2 grid, 4-6 on a 3x3 grid)."""
    text_fraction: float = Field(0.5, ge=0, le=1)
    """Share of images that carry rendered text (a word or number; small sizes need resolution).
    About half of web images embed text (LAION-2B, Lin et al. 2023, "Parrot captions")."""
    degraded_fraction: float = Field(0.1, ge=0, le=1)
    """Share of images degraded by blur, occlusion or low contrast."""
    n_captions: int = Field(4000, ge=1)
    """Image-caption pairs for pre-training (each has an alt-text and a synthetic caption)."""
    n_documents: int = Field(1000, ge=0)
    """Interleaved image-text documents for pre-training."""
    images_per_document: int = Field(8, ge=2, le=16)
    """Most images in one interleaved document (at least 2: a document interleaves images with text)."""
    n_text: int = Field(2000, ge=0)
    """Text-only documents (language about the world and the knowledge base)."""
    n_bench_val: int = Field(100, ge=1)
    """Evaluation images per benchmark (held out from every training source)."""
    n_bench_train: int = Field(200, ge=0)
    """Images per benchmark's train split (the pool few-shot demonstrations are drawn from)."""
    captions_per_image: int = Field(5, ge=1, le=10)
    """Reference captions per captioning-benchmark image (COCO: 5)."""
    answers_per_question: int = Field(10, ge=4, le=10)
    """Human answers per VQA question (VQAv2: 10). At least 4: the official VQA accuracy scores an
    answer against the other n-1 answers and needs 3 matches for full credit."""
    n_textcore: int = Field(200, ge=0)
    """Text-only evaluation items (the TextCore analogue)."""
    n_sft: int = Field(1000, ge=0)
    """SFT conversations (LLaVA format)."""
    n_multiple_choice: int = Field(200, ge=0)
    """Multiple-choice evaluation items for the SFT stage."""
    shard_size: int = Field(1000, ge=1)
    """Samples per webdataset tar shard."""


Format = Literal["webdataset", "obelics", "jsonl", "coco", "vqa", "llava", "obelics_urls", "url_captions"]
Role = Literal["caption", "interleaved", "text", "benchmark", "sft"]
ROLES_OF_FORMAT: dict[str, tuple[str, ...]] = {
    "webdataset": ("caption",),
    "obelics": ("interleaved",),
    "jsonl": ("text", "benchmark", "sft"),  # text documents; TextCore, multiple-choice and text tasks
    "coco": ("benchmark",),
    "vqa": ("benchmark",),
    "llava": ("sft",),
    "obelics_urls": ("interleaved",),  # released OBELICS parquet: image URLs, fetched by the acquire stage
    "url_captions": ("caption",),  # URL + caption tables (LAION parquet, CC3M/CC12M tsv, jsonl)
}
"""The roles a source of each format can be read for (what the acquire stage and the readers support)."""
_FSSPEC_WRAPPERS = frozenset(
    "blockcache cached filecache simplecache dir reference zip tar libarchive async_wrapper asyncwrapper generic".split()
)
"""fsspec schemes that wrap another file system (they need a chained URL, which sources do not take)."""
DEFAULT_MAX_BYTES = 16 << 30
"""A download without a declared size stops here (16 GiB; the biggest single files MM1-style data
comes in, such as a COCO image archive or an OBELICS parquet shard, are smaller)."""


class SourceSpec(Section):
    """One dataset to acquire: where it is, what it must hash to, how it is stored, under what licence."""

    name: str = Field(pattern=FILE_NAME)
    """Folder name under results/acquired/ (letters, digits, _ . -; not starting with . or -)."""
    url: str
    """Where the one file is (a tar shard, parquet, jsonl or json): an http(s):// or file:// URL, a
    local path, or a URL of any file system fsspec knows: s3://, gs://, az://, hf:// (Hugging Face
    repositories, e.g. ``hf://datasets/<org>/<name>/<file>``), memory://... (the scheme's package must
    be installed: s3fs, gcsfs, adlfs). No globs: each file is its own source with its own sha256.
    Credentials are never written here: each file system reads its own from the environment
    (AWS_* for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://, AZURE_STORAGE_* for az://, HF_TOKEN
    for hf://)."""
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """Expected sha256 of the file; a mismatch stops the stage."""
    format: Format
    """How the file is stored: webdataset (tar), obelics (parquet), jsonl, coco / vqa / llava (json);
    obelics_urls (the released OBELICS parquet: image URLs, columns images / texts / metadata /
    general_metadata) and url_captions (a parquet, jsonl or tsv of image URL + caption, as img2dataset
    reads LAION / CC3M / CC12M), whose images the acquire stage fetches (see data.fetch)."""
    role: Role
    """What the data is used for; it must fit the format (webdataset: caption, obelics: interleaved,
    jsonl: text, benchmark or sft, coco / vqa: benchmark, llava: sft, obelics_urls: interleaved,
    url_captions: caption)."""
    licence: str
    """Licence of the data, recorded in the manifest."""
    bytes: int | None = Field(None, ge=1)
    """The file's exact size in bytes, if known: a download stops as soon as it passes this, a server
    announcing another size is refused before anything is written, and a download that ends short
    is resumed. When set it is the download's cap and max_bytes is not used."""
    max_bytes: int = Field(DEFAULT_MAX_BYTES, ge=1)
    """Most bytes a download of this source may hold when ``bytes`` is not declared (default 16 GiB);
    a download that passes it stops with an error naming the source. Raise it for a bigger file."""

    @field_validator("url")
    @classmethod
    def _url_scheme(cls, url: str) -> str:
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if scheme.lower() in ("", "http", "https", "file"):
            return url
        from fsspec.registry import known_implementations, registry  # only configs with such a URL import it

        if scheme in _FSSPEC_WRAPPERS or "::" in url:
            raise ValueError(f"{url!r}: chained or wrapping fsspec URLs are not supported; give the file's own URL")
        if scheme not in known_implementations and scheme not in registry:
            raise ValueError(
                f"URL scheme {scheme!r} is not one mm1 can read: use http(s)://, file://, a local path, "
                "or a scheme fsspec knows (s3://, gs://, az://, hf://, memory://...)"
            )
        if re.search(r"[*?[]", url.split("://", 1)[1]):
            raise ValueError(f"{url!r} is a glob: a source is one file with its own sha256; list each file as a source")
        return url

    @field_validator("role")
    @classmethod
    def _role_fits_format(cls, role: str, info: ValidationInfo) -> str:
        fmt = info.data.get("format")  # absent when the format itself was refused
        allowed = ROLES_OF_FORMAT.get(fmt, (role,))
        if role not in allowed:
            raise ValueError(
                f"role {role!r} does not fit format {fmt!r}: a {fmt} source can only have role "
                f"{' or '.join(allowed)}; fix the role or the format"
            )
        return role


class MixtureConfig(Section):
    """How pre-training sequences are drawn from the three data types and packed."""

    caption: float = Field(0.45, ge=0)
    """Weight of image-caption pairs (MM1: 45%)."""
    interleaved: float = Field(0.45, ge=0)
    """Weight of interleaved documents (MM1: 45%)."""
    text: float = Field(0.10, ge=0)
    """Weight of text-only documents (MM1: 10%)."""
    synthetic_captions: float = Field(0.07, ge=0, le=1)
    """Share of caption pairs that use the synthetic (VeCap-like) caption instead of the alt-text."""
    max_images_per_sequence: int = Field(16, ge=1)
    """Most images in one sequence (MM1: 16), caption pairs and interleaved documents alike: the next
    pair or document starts a new sequence when its images would exceed it (the images of a single
    document past it are dropped). Fewer when the sequence has no room for more."""

    @model_validator(mode="after")
    def _weights(self) -> MixtureConfig:
        if self.caption + self.interleaved + self.text <= 0:
            raise ValueError("caption + interleaved + text weights must be positive")
        return self

    @property
    def fractions(self) -> dict[str, float]:
        """The weights normalised to sum to 1."""
        total = self.caption + self.interleaved + self.text
        return {"caption": self.caption / total, "interleaved": self.interleaved / total, "text": self.text / total}


class FetchConfig(Section):
    """How the acquire stage fetches the images of URL-only sources (obelics_urls, url_captions), as
    img2dataset does: in parallel, politely per host, resumably, dead links quarantined with the reason."""

    workers: int = Field(16, ge=1, le=256)
    """Downloads in flight at once (threads; image fetching waits on the network, not the CPU)."""
    per_host_per_second: float = Field(2.0, gt=0)
    """Most requests per second to one host (retries included): N requests to a host take at least
    (N - 1) / this many seconds. Web hosts throttle or block scrapers that go faster."""
    timeout_s: float = Field(10.0, gt=0)
    """Seconds one image request may take (connecting, each read, and the whole body); a slower one
    counts as a transient failure and is retried."""
    retries: int = Field(2, ge=0, le=10)
    """Retries of a transient failure (connection error, timeout, HTTP 408 / 429 / 5xx) before the
    image counts as missing for this run (a later run tries it again)."""
    backoff_s: float = Field(1.0, ge=0)
    """Wait before the first retry, doubled for each next one (a 429's Retry-After replaces it)."""
    max_retry_after_s: float = Field(60.0, ge=0)
    """Longest Retry-After (seconds) of an HTTP 429 / 503 that is honoured; a longer one is cut to this."""
    max_image_bytes: int = Field(16 << 20, ge=1)
    """An image larger than this (announced or sent) is not kept: quarantined as too large (16 MiB:
    web images are rarely over a few MiB)."""
    block_size: int = Field(1000, ge=1)
    """Documents (or caption pairs) fetched and written per block: the images of one block are held in
    memory at a time (1000 OBELICS documents hold ~2500 images, 353M in 141M documents: a few hundred
    MB; lower it for large images). A document source's parquet gets one row group per block."""
    shard_size: int = Field(10_000, ge=1)
    """Caption pairs per webdataset shard written (img2dataset's default; ~1 GB of full-size web images):
    a caption source becomes fetched/captions-000000.tar, captions-000001.tar..., one manifest row each."""
    max_missing_fraction: float = Field(0.5, ge=0, le=1)
    """The stage fails when more than this share of a source's image URLs cannot be fetched. Real
    link rot is large: a few years after release, tens of percent of OBELICS's and LAION's image URLs
    are dead, blocked or opt-out (img2dataset reports success rates well under 100% even on fresh
    sets), so the default only stops a run where most images are missing: a blocked host, a wrong
    column, no network. Lower it when fetching a fresh set."""


class DataConfig(Section):
    """Where pre-training data comes from and how it is mixed."""

    source: Literal["world", "acquired"] = "world"
    """world: the built-in synthetic world; acquired: the datasets listed in ``sources``."""
    sources: tuple[SourceSpec, ...] = ()
    """Datasets to download and verify when source is "acquired"."""
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    """A stage fails when more than this share of samples is quarantined (undecodable, bad UTF-8...)."""
    mixture: MixtureConfig = MixtureConfig()
    """The pre-training mixture."""
    fetch: FetchConfig = FetchConfig()
    """How the images of URL-only sources (formats obelics_urls, url_captions) are fetched."""

    @model_validator(mode="after")
    def _sources(self) -> DataConfig:
        if self.source == "acquired" and not self.sources:
            raise ValueError('source="acquired" needs at least one entry in data.sources')
        names = [s.name for s in self.sources]
        if len(set(names)) != len(names):
            raise ValueError(f"data.sources names must be unique, got {names}")
        return self


class TokenizerConfig(Section):
    """Byte-level BPE tokenizer trained with HF tokenizers on the text of the mixture."""

    vocab_size: int = Field(1024, ge=261, le=262144)
    """Largest vocabulary size, special tokens included (256 byte symbols + 5 specials at least)."""
    min_frequency: int = Field(2, ge=1)
    """A merge must occur at least this often in the training text."""
    path: str | None = None
    """Use this existing tokenizer.json (HF format, must contain mm1's special tokens) instead of training one."""
