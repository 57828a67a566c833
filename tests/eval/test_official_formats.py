"""The official files of MM1's Table 3 benchmarks are read as they are released (no conversion step),
each scored with its official metric: written here in the official layouts, with tiny drawn images."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from mm1.config.eval import BenchmarkSpec, EvalConfig
from mm1.data.formats import FormatError, write_coco_captions, write_vqa
from mm1.data.records import CaptionBenchmark, VQABenchmark, VQAItem
from mm1.eval.benchmarks import Benchmark, demo_example, load_benchmark
from mm1.eval.cider import TOKENIZER_ENV
from mm1.eval.vqa_metric import answer_scores, exact_match_scores, gqa_normalize, vqa_scores


def _jpeg(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 255 - shade, 40)).save(buf, format="JPEG")
    return buf.getvalue()


def _png(shade: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40, shade, 255 - shade)).save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def _image(folder: Path, name: str, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


TEN = ["red"] * 6 + ["dark red"] * 3 + ["maroon"]


def write_textvqa(root: Path, split: str = "val") -> Path:
    """TextVQA 0.5.1: one JSON with "data"; images train_images/<image_id>.jpg (hex ids)."""
    data = []
    for n, (qid, image_id) in enumerate([(35, "0a1b2c3d4e5f6071"), (12, "0a1b2c3d4e5f6071"), (7, "ffee00112233aabb")]):
        _image(root / "train_images", f"{image_id}.jpg", _jpeg(30 * n if image_id.startswith("ff") else 0))
        data.append({"question": f"what does sign {n} say?", "question_id": qid, "image_id": image_id,
                     "image_classes": ["Sign"], "answers": [f"stop {n}"] * 7 + ["halt"] * 3, "flickr_original_url": "",
                     "flickr_300k_url": "", "image_width": 8, "image_height": 8, "set_name": split})  # fmt: skip
    head = {"dataset_name": "textvqa", "dataset_version": "0.5.1", "dataset_type": split}
    return _write(root / f"TextVQA_0.5.1_{split}.json", head | {"data": data})


def write_vizwiz(root: Path, split: str = "val") -> Path:
    """VizWiz: annotations/<split>.json, a list; images in <split>/ beside annotations/."""
    entries = []
    for n in (3, 0, 1):
        name = f"VizWiz_{split}_{n:08d}.jpg"
        _image(root / split, name, _jpeg(50 * n))
        answers = TEN if n != 1 else ["unanswerable"] * 10
        entries.append({"image": name, "question": f"what colour is thing {n}?",
                        "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers],
                        "answer_type": "other" if n != 1 else "unanswerable", "answerable": int(n != 1)})  # fmt: skip
    return _write(root / "annotations" / f"{split}.json", entries)


GQA = {
    "20968379": ("n161313", "Is the sky blue?", "yes", "verify", "existAttr"),
    "0511021": ("2354786", "What is on the left of the table?", "t-shirt", "query", "relS"),
    "201307251": ("2354786", "What sport is it?", "tennis racket", "query", "categoryRelS"),
    "4": ("n161313", "Which is bigger, the cat or the dog?", "dog", "choose", "chooseAttr"),
}


def write_gqa(root: Path, split: str = "val") -> Path:
    """GQA: questions1.2/<split>_balanced_questions.json, {qid: question}; images/<imageId>.jpg beside it."""
    questions = {}
    for qid, (image, question, answer, structural, detailed) in GQA.items():
        _image(root / "images", f"{image}.jpg", _jpeg(len(image) * 20))
        questions[qid] = {"imageId": image, "question": question, "answer": answer, "fullAnswer": f"It is {answer}.",
                          "isBalanced": True, "groups": {"global": None, "local": "x"}, "entailed": [],
                          "equivalent": [qid], "semantic": [],
                          "types": {"structural": structural, "semantic": "rel", "detailed": detailed}}  # fmt: skip
    return _write(root / "questions1.2" / f"{split}_balanced_questions.json", questions)


TEXTCAPS = {"1f2e3d4c5b6a7980": [f"a sign that reads open {i}" for i in range(5)],
            "00aa11bb22cc33dd": [f"a bottle labelled cola {i}" for i in range(5)]}  # fmt: skip


def write_textcaps(root: Path, split: str = "val") -> Path:
    """TextCaps 0.1: {"data": one entry per caption}; images train_images/<image_id>.jpg (TextVQA's)."""
    data = []
    for n, (image_id, caps) in enumerate(TEXTCAPS.items()):
        _image(root / "train_images", f"{image_id}.jpg", _jpeg(90 * n))
        for c, cap in enumerate(caps):
            data.append({"image_id": image_id, "image_classes": [], "image_name": image_id, "set_name": split,
                         "image_path": f"train/{image_id}.jpg", "caption_id": 10 * n + c, "caption_str": cap,
                         "caption_tokens": cap.split(), "reference_strs": caps,
                         "reference_tokens": [r.split() for r in caps]})  # fmt: skip
    head = {"dataset_type": split, "dataset_name": "textcaps", "dataset_version": "0.1"}
    return _write(root / f"TextCaps_0.1_{split}.json", head | {"data": data})


NOCAPS = {  # image id -> (domain, references)
    0: ("in-domain", ["a dog runs on the grass", "a brown dog running in a field"]),
    1: ("near-domain", ["a red kayak on a lake", "someone paddles a red kayak"]),
    2: ("out-domain", ["a jellyfish floats in dark water", "a glowing jellyfish in the sea"]),
    3: ("near-domain", ["two goats on a rocky hill", "goats stand on the rocks"]),
    4: ("in-domain", ["a cat sleeps on a sofa", "a grey cat asleep on a couch"]),
}


def write_nocaps(root: Path) -> Path:
    """NoCaps: nocaps_val_4500_captions.json, COCO caption layout whose images carry a domain."""
    images, annotations = [], []
    for image_id, (domain, refs) in NOCAPS.items():
        name = f"{image_id:04x}c0ffee0000.jpg"
        _image(root / "images", name, _jpeg(40 * image_id))
        images.append({"id": image_id, "open_images_id": name[:-4], "height": 8, "width": 8, "coco_url": "",
                       "file_name": name, "domain": domain})  # fmt: skip
        annotations += [{"image_id": image_id, "id": len(annotations), "caption": c} for c in refs]
    info = {"description": "nocaps validation", "version": "0.1"}
    return _write(root / "nocaps_val_4500_captions.json", {"info": info, "licenses": [], "images": images,
                                                          "annotations": annotations})  # fmt: skip


def _coco_and_vqa(root: Path) -> dict[str, Path]:
    """COCO captions and VQAv2 / OK-VQA files through the project's writers (their official layouts)."""
    out = {}
    for split in ("val", "train"):
        cap = CaptionBenchmark("coco", split, {1: _png(1), 2: _png(2)}, {1: ["a cat"], 2: ["a dog", "a hound"]})
        out[f"coco_{split}"] = write_coco_captions(cap, root / "coco")
        for name in ("vqav2", "okvqa"):
            items = [VQAItem(k, 1 + k % 2, f"question {k}?", tuple(TEN), "other", "what color") for k in (5, 6)]
            bench = VQABenchmark(name, split, {1: _png(3), 2: _png(4)}, items)
            out[f"{name}_{split}"] = write_vqa(bench, root / name)[0]
    return out


def _spec(name: str, task: str, fmt: str, val: Path, **more) -> BenchmarkSpec:
    return BenchmarkSpec(name=name, task=task, format=fmt, val=str(val), **{k: str(v) for k, v in more.items()})


def test_textvqa_items_and_pool(tmp_path):
    val, train = write_textvqa(tmp_path, "val"), write_textvqa(tmp_path, "train")
    bench = load_benchmark(_spec("textvqa", "vqa", "textvqa", val, train=train), tmp_path, with_pool=True)
    assert [it.key for it in bench.items] == [7, 12, 35]
    assert bench.items[2].targets == ("stop 0",) * 7 + ("halt",) * 3
    assert bench.items[1].image_id == bench.items[2].image_id != bench.items[0].image_id  # one image, two questions
    assert bench.items[0].image == (tmp_path / "train_images" / "ffee00112233aabb.jpg").read_bytes()
    assert len(bench.pool) == 3 and demo_example(bench.pool[0], "vqa").fields["answer"] == "stop 2"
    assert bench.spec.answer_metric == "vqa_accuracy"


def test_vizwiz_default_images_and_accuracy(tmp_path):
    bench = load_benchmark(_spec("vizwiz", "vqa", "vizwiz", write_vizwiz(tmp_path)), tmp_path, with_pool=False)
    assert [it.key for it in bench.items] == [0, 1, 3]  # the number in VizWiz_val_00000003.jpg
    assert bench.items[1].targets == ("unanswerable",) * 10 and bench.items[1].answer_type == "unanswerable"
    assert bench.items[2].image == (tmp_path / "val" / "VizWiz_val_00000003.jpg").read_bytes()
    predictions = {0: "Dark red.", 1: "unanswerable", 3: "blue"}
    truth = {it.key: (it.targets, it.answer_type) for it in bench.items}
    scored = answer_scores(predictions, truth, bench.spec.answer_metric)
    assert scored == vqa_scores(predictions, truth)
    assert scored["per_question"] == pytest.approx({0: 90.0, 1: 100.0, 3: 0.0})  # 3 of 10 said "dark red": 0.9


def test_gqa_items_and_exact_match(tmp_path):
    bench = load_benchmark(_spec("gqa", "vqa", "gqa", write_gqa(tmp_path)), tmp_path, with_pool=False)
    assert [it.key for it in bench.items] == [4, 511021, 20968379, 201307251]
    first = bench.items[2]
    assert (first.targets, first.answer_type, first.question_type) == (("yes",), "verify", "existAttr")
    assert first.image == (tmp_path / "images" / "n161313.jpg").read_bytes()
    assert bench.spec.answer_metric == "exact_match"
    truth = {it.key: (it.targets, it.answer_type) for it in bench.items}
    right = {4: " Dog.", 511021: "T-shirt", 20968379: "YES", 201307251: "tennis  racket"}
    assert answer_scores(right, truth, "exact_match")["accuracy"] == 100.0
    assert vqa_scores(right, truth)["accuracy"] == 0.0  # why GQA needs its own metric: one answer, min(0/3, 1)
    wrong = {4: "the dog", 511021: "shirt", 20968379: "no", 201307251: "tennis racket"}
    scored = exact_match_scores(wrong, truth)
    assert scored["per_question"] == {4: 0.0, 511021: 0.0, 20968379: 0.0, 201307251: 100.0}
    assert scored["per_answer_type"] == {"choose": 0.0, "query": 50.0, "verify": 0.0}


@pytest.mark.parametrize(
    ("text", "normal"),
    [("Yes.", "yes"), ("  Tennis   Racket ", "tennis racket"), ("t-shirt", "tshirt"), ("the left", "the left"),
     ("two", "two"), ("it's", "its")],
)  # fmt: skip
def test_gqa_normalisation(text, normal):
    assert gqa_normalize(text) == normal


def test_textcaps_items(tmp_path):
    val, train = write_textcaps(tmp_path, "val"), write_textcaps(tmp_path, "train")
    bench = load_benchmark(_spec("textcaps", "captioning", "textcaps", val, train=train), tmp_path, with_pool=True)
    assert [it.key for it in bench.items] == [0, 1]
    assert [it.targets for it in bench.items] == [tuple(c) for c in TEXTCAPS.values()]
    assert bench.items[1].image == (tmp_path / "train_images" / "00aa11bb22cc33dd.jpg").read_bytes()
    assert demo_example(bench.pool[0], "captioning").fields["caption"] == "a sign that reads open 0"


def _captioning_row(name: str) -> dict:
    return {"benchmark": name, "task": "captioning", "shots": 0, "metric": "CIDEr", "value": None, "n_examples": 0,
            "demos_dropped": 0, "mean_shots": 0.0, "template": "", "tokenizer": ""}  # fmt: skip


def test_nocaps_domains_and_per_domain_cider(tmp_path, monkeypatch):
    from mm1.eval.harness import DOMAIN_TASK, _score_captioning

    monkeypatch.setenv(TOKENIZER_ENV, "python")
    spec = _spec("nocaps", "captioning", "nocaps", write_nocaps(tmp_path))
    bench = load_benchmark(spec, tmp_path, with_pool=False)
    assert [(it.key, it.domain, it.targets) for it in bench.items] == [
        (i, d, tuple(refs)) for i, (d, refs) in NOCAPS.items()
    ]
    predictions = {0: "a dog running on grass", 1: "a kayak", 2: "a jellyfish in the sea", 3: "goats", 4: "a cat"}
    overall = _captioning_row("nocaps")
    domain_rows = _score_captioning([(overall, bench, predictions)])
    assert [(r["benchmark"], r["task"], r["n_examples"]) for r in domain_rows] == [
        ("nocaps/in-domain", DOMAIN_TASK, 2), ("nocaps/near-domain", DOMAIN_TASK, 2),
        ("nocaps/out-domain", DOMAIN_TASK, 1),
    ]  # fmt: skip
    assert overall["value"] > 0 and overall["tokenizer"] == "ptb-python"
    for row in domain_rows:  # each domain scored as a corpus of its own
        domain = row["benchmark"].split("/")[1]
        alone = Benchmark(spec, [it for it in bench.items if it.domain == domain], [], {})
        own = _captioning_row("alone")
        _score_captioning([(own, alone, predictions)])
        assert row["value"] == pytest.approx(own["value"], abs=1e-12)
    assert len({round(r["value"], 6) for r in [overall, *domain_rows]}) == 4


def test_gqa_row_is_exact_match(tmp_path):
    from mm1.eval.harness import _score_task

    bench = load_benchmark(_spec("gqa", "vqa", "gqa", write_gqa(tmp_path)), tmp_path, with_pool=False)
    predictions = {it.key: it.targets[0].upper() for it in bench.items}
    (row,) = _score_task(bench, 0, predictions, 0, 0.0, "")
    assert (row["metric"], row["value"]) == ("accuracy", 100.0)


def test_all_eight_from_one_folder(tmp_path):
    files = _coco_and_vqa(tmp_path)
    tv, tc = write_textvqa(tmp_path / "textvqa"), write_textcaps(tmp_path / "textcaps")
    config = EvalConfig(
        shots=(0,),
        benchmarks=[
            {"name": "coco", "task": "captioning", "val": str(files["coco_val"]), "train": str(files["coco_train"])},
            {"name": "nocaps", "task": "captioning", "format": "nocaps", "val": "nocaps/nocaps_val_4500_captions.json"},
            {"name": "textcaps", "task": "captioning", "format": "textcaps", "val": str(tc.relative_to(tmp_path))},
            {"name": "vqav2", "task": "vqa", "format": "vqav2", "val": str(files["vqav2_val"])},
            {"name": "textvqa", "task": "vqa", "format": "textvqa", "val": str(tv)},
            {"name": "vizwiz", "task": "vqa", "format": "vizwiz", "val": "vizwiz/annotations/val.json"},
            {"name": "gqa", "task": "vqa", "format": "gqa", "val": "gqa/questions1.2/val_balanced_questions.json"},
            {"name": "okvqa", "task": "vqa", "val": str(files["okvqa_val"])},
        ],
    )
    for writer, folder in ((write_nocaps, "nocaps"), (write_vizwiz, "vizwiz"), (write_gqa, "gqa")):
        writer(tmp_path / folder)
    sizes = {s.name: len(load_benchmark(s, tmp_path, with_pool=False).items) for s in config.benchmarks}
    assert sizes == {"coco": 2, "nocaps": 5, "textcaps": 2, "vqav2": 2, "textvqa": 3, "vizwiz": 3, "gqa": 4, "okvqa": 2}


def test_one_file_formats_refuse_annotations():
    with pytest.raises(ValueError, match="format gqa keeps its answers in the questions file"):
        BenchmarkSpec(name="gqa", task="vqa", format="gqa", val="q.json", val_annotations="a.json")
    with pytest.raises(ValueError, match="format textcaps is not one of task vqa's"):
        BenchmarkSpec(name="t", task="vqa", format="textcaps", val="t.json")


def _break(path: Path, edit) -> None:
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


@pytest.mark.parametrize(
    ("fmt", "task", "writer", "edit", "message"),
    [
        ("textvqa", "vqa", write_textvqa, lambda o: o["data"][1].pop("answers"), r"data\[1\]: missing field 'answers'"),
        ("vizwiz", "vqa", write_vizwiz, lambda o: o[0].update(image="photo.jpg"), r"\[0\]: image name 'photo.jpg'"),
        ("gqa", "vqa", write_gqa, lambda o: o.update(q7=o["4"]), r"question 'q7': GQA question ids are digit strings"),
        ("gqa", "vqa", write_gqa, lambda o: o["4"].update(imageId="gone"), r"question '4': image file .*gone.jpg"),
        ("textcaps", "captioning", write_textcaps, lambda o: o.pop("data"), r"missing field 'data'"),
        ("nocaps", "captioning", lambda r: write_nocaps(r), lambda o: o["images"][2].update(domain="far"),
         r"images\[2\]: domain 'far' is not one of"),
    ],
)  # fmt: skip
def test_bad_files_name_file_and_field(tmp_path, fmt, task, writer, edit, message):
    path = writer(tmp_path)
    _break(path, edit)
    with pytest.raises(FormatError, match=message) as err:
        load_benchmark(_spec(fmt, task, fmt, path), tmp_path, with_pool=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_image_folder_says_which_setting(tmp_path):
    spec = _spec("textcaps", "captioning", "textcaps", write_textcaps(tmp_path), val_images=tmp_path / "elsewhere")
    with pytest.raises(FormatError, match=r"image folder .*elsewhere does not exist \(set the benchmark's val_images"):
        load_benchmark(spec, tmp_path, with_pool=False)


def test_a_checkpoint_is_evaluated_on_the_eight_official_files(tiny_run, tmp_path):
    from evalkit import config

    from mm1.eval import harness

    files = _coco_and_vqa(tmp_path)
    for writer, folder in ((write_nocaps, "nocaps"), (write_vizwiz, "vizwiz"), (write_gqa, "gqa")):
        writer(tmp_path / folder)
    write_textvqa(tmp_path / "textvqa")
    write_textcaps(tmp_path / "textcaps")
    benchmarks = [
        {"name": "coco", "task": "captioning", "val": str(files["coco_val"])},
        {"name": "nocaps", "task": "captioning", "format": "nocaps", "val": "nocaps/nocaps_val_4500_captions.json"},
        {"name": "textcaps", "task": "captioning", "format": "textcaps", "val": "textcaps/TextCaps_0.1_val.json"},
        {"name": "vqav2", "task": "vqa", "val": str(files["vqav2_val"])},
        {"name": "textvqa", "task": "vqa", "format": "textvqa", "val": "textvqa/TextVQA_0.5.1_val.json"},
        {"name": "vizwiz", "task": "vqa", "format": "vizwiz", "val": "vizwiz/annotations/val.json"},
        {"name": "gqa", "task": "vqa", "format": "gqa", "val": "gqa/questions1.2/val_balanced_questions.json"},
        {"name": "okvqa", "task": "vqa", "val": str(files["okvqa_val"])},
    ]
    cfg = config("eval.shots=[0]", "eval.textcore=null", "eval.likelihood=false").eval
    cfg = EvalConfig.model_validate(cfg.model_dump() | {"benchmarks": benchmarks})
    out = tmp_path / "out"
    result = harness.evaluate(cfg, "tiny", tmp_path, tiny_run["tokenizer"], tiny_run["ckpt"], out)
    rows = {r["benchmark"]: r for r in result.scores.iter_rows(named=True)}
    assert set(rows) == {b["name"] for b in benchmarks} | {
        f"nocaps/{d}" for d in ("in-domain", "near-domain", "out-domain")
    }
    assert all(r["value"] is not None for r in rows.values())
    assert (rows["gqa"]["n_examples"], rows["nocaps/near-domain"]["n_examples"]) == (4, 2)
    assert result.summary["n_benchmarks"].to_list() == [8]  # the domain rows are not benchmarks of the averages
    captioning = [rows[n]["value"] for n in ("coco", "nocaps", "textcaps")]
    assert result.summary["captioning_avg"][0] == pytest.approx(sum(captioning) / 3, abs=1e-12)
    gqa = {p["question_id"]: p["answer"] for p in json.loads((out / "predictions" / "gqa_0shot.json").read_text())}
    truth = {
        it.key: (it.targets, it.answer_type)
        for it in load_benchmark(cfg.benchmarks[6], tmp_path, with_pool=False).items
    }
    assert rows["gqa"]["value"] == exact_match_scores(gqa, truth)["accuracy"]
    # the prediction files rescore to the table from the official val files alone (no image read)
    from mm1.eval.scoring import score_official

    rescored = {}
    for spec in cfg.benchmarks:
        if spec.file_format not in ("textvqa", "vizwiz", "gqa", "textcaps", "nocaps"):
            continue
        val = tmp_path / spec.val
        again = rescored[spec.name] = score_official(
            out / "predictions" / f"{spec.name}_0shot.json", spec.file_format, val
        )
        assert again["CIDEr" if spec.task == "captioning" else "accuracy"] == pytest.approx(
            rows[spec.name]["value"], abs=1e-9
        )
    assert len(rescored) == 5
    for domain, value in rescored["nocaps"]["per_domain"].items():
        assert value == pytest.approx(rows[f"nocaps/{domain}"]["value"], abs=1e-9)


def test_score_commands_read_the_official_files(tmp_path, capsys, monkeypatch):
    from mm1.cli import main

    monkeypatch.setenv(TOKENIZER_ENV, "python")
    gqa = write_gqa(tmp_path / "gqa")
    truth = {int(qid): q["answer"] for qid, q in json.loads(gqa.read_text()).items()}
    first = min(truth)
    pred = _write(tmp_path / "gqa_pred.json", [{"question_id": k, "answer": a.upper() if k != first else "no idea"}
                                               for k, a in truth.items()])  # fmt: skip
    assert main(["eval", "score-vqa", "--format", "gqa", "--pred", str(pred), "--questions", str(gqa)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["accuracy"] == pytest.approx(100 * (len(truth) - 1) / len(truth))  # exact match, case folded
    nocaps = write_nocaps(tmp_path / "nocaps")
    pred = _write(
        tmp_path / "nocaps_pred.json", [{"image_id": i, "caption": refs[0]} for i, (_, refs) in NOCAPS.items()]
    )
    assert main(["eval", "score-captions", "--format", "nocaps", "--pred", str(pred), "--refs", str(nocaps)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert set(scored["per_domain"]) == {"in-domain", "near-domain", "out-domain"} and scored["n_images"] == len(NOCAPS)
    assert main(["eval", "score-vqa", "--format", "gqa", "--pred", str(pred), "--questions", str(gqa),
                 "--annotations", str(gqa)]) == 2  # fmt: skip
    assert "drop --annotations" in capsys.readouterr().err
