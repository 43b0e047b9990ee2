import os

import pytest
import torch
from PIL import Image

import dfkd_core.data as data_module
from dfkd_core.data import default_data_dir, load_eval_set, load_train_subset, train_split_available

from .conftest import write_image_folder


def test_loads_test_split_only(image_root):
    data = load_eval_set(str(image_root))
    assert len(data) == 40 and data.images.shape == (40, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.classes[0] == "airplane" and data.labels.bincount().tolist() == [4] * 10
    assert data.name.endswith("test")


def test_bare_class_folder_is_the_eval_set(image_root):
    assert len(load_eval_set(str(image_root / "test"))) == 40


def test_decoded_tensors_are_cached_on_disk(image_root, monkeypatch):
    first = load_eval_set(str(image_root))
    cached = list((default_data_dir() / "decoded").glob("*.pt"))
    assert len(cached) == 1
    monkeypatch.setattr(data_module, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    second = load_eval_set(str(image_root))
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_cache_invalidated_when_files_change(image_root):
    load_eval_set(str(image_root))
    Image.new("RGB", (32, 32)).save(image_root / "test" / "cat" / "extra.png")
    assert len(load_eval_set(str(image_root))) == 41


def test_stratified_subset_is_fixed_and_balanced(image_root):
    data = load_eval_set(str(image_root))
    a, b = data.stratified_subset(2, seed=5), data.stratified_subset(2, seed=5)
    assert len(a) == 20 and a.labels.bincount().tolist() == [2] * 10
    assert torch.equal(a.images, b.images)


def test_other_sizes_are_resized(tmp_path):
    write_image_folder(tmp_path / "big", 1, classes=("a", "b"), size=48)
    data = load_eval_set(str(tmp_path / "big"))
    assert data.images.shape == (2, 3, 32, 32)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found"):
        load_eval_set(str(tmp_path / "empty"))


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither 'cifar10' nor an existing directory"):
        load_eval_set(str(tmp_path / "nope"))


def test_corrupt_image_is_named(image_root):
    bad = image_root / "test" / "dog" / "0001.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot decode image .*dog.*0001\.png"):
        load_eval_set(str(image_root))


def test_train_subset_only_for_the_real_image_baseline(image_root, test_only_root):
    subset = load_train_subset(str(image_root), per_class=2)
    assert len(subset) == 20 and "real-image baseline" in subset.name
    assert train_split_available(str(image_root)) and not train_split_available(str(test_only_root))
    with pytest.raises(FileNotFoundError, match="no train/"):
        load_train_subset(str(test_only_root), per_class=1)


def test_hidden_folders_are_not_classes(image_root):
    hidden = image_root / "test" / ".ipynb_checkpoints"
    hidden.mkdir()
    Image.new("RGB", (32, 32)).save(hidden / "cat-checkpoint.png")
    data = load_eval_set(str(image_root))
    assert ".ipynb_checkpoints" not in data.classes and len(data.classes) == 10 and len(data) == 40


def test_cifar10_test_split_never_opens_a_training_batch(tmp_path, monkeypatch):
    """torchvision's CIFAR10 hashes all six batch files whichever split is asked for; the evaluation
    split must load with no training batch on disk, and open none when they are there."""
    import hashlib
    import pickle

    folder = tmp_path / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batch = {"data": torch.randint(0, 256, (4, 3 * 32 * 32), dtype=torch.uint8).numpy(), "labels": [0, 1, 2, 3]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    digest = hashlib.md5((folder / "test_batch").read_bytes()).hexdigest()
    monkeypatch.setenv("DFKD_DATA_DIR", str(tmp_path))
    meta_digest = hashlib.md5((folder / "batches.meta").read_bytes()).hexdigest()
    split_class = data_module._one_split_cifar10()
    monkeypatch.setattr(split_class, "test_list", [["test_batch", digest]])
    monkeypatch.setattr(split_class, "meta", {"filename": "batches.meta", "key": "label_names", "md5": meta_digest})

    test_set = load_eval_set("cifar10", download=False)  # no data_batch_* exists: the stock class would refuse
    assert len(test_set) == 4 and test_set.labels.tolist() == [0, 1, 2, 3]

    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(b"training images")
    opened = []
    monkeypatch.setattr(
        "builtins.open", lambda path, *a, _open=open, **k: (opened.append(str(path)), _open(path, *a, **k))[1]
    )
    load_eval_set("cifar10", download=False)
    assert opened and not [p for p in opened if "data_batch" in p]


def test_two_writers_of_the_cache_never_collide(image_root, tmp_path, monkeypatch):
    """Two runs decoding the same folder at once (threads of one app process) each write their own
    temporary file: neither moves the other's away, and the cache ends complete."""
    monkeypatch.setenv("DFKD_DATA_DIR", str(tmp_path))
    replace = os.replace
    nested = []

    def replace_after_another_writer(source, target):
        if not nested:  # the first writer is overtaken by a second one decoding the same folder
            nested.append(source)
            load_eval_set(str(image_root))
        return replace(source, target)

    monkeypatch.setattr(os, "replace", replace_after_another_writer)
    first = load_eval_set(str(image_root))
    monkeypatch.setattr(os, "replace", replace)
    assert nested and len(first) == len(load_eval_set(str(image_root)))
    assert len(list((tmp_path / "decoded").iterdir())) == 1, "one complete cache file, no temporary left"


def test_the_folder_scan_ends_on_link_loops_and_skips_what_is_not_a_file(tmp_path):
    """Two links back to their own class folder (a loop that branches) and a FIFO named like an image: the scan
    ends, finds each real image once, and never opens the FIFO (reading one blocks forever)."""
    import threading

    root = write_image_folder(tmp_path / "data" / "test", 2, classes=("a", "b"))
    os.symlink(root / "a", root / "a" / "again")
    os.symlink(root / "a", root / "a" / "and_again")
    os.mkfifo(root / "b" / "x.jpg")
    found = {}
    scan = threading.Thread(target=lambda: found.update(images=load_eval_set(str(tmp_path / "data"))), daemon=True)
    scan.start()
    scan.join(timeout=30)
    assert not scan.is_alive(), "the scan did not end"
    assert len(found["images"]) == 4, "each real image once, the FIFO left out"


def test_an_empty_class_folder_is_named_in_a_note(image_root, teacher):
    from dfkd_core.evaluate import align_classes

    for file in (image_root / "test" / "cat").iterdir():
        file.unlink()
    data, note = align_classes(load_eval_set(str(image_root)), teacher, "mine")
    assert len(data) == 36
    assert note == "the class folder cat of 'mine' holds no images: accuracy is measured on the other classes only"
    _, clean = align_classes(load_eval_set(str(image_root / "train")), teacher, "mine")
    assert clean is None
