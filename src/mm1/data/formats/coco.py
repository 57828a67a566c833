"""Captioning benchmarks in COCO caption format: one JSON file plus a folder of image files.

    out_dir/captions_{split}.json           {"info", "licenses", "images": [{"id", "file_name",
                                             "height", "width"}], "annotations": [{"id", "image_id",
                                             "caption"}]}
    out_dir/images/{split}/{image_id:012d}.png   (.jpg for JPEG bytes; written as they are)

The benchmark's name is kept in ``info.description`` and its split in ``info.split`` (read from
the file name ``captions_{split}.json`` when absent). Every image needs at least one reference.
"""

from __future__ import annotations

import re
from pathlib import Path

from mm1.atomic import write_bytes
from mm1.data.formats._common import (
    FormatError,
    Sink,
    check_fields,
    check_name,
    dump_json,
    image_info,
    load_json,
    read_image_file,
    write_image,
)
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionBenchmark

_FILE = re.compile(r"^captions_(.+)\.json$")


def write_coco_captions(bench: CaptionBenchmark, out_dir: Path) -> Path:
    """Write the benchmark's images and ``captions_{split}.json``; return the JSON's path."""
    check_name("split", bench.split)
    if bench.images.keys() != bench.references.keys():
        raise ValueError(f"{bench.name}/{bench.split}: images and references must have the same image ids")
    out_dir = Path(out_dir)
    images, annotations = [], []
    for image_id in sorted(bench.images):
        if not bench.references[image_id]:
            raise ValueError(f"{bench.name}/{bench.split}: image {image_id} has no reference caption")
        file_name = write_image(out_dir / "images" / bench.split, f"{image_id:012d}", bench.images[image_id])
        _, width, height = image_info(bench.images[image_id])
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for caption in bench.references[image_id]:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "caption": caption})
    info = {"description": bench.name, "split": bench.split, "version": "1.0", "contributor": "mm1"}
    obj = {"info": info, "licenses": [], "images": images, "annotations": annotations}
    return write_bytes(out_dir / f"captions_{bench.split}.json", dump_json(obj))


def read_coco_captions(
    json_path: Path,
    image_root: Path | None = None,
    quarantine: Quarantine | None = None,
    source: str | None = None,
) -> CaptionBenchmark:
    """Read a COCO caption file and its images from ``image_root`` (default: ``images/{split}``
    beside the JSON). Without a quarantine (the default) any bad entry raises FormatError; with one,
    bad entries are recorded and left out."""
    json_path = Path(json_path)
    sink = Sink(quarantine, source, json_path)
    obj, name, split = _open(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent / "images" / split
    images, references = {}, {}
    for image_id, (file_name, refs) in _index(obj, sink).items():
        data, problem = read_image_file(root, file_name)
        if problem:
            sink.reject(f"image {image_id}", problem)
            continue
        images[image_id], references[image_id] = data, refs
        sink.accept()
    return CaptionBenchmark(name=name, split=split, images=images, references=references)


def count_coco_captions(json_path: Path, quarantine: Quarantine, source: str | None = None) -> int:
    """Check the JSON alone (image files not read) and count its images that have captions."""
    sink = Sink(quarantine, source, Path(json_path))
    n = len(_index(_open(Path(json_path))[0], sink))
    quarantine.accept(sink.source, n)
    return n


def read_coco_references(json_path: Path) -> dict[int, list[str]]:
    """image_id -> reference captions, from the JSON alone: no image file is read and the images
    need only an ``id``. Any bad entry, or an image without a caption, raises FormatError."""
    json_path = Path(json_path)
    index = _index(_open(json_path)[0], Sink(None, None, json_path), need_file=False)
    return {image_id: refs for image_id, (_, refs) in index.items()}


def _open(json_path: Path) -> tuple[dict, str, str]:
    obj = load_json(json_path)
    if problem := check_fields(obj, {"images": list, "annotations": list}):
        raise FormatError(f"{json_path}: not a COCO caption file ({problem})")
    info = obj.get("info") if isinstance(obj.get("info"), dict) else {}
    match = _FILE.match(json_path.name)
    name = info.get("description") if isinstance(info.get("description"), str) else json_path.stem
    split = info.get("split") if isinstance(info.get("split"), str) else (match[1] if match else "")
    return obj, name, split


def _index(obj: dict, sink: Sink, need_file: bool = True) -> dict[int, tuple[str, list[str]]]:
    """image_id -> (file_name, reference captions) of the valid entries; the others are rejected.
    With need_file=False an image without a ``file_name`` is valid (its file_name is "")."""
    image_fields = {"id": int, "file_name": str} if need_file else {"id": int}
    files: dict[int, str] = {}
    for i, entry in enumerate(obj["images"]):
        if problem := check_fields(entry, image_fields):
            sink.reject(f"images[{i}]", problem)
        elif entry["id"] in files:
            sink.reject(f"image {entry['id']}", "image id occurs twice")
        else:
            files[entry["id"]] = entry.get("file_name", "")
    refs: dict[int, list[str]] = {image_id: [] for image_id in files}
    for i, ann in enumerate(obj["annotations"]):
        if problem := check_fields(ann, {"image_id": int, "caption": str}):
            sink.reject(f"annotations[{i}]", problem)
        elif ann["image_id"] not in refs:
            sink.reject(f"annotations[{i}]", f"image_id {ann['image_id']} is not among the images")
        else:
            refs[ann["image_id"]].append(ann["caption"])
    index = {}
    for image_id, file_name in files.items():
        if refs[image_id]:
            index[image_id] = (file_name, refs[image_id])
        else:
            sink.reject(f"image {image_id}", "no reference caption")
    return index
