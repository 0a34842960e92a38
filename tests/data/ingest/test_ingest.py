"""ingest: URL lists -> img2dataset-format shards with stable keys and failure kinds."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fgclip.core.shards import RawShardReader
from fgclip.data.ingest.config import IngestConfig, UrlListConfig
from fgclip.data.ingest.failures import classify, is_transient
from fgclip.data.ingest.images import prepare_image
from fgclip.data.ingest.runner import Fetched
from fgclip.data.ingest.stage import download, run_ingest
from fgclip.data.ingest.urls import UrlListError, plan_shards, stable_key
from tests.support.photo_server import HOSTILE, REDIRECT, photo_site


def _jpeg(size: tuple[int, int], colour: str = "navy") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="JPEG")
    return out.getvalue()


def write_list(path: Path, rows: list[dict[str, object]]) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        pa_csv.write_csv(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------- failure kinds


@pytest.mark.parametrize(
    ("message", "kind", "transient"),
    [
        ("HTTP Error 404: Not Found", "http_404", False),
        ("HTTP Error 503: Service Unavailable", "http_503", True),
        ("HTTP Error 429: Too Many Requests", "http_429", True),
        ("The read operation timed out", "timeout", True),
        ("<urlopen error timed out>", "timeout", True),
        ("<urlopen error [Errno 111] Connection refused>", "connection_error", True),
        (
            "HTTP Error 302: The HTTP server returned a redirect error that would lead to an infinite loop.",
            "redirect_loop",
            False,
        ),
        ("Use of image disallowed by X-Robots-Tag directive", "disallowed", False),
        ("unknown url type: 'ftp'", "invalid_url", False),
        ("something nobody expected", "other", False),
    ],
)
def test_error_messages_become_failure_kinds(message: str, kind: str, transient: bool) -> None:
    assert classify(message) == kind
    assert is_transient(kind) is transient


# ---------------------------------------------------------------- images


def test_prepare_image_checks_and_resizes() -> None:
    config = IngestConfig(resolution=64, margin=1.5, min_side=16, max_megapixels=1.0)
    big = prepare_image(_jpeg((400, 200)), config)
    assert big.failure is None and (big.width, big.height) == (192, 96)  # shorter side -> 64 x 1.5
    small = prepare_image(_jpeg((80, 40)), config)
    assert small.failure is None and (small.width, small.height) == (80, 40)  # never upscaled
    assert prepare_image(_jpeg((10, 40)), config).failure == "too_small"
    assert prepare_image(_jpeg((1200, 1000)), config).failure == "too_large"
    html = prepare_image(b"<!doctype html><html>nope</html>", config)
    assert html.failure == "not_an_image" and "HTML" in html.detail
    cut = _jpeg((300, 300), "orange")
    assert prepare_image(cut[: len(cut) // 2], config).failure == "decode_error"
    rgba = io.BytesIO()
    Image.new("RGBA", (100, 100), (255, 0, 0, 0)).save(rgba, format="PNG")
    flat = prepare_image(rgba.getvalue(), config)
    assert flat.jpeg is not None and Image.open(io.BytesIO(flat.jpeg)).getpixel((50, 50)) == (255, 255, 255)


# ---------------------------------------------------------------- planning


def test_keys_are_stable_whatever_the_row_order_and_bad_rows_are_counted(tmp_path: Path) -> None:
    rows = [{"URL": f"https://example.org/{i}.jpg", "TEXT": f"photo number {i}"} for i in range(10)]
    bad = [
        {"URL": "", "TEXT": "no url"},
        {"URL": "ftp://example.org/x.jpg", "TEXT": "not http"},
        {"URL": "https://example.org/c.jpg", "TEXT": "  "},
        dict(rows[3]),  # the same row twice
    ]
    layout = UrlListConfig(
        path=str(write_list(tmp_path / "a.parquet", rows + bad)), url_column="URL", caption_column="TEXT"
    )
    plan = plan_shards(layout, shard_size=4, key_length=20)
    assert sorted(plan.shards) == ["00000", "00001", "00002"]
    assert dict(plan.rejected) == {"missing_url": 1, "invalid_url": 1, "missing_caption": 1, "duplicate_row": 1}
    keys = {row.url: row.key for row in plan.rows if row.key}
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    other = plan_shards(
        UrlListConfig(path=str(write_list(tmp_path / "b.csv", shuffled)), url_column="URL", caption_column="TEXT"),
        shard_size=4,
        key_length=20,
    )
    assert {row.url: row.key for row in other.rows} == keys
    assert keys["https://example.org/0.jpg"] == stable_key("https://example.org/0.jpg", "photo number 0", 20)


def test_headerless_tsv_and_missing_columns(tmp_path: Path) -> None:
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text("a red bus\thttps://example.org/bus.jpg\na dog\thttps://example.org/dog.jpg\n")
    layout = UrlListConfig(path=str(tsv), column_names=("caption", "url"))
    plan = plan_shards(layout, shard_size=10, key_length=16)
    assert [row.caption for row in plan.shards["00000"]] == ["a red bus", "a dog"]
    with pytest.raises(UrlListError, match="no column"):
        plan_shards(UrlListConfig(path=str(tsv), column_names=("a", "b")), shard_size=10, key_length=16)
    with pytest.raises(UrlListError, match="does not exist"):
        plan_shards(UrlListConfig(path=str(tmp_path / "none.parquet")), shard_size=10, key_length=16)


# ---------------------------------------------------------------- retries with backoff


def test_transient_failures_are_retried_after_a_growing_backoff(tmp_path: Path) -> None:
    layout = UrlListConfig(
        path=str(
            write_list(
                tmp_path / "l.jsonl",
                [
                    {"url": "https://a.example/1.jpg", "caption": "one"},
                    {"url": "https://a.example/2.jpg", "caption": "two"},
                    {"url": "https://a.example/3.jpg", "caption": "three"},
                ],
            )
        )
    )
    plan = plan_shards(layout, shard_size=10, key_length=16)
    calls: list[list[str]] = []
    waits: list[float] = []

    def fetcher(config, batches, workdir):
        urls = [row.url for rows in batches.values() for row in rows]
        calls.append(urls)
        results = {}
        for rows in batches.values():
            for row in rows:
                if row.url.endswith("1.jpg"):
                    results[row.key] = Fetched(_jpeg((100, 100)))
                elif row.url.endswith("2.jpg"):  # busy twice, then fine
                    results[row.key] = (
                        Fetched(None, "HTTP Error 503: busy") if len(calls) < 3 else Fetched(_jpeg((90, 90)))
                    )
                else:
                    results[row.key] = Fetched(None, "HTTP Error 404: Not Found")
        return results

    config = IngestConfig(retries=3, backoff_s=2.0, backoff_max_s=3.0)
    results = download(config, plan.shards, tmp_path / "work", fetcher=fetcher, sleep=waits.append)
    assert calls[1:] == [["https://a.example/2.jpg"], ["https://a.example/2.jpg"]]  # 404 is never retried
    assert waits == [2.0, 3.0]  # doubled, capped
    by_url = {row.url: results[row.key] for row in plan.shards["00000"]}
    assert by_url["https://a.example/2.jpg"][0].data is not None and by_url["https://a.example/2.jpg"][1] == 3


# ---------------------------------------------------------------- the real downloader


def _members(tar: Path) -> list[str]:
    with tarfile.open(tar) as archive:
        return archive.getnames()


@pytest.mark.slow
def test_img2dataset_download_of_real_photos_and_hostile_urls(tmp_path: Path) -> None:
    with photo_site(slow_s=4.0, huge_side=5000) as site:
        rows = [{"url": url, "caption": f"a photo of {url.rsplit('/', 1)[-1]}"} for url in site.good_urls()]
        rows.append({"url": site.url(REDIRECT), "caption": "a photo that moved"})
        rows += [{"url": site.url(name), "caption": f"a bad link {name}"} for name in HOSTILE]
        layout = UrlListConfig(path=str(write_list(tmp_path / "urls.parquet", rows)))
        config = IngestConfig(
            shard_size=8,
            resolution=64,
            margin=1.25,
            min_side=32,
            max_megapixels=20.0,
            processes=1,
            threads=8,
            timeout_s=2,
            retries=1,
            backoff_s=0.5,
        )
        out = tmp_path / "shards"
        report = run_ingest(layout, config, str(out)).as_dict()
        good = len(site.good_urls()) + 1
        assert report["planned"] == len(rows) and report["successes"] == good
        assert report["failures_by_kind"] == {kind: 1 for kind in HOSTILE.values()}
        # every good photo arrived, resized, under its stable key
        keys = {stable_key(row["url"], row["caption"], config.key_length) for row in rows[:good]}
        stored = {}
        for tar in sorted(out.glob("*.tar")):
            for sample in RawShardReader(tar):
                stored[sample.key] = sample
                assert min(sample.width, sample.height) <= config.stored_side
        assert set(stored) == keys
        assert all(sample.meta["url"] and sample.meta["source_row"] >= 0 for sample in stored.values())
        # the per-shard parquet and stats tell every row's fate; the mapping ties rows to keys
        statuses = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("0*.parquet"))]).to_pylist()
        assert sorted(r["error_kind"] for r in statuses if r["status"] != "success") == sorted(HOSTILE.values())
        transient = [r for r in statuses if r["error_kind"] in ("http_500", "timeout")]
        assert all(r["attempts"] == 2 for r in transient)  # retried once, after the backoff
        stats = json.loads((out / "00000_stats.json").read_text())
        assert {"count", "successes", "failed_to_download", "failed_to_resize", "status_dict"} <= set(stats)
        mapping = pq.read_table(out / "mapping.parquet").to_pylist()
        assert [m["source_row"] for m in mapping] == list(range(len(rows)))
        # the server saw our user agent token... and a rerun fetches nothing again
        before = sum(site.requests.values())
        again = run_ingest(layout, config, str(out)).as_dict()
        assert sum(site.requests.values()) == before
        assert again["shards_skipped"] == again["shards"] and again["successes"] == good
