import tarfile

import pytest

from mm1.data.formats import FormatError, UnsafeArchiveError, read_caption_shards, write_caption_shards
from mm1.data.quarantine import Quarantine
from mm1.data.records import CaptionSample


def samples(png, n=5):
    out = [
        CaptionSample(f"{i:06d}", png(i), {"alt": f"a red ball {i}", "synthetic": f"A dense caption {i}."}, {"i": i})
        for i in range(n)
    ]
    out.append(CaptionSample("jpeg-only-alt", png(9, "JPEG"), {"alt": "naïve café ☕"}))
    return out


def test_round_trip_in_shards(tmp_path, png):
    written = samples(png)
    paths = write_caption_shards(written, tmp_path, shard_size=2)
    assert [p.name for p in paths] == ["captions-000000.tar", "captions-000001.tar", "captions-000002.tar"]
    q = Quarantine()
    assert list(read_caption_shards(paths, q, "caps")) == written
    assert q.accepted("caps") == len(written) and len(q) == 0
    with tarfile.open(paths[0]) as tar:
        assert tar.getnames()[:4] == ["000000.json", "000000.png", "000000.synthetic.txt", "000000.txt"]
    with tarfile.open(paths[2]) as tar:
        assert "jpeg-only-alt.jpg" in tar.getnames() and tar.extractfile("jpeg-only-alt.jpg").read() == png(9, "JPEG")


def test_shards_are_byte_identical(tmp_path, png):
    a = write_caption_shards(samples(png), tmp_path / "a", shard_size=4, prefix="x")
    b = write_caption_shards(samples(png), tmp_path / "b", shard_size=4, prefix="x")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    with tarfile.open(a[0]) as tar:
        assert {(m.mtime, m.uid, m.gid, m.mode, m.uname) for m in tar} == {(0, 0, 0, 0o644, "")}


def test_writer_refuses_bad_keys(tmp_path, png):
    for key in ["a.b", "a/b", ""]:
        with pytest.raises(ValueError, match="key"):
            write_caption_shards([CaptionSample(key, png(), {"alt": "x"})], tmp_path, 1)
    with pytest.raises(ValueError, match="twice"):
        write_caption_shards([CaptionSample("k", png(), {"alt": "x"})] * 2, tmp_path, 5)


def test_bad_samples_are_quarantined(tmp_path, png, raw_tar):
    path = raw_tar(
        tmp_path / "bad.tar",
        [
            ("good.png", png()),
            ("good.txt", b"fine"),
            ("broken.png", b"\x89PNG\r\n\x1a\n not really"),
            ("broken.txt", b"caption"),
            ("latin.png", png()),
            ("latin.txt", "caf\u00e9".encode("latin-1")),
            ("noimage.txt", b"only text"),
            ("nocaption.png", png()),
            ("nocaption.json", b"{}"),
        ],
    )
    q = Quarantine()
    got = list(read_caption_shards([path], q))
    assert [s.key for s in got] == ["good"]
    reasons = {r.key: r.reason for r in q.records}
    assert set(reasons) == {"broken", "latin", "noimage", "nocaption"}
    assert "cannot be decoded" in reasons["broken"]
    assert "not UTF-8" in reasons["latin"] and "latin.txt" in reasons["latin"]
    assert "image" in reasons["noimage"] and "caption" in reasons["nocaption"]
    assert {r.file for r in q.records} == {str(path)} and {r.source for r in q.records} == {"bad.tar"}
    assert (q.accepted("bad.tar"), q.rejected("bad.tar")) == (1, 4)
    with pytest.raises(FormatError, match="broken"):  # strict reading: no quarantine
        list(read_caption_shards([path]))


def link(name, target, kind=tarfile.SYMTYPE):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member",
    [("../evil.txt", b"x"), ("/etc/evil.txt", b"x"), ("k.txt", link("k.txt", "/etc/passwd"))]
    + [("k.txt", link("k.txt", "../../outside")), ("k.png", link("k.png", "../x", tarfile.LNKTYPE))],
    ids=["dotdot", "absolute", "symlink-absolute", "symlink-outside", "hardlink-outside"],
)
def test_unsafe_members_are_refused(tmp_path, png, member, raw_tar):
    path = raw_tar(tmp_path / "evil.tar", [("k.png", png()), member])
    with pytest.raises(UnsafeArchiveError, match="unsafe tar member") as e:
        list(read_caption_shards([path], Quarantine()))
    assert repr(member[0]) in str(e.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.tar"]


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE], ids=["symlink", "hardlink"])
def test_a_link_inside_the_archive_is_refused_too(tmp_path, png, raw_tar, kind):
    """Links are never followed, so no chain of them can lead out: even one to a member beside it is refused."""
    path = raw_tar(tmp_path / "s.tar", [("k.png", png()), ("k.txt", link("k.txt", "k.png", kind))])
    with pytest.raises(UnsafeArchiveError, match=r"'k\.txt' refused: it is a (symbolic|hard) link"):
        list(read_caption_shards([path], Quarantine()))


def test_member_names_are_normalised_and_folders_skipped(tmp_path, png, raw_tar):
    folder = tarfile.TarInfo("./")
    folder.type = tarfile.DIRTYPE
    path = raw_tar(tmp_path / "s.tar", [("./", folder), ("./k.png", png()), (".//k.txt", b"a ball")])
    [sample] = read_caption_shards([path], Quarantine())
    assert (sample.key, sample.captions) == ("k", {"alt": "a ball"})


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_truncated_shard_is_an_error_naming_the_file(tmp_path, png, keep):
    [path] = write_caption_shards(samples(png), tmp_path, shard_size=10)
    data = path.read_bytes()
    end = data.rstrip(b"\0")  # cut inside the members, not in the end-of-archive padding
    path.write_bytes(end[: int(len(end) * keep)])
    with pytest.raises(FormatError, match="truncated") as e:
        list(read_caption_shards([path], Quarantine()))
    assert str(path) in str(e.value)
