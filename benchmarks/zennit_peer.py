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
import numpy as np
import torch
from torch import nn
from torch_net import bench, peer_arguments, torch_model
from zennit.composites import NameMapComposite
from zennit.rules import AlphaBeta, Epsilon, Flat, Gamma, Norm, Pass, WSquare, ZBox, ZPlus

EPS = 1e-9


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
    p = peer_arguments()
    p.add_argument("--composite", default="deep-taylor")
    p.add_argument("--bounds", default="0,1")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    model = torch_model(a.model).to(a.device, dtype)
    x = torch.tensor(np.load(a.input), dtype=dtype, device=a.device)
    composite = rules(model, a.composite, [float(v) for v in a.bounds.split(",")])
    targets = torch.tensor(np.load(a.labels), device=a.device).long() if a.labels else None
    if a.out:
        np.save(a.out, explain(model, composite, x, targets).detach().cpu().numpy().astype(np.float32))
    if a.bench:
        bench(f"zennit-{a.device}", a, x, lambda xb: explain(model, composite, xb))


if __name__ == "__main__":
    main()
