import json

import pytest

from mm1.data.formats import FormatError, count_coco_captions, read_coco_captions, write_coco_captions
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionBenchmark


def bench(png):
    images = {42: png(1), 7: png(2), 1000: png(3, "JPEG")}
    refs = {i: [f"caption {k} of image {i}" for k in range(5)] for i in images}
    return CaptionBenchmark("coco_synth", "val", images, refs)


def test_round_trip(tmp_path, png):
    path = write_coco_captions(bench(png), tmp_path)
    assert path == tmp_path / "captions_val.json"
    obj = json.loads(path.read_text())
    assert set(obj) == {"info", "licenses", "images", "annotations"}
    assert obj["images"][0] == {"id": 7, "file_name": "000000000007.png", "height": 3, "width": 4}
    assert (tmp_path / "images" / "val" / "000000000042.png").read_bytes() == png(1)
    assert (tmp_path / "images" / "val" / "000000001000.jpg").read_bytes() == png(3, "JPEG")
    assert len(obj["annotations"]) == 15 and obj["annotations"][0] == {
        "id": 1,
        "image_id": 7,
        "caption": "caption 0 of image 7",
    }
    assert read_coco_captions(path, tmp_path / "images" / "val") == bench(png)
    assert read_coco_captions(path) == bench(png)  # default image root


def test_bad_entries(tmp_path, png):
    path = write_coco_captions(bench(png), tmp_path)
    (tmp_path / "images" / "val" / "000000000042.png").write_bytes(b"junk")
    obj = json.loads(path.read_text())
    obj["annotations"].append({"id": 99, "image_id": 5, "caption": "orphan"})
    path.write_text(json.dumps(obj))
    q = Quarantine()
    got = read_coco_captions(path, quarantine=q, source="coco")
    assert sorted(got.images) == [7, 1000]
    assert {r.key for r in q.records} == {"image 42", "annotations[15]"}
    with pytest.raises(FormatError, match="not among the images"):
        read_coco_captions(path)
    q = Quarantine()
    assert count_coco_captions(path, q, "coco") == 3 and q.accepted("coco") == 3 and q.rejected("coco") == 1


def test_writer_refuses_images_without_references(tmp_path, png):
    with pytest.raises(ValueError, match="no reference"):
        write_coco_captions(CaptionBenchmark("c", "val", {1: png()}, {1: []}), tmp_path)
