"""Scratch diagnostic (not part of the package): does ALIGN's masker learn selective masks on TextureMNIST
(or, with a fourth argument, SpuriousTextureMNIST)?

Needs the package installed (``pip install -e .``); ``DATA_DIR`` (default ``data``) is the prepared data folder and
``DIAG_DIR`` (default ``diag_states``) where warm-up states are kept; both relative to where it is run."""
import sys, json, time, torch, torch.nn.functional as F
torch.set_num_threads(1)
import os
from domainbed_align.methods import hparams as H
from domainbed_align.methods.align import ALIGN
from domainbed_align.data import datasets

mode = sys.argv[1]            # "warmup" or a JSON of overrides for the alignment phase
steps = int(sys.argv[2])
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0  # seed 0 = the first runs' seeds, unchanged
dataset = sys.argv[4] if len(sys.argv) > 4 else "TextureMNIST"  # the test env is the last one
state_dir = os.environ.get("DIAG_DIR", "diag_states")
os.makedirs(state_dir, exist_ok=True)
warm_path = os.path.join(state_dir, "warm.pt" if seed == 0 else f"warm_seed{seed}.pt")
if dataset != "TextureMNIST":
    warm_path = warm_path.replace(".pt", f"_{dataset}.pt")
n_envs = len(getattr(datasets, dataset).ENVIRONMENTS)
ds = getattr(datasets, dataset)(os.environ.get("DATA_DIR", "data"), [n_envs - 1], {})
train_envs, test_env = list(range(n_envs - 1)), n_envs - 1
def stack(env, idx):
    xs, ys = zip(*(env[i] for i in idx)); return torch.stack(xs), torch.tensor(ys)
def masks(env, idx): return torch.stack([env.mask(i) for i in idx])
train = [stack(ds[e], range(800)) for e in train_envs]
val = [stack(ds[e], range(800, 1000)) for e in train_envs]
val_m = [masks(ds[e], range(800, 1000)) for e in train_envs]
test = stack(ds[test_env], range(500)); test_m = masks(ds[test_env], range(500))
hp = H.default_hparams("ALIGN", dataset, batch_size=12, warmup_steps=500)
g = torch.Generator().manual_seed(seed)

def evaluate(al):
    al.eval()
    out = {}
    with torch.no_grad():
        vx = torch.cat([x for x, _ in val]); vy = torch.cat([y for _, y in val]); vm = torch.cat(val_m)
        out["val_acc"] = (al.predict(vx).argmax(1) == vy).float().mean().item()
        out["test_acc"] = (al.predict(test[0]).argmax(1) == test[1]).float().mean().item()
        m = al.masker(vx)
        out["mask_mean"] = m.mean().item()
        out["gt_mean"] = vm.mean().item()
        inter = ((m > 0.5) & (vm > 0.5)).flatten(1).sum(1).float(); union = ((m > 0.5) | (vm > 0.5)).flatten(1).sum(1).float()
        out["mask_iou"] = (inter / union.clamp(min=1)).mean().item()
        out["mask_on_fg"] = ((m * vm).flatten(1).sum(1) / m.flatten(1).sum(1).clamp(min=1e-6)).mean().item()
    # Grad-CAM mass on the digit (upsampled to 56 px)
    _, cams = al.classifier.forward_with_cams(vx, vy, differentiable=False)
    up = F.interpolate(cams.unsqueeze(1), size=vm.shape[-2:], mode="bilinear", align_corners=False).clamp(min=0)
    out["cam_on_fg"] = ((up * vm).flatten(1).sum(1) / up.flatten(1).sum(1).clamp(min=1e-8)).mean().item()
    al.train()
    return {k: round(v, 4) for k, v in out.items()}

def batches():
    out = []
    for x, y in train:
        idx = torch.randint(0, len(y), (12,), generator=g); out.append((x[idx], y[idx]))
    return out

torch.manual_seed(seed)
if mode == "warmup":
    al = ALIGN((3, 56, 56), 10, len(train_envs), hp)
    for s in range(steps):
        r = al.update(batches())
    torch.save(al.state_dict(), warm_path)
    print(json.dumps({"mode": "warmup", "steps": steps, "seed": seed, **({"dataset": dataset} if dataset != "TextureMNIST" else {}), **evaluate(al)}), flush=True)
else:
    over = json.loads(mode)
    al = ALIGN((3, 56, 56), 10, len(train_envs), {**hp, **over})
    al.load_state_dict(torch.load(warm_path))
    torch.manual_seed(1 + 1000 * seed); g.manual_seed(1 + 1000 * seed)
    t = time.time(); acc = {}
    for s in range(1, steps + 1):
        r = al.update(batches())
        for k in ("ce", "align_bce", "masker_distance", "mask_mean"): acc[k] = acc.get(k, 0) + r.get(k, 0)
        if s % 100 == 0:
            print(json.dumps({"over": over, "seed": seed, **({"dataset": dataset} if dataset != "TextureMNIST" else {}), "step": s, **{k: round(v / 100, 3) for k, v in acc.items()}, **evaluate(al)}), flush=True); acc = {}
