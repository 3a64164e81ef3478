"""mnistnet.images: a picture of a digit (PNG or JPEG, through Pillow) made into an MNIST
digit, as the demo page prepares a drawing; and `mnistnet predict` on pictures, with --show.

The same preparation runs in the page's JavaScript: tests/test_demo.py holds the two to the
same output on the same drawing in headless Chromium. Skips without Pillow (the `image`
extra), except that MNISTNET_REQUIRE=image makes that a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import mnistnet as mn
from mnistnet import images
from mnistnet.cli import main

SIDE = 28
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def required(what: str) -> bool:
    """True if MNISTNET_REQUIRE (comma-separated) lists `what`: skipping it is then a failure."""
    return what in os.environ.get("MNISTNET_REQUIRE", "").replace(" ", "").split(",")


@pytest.fixture(scope="module")
def pil():
    try:
        from PIL import Image
    except ImportError:
        reason = 'Pillow is not installed (pip install "mnistnet[image]")'
        if required("image"):
            pytest.fail(f"{reason} (MNISTNET_REQUIRE={os.environ['MNISTNET_REQUIRE']})")
        pytest.skip(reason)
    return Image


def centre_of_mass(image: np.ndarray) -> np.ndarray:
    """(row, column), in pixels counted from 0."""
    return (np.indices(image.shape) * image).sum(axis=(1, 2)) / image.sum()


def ink_box(image: np.ndarray, threshold: float = 0.05) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) rows and columns holding ink, inclusive."""
    rows = np.flatnonzero((image >= threshold).any(axis=1))
    columns = np.flatnonzero((image >= threshold).any(axis=0))
    return rows[0], rows[-1], columns[0], columns[-1]


def a_seven(height: int = 300, width: int = 240) -> np.ndarray:
    """uint8 light strokes on black: a 7, off centre, as a drawing or a photo would be."""
    rows, columns = np.indices((height, width))
    bar = (np.abs(rows - 60) < 9) & (columns > 50) & (columns < 190)
    # the stem: from the bar's right end down to the lower left
    t = (rows - 60) / 180
    stem = (np.abs(columns - (190 - 90 * t)) < 10) & (t >= 0) & (t <= 1)
    picture = np.where(bar | stem, 255, 0).astype(np.uint8)
    return picture


# --------------------------------------------------------------------------- the preparation


def test_the_preparation_averages_areas_and_centres_the_mass() -> None:
    """As the page (tests/test_demo.py): a 30x21 patch scaled to 20x14 is the mean of each
    1.5x1.5 pixels it covers, placed with its centre of mass at pixel (14, 14)."""
    patch = np.random.default_rng(2).uniform(0.1, 1, size=(30, 21)).astype(np.float32)
    gray = np.zeros((280, 280), dtype=np.float32)
    gray[100:130, 37:58] = patch
    prepared = images.prepare_digit(gray)
    doubled = np.kron(patch, np.ones((2, 2)))
    scaled = doubled.reshape(20, 3, 14, 3).mean(axis=(1, 3))
    top, left = np.round(14 - centre_of_mass(scaled)).astype(int)
    expected = np.zeros((SIDE, SIDE))
    expected[top:top + 20, left:left + 14] = scaled
    assert prepared.dtype == np.float32 and prepared.shape == (SIDE, SIDE)
    np.testing.assert_allclose(prepared, expected, atol=1e-6)


def test_the_preparation_stays_inside_a_box_in_the_corner() -> None:
    gray = np.zeros((280, 280), dtype=np.float32)
    gray[-161:, -161:] = 1
    expected = np.zeros((SIDE, SIDE))
    expected[5:25, 5:25] = 1  # centre of mass 9.5: moved by 14 - 9.5, rounded up (as JS)
    np.testing.assert_allclose(images.prepare_digit(gray), expected, atol=1e-6)


def test_nothing_drawn_is_all_zero() -> None:
    assert not images.prepare_digit(np.zeros((50, 40), dtype=np.float32)).any()


def test_the_preparation_refuses_what_is_no_grey_image() -> None:
    with pytest.raises(ValueError, match=r"a 2-d array of grey levels, got shape \(3, 4, 5\)"):
        images.prepare_digit(np.zeros((3, 4, 5)))


# --------------------------------------------------------------------------- pictures


def save(pil, array: np.ndarray, path: Path, mode: str | None = None, **options) -> Path:
    pil.fromarray(array, mode).save(path, **options) if mode else \
        pil.fromarray(array).save(path, **options)
    return path


def test_light_on_dark_and_dark_on_light_give_the_same_digit(pil, tmp_path) -> None:
    seven = a_seven()
    light = images.load_digit(save(pil, seven, tmp_path / "light.png"))
    dark = images.load_digit(save(pil, 255 - seven, tmp_path / "dark.png"))
    np.testing.assert_array_equal(light, dark)
    top, bottom, left, right = ink_box(light)
    assert max(bottom - top, right - left) + 1 in (19, 20)
    np.testing.assert_allclose(centre_of_mass(light), [14, 14], atol=0.75)


def test_colour_jpeg_and_transparent_pictures(pil, tmp_path) -> None:
    seven = a_seven()
    expected = images.load_digit(save(pil, seven, tmp_path / "light.png"))
    # Blue ink on a photo's greyish paper, saved as JPEG.
    paper = np.stack([225 - seven * 0.8, 220 - seven * 0.75, 215 - seven * 0.3], axis=2)
    photo = images.load_digit(save(pil, paper.astype(np.uint8), tmp_path / "photo.jpg",
                                   quality=90))
    # JPEG's ringing may widen the crop by a pixel: the same digit, placed alike.
    assert np.abs(photo - expected).mean() < 0.06
    np.testing.assert_allclose(centre_of_mass(photo), [14, 14], atol=0.75)
    top, bottom, left, right = ink_box(photo)
    assert max(bottom - top, right - left) + 1 in (19, 20)
    # Black strokes on a transparent background: shown on white, as viewers do.
    rgba = np.zeros((*seven.shape, 4), dtype=np.uint8)
    rgba[..., 3] = seven
    clear = images.load_digit(save(pil, rgba, tmp_path / "clear.png"))
    np.testing.assert_allclose(clear, expected, atol=1e-6)


def test_an_mnist_digit_photographed_comes_back(pil, tmp_path) -> None:
    """A test digit drawn 10x larger, dark on light paper, off centre in a larger picture,
    comes back as it was (but for rims fainter than the crop's threshold)."""
    path = os.environ.get("MNISTNET_DATA")
    if not path:
        pytest.skip("set MNISTNET_DATA to the MNIST folder")
    _, (x_test, _) = mn.load_mnist(path, normalize=False)
    digit = x_test[0].reshape(SIDE, SIDE)
    paper = np.zeros((400, 330), dtype=np.uint8)
    paper[50:330, 20:300] = np.kron(digit, np.ones((10, 10), dtype=np.uint8))
    prepared = images.load_digit(save(pil, 255 - paper, tmp_path / "digit.png"))
    np.testing.assert_allclose(prepared, digit / 255, atol=0.05)


def test_a_file_that_is_no_picture(pil, tmp_path) -> None:
    (tmp_path / "notes.png").write_text("hello\n")
    with pytest.raises(ValueError, match=r"notes\.png: not a picture Pillow can read"):
        images.load_digit(tmp_path / "notes.png")


def test_a_missing_pillow_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    (tmp_path / "digit.png").write_bytes(PNG_SIGNATURE + b"\0" * 32)
    with pytest.raises(ImportError, match=r'needs Pillow: pip install "mnistnet\[image\]"'):
        images.load_digit(tmp_path / "digit.png")


# --------------------------------------------------------------------------- mnistnet predict


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A network that reads digits where MNIST is at hand (one epoch), else an untrained
    one (predict does not care whether it learned)."""
    model = mn.preset("cross-entropy", seed=1)
    if os.environ.get("MNISTNET_DATA"):
        (x, y), _ = mn.load_mnist(os.environ["MNISTNET_DATA"])
        model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("model") / "model.npz"
    model.save(path)
    return path


def test_predict_reads_a_png_and_shows_what_the_net_sees(pil, model_file, tmp_path,
                                                        capsys) -> None:
    picture = save(pil, 255 - a_seven(), tmp_path / "seven.png")
    preview = tmp_path / "seen.png"
    assert main(["predict", str(model_file), str(picture), "--show", str(preview)]) == 0
    out = capsys.readouterr().out.splitlines()
    seen = images.load_digit(picture)
    outputs = mn.Model.load(model_file).predict(seen.reshape(1, -1))[0]
    digit = int(np.argmax(outputs))
    assert out == [f"{picture}[0]: digit {digit} (p={outputs[digit]:.3f})",
                   f"saved what the network sees to {preview}"]
    with pil.open(preview) as shown:
        assert shown.size == (SIDE, SIDE) and shown.mode == "L"
        np.testing.assert_array_equal(np.asarray(shown), np.round(seen * 255).astype(np.uint8))
    if os.environ.get("MNISTNET_DATA"):
        assert digit == 7


def test_predict_reads_a_jpeg_among_other_files(pil, model_file, tmp_path, capsys) -> None:
    seven = a_seven()
    save(pil, seven, tmp_path / "seven.jpeg", quality=95)
    np.save(tmp_path / "blank.npy", np.zeros((2, SIDE, SIDE), dtype=np.uint8))
    assert main(["predict", str(model_file), str(tmp_path / "seven.jpeg"),
                 str(tmp_path / "blank.npy")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(": ")[0] for line in lines] == [
        f"{tmp_path / 'seven.jpeg'}[0]", f"{tmp_path / 'blank.npy'}[0]",
        f"{tmp_path / 'blank.npy'}[1]"]


def check_error(argv: list[str], capsys) -> str:
    code = main(argv)
    out, err = capsys.readouterr()
    assert (code, out) == (2, ""), (code, out, err)
    assert len(err.splitlines()) == 1 and err.startswith("mnistnet: error: "), err
    return err


def test_predict_without_pillow_says_what_to_install(model_file, tmp_path, monkeypatch,
                                                     capsys) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    (tmp_path / "digit.png").write_bytes(PNG_SIGNATURE + b"\0" * 32)
    err = check_error(["predict", str(model_file), str(tmp_path / "digit.png")], capsys)
    assert 'reading PNG and JPEG pictures needs Pillow: pip install "mnistnet[image]"' in err


def test_predict_show_needs_one_picture(pil, model_file, tmp_path, capsys) -> None:
    save(pil, a_seven(), tmp_path / "a.png")
    np.save(tmp_path / "b.npy", np.zeros((SIDE, SIDE), dtype=np.uint8))
    err = check_error(["predict", str(model_file), str(tmp_path / "a.png"),
                       str(tmp_path / "a.png"), "--show", str(tmp_path / "s.png")], capsys)
    assert "--show saves what the network sees of one picture: give one PNG or JPEG" in err
    err = check_error(["predict", str(model_file), str(tmp_path / "b.npy"), "--show",
                       str(tmp_path / "s.png")], capsys)
    assert "--show saves what the network sees of one picture" in err
    assert not (tmp_path / "s.png").exists()


def test_predict_refuses_a_picture_for_a_model_not_of_28x28(pil, tmp_path, capsys) -> None:
    mn.Model([mn.Dense(10, activation="softmax")], input_dim=64).save(tmp_path / "m.npz")
    save(pil, a_seven(), tmp_path / "a.png")
    err = check_error(["predict", str(tmp_path / "m.npz"), str(tmp_path / "a.png")], capsys)
    assert "a picture is made into a 28x28 digit, and this model takes 64 inputs" in err
