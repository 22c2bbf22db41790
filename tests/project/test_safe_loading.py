"""Nothing the project reads runs code: crafted data files, checkpoints and resume files whose pickles name
`os.system`, `subprocess.call`, `exec`, ... are refused in one sentence that names the file, and the marker
file their payload would create never appears. Also a static audit: no module reads a pickle another way.
"""

from __future__ import annotations

import builtins
import os
import pickle
import re
import struct
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, fails, one_sentence, train_args, write_cifar10, write_cifar100

import data
import train
from data import formats
from net.checkpoint import read_checkpoint
from utils.errors import UserError

pytestmark = pytest.mark.filterwarnings("ignore::data.formats.ChecksumWarning")


class Payload:
    """Pickles as a call of `fn(*args)`, the way a crafted file runs code in `pickle.load`."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def payloads(marker: Path) -> dict[str, Payload]:
    """Ways of creating `marker` from inside a pickle."""
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": Payload(os.system, f"touch '{marker}'"),
        "subprocess.call": Payload(subprocess.call, ["touch", str(marker)]),
        "exec": Payload(builtins.exec, code),
        "eval": Payload(builtins.eval, code),
        "Path.touch": Payload(Path.touch, marker),
    }


PAYLOADS = ["os.system", "subprocess.call", "exec", "eval", "Path.touch"]


def refused_naming(err: UserError | str, path: Path) -> str:
    line = one_sentence(f"error: {err}")
    assert f"'{path}'" in line, line
    return line


def test_the_payloads_do_run_under_a_plain_pickle_load(tmp_path):
    """The test below would notice: each payload creates the marker when unpickled the usual way."""
    marker = tmp_path / "marker"
    for name, payload in payloads(marker).items():
        pickle.loads(pickle.dumps({"data": payload}))
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("name", PAYLOADS)
@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_a_crafted_cifar10_batch_is_refused_without_running_it(tmp_path, name, where):
    root, marker = tmp_path / "root", tmp_path / "marker"
    write_cifar10(root, per_batch=4, n_test=4)
    payload = payloads(marker)[name]
    entry = {"batch_label": "x", "data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3]}
    if where == "top":
        entry = payload
    else:
        entry[where] = payload if where == "data" else [0, payload, 2, 3]
    bad = root / "cifar-10-batches-py" / "data_batch_1"
    bad.write_bytes(pickle.dumps(entry, protocol=2))
    for load in (
        lambda: data.load_split("cifar10", root, "train"),
        lambda: data.get_train_valid_loader("cifar10", root, 4),
        lambda: data.get_train_valid_loader("cifar10", root, 4, loader="torchvision"),
    ):
        with pytest.raises(UserError) as info:
            load()
        line = refused_naming(info.value, bad)
        assert "could run code" in line
    assert not marker.exists()


def test_crafted_cifar100_and_test_batches_are_refused_as_in_and_out_of_distribution(tmp_path):
    root, marker = tmp_path / "root", tmp_path / "marker"
    write_cifar10(root, per_batch=4, n_test=4)
    write_cifar100(root, n=4)
    evil = {"data": payloads(marker)["os.system"], "fine_labels": [0] * 4, "labels": [0] * 4}
    for path in (root / "cifar-100-python" / "train", root / "cifar-100-python" / "test"):
        path.write_bytes(pickle.dumps(evil))
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(evil, protocol=5))
    cases = [
        (lambda: data.load_split("cifar100", root, "train"), root / "cifar-100-python" / "train"),
        (
            lambda: data.get_test_loader("cifar100", root, 4, like="cifar10"),
            root / "cifar-100-python" / "test",
        ),
        (lambda: data.get_test_loader("cifar10", root, 4), root / "cifar-10-batches-py" / "test_batch"),
    ]
    for load, path in cases:
        with pytest.raises(UserError) as info:
            load()
        refused_naming(info.value, path)
    assert not marker.exists()


def test_train_py_on_a_crafted_cifar10_batch_fails_in_one_sentence_and_runs_nothing(tmp_path, capsys):
    root, marker = tmp_path / "root", tmp_path / "marker"
    write_cifar10(root, per_batch=4, n_test=4)
    bad = root / "cifar-10-batches-py" / "data_batch_1"
    bad.write_bytes(pickle.dumps({"data": payloads(marker)["os.system"], "labels": []}))
    args = train.get_args_parser().parse_args(
        ["--seed", "1", "--dataset", "cifar10", "--dataset-root", str(root), "--model", "resnet18",
         "--base-width", "2", "--no-gpu", "-e", "1", "-b", "4", "--save-path", str(tmp_path / "run")]
    )  # fmt: skip
    line = fails(capsys, train.main, args)
    assert f"'{bad}'" in line and not marker.exists()


def test_official_layout_pickles_still_load_from_python2_and_every_protocol(tmp_path):
    """Python 2's cPickle wrote the official files (str pixels decoded as latin-1 here); copies written by
    Python 3 use protocols 2 (bytes via _codecs.encode) to 5 (arrays via _frombuffer), NumPy scalars too."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    x = np.arange(2 * 3072, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    for protocol in (0, 2, 4, 5):
        entry = {"batch_label": b"raw bytes", "data": x, "labels": [np.int64(3), 7], "filenames": ["a", "b"]}
        (folder / "batch").write_bytes(pickle.dumps(entry, protocol=protocol))
        images, labels = formats.read_cifar([folder / "batch"], "labels", 10)
        assert images.dtype == torch.uint8 and torch.equal(images.reshape(2, -1), torch.from_numpy(x))
        assert labels.tolist() == [3, 7]
    # What Python 2's cPickle (protocol 2) writes for {'data': uint8 array, 'labels': [3, 7]}: numpy.core
    # names and the pixels as a latin-1 str.
    py2 = (
        b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
        b"K\x00\x85U\x01b\x87Rq\x04(K\x01K\x01K\x04\x86cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x04\x00\x80\xfe\xfftbU\x06labels"
        b"q\x07]q\x08(K\x03K\x07eu."
    )
    assert formats.load_cifar_pickle(_write(tmp_path / "py2", py2))["data"].tolist() == [[0, 128, 254, 255]]


def _write(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "module, name",
    [("numpy", "load"), ("numpy.core.multiarray", "_reconstruct.__globals__"), ("builtins", "getattr"),
     ("_codecs", "decode"), ("copyreg", "_reconstructor"), ("torch", "load")],
)  # fmt: skip
def test_only_the_listed_globals_are_admitted(tmp_path, module, name):
    path = _write(tmp_path / "batch", b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    with pytest.raises(UserError, match=re.escape(f"names {module}.{name}")):
        formats.load_cifar_pickle(path)


def test_codecs_encode_is_admitted_for_latin1_text_only(tmp_path):
    good = pickle.dumps(b"\x00\xff", protocol=2)
    assert formats.load_cifar_pickle(_write(tmp_path / "good", good)) == b"\x00\xff"
    rot13 = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x05\x00\x00\x00rot13\x86R."
    with pytest.raises(UserError, match="not a valid CIFAR pickle"):
        formats.load_cifar_pickle(_write(tmp_path / "bad", rot13))


# ----------------------------------------------------------------------------------------------------------
# torch files: checkpoints, resume files, Ambiguous-MNIST


@pytest.fixture
def crafted_torch_file(tmp_path):
    marker = tmp_path / "marker"

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"model": {"w": torch.zeros(1)}, "format": payloads(marker)["os.system"]}, path)
        return path

    yield write
    assert not marker.exists()


def test_a_crafted_checkpoint_is_refused_without_running_it(tmp_path, crafted_torch_file):
    path = crafted_torch_file(tmp_path / "lenet_1_1.model")
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    refused_naming(info.value, path)


def test_a_crafted_resume_file_is_refused_without_running_it(tmp_path, crafted_torch_file, capsys):
    path = crafted_torch_file(tmp_path / "run" / "lenet_1_resume.pt")
    line = fails(capsys, train.main, train_args(tmp_path / "run", "--resume"))
    assert f"'{path}'" in line


def test_crafted_ambiguous_mnist_files_are_refused_without_running_them(tmp_path, crafted_torch_file):
    samples = crafted_torch_file(tmp_path / "amnist_samples.pt")
    torch.save(torch.zeros(2, 2, dtype=torch.int64), tmp_path / "amnist_labels.pt")
    with pytest.raises(UserError) as info:
        formats.read_amnist(samples, tmp_path / "amnist_labels.pt")
    refused_naming(info.value, samples)


# ----------------------------------------------------------------------------------------------------------
# The audit: every reader of the project, found by name


READERS = re.compile(
    r"pickle\.loads?\(|Unpickler\b|torch\.load\(|allow_pickle|\bnp\.load\(|numpy\.load\(|(?<![.\w])(eval|exec)\("
)


def test_no_module_reads_a_pickle_except_through_the_restricted_readers():
    """Every `torch.load` passes `weights_only=True`; the only unpickler is the CIFAR one in data/formats.py;
    nothing calls eval/exec or numpy's pickle-enabled loading."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        relative = path.relative_to(REPO).as_posix()
        if relative.startswith((".venv/", "tests/")) or "/." in f"/{relative}":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not READERS.search(line) or line.lstrip().startswith("#"):
                continue
            if "torch.load(" in line and "weights_only=True" in line:
                continue
            if relative == "data/formats.py" and "_CifarUnpickler" in line:
                continue
            found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, found


# ----------------------------------------------------------------------------------------------------------
# A checkpoint damaged after it was written


def flip_byte_in_tensor_record(path: Path) -> str:
    """Flip one byte in the middle of the first tensor's data record of a `torch.save` zip; its name."""
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if re.search(r"/data/\d+$", info.filename))
    raw = bytearray(path.read_bytes())
    name_length, extra_length = struct.unpack(
        "<HH", raw[record.header_offset + 26 : record.header_offset + 30]
    )
    start = record.header_offset + 30 + name_length + extra_length
    raw[start + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    return record.filename


def test_a_checkpoint_with_one_flipped_byte_is_refused_in_one_sentence(tmp_path):
    path = tmp_path / "lenet_1_1.model"
    weights = {"conv.weight": torch.linspace(-1, 1, 200), "fc.bias": torch.ones(10)}
    torch.save(weights, path)
    assert torch.equal(read_checkpoint(path)["conv.weight"], weights["conv.weight"])
    record = flip_byte_in_tensor_record(path)
    loaded = torch.load(path, weights_only=True)  # what torch alone does: another weight, silently
    assert not torch.equal(loaded["conv.weight"], weights["conv.weight"])
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    line = refused_naming(info.value, path)
    assert record in line and "CRC-32" in line and "re-copy" in line


def test_a_checkpoint_with_a_damaged_zip_directory_is_refused(tmp_path):
    path = tmp_path / "lenet_1_1.model"
    torch.save({"w": torch.zeros(3)}, path)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")
    raw[central + 46] ^= 0x01  # the first letter of the last record's name in the directory
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError) as info:
        read_checkpoint(path)
    refused_naming(info.value, path)


def test_a_cifar_download_only_fetches_the_archive_and_reads_it_restricted(tmp_path, monkeypatch):
    """torchvision's CIFAR10 class would unpickle every batch with a plain pickle.load: it is never built."""
    import torchvision.datasets
    import torchvision.datasets.utils

    from data import sources

    monkeypatch.delenv(sources.NO_DOWNLOAD_ENV, raising=False)
    monkeypatch.setattr(sources, "_host_resolves", lambda url, timeout: True)
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "__init__", lambda *a, **k: 1 / 0)
    fetched = []

    def fake_fetch(url, download_root, filename=None, md5=None, **kwargs):
        fetched.append((url, filename, md5))
        write_cifar10(Path(download_root), per_batch=3, n_test=3)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fake_fetch)
    images, _ = data.load_split("cifar10", tmp_path, "train")
    cls = torchvision.datasets.CIFAR10
    assert fetched == [(cls.url, cls.filename, cls.tgz_md5)] and images.shape == (15, 3, 32, 32)


def test_tiny_imagenet_images_are_decoded_as_jpeg_only(tmp_path):
    """A file of another format under a .JPEG name is refused: no decoder but JPEG's is ever picked."""
    from helpers import write_tiny_imagenet
    from PIL import Image

    write_tiny_imagenet(tmp_path, numbers=(0, 1))
    disguised = tmp_path / "tiny-imagenet-200" / "test" / "images" / "test_1.JPEG"
    Image.new("RGB", (64, 64)).save(disguised, format="PNG")
    with pytest.raises(UserError) as info:
        data.load_split("tiny_imagenet", tmp_path, "test")
    refused_naming(info.value, disguised)
