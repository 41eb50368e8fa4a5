"""Zennit (PyTorch) on the network of a taylormap ONNX file, for cross-checks and peer throughput.

    python3 benchmarks/zennit_peer.py --model M.onnx --input X.npy --composite deep-taylor-bounded \
        [--bounds 0,1] [--target label --labels Y.npy] [--out R.npy] [--bench --batch-sizes 64,1024 --device cuda]

Builds the same network in PyTorch from the ONNX weights (Conv, Gemm/MatMul+Add, BatchNormalization folded,
Relu, MaxPool, AveragePool, GlobalAveragePool, Flatten/Reshape, final Softmax dropped) and runs Zennit with the
rules of taylormap's SPEC: z+ and w^2 without bias terms, stabiliser 1e-9 (epsilon rules: their own epsilon),
average pooling proportional to the inputs (Zennit's Norm rule), ReLU/Flatten passing relevance, max pooling
winner-take-all (the gradient). The output relevance is e_t * y_t. With --out it writes the relevance; with
--bench it prints JSON lines like `taylormap bench --json`.
"""
import argparse
import json
import time

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from zennit.composites import NameMapComposite
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, WSquare, ZBox, ZPlus

EPS = 1e-9


def torch_model(path):
    m = onnx.load(path)
    w = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in m.graph.initializer}
    layers = []
    for node in m.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        op = node.op_type
        if op == "Conv":
            wt = w[node.input[1]]
            conv = nn.Conv2d(wt.shape[1], wt.shape[0], wt.shape[2:], stride=tuple(a.get("strides", [1, 1])),
                             bias=True)
            pads = list(a.get("pads", [0, 0, 0, 0]))
            auto = a.get("auto_pad", b"NOTSET")
            auto = auto.decode() if isinstance(auto, bytes) else auto
            if auto in ("SAME_UPPER", "SAME_LOWER"):  # stride 1: output size = input size
                for d, k in enumerate(wt.shape[2:]):
                    small, large = (k - 1) // 2, (k - 1) - (k - 1) // 2
                    pads[d], pads[d + 2] = (small, large) if auto == "SAME_UPPER" else (large, small)
            if pads[0] != pads[2] or pads[1] != pads[3]:
                layers.append(nn.ZeroPad2d((pads[1], pads[3], pads[0], pads[2])))
            else:
                conv.padding = (pads[0], pads[1])
            conv.weight.data = torch.tensor(wt)
            conv.bias.data = torch.tensor(w[node.input[2]]) if len(node.input) > 2 else torch.zeros(wt.shape[0])
            layers.append(conv)
        elif op in ("Gemm", "MatMul"):
            wt = w[node.input[1]]
            wt = wt if (op == "Gemm" and a.get("transB", 0)) else wt.T
            lin = nn.Linear(wt.shape[1], wt.shape[0])
            lin.weight.data = torch.tensor(wt * a.get("alpha", 1.0))
            b = w[node.input[2]] * a.get("beta", 1.0) if len(node.input) > 2 else np.zeros(wt.shape[0])
            lin.bias.data = torch.tensor(b)
            layers.append(lin)
        elif op == "Add":
            layers[-1].bias.data = torch.tensor(w[node.input[1]])
        elif op == "BatchNormalization":
            g, b, mu, var = (w[node.input[i]] for i in range(1, 5))
            s = g / np.sqrt(var + a.get("epsilon", 1e-5))
            last = layers[-1]
            shape = (-1,) + (1,) * (last.weight.dim() - 1)
            last.weight.data = last.weight.data * torch.tensor(s).reshape(shape)
            last.bias.data = (last.bias.data - torch.tensor(mu)) * torch.tensor(s) + torch.tensor(b)
        elif op == "Relu":
            layers.append(nn.ReLU())
        elif op == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            layers.append(nn.MaxPool2d(a["kernel_shape"], a.get("strides", a["kernel_shape"]), (pads[0], pads[1])))
        elif op == "AveragePool":
            pads = a.get("pads", [0, 0, 0, 0])
            layers.append(nn.AvgPool2d(a["kernel_shape"], a.get("strides", a["kernel_shape"]), (pads[0], pads[1]),
                                       count_include_pad=bool(a.get("count_include_pad", 0))))
        elif op == "GlobalAveragePool":
            layers.append(nn.AdaptiveAvgPool2d(1))
        elif op in ("Flatten", "Reshape"):
            if not layers or not isinstance(layers[-1], nn.Flatten):
                layers.append(nn.Flatten())
        elif op in ("Softmax", "LogSoftmax", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Concat",
                    "Constant"):
            continue
        else:
            raise SystemExit(f"unsupported op {op}")
    return nn.Sequential(*layers).double().eval()


def rules(model, composite, bounds):
    linear = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    out = []
    for k, (name, m) in enumerate(linear):
        conv, first = isinstance(m, nn.Conv2d), k == 0
        zplus = ZPlus(stabilizer=EPS, zero_params="bias")
        zbox = ZBox(low=bounds[0], high=bounds[1], stabilizer=EPS)
        eps = Epsilon(epsilon=0.25)
        rule = {
            "deep-taylor": WSquare(stabilizer=EPS, zero_params="bias") if first else zplus,
            "deep-taylor-bounded": zbox if first else zplus,
            "epsilon-plus": zplus if conv else eps,
            "epsilon-alpha2-beta1": AlphaBeta(2.0, 1.0, stabilizer=EPS) if (first or conv) else eps,
            "lrp-zero": Epsilon(epsilon=EPS),
            "flat-first": Flat(stabilizer=EPS) if first else zplus,
        }[composite]
        out.append(([name], rule))
    for name, m in model.named_modules():
        if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            out.append(([name], Norm(stabilizer=EPS)))
        elif isinstance(m, nn.ReLU):
            out.append(([name], Pass()))
    return NameMapComposite(out)


def explain(model, composite, x, targets=None):
    x = x.clone().requires_grad_(True)
    with composite.context(model) as modified:
        y = modified(x)
        t = y.argmax(1) if targets is None else targets
        seed = torch.zeros_like(y)
        seed[torch.arange(len(y)), t] = y[torch.arange(len(y)), t].detach()
        (r,) = torch.autograd.grad(y, x, seed)
    return r


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--composite", default="deep-taylor")
    p.add_argument("--bounds", default="0,1")
    p.add_argument("--labels")
    p.add_argument("--out")
    p.add_argument("--bench", action="store_true")
    p.add_argument("--batch-sizes", default="64,1024")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--min-seconds", type=float, default=2.0)
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    model = torch_model(a.model).to(a.device, dtype)
    x = torch.tensor(np.load(a.input), dtype=dtype, device=a.device)
    composite = rules(model, a.composite, [float(v) for v in a.bounds.split(",")])
    targets = torch.tensor(np.load(a.labels), device=a.device).long() if a.labels else None
    if a.out:
        np.save(a.out, explain(model, composite, x, targets).detach().cpu().numpy().astype(np.float32))
    if a.bench:
        for batch in [int(b) for b in a.batch_sizes.split(",")]:
            xb = x[torch.arange(batch) % len(x)]
            explain(model, composite, xb)
            if a.device == "cuda":
                torch.cuda.synchronize()
            n, start = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - start < a.min_seconds:
                r = explain(model, composite, xb).cpu()
                n += batch
            s = time.perf_counter() - start
            print(json.dumps({"backend": f"zennit-{a.device}", "adapter": f"PyTorch {torch.__version__} {a.dtype}",
                              "model": a.model, "composite": a.composite, "batch_size": batch, "samples": n,
                              "seconds": s, "heatmaps_per_second": n / s}))


if __name__ == "__main__":
    main()
