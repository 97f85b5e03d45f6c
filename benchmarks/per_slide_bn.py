"""Per-slide adaptation without labels: re-estimate BatchNorm statistics from each slide's own
cells (AdaBN; optionally blended with the training statistics, Schneider et al. 2020) - does it help other
laboratories, and does it hurt in-domain samples with skewed mixes?

    python benchmarks/per_slide_bn.py --shards runs/gpu/basic-full --lab lisc=../shared/data/lisc \
        --lab bccd=runs/bccd-crops/holdout --pbc ../shared/data/pbc

Needs the float weights of the model (fp16 shards from training; the shipped int8 ONNX has BatchNorm folded
into its convolutions) and PyTorch.  Cells are prepared as the product prepares them (the model's sidecar);
a laboratory's cells are split into random "slides" of ``--slide`` cells, 3 seeds.
"""

import argparse
import random

import numpy as np
import torch

from training.adapt import prepare_items
from training.data import gather
from training.model import build_model
from training.shards import load_shards
from wbcproc.classes import CLASSES
from wbcproc.preprocess import to_input
from wbcproc.sidecar import read_sidecar

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--shards", required=True, help="fp16 weight shards of the model (training output)")
ap.add_argument("--model", default="models/model.onnx", help="its ONNX + sidecar (for the preprocessing)")
ap.add_argument("--lab", action="append", default=[], help="NAME=ROOT of class folders (repeatable)")
ap.add_argument("--pbc", default=None, help="PBC root: in-domain random and skewed samples from its test split")
ap.add_argument("--slide", type=int, default=50)
args = ap.parse_args()
side = read_sidecar(args.model)
spec = side.preprocess
net, _ = build_model("scratch")
net.load_state_dict({k: v.float() for k, v in load_shards(args.shards).items()})
net.eval()
torch.set_num_threads(2)


def logits(x, adapt=False, prior=0.0):
    t = torch.from_numpy(to_input(x, spec))
    if not adapt:
        with torch.no_grad():
            return net(t).numpy()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(t)
    # blend with the source statistics (prior weight) as in Schneider et al. 2020
    if prior > 0:
        for name, m in net.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.mul_(1 - prior).add_(prior * state[name + ".running_mean"])
                m.running_var.mul_(1 - prior).add_(prior * state[name + ".running_var"])
    net.eval()
    with torch.no_grad():
        out = net(t).numpy()
    net.load_state_dict(state)
    return out


def load(root, split=None):
    g = gather([root], val_fraction=0.0, test_fraction=0.0) if split is None else gather([root])
    items = [it for it in g.items if split is None or it.split == split]
    imgs, kept, _ = prepare_items(items, spec)
    return imgs, np.array([CLASSES.index(it.label) for it in kept])


def chunks(n, size, seed):
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return [idx[i : i + size] for i in range(0, n, size)]


def evaluate(name, imgs, y, size=50, seeds=3):
    base = (logits(imgs).argmax(1) == y).mean()
    res = {"eval": base}
    for prior in (0.0, 0.5):
        accs = []
        for s in range(seeds):
            pred = np.zeros(len(y), int)
            for c in chunks(len(y), size, s):
                if len(c) < 8:
                    pred[c] = logits(imgs[c]).argmax(1)
                    continue
                pred[c] = logits(imgs[c], True, prior).argmax(1)
            accs.append((pred == y).mean())
        res[f"adabn prior {prior}"] = float(np.mean(accs))
    print(name, {k: round(float(v), 3) for k, v in res.items()}, flush=True)


for spec_arg in args.lab:
    name, _, root = spec_arg.partition("=")
    x, y = load(root)
    evaluate(f"{name} ({len(y)} cells, slides of {args.slide})", x, y, size=args.slide)
if args.pbc:
    p_x, p_y = load(args.pbc, split="test")
    evaluate("PBC test, random mixes (slides of 100)", p_x, p_y, size=100, seeds=2)
    rng = np.random.default_rng(0)
    for mix in ({"neutrophil": 80, "eosinophil": 20}, {"lymphocyte": 70, "erythroblast": 30}):
        accs = {"eval": [], "adabn": [], "adabn prior 0.5": []}
        for _ in range(5):
            idx = np.concatenate(
                [rng.choice(np.flatnonzero(p_y == CLASSES.index(c)), n, replace=False) for c, n in mix.items()]
            )
            x, y = p_x[idx], p_y[idx]
            accs["eval"].append((logits(x).argmax(1) == y).mean())
            accs["adabn"].append((logits(x, True).argmax(1) == y).mean())
            accs["adabn prior 0.5"].append((logits(x, True, 0.5).argmax(1) == y).mean())
        print("PBC skewed", mix, {k: round(float(np.mean(v)), 3) for k, v in accs.items()}, flush=True)
