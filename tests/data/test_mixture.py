"""The mixture sampler: source fractions, caption styles, epochs, determinism, resume and DP sharding."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mm1.config import TokenizerConfig
from mm1.config.data import MixtureConfig
from mm1.data.mixture import MixtureSampler, realised_mixture
from mm1.data.packing import PackedSequence
from mm1.data.records import CaptionSample, InterleavedDoc, TextDoc
from mm1.data.tokenizer import TextTokenizer, train_tokenizer

ALT, SYN = "alt words here", "synthetic caption words"
CORPUS = [ALT, SYN, "the cat sat on the mat", "a red circle above a blue square"] * 5
S, N = 48, 4  # sequence length, image slots per image


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> TextTokenizer:
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    return TextTokenizer(train_tokenizer(TokenizerConfig(vocab_size=300, min_frequency=2), CORPUS, path))


def _image(i: int) -> bytes:
    return f"img{i}".encode()


def _sources(n_cap: int = 30, n_doc: int = 12, n_text: int = 9) -> dict[str, list[Any]]:
    caps = [CaptionSample(f"c{i}", _image(i), {"alt": ALT, "synthetic": SYN}) for i in range(n_cap)]
    docs = [
        InterleavedDoc(f"d{i}", ("the cat", None, "sat on the mat " * (i % 4)), (None, _image(1000 + i), None))
        for i in range(n_doc)
    ]
    texts = [TextDoc(f"t{i}", f"doc {i}: " + "a red circle " * (1 + i % 5)) for i in range(n_text)]
    return {"caption": caps, "interleaved": docs, "text": texts}


def _sampler(tok: TextTokenizer, seed: int = 0, sources: dict | None = None, **kw: Any) -> MixtureSampler:
    mix = MixtureConfig(**{k: v for k, v in kw.items() if k not in ("dp_rank", "dp_size")})
    dp = {k: v for k, v in kw.items() if k in ("dp_rank", "dp_size")}
    return MixtureSampler(sources or _sources(), mix, tok, S, N, seed, **dp)


def _take(sampler: MixtureSampler, n: int) -> list[PackedSequence]:
    return list(itertools.islice(sampler, n))


def _caption_styles(tok: TextTokenizer, seq: PackedSequence) -> list[str]:
    """The caption style of each pair, read back from the tokens (decode drops the special ids)."""
    chunks, cur = [], []
    for t in seq.tokens.tolist():
        if t == tok.eoc_id:
            chunks.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    return [{ALT: "alt", SYN: "synthetic"}[c] for c in chunks]


# --- what a sequence holds ------------------------------------------------------------------------


def test_every_source_type_is_packed_with_its_layout(tok: TextTokenizer) -> None:
    seqs = _take(_sampler(tok), 60)
    by = {s: [q for q in seqs if q.source == s] for s in ("caption", "interleaved", "text")}
    assert all(by.values())
    for q in by["caption"]:
        assert len(q.images) >= 2  # 1 + 2 * (4 + 3 + 1) <= 49: several pairs per sequence
        assert int((q.tokens == tok.eoc_id).sum()) == len(q.images)
    for q in by["interleaved"]:  # whole documents of one image each, each ended by <eos>
        assert len(q.images) == int((q.tokens == tok.eos_id).sum()) >= 1 and q.tokens[0] == tok.bos_id
    assert max(len(q.images) for q in by["interleaved"]) >= 2  # several documents share a sequence
    for q in by["text"]:
        assert q.images == [] and tok.pad_id not in q.tokens  # text fills the sequence
        assert q.loss_mask.all()
    for q in seqs:
        assert q.tokens.shape == (S + 1,) and q.loss_mask.shape == (S,)
        assert q.tokens[0] == tok.bos_id and not q.loss_mask[q.tokens[1:] == tok.image_id].any()
        assert int((q.tokens[:-1] == tok.image_id).sum()) == N * len(q.images)  # every slot is an input


def test_text_stream_drops_nothing(tok: TextTokenizer) -> None:
    src = _sources()
    seqs = _take(_sampler(tok, sources=src, caption=0, interleaved=0, text=1), 20)
    stream = np.concatenate([q.tokens[1:] for q in seqs])  # everything after each <bos>
    docs = [np.asarray(tok.encode(d.text) + [tok.eos_id]) for d in src["text"]]
    n_tokens = sum(len(d) for d in docs)
    assert len(stream) >= n_tokens  # 20 * 48 tokens cover a whole epoch
    epoch, i = [], 0
    while i < n_tokens:
        match = [k for k, d in enumerate(docs) if np.array_equal(stream[i : i + len(d)], d)]
        assert len(match) == 1, f"the text stream is broken at token {i}"
        epoch.append(match[0])
        i += len(docs[match[0]])
    assert sorted(epoch) == list(range(len(docs)))  # every document once, whole, in epoch 0


def test_max_images_per_sequence_is_respected(tok: TextTokenizer) -> None:
    seqs = _take(_sampler(tok, caption=1, interleaved=0, text=0, max_images_per_sequence=2), 30)
    assert all(len(q.images) == 2 for q in seqs)
    docs = [InterleavedDoc("d", ("a",) + (None,) * 5, (None,) + tuple(_image(i) for i in range(5)))]
    many = _take(_sampler(tok, sources={"interleaved": docs}, caption=0, text=0, max_images_per_sequence=3), 2)
    assert [q.images for q in many] == [[_image(0), _image(1), _image(2)]] * 2


def _documents(seqs: list[PackedSequence]) -> list[bytes]:
    """The documents of interleaved sequences in reading order, named by their one image each."""
    return [im for q in seqs for im in q.images]


def test_each_epoch_uses_every_record_once_and_is_reshuffled(tok: TextTokenizer) -> None:
    src = _sources(n_doc=12)
    docs = _documents(_take(_sampler(tok, sources=src, caption=0, interleaved=1, text=0), 36))
    assert len(docs) >= 36
    epochs = [docs[e * 12 : (e + 1) * 12] for e in range(3)]
    for e in epochs:
        assert sorted(e) == sorted(_image(1000 + i) for i in range(12))
    assert epochs[0] != epochs[1] != epochs[2]


def test_packing_documents_together_keeps_their_order(tok: TextTokenizer) -> None:
    src = _sources(n_doc=12)
    packed = _take(_sampler(tok, sources=src, caption=0, interleaved=1, text=0), 20)
    single = _take(_sampler(tok, sources=src, caption=0, interleaved=1, text=0, max_images_per_sequence=1), 100)
    assert all(len(q.images) == 1 for q in single)  # one document per sequence: the stream's own order
    assert len(_documents(packed)) > 30 and _documents(packed) == _documents(single)[: len(_documents(packed))]


def test_a_document_that_does_not_fit_starts_the_next_sequence(tok: TextTokenizer) -> None:
    src = _sources(n_doc=12)
    long = "sat on the mat " * 20  # longer than a whole sequence: cut, its rest dropped
    src["interleaved"][3] = InterleavedDoc("long", ("the cat", None, long), (None, _image(1003), None))
    seqs = _take(_sampler(tok, sources=src, caption=0, interleaved=1, text=0), 40)
    cut = [q for q in seqs if _image(1003) in q.images]
    assert len(cut) >= 2 and all(q.images == [_image(1003)] and tok.pad_id not in q.tokens for q in cut)
    assert all(tok.eos_id not in q.tokens for q in cut)  # the document did not end in the sequence
    for prev, q in itertools.pairwise(seqs):
        if tok.eos_id not in prev.tokens or tok.eos_id not in q.tokens:
            continue
        used = int((prev.tokens != tok.pad_id).sum())
        first = int(np.flatnonzero(q.tokens == tok.eos_id)[0])  # the next sequence's first document: 1..first
        assert used + first > S + 1, "a document that fits was left for the next sequence"


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_synthetic_caption_share_follows_the_config(tok: TextTokenizer, share: float) -> None:
    src = _sources(n_cap=200)
    seqs = _take(_sampler(tok, sources=src, caption=1, interleaved=0, text=0, synthetic_captions=share), 500)
    styles = Counter(s for q in seqs for s in _caption_styles(tok, q))
    assert sum(styles.values()) >= 1000
    assert abs(styles["synthetic"] / sum(styles.values()) - share) < 0.03


def test_missing_caption_style_falls_back_to_the_other(tok: TextTokenizer) -> None:
    caps = [CaptionSample("a", _image(0), {"alt": ALT}), CaptionSample("s", _image(1), {"synthetic": SYN})]
    seqs = _take(_sampler(tok, sources={"caption": caps}, interleaved=0, text=0, synthetic_captions=0.5), 4)
    assert {s for q in seqs for s in _caption_styles(tok, q)} == {"alt", "synthetic"}
    no_caption = [CaptionSample("x", _image(0), {})]
    with pytest.raises(ValueError, match="'x' has no caption"):
        _take(_sampler(tok, sources={"caption": no_caption}, interleaved=0, text=0), 1)


# --- mixture fractions ----------------------------------------------------------------------------


def test_source_fractions_match_the_config_over_10000_sequences(tok: TextTokenizer) -> None:
    sampler = _sampler(tok, caption=5, interleaved=5, text=1)
    seqs = _take(sampler, 10_000)
    df = sampler.realised_mixture(seqs)
    for row in df.iter_rows(named=True):
        assert abs(row["sequence_share"] - row["target_share"]) < 0.01, row
    assert df["sequences"].sum() == 10_000


def test_a_zero_weight_source_never_appears(tok: TextTokenizer) -> None:
    seqs = _take(_sampler(tok, caption=0.5, interleaved=0, text=0.5), 2000)
    assert {q.source for q in seqs} == {"caption", "text"}
    only = _sampler(tok, sources={"text": _sources()["text"]}, caption=0, interleaved=0, text=1)
    assert {q.source for q in _take(only, 50)} == {"text"}


def test_a_positive_weight_without_records_is_an_error(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="interleaved=0.45 is positive but the interleaved source has no records"):
        _sampler(tok, sources={"caption": _sources()["caption"], "text": _sources()["text"]})
    with pytest.raises(ValueError, match="text source has no records"):
        _sampler(tok, sources={**_sources(), "text": []})
    with pytest.raises(ValueError, match="unknown mixture sources \\['video'\\]"):
        _sampler(tok, sources={**_sources(), "video": [1]})


def test_realised_mixture_counts(tok: TextTokenizer) -> None:
    seqs = _take(_sampler(tok), 200)
    df = realised_mixture(seqs, tok.pad_id)
    assert df["source"].to_list() == ["caption", "interleaved", "text"]
    cap = df.row(0, named=True)
    caps = [q for q in seqs if q.source == "caption"]
    assert cap["sequences"] == len(caps)
    assert cap["images"] == sum(len(q.images) for q in caps)
    assert cap["loss_tokens"] == sum(int(q.loss_mask.sum()) for q in caps)
    assert cap["tokens"] == sum(int((q.tokens[:-1] != tok.pad_id).sum()) for q in caps)
    assert cap["padding"] == pytest.approx(1 - cap["tokens"] / (S * len(caps)))
    assert df.row(2, named=True)["padding"] == 0.0  # text fills every sequence
    for col in ("sequence_share", "token_share", "loss_token_share", "image_share"):
        assert df[col].sum() == pytest.approx(1.0)
    assert realised_mixture([], tok.pad_id)["sequence_share"].to_list() == [0.0, 0.0, 0.0]
    assert realised_mixture([], tok.pad_id)["padding"].to_list() == [0.0, 0.0, 0.0]


def test_a_tally_fed_one_sequence_at_a_time_gives_the_realised_mixture(tok: TextTokenizer) -> None:
    """What the pack stage does: count each sequence as it is drawn, never holding them."""
    sampler = _sampler(tok)
    tally, seqs = sampler.tally(), []
    for seq in itertools.islice(sampler, 150):
        seqs.append(tally.add(seq))
        if len(seqs) == 40:  # a table part-way does not disturb the counting
            assert tally.frame().equals(realised_mixture(seqs, tok.pad_id, sampler.mixture))
    df = tally.frame()
    assert df.write_csv() == realised_mixture(seqs, tok.pad_id, sampler.mixture).write_csv()
    assert df["target_share"].to_list() == [sampler.mixture.fractions[s] for s in ("caption", "interleaved", "text")]
    for row in df.iter_rows(named=True):
        mine = [q for q in seqs if q.source == row["source"]]
        assert row["sequences"] == len(mine) and row["images"] == sum(len(q.images) for q in mine)
        assert row["loss_tokens"] == sum(int(q.loss_mask.sum()) for q in mine)
    assert df["sequences"].sum() == 150


# --- determinism, resume, data parallelism --------------------------------------------------------


def test_the_stream_is_deterministic_for_a_seed(tok: TextTokenizer) -> None:
    assert _take(_sampler(tok, seed=3), 100) == _take(_sampler(tok, seed=3), 100)
    assert _take(_sampler(tok, seed=3), 100) != _take(_sampler(tok, seed=4), 100)


@pytest.mark.parametrize("dp_size", [1, 2])
def test_resume_mid_epoch_equals_an_uninterrupted_run(tok: TextTokenizer, dp_size: int) -> None:
    full = [_take(_sampler(tok, dp_rank=r, dp_size=dp_size), 120) for r in range(dp_size)]
    for r in range(dp_size):
        first = _sampler(tok, dp_rank=r, dp_size=dp_size)
        head = _take(first, 37)  # mid-epoch for every source, mid-document for text
        state = json.loads(json.dumps(first.state_dict()))  # a checkpoint stores it as JSON
        resumed = _sampler(tok, dp_rank=r, dp_size=dp_size)
        resumed.load_state_dict(state)
        assert head + _take(resumed, 83) == full[r]


def test_resume_under_another_dp_layout_continues_the_global_stream(tok: TextTokenizer) -> None:
    one = _take(_sampler(tok), 100)
    first = [_sampler(tok, dp_rank=r, dp_size=2) for r in range(2)]
    heads = [_take(s, 15) for s in first]  # global 0..29
    assert first[0].state_dict() == first[1].state_dict()
    later = [_sampler(tok, dp_rank=r, dp_size=5) for r in range(5)]
    for s in later:
        s.load_state_dict(first[0].state_dict())
    tails = [_take(s, 14) for s in later]  # global 30..99
    assert [q for group in zip(*heads, strict=True) for q in group] == one[:30]
    assert [q for group in zip(*tails, strict=True) for q in group] == one[30:]


def test_packed_documents_resume_and_shard_like_single_ones(tok: TextTokenizer) -> None:
    kw = {"caption": 0, "interleaved": 1, "text": 0}
    full = _take(_sampler(tok, **kw), 30)
    assert sum(len(q.images) for q in full[:7]) > 7  # the checkpoint falls between packed documents
    first = _sampler(tok, **kw)
    head = _take(first, 7)
    resumed = _sampler(tok, **kw)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    assert head + _take(resumed, 23) == full
    ranks = [_take(_sampler(tok, dp_rank=r, dp_size=3, **kw), 10) for r in range(3)]
    assert [q for group in zip(*ranks, strict=True) for q in group] == full
    docs = _documents(full)  # 12 documents an epoch: no duplicate or gap within an epoch
    assert sorted(docs[:12]) == sorted(docs[12:24]) == sorted(_image(1000 + i) for i in range(12))


def test_state_of_another_configuration_is_refused(tok: TextTokenizer) -> None:
    state = _sampler(tok, seed=1).state_dict()
    with pytest.raises(ValueError, match="different \\['seed'\\]"):
        _sampler(tok, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="format 1 is not 2"):
        _sampler(tok, seed=1).load_state_dict({**state, "format": 1})  # saved when a document filled a sequence


@pytest.mark.parametrize("dp_size", [1, 2, 3])
def test_dp_ranks_split_the_global_stream_without_duplicates_or_gaps(tok: TextTokenizer, dp_size: int) -> None:
    n = 90
    reference = _take(_sampler(tok), n)
    ranks = [_take(_sampler(tok, dp_rank=r, dp_size=dp_size), n // dp_size) for r in range(dp_size)]
    union = [q for group in zip(*ranks, strict=True) for q in group]  # global order r, r + dp, ...
    assert union == reference


def test_bad_dp_rank_is_rejected(tok: TextTokenizer) -> None:
    with pytest.raises(ValueError, match="dp_rank"):
        _sampler(tok, dp_rank=2, dp_size=2)


def test_sequences_can_be_written_by_a_rank(tmp_path: Path, tok: TextTokenizer) -> None:
    from mm1.data.packed_io import read_packed_indexed, write_packed

    seqs = _take(_sampler(tok, dp_rank=1, dp_size=3), 10)
    path = write_packed(seqs, tmp_path / "rank1.parquet", indices=range(1, 30, 3))
    back = read_packed_indexed(path)
    assert [i for i, _ in back] == list(range(1, 30, 3)) and [q for _, q in back] == seqs
