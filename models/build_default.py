"""Train the project's default model and export it to ONNX.

The default model is a small VGG-style CNN that classifies the shape of the main object in the
synthetic scenes of :mod:`pyanalyzer.data.synthetic` (64x64 RGB). It is trained with batch
normalisation, which is folded into the convolutions before export, so the ONNX graph holds
only Conv, Relu, MaxPool, GlobalAveragePool, Flatten and Gemm.

Usage (from the repository root)::

    python models/build_default.py                        # train -> models/default.onnx
    python models/build_default.py --random-weights models/random.onnx   # untrained control

The run is deterministic (fixed torch seed, fixed data seeds, 2 threads) and takes a few
minutes on 2 CPU cores. ``--random-weights`` exports the same architecture with seeded
He-initialised weights and no training, for the control experiment of network dissection
(Bau et al., 2017, section 3.2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pyanalyzer.data import synthetic  # noqa: E402

# Layer plan: int = conv3x3 (padding 1) + ReLU with that many channels, "M" = MaxPool 2x2.
# One conv at full resolution instead of two keeps training within the CPU budget.
CONFIG: tuple[int | str, ...] = (16, "M", 32, 32, "M", 64, 64, "M", 128, "M")
SIZE = 64
MEAN, STD, SCALE = 0.5, 0.25, 1.0 / 255.0
PREPROCESSING = {
    "input_size": [SIZE, SIZE],
    "resize": "stretch",
    "scale": SCALE,
    "mean": [MEAN] * 3,
    "std": [STD] * 3,
    "channel_order": "rgb",
    "layout": "nchw",
}
TRAIN_SEED, HELD_OUT_SEED = 0, 1
OPSET = 17


def layer_names() -> list[str]:
    """VGG-style names of the layers in CONFIG: conv{block}_{i}, relu{block}_{i}, pool{block}."""
    names, block, i = [], 1, 1
    for c in CONFIG:
        if c == "M":
            names.append(f"pool{block}")
            block, i = block + 1, 1
        else:
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
            i += 1
    return names


class ShapeNet(nn.Module):
    """VGG-style classifier: (conv3x3-[BN]-ReLU)+ MaxPool blocks, global average pool, linear.

    Input ``[N, 3, 64, 64]`` normalised RGB; output ``[N, classes]`` logits.
    """

    def __init__(self, classes: int, batch_norm: bool) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {}
        cin, names = 3, iter(layer_names())
        for c in CONFIG:
            if c == "M":
                layers[next(names)] = nn.MaxPool2d(2)
                continue
            conv = next(names)
            layers[conv] = nn.Conv2d(cin, int(c), 3, padding=1, bias=not batch_norm)
            if batch_norm:
                layers["bn" + conv[4:]] = nn.BatchNorm2d(int(c))
            layers[next(names)] = nn.ReLU()
            cin = int(c)
        self.features = nn.Sequential()
        for name, m in layers.items():
            self.features.add_module(name, m)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.gap(self.features(x))))


def fold_batch_norm(model: ShapeNet) -> ShapeNet:
    """Plain copy of an eval-mode ``model`` with every BatchNorm folded into its conv."""
    plain = ShapeNet(model.fc.out_features, batch_norm=False)
    src = dict(model.features.named_children())
    with torch.no_grad():
        for name, m in plain.features.named_children():
            if isinstance(m, nn.Conv2d):
                conv, bn = src[name], src["bn" + name[4:]]
                s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                m.weight.copy_(conv.weight * s[:, None, None, None])
                m.bias.copy_(bn.bias - bn.running_mean * s)
        plain.fc.load_state_dict(model.fc.state_dict())
    return plain.eval()


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, H, W, 3]`` RGB -> float32 ``[N, 3, H, W]`` as PREPROCESSING says."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return ((x * SCALE - MEAN) / STD).contiguous()


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random flips and quarter turns of the whole batch: every shape class is invariant."""
    k = int(torch.randint(4, (1,), generator=g))
    if int(torch.randint(2, (1,), generator=g)):
        x = x.flip(3)
    return torch.rot90(x, k, (2, 3)).contiguous()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def train(args: argparse.Namespace) -> tuple[ShapeNet, float]:
    t0 = time.perf_counter()
    images, labels = synthetic.render_batch(args.train, seed=TRAIN_SEED, size=SIZE)
    hx, hy = synthetic.render_batch(args.held_out, seed=HELD_OUT_SEED, size=SIZE)
    x, y = normalise(images), torch.from_numpy(labels)
    hx, hy = normalise(hx), torch.from_numpy(hy)
    print(f"data: {len(x)} train + {len(hx)} held-out scenes in {time.perf_counter() - t0:.1f} s")

    model = ShapeNet(len(synthetic.class_names()), batch_norm=True)
    steps_per_epoch = len(x) // args.batch
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=total, pct_start=0.2)
    g = torch.Generator().manual_seed(args.seed)
    t1 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        seen, loss_sum = 0, 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch : (step + 1) * args.batch]
            logits = model(augment(x[idx], g))
            loss = nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen, loss_sum = seen + 1, loss_sum + loss.item()
        acc = accuracy(model, hx, hy)
        print(
            f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / seen:.3f}, "
            f"held-out acc {acc:.4f}, {time.perf_counter() - t1:.0f} s"
        )
    plain = fold_batch_norm(model.eval())
    acc = accuracy(plain, hx, hy)
    print(
        f"training: {time.perf_counter() - t1:.1f} s; held-out accuracy (seed "
        f"{HELD_OUT_SEED}, {len(hx)} scenes) after folding BN: {acc:.4f}"
    )
    return plain, acc


def export(model: ShapeNet, out: Path, description: str, accuracy_: float | None) -> None:
    """Export ``model`` to a self-contained ONNX file with pyanalyzer metadata, then check it."""
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, SIZE, SIZE)
    warnings.filterwarnings("ignore", "You are using the legacy", DeprecationWarning)
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}},
        opset_version=OPSET,
        do_constant_folding=True,
        dynamo=False,
    )
    proto = onnx.load(str(out))
    graph = proto.graph
    # The exporter shares equal initializers (e.g. zero biases) through Identity nodes: rewire
    # their consumers to the initializer itself so the graph stays plain.
    for node in [n for n in graph.node if n.op_type == "Identity"]:
        for other in graph.node:
            for j, name in enumerate(other.input):
                if name == node.output[0]:
                    other.input[j] = node.input[0]
        graph.node.remove(node)
    # Readable node names: "/features/conv1_1/Conv" -> "conv1_1"; "/fc/Gemm" -> "fc".
    for node in graph.node:
        parts = [p for p in node.name.split("/") if p and p != "features"]
        node.name = parts[0] if len(parts) == 2 else "_".join(parts) or node.op_type.lower()
    # Intermediate tensors take their producer's name, so "relu3_2" names both node and output.
    outputs = {o.name for o in graph.output}
    renamed = {}
    for node in graph.node:
        if node.output[0] not in outputs:
            renamed[node.output[0]] = node.name
            node.output[0] = node.name
    for node in graph.node:
        for j, name in enumerate(node.input):
            node.input[j] = renamed.get(name, name)
    meta = {
        "pyanalyzer.preprocessing": json.dumps(PREPROCESSING),
        "pyanalyzer.class_names": json.dumps(synthetic.class_names()),
        "pyanalyzer.description": description,
    }
    if accuracy_ is not None:
        meta["pyanalyzer.held_out_accuracy"] = f"{accuracy_:.4f}"
    del proto.metadata_props[:]
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "pyanalyzer models/build_default.py"
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out))

    ops = sorted({n.op_type for n in graph.node})
    print(f"exported {out} ({out.stat().st_size / 1024:.0f} KiB), ops {ops}")
    print("nodes:", " ".join(n.name for n in graph.node))
    images, _ = synthetic.render_batch(16, seed=99, size=SIZE)
    x = normalise(images)
    with torch.no_grad():
        ref = model(x).numpy()
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"image": x.numpy()})[0]
    print(f"onnxruntime vs torch: max abs diff {np.abs(got - ref).max():.2e}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / "models" / "default.onnx")
    p.add_argument(
        "--random-weights",
        type=Path,
        metavar="OUT",
        default=None,
        help="export the same architecture with seeded untrained weights to OUT and exit",
    )
    p.add_argument("--train", type=int, default=16000, help="training scenes (seed 0)")
    p.add_argument("--held-out", type=int, default=2000, help="held-out scenes (seed 1)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0, help="torch seed (init, shuffling)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    if args.random_weights is not None:
        model = ShapeNet(len(synthetic.class_names()), batch_norm=False).eval()
        export(
            model,
            args.random_weights,
            f"Untrained control (torch seed {args.seed}) of the default synthetic-shape CNN",
            None,
        )
        return 0
    model, acc = train(args)
    export(
        model,
        args.out,
        "VGG-style CNN classifying the main object's shape in pyanalyzer synthetic 64x64 scenes",
        acc,
    )
    print(f"total: {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
