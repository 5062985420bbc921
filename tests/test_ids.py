from curation.ids import clip_id, shard_name, uri_key, video_id_from_content


def test_video_id_depends_on_content_not_name(tmp_path):
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    c.write_bytes(b"x" * 1_500_000 + b"y" + b"x" * 1_499_999)  # differs only in the middle
    assert video_id_from_content(str(a)) == video_id_from_content(str(b))
    assert video_id_from_content(str(a)) != video_id_from_content(str(c))
    assert len(video_id_from_content(str(a))) == 16


def test_clip_ids_are_stable_and_distinct():
    assert clip_id("v", 0, 10) == clip_id("v", 0, 10)
    assert len({clip_id("v", 0, 10), clip_id("v", 0, 11), clip_id("w", 0, 10)}) == 3
    assert uri_key("/a.mp4") != uri_key("/b.mp4")
    assert shard_name("abc", 3) == "abc-0003.parquet"
