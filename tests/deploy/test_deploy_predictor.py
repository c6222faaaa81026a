"""Predictor: image files → top-k classes, against an independent PIL/NumPy preprocessing."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from data.image_trees import write_corrupt
from deploy.checkpoints import CLASSES, reference_input, tiny_model, write_checkpoint, write_photo
from PIL import Image

from bcnn_triton.deploy import Predictor, collect_images, load_trained_model
from bcnn_triton.errors import UserInputError

# (width, height, PIL mode, extension): wide, tall, smaller than the input, exact size,
# grayscale, palette and RGBA files all become RGB inputs of the checkpoint's size.
PHOTOS = [
    (50, 37, "RGB", ".jpg"),
    (31, 64, "RGB", ".png"),
    (20, 20, "RGB", ".png"),  # upscaled
    (32, 32, "L", ".png"),
    (45, 33, "P", ".gif"),
    (40, 41, "RGBA", ".webp"),
    (7, 90, "RGB", ".bmp"),  # very tall: shorter side 7 → 32, then centre crop
]


@pytest.fixture
def model():
    return tiny_model()


@pytest.fixture
def checkpoint(tmp_path, model):
    return write_checkpoint(tmp_path / "run", model)


@pytest.fixture
def photos(tmp_path):
    return [
        write_photo(tmp_path / "photos" / f"p{i}{ext}", (w, h), seed=i, mode=mode)
        for i, (w, h, mode, ext) in enumerate(PHOTOS)
    ]


def reference_probabilities(model, paths):
    with torch.no_grad():
        logits = model(torch.stack([reference_input(path) for path in paths]))
    return torch.softmax(logits.double(), dim=1)


def test_predictions_match_the_reference(checkpoint, model, photos):
    result = Predictor(checkpoint, device="cpu", batch_size=3, top_k=3).predict(photos)
    assert result.unreadable == []
    assert [p.path for p in result.predictions] == [str(path) for path in photos]
    expected = reference_probabilities(model, photos)
    for prediction, row in zip(result.predictions, expected, strict=True):
        values, indices = row.topk(3)
        assert prediction.indices == indices.tolist()
        assert prediction.classes == [CLASSES[i] for i in indices]
        # Resampling in PIL vs the same through torchvision differs by rounding only.
        torch.testing.assert_close(
            torch.tensor(prediction.probabilities, dtype=torch.float64), values, atol=1e-4, rtol=0
        )


def test_batch_size_does_not_change_results(checkpoint, photos):
    one = Predictor(checkpoint, device="cpu", batch_size=1).predict(photos).predictions
    many = Predictor(checkpoint, device="cpu", batch_size=5).predict(photos).predictions
    for a, b in zip(one, many, strict=True):
        assert a.indices == b.indices
        torch.testing.assert_close(a.probabilities, b.probabilities, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_worker_processes_give_the_same_results(checkpoint, photos):
    alone = Predictor(checkpoint, device="cpu", batch_size=2).predict(photos).predictions
    workers = Predictor(checkpoint, device="cpu", workers=2, batch_size=2).predict(photos)
    assert workers.predictions == alone


def test_top_k_is_clipped_to_the_number_of_classes_and_can_change_per_call(checkpoint, photos):
    predictor = Predictor(checkpoint, device="cpu", top_k=50)
    [full] = predictor.predict(photos[0]).predictions
    assert sorted(full.indices) == list(range(len(CLASSES)))
    assert full.probabilities == sorted(full.probabilities, reverse=True)
    assert sum(full.probabilities) == pytest.approx(1.0, abs=1e-5)
    [one] = predictor.predict(photos[0], top_k=1).predictions
    assert one.classes == full.classes[:1]
    with pytest.raises(UserInputError, match="top_k must be an integer >= 1; got 0"):
        predictor.predict(photos[0], top_k=0)
    assert predictor.predict_images([]) == []


def test_unreadable_files_are_reported_and_skipped(tmp_path, checkpoint, photos):
    truncated = write_corrupt(tmp_path / "photos" / "truncated.png")
    text = tmp_path / "photos" / "notes.jpg"
    text.write_text("not an image")
    inputs = [photos[0], truncated, photos[1], text, photos[2]]
    result = Predictor(checkpoint, device="cpu", batch_size=2).predict(inputs)
    assert [p.path for p in result.predictions] == [str(p) for p in photos[:3]]
    assert [bad.path for bad in result.unreadable] == [str(truncated), str(text)]
    assert all(bad.reason for bad in result.unreadable)


def test_images_in_memory(checkpoint, model, photos):
    predictor = Predictor(checkpoint, device="cpu", top_k=2)
    with Image.open(photos[0]) as image:
        [prediction] = predictor.predict_images([image])
    [from_file] = predictor.predict(photos[0]).predictions
    assert prediction.path == "" and prediction.indices == from_file.indices


def test_probabilities_of_preprocessed_images(checkpoint, model):
    images = torch.randn(4, 3, 32, 32)
    probabilities = Predictor(checkpoint, device="cpu").probabilities(images)
    with torch.no_grad():
        expected = torch.softmax(model(images), dim=1)
    torch.testing.assert_close(probabilities, expected)
    assert not torch.is_inference_mode_enabled()


def test_bfloat16_autocast_keeps_the_ranking_close(checkpoint, photos):
    plain = Predictor(checkpoint, device="cpu", top_k=5).predict(photos).predictions
    bf16 = Predictor(checkpoint, device="cpu", top_k=5, amp="bf16").predict(photos).predictions
    for a, b in zip(plain, bf16, strict=True):
        by_class_a = dict(zip(a.indices, a.probabilities, strict=True))
        by_class_b = dict(zip(b.indices, b.probabilities, strict=True))
        for index, probability in by_class_a.items():
            assert by_class_b[index] == pytest.approx(probability, abs=0.03)


def test_channels_last_gives_the_same_predictions(checkpoint, photos):
    plain = Predictor(checkpoint, device="cpu").predict(photos).predictions
    predictor = Predictor(checkpoint, device="cpu", channels_last=True)
    assert predictor.trained.model.fc.weight.is_contiguous()
    conv = predictor.trained.model.features[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for a, b in zip(plain, predictor.predict(photos).predictions, strict=True):
        assert a.indices == b.indices
        torch.testing.assert_close(a.probabilities, b.probabilities, atol=1e-5, rtol=0)


def test_a_loaded_model_can_be_passed_in(checkpoint, photos):
    trained = load_trained_model(checkpoint)
    assert Predictor(trained).predict(photos[:1]).predictions[0].path == str(photos[0])
    with pytest.raises(UserInputError, match="image_size applies when loading"):
        Predictor(trained, image_size=64)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 0}, "top_k must be an integer >= 1; got 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1; got 0"),
        ({"workers": -1}, "workers must be an integer >= 0; got -1"),
        ({"amp": "fp8"}, "amp must be one of off, bf16, fp16; got 'fp8'"),
    ],
)
def test_bad_options(checkpoint, options, message):
    with pytest.raises(UserInputError, match=message):
        Predictor(checkpoint, **options)


def test_collect_images_from_files_folders_and_globs(tmp_path):
    root = tmp_path / "tree"
    a = write_photo(root / "a.png", (8, 8), 0)
    b = write_photo(root / "sub" / "deeper" / "b.JPG", (8, 8), 1)
    c = write_photo(root / "sub" / "c.jpeg", (8, 8), 2)
    write_photo(root / ".hidden.png", (8, 8), 3)
    (root / "readme.txt").write_text("not an image")
    named = tmp_path / "named.data"  # a file named explicitly is taken whatever its extension
    named.write_bytes(a.read_bytes())
    assert collect_images([root]) == [a, c, b]
    assert collect_images(str(root / "sub")) == [c, b]
    assert collect_images([str(root / "**" / "*.JPG")]) == [b]
    assert collect_images([str(tmp_path / "tr?e")]) == [a, c, b]
    # Each file once, in the order first named.
    assert collect_images([c, root, named]) == [c, a, b, named]


def collected_within(seconds: float, inputs) -> list:
    """collect_images(inputs), failing (not hanging) if it does not end in ``seconds``."""
    found: list = []
    worker = threading.Thread(target=lambda: found.append(collect_images(inputs)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert found, f"collect_images({inputs}) did not end within {seconds} s"
    return found[0]


def test_links_give_each_real_folder_and_file_once(tmp_path):
    root = tmp_path / "tree"
    a = write_photo(root / "a.png", (8, 8), 0)
    b = write_photo(root / "sub" / "deeper" / "b.jpg", (8, 8), 1)
    (root / "sub" / "up").symlink_to("..")  # loops: up/sub/up/... and self/self/...
    (root / "sub" / "self").symlink_to(".")
    (root / "also-sub").symlink_to("sub")  # a second way into sub, met first (sorted)
    (root / "z-link.png").symlink_to("a.png")  # a second name for a.png
    (root / "broken.png").symlink_to("nowhere.png")  # kept: it is reported as unreadable
    via_link = root / "also-sub" / "deeper" / "b.jpg"
    assert collected_within(60, [root]) == [a, root / "broken.png", via_link]
    assert collected_within(60, [str(root / "**" / "*.jpg")]) == [via_link]
    # Named first, b.jpg and the link to a.png stand for their files.
    named_first = [b, root / "z-link.png", root]
    assert collected_within(60, named_first) == [b, root / "z-link.png", root / "broken.png"]


def test_collect_images_errors(tmp_path):
    with pytest.raises(UserInputError, match="no input images given"):
        collect_images([])
    with pytest.raises(UserInputError, match=f"no such image file or folder: {tmp_path / 'x'}"):
        collect_images([tmp_path / "x"])
    with pytest.raises(UserInputError, match=r"no file matches .*\*\.png"):
        collect_images([str(tmp_path / "*.png")])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(UserInputError, match="no images under folder"):
        collect_images([tmp_path / "empty"])


def test_results_follow_relative_paths_as_given(tmp_path, checkpoint, monkeypatch):
    write_photo(tmp_path / "here" / "x.png", (10, 10), 0)
    monkeypatch.chdir(tmp_path)
    result = Predictor(checkpoint, device="cpu").predict(["here"])
    assert [p.path for p in result.predictions] == [os.path.join("here", "x.png")]
