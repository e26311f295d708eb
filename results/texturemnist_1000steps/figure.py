"""Writes masks.png: test-domain (photos) images, ALIGN's mask, and the true-class Grad-CAM of ALIGN and TimmERM.

python figure.py RUNS [DATA_DIR]   (RUNS: a folder holding TimmERM/model.pkl and ALIGN/model.pkl; DATA_DIR: default data)
"""
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from domainbed_align.checkpoints import load_algorithm  # noqa: E402
from domainbed_align.data.datasets import TextureMNIST  # noqa: E402

torch.set_num_threads(1)
runs, test_env, count = sys.argv[1], 3, 8
data = TextureMNIST(sys.argv[2] if len(sys.argv) > 2 else "data", [test_env], {})
environment = data[test_env]
indices = list(range(count))  # the first images of the test domain: no choosing
images = torch.stack([environment[i][0] for i in indices])
labels = torch.tensor([environment[i][1] for i in indices])
align, erm = load_algorithm(f"{runs}/ALIGN/model.pkl"), load_algorithm(f"{runs}/TimmERM/model.pkl")
with torch.no_grad():
    masks = align.masker(images).squeeze(1)
    align_correct = align.predict(images).argmax(1) == labels
    erm_correct = erm.predict(images).argmax(1) == labels


def upsample(maps: torch.Tensor) -> torch.Tensor:
    return F.interpolate(maps.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)


align_cams, erm_cams = upsample(align.explain(images, labels)), upsample(erm.explain(images, labels))
mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # undo the ImageNet normalisation for display
std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
rows = [("image", [(x * std + mean).clamp(0, 1).permute(1, 2, 0) for x in images], None),
        ("ALIGN mask", list(masks), "gray"),
        ("ALIGN Grad-CAM", list(align_cams), "jet"),
        ("TimmERM Grad-CAM", list(erm_cams), "jet")]
figure, axes = plt.subplots(len(rows), count, figsize=(1.6 * count, 1.7 * len(rows)))
for row, (title, pictures, colormap) in enumerate(rows):
    for column, picture in enumerate(pictures):
        axis = axes[row, column]
        axis.imshow(picture.numpy(), cmap=colormap, vmin=0, vmax=1)
        axis.set_xticks([]), axis.set_yticks([])
        if column == 0:
            axis.set_ylabel(title, fontsize=8)
        if row == 0:
            axis.set_title(f"y={int(labels[column])} A:{'ok' if align_correct[column] else 'x'} "
                           f"E:{'ok' if erm_correct[column] else 'x'}", fontsize=7)
figure.suptitle("TextureMNIST, test domain 'photos', step 999 (A = ALIGN, E = TimmERM prediction)", fontsize=9)
figure.tight_layout()
figure.savefig(Path(__file__).resolve().parent / "masks.png", dpi=110)
print("wrote masks.png")
