"""The network of a taylormap ONNX file as a PyTorch module, for the peer scripts (zennit_peer.py, captum_peer.py).

Conv, Gemm/MatMul+Add, BatchNormalization folded, Relu, MaxPool, AveragePool, GlobalAveragePool, Flatten/Reshape;
a final Softmax and shape-only nodes are dropped. The weights are read from the same file taylormap reads.
"""
import argparse
import json
import time

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn


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


def bench(backend, a, x, explain):
    """Prints one JSON line per batch size like `taylormap bench --json`: batches of inputs cycled from `x` are
    explained (relevance back on the host) until `a.min_seconds` have passed, after one warm-up batch."""
    for batch in [int(b) for b in a.batch_sizes.split(",")]:
        xb = x[torch.arange(batch) % len(x)]
        explain(xb)
        if a.device == "cuda":
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - start < a.min_seconds:
            explain(xb).cpu()
            n += batch
        s = time.perf_counter() - start
        print(json.dumps({"backend": backend, "adapter": f"PyTorch {torch.__version__} {a.dtype}",
                          "model": a.model, "composite": a.composite, "batch_size": batch, "samples": n,
                          "seconds": s, "heatmaps_per_second": n / s}), flush=True)


def peer_arguments():
    """The options both peer scripts take (each adds --composite and its own)."""
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--labels", help="targets (NPY of class indices) instead of the predicted class")
    p.add_argument("--out", help="write the relevance of every input sample here (NPY, float32)")
    p.add_argument("--bench", action="store_true", help="print throughput JSON lines like `taylormap bench --json`")
    p.add_argument("--batch-sizes", default="64,1024")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float64")
    p.add_argument("--min-seconds", type=float, default=2.0)
    return p
