"""Image-file datasets (ImageNet, any ImageFolder): torchvision's parsing and checksums, the prepared
index, and a loader whose batches depend on (seed, epoch) alone."""

import numpy as np
import pytest
import torch
from PIL import Image

from ffl.data import (
    DatasetNotFound,
    FileDataset,
    FileLoader,
    FileSettings,
    load_dataset,
    load_imagefolder,
    load_imagenet,
    split_loader,
)
from tests.imagenet_archive import WNIDS, trust_written_archives, write_imagefolder, write_imagenet, write_png_header


@pytest.fixture
def imagenet_root(tmp_path, monkeypatch):
    root = tmp_path / "imagenet"
    trust_written_archives(monkeypatch, write_imagenet(root))
    return root


def test_imagenet_parses_the_real_archives_with_their_checksums(imagenet_root):
    data = load_imagenet(imagenet_root, val_fraction=1 / 3, seed=0)
    assert data.classes == list(WNIDS)  # leaves of meta.mat only, in WordNet-id order
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 12, "val": 6, "test": 6}
    assert np.bincount(data.splits["val"].labels).tolist() == [2, 2, 2]  # stratified
    assert not set(data.splits["val"].paths) & set(data.splits["train"].paths)
    # Every test image sits in the class folder its ground-truth line names, and carries that label.
    for path, label in zip(data.splits["test"].paths, data.splits["test"].labels):
        assert path.startswith(f"val/{WNIDS[label]}/ILSVRC2012_val_")
        assert (imagenet_root / path).exists()
    # Once extracted, the dataset opens from the folders, to the same index.
    again = load_imagenet(imagenet_root, val_fraction=1 / 3, seed=0)
    assert np.array_equal(again.splits["train"].paths, data.splits["train"].paths)


def test_corrupted_imagenet_archive_is_refused_before_anything_is_extracted(imagenet_root):
    archive = imagenet_root / "ILSVRC2012_img_train.tar"
    blob = bytearray(archive.read_bytes())
    blob[2000] ^= 0xFF
    archive.write_bytes(bytes(blob))
    with pytest.raises(DatasetNotFound) as e:
        load_imagenet(imagenet_root, val_fraction=0.1, seed=0)
    message = str(e.value)
    assert "imagenet not found or corrupted under" in message and "ILSVRC2012_img_train.tar" in message
    assert "ILSVRC2012_devkit_t12.tar.gz" in message  # the whole expected set is named
    assert not (imagenet_root / "train").exists()


def test_imagefolder_layout_and_its_errors(tmp_path):
    write_imagefolder(tmp_path / "ds")
    data = load_imagefolder(tmp_path / "ds", val_fraction=0.25, seed=0)
    assert data.classes == ["cat", "dog"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 12, "val": 4, "test": 6}
    with pytest.raises(DatasetNotFound, match=r"imagefolder under .*nowhere: train/ is missing"):
        load_imagefolder(tmp_path / "nowhere", 0.1, 0)
    write_imagefolder(tmp_path / "odd", classes=("cat",), per_class={"val": 1})
    write_imagefolder(tmp_path / "odd", classes=("cat", "cow"), per_class={"train": 2})
    with pytest.raises(DatasetNotFound, match=r"different classes \(cow\)"):
        load_imagefolder(tmp_path / "odd", 0.1, 0)


def test_each_file_of_an_imagefolder_is_indexed_once_under_its_own_class(tmp_path):
    import os

    write_imagefolder(tmp_path / "clean")
    write_imagefolder(tmp_path / "ds")
    cat, dog = tmp_path / "ds/train/cat", tmp_path / "ds/train/dog"
    (cat / "loop").symlink_to("..")  # the class folder's parent: every class's images again, as cat
    (cat / "dogs.jpg").symlink_to(dog / "0.jpg")  # a dog, linked from the cat folder
    (cat / "again.jpg").symlink_to(cat / "1.jpg")  # the same cat twice
    os.link(cat / "2.jpg", cat / "hard.jpg")
    (tmp_path / "ds/val/dog/train.png").symlink_to(dog / "3.jpg")  # a training image as a test image
    (cat / "gone.jpg").symlink_to(cat / "nothing.jpg")
    with pytest.warns(UserWarning) as caught:
        data = load_imagefolder(tmp_path / "ds", val_fraction=0.25, seed=0)
    clean = load_imagefolder(tmp_path / "clean", val_fraction=0.25, seed=0)
    for split in ("train", "val", "test"):  # exactly the dataset without the links
        assert data.splits[split].paths.tolist() == clean.splits[split].paths.tolist()
        assert data.splits[split].labels.tolist() == clean.splits[split].labels.tolist()
    files = [os.path.realpath(tmp_path / "ds" / p) for s in data.splits.values() for p in s.paths]
    assert len(files) == len(set(files)) == 22  # no file in two splits, nor twice in one
    assert [str(w.message) for w in caught] == [
        f"imagefolder under {tmp_path / 'ds'}: 6 files skipped (links to folders (not followed): 1; "
        "files indexed already (links or hard links to one file): 2; links out of their class folder: 2; "
        "broken links: 1)"
    ]


@pytest.mark.parametrize(
    ("size", "message"),
    [
        ((9000, 8000), "9000 x 8000 pixels, beyond the 67 million ffl decodes"),
        ((200_000, 20), "200000 x 20 pixels (655 million once resized to 256), beyond the 67 million ffl decodes"),
        ((20_000, 10_000), "more than 179 million pixels, beyond the 67 million ffl decodes"),
    ],
)
def test_an_image_declaring_more_pixels_than_ffl_decodes_is_named_before_it_is_decoded(tmp_path, size, message):
    from ffl.errors import DataError

    write_imagefolder(tmp_path / "ds", per_class={"train": 4, "val": 1})
    write_png_header(tmp_path / "ds/val/cat/0.png", *size)  # a few dozen bytes on disk
    data = load_imagefolder(tmp_path / "ds", val_fraction=0.25, seed=0)
    loader = split_loader(data, "test", 2, "cpu", files=FileSettings(image_size=224, resize=256, workers=0))
    with pytest.raises(DataError) as e:
        next(iter(loader))
    assert str(e.value).startswith(f"{tmp_path / 'ds/val/cat/0.png'}: {message}; scale it down or remove it")


def test_prepared_index_round_trips_and_says_its_format(tmp_path):
    write_imagefolder(tmp_path / "ds")
    data = load_imagefolder(tmp_path / "ds", val_fraction=0.25, seed=0)
    data.save(tmp_path / "prepared")
    back = load_dataset(tmp_path / "prepared")
    assert isinstance(back, FileDataset) and back.root == data.root and back.classes == data.classes
    for split in ("train", "val", "test"):
        assert np.array_equal(back.splits[split].paths, data.splits[split].paths)
        assert np.array_equal(back.splits[split].labels, data.splits[split].labels)
    assert not list((tmp_path / "prepared").glob("*.tmp"))


def both_forms(tmp_path):
    """The same small dataset in each prepared form: shapes as arrays, an image folder as files."""
    from ffl.data import make_shapes

    write_imagefolder(tmp_path / "ds", per_class={"train": 8, "val": 2})
    return {
        "arrays": make_shapes(train_per_class=4, test_per_class=2, val_fraction=0.25, seed=0),
        "files": load_imagefolder(tmp_path / "ds", val_fraction=0.25, seed=0),
    }


def test_every_prepared_form_round_trips_through_the_one_loader_and_is_refused_the_same_way(tmp_path):
    from ffl.data.prepared import FORMS

    forms = both_forms(tmp_path)
    assert set(forms) == set(FORMS)
    for form, data in forms.items():
        data.save(tmp_path / form)
        back = load_dataset(tmp_path / form)
        assert type(back) is FORMS[form] and back.form == form
        assert (back.name, back.classes, back.num_classes) == (data.name, data.classes, len(data.classes))
        assert back.mean == pytest.approx(data.mean) and back.std == pytest.approx(data.std)
        items = back.split.items
        for split in ("train", "val", "test"):
            assert np.array_equal(getattr(back.splits[split], items), getattr(data.splits[split], items))
            assert np.array_equal(back.splits[split].labels, data.splits[split].labels)
        one_short = data.splits["test"].labels[:-1]
        with pytest.raises(ValueError, match=f"^{len(one_short) + 1} {items} but {len(one_short)} labels$"):
            back.split(getattr(data.splits["test"], items), one_short)


def test_split_loader_gives_both_forms_the_same_batching(tmp_path):
    options = ("shuffle", "drop_last", "seed", "lockstep", "views", "channels_last", "batch_size")
    seen = {}
    for form, data in both_forms(tmp_path).items():
        files = FileSettings(image_size=24, resize=28, workers=0)
        train = split_loader(data, "train", 4, "cpu", train=True, seed=5, views=2, channels_last=True, files=files)
        test = split_loader(data, "test", 4, "cpu", seed=5, views=2, files=files)
        seen[form] = [tuple(getattr(loader, o) for o in options) for loader in (train, test)]
    assert seen["arrays"] == seen["files"] == [(True, True, 5, True, 2, True, 4), (False, False, 5, False, 1, False, 4)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    write_imagefolder(root, per_class={"train": 10, "val": 3})
    return load_imagefolder(root, val_fraction=0.2, seed=0)


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def train_loader(data, workers, seed=0):
    return FileLoader(
        data.splits["train"], data.root, 4, data.mean, data.std, train=True, shuffle=True, drop_last=True,
        seed=seed, channels_last=True, files=FileSettings(image_size=24, resize=28, workers=workers),
    )  # fmt: skip


def test_an_epoch_depends_on_seed_and_epoch_not_on_the_workers(folder):
    rng_before = torch.get_rng_state()
    serial = batches(train_loader(folder, workers=0), epoch=3)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the training RNG is left alone
    parallel = batches(train_loader(folder, workers=2), epoch=3)
    assert len(serial) == len(parallel) == 16 // 4
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, y = serial[0]
    assert x.shape == (4, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.is_contiguous(memory_format=torch.channels_last)
    other_epoch = batches(train_loader(folder, workers=0), epoch=4)
    assert not torch.equal(torch.cat([b[0] for b in other_epoch]), torch.cat([b[0] for b in serial]))
    other_seed = batches(train_loader(folder, workers=0, seed=1), epoch=3)
    assert not torch.equal(torch.cat([b[0] for b in other_seed]), torch.cat([b[0] for b in serial]))


def test_evaluation_is_resize_then_centre_crop_normalised_in_order(folder):
    loader = split_loader(folder, "test", 4, "cpu", files=FileSettings(image_size=24, resize=28, workers=0))
    assert len(loader) == 2 and loader.num_samples == 6  # every image, the last batch short
    x, y = next(iter(loader))
    assert y.tolist() == folder.splits["test"].labels[:4].tolist()
    # The first image by hand: 40x44 -> shorter side 28 -> 28x30 -> centre 24x24.
    image = Image.open(f"{folder.root}/{folder.splits['test'].paths[0]}").convert("RGB")
    image = image.resize((30, 28), Image.BILINEAR)
    pixels = torch.from_numpy(np.array(image)[2:26, 3:27]).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(folder.mean).view(3, 1, 1), torch.tensor(folder.std).view(3, 1, 1)
    torch.testing.assert_close(x[0], (pixels - mean) / std, atol=2e-2, rtol=0)


def test_split_loader_keeps_in_memory_datasets_on_the_device_loader():
    from ffl.data import DeviceLoader, make_shapes

    shapes = make_shapes(train_per_class=4, test_per_class=2, val_fraction=0.25, seed=0)
    train = split_loader(shapes, "train", 8, "cpu", train=True)
    assert isinstance(train, DeviceLoader) and train.drop_last and train.augment is not None
    test = split_loader(shapes, "test", 8, "cpu")
    assert not test.drop_last and test.augment is None and test.num_samples == 20


def test_ffl_trains_imagenet_resnets_on_the_imagenet_archives(imagenet_root):
    from ffl import FFL, TrainConfig, Trainer, evaluate

    data = load_imagenet(imagenet_root, val_fraction=1 / 3, seed=0)
    files = FileSettings(image_size=64, resize=72, workers=0)
    method = FFL(["resnet18", "resnet18"], num_classes=data.num_classes)  # branches share conv1..layer3
    train = split_loader(data, "train", 4, "cpu", train=True, files=files)
    history = Trainer(method, train, TrainConfig(epochs=1, milestones=[])).fit()
    assert np.isfinite(history[-1]["train/loss/total"])
    errors = evaluate(method, split_loader(data, "test", 4, "cpu", files=files))
    assert set(errors) == {"sub0", "sub1", "ensemble", "fused"}


def test_file_settings_refuse_a_resize_smaller_than_the_crop():
    with pytest.raises(ValueError, match=r"resize \(200\) must be at least image_size \(224\)"):
        FileSettings(image_size=224, resize=200)


def test_image_file_views_are_independent_and_the_first_is_the_one_view_batch(folder):
    def loader(views):
        return FileLoader(
            folder.splits["train"], folder.root, 4, folder.mean, folder.std, train=True, shuffle=True,
            drop_last=True, files=FileSettings(image_size=24, resize=28, workers=0), views=views,
        )  # fmt: skip

    for (x, y), (xs, ys) in zip(batches(loader(1), 1), batches(loader(2), 1), strict=True):
        assert torch.equal(ys, y) and torch.equal(xs[: len(y)], x)
        assert not torch.equal(xs[len(y) :], x)
