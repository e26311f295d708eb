"""A seeded sequence of training updates of every registered method, on CPU, saved to one file.

Run by test_redesign_equality.py once with the pre-redesign commit's package on PYTHONPATH and once with the
current tree's, in the same job on the same machine: the two files must hold the same numbers. It reads only what
both trees expose (the package's ALGORITHM_NAMES, each algorithm's class, DomainBed's constructor/update/predict
contract and explain()), so it runs unchanged against either.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import torch

STEPS = 4
SIDE = 64  # a 2 x 2 Grad-CAM grid on resnet18: small, but not the degenerate 1 x 1
CLASSES = 3


LOADED_FROM: list[str] = []  # the files of the modules read, for the test to check which tree ran


def _module(*names: str):
    """The first of ``names`` that imports (the redesign moved modules; both trees must be readable)."""
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        LOADED_FROM.append(module.__file__)
        return module
    raise ModuleNotFoundError(f"none of {names} is importable")


def batches(annotated: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two environments of 4 images each, with a class-coded square (and its mask as the last channel)."""
    generator = torch.Generator().manual_seed(7)
    environments = []
    for _ in range(2):
        labels = torch.arange(4) % CLASSES
        images = torch.randn(4, 3, SIDE, SIDE, generator=generator, dtype=torch.float32)
        masks = torch.zeros(4, 1, SIDE, SIDE, dtype=torch.float32)
        for i, label in enumerate(labels.tolist()):
            images[i, :, 8:32, 8 + 10 * label:32 + 10 * label] += 2.0
            masks[i, :, 8:32, 8 + 10 * label:32 + 10 * label] = 1.0
        environments.append((torch.cat([images, masks], 1) if annotated else images, labels))
    return environments


def run(name: str) -> dict:
    registry = _module("domainbed_align.methods.registry", "domainbed_align.registry")
    hparams_lib = _module("domainbed_align.methods.hparams", "domainbed_align.hparams")
    shapes = _module("domainbed_align.annotations", "domainbed_align.step")
    entry = registry.entry(name)
    hparams = hparams_lib.default_hparams(name, "TextureMNIST", lr=1e-3, batch_size=4)
    if name == "ALIGN":  # every phase within STEPS: warm-up, masker warm-up, then two aligned steps
        hparams.update(warmup_steps=1, masker_warmup_steps=1)
        if "sparsity_floor" in hparams:  # the published term, which every tree has (issue 29's floor came later)
            hparams["sparsity_floor"] = 0.0
    data = batches(entry.annotations)
    shape = (3 + int(entry.annotations), SIDE, SIDE)
    if entry.annotations:
        shape = shapes.ShapeWithMaskChannel(shape)
    torch.manual_seed(0)
    # float32, as users train: some methods build float32 tensors on purpose (RES-L's binarised mask)
    algorithm = entry.cls(shape, CLASSES, 2, hparams)
    record: dict = {"updates": [], "gradients": []}
    for _ in range(STEPS):
        record["updates"].append(algorithm.update(data))
        record["gradients"].append({k: p.grad.clone() for k, p in algorithm.named_parameters() if p.grad is not None})
    record["parameters"] = {k: v.clone() for k, v in algorithm.state_dict().items() if isinstance(v, torch.Tensor)}
    images = data[0][0]
    record["predict"] = algorithm.predict(images)
    record["explain"] = algorithm.explain(images, data[0][1])
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # one summation order, whatever the machine's load
    package = importlib.import_module("domainbed_align")
    names = list(package.ALGORITHM_NAMES)
    runs = {name: run(name) for name in names}
    torch.save({"package": package.__file__, "loaded_from": LOADED_FROM, "names": names, "runs": runs}, args.out)
    print(f"{len(names)} methods, {STEPS} updates each: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
