"""iNNvestigate (TensorFlow/Keras) on the network of a taylormap ONNX file, for cross-checks and peer throughput.

    python3 benchmarks/innvestigate_peer.py --model M.onnx --input X.npy --composite deep-taylor-bounded \
        [--bounds 0,1] [--out R.npy] [--bench --batch-sizes 64,1024]

iNNvestigate 2.1 needs TensorFlow < 2.15 and numpy < 2, so it runs from its own virtual environment (see
benchmarks/README.md), on the CPU. It chooses rules by layer kind, so two of taylormap's composites map onto its
analyzers exactly:
- deep-taylor-bounded: `deep_taylor.bounded` (z^B on the first layer, z+ without bias on every kernel layer
  followed by a ReLU);
- lrp-zero: `lrp.z` (LRP-0 with the bias).
The network is rebuilt in Keras (channels last) from the ONNX weights: Conv, Gemm/MatMul+Add, BatchNormalization
folded, Relu (fused into the kernel layer before it), MaxPool, Flatten/Reshape; a final Softmax is dropped. For
deep-taylor-bounded the output layer gets a ReLU too: iNNvestigate's DeepTaylor applies w^2 to a kernel layer
without one, where the contract's composite applies z+; the explained score, the predicted class's logit, is
unchanged where it is positive. Max pooling passes relevance to the arg-max (the gradient), as in taylormap.
Relevance is e_t * y_t for the predicted class; --out writes it in taylormap's layout (N, C, H, W).
"""
import argparse
import importlib.metadata
import json
import time

import numpy as np
import onnx
from onnx import numpy_helper

import tensorflow as tf

tf.compat.v1.disable_eager_execution()  # iNNvestigate 2 builds TF1-style graphs
import innvestigate  # noqa: E402
from tensorflow import keras  # noqa: E402

COMPOSITES = ("deep-taylor-bounded", "lrp-zero")


def keras_model(path, relu_output):
    """The ONNX network in Keras, channels last; returns the model and the NCHW input shape."""
    m = onnx.load(path)
    w = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in m.graph.initializer}
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
    layers = []  # [kind, params]; kernel layers get "relu" when a Relu follows
    chw = list(dims)  # the current shape, in ONNX (C, H, W) order, for the first Dense after Flatten
    flat_from = None
    for node in m.graph.node:
        a = {x.name: onnx.helper.get_attribute_value(x) for x in node.attribute}
        op = node.op_type
        if op == "Conv":
            k = w[node.input[1]]
            b = w[node.input[2]] if len(node.input) > 2 else np.zeros(k.shape[0], np.float32)
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if any(pads) or a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise SystemExit("padded convolutions are not supported here")
            stride = tuple(a.get("strides", [1, 1]))
            layers.append(["conv", {"k": k, "b": b, "stride": stride, "relu": False}])
            chw = [k.shape[0], (chw[1] - k.shape[2]) // stride[0] + 1, (chw[2] - k.shape[3]) // stride[1] + 1]
        elif op in ("Gemm", "MatMul"):
            k = w[node.input[1]]
            k = k.T if (op == "Gemm" and a.get("transB", 0)) else k  # (inputs, outputs)
            k = k * a.get("alpha", 1.0)
            b = w[node.input[2]] * a.get("beta", 1.0) if len(node.input) > 2 else np.zeros(k.shape[1], np.float32)
            if flat_from is not None:  # reorder rows from (C, H, W) flattening to Keras's (H, W, C)
                c, h, ww = flat_from
                k = k.reshape(c, h, ww, -1).transpose(1, 2, 0, 3).reshape(c * h * ww, -1)
                flat_from = None
            layers.append(["dense", {"k": k, "b": b, "relu": False}])
        elif op == "Add":
            layers[-1][1]["b"] = w[node.input[1]]
        elif op == "BatchNormalization":
            g, b, mu, var = (w[node.input[i]] for i in range(1, 5))
            s = g / np.sqrt(var + a.get("epsilon", 1e-5))
            p = layers[-1][1]
            p["k"] = p["k"] * (s.reshape(-1, 1, 1, 1) if layers[-1][0] == "conv" else s)
            p["b"] = (p["b"] - mu) * s + b
        elif op == "Relu":
            if layers and layers[-1][0] in ("conv", "dense") and not layers[-1][1]["relu"]:
                layers[-1][1]["relu"] = True
            else:
                layers.append(["relu", {}])
        elif op == "MaxPool":
            if any(a.get("pads", [0, 0, 0, 0])):
                raise SystemExit("padded max pooling is not supported here")
            kk = tuple(a["kernel_shape"])
            st = tuple(a.get("strides", kk))
            layers.append(["maxpool", {"k": kk, "stride": st}])
            chw = [chw[0], (chw[1] - kk[0]) // st[0] + 1, (chw[2] - kk[1]) // st[1] + 1]
        elif op in ("Flatten", "Reshape"):
            if len(chw) == 3:
                flat_from = tuple(chw)
                layers.append(["flatten", {}])
                chw = [int(np.prod(chw))]
        elif op in ("Softmax", "LogSoftmax", "Identity", "Dropout", "Shape", "Gather", "Unsqueeze", "Concat",
                    "Constant"):
            continue
        else:
            raise SystemExit(f"unsupported op {op}")
    if relu_output and layers[-1][0] in ("conv", "dense"):
        layers[-1][1]["relu"] = True
    x = inp = keras.Input(shape=(dims[1], dims[2], dims[0]) if len(dims) == 3 else tuple(dims))
    for kind, p in layers:
        act = "relu" if p.get("relu") else None
        if kind == "conv":
            layer = keras.layers.Conv2D(p["k"].shape[0], p["k"].shape[2:], strides=p["stride"], activation=act)
            x = layer(x)
            layer.set_weights([p["k"].transpose(2, 3, 1, 0), p["b"]])
        elif kind == "dense":
            layer = keras.layers.Dense(p["k"].shape[1], activation=act)
            x = layer(x)
            layer.set_weights([p["k"], p["b"]])
        elif kind == "relu":
            x = keras.layers.Activation("relu")(x)
        elif kind == "maxpool":
            x = keras.layers.MaxPooling2D(p["k"], p["stride"])(x)
        elif kind == "flatten":
            x = keras.layers.Flatten()(x)
    return keras.Model(inp, x), dims


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--input", required=True)
    p.add_argument("--composite", default="deep-taylor-bounded", choices=COMPOSITES)
    p.add_argument("--bounds", default="0,1")
    p.add_argument("--out", help="write the relevance of every input sample here (NPY, float32, NCHW)")
    p.add_argument("--bench", action="store_true", help="print throughput JSON lines like `taylormap bench --json`")
    p.add_argument("--batch-sizes", default="64,1024")
    p.add_argument("--min-seconds", type=float, default=2.0)
    a = p.parse_args()
    model, dims = keras_model(a.model, relu_output=a.composite == "deep-taylor-bounded")
    if a.composite == "deep-taylor-bounded":
        low, high = (float(v) for v in a.bounds.split(","))
        analyzer = innvestigate.create_analyzer("deep_taylor.bounded", model, low=low, high=high)
    else:
        analyzer = innvestigate.create_analyzer("lrp.z", model)
    x = np.load(a.input).astype(np.float32)
    nhwc = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x
    if a.out:
        r = analyzer.analyze(nhwc)
        np.save(a.out, (r.transpose(0, 3, 1, 2) if r.ndim == 4 else r).astype(np.float32))
    if a.bench:
        for batch in [int(b) for b in a.batch_sizes.split(",")]:
            xb = nhwc[np.arange(batch) % len(nhwc)]
            analyzer.analyze(xb)
            n, start = 0, time.perf_counter()
            while n == 0 or time.perf_counter() - start < a.min_seconds:
                analyzer.analyze(xb)
                n += batch
            s = time.perf_counter() - start
            versions = f"TensorFlow {tf.__version__} float32, iNNvestigate {importlib.metadata.version('innvestigate')}"
            print(json.dumps({"backend": "innvestigate-cpu", "adapter": versions, "model": a.model, "composite": a.composite, "batch_size": batch, "samples": n,
                              "seconds": s, "heatmaps_per_second": n / s}), flush=True)


if __name__ == "__main__":
    main()
