"""Mask folders (domainbed_align.annotations.folder) and `python -m domainbed_align.masks export`: masks follow their
images through DomainBed's augmentation, a gap or a damaged file is one error naming it, and an ALIGN run's masks
round-trip through the folder into another method's training."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from domainbed_align.methods import hparams as hparams_lib
from domainbed_align.data import TextureMNIST, VLCSMini
from domainbed_align.data.datasets import IMAGENET_MEAN, IMAGENET_STD
from domainbed_align.annotations.folder import (MaskedImageEnvironment, MaskFolderError, attach_mask_folder,
                                         image_folder_keys, joint_transform, mask_path)
from domainbed_align.annotations import MISSING_ANNOTATION

ANNOTATING = {"annotation_method": True, "gt_masks": False}  # what the registry gives an annotation method
NORMALIZE = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
# The steps (and settings) of DomainBed's image-folder augmentation.
AUGMENT = transforms.Compose([transforms.RandomResizedCrop(224, scale=(0.7, 1.0)), transforms.RandomHorizontalFlip(),
                              transforms.ColorJitter(0.3, 0.3, 0.3, 0.3), transforms.RandomGrayscale(),
                              transforms.ToTensor(), NORMALIZE])
PLAIN = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(), NORMALIZE])


class Folder:
    """An ImageFolder-like environment of synthetic photos: a white, off-centre rectangle on black."""

    def __init__(self, root: Path, transform, count: int = 3) -> None:
        self.root, self.transform, self.samples, self.classes = str(root), transform, [], ["a"]
        for i in range(count):
            pixels = np.zeros((150, 260, 3), np.uint8)
            pixels[20 + 10 * i: 70 + 10 * i, 30:110] = 255  # asymmetric: a flip or crop moves it visibly
            path = root / "a" / f"img{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, quality=98)
            self.samples.append((str(path), 0))


def write_rectangle_masks(environment: Folder, mask_dir: Path) -> None:
    for (path, _), key in zip(environment.samples, image_folder_keys(environment)):
        pixels = (np.asarray(Image.open(path).convert("L")) > 127).astype(np.uint8) * 255
        mask_path(mask_dir, key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(mask_path(mask_dir, key))


def test_the_layout_mirrors_the_image_paths(tmp_path):
    environment = Folder(tmp_path / "Caltech101", PLAIN, count=1)
    assert image_folder_keys(environment) == ["Caltech101/a/img0"]
    assert mask_path("masks", "Caltech101/a/img0") == Path("masks/Caltech101/a/img0.png")


def test_augmented_masks_follow_their_images(tmp_path):
    environment = Folder(tmp_path / "env", AUGMENT)
    write_rectangle_masks(environment, tmp_path / "masks")
    masked = MaskedImageEnvironment(environment, str(tmp_path / "masks"), read_masks=True)
    torch.manual_seed(0)
    seen = []
    for draw in range(12):
        x, _ = masked[draw % 3]
        assert x.shape == (4, 224, 224)
        mask = x[3]
        assert set(mask.unique().tolist()) <= {0.0, 1.0}  # nearest-neighbour: still a binary mask
        image = (x[:3] * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1))
        brightness = image.mean(0)
        bright = brightness > (brightness.max() + brightness.min()) / 2  # the rectangle, after the colour jitter
        iou = (bright & (mask > 0.5)).sum() / (bright | (mask > 0.5)).sum()
        assert iou > 0.9, (draw, float(iou))
        seen.append(mask)
    assert any(not torch.equal(seen[0], other) for other in seen[3::3])  # the same image, cropped differently


def test_without_augmentation_the_image_is_the_datasets_own(tmp_path):
    environment = Folder(tmp_path / "env", PLAIN)
    write_rectangle_masks(environment, tmp_path / "masks")
    x, _ = MaskedImageEnvironment(environment, str(tmp_path / "masks"), read_masks=True)[1]
    with Image.open(environment.samples[1][0]) as image:
        expected = PLAIN(image.convert("RGB"))
    assert torch.allclose(x[:3], expected, atol=1e-6)


def test_test_environments_read_no_mask_and_get_the_missing_marker(tmp_path):
    environment = Folder(tmp_path / "env", PLAIN)  # no mask written at all
    x, _ = MaskedImageEnvironment(environment, str(tmp_path / "masks"), read_masks=False)[0]
    assert (x[3] == MISSING_ANNOTATION).all()


def test_an_unknown_transform_step_is_refused():
    with pytest.raises(MaskFolderError, match="RandomRotation"):
        joint_transform(transforms.Compose([transforms.RandomRotation(10), transforms.ToTensor()]))


class TwoEnvironments:
    def __init__(self, tmp_path: Path) -> None:
        self.datasets = [Folder(tmp_path / "E0", PLAIN), Folder(tmp_path / "E1", PLAIN)]
        self.input_shape = (3, 224, 224)


def test_an_incomplete_folder_is_refused_before_training_naming_a_missing_file(tmp_path):
    dataset = TwoEnvironments(tmp_path)
    write_rectangle_masks(dataset.datasets[0], tmp_path / "masks")
    mask_path(tmp_path / "masks", "E0/a/img2").unlink()
    with pytest.raises(MaskFolderError, match=r"lacks 1 of the 3 masks .*E0/a/img2\.png"):
        attach_mask_folder(dataset, [1], {**ANNOTATING, "mask_dir": str(tmp_path / "masks")})
    with pytest.raises(MaskFolderError, match="is not a folder"):
        attach_mask_folder(TwoEnvironments(tmp_path), [1], {**ANNOTATING, "mask_dir": str(tmp_path / "no")})


def test_wrong_sizes_unreadable_headers_and_0_1_masks_are_refused_before_training(tmp_path):
    dataset = TwoEnvironments(tmp_path)
    write_rectangle_masks(dataset.datasets[0], tmp_path / "masks")
    Image.new("L", (10, 10)).save(mask_path(tmp_path / "masks", "E0/a/img1"))
    hparams = {**ANNOTATING, "mask_dir": str(tmp_path / "masks")}
    with pytest.raises(MaskFolderError, match=r"E0/a/img1\.png is 10x10, its image 260x150"):
        attach_mask_folder(dataset, [1], hparams)
    mask_path(tmp_path / "masks", "E0/a/img1").write_bytes(b"garbage")
    with pytest.raises(MaskFolderError, match=r"E0/a/img1\.png cannot be read"):
        attach_mask_folder(TwoEnvironments(tmp_path), [1], hparams)
    for i, (path, _) in enumerate(dataset.datasets[0].samples):  # SAM-style 0/1 files
        with Image.open(path) as image:
            Image.fromarray((np.asarray(image.convert("L")) > 127).astype(np.uint8)).save(
                mask_path(tmp_path / "masks", f"E0/a/img{i}"))
    with pytest.raises(MaskFolderError, match="hold 0/1 values"):
        attach_mask_folder(TwoEnvironments(tmp_path), [1], hparams)


def test_exported_masks_from_a_run_that_trained_on_the_test_environment_are_refused(tmp_path):
    dataset = TwoEnvironments(tmp_path)
    write_rectangle_masks(dataset.datasets[0], tmp_path / "masks")
    write_rectangle_masks(dataset.datasets[1], tmp_path / "masks")
    manifest = {"dataset": "TwoEnvironments", "test_envs": [0], "model": "runs/align/model.pkl"}
    (tmp_path / "masks" / "manifest.json").write_text(json.dumps(manifest))
    hparams = {**ANNOTATING, "mask_dir": str(tmp_path / "masks")}
    with pytest.raises(MaskFolderError, match=r"trained on environment\(s\) \[1\], this run's test"):
        attach_mask_folder(dataset, [1], hparams)
    attach_mask_folder(TwoEnvironments(tmp_path), [0], hparams)  # the ALIGN run held 0 out too: fine
    (tmp_path / "masks" / "manifest.json").write_text(json.dumps({**manifest, "dataset": "VLCS"}))
    with pytest.raises(MaskFolderError, match="exported from a VLCS run"):
        attach_mask_folder(TwoEnvironments(tmp_path), [0], hparams)


def test_masks_attach_for_annotation_methods_only(tmp_path):
    dataset = TwoEnvironments(tmp_path)
    write_rectangle_masks(dataset.datasets[0], tmp_path / "masks")
    # a sweep's --hparams, even with gt_masks, reach e.g. DomainBed's ERM: no annotation_method, no mask channel
    for others in ({"lr": 1e-3}, {"gt_masks": False}, {"gt_masks": True}):
        attach_mask_folder(dataset, [1], {**others, "mask_dir": str(tmp_path / "masks")})
        assert dataset.input_shape == (3, 224, 224) and not hasattr(dataset.input_shape, "has_mask_channel")
    attach_mask_folder(dataset, [1], {**ANNOTATING, "mask_dir": str(tmp_path / "masks")})
    assert dataset.input_shape == (4, 224, 224) and dataset.input_shape.has_mask_channel
    assert dataset.datasets[0][0][0][3].max() == 1.0 and (dataset.datasets[1][0][0][3] == MISSING_ANNOTATION).all()


def test_a_damaged_or_resized_mask_is_one_error_naming_it(tmp_path):
    environment = Folder(tmp_path / "env", PLAIN)
    write_rectangle_masks(environment, tmp_path / "masks")
    mask_path(tmp_path / "masks", "env/a/img0").write_bytes(b"not a png")
    Image.new("L", (10, 10)).save(mask_path(tmp_path / "masks", "env/a/img1"))
    masked = MaskedImageEnvironment(environment, str(tmp_path / "masks"), read_masks=True)
    with pytest.raises(MaskFolderError, match=r"env/a/img0\.png' cannot be read"):
        masked[0]
    with pytest.raises(MaskFolderError, match=r"env/a/img1\.png' is 10x10 but its image is 260x150"):
        masked[1]


def test_an_error_in_a_dataloader_worker_is_shown_as_its_own_one_line_message(tmp_path):
    from domainbed_align.errors import user_message

    environment = Folder(tmp_path / "env", PLAIN)
    write_rectangle_masks(environment, tmp_path / "masks")
    mask_path(tmp_path / "masks", "env/a/img0").write_bytes(b"not a png")
    loader = torch.utils.data.DataLoader(MaskedImageEnvironment(environment, str(tmp_path / "masks"), True),
                                         batch_size=1, num_workers=1)
    with pytest.raises(MaskFolderError) as caught:
        next(iter(loader))
    assert "Original Traceback" in str(caught.value)  # torch's wrapper, which the excepthook unwraps
    message = user_message(caught.value)
    assert message.startswith("mask ") and "env/a/img0.png' cannot be read" in message and "\n" not in message


# --- our datasets -------------------------------------------------------------------------------------------------
def test_vlcsmini_with_a_mask_folder_trains_an_annotation_method(data_dir, tmp_path):
    from domainbed_align.methods.baselines import GRADIA

    plain = VLCSMini(str(data_dir), [0], {"data_augmentation": False})
    for environment in plain.datasets[1:]:  # synthetic masks: the left half of each image
        for (path, _), key in zip(environment.samples, image_folder_keys(environment)):
            with Image.open(path) as image:
                pixels = np.zeros((image.size[1], image.size[0]), np.uint8)
            pixels[:, : pixels.shape[1] // 2] = 255
            mask_path(tmp_path, key).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(mask_path(tmp_path, key))
    hparams = hparams_lib.default_hparams("GRADIA", "VLCSMini", mask_dir=str(tmp_path))
    dataset = VLCSMini(str(data_dir), [0], hparams)
    assert dataset.input_shape == (4, 224, 224) and dataset.input_shape.has_mask_channel
    x, _ = dataset.datasets[1][0]
    assert x[3].unique().tolist() == [0.0, 1.0]
    assert (dataset.datasets[0][0][0][3] == MISSING_ANNOTATION).all()  # the test environment's: never read
    torch.manual_seed(0)
    algorithm = GRADIA(dataset.input_shape, 5, 2, hparams)
    batch = [(torch.stack([dataset.datasets[e][i][0] for i in range(2)]), torch.tensor([0, 1])) for e in (1, 2)]
    terms = algorithm.update(batch)
    assert terms["annotated"] == 1.0 and terms["gradia_l1"] > 0
    mask_path(tmp_path, image_folder_keys(dataset.datasets[2])[5]).unlink()
    with pytest.raises(MaskFolderError, match="lacks 1 of the 55 masks of VLCSMini's training environment 'SUN09'"):
        VLCSMini(str(data_dir), [0], hparams)


def test_align_masks_export_reload_and_train_on_texturemnist(data_dir, tmp_path, capsys):
    from conftest import save_align_run

    from domainbed_align.report import mask_export
    from domainbed_align.methods.checkpoints import load_algorithm
    from domainbed_align.report.metrics import mask_iou

    model = save_align_run(tmp_path / "run", data_dir)
    out = tmp_path / "exported"
    assert mask_export.main(["export", "--model", str(model), "--output_dir", str(out), "--envs", "train",
                       "--batch_size", "200"]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(manifest["environments"]) == ["medical", "space", "textures"]  # photos (test) not asked for
    assert "IoU with the ground truth" in printed and len(list(out.glob("textures/*.png"))) == 1000
    # the files hold the masker's masks, 8-bit
    algorithm = load_algorithm(model)
    plain = TextureMNIST(str(data_dir), [3], {})
    images = torch.stack([plain.datasets[1][i][0] for i in range(4)])
    with torch.no_grad():
        expected = algorithm.masker(images)[:, 0]
    written = torch.stack([torch.from_numpy(np.array(Image.open(out / f"medical/{i:05d}.png"))) for i in range(4)])
    assert (written.float() / 255 - expected).abs().max() <= 0.5 / 255 + 1e-6
    # the reported IoU is the written masks' against the digits
    all_written = torch.stack([torch.from_numpy(np.array(Image.open(out / f"medical/{i:05d}.png")))
                               for i in range(1000)]).float() / 255
    truth = torch.stack([plain.datasets[1].mask(i)[0] for i in range(1000)])
    assert manifest["environments"]["medical"]["iou"] == pytest.approx(mask_iou(all_written, truth).mean().item(),
                                                                      abs=1e-6)
    # and another method trains on them: the channel is the exported mask, not the digit
    hparams = hparams_lib.default_hparams("HAICS", "TextureMNIST", mask_dir=str(out))
    dataset = TextureMNIST(str(data_dir), [3], hparams)
    x, _ = dataset.datasets[1][2]
    assert torch.equal(x[3], all_written[2]) and not torch.equal(x[3], truth[2])
    assert (dataset.datasets[3][0][0][3] == MISSING_ANNOTATION).all()


def test_export_refuses_a_run_without_a_masker(data_dir, tmp_path, capsys):
    from domainbed_align.report import mask_export

    model = tmp_path / "model.pkl"
    checkpoint = torch.load(__import__("conftest").save_align_run(tmp_path / "run", data_dir), weights_only=False)
    checkpoint["args"]["algorithm"] = "TimmERM"
    checkpoint["model_hparams"] = hparams_lib.default_hparams("TimmERM", "TextureMNIST")
    from domainbed_align.methods.erm import TimmERM

    checkpoint["model_dict"] = TimmERM((3, 56, 56), 10, 3, checkpoint["model_hparams"]).state_dict()
    torch.save(checkpoint, model)
    assert mask_export.main(["export", "--model", str(model), "--output_dir", str(tmp_path / "o")]) == 1
    assert "has no masker: export the masks of an ALIGN run" in capsys.readouterr().err


def test_export_writes_each_image_folder_mask_at_its_images_own_size(data_dir, tmp_path):
    from domainbed_align.report import mask_export
    from domainbed_align.methods.align import ALIGN

    torch.manual_seed(0)
    hparams = hparams_lib.default_hparams("ALIGN", "VLCSMini")
    algorithm = ALIGN((3, 224, 224), 5, 2, hparams)
    args = {"algorithm": "ALIGN", "dataset": "VLCSMini", "test_envs": [0], "data_dir": str(data_dir),
            "hparams_seed": 0, "trial_seed": 0, "holdout_fraction": 0.2}
    torch.save({"args": args, "model_input_shape": (3, 224, 224), "model_num_classes": 5, "model_num_domains": 2,
                "model_hparams": hparams, "model_dict": algorithm.state_dict()}, tmp_path / "model.pkl")
    manifest = mask_export.export(tmp_path / "model.pkl", tmp_path / "out", envs="train", progress=False)
    assert manifest["environments"] == {"L": {"images": 77, "split": "train"},
                                        "S": {"images": 55, "split": "train"}}
    environment = VLCSMini(str(data_dir), [0], {}).datasets[2]
    for (path, _), key in list(zip(environment.samples, image_folder_keys(environment)))[:10]:
        with Image.open(path) as image, Image.open(mask_path(tmp_path / "out", key)) as mask:
            assert mask.size == image.size and mask.mode == "L"
    masked = VLCSMini(str(data_dir), [0], hparams_lib.default_hparams("CARE", "VLCSMini",
                                                                      mask_dir=str(tmp_path / "out")))
    x, _ = masked.datasets[1][0]
    assert x.shape == (4, 224, 224) and 0 < x[3].mean() < 1  # a soft mask, read back
