import numpy as np
import pytest
import torch

from ffl.data import ArrayDataset, Augment, DatasetNotFound, DeviceLoader, Split, load_cifar, make_shapes
from ffl.data.cifar import read_cifar
from ffl.data.synthetic import CLASSES
from tests.cifar_archive import trust_binary_archive, trust_written_archive, write_cifar, write_cifar_binary


def tiny_shapes(seed=0):
    return make_shapes(train_per_class=12, test_per_class=4, val_fraction=0.25, seed=seed)


def test_shapes_is_deterministic_balanced_and_cifar_shaped():
    a, b = tiny_shapes(), tiny_shapes()
    for split in ("train", "val", "test"):
        assert np.array_equal(a.splits[split].images, b.splits[split].images)
        assert np.array_equal(a.splits[split].labels, b.splits[split].labels)
    assert not np.array_equal(a.splits["train"].images, tiny_shapes(seed=1).splits["train"].images)
    assert a.splits["train"].images.shape[1:] == (3, 32, 32) and a.splits["train"].images.dtype == np.uint8
    assert a.num_classes == len(CLASSES) >= 10
    assert np.bincount(a.splits["val"].labels).tolist() == [3] * 10  # stratified 25% of 12
    assert np.bincount(a.splits["test"].labels).tolist() == [4] * 10


def test_validation_split_is_disjoint_from_training():
    d = tiny_shapes()
    train = {x.tobytes() for x in d.splits["train"].images}
    assert not any(x.tobytes() in train for x in d.splits["val"].images)


def test_prepared_arrays_round_trip(tmp_path):
    d = tiny_shapes()
    d.save(tmp_path)
    e = ArrayDataset.load(tmp_path)
    assert e.classes == d.classes and e.mean == pytest.approx(d.mean)
    assert np.array_equal(e.splits["test"].images, d.splits["test"].images)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_loads_through_torchvision_with_checksums(tmp_path, monkeypatch, name):
    lists = write_cifar(tmp_path, name)
    trust_written_archive(monkeypatch, name, lists)
    d = load_cifar(name, tmp_path, val_fraction=0.1, seed=0)
    classes = 10 if name == "cifar10" else 100
    assert d.num_classes == classes
    total_train = 20 * (5 if name == "cifar10" else 1)
    assert len(d.splits["train"]) + len(d.splits["val"]) == total_train
    assert d.splits["test"].images.shape == (20, 3, 32, 32)


def test_corrupted_cifar_file_is_refused_naming_root_and_files(tmp_path, monkeypatch):
    lists = write_cifar(tmp_path, "cifar10")
    trust_written_archive(monkeypatch, "cifar10", lists)
    victim = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    blob = bytearray(victim.read_bytes())
    blob[100] ^= 0xFF
    victim.write_bytes(bytes(blob))
    with pytest.raises(DatasetNotFound) as e:
        load_cifar("cifar10", tmp_path, 0.1, 0)
    assert str(tmp_path) in str(e.value) and "data_batch_3" in str(e.value)


def test_missing_cifar_says_where_and_what(tmp_path):
    with pytest.raises(DatasetNotFound, match=r"cifar100 not found .* cifar-100-python/train"):
        load_cifar("cifar100", tmp_path, 0.1, 0)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("point_at", ["parent", "folder"])
def test_cifar_binary_version_reads_images_and_labels_as_written(tmp_path, monkeypatch, name, point_at):
    form, (train_x, train_y), (test_x, test_y) = write_cifar_binary(tmp_path, name)
    trust_binary_archive(monkeypatch, name, form)
    root = tmp_path if point_at == "parent" else tmp_path / form.folder  # data.root: either folder
    train, test, classes, found = read_cifar(name, root)
    assert found == "binary" and len(classes) == (10 if name == "cifar10" else 100) and classes[3] == "class3"
    assert np.array_equal(train.images, train_x) and np.array_equal(train.labels, train_y)
    assert np.array_equal(test.images, test_x) and np.array_equal(test.labels, test_y)
    # the channel planes: record bytes 1..1024 (CIFAR-100: 2..1025) are the red plane, row-major
    record = (tmp_path / form.folder / form.train[0][0]).read_bytes()[: form.record]
    assert bytes(train.images[0, 0].ravel()) == record[form.label_bytes : form.label_bytes + 1024]
    assert train.labels[0] == record[form.label_index]
    d = load_cifar(name, root, val_fraction=0.1, seed=0)
    assert len(d.splits["train"]) + len(d.splits["val"]) == len(train_y) and d.splits["test"].images.shape[0] == 20


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", "cifar-10-batches-bin/data_batch_4.bin is missing"),
        ("truncated", "cifar-10-batches-bin/data_batch_4.bin is 61,000 bytes, the official file 61,460 (truncated)"),
        ("altered", "cifar-10-batches-bin/data_batch_4.bin has md5"),
    ],
)
def test_a_damaged_binary_file_is_named(tmp_path, monkeypatch, damage, message):
    form, *_ = write_cifar_binary(tmp_path, "cifar10")
    trust_binary_archive(monkeypatch, "cifar10", form)
    victim = tmp_path / form.folder / "data_batch_4.bin"
    blob = bytearray(victim.read_bytes())
    if damage == "missing":
        victim.unlink()
    elif damage == "truncated":
        victim.write_bytes(bytes(blob[:61_000]))
    else:
        blob[5000] ^= 0xFF
        victim.write_bytes(bytes(blob))
    with pytest.raises(DatasetNotFound) as e:
        load_cifar("cifar10", tmp_path, 0.1, 0)
    assert message in str(e.value) and str(tmp_path) in str(e.value)
    assert "(binary version)" in str(e.value) and "cifar-10-binary.tar.gz" in str(e.value)


def test_the_official_binary_sums_are_the_ones_checked(tmp_path):
    """Without the test's own digests, a written archive is refused: the table holds the official
    (CIFAR-10: md5, CIFAR-100: MXNet's SHA-1) sums, not whatever is on disk."""
    write_cifar_binary(tmp_path, "cifar10", per_file=10_000)
    with pytest.raises(DatasetNotFound, match=r"data_batch_1.bin has md5 \w+, the official file 5dd7e06a"):
        load_cifar("cifar10", tmp_path, 0.1, 0)


def make_split(n=6):
    images = np.arange(n * 3 * 32 * 32, dtype=np.int64).reshape(n, 3, 32, 32) % 251
    return Split(images.astype(np.uint8), np.arange(n) % 3)


def test_loader_without_augmentation_only_normalises():
    split = make_split()
    loader = DeviceLoader(split, 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    batches = list(loader)
    assert [len(y) for _, y in batches] == [4, 2]
    x = torch.cat([b[0] for b in batches])
    expected = (torch.from_numpy(split.images).float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected, atol=1e-5)


def test_loader_crops_are_windows_of_the_reflect_padded_image_and_flips_mirror():
    split = make_split(8)
    loader = DeviceLoader(split, 8, (0, 0, 0), (1 / 255, 1 / 255, 1 / 255), augment=Augment(4, "reflect", True))
    x, _ = next(iter(loader))
    padded = torch.nn.functional.pad(torch.from_numpy(split.images).float(), (4, 4, 4, 4), mode="reflect")
    for i in range(8):
        windows = [padded[i, :, r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(x[i], w) or torch.equal(x[i], w.flip(2)) for w in windows)


def test_loader_epochs_are_reproducible_and_differ_from_each_other():
    split = make_split(16)

    def epoch(e):
        loader = DeviceLoader(split, 16, (0, 0, 0), (1, 1, 1), augment=Augment(), shuffle=True, seed=3)
        loader.set_epoch(e)
        return next(iter(loader))

    assert all(torch.equal(a, b) for a, b in zip(epoch(2), epoch(2)))
    assert not torch.equal(epoch(2)[1], epoch(3)[1])


def test_drop_last_and_channels_last():
    loader = DeviceLoader(make_split(10), 4, (0, 0, 0), (1, 1, 1), drop_last=True, channels_last=True)
    assert len(loader) == 2 and loader.num_samples == 8
    x, _ = next(iter(loader))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_views_are_independent_augmentations_and_the_first_is_the_one_view_batch():
    split = make_split(16)
    kw = dict(augment=Augment(), shuffle=True, seed=3)
    one = DeviceLoader(split, 8, (0, 0, 0), (1, 1, 1), **kw)
    three = DeviceLoader(split, 8, (0, 0, 0), (1, 1, 1), **kw, views=3)
    for (x, y), (xs, ys) in zip(one, three, strict=True):
        assert xs.shape[0] == 3 * len(y) and torch.equal(ys, y)
        v0, v1, v2 = xs.chunk(3)
        assert torch.equal(v0, x)  # a method with one view trains on what it always did
        assert not torch.equal(v1, v0) and not torch.equal(v2, v1)  # crops and flips of their own
    again = DeviceLoader(split, 8, (0, 0, 0), (1, 1, 1), **kw, views=3)
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(three, again))
