"""Writers and readers of the file formats real MM1-style data comes in.

    webdataset  caption pairs          tar shards of {key}.png / .txt / .synthetic.txt / .json
    obelics     interleaved documents  parquet: id, texts, images (encoded bytes), meta
    text        text-only documents    jsonl: {"id", "text", ...meta}
    coco        captioning benchmarks  captions_{split}.json + images/{split}/
    vqa         VQA benchmarks         VQAv2 questions + annotations JSON + images/{split}/
    llava       SFT conversations      LLaVA JSON + images; multiple-choice and text-task jsonl
    obelics_urls  interleaved documents  released OBELICS parquet: images are URLs (url_sources)
    url_captions  caption pairs          parquet / jsonl / tsv of image URL + caption (url_sources)

The two URL formats are read into UrlDoc / UrlCaption; the acquire stage fetches their images
(mm1.data.fetch_images) and writes them as obelics / webdataset.

Images are stored as the encoded bytes they come as; nothing is re-encoded. Every reader takes an
optional Quarantine: with one, bad samples are recorded there (and the good ones counted as
accepted); without one, the first bad sample raises FormatError. A file that cannot be read as its
format at all always raises FormatError. Pre-training readers stream (iterators); benchmark and SFT
readers return whole lists.
"""

from mm1.data.formats._common import FormatError
from mm1.data.formats.coco import count_coco_captions, read_coco_captions, write_coco_captions
from mm1.data.formats.llava import (
    count_llava,
    read_llava,
    read_multiple_choice,
    read_text_tasks,
    write_llava,
    write_multiple_choice,
    write_text_tasks,
)
from mm1.data.formats.obelics import read_documents, write_documents
from mm1.data.formats.safe_tar import UnsafeArchiveError
from mm1.data.formats.text import read_text, write_text
from mm1.data.formats.url_sources import UrlCaption, UrlDoc, read_url_captions, read_url_documents
from mm1.data.formats.vqa import count_vqa, read_vqa, write_vqa
from mm1.data.formats.webdataset import read_caption_shards, write_caption_shards

__all__ = [
    "FormatError",
    "UnsafeArchiveError",
    "UrlCaption",
    "UrlDoc",
    "count_coco_captions",
    "count_llava",
    "count_vqa",
    "read_caption_shards",
    "read_coco_captions",
    "read_documents",
    "read_llava",
    "read_multiple_choice",
    "read_text",
    "read_text_tasks",
    "read_url_captions",
    "read_url_documents",
    "read_vqa",
    "write_caption_shards",
    "write_coco_captions",
    "write_documents",
    "write_llava",
    "write_multiple_choice",
    "write_text",
    "write_text_tasks",
    "write_vqa",
]
