//! ONNX import, export and `inspect` (SPEC section 1): writer round trips, hand-built graphs in
//! the styles of PyTorch's classic and dynamo exporters, BatchNorm folding, and bad graphs that
//! must give errors naming the node, never panics.

mod common;

use ndarray::{Array1, Array2, Array4, ArrayD, Axis};
use prost::Message;
use rand::rngs::StdRng;
use rand::Rng;
use taylormap::model::onnx;
use taylormap::model::onnx_proto as pb;
use taylormap::model::{inspect, Window};
use taylormap::{Error, Layer, Network};

use pb::tensor_shape_proto::{dimension, Dimension};

// ---------------------------------------------------------------------------------------------
// Builders for hand-made ONNX graphs.
// ---------------------------------------------------------------------------------------------

fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_f(name: &str, v: f32) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Float as i32),
        f: Some(v),
        ..Default::default()
    }
}

fn attr_is(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Ints as i32),
        ints: v.to_vec(),
        ..Default::default()
    }
}

fn attr_s(name: &str, v: &str) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::String as i32),
        s: Some(v.as_bytes().to_vec()),
        ..Default::default()
    }
}

fn attr_t(name: &str, t: pb::TensorProto) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(pb::attribute_proto::AttributeType::Tensor as i32),
        t: Some(t),
        ..Default::default()
    }
}

/// A float32 tensor, as raw little-endian bytes or in the typed `float_data` field.
fn f32_tensor(name: &str, dims: &[usize], data: &[f32], typed: bool) -> pb::TensorProto {
    assert_eq!(dims.iter().product::<usize>(), data.len());
    let mut t = pb::TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(pb::tensor_proto::DataType::Float as i32),
        ..Default::default()
    };
    if typed {
        t.float_data = data.to_vec();
    } else {
        t.raw_data = Some(data.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    t
}

/// A 1-D int64 tensor, raw or in `int64_data`.
fn i64_tensor(name: &str, data: &[i64], typed: bool) -> pb::TensorProto {
    let mut t = pb::TensorProto {
        name: Some(name.into()),
        dims: vec![data.len() as i64],
        data_type: Some(pb::tensor_proto::DataType::Int64 as i32),
        ..Default::default()
    };
    if typed {
        t.int64_data = data.to_vec();
    } else {
        t.raw_data = Some(data.iter().flat_map(|v| v.to_le_bytes()).collect());
    }
    t
}

/// How the batch dimension of the model input is written.
#[derive(Clone, Copy, Debug)]
enum Batch {
    Param,
    Value(i64),
    Absent,
}

fn value_info(name: &str, batch: Batch, dims: &[usize]) -> pb::ValueInfoProto {
    let mut dim = vec![Dimension {
        value: match batch {
            Batch::Param => Some(dimension::Value::DimParam("batch_size".into())),
            Batch::Value(v) => Some(dimension::Value::DimValue(v)),
            Batch::Absent => None,
        },
        ..Default::default()
    }];
    dim.extend(dims.iter().map(|&d| Dimension {
        value: Some(dimension::Value::DimValue(d as i64)),
        ..Default::default()
    }));
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(pb::tensor_proto::DataType::Float as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A chain graph under construction: `x` is the tensor the chain has reached.
struct G {
    input: String,
    x: String,
    nodes: Vec<pb::NodeProto>,
    inits: Vec<pb::TensorProto>,
    typed: bool,
    count: usize,
}

impl G {
    fn new(input: &str, typed: bool) -> Self {
        G {
            input: input.into(),
            x: input.into(),
            nodes: vec![],
            inits: vec![],
            typed,
            count: 0,
        }
    }

    fn init(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.inits.push(f32_tensor(name, dims, data, self.typed));
        name.into()
    }

    /// Appends `op` reading the chain tensor, then `extra` inputs; returns nothing, moves `x`.
    fn op(&mut self, op: &str, name: &str, extra: &[&str], attrs: Vec<pb::AttributeProto>) {
        self.count += 1;
        let out = format!("/{name}/{op}_output_{}", self.count);
        let mut input = vec![self.x.clone()];
        input.extend(extra.iter().map(|s| s.to_string()));
        self.nodes.push(pb::NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input,
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        self.x = out;
    }

    /// Appends a side node `op` reading `inputs` (the chain tensor `x` does not move); returns
    /// its output name.
    fn side(
        &mut self,
        op: &str,
        name: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
    ) -> String {
        let out = format!("{name}_output_0");
        self.nodes.push(pb::NodeProto {
            name: Some(name.into()),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    /// A `Constant` node holding `t`; returns its output name.
    fn constant(&mut self, name: &str, t: pb::TensorProto) -> String {
        let out = format!("{name}_output_0");
        self.nodes.push(pb::NodeProto {
            name: Some(name.into()),
            op_type: Some("Constant".into()),
            output: vec![out.clone()],
            attribute: vec![attr_t("value", t)],
            ..Default::default()
        });
        out
    }

    fn finish(self, batch: Batch, shape: &[usize], inits_as_inputs: bool) -> pb::ModelProto {
        let mut input = vec![value_info(&self.input, batch, shape)];
        if inits_as_inputs {
            for t in &self.inits {
                let dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
                // Classic exporter style: initializers also listed as graph inputs.
                let mut vi = value_info(t.name.as_deref().unwrap(), Batch::Absent, &[]);
                if let Some(pb::type_proto::Value::TensorType(tt)) =
                    vi.r#type.as_mut().and_then(|t| t.value.as_mut())
                {
                    tt.shape = Some(pb::TensorShapeProto {
                        dim: dims
                            .iter()
                            .map(|&d| Dimension {
                                value: Some(dimension::Value::DimValue(d as i64)),
                                ..Default::default()
                            })
                            .collect(),
                    });
                }
                input.push(vi);
            }
        }
        pb::ModelProto {
            ir_version: Some(7),
            producer_name: Some("pytorch".into()),
            opset_import: vec![pb::OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(17),
            }],
            graph: Some(pb::GraphProto {
                name: Some("main_graph".into()),
                node: self.nodes,
                initializer: self.inits,
                input,
                output: vec![pb::ValueInfoProto {
                    name: Some(self.x),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

fn load(m: &pb::ModelProto) -> taylormap::Result<Network> {
    onnx::from_bytes(&m.encode_to_vec(), "test.onnx")
}

/// Exporter styles for [`export_styled`].
#[derive(Clone, Copy, Debug)]
struct Style {
    /// Dense as Gemm with transB=1 (B = W^T), else Gemm with B = W.
    trans_b: bool,
    /// Dense as MatMul + Add instead of Gemm.
    matmul: bool,
    /// Weights in typed fields (float_data, int64_data) instead of raw_data.
    typed: bool,
    /// Flatten as Reshape with a constant shape (dynamo) instead of Flatten (classic).
    reshape: bool,
    /// Initializers also listed as graph inputs (classic).
    inits_as_inputs: bool,
    batch: Batch,
    /// Insert Identity/Dropout nodes at random and end with Softmax.
    noise: bool,
}

/// Writes `net` by hand in the given exporter style, independently of the library's writer.
fn export_styled(net: &Network, style: Style, rng: &mut StdRng) -> pb::ModelProto {
    let mut g = G::new("input.1", style.typed);
    let shapes = net.shapes().unwrap();
    for (k, (layer, name)) in net.layers.iter().zip(&net.names).enumerate() {
        match layer {
            Layer::Dense { weight, bias } => {
                let (i, o) = weight.dim();
                let b = g.init(&format!("{name}.bias"), &[o], bias.as_slice().unwrap());
                if style.matmul {
                    let w: Vec<f32> = weight.iter().copied().collect();
                    let w = g.init(&format!("onnx::MatMul_{k}"), &[i, o], &w);
                    g.op("MatMul", name, &[&w], vec![]);
                    g.op("Add", &format!("{name}/Add"), &[&b], vec![]);
                } else if style.trans_b {
                    let w: Vec<f32> = weight.t().iter().copied().collect();
                    let w = g.init(&format!("{name}.weight"), &[o, i], &w);
                    g.op(
                        "Gemm",
                        name,
                        &[&w, &b],
                        vec![
                            attr_f("alpha", 1.0),
                            attr_f("beta", 1.0),
                            attr_i("transB", 1),
                        ],
                    );
                } else {
                    let w: Vec<f32> = weight.iter().copied().collect();
                    let w = g.init(&format!("{name}.weight"), &[i, o], &w);
                    g.op("Gemm", name, &[&w, &b], vec![]);
                }
            }
            Layer::Conv2d {
                weight,
                bias,
                window,
            } => {
                let w: Vec<f32> = weight.iter().copied().collect();
                let w = g.init(&format!("{name}.weight"), weight.shape(), &w);
                let b = g.init(
                    &format!("{name}.bias"),
                    &[bias.len()],
                    bias.as_slice().unwrap(),
                );
                let mut attrs = window_attrs(window);
                attrs.push(attr_is("dilations", &[1, 1]));
                attrs.push(attr_i("group", 1));
                g.op("Conv", name, &[&w, &b], attrs);
            }
            Layer::Relu => g.op("Relu", name, &[], vec![]),
            Layer::MaxPool2d { window } => {
                let mut attrs = window_attrs(window);
                attrs.push(attr_i("ceil_mode", 0));
                g.op("MaxPool", name, &[], attrs);
            }
            Layer::AvgPool2d {
                window,
                count_include_pad,
                sum,
            } => {
                let mut attrs = window_attrs(window);
                attrs.push(attr_i("count_include_pad", *count_include_pad as i64));
                g.op("AveragePool", name, &[], attrs);
                if *sum {
                    let size = (window.kernel[0] * window.kernel[1]) as f32;
                    let f = g.init(&format!("{name}.window_size"), &[], &[size]);
                    g.op("Mul", &format!("{name}/Mul"), &[&f], vec![]);
                }
            }
            Layer::Flatten => {
                if style.reshape {
                    let d = shapes[k].iter().product::<usize>() as i64;
                    let target = match rng.random_range(0..4) {
                        0 => vec![-1, d],
                        1 => vec![0, -1],
                        2 => vec![1, -1],
                        _ => vec![7, d],
                    };
                    let t = i64_tensor(&format!("{name}.shape"), &target, style.typed);
                    let s = if rng.random::<bool>() {
                        g.constant(&format!("{name}/Constant"), t)
                    } else {
                        g.inits.push(t);
                        format!("{name}.shape")
                    };
                    g.op("Reshape", name, &[&s], vec![]);
                } else {
                    g.op("Flatten", name, &[], vec![attr_i("axis", 1)]);
                }
            }
        }
        if style.noise && rng.random_range(0..3) == 0 {
            if rng.random::<bool>() {
                g.op("Identity", &format!("{name}/Identity"), &[], vec![]);
            } else {
                g.op(
                    "Dropout",
                    &format!("{name}/Dropout"),
                    &[],
                    vec![attr_f("ratio", 0.5)],
                );
            }
        }
    }
    if style.noise {
        g.op("Softmax", "/softmax/Softmax", &[], vec![attr_i("axis", 1)]);
    }
    g.finish(style.batch, &net.input_shape, style.inits_as_inputs)
}

fn window_attrs(w: &Window) -> Vec<pb::AttributeProto> {
    let v = |a: &[usize]| a.iter().map(|&x| x as i64).collect::<Vec<_>>();
    vec![
        attr_is("kernel_shape", &v(&w.kernel)),
        attr_is("strides", &v(&w.stride)),
        attr_is("pads", &v(&w.pad)),
    ]
}

/// A random network: an MLP or a CNN (sometimes with sum pooling), with ONNX-style names.
fn random_net(rng: &mut StdRng) -> Network {
    let net = if rng.random::<bool>() {
        let depth = rng.random_range(1..4);
        let widths: Vec<usize> = (0..=depth).map(|_| rng.random_range(1..9)).collect();
        let nonpositive = rng.random();
        common::random_mlp(rng, &widths, nonpositive)
    } else {
        let (c, h, w) = (
            rng.random_range(1..4),
            rng.random_range(5..10),
            rng.random_range(5..10),
        );
        let nonpositive = rng.random();
        let mut net = common::random_cnn(rng, c, h, w, nonpositive);
        // Vary the pooling layer (index 2): padded, count_include_pad, sum pooling.
        let pad = rng.random_range(0..2);
        let window = Window {
            kernel: [2, 2],
            stride: [rng.random_range(1..3), 2],
            pad: [pad, 0, pad, pad],
        };
        net.layers[2] = match rng.random_range(0..3) {
            0 => Layer::MaxPool2d { window },
            1 => Layer::AvgPool2d {
                window,
                count_include_pad: rng.random(),
                sum: false,
            },
            _ => Layer::AvgPool2d {
                window,
                count_include_pad: pad > 0 || rng.random(),
                sum: true,
            },
        };
        // Re-size the first Dense layer to the new flat width.
        let flat = Network::new(net.input_shape.clone(), net.layers[..6].to_vec(), vec![])
            .unwrap()
            .output_shape()[0];
        let hidden = match &net.layers[6] {
            Layer::Dense { weight, .. } => weight.ncols(),
            _ => unreachable!(),
        };
        net.layers[6] = common::dense(rng, flat, hidden, false);
        Network::new(net.input_shape, net.layers, vec![]).unwrap()
    };
    let names = net
        .layers
        .iter()
        .enumerate()
        .map(|(k, l)| format!("/layer{k}/{}", l.kind()))
        .collect();
    Network::new(net.input_shape, net.layers, names).unwrap()
}

fn model_err(r: taylormap::Result<Network>) -> (String, String) {
    match r {
        Err(Error::Model { node, message, .. }) => (node, message),
        other => panic!("expected Error::Model, got {other:?}"),
    }
}

/// Logits of `net` on `x` through the CPU reference backend.
fn logits(net: &Network, x: &ArrayD<f32>) -> Array2<f64> {
    taylormap::cpu::logits(net, x.mapv(f64::from).view()).unwrap()
}

/// Asserts two logit arrays agree to `tol` (relative L2).
fn assert_close(got: &Array2<f64>, want: &Array2<f64>, tol: f64, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}");
    let e = common::rel_l2(got.iter().copied(), want.iter().copied());
    assert!(e <= tol, "{what}: relative L2 error {e:e} > {tol:e}");
}

/// Checks `loaded` computes what `source` computes on random inputs.
fn same_forward(rng: &mut StdRng, loaded: &Network, source: &Network) {
    let x = common::random_input(rng, source, 3, -1.0, 1.0);
    assert_close(&logits(loaded, &x), &logits(source, &x), 1e-12, "forward");
}

// ---------------------------------------------------------------------------------------------
// Writer round trips.
// ---------------------------------------------------------------------------------------------

#[test]
fn writer_round_trips_random_networks_with_deterministic_bytes() {
    let mut rng = common::rng("writer_round_trip");
    for _ in 0..40 {
        let net = random_net(&mut rng);
        let bytes = onnx::to_bytes(&net);
        let back = onnx::from_bytes(&bytes, "mem.onnx").unwrap();
        assert_eq!(back, net);
        assert_eq!(onnx::to_bytes(&back), bytes, "same network, same bytes");
    }
}

#[test]
fn writer_declares_opset_13_dynamic_batch_and_linear_style_gemm() {
    let mut rng = common::rng("writer_layout");
    let net = common::random_mlp(&mut rng, &[5, 4, 3], false);
    let m = pb::ModelProto::decode(onnx::to_bytes(&net).as_slice()).unwrap();
    assert_eq!(m.ir_version, Some(8));
    assert_eq!(m.opset_import[0].version, Some(13));
    let g = m.graph.unwrap();
    assert_eq!(g.input.len(), 1);
    assert_eq!(g.input[0].name.as_deref(), Some("input"));
    assert_eq!(g.output[0].name.as_deref(), Some("logits"));
    let Some(pb::type_proto::Value::TensorType(t)) =
        g.input[0].r#type.as_ref().unwrap().value.as_ref()
    else {
        panic!("input is not a tensor")
    };
    let dims = &t.shape.as_ref().unwrap().dim;
    assert_eq!(dims[0].value, Some(dimension::Value::DimParam("N".into())));
    assert_eq!(dims[1].value, Some(dimension::Value::DimValue(5)));
    let gemm = &g.node[0];
    assert_eq!(gemm.op_type.as_deref(), Some("Gemm"));
    assert!(gemm
        .attribute
        .iter()
        .any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1)));
    let w = g
        .initializer
        .iter()
        .find(|t| t.name.as_ref() == gemm.input.get(1))
        .unwrap();
    assert_eq!(w.dims, vec![4, 5], "B is W^T, [out, in]");
    assert!(w.raw_data.is_some() && w.float_data.is_empty());
    let Layer::Dense { weight, .. } = &net.layers[0] else {
        unreachable!()
    };
    let raw = w.raw_data.as_ref().unwrap();
    let b01 = f32::from_le_bytes(raw[4..8].try_into().unwrap()); // B[0, 1] = W[1, 0]
    assert_eq!(b01, weight[[1, 0]]);
}

#[test]
fn save_writes_atomically_and_load_reads_it_back() {
    let mut rng = common::rng("save_load");
    let net = random_net(&mut rng);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    onnx::save(&net, &path).unwrap();
    onnx::save(&net, &path).unwrap(); // replacing an existing file works too
    assert_eq!(onnx::load(&path).unwrap(), net);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(files.len(), 1, "no temporary file left behind");
    match onnx::load(&dir.path().join("missing.onnx")) {
        // a bad --model, like any bad input: exit code 2
        Err(e @ Error::Input { .. }) => {
            assert!(e.to_string().contains("missing.onnx"), "{e}");
            assert_eq!(e.exit_code(), 2);
        }
        other => panic!("expected an input error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Exporter styles.
// ---------------------------------------------------------------------------------------------

#[test]
fn classic_exporter_style_loads_to_the_source_network() {
    let mut rng = common::rng("classic_style");
    for _ in 0..12 {
        let net = random_net(&mut rng);
        let style = Style {
            trans_b: true,
            matmul: false,
            typed: false,
            reshape: false,
            inits_as_inputs: true,
            batch: Batch::Param,
            noise: false,
        };
        let m = export_styled(&net, style, &mut rng);
        let loaded = load(&m).unwrap();
        assert_eq!(loaded, net);
        same_forward(&mut rng, &loaded, &net);
    }
}

#[test]
fn dynamo_exporter_style_loads_to_the_source_network() {
    let mut rng = common::rng("dynamo_style");
    for _ in 0..12 {
        let net = random_net(&mut rng);
        let style = Style {
            trans_b: rng.random(),
            matmul: false,
            typed: true,
            reshape: true,
            inits_as_inputs: false,
            batch: if rng.random() {
                Batch::Value(1)
            } else {
                Batch::Absent
            },
            noise: false,
        };
        let m = export_styled(&net, style, &mut rng);
        let loaded = load(&m).unwrap();
        assert_eq!(loaded, net, "{style:?}");
        same_forward(&mut rng, &loaded, &net);
    }
}

#[test]
fn matmul_add_identity_dropout_and_final_softmax_load_to_the_source_network() {
    let mut rng = common::rng("matmul_noise");
    for _ in 0..12 {
        let net = random_net(&mut rng);
        let style = Style {
            trans_b: false,
            matmul: rng.random(),
            typed: rng.random(),
            reshape: rng.random(),
            inits_as_inputs: rng.random(),
            batch: Batch::Param,
            noise: true,
        };
        let m = export_styled(&net, style, &mut rng);
        // An Add folds into its MatMul, which names the layer; removed nodes leave no trace.
        let loaded = load(&m).unwrap();
        assert_eq!(loaded, net, "{style:?}");
        same_forward(&mut rng, &loaded, &net);
    }
}

#[test]
fn gemm_alpha_beta_and_broadcast_bias_fold_into_dense() {
    let mut rng = common::rng("gemm_alpha_beta");
    for case in 0..8 {
        let (i, o) = (rng.random_range(1..7), rng.random_range(1..7));
        let b: Vec<f32> = (0..i * o)
            .map(|_| common::uniform(&mut rng, -1.0, 1.0))
            .collect();
        let alpha = common::uniform(&mut rng, 0.25, 2.0);
        let beta = common::uniform(&mut rng, -2.0, 2.0);
        let (c_dims, c): (Vec<usize>, Vec<f32>) = match case % 4 {
            0 => (
                vec![o],
                (0..o)
                    .map(|_| common::uniform(&mut rng, -1.0, 1.0))
                    .collect(),
            ),
            1 => (
                vec![1, o],
                (0..o)
                    .map(|_| common::uniform(&mut rng, -1.0, 1.0))
                    .collect(),
            ),
            2 => (vec![], vec![common::uniform(&mut rng, -1.0, 1.0)]),
            _ => (vec![1], vec![common::uniform(&mut rng, -1.0, 1.0)]),
        };
        let mut g = G::new("x", false);
        let bn = g.init("B", &[o, i], &b);
        let cn = g.init("C", &c_dims, &c);
        g.op(
            "Gemm",
            "fc",
            &[&bn, &cn],
            vec![
                attr_f("alpha", alpha),
                attr_f("beta", beta),
                attr_i("transB", 1),
            ],
        );
        let net = load(&g.finish(Batch::Param, &[i], false)).unwrap();
        let Layer::Dense { weight, bias } = &net.layers[0] else {
            panic!("expected Dense, got {:?}", net.layers[0])
        };
        let want_w = Array2::from_shape_fn((i, o), |(r, col)| alpha * b[col * i + r]);
        let want_b = Array1::from_shape_fn(o, |j| beta * c[if c.len() == 1 { 0 } else { j }]);
        assert_eq!(weight, &want_w);
        assert_eq!(bias, &want_b);
    }
    // Gemm without C: zero bias.
    let mut g = G::new("x", true);
    let bn = g.init("B", &[2, 3], &[1.0, -2.0, 3.0, 0.5, 0.25, -1.0]);
    g.op("Gemm", "fc", &[&bn], vec![]);
    let net = load(&g.finish(Batch::Param, &[2], false)).unwrap();
    assert_eq!(
        net.layers[0],
        Layer::Dense {
            weight: Array2::from_shape_vec((2, 3), vec![1.0, -2.0, 3.0, 0.5, 0.25, -1.0]).unwrap(),
            bias: Array1::zeros(3),
        }
    );
}

/// A one-conv graph on a `c x h x w` input with the given extra Conv attributes.
fn conv_graph(
    rng: &mut StdRng,
    (c, h, w): (usize, usize, usize),
    oc: usize,
    k: [usize; 2],
    attrs: Vec<pb::AttributeProto>,
) -> (pb::ModelProto, Array4<f32>) {
    let weight = Array4::from_shape_fn((oc, c, k[0], k[1]), |_| common::uniform(rng, -1.0, 1.0));
    let mut g = G::new("image", false);
    let wn = g.init(
        "conv.weight",
        &[oc, c, k[0], k[1]],
        weight.as_slice().unwrap(),
    );
    g.op("Conv", "conv", &[&wn], attrs);
    g.op("Flatten", "flatten", &[], vec![]);
    (g.finish(Batch::Param, &[c, h, w], false), weight)
}

#[test]
fn conv_auto_pad_same_valid_and_explicit_pads_resolve_from_the_input_size() {
    let mut rng = common::rng("conv_auto_pad");
    // Fixed cases worked out by hand from the ONNX definition.
    let fixed = [
        ("SAME_UPPER", 5, [2, 2], [1, 1], [0, 0, 1, 1]),
        ("SAME_LOWER", 5, [2, 2], [1, 1], [1, 1, 0, 0]),
        ("SAME_UPPER", 6, [3, 3], [2, 2], [0, 0, 1, 1]),
        ("SAME_UPPER", 7, [3, 3], [2, 2], [1, 1, 1, 1]),
        ("SAME_LOWER", 6, [1, 4], [2, 1], [0, 2, 0, 1]),
        ("VALID", 6, [3, 3], [1, 1], [0, 0, 0, 0]),
    ];
    for (auto, n, k, s, want) in fixed {
        let attrs = vec![
            attr_s("auto_pad", auto),
            attr_is("strides", &[s[0] as i64, s[1] as i64]),
        ];
        let (m, _) = conv_graph(&mut rng, (1, n, n), 2, k, attrs);
        let net = load(&m).unwrap();
        let Layer::Conv2d { window, .. } = &net.layers[0] else {
            unreachable!()
        };
        assert_eq!(window.pad, want, "{auto} n={n} k={k:?} s={s:?}");
    }
    // Random cases: SAME gives ceil(n / s) outputs and splits the padding the right way.
    for _ in 0..20 {
        let (c, h, w) = (
            rng.random_range(1..3),
            rng.random_range(3..9),
            rng.random_range(3..9),
        );
        let k = [rng.random_range(1..4), rng.random_range(1..4)];
        let s = [rng.random_range(1..3), rng.random_range(1..3)];
        let upper = rng.random::<bool>();
        let attrs = vec![
            attr_s("auto_pad", if upper { "SAME_UPPER" } else { "SAME_LOWER" }),
            attr_is("strides", &[s[0] as i64, s[1] as i64]),
            attr_is("kernel_shape", &[k[0] as i64, k[1] as i64]),
        ];
        let oc = rng.random_range(1..4);
        let (m, weight) = conv_graph(&mut rng, (c, h, w), oc, k, attrs);
        let net = load(&m).unwrap();
        let shapes = net.shapes().unwrap();
        assert_eq!(shapes[1], vec![oc, h.div_ceil(s[0]), w.div_ceil(s[1])]);
        let Layer::Conv2d {
            window,
            weight: got,
            bias,
        } = &net.layers[0]
        else {
            unreachable!()
        };
        assert_eq!(got, &weight);
        assert_eq!(bias, &Array1::<f32>::zeros(oc), "absent bias is zero");
        let [t, l, b, r] = window.pad;
        for (begin, end) in [(t, b), (l, r)] {
            assert!(begin.abs_diff(end) <= 1);
            assert!(if upper { end >= begin } else { begin >= end });
        }
        // Explicit pads are taken as they are.
        let pads: Vec<i64> = (0..4).map(|_| rng.random_range(0..3)).collect();
        let attrs = vec![attr_is("pads", &pads), attr_s("auto_pad", "NOTSET")];
        let (m, _) = conv_graph(&mut rng, (c, h, w), oc, k, attrs);
        let Layer::Conv2d { window, .. } = &load(&m).unwrap().layers[0] else {
            unreachable!()
        };
        assert_eq!(window.pad.map(|p| p as i64).to_vec(), pads);
    }
}

#[test]
fn pools_global_average_sum_pooling_and_ceil_mode() {
    let mut rng = common::rng("pools");
    let (c, h, w) = (
        rng.random_range(1..4),
        rng.random_range(2..8),
        rng.random_range(2..8),
    );
    // GlobalAveragePool is an average pool over the whole map.
    let mut g = G::new("x", false);
    g.op("GlobalAveragePool", "gap", &[], vec![]);
    g.op("Flatten", "flat", &[], vec![]);
    let net = load(&g.finish(Batch::Param, &[c, h, w], false)).unwrap();
    assert_eq!(
        net.layers[0],
        Layer::AvgPool2d {
            window: Window {
                kernel: [h, w],
                stride: [1, 1],
                pad: [0; 4]
            },
            count_include_pad: false,
            sum: false
        }
    );
    assert_eq!(net.output_shape(), vec![c]);
    // AveragePool + Mul(window size) is sum pooling; another factor is refused.
    for (factor, ok) in [(4.0f32, true), (2.0, false)] {
        let mut g = G::new("x", false);
        g.op(
            "AveragePool",
            "pool",
            &[],
            vec![
                attr_is("kernel_shape", &[2, 2]),
                attr_is("strides", &[1, 1]),
            ],
        );
        let f = g.init("four", &[1], &[factor]);
        g.op("Mul", "times", &[&f], vec![]);
        g.op("Flatten", "flat", &[], vec![]);
        let r = load(&g.finish(Batch::Param, &[c, h, w], false));
        if ok {
            assert!(matches!(
                r.unwrap().layers[0],
                Layer::AvgPool2d {
                    sum: true,
                    count_include_pad: false,
                    ..
                }
            ));
        } else {
            let (node, message) = model_err(r);
            assert_eq!(node, "times");
            assert!(message.contains("window size"), "{message}");
        }
    }
    // ceil_mode=1 is accepted where every window fits exactly, refused elsewhere.
    let n = 2 * rng.random_range(2..5);
    for (size, ok) in [(n, true), (n + 1, false)] {
        let mut g = G::new("x", false);
        g.op(
            "MaxPool",
            "mp",
            &[],
            vec![
                attr_is("kernel_shape", &[2, 2]),
                attr_is("strides", &[2, 2]),
                attr_i("ceil_mode", 1),
            ],
        );
        g.op("Flatten", "flat", &[], vec![]);
        let r = load(&g.finish(Batch::Param, &[1, size, size], false));
        if ok {
            assert_eq!(r.unwrap().output_shape(), vec![(size / 2) * (size / 2)]);
        } else {
            let (node, message) = model_err(r);
            assert_eq!(node, "mp");
            assert!(message.contains("ceil_mode"), "{message}");
        }
    }
}

/// Random BatchNormalization parameters for `c` channels: gamma, beta, mean, var.
fn bn_params(rng: &mut StdRng, c: usize) -> [Vec<f32>; 4] {
    let mut v = |lo, hi| {
        (0..c)
            .map(|_| common::uniform(rng, lo, hi))
            .collect::<Vec<f32>>()
    };
    [v(0.5, 2.0), v(-1.0, 1.0), v(-1.0, 1.0), v(0.1, 2.0)]
}

fn add_bn(g: &mut G, name: &str, p: &[Vec<f32>; 4], eps: f32) {
    let c = p[0].len();
    let names: Vec<String> = ["weight", "bias", "running_mean", "running_var"]
        .iter()
        .zip(p)
        .map(|(what, v)| g.init(&format!("{name}.{what}"), &[c], v))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    g.op(
        "BatchNormalization",
        name,
        &refs,
        vec![attr_f("epsilon", eps), attr_f("momentum", 0.9)],
    );
}

#[test]
fn batch_norm_after_conv_and_after_gemm_is_folded() {
    let mut rng = common::rng("bn_fold_structure");
    let eps = 1e-5f32;
    // After Conv: W'[c] = W[c] * s_c, b'_c = (b_c - mean_c) s_c + beta_c.
    let (c, h, w, oc) = (2, 5, 6, 3);
    let weight = Array4::from_shape_fn((oc, c, 3, 3), |_| common::uniform(&mut rng, -1.0, 1.0));
    let bias: Vec<f32> = (0..oc)
        .map(|_| common::uniform(&mut rng, -0.5, 0.5))
        .collect();
    let p = bn_params(&mut rng, oc);
    let mut g = G::new("x", false);
    let wn = g.init("conv.weight", &[oc, c, 3, 3], weight.as_slice().unwrap());
    let bn = g.init("conv.bias", &[oc], &bias);
    g.op(
        "Conv",
        "conv",
        &[&wn, &bn],
        vec![attr_is("pads", &[1, 1, 1, 1])],
    );
    add_bn(&mut g, "bn", &p, eps);
    g.op("Relu", "relu", &[], vec![]);
    g.op("Flatten", "flat", &[], vec![]);
    let net = load(&g.finish(Batch::Param, &[c, h, w], true)).unwrap();
    assert_eq!(net.layers.len(), 3, "BatchNormalization folded away");
    let Layer::Conv2d {
        weight: got_w,
        bias: got_b,
        ..
    } = &net.layers[0]
    else {
        unreachable!()
    };
    for o in 0..oc {
        let s = p[0][o] as f64 / (p[3][o] as f64 + eps as f64).sqrt();
        for (x, y) in got_w
            .index_axis(ndarray::Axis(0), o)
            .iter()
            .zip(weight.index_axis(ndarray::Axis(0), o).iter())
        {
            assert!((*x as f64 - *y as f64 * s).abs() <= 1e-6 * (1.0 + (*y as f64 * s).abs()));
        }
        let want_b = (bias[o] as f64 - p[2][o] as f64) * s + p[1][o] as f64;
        let err = (got_b[o] as f64 - want_b).abs();
        assert!(
            err <= 1e-6 * (1.0 + want_b.abs()),
            "{} vs {want_b}",
            got_b[o]
        );
    }
    // After Gemm (columns of W scale), and a BatchNorm after Relu is refused.
    let (i, o) = (4, 3);
    let b: Vec<f32> = (0..i * o)
        .map(|_| common::uniform(&mut rng, -1.0, 1.0))
        .collect();
    let p = bn_params(&mut rng, o);
    let mut g = G::new("x", false);
    let bw = g.init("fc.weight", &[o, i], &b);
    g.op("Gemm", "fc", &[&bw], vec![attr_i("transB", 1)]);
    add_bn(&mut g, "bn1d", &p, eps);
    let net = load(&g.finish(Batch::Param, &[i], false)).unwrap();
    let Layer::Dense {
        weight: got_w,
        bias: got_b,
    } = &net.layers[0]
    else {
        unreachable!()
    };
    for j in 0..o {
        let s = p[0][j] as f64 / (p[3][j] as f64 + eps as f64).sqrt();
        for r in 0..i {
            let want = b[j * i + r] as f64 * s;
            assert!((got_w[[r, j]] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()));
        }
        let want_b = -(p[2][j] as f64) * s + p[1][j] as f64;
        assert!((got_b[j] as f64 - want_b).abs() <= 1e-6 * (1.0 + want_b.abs()));
    }
    let mut g = G::new("x", false);
    let bw = g.init("fc.weight", &[o, i], &b);
    g.op("Gemm", "fc", &[&bw], vec![attr_i("transB", 1)]);
    g.op("Relu", "relu", &[], vec![]);
    add_bn(&mut g, "late_bn", &p, eps);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[i], false)));
    assert_eq!(node, "late_bn");
    assert!(message.contains("directly after"), "{message}");
}

/// Applies BatchNormalization (inference) to `z` of shape (n, c * spatial), channel-major.
fn apply_bn(z: &Array2<f64>, p: &[Vec<f32>; 4], eps: f32, spatial: usize) -> Array2<f64> {
    let mut y = z.clone();
    for ((_, j), v) in y.indexed_iter_mut() {
        let c = j / spatial;
        let (g, b, m, var) = (
            p[0][c] as f64,
            p[1][c] as f64,
            p[2][c] as f64,
            p[3][c] as f64,
        );
        *v = g * (*v - m) / (var + eps as f64).sqrt() + b;
    }
    y
}

#[test]
fn folded_batch_norm_gives_the_forward_output_of_layer_then_batch_norm() {
    let mut rng = common::rng("bn_fold_forward");
    for _ in 0..6 {
        let eps = [1e-5f32, 1e-3][rng.random_range(0..2)];
        // Conv -> BN -> Flatten, against the unfolded Conv -> Flatten followed by BN here.
        let (c, h, w) = (
            rng.random_range(1..4),
            rng.random_range(3..7),
            rng.random_range(3..7),
        );
        let oc = rng.random_range(1..5);
        let conv = common::conv(&mut rng, c, oc, 3, 1, 1, false);
        let plain =
            Network::new(vec![c, h, w], vec![conv.clone(), Layer::Flatten], vec![]).unwrap();
        let Layer::Conv2d { weight, bias, .. } = &conv else {
            unreachable!()
        };
        let p = bn_params(&mut rng, oc);
        let mut g = G::new("x", rng.random());
        let wn = g.init("conv.weight", weight.shape(), weight.as_slice().unwrap());
        let bn = g.init("conv.bias", &[oc], bias.as_slice().unwrap());
        g.op(
            "Conv",
            "conv",
            &[&wn, &bn],
            vec![attr_s("auto_pad", "SAME_UPPER")],
        );
        add_bn(&mut g, "bn", &p, eps);
        g.op("Flatten", "flat", &[], vec![]);
        let folded = load(&g.finish(Batch::Param, &[c, h, w], false)).unwrap();
        assert_eq!(folded.layers.len(), 2);
        let x = common::random_input(&mut rng, &plain, 4, 0.0, 1.0);
        let want = apply_bn(&logits(&plain, &x), &p, eps, h * w);
        assert_close(
            &logits(&folded, &x),
            &want,
            1e-5,
            "Conv + BatchNormalization",
        );

        // Gemm -> BN and MatMul -> Add -> BN, against Dense followed by BN here.
        let (i, o) = (rng.random_range(1..8), rng.random_range(1..8));
        let dense = common::dense(&mut rng, i, o, false);
        let plain = Network::new(vec![i], vec![dense.clone()], vec![]).unwrap();
        let Layer::Dense { weight, bias } = &dense else {
            unreachable!()
        };
        let p = bn_params(&mut rng, o);
        let x = common::random_input(&mut rng, &plain, 4, -1.0, 1.0);
        let want = apply_bn(&logits(&plain, &x), &p, eps, 1);
        for matmul in [false, true] {
            let mut g = G::new("x", false);
            let b = g.init("fc.bias", &[o], bias.as_slice().unwrap());
            if matmul {
                let wv: Vec<f32> = weight.iter().copied().collect();
                let wn = g.init("fc.weight", &[i, o], &wv);
                g.op("MatMul", "fc", &[&wn], vec![]);
                g.op("Add", "fc/Add", &[&b], vec![]);
            } else {
                let wv: Vec<f32> = weight.t().iter().copied().collect();
                let wn = g.init("fc.weight", &[o, i], &wv);
                g.op("Gemm", "fc", &[&wn, &b], vec![attr_i("transB", 1)]);
            }
            add_bn(&mut g, "bn1d", &p, eps);
            let folded = load(&g.finish(Batch::Param, &[i], false)).unwrap();
            assert_eq!(folded.layers.len(), 1);
            let what = if matmul {
                "MatMul + Add + BN"
            } else {
                "Gemm + BN"
            };
            assert_close(&logits(&folded, &x), &want, 1e-5, what);
        }
    }
}

#[test]
fn gemm_sum_pooling_and_global_average_pool_compute_what_onnx_defines() {
    let mut rng = common::rng("onnx_semantics_forward");
    for _ in 0..6 {
        // Gemm: y = alpha * x B^T + beta * C, computed directly here.
        let (i, o) = (rng.random_range(1..8), rng.random_range(1..8));
        let b: Vec<f32> = (0..i * o)
            .map(|_| common::uniform(&mut rng, -1.0, 1.0))
            .collect();
        let c: Vec<f32> = (0..o)
            .map(|_| common::uniform(&mut rng, -1.0, 1.0))
            .collect();
        let (alpha, beta) = (
            common::uniform(&mut rng, 0.5, 2.0),
            common::uniform(&mut rng, -2.0, 2.0),
        );
        let mut g = G::new("x", true);
        let bn = g.init("B", &[o, i], &b);
        let cn = g.init("C", &[1, o], &c);
        let attrs = vec![
            attr_f("alpha", alpha),
            attr_f("beta", beta),
            attr_i("transB", 1),
        ];
        g.op("Gemm", "fc", &[&bn, &cn], attrs);
        let net = load(&g.finish(Batch::Param, &[i], false)).unwrap();
        let x = common::random_input(&mut rng, &net, 3, -1.0, 1.0);
        let want = Array2::from_shape_fn((3, o), |(n, j)| {
            let dot: f64 = (0..i).map(|k| x[[n, k]] as f64 * b[j * i + k] as f64).sum();
            alpha as f64 * dot + beta as f64 * c[j] as f64
        });
        assert_close(&logits(&net, &x), &want, 1e-6, "Gemm alpha/beta");

        // AveragePool(count_include_pad=1, padded) + Mul(kh*kw) = window sums, computed here.
        let (ch, h, w) = (
            rng.random_range(1..3),
            rng.random_range(2..6),
            rng.random_range(2..6),
        );
        let (kh, kw) = (rng.random_range(1..3), rng.random_range(2..4));
        let pads = [
            rng.random_range(0..kh),
            rng.random_range(0..kw),
            0,
            1.min(kw - 1),
        ];
        let mut g = G::new("x", false);
        let attrs = vec![
            attr_is("kernel_shape", &[kh as i64, kw as i64]),
            attr_is("pads", &pads.map(|p| p as i64)),
            attr_i("count_include_pad", 1),
        ];
        g.op("AveragePool", "pool", &[], attrs);
        let f = g.init("k", &[], &[(kh * kw) as f32]);
        g.op("Mul", "pool/Mul", &[&f], vec![]);
        g.op("Flatten", "flat", &[], vec![]);
        let net = load(&g.finish(Batch::Param, &[ch, h, w], false)).unwrap();
        let [oc, oh, ow] = net.shapes().unwrap()[1].clone()[..] else {
            unreachable!()
        };
        assert_eq!(
            (oh, ow),
            (
                h + pads[0] + pads[2] - kh + 1,
                w + pads[1] + pads[3] - kw + 1
            )
        );
        let x = common::random_input(&mut rng, &net, 2, 0.0, 1.0);
        let want = Array2::from_shape_fn((2, oc * oh * ow), |(n, j)| {
            let (c, r, q) = (j / (oh * ow), (j / ow) % oh, j % ow);
            let mut s = 0.0;
            for di in 0..kh {
                for dj in 0..kw {
                    let (y, z) = (
                        (r + di) as i64 - pads[0] as i64,
                        (q + dj) as i64 - pads[1] as i64,
                    );
                    if (0..h as i64).contains(&y) && (0..w as i64).contains(&z) {
                        s += x[[n, c, y as usize, z as usize]] as f64;
                    }
                }
            }
            s
        });
        assert_close(&logits(&net, &x), &want, 1e-6, "AveragePool + Mul");

        // GlobalAveragePool: channel means.
        let mut g = G::new("x", false);
        g.op("GlobalAveragePool", "gap", &[], vec![]);
        g.op("Flatten", "flat", &[], vec![]);
        let net = load(&g.finish(Batch::Param, &[ch, h, w], false)).unwrap();
        let x = common::random_input(&mut rng, &net, 2, -1.0, 1.0);
        let want = x
            .mapv(f64::from)
            .into_shape_with_order((2, ch, h * w))
            .unwrap()
            .mean_axis(Axis(2))
            .unwrap();
        assert_close(&logits(&net, &x), &want, 1e-9, "GlobalAveragePool");
    }
}

// ---------------------------------------------------------------------------------------------
// Bad graphs: errors naming the node, never panics.
// ---------------------------------------------------------------------------------------------

#[test]
fn unsupported_op_is_refused_with_node_name_op_type_and_supported_list() {
    let mut rng = common::rng("unsupported_op");
    let net = common::random_mlp(&mut rng, &[3, 4, 2], false);
    let mut m = export_styled(
        &net,
        Style {
            trans_b: true,
            matmul: false,
            typed: false,
            reshape: false,
            inits_as_inputs: false,
            batch: Batch::Param,
            noise: false,
        },
        &mut rng,
    );
    let g = m.graph.as_mut().unwrap();
    let relu = g
        .node
        .iter_mut()
        .find(|n| n.op_type.as_deref() == Some("Relu"))
        .unwrap();
    relu.op_type = Some("Sigmoid".into());
    relu.name = Some("/act/Sigmoid_7".into());
    match load(&m) {
        Err(e @ Error::UnsupportedOp { .. }) => {
            let text = e.to_string();
            assert!(text.contains("/act/Sigmoid_7"), "{text}");
            assert!(text.contains("'Sigmoid'"), "{text}");
            assert!(text.contains("Gemm") && text.contains("Conv"), "{text}");
            assert!(text.contains("test.onnx"), "{text}");
        }
        other => panic!("expected UnsupportedOp, got {other:?}"),
    }
}

#[test]
fn non_chain_graphs_are_refused_naming_the_node() {
    let mut rng = common::rng("non_chain");
    let d = rng.random_range(2..6);
    let w: Vec<f32> = (0..d * d)
        .map(|_| common::uniform(&mut rng, -1.0, 1.0))
        .collect();
    // Residual: y = relu(x W) + x.
    let mut g = G::new("x", false);
    let wn = g.init("fc.weight", &[d, d], &w);
    g.op("Gemm", "fc", &[&wn], vec![attr_i("transB", 1)]);
    g.op("Relu", "relu", &[], vec![]);
    g.op("Add", "/residual/Add", &["x"], vec![]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[d], false)));
    assert_eq!(node, "/residual/Add");
    assert!(message.contains("single chain"), "{message}");
    // A branch: the second Gemm reads the input again instead of the Relu output.
    let mut g = G::new("x", false);
    let wn = g.init("fc.weight", &[d, d], &w);
    g.op("Gemm", "fc", &[&wn], vec![attr_i("transB", 1)]);
    g.op("Relu", "relu", &[], vec![]);
    g.x = "x".into();
    g.op("Gemm", "fc2", &[&wn], vec![attr_i("transB", 1)]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[d], false)));
    assert_eq!(node, "fc2");
    assert!(message.contains("single chain"), "{message}");
    // A Softmax that is not last.
    let mut g = G::new("x", false);
    let wn = g.init("fc.weight", &[d, d], &w);
    g.op("Softmax", "sm", &[], vec![]);
    g.op("Gemm", "fc", &[&wn], vec![attr_i("transB", 1)]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[d], false)));
    assert_eq!(node, "sm");
    assert!(message.contains("last node"), "{message}");
}

#[test]
fn truncated_corrupt_and_empty_files_give_errors_not_panics() {
    let mut rng = common::rng("truncated");
    let net = random_net(&mut rng);
    let bytes = onnx::to_bytes(&net);
    // Every strict prefix fails: the graph is the last field written, so a prefix either cuts
    // it (a decode error) or lacks it.
    let step = (bytes.len() / 400).max(1);
    for len in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
        match onnx::from_bytes(&bytes[..len], "cut.onnx") {
            Err(Error::Model { path, .. }) | Err(Error::UnsupportedOp { path, .. }) => {
                assert_eq!(path, "cut.onnx")
            }
            Err(e) => panic!("prefix {len}: unexpected error kind {e:?}"),
            Ok(_) => panic!("prefix of {len} of {} bytes loaded", bytes.len()),
        }
    }
    // Random corruption may load or fail, but never panics.
    for _ in 0..300 {
        let mut bad = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..bad.len());
            bad[i] = rng.random();
        }
        let _ = onnx::from_bytes(&bad, "corrupt.onnx");
    }
    let noise: Vec<u8> = (0..256).map(|_| rng.random()).collect();
    assert!(onnx::from_bytes(&noise, "noise.onnx").is_err());
    let (node, _) = model_err(onnx::from_bytes(&[], "empty.onnx"));
    assert_eq!(node, "(model)");
}

// ---------------------------------------------------------------------------------------------
// Shapes computed in the graph (classic exporter's x.view(x.size(0), -1)) and ReduceMean.
// ---------------------------------------------------------------------------------------------

/// A scalar int64 tensor.
fn i64_scalar(name: &str, v: i64) -> pb::TensorProto {
    let mut t = i64_tensor(name, &[v], false);
    t.dims.clear();
    t
}

/// A conv + relu graph on a `c x h x w` input, to be continued by the caller; also returns the
/// per-sample shape after the relu.
fn conv_relu(rng: &mut StdRng, (c, h, w): (usize, usize, usize)) -> (G, [usize; 3]) {
    let oc = rng.random_range(1..4);
    let wv: Vec<f32> = (0..oc * c * 4)
        .map(|_| common::uniform(rng, -1.0, 1.0))
        .collect();
    let mut g = G::new("input", false);
    let wn = g.init("conv.weight", &[oc, c, 2, 2], &wv);
    g.op(
        "Conv",
        "conv",
        &[&wn],
        vec![attr_is("kernel_shape", &[2, 2])],
    );
    g.op("Relu", "relu", &[], vec![]);
    (g, [oc, h - 1, w - 1])
}

/// Appends Gemm(transB=1) from `d` features to 3 outputs, with weights drawn from `rng`.
fn add_gemm(g: &mut G, rng: &mut StdRng, d: usize) {
    let wv: Vec<f32> = (0..3 * d)
        .map(|_| common::uniform(rng, -1.0, 1.0))
        .collect();
    let wn = g.init("fc.weight", &[3, d], &wv);
    g.op("Gemm", "fc", &[&wn], vec![attr_i("transB", 1)]);
}

#[test]
fn reshape_to_a_shape_computed_from_the_activation_flattens() {
    let mut rng = common::rng("symbolic_shape");
    for case in 0..4 {
        let input = (
            rng.random_range(1..3),
            rng.random_range(3..6),
            rng.random_range(3..6),
        );
        let (mut g, [oc, oh, ow]) = conv_relu(&mut rng, input);
        let d = oc * oh * ow;
        let x = g.x.clone();
        let shape_of = if case == 3 {
            "input".to_string()
        } else {
            x.clone()
        };
        let shape = g.side("Shape", "/Shape", &[&shape_of], vec![]);
        let zero = g.constant("/Constant", i64_scalar("zero", 0));
        let n = g.side(
            "Gather",
            "/Gather",
            &[&shape, &zero],
            vec![attr_i("axis", 0)],
        );
        let n1 = if case == 1 {
            // Opset 11 style: Unsqueeze axes as an attribute.
            g.side(
                "Unsqueeze",
                "/Unsqueeze",
                &[&n],
                vec![attr_is("axes", &[0])],
            )
        } else {
            let axes = g.constant("/Constant_axes", i64_tensor("axes", &[0], false));
            g.side("Unsqueeze", "/Unsqueeze", &[&n, &axes], vec![])
        };
        let rest = match case {
            // x.view(x.size(0), x.size(1) * x.size(2) * x.size(3)), with a Cast on the way.
            2 => {
                let mut p = String::new();
                for k in 1..4 {
                    let idx = g.constant(&format!("/Constant_{k}"), i64_scalar("k", k));
                    let dk = g.side("Gather", &format!("/Gather_{k}"), &[&shape, &idx], vec![]);
                    p = if k == 1 {
                        dk
                    } else {
                        g.side("Mul", &format!("/Mul_{k}"), &[&p, &dk], vec![])
                    };
                }
                let p = g.side(
                    "Cast",
                    "/Cast",
                    &[&p],
                    vec![attr_i("to", pb::tensor_proto::DataType::Int64 as i64)],
                );
                let axes = g.constant("/Constant_axes2", i64_tensor("axes", &[0], false));
                g.side("Unsqueeze", "/Unsqueeze_2", &[&p, &axes], vec![])
            }
            _ => g.constant("/Constant_1", i64_tensor("minus_one", &[-1], false)),
        };
        let target = g.side("Concat", "/Concat", &[&n1, &rest], vec![attr_i("axis", 0)]);
        g.op("Reshape", "flat", &[&target], vec![attr_i("allowzero", 0)]);
        add_gemm(&mut g, &mut rng, d);
        let m = g.finish(Batch::Param, &[input.0, input.1, input.2], case % 2 == 0);
        let net = load(&m).unwrap_or_else(|e| panic!("case {case}: {e}"));

        // The same graph with a plain Flatten in place of the shape computation and Reshape.
        let mut plain = m.clone();
        let nodes = &mut plain.graph.as_mut().unwrap().node;
        nodes.retain(|n| {
            ["Conv", "Relu", "Reshape", "Gemm"].contains(&n.op_type.as_deref().unwrap())
        });
        for n in nodes
            .iter_mut()
            .filter(|n| n.op_type.as_deref() == Some("Reshape"))
        {
            n.op_type = Some("Flatten".into());
            n.input.truncate(1);
            n.attribute = vec![attr_i("axis", 1)];
        }
        assert_eq!(nodes.len(), 4);
        let want = load(&plain).unwrap();
        assert_eq!(want.layers.len(), 4);
        assert_eq!(net, want, "case {case}");
        same_forward(&mut rng, &net, &want);
    }
}

#[test]
fn computed_shapes_that_do_not_flatten_or_depend_on_the_batch_are_refused() {
    let mut rng = common::rng("symbolic_shape_refused");
    let input = (2, 4, 5);
    // Reshape to (N, C, H * W): Shape -> Slice [0, 2) -> Concat with [H * W].
    let (mut g, [oc, oh, ow]) = conv_relu(&mut rng, input);
    let x = g.x.clone();
    let shape = g.side("Shape", "/Shape", &[&x], vec![]);
    let starts = g.constant("/starts", i64_tensor("s", &[0], false));
    let ends = g.constant("/ends", i64_tensor("e", &[2], false));
    let nc = g.side("Slice", "/Slice", &[&shape, &starts, &ends], vec![]);
    let hw = g.constant("/hw", i64_tensor("hw", &[(oh * ow) as i64], false));
    let target = g.side("Concat", "/Concat", &[&nc, &hw], vec![attr_i("axis", 0)]);
    g.op("Reshape", "/unflat/Reshape", &[&target], vec![]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[2, 4, 5], false)));
    assert_eq!(node, "/unflat/Reshape");
    assert!(
        message.contains(&format!("[N, {oc}, {}]", oh * ow)) && message.contains("does not mean"),
        "{message}"
    );
    // A shape that multiplies the batch size: it cannot be resolved at load time.
    let (mut g, _) = conv_relu(&mut rng, input);
    let x = g.x.clone();
    let shape = g.side("Shape", "/Shape", &[&x], vec![]);
    let zero = g.constant("/zero", i64_scalar("z", 0));
    let n = g.side("Gather", "/Gather", &[&shape, &zero], vec![]);
    let two = g.constant("/two", i64_scalar("t", 2));
    let n2 = g.side("Mul", "/batch/Mul", &[&n, &two], vec![]);
    let axes = g.constant("/axes", i64_tensor("a", &[0], false));
    let n2 = g.side("Unsqueeze", "/Unsqueeze", &[&n2, &axes], vec![]);
    let minus = g.constant("/minus", i64_tensor("m", &[-1], false));
    let target = g.side("Concat", "/Concat", &[&n2, &minus], vec![attr_i("axis", 0)]);
    g.op("Reshape", "flat", &[&target], vec![]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[2, 4, 5], false)));
    assert_eq!(node, "/batch/Mul");
    assert!(message.contains("cannot be resolved"), "{message}");
    // Reshape to (-1, N): the batch size in the feature position.
    let (mut g, _) = conv_relu(&mut rng, input);
    let x = g.x.clone();
    let shape = g.side("Shape", "/Shape", &[&x], vec![]);
    let zero = g.constant("/zero", i64_tensor("z", &[0], false));
    let n = g.side("Gather", "/Gather", &[&shape, &zero], vec![]);
    let minus = g.constant("/minus", i64_tensor("m", &[-1], false));
    let target = g.side("Concat", "/Concat", &[&minus, &n], vec![attr_i("axis", 0)]);
    g.op("Reshape", "flat", &[&target], vec![]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[2, 4, 5], false)));
    assert_eq!(node, "flat");
    assert!(message.contains("[-1, N]"), "{message}");
    // Shape ops on activation data are refused, naming the node.
    let (mut g, _) = conv_relu(&mut rng, input);
    let zero = g.constant("/zero", i64_scalar("z", 0));
    g.op("Gather", "/data/Gather", &[&zero], vec![]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[2, 4, 5], false)));
    assert_eq!(node, "/data/Gather");
    assert!(message.contains("activation"), "{message}");
    // A data branch next to a shape side branch is still refused.
    let (mut g, [oc, oh, ow]) = conv_relu(&mut rng, input);
    let x = g.x.clone();
    let shape = g.side("Shape", "/Shape", &[&x], vec![]);
    let zero = g.constant("/zero", i64_scalar("z", 0));
    let n = g.side("Gather", "/Gather", &[&shape, &zero], vec![]);
    let axes = g.constant("/axes", i64_tensor("a", &[0], false));
    let n = g.side("Unsqueeze", "/Unsqueeze", &[&n, &axes], vec![]);
    let minus = g.constant("/minus", i64_tensor("m", &[-1], false));
    let target = g.side("Concat", "/Concat", &[&n, &minus], vec![attr_i("axis", 0)]);
    g.op("Reshape", "flat", &[&target], vec![]);
    add_gemm(&mut g, &mut rng, oc * oh * ow);
    g.x = x;
    g.op("Flatten", "/branch/Flatten", &[], vec![]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[2, 4, 5], false)));
    assert_eq!(node, "/branch/Flatten");
    assert!(message.contains("single chain"), "{message}");
}

#[test]
fn reduce_mean_over_the_spatial_axes_is_global_average_pooling() {
    let mut rng = common::rng("reduce_mean");
    for keepdims in [1, 0] {
        let (ch, h, w) = (
            rng.random_range(1..4),
            rng.random_range(1..6),
            rng.random_range(1..6),
        );
        let mut g = G::new("x", false);
        if keepdims == 1 {
            // Dynamo, opset 18: axes as an input, negative; then Reshape to (-1, C).
            let axes = g.constant("axes", i64_tensor("axes", &[-1, -2], false));
            g.op(
                "ReduceMean",
                "node_mean",
                &[&axes],
                vec![attr_i("keepdims", 1)],
            );
            let s = g.constant("shape", i64_tensor("s", &[-1, ch as i64], false));
            g.op("Reshape", "view", &[&s], vec![attr_i("allowzero", 1)]);
        } else {
            // Older opsets: axes as an attribute.
            let attrs = vec![attr_is("axes", &[2, 3]), attr_i("keepdims", 0)];
            g.op("ReduceMean", "node_mean", &[], attrs);
        }
        let net = load(&g.finish(Batch::Param, &[ch, h, w], false)).unwrap();
        assert_eq!(net.output_shape(), vec![ch]);
        assert!(matches!(net.layers[0], Layer::AvgPool2d { .. }));
        assert_eq!(net.names[0], "node_mean");
        let x = common::random_input(&mut rng, &net, 2, -1.0, 1.0);
        let want = x
            .mapv(f64::from)
            .into_shape_with_order((2, ch, h * w))
            .unwrap()
            .mean_axis(Axis(2))
            .unwrap();
        assert_close(&logits(&net, &x), &want, 1e-9, "ReduceMean");
    }
    // Other axes are refused, naming the node.
    for axes in [vec![1], vec![1, 2, 3], vec![3], vec![0, 2, 3]] {
        let mut g = G::new("x", false);
        let a = g.constant("axes", i64_tensor("axes", &axes, false));
        g.op(
            "ReduceMean",
            "/bad/ReduceMean",
            &[&a],
            vec![attr_i("keepdims", 0)],
        );
        g.op("Flatten", "flat", &[], vec![]);
        let (node, message) = model_err(load(&g.finish(Batch::Param, &[2, 3, 3], false)));
        assert_eq!(node, "/bad/ReduceMean");
        assert!(message.contains("axes"), "{message}");
    }
    // Over the features of a flat input, too.
    let mut g = G::new("x", false);
    g.op(
        "ReduceMean",
        "/flat/ReduceMean",
        &[],
        vec![attr_is("axes", &[1])],
    );
    let (node, _) = model_err(load(&g.finish(Batch::Param, &[4], false)));
    assert_eq!(node, "/flat/ReduceMean");
}

/// A one-Gemm model with a weight tensor the caller may spoil.
fn gemm_model(
    rng: &mut StdRng,
    i: usize,
    o: usize,
    spoil: impl FnOnce(&mut pb::GraphProto),
) -> pb::ModelProto {
    let b: Vec<f32> = (0..i * o)
        .map(|_| common::uniform(rng, -1.0, 1.0))
        .collect();
    let mut g = G::new("x", false);
    let bn = g.init("fc.weight", &[o, i], &b);
    g.op("Gemm", "fc", &[&bn], vec![attr_i("transB", 1)]);
    let mut m = g.finish(Batch::Param, &[i], false);
    spoil(m.graph.as_mut().unwrap());
    m
}

#[test]
fn missing_initializers_wrong_weight_sizes_and_unsupported_attributes_are_refused() {
    let mut rng = common::rng("bad_weights");
    let (i, o) = (rng.random_range(2..6), rng.random_range(2..6));
    assert!(load(&gemm_model(&mut rng, i, o, |_| {})).is_ok());
    // Missing initializer.
    let m = gemm_model(&mut rng, i, o, |g| g.initializer.clear());
    let (node, message) = model_err(load(&m));
    assert_eq!(node, "fc");
    assert!(
        message.contains("fc.weight") && message.contains("missing"),
        "{message}"
    );
    // raw_data of the wrong length.
    let m = gemm_model(&mut rng, i, o, |g| {
        g.initializer[0]
            .raw_data
            .as_mut()
            .unwrap()
            .truncate(4 * (i * o - 1))
    });
    let (node, message) = model_err(load(&m));
    assert_eq!(node, "fc.weight");
    assert!(message.contains("raw_data"), "{message}");
    // Dims that do not match the input features.
    let m = gemm_model(&mut rng, i, o, |g| {
        let t = &mut g.initializer[0];
        t.dims = vec![o as i64 * i as i64, 1];
    });
    let (node, message) = model_err(load(&m));
    assert_eq!(node, "fc");
    assert!(message.contains("features"), "{message}");
    // transA=1.
    let m = gemm_model(&mut rng, i, o, |g| {
        g.node[0].attribute.push(attr_i("transA", 1))
    });
    let (node, message) = model_err(load(&m));
    assert_eq!(node, "fc");
    assert!(message.contains("transA"), "{message}");
    // Negative dims, huge dims.
    for dims in [vec![-1, i as i64], vec![1 << 40, 1 << 40]] {
        let m = gemm_model(&mut rng, i, o, |g| g.initializer[0].dims = dims);
        let (node, _) = model_err(load(&m));
        assert_eq!(node, "fc.weight");
    }
    // NaN weights are caught by validation.
    let m = gemm_model(&mut rng, i, o, |g| {
        g.initializer[0].raw_data.as_mut().unwrap()[..4].copy_from_slice(&f32::NAN.to_le_bytes())
    });
    assert!(matches!(load(&m), Err(Error::NonFinite { .. })));
    // Grouped convolution.
    let (m, _) = conv_graph(&mut rng, (2, 5, 5), 2, [3, 3], vec![attr_i("group", 2)]);
    let (node, message) = model_err(load(&m));
    assert_eq!(node, "conv");
    assert!(message.contains("group=2"), "{message}");
    // Dilation 2.
    let (m, _) = conv_graph(
        &mut rng,
        (1, 7, 7),
        2,
        [3, 3],
        vec![attr_is("dilations", &[2, 2])],
    );
    let (node, message) = model_err(load(&m));
    assert_eq!(node, "conv");
    assert!(message.contains("dilation"), "{message}");
    // A Reshape that does not flatten.
    let mut g = G::new("x", false);
    let s = g.constant("shape", i64_tensor("s", &[-1, 2, 3], false));
    g.op("Reshape", "unflatten", &[&s], vec![]);
    let (node, message) = model_err(load(&g.finish(Batch::Param, &[6], false)));
    assert_eq!(node, "unflatten");
    assert!(message.contains("Reshape"), "{message}");
    // Two model inputs.
    let mut m = gemm_model(&mut rng, i, o, |_| {});
    let g = m.graph.as_mut().unwrap();
    g.input.push(value_info("extra", Batch::Param, &[3]));
    let (_, message) = model_err(load(&m));
    assert!(message.contains("extra"), "{message}");
    // A symbolic non-batch dimension.
    let mut m = gemm_model(&mut rng, i, o, |_| {});
    let g = m.graph.as_mut().unwrap();
    g.input[0] = value_info("x", Batch::Param, &[i]);
    if let Some(pb::type_proto::Value::TensorType(t)) =
        g.input[0].r#type.as_mut().and_then(|t| t.value.as_mut())
    {
        t.shape.as_mut().unwrap().dim[1].value = Some(dimension::Value::DimParam("D".into()));
    }
    let (node, message) = model_err(load(&m));
    assert_eq!(node, "x");
    assert!(message.contains("dynamic"), "{message}");
}

// ---------------------------------------------------------------------------------------------
// inspect
// ---------------------------------------------------------------------------------------------

#[test]
fn describe_lists_layers_shapes_params_rule_slots_and_totals() {
    let mut rng = common::rng("describe");
    let net = random_net(&mut rng);
    let text = inspect::describe(&net);
    eprintln!("{text}");
    let shapes = net.shapes().unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].contains(&format!("{:?}", net.input_shape)),
        "{text}"
    );
    assert!(lines[1].contains("rule slot"), "{text}");
    let mut slot = 0;
    for (k, layer) in net.layers.iter().enumerate() {
        let line = lines[k + 2];
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[0], k.to_string(), "{line}");
        assert_eq!(cells[1], net.names[k], "{line}");
        assert_eq!(cells[2], layer.kind(), "{line}");
        assert!(line.contains(&format!("{:?}", shapes[k + 1])), "{line}");
        if layer.is_linear() {
            assert!(
                line.contains(&format!(" {} ", layer.param_count())),
                "{line}"
            );
            assert!(line.contains(&format!(" {slot} ")) || line.ends_with(&format!(" {slot}")));
            slot += 1;
        }
    }
    let total = lines.last().unwrap();
    assert!(
        total.contains(&format!("{} parameters", net.param_count())),
        "{total}"
    );
    assert!(total.contains(&format!("{slot} rule slots")), "{total}");
    assert!(
        total.contains(&format!("{} logits", net.num_outputs())),
        "{total}"
    );
}
