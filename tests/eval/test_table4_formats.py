"""Table 4's readers on small files written here in the official layouts, and their scores."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from mm1.config import SFTConfig
from mm1.config.eval import BenchmarkSpec
from mm1.data.formats import FormatError
from mm1.eval import harness
from mm1.eval.table4 import pope_metrics
from mm1.eval.table4_run import read_table4, score_table4


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (40 * i % 256, 90, 20)).save(buf, format="PNG")
    return buf.getvalue()


def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path


def spec(name: str, task: str, fmt: str, val: Path, **kw) -> BenchmarkSpec:
    return BenchmarkSpec(name=name, task=task, format=fmt, val=str(val), **kw)


def write_scienceqa(root: Path) -> Path:
    problems = {
        "11": {"question": "Which is a mammal?", "choices": ["trout", "otter"], "answer": 1, "hint": "Look.",
               "image": "image.png", "subject": "natural science", "split": "test"},
        "12": {"question": "No picture here?", "choices": ["a", "b"], "answer": 0, "image": None, "split": "test"},
        "13": {"question": "Train item", "choices": ["a", "b"], "answer": 0, "image": "image.png", "split": "train"},
    }  # fmt: skip
    put(root / "images/test/11/image.png", png(1))
    put(root / "pid_splits.json", json.dumps({"train": ["13"], "val": [], "test": ["11", "12"]}))
    return put(root / "problems.json", json.dumps(problems))


def write_mmbench(root: Path, rows: list[dict]) -> Path:
    path = root / "mmbench_dev_en.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, cols, delimiter="\t")
        w.writeheader()
        for r in rows:
            w.writerow({c: "" for c in cols} | r | {"image": base64.b64encode(png(r["index"])).decode()})
    return path


def write_mme(root: Path) -> Path:
    for stem, qa in (("1", "Is there a cat?\tYes\nIs there a dog?\tNo\n"), ("2", "A red car?\tNo\nA blue car?\tYes\n")):
        put(root / "existence" / f"{stem}.png", png(int(stem)))  # flat layout: image beside its txt
        put(root / "existence" / f"{stem}.txt", qa)
    put(root / "artwork/images/10.jpg", png(10))  # nested layout
    put(root / "artwork/questions_answers_YN/10.txt", "Is it by Monet?\tYes\nIs it by Goya?\tNo\n")
    return root


def test_scienceqa_img_keeps_the_split_questions_with_an_image(tmp_path: Path) -> None:
    items, files = read_table4(spec("sqa", "multiple_choice", "scienceqa", write_scienceqa(tmp_path)), tmp_path)
    assert [(it.key, it.answer, it.context, it.category) for it in items] == [("11", "B", "Look.", "natural science")]
    assert items[0].image == png(1) and files["val_annotations"] == tmp_path / "pid_splits.json"
    bad = json.loads((tmp_path / "problems.json").read_text())
    bad["11"]["answer"] = 5
    put(tmp_path / "problems.json", json.dumps(bad))
    with pytest.raises(FormatError, match=r"problems.json \[11\]: field 'answer' 5"):
        read_table4(spec("sqa", "multiple_choice", "scienceqa", tmp_path / "problems.json"), tmp_path)


def test_mmmu_parquet_parses_options_and_leaves_open_questions_out_counted(tmp_path: Path) -> None:
    df = pl.DataFrame({
        "id": ["validation_Art_Theory_1", "validation_Math_2"],
        "question": ["<image 1> Which style?", "What is 2+2?"],
        "options": ["['Baroque', 'Cubism', 'Pop art']", "[]"],
        "answer": ["B", "4"],
        "question_type": ["multiple-choice", "open"],
        "image_1": [{"bytes": png(1), "path": "a.png"}, {"bytes": png(2), "path": "b.png"}],
    })  # fmt: skip
    df.write_parquet(tmp_path / "validation-00000-of-00001.parquet")
    s = spec("mmmu", "multiple_choice", "mmmu", tmp_path)  # a folder of parquet files
    items, _ = read_table4(s, tmp_path)
    assert items[0].choices == ("Baroque", "Cubism", "Pop art") and items[0].category == "Art_Theory"
    assert items[0].image == png(1) and items[1].meta["question_type"] == "open"
    rows, answers = score_table4(s, items, lambda opts, its, turns, d: [1] * len(its), None, "Letter.", "{question}")
    by = {r["benchmark"]: r for r in rows}
    assert by["mmmu"]["value"] == 100.0 and by["mmmu"]["n_examples"] == 1
    assert by["mmmu/open_skipped"]["value"] == 1 and answers == {"validation_Art_Theory_1": "B"}


def test_mmbench_rotations_make_circular_eval_catch_a_position_bias(tmp_path: Path) -> None:
    rows = [
        {"index": 0, "question": "Which animal?", "A": "cat", "B": "dog", "C": "cow", "D": "owl", "answer": "A",
         "category": "attr"},
        {"index": 1, "question": "Which colour?", "hint": "Think.", "A": "red", "B": "cat", "answer": "B",
         "category": "attr"},
    ]  # fmt: skip
    s = spec("mmb", "multiple_choice", "mmbench", write_mmbench(tmp_path, rows))
    items, _ = read_table4(s, tmp_path)
    assert len(items) == 4 + 2  # one copy per option position
    assert [(it.key, it.choices, it.answer) for it in items[:2]] == [
        ("0", ("cat", "dog", "cow", "owl"), "A"), ("1000000", ("dog", "cow", "owl", "cat"), "D")
    ]  # fmt: skip
    assert items[4].context == "Think." and {it.group for it in items} == {"0", "1"}

    def knows_cats(opts, its, turns, desc):  # always picks the option "cat", wherever it stands
        assert all(f"{o}. " in t for o, t in zip(opts[0], turns[:1], strict=False))  # the options are listed
        return [it.choices.index("cat") for it in its]

    def says_a(opts, its, turns, desc):
        return [0] * len(its)

    by = {r["benchmark"]: r["value"] for r in score_table4(s, items, knows_cats, None, "Letter.", "")[0]}
    assert by["mmb"] == 100.0
    by = {r["benchmark"]: r["value"] for r in score_table4(s, items, says_a, None, "Letter.", "")[0]}
    assert by["mmb"] == 0.0 and by["mmb/single"] == pytest.approx(100 * 2 / 6)  # right on 2 of 6 copies


def test_seed_bench_reads_image_questions_only(tmp_path: Path) -> None:
    qs = [
        {"question_id": "101", "question": "What is shown?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "C", "data_id": "x/1.png", "data_type": "image", "question_type_id": 1},
        {"question_id": "102", "question": "Video?", "choice_a": "a", "choice_b": "b", "choice_c": "c",
         "choice_d": "d", "answer": "A", "data_id": "v.mp4", "data_type": "video", "question_type_id": 10},
    ]  # fmt: skip
    put(tmp_path / "SEED-Bench-image/x/1.png", png(3))
    path = put(tmp_path / "SEED-Bench.json", json.dumps({"question_type": {"Scene Understanding": 1}, "questions": qs}))
    items, _ = read_table4(spec("seed", "multiple_choice", "seed_bench", path), tmp_path)
    assert [(it.key, it.answer, it.category) for it in items] == [("101", "C", "Scene Understanding")]
    qs[0]["answer"] = "E"
    put(path, json.dumps({"questions": qs}))
    with pytest.raises(FormatError, match=r"SEED-Bench.json \[101\]: field 'answer' 'E'"):
        read_table4(spec("seed", "multiple_choice", "seed_bench", path), tmp_path)


def test_pope_jsonl_scores_f1_of_the_chosen_word(tmp_path: Path) -> None:
    lines = [{"question_id": i, "image": f"COCO_val2014_{i:012d}.png", "text": f"Is there a thing {i}?",
              "label": lab} for i, lab in enumerate(["yes", "no", "no", "yes"], 1)]  # fmt: skip
    for i in range(1, 5):
        put(tmp_path / f"COCO_val2014_{i:012d}.png", png(i))
    path = put(tmp_path / "coco_pope_random.json", "\n".join(json.dumps(x) for x in lines) + "\n")
    s = spec("pope", "yes_no", "pope", path)
    items, _ = read_table4(s, tmp_path)
    picks = [0, 0, 1, 1]  # Yes Yes No No: TP 1, FP 1, TN 1, FN 1
    rows, answers = score_table4(s, items, lambda o, its, t, d: picks, None, "", "{question}")
    by = {r["benchmark"]: r for r in rows}
    assert by["pope"]["metric"] == "f1" and by["pope"]["value"] == pytest.approx(50.0)
    assert by["pope/yes_ratio"]["value"] == 50.0 and answers["3"] == "no"
    put(path, json.dumps(lines[0] | {"label": "maybe"}) + "\n")
    with pytest.raises(FormatError, match=r"coco_pope_random.json \[1\]: field 'label'"):
        read_table4(s, tmp_path)


def test_mme_release_folder_both_layouts_paired_score(tmp_path: Path) -> None:
    s = spec("mme", "yes_no", "mme", write_mme(tmp_path / "MME_Benchmark_release_version"))
    items, _ = read_table4(s, tmp_path)
    assert [(it.category, it.group, it.answer) for it in items][:2] == [
        ("artwork", "artwork/10.jpg", "yes"), ("artwork", "artwork/10.jpg", "no")
    ]  # fmt: skip
    # a model that always says Yes: artwork 1 of 2 (acc 50, acc+ 0); existence 2 of 4 (50, 0)
    rows, _ = score_table4(s, items, lambda o, its, t, d: [0] * len(its), None, "", "{question}")
    by = {r["benchmark"]: r["value"] for r in rows}
    assert by["mme"] == 100.0 and by["mme/existence/score"] == 50.0
    put(tmp_path / "MME_Benchmark_release_version/existence/2.txt", "Only one line?\tYes\n")
    with pytest.raises(FormatError, match=r"2.txt \[2\]: MME asks 2 questions per image"):
        read_table4(s, tmp_path)


def write_mathvista(root: Path) -> Path:
    problems = {
        "1": {"question": "Which is larger?", "image": "images/1.png", "choices": ["3", "5"], "answer": "5",
              "question_type": "multi_choice", "answer_type": "text", "precision": None, "unit": None,
              "query": "Hint: choose.\nQuestion: Which is larger?", "metadata": {"task": "figure QA"}},
        "2": {"question": "Length?", "image": "images/2.png", "choices": None, "answer": "1.5",
              "question_type": "free_form", "answer_type": "float", "precision": 1.0, "unit": "cm",
              "query": "Hint: one decimal.\nQuestion: Length?", "metadata": {"task": "geometry"}},
    }  # fmt: skip
    put(root / "images/1.png", png(1))
    put(root / "images/2.png", png(2))
    return put(root / "testmini.json", json.dumps(problems))


def test_mathvista_ranks_choices_and_decodes_free_form_answers(tmp_path: Path) -> None:
    s = spec("mathvista", "math", "mathvista", write_mathvista(tmp_path))
    items, _ = read_table4(s, tmp_path)
    assert items[1].meta["precision"] == 1 and items[1].category == "geometry"
    asked = []

    def generate(its, turns, desc):
        asked.extend(turns)
        return ["1.46"]

    rows, answers = score_table4(s, items, lambda o, its, t, d: [1], generate, "Letter.", "")
    by = {r["benchmark"]: r["value"] for r in rows}
    assert by["mathvista"] == 100.0 and answers == {"1": "B", "2": "1.46"}
    assert asked == ["<image>\nHint: one decimal.\nQuestion: Length?"]  # the official query


def test_sft_evaluation_scores_table4_benchmarks_with_the_model(tiny_run, tmp_path: Path) -> None:
    from evalkit import config

    data = tmp_path / "t4"
    pope = [{"question_id": i, "image": f"{i}.png", "text": "Is there a cat?", "label": "yes"} for i in (1, 2)]
    put(data / "pope/1.png", png(1)), put(data / "pope/2.png", png(2))
    put(data / "pope/coco_pope_popular.json", "\n".join(json.dumps(x) for x in pope))
    write_scienceqa(data / "sqa")
    write_mathvista(data / "mathvista")
    benchmarks = [
        {"name": "pope", "task": "yes_no", "format": "pope", "val": str(data / "pope/coco_pope_popular.json")},
        {"name": "sqa", "task": "multiple_choice", "format": "scienceqa", "val": str(data / "sqa/problems.json")},
        {"name": "mv", "task": "math", "format": "mathvista", "val": str(data / "mathvista/testmini.json")},
    ]
    cfg = config().eval.model_validate({"benchmarks": benchmarks, "shots": [0], "textcore": None, "sft": {}})
    result = harness.evaluate(cfg, "tiny", tiny_run["data"], tiny_run["tokenizer"], tiny_run["ckpt"], tmp_path / "o",
                              sft=SFTConfig())  # fmt: skip
    s = result.scores
    f1 = s.filter(pl.col("benchmark") == "pope")
    assert f1["metric"].item() == "f1" and f1["n_examples"].item() == 2
    assert s.filter(pl.col("benchmark") == "sqa")["n_examples"].item() == 1
    assert s.filter(pl.col("benchmark") == "mv")["n_examples"].item() == 2  # one ranked, one decoded
    decoded = {e["key"]: e["answer"] for e in json.loads((tmp_path / "o/predictions/mv_0shot.json").read_text())}
    assert decoded["1"] in ("A", "B") and isinstance(decoded["2"], str)
    saved = json.loads((tmp_path / "o/predictions/pope_0shot.json").read_text())
    assert {e["key"] for e in saved} == {"1", "2"} and {e["answer"] for e in saved} <= {"yes", "no"}
    expected = pope_metrics([e["answer"] for e in saved], ["yes", "yes"])["f1"]  # the file rescores to the table
    assert f1["value"].item() == pytest.approx(expected)
