"""The last ResNet stage fine-tuned on a laboratory's cells, on a CPU, from the deployed int8 file itself.

Why: the head alone stops near 0.84 on an unseen laboratory (LISC, half its cells reviewed): the pooled
features of the frozen network do not separate that laboratory's classes much further, whatever sits on
them.  Letting the last stage (``layer4``: 3 bottleneck blocks, 15 M weights, a third of the network's
compute at 128 px) learn as well reaches ~0.94 there in about two minutes on two cores.

What it starts from and what it writes: the int8 file that is deployed (a model may carry float weights
beside it, ``training.weights``, but the shipped 1.2.0 does not, and the int8 network is what reads the
laboratory's slides).  The stage's weights are the
parent's int8 weights dequantised (7-bit, BatchNorm already folded into each convolution, ReLUs implied by
the unsigned activations), rebuilt as a small PyTorch module; the stage's input - the parent's int8 network
up to the end of ``layer3`` - is computed once by ONNX Runtime, so training touches only the stage and the
head.  The result is written back into a copy of the parent graph: new weights quantised the parent's way
(per output channel, symmetric, -64..64, so every CPU computes the same integer sums; ``wbcproc.int8``),
activation ranges re-measured on the training cells as ONNX Runtime's MinMax calibration does.  Every
figure ``wbc adapt`` reports (held-out laboratory cells, original-laboratory check) is then measured on that
written int8 file, not on the float module.

The original laboratory is kept by replay: the fit mixes each batch of laboratory cells with as many
original training cells (``<model>.replay.npz`` holds them as 128 px JPEG, 50 per class), and the
original-laboratory check (30 validation cells per class) must not drop by more than one point.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

STAGE = "layer4"
WEIGHT_QMAX = 64  # the parent's 7-bit weights: no int16 saturation in u8 x s8 kernels without VNNI
KD_T, KD_WEIGHT = 2.0, 1.0  # replay cells also keep the parent's softened outputs (fine_tune)
# optimisation steps (batches of laboratory cells) the fine-tune aims at, within MIN/MAX_EPOCHS: the time is
# bounded (~0.6 s a step on 2 cores) for any number of reviewed cells.  6 epochs of 120 cells (90 steps) had
# not converged (a hard laboratory, float stage: 0.87 at 6 epochs, 0.89 at 12, 0.90 at 20; LISC 0.917 ->
# 0.925 at 12).  Few cells gain nothing from more passes (LISC, 25 cells: 0.796 at 6, 0.787 at 20) and
# the classes a laboratory did not review drift (5-class fixture lab: IG on the check 1.00 at 6 epochs,
# 0.97 at 12, 0.93 at 20): at most 12.
TARGET_STEPS, MIN_EPOCHS, MAX_EPOCHS = 240, 6, 12
# the stage's first blocks kept as the parent's (fine_tune's ``frozen``): 0, every block learns
FROZEN_BLOCKS = 0
_CONV = re.compile(rf"^/{STAGE}/{STAGE}\.(\d+)/(conv1|conv2|conv3|downsample/downsample\.0)/Conv$")


class StageError(ValueError):
    """The model's graph does not have the stage this module adapts (a ResNet ``layer4`` in QDQ int8)."""


@dataclass
class StageConv:
    node: onnx.NodeProto
    weight_q: str  # int8 weight initializer
    weight_scale: str
    weight_zp: str
    bias: str  # bias initializer: float, or int32 when ``bias_scale`` is set (scale = input scale x weight scale)
    bias_scale: str | None
    input_scale: str  # the scale of the activation this convolution reads
    w: np.ndarray  # dequantised (out, in, kh, kw)
    b: np.ndarray
    stride: int
    pad: int


@dataclass
class Stage:
    """The stage's convolutions by block and role, its input tensor and the tensors re-quantised after it."""

    model: onnx.ModelProto
    input: str
    blocks: list[dict[str, StageConv]]
    adds: list[onnx.NodeProto]  # each block's residual Add (its output carries the block's ReLU, as u8)
    pool: onnx.NodeProto


def _stage_conv(n: onnx.NodeProto, inits: dict, producers: dict) -> StageConv:
    dq, dq_in = producers.get(n.input[1]), producers.get(n.input[0])
    if dq is None or dq.op_type != "DequantizeLinear" or dq_in is None or dq_in.op_type != "DequantizeLinear":
        raise StageError(f"{n.name}: expected int8 weights and input (DequantizeLinear): not a QDQ int8 graph")
    if len(n.input) < 3:
        raise StageError(f"{n.name}: expected a bias")
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float32)
    scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float32)
    if n.input[2] in inits:
        bias, bias_scale = n.input[2], None
        b = numpy_helper.to_array(inits[bias]).astype(np.float32)
    else:
        dq_b = producers.get(n.input[2])
        if dq_b is None or dq_b.op_type != "DequantizeLinear":
            raise StageError(f"{n.name}: its bias is neither a constant nor a dequantised constant")
        bias, bias_scale = dq_b.input[0], dq_b.input[1]
        b = numpy_helper.to_array(inits[bias]).astype(np.float32) * numpy_helper.to_array(inits[bias_scale])
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    pads, strides = attrs.get("pads", [0, 0, 0, 0]), attrs.get("strides", [1, 1])
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise StageError(f"{n.name}: grouped or dilated convolutions are not supported")
    if len(set(pads)) != 1 or len(set(strides)) != 1:
        raise StageError(f"{n.name}: expected symmetric padding and equal strides")
    return StageConv(
        n, dq.input[0], dq.input[1], dq.input[2], bias, bias_scale, dq_in.input[1],
        q * scale.reshape(-1, 1, 1, 1), b.astype(np.float32), int(strides[0]), int(pads[0]),
    )  # fmt: skip


def read_stage(model: onnx.ModelProto) -> Stage:
    """The stage of a QDQ int8 ResNet graph (as ``wbc train --quantize`` exports it); StageError otherwise."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    blocks: dict[int, dict[str, StageConv]] = {}
    for n in model.graph.node:
        m = _CONV.match(n.name)
        if n.op_type == "Conv" and m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2).split("/")[0]] = _stage_conv(n, inits, producers)
    if not blocks or any({"conv1", "conv2", "conv3"} - set(b) for b in blocks.values()):
        raise StageError(f"no complete ResNet {STAGE} (conv1-3 per block) in the graph: only such models adapt it")
    order = sorted(blocks)
    adds = {n.name: n for n in model.graph.node if n.op_type == "Add"}
    missing = [i for i in order if f"/{STAGE}/{STAGE}.{i}/Add" not in adds]
    if missing:
        raise StageError(f"blocks {missing} of {STAGE} have no residual Add")
    pool = next((n for n in model.graph.node if n.op_type == "GlobalAveragePool"), None)
    if pool is None:
        raise StageError("no GlobalAveragePool after the stage")
    return Stage(
        model,
        blocks[order[0]]["conv1"].node.input[0],
        [blocks[i] for i in order],
        [adds[f"/{STAGE}/{STAGE}.{i}/Add"] for i in order],
        pool,
    )


def stage_module(stage: Stage):
    """The stage + pooling + head as a PyTorch module, from the dequantised int8 weights."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self, convs: dict[str, StageConv]) -> None:
            super().__init__()
            self.convs = torch.nn.ModuleDict({k: _conv(c) for k, c in convs.items()})

        def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
            c = self.convs
            h1 = torch.relu(c["conv1"](x))
            h2 = torch.relu(c["conv2"](h1))
            h3 = c["conv3"](h2)
            idt = c["downsample"](x) if "downsample" in c else x
            out = torch.relu(h3 + idt)
            if taps is not None:
                taps.update({"conv1": h1, "conv2": h2, "conv3": h3, "out": out})
                if "downsample" in c:
                    taps["downsample"] = idt
            return out

    def _conv(c: StageConv) -> torch.nn.Conv2d:
        out_c, in_c, kh, _kw = c.w.shape
        conv = torch.nn.Conv2d(in_c, out_c, kh, stride=c.stride, padding=c.pad, bias=True)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(c.w))
            conv.bias.copy_(torch.from_numpy(c.b))
        return conv

    class StageNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(b) for b in stage.blocks])

        def forward(self, x: torch.Tensor, taps: list | None = None, start: int = 0) -> torch.Tensor:
            """``start``: ``x`` is the input of that block (the blocks before it are frozen)."""
            for blk in self.blocks[start:]:
                t = {} if taps is not None else None
                x = blk(x, t)
                if taps is not None:
                    taps.append(t)
            return x.mean(dim=(2, 3))

    return StageNet()


def stage_inputs(model_path: Path, stage: Stage, x: np.ndarray, threads: int = 0, batch: int = 64) -> np.ndarray:
    """The parent int8 network's output at the stage's input (float16, N x C x H x W), by ONNX Runtime."""
    from training.sessions import session_with_output

    sess = session_with_output(stage.model, stage.input, model_path, threads)
    out = [sess.run([stage.input], {"input": x[i : i + batch]})[0].astype(np.float16) for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0,), np.float16)


def planned_epochs(n_views: int, batch: int = 64) -> int:
    """Epochs that make about ``TARGET_STEPS`` batches of ``n_views`` laboratory views, within
    [MIN_EPOCHS, MAX_EPOCHS]: 25-120 cells x 8 views -> 12 epochs, 200 cells -> 10, 400 -> 6."""
    steps = max(1, -(-n_views // batch))
    return int(min(MAX_EPOCHS, max(MIN_EPOCHS, -(-TARGET_STEPS // steps))))


class Tuned(NamedTuple):
    """A fine-tuned stage and head, and how many epochs it ran (fewer than planned when a deadline cut it)."""

    net: Any
    weight: np.ndarray
    bias: np.ndarray
    epochs: int


def fine_tune(
    stage: Stage,
    head_w: np.ndarray,
    head_b: np.ndarray,
    lab_x: np.ndarray,
    lab_y: np.ndarray,
    replay_x: np.ndarray | None,
    replay_y: np.ndarray | None,
    *,
    epochs: int | None = None,
    lr: float = 1e-4,
    batch: int = 64,
    seed: int = 0,
    threads: int = 0,
    frozen: int = 0,
    teacher: np.ndarray | None = None,
    deadline: float | None = None,
    log=lambda *_: None,
) -> Tuned:
    """AdamW on the stage and head; each batch of laboratory cells is joined by as many replay cells, which
    learn their labels and, as in Learning without Forgetting (Li & Hoiem 2017), the parent's own outputs
    (softened at temperature ``KD_T``, weight ``KD_WEIGHT``): on LISC this kept the original-laboratory
    check within 0.8 points where labels alone lost up to 1.7.  ``epochs`` None: :func:`planned_epochs`.
    ``frozen``: the stage's first blocks kept as the parent's; their outputs are computed once and only the
    blocks after them learn (the first block, at twice the resolution and with the stride, is most of a
    step's time on a CPU).  ``teacher``: the parent's logits for the replay cells (:func:`parent_outputs`),
    computed here when not given.  ``deadline`` (``time.monotonic()``): after each epoch, the epochs left are
    cut to those that still fit before it (at least one epoch runs) - the learning rate is constant, so a
    shorter run is the same run stopped earlier."""
    import torch
    import torch.nn.functional as F

    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    net = stage_module(stage)
    fc = torch.nn.Linear(head_w.shape[1], head_w.shape[0])
    with torch.no_grad():
        fc.weight.copy_(torch.from_numpy(head_w))
        fc.bias.copy_(torch.from_numpy(head_b))
    learning = [p for blk in net.blocks[frozen:] for p in blk.parameters()]
    opt = torch.optim.AdamW([*learning, *fc.parameters()], lr=lr, weight_decay=0.01)

    X, Y = _ahead(net, lab_x, frozen, batch), torch.from_numpy(lab_y)
    R = _ahead(net, replay_x, frozen, batch) if replay_x is not None else None
    RY = torch.from_numpy(replay_y) if replay_y is not None else None
    if R is not None and teacher is None:
        teacher = parent_outputs(stage, head_w, head_b, replay_x, batch)
    teacher = torch.from_numpy(teacher) if teacher is not None else None
    epochs = planned = epochs or planned_epochs(len(X), batch)
    started = time.monotonic()
    epoch = 0
    while epoch < epochs:
        _progress(log, epoch, epochs, started)
        perm = torch.randperm(len(X), generator=gen)
        for i in range(0, len(X), batch):
            j = perm[i : i + batch]
            xb, yb = X[j].float(), Y[j]
            k = None
            if R is not None:
                k = torch.randint(0, len(R), (len(j),), generator=gen)
                xb, yb = torch.cat([xb, R[k].float()]), torch.cat([yb, RY[k]])
            logits = fc(net(xb, start=frozen))
            loss = F.cross_entropy(logits, yb, label_smoothing=0.1)
            if k is not None:
                soft = F.log_softmax(logits[len(j) :] / KD_T, 1)
                loss = loss + KD_WEIGHT * KD_T**2 * F.kl_div(
                    soft, F.softmax(teacher[k] / KD_T, 1), reduction="batchmean"
                )
            opt.zero_grad()
            loss.backward()
            opt.step()
        epoch += 1
        if deadline is not None and epoch < epochs:
            fit = epoch + int((deadline - time.monotonic()) // ((time.monotonic() - started) / epoch))
            if fit < epochs:
                epochs = max(epoch, fit)
                log(f"time budget: {epochs} of the {planned} planned epochs fit")
    return Tuned(net, fc.weight.detach().numpy().copy(), fc.bias.detach().numpy().copy(), epochs)


def parent_outputs(stage: Stage, head_w: np.ndarray, head_b: np.ndarray, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """The parent's logits (float32) from stage inputs ``x``, by the stage rebuilt from its int8 weights: what
    the replay cells are distilled towards.  The same for every adaptation of one model file."""
    import torch

    net = stage_module(stage)
    with torch.no_grad():
        pooled = torch.cat([net(torch.from_numpy(x[i : i + batch]).float()) for i in range(0, len(x), batch)])
    return (pooled.numpy() @ head_w.T + head_b).astype(np.float32)


def _ahead(net, a: np.ndarray, frozen: int, batch: int):
    """The inputs of the first learning block (float16, as the stage inputs are): ``a`` through the frozen ones."""
    import torch

    t = torch.from_numpy(a)
    if not frozen:
        return t
    with torch.no_grad():
        parts = [t[i : i + batch].float() for i in range(0, len(t), batch)]
        for blk in net.blocks[:frozen]:
            parts = [blk(p) for p in parts]
    return torch.cat([p.half() for p in parts])


def _progress(log, epoch: int, epochs: int, started: float) -> None:
    """One line per epoch; the epochs so far give the time left (each epoch is the same work)."""
    if not epoch:
        log(f"epoch 1/{epochs}")
        return
    spent = time.monotonic() - started
    log(f"epoch {epoch + 1}/{epochs}: {spent:.0f} s so far, about {spent / epoch * (epochs - epoch):.0f} s left")


def _minmax_u8(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """ONNX Runtime's MinMax calibration for an unsigned 8-bit tensor (range always includes 0)."""
    lo, hi = min(0.0, lo), max(0.0, hi)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    return np.float32(scale), np.uint8(np.clip(round(-lo / scale), 0, 255))


def _measure_ranges(stage: Stage, net, calib_x: np.ndarray, batch: int) -> dict[str, list[float]]:
    """[min, max] of every re-quantised tensor of the stage on the calibration cells, by the float module."""
    import torch

    ranges: dict[str, list[float]] = {}

    def seen(name: str, v) -> None:
        r = ranges.setdefault(name, [np.inf, -np.inf])
        r[0], r[1] = min(r[0], float(v.min())), max(r[1], float(v.max()))

    with torch.no_grad():
        for i in range(0, len(calib_x), batch):
            taps: list[dict] = []
            pooled = net(torch.from_numpy(calib_x[i : i + batch]).float(), taps)
            for t, convs, add in zip(taps, stage.blocks, stage.adds, strict=True):
                for role, c in convs.items():
                    seen(c.node.output[0], t[role])
                seen(add.output[0], t["out"])
            seen(stage.pool.output[0], pooled)
    return ranges


def write_stage(stage: Stage, net, calib_x: np.ndarray, out_path: Path, batch: int = 64) -> Path:
    """A copy of the parent graph with the stage's weights, biases and activation ranges replaced."""
    m = onnx.ModelProto()
    m.CopyFrom(stage.model)
    inits = {t.name: t for t in m.graph.initializer}

    def put(name: str, arr: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))

    ranges = _measure_ranges(stage, net, calib_x, batch)
    # the pooled features pass Flatten (a reshape) before the head: the same range there
    flatten = next((n for n in m.graph.node if n.op_type == "Flatten"), None)
    quantizers = {n.input[0]: n for n in m.graph.node if n.op_type == "QuantizeLinear"}
    if flatten is not None and flatten.output[0] in quantizers:
        ranges[flatten.output[0]] = ranges[stage.pool.output[0]]
    for tensor, (lo, hi) in ranges.items():
        qn = quantizers.get(tensor)
        if qn is None or numpy_helper.to_array(inits[qn.input[2]]).dtype != np.uint8:
            raise StageError(f"tensor {tensor!r} of the stage is not quantised to uint8 (QDQ): cannot re-quantise it")
        scale, zp = _minmax_u8(lo, hi)
        put(qn.input[1], np.asarray(scale, np.float32))
        put(qn.input[2], np.asarray(zp, np.uint8))
    # weights (per output channel, symmetric, -64..64), then biases at input scale x weight scale
    for blk, convs in zip(net.blocks, stage.blocks, strict=True):
        for role, c in convs.items():
            w = blk.convs[role].weight.detach().numpy()
            w_scale = (np.maximum(np.abs(w).reshape(len(w), -1).max(1), 1e-12) / WEIGHT_QMAX).astype(np.float32)
            q = np.clip(np.round(w / w_scale.reshape(-1, 1, 1, 1)), -WEIGHT_QMAX, WEIGHT_QMAX)
            put(c.weight_q, q.astype(numpy_helper.to_array(inits[c.weight_q]).dtype))
            put(c.weight_scale, w_scale)
            b = blk.convs[role].bias.detach().numpy().astype(np.float32)
            if c.bias_scale is None:
                put(c.bias, b)
            else:
                b_scale = (numpy_helper.to_array(inits[c.input_scale]).astype(np.float32) * w_scale).astype(np.float32)
                put(c.bias, np.round(b / b_scale).astype(np.int32))
                put(c.bias_scale, b_scale)
    onnx.checker.check_model(m)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out_path))
    return out_path
