"""Read CIFAR-10 from the standard `cifar-10-batches-py/` layout into uint8 tensors.

The batches are read directly (pickled dicts), not through torchvision's `CIFAR10` class,
which insists on the official md5 sums; only a downloaded archive is checked against its md5.
A pickle can run any code it names, so the batches are read by `BatchUnpickler`, which builds
only the dicts, lists, strings and numpy arrays of the CIFAR format and refuses anything else.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torchvision.datasets.utils import download_and_extract_archive

from ..errors import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER = "cifar-10-batches-py"
TRAIN_FILES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_FILE = "test_batch"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
HOW_TO = (f"let the package download it (data.download=true, the default; {URL}, md5-checked) or unpack "
          f"cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html into ROOT, then pass data.root=ROOT")


class BatchUnpickler(pickle.Unpickler):
    """Only what a CIFAR-10 batch holds: plain containers and numpy arrays (pickled as
    ndarray + dtype + _reconstruct, or _frombuffer from pickle protocol 5, under numpy 1 and 2 names)."""
    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.numeric", "_frombuffer"),
               ("numpy._core.numeric", "_frombuffer"), ("_codecs", "encode")}  # encode: bytes under protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}: a CIFAR-10 batch holds only arrays, lists and strings")
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="latin1").load()
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except FileNotFoundError:
        raise DataError(f"CIFAR-10 batch file missing: {path}; {HOW_TO}") from None
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused"):
            raise DataError(f"CIFAR-10 batch file {path} is not a CIFAR batch ({e}); nothing in it was run; "
                            f"re-create it: {HOW_TO}") from None
        raise DataError(f"CIFAR-10 batch file {path} is truncated or corrupt (UnpicklingError); "
                        f"re-create it: {HOW_TO}") from None
    except Exception as e:
        raise DataError(f"CIFAR-10 batch file {path} is truncated or corrupt ({type(e).__name__}); "
                        f"re-create it: {HOW_TO}") from None
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data) or len(data) == 0:
        raise DataError(f"CIFAR-10 batch file {path} has the wrong shape {data.shape}; re-create it: {HOW_TO}")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"CIFAR-10 batch file {path} has labels outside 0..9; re-create it: {HOW_TO}")
    return data.reshape(-1, 3, 32, 32), labels


def _download(root: Path) -> None:
    try:
        download_and_extract_archive(URL, str(root), filename="cifar-10-python.tar.gz", md5=MD5)
    except Exception as e:
        raise DataError(f"CIFAR-10 not found in {root / FOLDER} and the download from {URL} failed "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {HOW_TO}") from None


def load_cifar10(root: str | Path, download: bool = True):
    """(train_x, train_y, test_x, test_y): uint8 [N, 3, 32, 32] images and int64 labels."""
    root = Path(root).expanduser()
    folder = root / FOLDER
    if root.exists() and not root.is_dir():
        raise DataError(f"data.root={root} is a file, not a directory; {HOW_TO}")
    if not folder.is_dir():
        if not download:
            raise DataError(f"CIFAR-10 not found: looked for {folder} (data.download=false); {HOW_TO}")
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataError(f"data.root={root} cannot be created ({e.strerror}); {HOW_TO}") from None
        _download(root)
    parts = [_read_batch(folder / name) for name in TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = _read_batch(folder / TEST_FILE)
    return (torch.from_numpy(train_x), torch.from_numpy(train_y),
            torch.from_numpy(test_x), torch.from_numpy(test_y))
