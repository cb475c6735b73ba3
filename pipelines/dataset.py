"""The labelled face-crop dataset that ``fakescan prepare`` writes and training reads.

Inputs are labelled videos or photos: ``real/`` and ``fake/`` folders, or a CSV of
``uri,label[,group][,split]``. They go through the scan's own decode and face
stages; each face becomes one row of ``crops/`` with a lossless PNG of the crop (JPEG
would add compression traces of its own to every sample). Splits are assigned per
group (an identity or a source video), never per frame, so no face leaks from
training into validation.
"""
from __future__ import annotations

import csv
import hashlib
import io
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from detector.pseudofakes import landmark_swap, morph, self_blend
from pipelines.errors import SourceError
from pipelines.rows import BASE, MANIFEST_SCHEMA, to_table, unpack_array
from pipelines.sources import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, filesystem_for, list_videos

LABELS = {"real": 0, "fake": 1, "0": 0, "1": 1}
SPLITS = ("train", "val", "test")
PSEUDO_FAKE_KINDS = ("sbi", "swap", "morph")
TRAINING_PSEUDO_FAKES = ("sbi", "swap")  # morphs are kept for judging transfer to a method never trained on
DONOR_METHODS = {"swap": landmark_swap, "morph": morph}  # the kinds that paste another person's face
LABELLED_SCHEMA = pa.schema(list(MANIFEST_SCHEMA) + [
    pa.field("label", pa.int8()), pa.field("group", pa.string()), pa.field("split", pa.string()),
])
CROP_SCHEMA = pa.schema([
    pa.field("crop_id", pa.string()),
    pa.field("label", pa.int8()),  # 1 = fake
    pa.field("kind", pa.string()),  # real | fake (as given) | sbi | swap | morph (pseudo-fakes made here)
    pa.field("split", pa.string()),
    pa.field("group", pa.string()),
    pa.field("source_uri", pa.string()),
    pa.field("source_id", pa.string()),  # video_id of the input file
    pa.field("frame_index", pa.int32()),
    pa.field("box", pa.list_(pa.float32(), 4)),
    pa.field("det_prob", pa.float32()),
    pa.field("landmarks", pa.list_(pa.float32(), 10)),
    pa.field("donor_id", pa.string()),  # for swaps: the crop whose face was pasted in
    pa.field("image", pa.binary()),  # PNG
])


def split_for(group: str, ratios: tuple[float, float, float]) -> str:
    """A stable split for a group: the same group always lands in the same split."""
    fraction = int(hashlib.sha256(group.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for name, ratio in zip(SPLITS, ratios):
        edge += ratio
        if fraction < edge:
            return name
    return SPLITS[-1]


def _labelled(manifest: pa.Table, label: int) -> list[dict[str, Any]]:
    return [dict(row, label=label, group=row["uri"], split=None) for row in manifest.to_pylist()]


def read_label_csv(path: str, storage_options: dict[str, Any]) -> list[dict[str, str]]:
    fs = filesystem_for(path, storage_options)
    with fs.open(path.removeprefix("file://"), "r", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"uri", "label"} <= set(rows[0]):
        raise SourceError(f"{path}: a labels CSV needs a header with at least 'uri,label'")
    base = path.rsplit("/", 1)[0] if "/" in path else "."
    for number, row in enumerate(rows, start=2):
        if row["label"].strip().lower() not in LABELS:
            raise SourceError(f"{path}:{number}: label must be real or fake (or 0/1), not {row['label']!r}")
        if row.get("split") and row["split"] not in SPLITS:
            raise SourceError(f"{path}:{number}: split must be one of {', '.join(SPLITS)}, not {row['split']!r}")
        uri = row["uri"].strip()
        row["uri"] = uri if "://" in uri or uri.startswith("/") else f"{base}/{uri}"
    return rows


def list_labelled(source: str, storage_options: dict[str, Any],
                  ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> pa.Table:
    """One manifest row per labelled input, with ``label``, ``group`` and ``split``."""
    extensions = VIDEO_EXTENSIONS | IMAGE_EXTENSIONS
    rows: list[dict[str, Any]] = []
    if source.lower().endswith(".csv"):
        for entry in read_label_csv(source, storage_options):
            found = list_videos(entry["uri"], storage_options, extensions).to_pylist()
            for row in found:
                row.update(label=LABELS[entry["label"].strip().lower()], group=entry.get("group") or row["uri"],
                           split=entry.get("split") or None)
            rows += found
    else:
        root = source.rstrip("/")
        fs = filesystem_for(source, storage_options)
        present = [name for name in ("real", "fake") if fs.exists(f"{root}/{name}".removeprefix("s3://"))]
        if not present:
            raise SourceError(f"{source}: expected real/ and fake/ folders, or a labels .csv file")
        for name in present:
            rows += _labelled(list_videos(f"{root}/{name}", storage_options, extensions), LABELS[name])
    for row in rows:
        row["split"] = row["split"] or split_for(row["group"], ratios)
    return to_table(rows, LABELLED_SCHEMA)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def png_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def crop_rows(video: dict[str, Any], labels: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Crop rows for one video as the faces stage left it (``crops`` still packed)."""
    if video["status"] != "pending" or not video.get("face_frame"):
        return []
    n, size = len(video["face_frame"]), video["crop_size"]
    crops = unpack_array(video["crops"], [n, size, size, 3])
    meta = labels[video["video_id"]]
    rows = []
    for i in range(n):
        rows.append({
            "crop_id": f"{video['video_id']}-{video['face_frame'][i]}-{i}",
            "label": meta["label"], "kind": "fake" if meta["label"] else "real", "split": meta["split"],
            "group": meta["group"], "source_uri": video["uri"], "source_id": video["video_id"],
            "frame_index": (video.get("frame_numbers") or [0])[video["face_frame"][i]],
            "box": video["face_box"][i], "det_prob": video["face_det_prob"][i],
            "landmarks": video["face_landmarks"][i], "image": png_bytes(crops[i]),
        })
    return rows


ENCODED_SCHEMA = pa.schema(BASE + [pa.field("crop_rows", pa.list_(pa.struct(list(CROP_SCHEMA))))])


def encode_crops(batch: pa.Table, labels: dict[str, dict[str, Any]]) -> pa.Table:
    """Ray Data stage: still one row per input, its faces now nested PNG crop rows (the PNG
    encoding stays off the driver, and every input keeps its status for the inputs table)."""
    rows = batch.to_pylist()
    for row in rows:
        row["crop_rows"] = crop_rows(row, labels)
    return to_table(rows, ENCODED_SCHEMA)


def flatten_crops(encoded: pa.Table) -> pa.Table:
    crops = pc.list_flatten(encoded["crop_rows"])
    if isinstance(crops, pa.ChunkedArray):
        crops = crops.combine_chunks()
    return pa.Table.from_struct_array(crops).cast(CROP_SCHEMA) if len(crops) else CROP_SCHEMA.empty_table()


def rng_for(crop_id: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, int(hashlib.sha256(crop_id.encode()).hexdigest()[:12], 16)])


def make_pseudo_fakes(batch: pa.Table, kinds: tuple[str, ...], donors: dict[str, list[dict[str, Any]]],
                      seed: int, every_kind: bool = False) -> pa.Table:
    """Ray Data stage: per real crop, one pseudo-fake of a kind drawn per crop, or with
    ``every_kind`` one of each kind (evaluation sets, which compare methods on the same faces).

    A swap or morph takes its donor from the same split and another group, so a validation
    fake never contains a training face; with no such donor a drawn kind falls back to a
    self-blend and says so in ``kind``, and ``every_kind`` leaves that kind out for the crop.
    """
    out = []
    for row in batch.to_pylist():
        rng = rng_for(row["crop_id"], seed)
        drawn = kinds[int(rng.integers(len(kinds)))]
        crop = png_array(row["image"])
        landmarks = np.asarray(row["landmarks"], np.float32).reshape(5, 2)
        pool = [d for d in donors.get(row["split"], []) if d["group"] != row["group"]]
        for kind in kinds if every_kind else (drawn,):
            donor = pool[int(rng.integers(len(pool)))] if kind in DONOR_METHODS and pool else None
            if donor is None and kind in DONOR_METHODS and every_kind:
                continue
            if donor is not None:
                fake = DONOR_METHODS[kind](crop, landmarks, png_array(donor["image"]),
                                           np.asarray(donor["landmarks"], np.float32).reshape(5, 2), rng)
            else:
                kind, fake = "sbi", self_blend(crop, landmarks, rng)
            out.append(dict(row, crop_id=f"{row['crop_id']}-{kind}", label=1, kind=kind, image=png_bytes(fake),
                            donor_id=donor["crop_id"] if donor is not None else None))
    return to_table(out, CROP_SCHEMA)


def pick_donors(real_index: pa.Table, per_split: int, seed: int) -> dict[str, list[str]]:
    """A bounded, seeded sample of real crop ids per split, to paste into swaps."""
    rng = np.random.default_rng(seed)
    donors: dict[str, list[str]] = {}
    for split in SPLITS:
        ids = real_index.filter(pc.equal(real_index["split"], split))["crop_id"].to_pylist()
        if ids:
            donors[split] = sorted(rng.choice(ids, size=min(per_split, len(ids)), replace=False).tolist())
    return donors


def load_donors(paths: list[str], donor_ids: dict[str, list[str]], filesystem=None) -> dict[str, list[dict[str, Any]]]:
    """The donor crops themselves (image and landmarks), read from the written parts."""
    import pyarrow.dataset as pads

    wanted = [crop_id for ids in donor_ids.values() for crop_id in ids]
    table = pads.dataset(paths, format="parquet", filesystem=filesystem, schema=CROP_SCHEMA).to_table(
        columns=["crop_id", "split", "group", "landmarks", "image"], filter=pc.field("crop_id").isin(wanted))
    donors: dict[str, list[dict[str, Any]]] = {}
    for row in table.to_pylist():
        donors.setdefault(row["split"], []).append(row)
    return donors


def decode_images(batch: pa.Table) -> dict[str, np.ndarray]:
    """Ray Data stage for training: PNG crops → ``pixels`` (N, H, W, 3) uint8 and ``label``, and
    ``landmarks`` (N, 5, 2) when the batch has them (self-blends made while training need them)."""
    images = batch["image"].to_pylist()
    decoded = {"pixels": np.stack([png_array(data) for data in images]) if images else np.zeros((0, 1, 1, 3), np.uint8),
               "label": batch["label"].to_numpy().astype(np.float32)}
    if "landmarks" in batch.column_names:
        decoded["landmarks"] = np.asarray(batch["landmarks"].to_pylist(), np.float32).reshape(-1, 5, 2)
    return decoded


def crops_at(path: str, filesystem=None):
    """The crop parts under ``path`` as one pyarrow dataset (``filesystem``: pyarrow's, for s3://)."""
    import pyarrow.dataset as pads

    return pads.dataset(path.removeprefix("s3://"), format="parquet", filesystem=filesystem, schema=CROP_SCHEMA)


def count_split(path: str, split: str, filesystem=None) -> int:
    return crops_at(path, filesystem).count_rows(filter=pc.field("split") == split)


def sample_split(path: str, split: str, filesystem=None, limit: int | None = None, seed: int = 0) -> pa.Table:
    """(crop_id, label, kind, image) rows of one split, in a seeded random order (so any prefix is a fair sample)."""
    table = crops_at(path, filesystem).to_table(
        columns=["crop_id", "label", "kind", "image"], filter=pc.field("split") == split).sort_by("crop_id")
    order = np.random.default_rng(seed).permutation(table.num_rows)[:limit]
    return table.take(pa.array(order, pa.int64()))


def read_split(path: str, split: str, filesystem=None, limit: int | None = None,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Crops and labels of one split, decoded, in ``sample_split``'s order."""
    table = sample_split(path, split, filesystem, limit, seed)
    if not table.num_rows:
        return np.zeros((0, 224, 224, 3), np.uint8), np.zeros((0,), np.float32)
    decoded = decode_images(table)
    return decoded["pixels"], decoded["label"]
