"""Turn this project's JPEG copy of CIFAR-10 (cifar10-jpeg.tar.xz) into `cifar-10-batches-py/`.

The package's own equivalent of this project's offline `make_cifar10.py`, so that a machine with
only the repository and the archive (a GPU machine without network, say) can prepare the data: the archive holds train/<class>/NNNN.jpg
and test/<class>/NNNN.jpg; the images are decoded (in parallel processes) and written as the
official python batches (data_batch_1..5, test_batch, batches.meta), in the same order as
make_cifar10.py writes them (sorted by name, then shuffled with numpy's default_rng(0)), so
both give the same files. A smaller archive of the same layout gives five smaller batches.

usage: python -m reproduce.data.prepare ARCHIVE OUT_DIR
"""
from __future__ import annotations

import io
import os
import pickle
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .cifar10 import CLASSES, FOLDER, DataError


def _decode(blobs: list[bytes]) -> np.ndarray:
    out = np.empty((len(blobs), 3072), dtype=np.uint8)
    for i, blob in enumerate(blobs):
        img = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.uint8)
        if img.shape != (32, 32, 3):
            raise DataError(f"an image in the archive is {img.shape[1]}x{img.shape[0]}, not 32x32")
        out[i] = img.transpose(2, 0, 1).reshape(-1)
    return out


def read_archive(archive: Path) -> dict:
    """name -> bytes of every file in the archive."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 archive not found: {archive}") from None
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"cannot read the CIFAR-10 archive {archive} ({type(e).__name__}: {e})") from None


def _split(members: dict, split: str, workers: int):
    names = sorted(n for n in members if n.startswith(split + "/") and n.count("/") == 2)
    if not names:
        raise DataError(f"the archive holds no {split}/<class>/*.jpg images")
    labels, files = [], []
    for name in names:
        cls = name.split("/")[1]
        if cls not in CLASSES:
            raise DataError(f"the archive's {name} is not in a CIFAR-10 class folder ({', '.join(CLASSES)})")
        labels.append(CLASSES.index(cls))
        files.append(f"{cls}_{os.path.basename(name)}")
    chunks = [names[i:i + 2000] for i in range(0, len(names), 2000)]
    blobs = [[members[n] for n in chunk] for chunk in chunks]
    if workers > 1 and len(chunks) > 1:
        with ProcessPoolExecutor(min(workers, len(chunks))) as pool:
            data = np.concatenate(list(pool.map(_decode, blobs)))
    else:
        data = np.concatenate([_decode(b) for b in blobs])
    return data, np.array(labels), files


def prepare(archive: str | Path, out_dir: str | Path, workers: int | None = None) -> Path:
    """Write OUT_DIR/cifar-10-batches-py/ from the archive; returns that folder."""
    workers = workers or os.cpu_count() or 1
    members = read_archive(Path(archive))
    dest = Path(out_dir) / FOLDER
    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)  # the same shuffle as make_cifar10.py: train first, then test
    for split in ("train", "test"):
        data, labels, names = _split(members, split, workers)
        order = rng.permutation(len(labels))  # mix the classes, as the official batches are
        data, labels, names = data[order], labels[order], [names[i] for i in order]
        if split == "test":
            parts = [("test_batch", np.arange(len(labels)))]
        else:
            parts = [(f"data_batch_{k + 1}", idx) for k, idx in enumerate(np.array_split(np.arange(len(labels)), 5))]
        for fname, idx in parts:
            batch = {"batch_label": fname, "labels": labels[idx].tolist(), "data": data[idx],
                     "filenames": [names[i] for i in idx]}
            tmp = dest / f".{fname}.tmp"
            with open(tmp, "wb") as f:
                pickle.dump(batch, f, protocol=4)
            os.replace(tmp, dest / fname)
    with open(dest / "batches.meta", "wb") as f:
        pickle.dump({"num_cases_per_batch": 10000, "label_names": list(CLASSES), "num_vis": 3072}, f, protocol=4)
    return dest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        print(prepare(argv[0], argv[1]))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
