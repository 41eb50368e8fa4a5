"""Captum's LRP (PyTorch) on the network of a taylormap ONNX file, for cross-checks and peer throughput.

    python3 benchmarks/captum_peer.py --model M.onnx --input X.npy --composite epsilon-plus \
        [--labels Y.npy] [--out R.npy] [--bench --batch-sizes 64,1024 --device cuda --dtype float32]

Captum (0.9) has the epsilon, gamma and alpha1-beta0 (z+) rules and no z^B or w^2 rule, so only the composites
it can express with taylormap's SPEC rules are offered, each layer as in taylormap:
- lrp-zero: epsilon 1e-9 on every Conv/Linear (LRP-0 with the bias, stabiliser 1e-9);
- epsilon-plus: z+ without bias on every Conv (Captum's Alpha1_Beta0_Rule clamps the weights, not the inputs:
  the same as z+ where the inputs are >= 0, as on MNIST pixels and after a ReLU), epsilon 0.25 on every Linear.
Max and average pooling take Captum's default (epsilon 1e-9: winner-take-all, and proportional to the inputs),
ReLU passes relevance. Flatten runs as a tensor reshape inside the module (Captum has no rule for nn.Flatten).
The output relevance is e_t * y_t, as in taylormap. With --out it writes the relevance; with --bench it prints
JSON lines like `taylormap bench --json`.
"""
import importlib.abc
import importlib.machinery
import sys
import types
from unittest import mock

import numpy as np
import torch
from torch import nn
from torch_net import bench, peer_arguments, torch_model


class _NoPlots(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Captum imports matplotlib for its plotting helpers only; where matplotlib is missing (the lent GPU
    machines), stand-ins let LRP import without it."""

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("matplotlib", "mpl_toolkits"):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = lambda attr: mock.MagicMock(name=f"{spec.name}.{attr}")
        return module

    def exec_module(self, module):
        pass


try:
    import matplotlib  # noqa: F401
except ImportError:
    sys.meta_path.insert(0, _NoPlots())
from captum.attr import LRP  # noqa: E402
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule  # noqa: E402

EPS = 1e-9
COMPOSITES = ("lrp-zero", "epsilon-plus")


class Net(nn.Module):
    """The layers of torch_net's Sequential, each Flatten done as a reshape (not a module: Captum has no rule for
    nn.Flatten)."""

    def __init__(self, sequential):
        super().__init__()
        kept, self.flatten_before = [], set()
        for m in sequential:
            if isinstance(m, nn.Flatten):
                self.flatten_before.add(len(kept))
            else:
                kept.append(m)
        self.layers = nn.ModuleList(kept)

    def forward(self, x):
        for i, m in enumerate(self.layers):
            x = m(torch.flatten(x, 1) if i in self.flatten_before else x)
        return torch.flatten(x, 1) if len(self.layers) in self.flatten_before else x


def set_rules(net, composite):
    for m in net.layers:
        if isinstance(m, nn.Conv2d):
            m.rule = Alpha1_Beta0_Rule(set_bias_to_zero=True) if composite == "epsilon-plus" else EpsilonRule(EPS)
        elif isinstance(m, nn.Linear):
            m.rule = EpsilonRule(0.25) if composite == "epsilon-plus" else EpsilonRule(EPS)


def explain(lrp, net, x, targets=None):
    if targets is None:
        with torch.no_grad():
            targets = net(x).argmax(1)
    return lrp.attribute(x.clone().requires_grad_(True), target=targets).detach()


def main():
    p = peer_arguments()
    p.add_argument("--composite", default="epsilon-plus", choices=COMPOSITES)
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    net = Net(torch_model(a.model)).to(a.device, dtype).eval()
    set_rules(net, a.composite)
    lrp = LRP(net)
    x = torch.tensor(np.load(a.input), dtype=dtype, device=a.device)
    targets = torch.tensor(np.load(a.labels), device=a.device).long() if a.labels else None
    if a.out:
        np.save(a.out, explain(lrp, net, x, targets).cpu().numpy().astype(np.float32))
    if a.bench:
        bench(f"captum-{a.device}", a, x, lambda xb: explain(lrp, net, xb))


if __name__ == "__main__":
    main()
