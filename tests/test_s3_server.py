"""The S3 test server itself: s3fs and pyarrow can write, list and read objects on it."""

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.s3


def test_s3fs_put_list_get(s3fs_client, s3_bucket):
    blobs = {
        f"{s3_bucket}/top.bin": b"\x00top",
        f"{s3_bucket}/videos/a.mp4": b"not really a video",
        f"{s3_bucket}/videos/nested/b.mp4": bytes(range(256)) * 1024,
    }
    for path, data in blobs.items():
        s3fs_client.pipe(path, data)

    assert sorted(s3fs_client.find(s3_bucket)) == sorted(blobs)
    assert s3fs_client.ls(f"{s3_bucket}/videos", detail=False) == [
        f"{s3_bucket}/videos/a.mp4",
        f"{s3_bucket}/videos/nested",
    ]
    for path, data in blobs.items():
        assert s3fs_client.cat(path) == data
        assert s3fs_client.size(path) == len(data)


def test_parquet_roundtrip(s3_server, s3fs_client, s3_bucket):
    table = pa.table({"video": ["a.mp4", "b.mp4", "c.mp4"], "score": [0.1, 0.9, 0.5]})
    path = f"{s3_bucket}/scores/part-0.parquet"
    pq.write_table(table, path, filesystem=s3fs_client)

    assert pq.read_table(path, filesystem=s3fs_client).equals(table)

    # pyarrow's own S3 client (what Ray Data uses) reads it too, with credentials from env.
    native = pafs.S3FileSystem(endpoint_override=s3_server.endpoint_url, allow_bucket_creation=True)
    assert pq.read_table(path, filesystem=native).equals(table)
    pq.write_table(table, f"{s3_bucket}/scores/part-1.parquet", filesystem=native)
    assert sorted(s3fs_client.find(f"{s3_bucket}/scores")) == [
        f"{s3_bucket}/scores/part-0.parquet",
        f"{s3_bucket}/scores/part-1.parquet",
    ]
