"""Frames travel between stages as Arrow columns that wrap them: no copy into Python bytes and back."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.rows import binary_column, binary_views, to_rows, to_table

SCHEMA = pa.schema([pa.field("video_id", pa.string()), pa.field("frames", pa.large_binary())])


def frames(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 4, 6, 3), dtype=np.uint8)


def test_one_video_s_frames_are_wrapped_and_read_back_in_place():
    video = frames(0)
    table = to_table([{"video_id": "a"}], SCHEMA, arrays={"frames": [video]})
    rows, arrays = to_rows(table, "frames")
    assert rows == [{"video_id": "a"}]
    (view,) = arrays["frames"]
    assert view is not None and np.shares_memory(view, video)
    assert np.array_equal(view.reshape(video.shape), video)


def test_several_videos_and_missing_frames_keep_their_rows():
    videos = [frames(1), None, frames(2, n=1)]
    column = binary_column(videos)
    assert column.null_count == 1 and column.type == pa.large_binary()
    views = binary_views(pa.chunked_array([column.slice(1), column.slice(0, 1)]))  # chunks with offsets
    assert views[0] is None
    assert np.array_equal(views[1], videos[2].reshape(-1)) and np.array_equal(views[2], videos[0].reshape(-1))


def test_the_values_read_as_python_bytes_are_the_same():
    video = frames(3)
    table = to_table([{"video_id": "a"}], SCHEMA, arrays={"frames": [video]})
    assert table.to_pylist()[0]["frames"] == video.tobytes()
