"""Where the trained models look: Grad-CAM mass on the digit, from each run's model.pkl (load_algorithm + explain).

python explanations.py RUNS [DATA_DIR]   (RUNS: a folder holding TimmERM/model.pkl and ALIGN/model.pkl; DATA_DIR: default data)
"""
import json
import sys

import torch
import torch.nn.functional as F

from domainbed_align.checkpoints import load_algorithm
from domainbed_align.data.datasets import TextureMNIST

torch.set_num_threads(1)
runs = sys.argv[1]
data = TextureMNIST(sys.argv[2] if len(sys.argv) > 2 else "data", [3], {})
for name in ("TimmERM", "ALIGN"):
    algorithm = load_algorithm(f"{runs}/{name}/model.pkl")
    row = {"algorithm": name}
    for env in range(4):
        indices = range(500)
        images = torch.stack([data[env][i][0] for i in indices])
        labels = torch.tensor([data[env][i][1] for i in indices])
        digits = torch.stack([data[env].mask(i) for i in indices]).squeeze(1)
        maps = torch.cat([algorithm.explain(images[i:i + 100], labels[i:i + 100]) for i in range(0, 500, 100)])
        up = F.interpolate(maps.unsqueeze(1), size=digits.shape[-2:], mode="bilinear", align_corners=False)
        up = up.squeeze(1).clamp(min=0)
        on_digit = (up * digits).flatten(1).sum(1) / up.flatten(1).sum(1).clamp(min=1e-8)
        row[f"{data.ENVIRONMENTS[env]}_cam_on_digit"] = round(on_digit.mean().item(), 4)
        row[f"{data.ENVIRONMENTS[env]}_digit_share"] = round(digits.mean().item(), 4)
    print(json.dumps(row), flush=True)
