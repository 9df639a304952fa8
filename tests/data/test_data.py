import logging
import warnings

import numpy as np
import pytest
import torch
from conftest import ORL, make_faces
from PIL import Image

from facetrain.config import DataConfig
from facetrain.data import EpochSampler, build_datasets, scan_identities
from facetrain.data.preprocess import Preprocess, load_image
from facetrain.errors import DataError


def test_bundled_orl_is_complete():
    identities = scan_identities(ORL)
    assert len(identities) == 40 and all(len(paths) == 10 for _, paths in identities)
    assert (ORL / "README.txt").read_text().count("Olivetti Research Laboratory") >= 1


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_any_common_mode_becomes_three_channels(tmp_path, mode):
    array = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * (100 if mode == "I;16" else 1)
    image = Image.fromarray(
        array.astype(np.uint16 if mode == "I;16" else np.uint8)
        if mode in ("L", "I;16")
        else (array % 256).astype(np.uint8)
    ).convert(mode)
    path = tmp_path / ("x.pgm" if mode in ("L", "I;16") else "x.png")
    image.save(path)
    tensor = Preprocess(32).load(path)
    assert tensor.shape == (3, 32, 32)
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    if mode == "I;16":  # scaled to 8 bits, not clipped to white
        assert load_image(path).getextrema()[0][1] < 255 or tensor.std() > 0.1


def test_preprocess_range_crop_and_flip(tmp_path):
    pixels = np.zeros((100, 80, 3), dtype=np.uint8)
    pixels[:, :40] = 255  # left half white
    path = tmp_path / "half.png"
    Image.fromarray(pixels).save(path)
    plain = Preprocess(16).load(path)
    assert plain.max().item() == pytest.approx(1.0) and plain.min().item() == pytest.approx(-1.0)
    flipped = Preprocess(16).load(path, flip=True)
    assert torch.equal(flipped, plain.flip(-1))
    # A 40-pixel centre crop of an 80-wide image keeps columns 20..59: half white, half black.
    cropped = Preprocess(16, center_crop=40).load(path)
    assert cropped[0, 0, 0] > 0.9 and cropped[0, 0, -1] < -0.9
    assert torch.allclose(Preprocess(16, center_crop=0.5).load(path), cropped, atol=1e-6)
    with pytest.raises(DataError, match="data.center_crop=120 is larger than"):
        Preprocess(16, center_crop=120).load(path)


def test_unreadable_image_names_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match="cannot read image .*broken.jpg"):
        load_image(path)


def test_missing_and_empty_roots(tmp_path):
    with pytest.raises(DataError, match="data.root: folder .* does not exist"):
        build_datasets(DataConfig(root=str(tmp_path / "missing")))
    (tmp_path / "empty" / "person").mkdir(parents=True)
    with pytest.raises(DataError, match="no identity folders with images"):
        build_datasets(DataConfig(root=str(tmp_path / "empty")))
    with pytest.raises(DataError, match="data.root is not set"):
        build_datasets(DataConfig(root=""))


def test_small_identities_are_dropped_and_logged(tmp_path, caplog):
    root = make_faces(tmp_path / "f", identities=4, per_identity=3)
    for path in list((root / "id01").iterdir())[1:]:
        path.unlink()
    with caplog.at_level(logging.INFO, logger="facetrain"):
        data = build_datasets(DataConfig(root=str(root), min_images_per_identity=2))
    assert data.num_classes == 3 and "id01" not in data.train.class_names
    assert "dropped 1 of 4 identities" in caplog.text


def test_identity_split_is_disjoint_and_seeded(tmp_path):
    root = make_faces(tmp_path / "f", identities=8, per_identity=3)
    first = build_datasets(DataConfig(root=str(root), val_identities=3, split_seed=1))
    again = build_datasets(DataConfig(root=str(root), val_identities=3, split_seed=1))
    assert set(first.train.class_names).isdisjoint(first.val.class_names)
    assert len(first.val.class_names) == 3 and first.num_classes == 5
    assert first.val.class_names == again.val.class_names
    with pytest.raises(DataError, match="data.val_identities=7 leaves fewer than 2"):
        build_datasets(DataConfig(root=str(root), val_identities=7))


def test_separate_val_root(tmp_path):
    train = make_faces(tmp_path / "train", identities=3, per_identity=2)
    held = make_faces(tmp_path / "held", identities=2, per_identity=2, seed=5)
    data = build_datasets(DataConfig(root=str(train), val_root=str(held)))
    assert data.num_classes == 3 and len(data.val) == 4


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    sampler = EpochSampler(20, seed=3, hflip=True)
    sampler.set_epoch(2)
    full = list(sampler)
    assert sorted(i for i, _ in full) == list(range(20))
    assert any(flip for _, flip in full) and not all(flip for _, flip in full)
    torch.manual_seed(123)  # global RNG state must not matter
    sampler.set_epoch(2, start=8)
    assert list(sampler) == full[8:] and len(sampler) == 12
    sampler.set_epoch(3)
    assert list(sampler) != full
    no_flip = EpochSampler(20, seed=3, hflip=False)
    assert not any(flip for _, flip in no_flip)


def test_held_out_root_too_small(tmp_path):
    train = make_faces(tmp_path / "train", identities=3, per_identity=2)
    one = make_faces(tmp_path / "one", identities=1, per_identity=3, seed=2)
    with pytest.raises(DataError, match="data.val_root: 1 held-out identity left"):
        build_datasets(DataConfig(root=str(train), val_root=str(one)))
    singles = make_faces(tmp_path / "singles", identities=3, per_identity=1, seed=3)
    with pytest.raises(DataError, match="no held-out identity has 2 images"):
        build_datasets(DataConfig(root=str(train), val_root=str(singles), min_images_per_identity=1))


def test_decompression_bomb_is_an_unreadable_image(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (64, 64)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is then more than twice Pillow's limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no Pillow warning escapes either
        with pytest.raises(DataError, match="'.*big.png' would decode to more than .* Mpx, over the 64 Mpx limit"):
            load_image(path)


def test_preprocess_normalises_exactly_as_per_channel_normalize():
    from torchvision.transforms.v2 import functional as TF

    from facetrain.data import MEAN, STD

    pixels = (torch.rand(24, 24, 3, generator=torch.Generator().manual_seed(0)) * 255).byte()
    image = Image.fromarray(pixels.numpy())  # square, at the output size: no resize
    expected = TF.normalize(TF.pil_to_tensor(image).float().div(255.0), MEAN, STD)
    assert torch.equal(Preprocess(24)(image), expected)
    assert torch.equal(Preprocess(24)(image, flip=True), expected.flip(-1))


def test_pillow_warnings_stay_quiet_when_images_decode_in_threads(tmp_path):
    """align decodes in threads, under one quiet_pillow() of the main thread (catch_warnings in each thread
    could leave another thread's filters behind): Pillow's notices never reach the user, in a thread or in
    the main thread, and the process's warning filters come out as they went in."""
    from concurrent.futures import ThreadPoolExecutor

    from facetrain.data.images import quiet_pillow

    palette = Image.new("P", (24, 24))
    palette.putpalette([i % 256 for i in range(768)])
    palette.save(tmp_path / "palette.png", transparency=bytes(10))  # Pillow warns when this becomes RGB
    before = list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_pillow(), ThreadPoolExecutor(4) as pool:
            images = list(pool.map(lambda _: load_image(tmp_path / "palette.png"), range(32)))
        images.append(load_image(tmp_path / "palette.png"))  # the main thread quiets its own decode
        assert [str(w.message) for w in caught] == []
        warnings.warn("a warning of someone else's still shows", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of someone else's still shows"]
    assert all(image.mode == "RGB" and image.size == (24, 24) for image in images)
    assert list(warnings.filters) == before
