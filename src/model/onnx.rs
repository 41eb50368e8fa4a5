//! ONNX import (as written by PyTorch's classic and dynamo exporters) and an ONNX writer for the
//! same subset, both through the prost types in [`super::onnx_proto`].
//!
//! # Import
//! The data path must be a single chain: every node that reads activation data reads the
//! previous such node's output, plus constants (initializers or `Constant` outputs) and shape
//! values (below). Accepted ops (SPEC section 1):
//!
//! - `Gemm` (transA = 0, any transB, alpha, beta; C absent, scalar, `[out]` or `[1, out]`) and
//!   `MatMul` with a constant `[in, out]` B, optionally followed by `Add` of a constant: Dense.
//! - `Conv`: 2-D, group 1, dilation 1, explicit `pads` or `auto_pad` (`NOTSET`, `VALID`,
//!   `SAME_UPPER`, `SAME_LOWER`, computed from the input size), optional bias.
//! - `BatchNormalization` directly after a Dense or Conv2d: folded into it, with
//!   scale = gamma / sqrt(var + epsilon), W' = W * scale, b' = (b - mean) * scale + beta.
//! - `Relu`; `MaxPool`, `AveragePool` (2-D; `ceil_mode = 1` only where it changes nothing),
//!   `GlobalAveragePool` (an average pool over the whole map), and `ReduceMean` over exactly the
//!   spatial axes 2 and 3 (axes as attribute or, opset 18+, as input; negative axes allowed): the
//!   same whole-map average pool, followed by a Flatten when `keepdims = 0`.
//! - Sum pooling has no ONNX op: it is written, and recognised, as exactly the pair
//!   `AveragePool` followed by `Mul` by a one-element constant equal to the window size
//!   (kh * kw). With padding the `AveragePool` must have `count_include_pad = 1`, so that the pair
//!   really is the window sum.
//! - `Flatten` (axis 1) and `Reshape` to a shape meaning (N, features) (`[-1, D]`, `[0, -1]`,
//!   `[N, -1]`, `[N, D]`, ...): Flatten, or nothing when the activation is already flat. The shape
//!   is a constant or a shape value.
//! - Shape values: side computations on tensor shapes, evaluated at load time, such as the
//!   classic exporter's `x.view(x.size(0), -1)` (`Shape -> Gather -> Unsqueeze -> Concat ->
//!   Reshape`). `Shape` of an activation gives `[N, d1, d2, ...]` with N the symbolic batch size
//!   and the per-sample sizes known; `Gather`, `Slice`, `Unsqueeze`, `Squeeze`, `Concat`, `Cast`
//!   (to an integer type), `Identity` and `Add`/`Sub`/`Mul`/`Div` then work on such small int64
//!   vectors (and int64 constants); arithmetic needs known values (N only with `* 1`, `/ 1`,
//!   `+ 0`, `- 0`). Reading an activation's shape does not count as reading its data, so these
//!   nodes do not break the chain. A shape value that cannot be resolved is refused, naming the
//!   node.
//! - `Identity`, `Dropout`: removed; `Softmax`/`LogSoftmax`: removed when nothing but
//!   `Identity`/`Dropout` follows (we explain the logits).
//!
//! Weights are float32 (`raw_data` little-endian or `float_data`; float64 is converted), shapes
//! int64 (`raw_data` or `int64_data`). Initializers may or may not be listed as graph inputs; the
//! model input is the one graph input that is not a constant, and its first dimension (the batch)
//! may be symbolic, fixed or absent. Every failure is an [`Error::Model`] naming the file and node,
//! or [`Error::UnsupportedOp`]; corrupt or truncated files give errors, never panics.
//!
//! # Export
//! [`to_bytes`] writes opset 13, IR version 8: Dense as `Gemm(transB = 1)` with B = W^T (the
//! PyTorch `Linear` layout), `Conv`, `Relu`, `MaxPool`, `AveragePool` (with `count_include_pad`;
//! sum pooling as `AveragePool` + `Mul`), `Flatten(axis = 1)`; input `input` with a dynamic batch
//! dimension `N`, output `logits`, weights as `raw_data`. Node names are the layer names, so
//! `from_bytes(&to_bytes(net))` gives back the same network (a Flatten of an already flat
//! activation excepted, which import drops). [`save_with_metadata`] also writes the model's
//! `metadata_props` (a tabular model's preprocessing, for one), and [`load_metadata`] reads them.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use ndarray::{Array1, Array2, Array4};
use prost::Message;

use super::onnx_proto as pb;
use super::{Layer, Network, Window};
use crate::{Error, Result};

use pb::attribute_proto::AttributeType;
use pb::tensor_proto::{DataLocation, DataType};
use pb::tensor_shape_proto::{dimension, Dimension};

/// Opset the writer declares.
const OPSET: i64 = 13;
/// IR version the writer declares.
const IR_VERSION: i64 = 8;
/// Largest value accepted for a single dimension, kernel size, stride or pad.
const MAX_DIM: i64 = 1 << 24;
/// Largest number of values per sample accepted for any activation.
const MAX_ACTIVATION: usize = 1 << 36;
/// Node name of errors about the file as a whole.
const WHOLE_FILE: &str = "(model)";

/// Reads an ONNX model file into a validated [`Network`]. A file that cannot be read is an
/// [`Error::Input`] (a bad `--model`, exit code 2), like one that does not parse.
pub fn load(path: &Path) -> Result<Network> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::input(path, format!("cannot read the model: {e}")))?;
    from_bytes(&bytes, &path.display().to_string())
}

/// Parses ONNX model bytes; `path_label` names the source in error messages.
pub fn from_bytes(bytes: &[u8], path_label: &str) -> Result<Network> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| Error::Model {
        path: path_label.to_string(),
        node: WHOLE_FILE.into(),
        message: format!("not a valid ONNX protobuf file (corrupt or truncated?): {e}"),
    })?;
    Importer::new(path_label).import(&model)
}

/// Serialises a network as an ONNX model (opset 13). Same network, same bytes.
pub fn to_bytes(net: &Network) -> Vec<u8> {
    to_bytes_with_metadata(net, &[])
}

/// [`to_bytes`] with `(key, value)` pairs in the model's `metadata_props`, in the given order.
pub fn to_bytes_with_metadata(net: &Network, metadata: &[(&str, &str)]) -> Vec<u8> {
    let mut model = model_proto(net);
    model.metadata_props = metadata
        .iter()
        .map(|(k, v)| pb::StringStringEntryProto {
            key: Some(k.to_string()),
            value: Some(v.to_string()),
        })
        .collect();
    model.encode_to_vec()
}

/// The model's `metadata_props` as `(key, value)` pairs, in file order (a missing key or value
/// reads as empty). Reads only the protobuf envelope: the graph is not checked.
pub fn metadata_from_bytes(bytes: &[u8], path_label: &str) -> Result<Vec<(String, String)>> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| Error::Model {
        path: path_label.to_string(),
        node: WHOLE_FILE.into(),
        message: format!("not a valid ONNX protobuf file (corrupt or truncated?): {e}"),
    })?;
    Ok(model
        .metadata_props
        .into_iter()
        .map(|p| (p.key.unwrap_or_default(), p.value.unwrap_or_default()))
        .collect())
}

/// Reads an ONNX model file's `metadata_props` (see [`metadata_from_bytes`]).
pub fn load_metadata(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::input(path, format!("cannot read the model: {e}")))?;
    metadata_from_bytes(&bytes, &path.display().to_string())
}

/// Writes [`to_bytes`] to `path` through a temporary file in the same folder and a rename, so the
/// file appears complete or not at all.
pub fn save(net: &Network, path: &Path) -> Result<()> {
    save_with_metadata(net, path, &[])
}

/// [`save`] with `(key, value)` pairs in the model's `metadata_props`
/// (see [`to_bytes_with_metadata`]).
pub fn save_with_metadata(net: &Network, path: &Path, metadata: &[(&str, &str)]) -> Result<()> {
    let bytes = to_bytes_with_metadata(net, metadata);
    let file_name = path
        .file_name()
        .ok_or_else(|| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

// ---------------------------------------------------------------------------------------------
// Import
// ---------------------------------------------------------------------------------------------

/// A constant tensor (initializer or `Constant` output), decoded.
#[derive(Clone, Debug)]
struct Tensor {
    dims: Vec<usize>,
    data: Data,
}

#[derive(Clone, Debug)]
enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

/// One element of a shape value: the symbolic batch size or a known integer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dim {
    Batch,
    Int(i64),
}

/// A small int64 tensor (rank 0 or 1) computed from tensor shapes at load time.
#[derive(Clone, Debug)]
struct ShapeValue {
    scalar: bool,
    v: Vec<Dim>,
}

/// Writes dims as `[N, 5, -1]`.
fn show_dims(v: &[Dim]) -> String {
    let items: Vec<String> = v
        .iter()
        .map(|d| match d {
            Dim::Batch => "N".to_string(),
            Dim::Int(i) => i.to_string(),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

/// Largest number of values accepted in a shape value.
const MAX_SHAPE_VALUES: usize = 4096;

/// What the last kept layer came from, for the ops that fold into it.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Last {
    /// Nothing that folds.
    Other,
    /// A Dense or Conv2d; `matmul` when it is a bias-free MatMul awaiting its Add.
    Linear { matmul: bool },
    /// An average pool that a following Mul by the window size turns into sum pooling.
    AvgPool,
}

struct Importer<'a> {
    path: &'a str,
    consts: HashMap<String, Tensor>,
    /// The graph input and every data node output seen so far (for chain errors).
    produced: HashSet<String>,
    /// Per-sample shapes of those activations, for `Shape`.
    act_shapes: HashMap<String, Vec<usize>>,
    /// Shape values computed so far.
    shape_values: HashMap<String, ShapeValue>,
    /// The tensor the chain has reached.
    current: String,
    /// Its per-sample shape.
    shape: Vec<usize>,
    /// The model's per-sample input shape.
    input_shape: Vec<usize>,
    layers: Vec<Layer>,
    names: Vec<String>,
    last: Last,
    /// A Softmax/LogSoftmax (node name, op) already removed; only Identity/Dropout may follow.
    softmax: Option<(String, String)>,
}

/// Ops that take part in the chain (Constant is handled apart).
const CHAIN_OPS: &[&str] = &[
    "Gemm",
    "MatMul",
    "Add",
    "Conv",
    "BatchNormalization",
    "Relu",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "ReduceMean",
    "Mul",
    "Flatten",
    "Reshape",
    "Identity",
    "Dropout",
    "Softmax",
    "LogSoftmax",
];

/// Ops evaluated on shape values (some also take part in the chain when they read activations).
const SHAPE_OPS: &[&str] = &[
    "Shape",
    "Gather",
    "Slice",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Cast",
    "Identity",
    "Add",
    "Sub",
    "Mul",
    "Div",
];

impl<'a> Importer<'a> {
    fn new(path: &'a str) -> Self {
        Importer {
            path,
            consts: HashMap::new(),
            produced: HashSet::new(),
            act_shapes: HashMap::new(),
            shape_values: HashMap::new(),
            current: String::new(),
            shape: vec![],
            input_shape: vec![],
            layers: vec![],
            names: vec![],
            last: Last::Other,
            softmax: None,
        }
    }

    fn err(&self, node: &str, message: impl Into<String>) -> Error {
        Error::Model {
            path: self.path.to_string(),
            node: node.to_string(),
            message: message.into(),
        }
    }

    fn import(mut self, model: &pb::ModelProto) -> Result<Network> {
        let default_opset = model
            .opset_import
            .iter()
            .find(|o| matches!(o.domain.as_deref(), None | Some("") | Some("ai.onnx")));
        if default_opset.is_none() {
            return Err(self.err(
                WHOLE_FILE,
                "no opset_import for the default ONNX domain (file truncated, or not an ONNX model)",
            ));
        }
        let graph = model
            .graph
            .as_ref()
            .ok_or_else(|| self.err(WHOLE_FILE, "the model has no graph"))?;
        if !graph.sparse_initializer.is_empty() {
            return Err(self.err(
                WHOLE_FILE,
                "sparse initializers are not supported; store the weights as dense tensors",
            ));
        }
        for t in &graph.initializer {
            let name = t.name.clone().unwrap_or_default();
            if name.is_empty() {
                return Err(self.err(WHOLE_FILE, "an initializer has no name"));
            }
            let tensor = self.tensor(t, &name)?;
            self.consts.insert(name, tensor);
        }
        self.input(graph)?;
        for (idx, node) in graph.node.iter().enumerate() {
            self.node(node, idx)?;
        }
        let output = match graph.output.as_slice() {
            [o] => o.name.clone().unwrap_or_default(),
            outs => {
                return Err(self.err(
                    WHOLE_FILE,
                    format!(
                        "the graph must have exactly one output, it has {}",
                        outs.len()
                    ),
                ))
            }
        };
        if output != self.current {
            return Err(self.err(
                &output,
                format!(
                    "the graph output '{output}' is not the end of the node chain (which ends at \
                     '{}'); the graph must be a single chain from input to output",
                    self.current
                ),
            ));
        }
        if self.layers.is_empty() {
            return Err(self.err(WHOLE_FILE, "the graph has no layers"));
        }
        if self.shape.len() != 1 {
            return Err(self.err(
                &output,
                format!(
                    "the output must be a vector of logits per sample, got shape {:?}; add a Flatten",
                    self.shape
                ),
            ));
        }
        match Network::new(self.input_shape, self.layers, self.names) {
            Ok(net) => Ok(net),
            Err(e @ Error::NonFinite { .. }) => Err(e),
            Err(e) => Err(Error::Model {
                path: self.path.to_string(),
                node: output,
                message: e.to_string(),
            }),
        }
    }
}

// Graph input, tensors and attributes.
impl Importer<'_> {
    /// Finds the model input (the graph input that is not a constant) and its per-sample shape.
    fn input(&mut self, graph: &pb::GraphProto) -> Result<()> {
        let inputs: Vec<&pb::ValueInfoProto> = graph
            .input
            .iter()
            .filter(|i| !self.consts.contains_key(i.name.as_deref().unwrap_or("")))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            [] => {
                return Err(self.err(
                    WHOLE_FILE,
                    "no model input: every graph input is an initializer",
                ))
            }
            many => {
                let names: Vec<&str> = many
                    .iter()
                    .map(|i| i.name.as_deref().unwrap_or(""))
                    .collect();
                return Err(self.err(
                    WHOLE_FILE,
                    format!("expected one model input, found {}: {names:?}", names.len()),
                ));
            }
        };
        let name = input.name.clone().unwrap_or_default();
        if name.is_empty() {
            return Err(self.err(WHOLE_FILE, "the model input has no name"));
        }
        let tensor_type = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(pb::type_proto::Value::TensorType(t)) => t,
            _ => return Err(self.err(&name, "the model input is not a tensor")),
        };
        if let Some(elem) = tensor_type.elem_type {
            if elem != DataType::Float as i32 {
                return Err(self.err(
                    &name,
                    format!(
                        "the model input has element type {}, expected FLOAT (float32)",
                        data_type_name(elem)
                    ),
                ));
            }
        }
        let dims = &tensor_type
            .shape
            .as_ref()
            .ok_or_else(|| {
                self.err(
                    &name,
                    "the model input has no shape; expected (N, C, H, W) or (N, D)",
                )
            })?
            .dim;
        let mut shape = vec![];
        for (axis, d) in dims.iter().enumerate().skip(1) {
            match d.value {
                Some(dimension::Value::DimValue(v)) if (1..=MAX_DIM).contains(&v) => {
                    shape.push(v as usize)
                }
                _ => {
                    return Err(self.err(
                        &name,
                        format!(
                            "input dimension {axis} must be a fixed size between 1 and {MAX_DIM} \
                             (only the batch dimension may be dynamic), got {}",
                            describe_dim(d)
                        ),
                    ))
                }
            }
        }
        if shape.len() != 1 && shape.len() != 3 {
            return Err(self.err(
                &name,
                format!(
                    "the model input has rank {}, expected (N, C, H, W) or (N, D)",
                    dims.len()
                ),
            ));
        }
        self.check_size(&name, &shape)?;
        self.produced.insert(name.clone());
        self.act_shapes.insert(name.clone(), shape.clone());
        self.current = name;
        self.shape = shape.clone();
        self.input_shape = shape;
        Ok(())
    }

    /// Refuses activations too large to handle (guards the shape arithmetic).
    fn check_size(&self, node: &str, shape: &[usize]) -> Result<()> {
        let total = shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .filter(|&t| t <= MAX_ACTIVATION);
        match total {
            Some(_) => Ok(()),
            None => Err(self.err(
                node,
                format!(
                    "activation of shape {shape:?} is too large (over {MAX_ACTIVATION} values)"
                ),
            )),
        }
    }

    /// Decodes a tensor; `name` is used in messages.
    fn tensor(&self, t: &pb::TensorProto, name: &str) -> Result<Tensor> {
        if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
            return Err(self.err(
                name,
                "tensor data is stored in an external file, which is not supported; save the \
                 model with its weights inside the .onnx file",
            ));
        }
        if t.segment.is_some() {
            return Err(self.err(name, "segmented tensors are not supported"));
        }
        let mut dims = vec![];
        for &d in &t.dims {
            if !(0..=MAX_DIM).contains(&d) {
                return Err(self.err(
                    name,
                    format!("tensor dimension {d} is out of range (0..={MAX_DIM})"),
                ));
            }
            dims.push(d as usize);
        }
        let count = dims
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| self.err(name, format!("tensor dims {dims:?} overflow")))?;
        let dtype = t.data_type.unwrap_or(0);
        let raw = t.raw_data.as_deref();
        let wrong_count = |got: usize| {
            self.err(
                name,
                format!("tensor has {got} values but its dims {dims:?} need {count}"),
            )
        };
        let data = if dtype == DataType::Float as i32 {
            let v: Vec<f32> = match raw {
                Some(bytes) => {
                    if bytes.len() != count.saturating_mul(4) {
                        return Err(self.err(
                            name,
                            format!(
                                "raw_data has {} bytes, dims {dims:?} need {} (float32)",
                                bytes.len(),
                                count.saturating_mul(4)
                            ),
                        ));
                    }
                    bytes
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                        .collect()
                }
                None => t.float_data.clone(),
            };
            if v.len() != count {
                return Err(wrong_count(v.len()));
            }
            Data::F32(v)
        } else if dtype == DataType::Double as i32 {
            let v: Vec<f32> = match raw {
                Some(bytes) => {
                    if bytes.len() != count.saturating_mul(8) {
                        return Err(self.err(
                            name,
                            format!(
                                "raw_data has {} bytes, dims {dims:?} need {} (float64)",
                                bytes.len(),
                                count.saturating_mul(8)
                            ),
                        ));
                    }
                    bytes
                        .chunks_exact(8)
                        .map(|c| {
                            f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                                as f32
                        })
                        .collect()
                }
                None => t.double_data.iter().map(|&x| x as f32).collect(),
            };
            if v.len() != count {
                return Err(wrong_count(v.len()));
            }
            Data::F32(v)
        } else if dtype == DataType::Int64 as i32 {
            let v: Vec<i64> = match raw {
                Some(bytes) => {
                    if bytes.len() != count.saturating_mul(8) {
                        return Err(self.err(
                            name,
                            format!(
                                "raw_data has {} bytes, dims {dims:?} need {} (int64)",
                                bytes.len(),
                                count.saturating_mul(8)
                            ),
                        ));
                    }
                    bytes
                        .chunks_exact(8)
                        .map(|c| {
                            i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                        })
                        .collect()
                }
                None => t.int64_data.clone(),
            };
            if v.len() != count {
                return Err(wrong_count(v.len()));
            }
            Data::I64(v)
        } else {
            return Err(self.err(
                name,
                format!(
                    "tensor element type {} is not supported; weights must be FLOAT (float32) \
                     and shapes INT64",
                    data_type_name(dtype)
                ),
            ));
        };
        Ok(Tensor { dims, data })
    }

    /// A `Constant` node: its output becomes a constant tensor.
    fn constant(&mut self, node: &pb::NodeProto, name: &str) -> Result<()> {
        let out = node
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| self.err(name, "Constant node has no output"))?
            .clone();
        let attr = match node.attribute.as_slice() {
            [a] => a,
            _ => {
                return Err(self.err(
                    name,
                    "Constant node must have exactly one attribute (value, value_float(s) or \
                     value_int(s))",
                ))
            }
        };
        let tensor = match attr.name.as_deref().unwrap_or("") {
            "value" => {
                let t = attr
                    .t
                    .as_ref()
                    .ok_or_else(|| self.err(name, "Constant attribute 'value' holds no tensor"))?;
                self.tensor(t, name)?
            }
            "value_float" => Tensor {
                dims: vec![],
                data: Data::F32(vec![attr.f.unwrap_or(0.0)]),
            },
            "value_floats" => Tensor {
                dims: vec![attr.floats.len()],
                data: Data::F32(attr.floats.clone()),
            },
            "value_int" => Tensor {
                dims: vec![],
                data: Data::I64(vec![attr.i.unwrap_or(0)]),
            },
            "value_ints" => Tensor {
                dims: vec![attr.ints.len()],
                data: Data::I64(attr.ints.clone()),
            },
            other => {
                return Err(self.err(
                    name,
                    format!(
                        "Constant attribute '{other}' is not supported (use value, value_float(s) \
                         or value_int(s))"
                    ),
                ))
            }
        };
        self.consts.insert(out, tensor);
        Ok(())
    }

    /// The constant tensor named by input `pos` of `node`, or an error saying why it is not one.
    fn const_input(
        &self,
        node: &pb::NodeProto,
        name: &str,
        pos: usize,
        what: &str,
    ) -> Result<&Tensor> {
        let input = node
            .input
            .get(pos)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| self.err(name, format!("missing input {pos} ({what})")))?;
        self.lookup(name, input, what)
    }

    /// Like [`Self::const_input`] but `None` when the optional input is absent.
    fn optional_const_input(
        &self,
        node: &pb::NodeProto,
        name: &str,
        pos: usize,
        what: &str,
    ) -> Result<Option<&Tensor>> {
        match node.input.get(pos).filter(|i| !i.is_empty()) {
            None => Ok(None),
            Some(input) => self.lookup(name, input, what).map(Some),
        }
    }

    fn lookup(&self, name: &str, input: &str, what: &str) -> Result<&Tensor> {
        if let Some(t) = self.consts.get(input) {
            return Ok(t);
        }
        if self.shape_values.contains_key(input) {
            Err(self.err(
                name,
                format!(
                    "{what} '{input}' is computed from a tensor shape at run time; only a \
                     Reshape's shape input may be"
                ),
            ))
        } else if self.produced.contains(input) {
            Err(self.err(
                name,
                format!(
                    "{what} '{input}' is an activation, not a constant; the graph must be a single \
                     chain with constant weights"
                ),
            ))
        } else {
            Err(self.err(
                name,
                format!(
                    "{what} '{input}' is missing: it is no initializer, Constant output or earlier \
                     node output"
                ),
            ))
        }
    }

    /// Float data of a constant, or an error naming it.
    fn floats<'t>(&self, name: &str, t: &'t Tensor, what: &str) -> Result<&'t [f32]> {
        match &t.data {
            Data::F32(v) => Ok(v),
            Data::I64(_) => Err(self.err(name, format!("{what} must be float, got int64"))),
        }
    }
}

/// Reads node attributes with type checks and defaults.
struct Attrs<'a> {
    importer: &'a Importer<'a>,
    node: &'a pb::NodeProto,
    name: &'a str,
}

impl Attrs<'_> {
    fn get(&self, key: &str) -> Option<&pb::AttributeProto> {
        self.node
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some(key))
    }

    fn wrong(&self, key: &str, expected: &str) -> Error {
        self.importer
            .err(self.name, format!("attribute '{key}' should be {expected}"))
    }

    fn int(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            None => Ok(default),
            Some(a) if a.i.is_some() || a.r#type == Some(AttributeType::Int as i32) => {
                Ok(a.i.unwrap_or(0))
            }
            Some(_) => Err(self.wrong(key, "an integer")),
        }
    }

    fn float(&self, key: &str, default: f32) -> Result<f32> {
        match self.get(key) {
            None => Ok(default),
            Some(a) if a.f.is_some() || a.r#type == Some(AttributeType::Float as i32) => {
                Ok(a.f.unwrap_or(0.0))
            }
            Some(_) => Err(self.wrong(key, "a float")),
        }
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>> {
        match self.get(key) {
            None => Ok(None),
            Some(a)
                if a.r#type == Some(AttributeType::Ints as i32)
                    || (a.r#type.is_none() && a.i.is_none() && a.f.is_none() && a.s.is_none()) =>
            {
                Ok(Some(a.ints.clone()))
            }
            Some(_) => Err(self.wrong(key, "a list of integers")),
        }
    }

    fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(a) => match &a.s {
                Some(s) => String::from_utf8(s.clone()).map_err(|_| self.wrong(key, "UTF-8 text")),
                None if a.r#type == Some(AttributeType::String as i32) => Ok(String::new()),
                None => Err(self.wrong(key, "a string")),
            },
        }
    }

    /// A 2-element list of sizes in `min..=MAX_DIM` (kernel, strides, dilations), or `default`.
    fn pair(&self, key: &str, default: Option<[usize; 2]>, min: i64) -> Result<[usize; 2]> {
        match self.ints(key)? {
            None => default.ok_or_else(|| {
                self.importer
                    .err(self.name, format!("missing attribute '{key}'"))
            }),
            Some(v) => match v.as_slice() {
                [a, b] if (min..=MAX_DIM).contains(a) && (min..=MAX_DIM).contains(b) => {
                    Ok([*a as usize, *b as usize])
                }
                _ => Err(self.importer.err(
                    self.name,
                    format!(
                        "attribute '{key}' = {v:?}: expected two values in {min}..={MAX_DIM} \
                         (only 2-D operations are supported)"
                    ),
                )),
            },
        }
    }

    /// `pads` as [top, left, bottom, right] (ONNX order x1_begin, x2_begin, x1_end, x2_end).
    fn pads(&self) -> Result<[usize; 4]> {
        match self.ints("pads")? {
            None => Ok([0; 4]),
            Some(v) => match v.as_slice() {
                [a, b, c, d] if [a, b, c, d].iter().all(|x| (0..=MAX_DIM).contains(*x)) => {
                    Ok([*a as usize, *b as usize, *c as usize, *d as usize])
                }
                _ => Err(self.importer.err(
                    self.name,
                    format!("attribute 'pads' = {v:?}: expected four values in 0..={MAX_DIM}"),
                )),
            },
        }
    }
}

/// A human name for an ONNX element type.
fn data_type_name(code: i32) -> String {
    DataType::try_from(code)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("code {code}"))
}

fn describe_dim(d: &Dimension) -> String {
    match &d.value {
        Some(dimension::Value::DimValue(v)) => v.to_string(),
        Some(dimension::Value::DimParam(p)) => format!("symbolic '{p}'"),
        None => "unknown".into(),
    }
}

// Nodes, one method per op.
impl Importer<'_> {
    fn node(&mut self, node: &pb::NodeProto, idx: usize) -> Result<()> {
        let op = node.op_type.as_deref().unwrap_or("");
        let name = match node.name.as_deref() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("{op}_{idx}"),
        };
        let domain = node.domain.as_deref().unwrap_or("");
        let default_domain = domain.is_empty() || domain == "ai.onnx";
        if default_domain && op == "Constant" {
            return self.constant(node, &name);
        }
        if default_domain && SHAPE_OPS.contains(&op) && self.is_shape_node(node, op) {
            return self.shape_node(node, &name, op);
        }
        if !default_domain || !CHAIN_OPS.contains(&op) {
            return Err(Error::UnsupportedOp {
                path: self.path.to_string(),
                node: name,
                op_type: if default_domain {
                    op.to_string()
                } else {
                    format!("{domain}.{op}")
                },
            });
        }
        if let Some((softmax, softmax_op)) = &self.softmax {
            if op != "Identity" && op != "Dropout" {
                return Err(self.err(
                    softmax,
                    format!(
                        "{softmax_op} is removed only when it is the last node, but node '{name}' \
                         ({op}) follows it"
                    ),
                ));
            }
        }
        let data_pos = self.data_input(node, &name, op)?;
        let out = node
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| self.err(&name, "the node has no output"))?
            .clone();
        match op {
            "Gemm" => self.gemm(node, &name)?,
            "MatMul" => self.matmul(node, &name)?,
            "Add" => self.add(node, &name, data_pos)?,
            "Conv" => self.conv(node, &name)?,
            "BatchNormalization" => self.batch_norm(node, &name)?,
            "Relu" => self.push(&name, Layer::Relu, Last::Other)?,
            "MaxPool" => {
                let window = self.pool_window(node, &name, op)?;
                self.push(&name, Layer::MaxPool2d { window }, Last::Other)?
            }
            "AveragePool" => {
                let window = self.pool_window(node, &name, op)?;
                let count_include_pad = self.attrs(node, &name).int("count_include_pad", 0)? != 0;
                let layer = Layer::AvgPool2d {
                    window,
                    count_include_pad,
                    sum: false,
                };
                self.push(&name, layer, Last::AvgPool)?
            }
            "GlobalAveragePool" => {
                let (_, h, w) = self.chw(&name, op)?;
                let window = Window {
                    kernel: [h, w],
                    stride: [1, 1],
                    pad: [0; 4],
                };
                let layer = Layer::AvgPool2d {
                    window,
                    count_include_pad: false,
                    sum: false,
                };
                self.push(&name, layer, Last::AvgPool)?
            }
            "ReduceMean" => self.reduce_mean(node, &name)?,
            "Mul" => self.sum_pool(node, &name, data_pos)?,
            "Flatten" => {
                let axis = self.attrs(node, &name).int("axis", 1)?;
                let rank = self.shape.len() as i64 + 1;
                if axis != 1 && axis + rank != 1 {
                    return Err(self.err(
                        &name,
                        format!(
                            "Flatten with axis={axis} is not supported; only axis=1 (keep the \
                             batch dimension) is"
                        ),
                    ));
                }
                self.flatten(&name)?
            }
            "Reshape" => self.reshape(node, &name)?,
            "Softmax" | "LogSoftmax" => self.softmax = Some((name.clone(), op.to_string())),
            // Identity and Dropout (inference) change nothing.
            _ => {}
        }
        for o in node.output.iter().filter(|o| !o.is_empty()) {
            self.produced.insert(o.clone());
        }
        self.act_shapes.insert(out.clone(), self.shape.clone());
        self.current = out;
        Ok(())
    }

    fn attrs<'n>(&'n self, node: &'n pb::NodeProto, name: &'n str) -> Attrs<'n> {
        Attrs {
            importer: self,
            node,
            name,
        }
    }

    /// Position of the input that continues the chain (0, or 0/1 for Add and Mul).
    fn data_input(&self, node: &pb::NodeProto, name: &str, op: &str) -> Result<usize> {
        let candidates: &[usize] = if op == "Add" || op == "Mul" {
            &[0, 1]
        } else {
            &[0]
        };
        for &pos in candidates {
            if node.input.get(pos) == Some(&self.current) {
                let twice = node
                    .input
                    .iter()
                    .enumerate()
                    .any(|(i, x)| i != pos && *x == self.current);
                if twice {
                    return Err(self.err(
                        name,
                        format!(
                            "reads the activation '{}' more than once; the graph must be a single \
                             chain with constant weights",
                            self.current
                        ),
                    ));
                }
                return Ok(pos);
            }
        }
        let first = node.input.first().map(String::as_str).unwrap_or("");
        Err(if first.is_empty() {
            self.err(name, "the node has no data input")
        } else if self.produced.contains(first) {
            self.err(
                name,
                format!(
                    "the graph is not a single chain: this node reads '{first}', but the previous \
                     node's output is '{}' (branches, skip connections and merges are not \
                     supported)",
                    self.current
                ),
            )
        } else if self.consts.contains_key(first) {
            self.err(
                name,
                format!(
                    "the data input '{first}' is a constant; expected the previous node's output \
                     '{}'",
                    self.current
                ),
            )
        } else if self.shape_values.contains_key(first) {
            self.err(
                name,
                format!(
                    "the data input '{first}' is a value computed from a tensor shape; expected \
                     the previous node's output '{}'",
                    self.current
                ),
            )
        } else {
            self.err(
                name,
                format!(
                    "input '{first}' is missing: it is no initializer, Constant output or earlier \
                     node output"
                ),
            )
        })
    }

    /// Appends a layer, checking that it accepts the current shape.
    fn push(&mut self, name: &str, layer: Layer, last: Last) -> Result<()> {
        let out = layer
            .output_shape(&self.shape)
            .map_err(|m| self.err(name, m))?;
        self.check_size(name, &out)?;
        self.shape = out;
        self.layers.push(layer);
        self.names.push(name.to_string());
        self.last = last;
        Ok(())
    }

    /// Number of features of a flat activation, or an error saying a Flatten is needed.
    fn flat(&self, name: &str, op: &str) -> Result<usize> {
        match self.shape.as_slice() {
            [d] => Ok(*d),
            s => Err(self.err(
                name,
                format!(
                    "{op} needs a flat (N, features) input, got per-sample shape {s:?}; add a \
                     Flatten before it"
                ),
            )),
        }
    }

    /// (C, H, W) of an image activation, or an error.
    fn chw(&self, name: &str, op: &str) -> Result<(usize, usize, usize)> {
        match self.shape.as_slice() {
            [c, h, w] => Ok((*c, *h, *w)),
            s => Err(self.err(
                name,
                format!("{op} needs an (N, C, H, W) input, got per-sample shape {s:?}"),
            )),
        }
    }

    /// A bias of length `n` from an optional constant that broadcasts to `[n]`.
    fn bias(&self, name: &str, t: Option<&Tensor>, n: usize, what: &str) -> Result<Array1<f32>> {
        let Some(t) = t else {
            return Ok(Array1::zeros(n));
        };
        let v = self.floats(name, t, what)?;
        let leading_ones = t.dims.len() < 2 || t.dims[..t.dims.len() - 1].iter().all(|&d| d == 1);
        if !leading_ones || (v.len() != 1 && v.len() != n) {
            return Err(self.err(
                name,
                format!(
                    "{what} has dims {:?}, which do not broadcast to one value per output ({n})",
                    t.dims
                ),
            ));
        }
        Ok(Array1::from_shape_fn(n, |j| {
            v[if v.len() == 1 { 0 } else { j }]
        }))
    }

    fn gemm(&mut self, node: &pb::NodeProto, name: &str) -> Result<()> {
        let a = self.attrs(node, name);
        let alpha = a.float("alpha", 1.0)?;
        let beta = a.float("beta", 1.0)?;
        let trans_a = a.int("transA", 0)?;
        let trans_b = a.int("transB", 0)? != 0;
        if trans_a != 0 {
            return Err(self.err(
                name,
                "Gemm with transA=1 is not supported; the data input must be (N, features)",
            ));
        }
        let in_features = self.flat(name, "Gemm")?;
        let b = self.const_input(node, name, 1, "weight B")?;
        let bv = self.floats(name, b, "weight B")?;
        let (rows, cols) = match b.dims.as_slice() {
            [r, c] => (*r, *c),
            d => return Err(self.err(name, format!("weight B must be 2-D, got dims {d:?}"))),
        };
        let (fan_in, fan_out) = if trans_b { (cols, rows) } else { (rows, cols) };
        if fan_in != in_features || fan_out == 0 {
            return Err(self.err(
                name,
                format!(
                    "weight B has dims {:?} (transB={}), which takes {fan_in} features, but the \
                     input has {in_features}",
                    b.dims, trans_b as i32
                ),
            ));
        }
        let weight = Array2::from_shape_fn((fan_in, fan_out), |(i, o)| {
            alpha
                * if trans_b {
                    bv[o * cols + i]
                } else {
                    bv[i * cols + o]
                }
        });
        let c = self.optional_const_input(node, name, 2, "bias C")?;
        let bias = self.bias(name, c, fan_out, "bias C")? * beta;
        self.push(
            name,
            Layer::Dense { weight, bias },
            Last::Linear { matmul: false },
        )
    }

    fn matmul(&mut self, node: &pb::NodeProto, name: &str) -> Result<()> {
        let in_features = self.flat(name, "MatMul")?;
        let b = self.const_input(node, name, 1, "weight B")?;
        let bv = self.floats(name, b, "weight B")?;
        let (rows, cols) = match b.dims.as_slice() {
            [r, c] if *r == in_features && *c > 0 => (*r, *c),
            d => {
                return Err(self.err(
                    name,
                    format!(
                        "weight B must be 2-D [{in_features}, outputs] for an input of \
                         {in_features} features, got dims {d:?}"
                    ),
                ))
            }
        };
        let weight = Array2::from_shape_vec((rows, cols), bv.to_vec())
            .map_err(|e| self.err(name, format!("weight B: {e}")))?;
        let bias = Array1::zeros(cols);
        self.push(
            name,
            Layer::Dense { weight, bias },
            Last::Linear { matmul: true },
        )
    }

    /// Add of a constant right after a MatMul: the Dense layer's bias.
    fn add(&mut self, node: &pb::NodeProto, name: &str, data_pos: usize) -> Result<()> {
        let t = self.const_input(node, name, 1 - data_pos, "bias")?;
        if self.last != (Last::Linear { matmul: true }) {
            return Err(self.err(
                name,
                "Add is supported only as the bias of the MatMul right before it",
            ));
        }
        let n = self.shape[0];
        let add = self.bias(name, Some(t), n, "bias")?;
        if let Some(Layer::Dense { bias, .. }) = self.layers.last_mut() {
            *bias += &add;
        }
        self.last = Last::Linear { matmul: false };
        Ok(())
    }

    /// Resolves `auto_pad`/`pads` into [top, left, bottom, right] for an `h x w` input.
    fn resolve_pads(
        &self,
        a: &Attrs<'_>,
        name: &str,
        kernel: [usize; 2],
        stride: [usize; 2],
        (h, w): (usize, usize),
    ) -> Result<[usize; 4]> {
        let auto = a.string("auto_pad", "NOTSET")?;
        let same = |n: usize, k: usize, s: usize, upper: bool| {
            let out = n.div_ceil(s);
            let total = ((out.max(1) - 1) * s + k).saturating_sub(n);
            let (small, big) = (total / 2, total - total / 2);
            if upper {
                (small, big)
            } else {
                (big, small)
            }
        };
        match auto.as_str() {
            "NOTSET" | "" => a.pads(),
            "VALID" => Ok([0; 4]),
            "SAME_UPPER" | "SAME_LOWER" => {
                let upper = auto == "SAME_UPPER";
                let (t, b) = same(h, kernel[0], stride[0], upper);
                let (l, r) = same(w, kernel[1], stride[1], upper);
                Ok([t, l, b, r])
            }
            other => Err(self.err(
                name,
                format!("auto_pad '{other}' is not one of NOTSET, VALID, SAME_UPPER, SAME_LOWER"),
            )),
        }
    }

    fn conv(&mut self, node: &pb::NodeProto, name: &str) -> Result<()> {
        let a = self.attrs(node, name);
        let (c, h, w) = self.chw(name, "Conv")?;
        let group = a.int("group", 1)?;
        if group != 1 {
            return Err(self.err(
                name,
                format!(
                    "Conv with group={group} (grouped or depthwise convolution) is not supported; \
                     only group=1"
                ),
            ));
        }
        let wt = self.const_input(node, name, 1, "weight W")?;
        let wv = self.floats(name, wt, "weight W")?;
        let (oc, ic, kh, kw) = match wt.dims.as_slice() {
            [oc, ic, kh, kw] if [oc, ic, kh, kw].iter().all(|&&d| d > 0) => (*oc, *ic, *kh, *kw),
            d => {
                return Err(self.err(
                    name,
                    format!(
                        "Conv weight W must be 4-D [out, in, kh, kw] with no zero dimension (only \
                         2-D convolution is supported), got dims {d:?}"
                    ),
                ))
            }
        };
        if ic != c {
            return Err(self.err(
                name,
                format!("weight W has {ic} input channels, but the input has {c}"),
            ));
        }
        let kernel = a.pair("kernel_shape", Some([kh, kw]), 1)?;
        if kernel != [kh, kw] {
            return Err(self.err(
                name,
                format!(
                    "kernel_shape {kernel:?} disagrees with the weight's {:?}",
                    [kh, kw]
                ),
            ));
        }
        let dilations = a.pair("dilations", Some([1, 1]), 1)?;
        if dilations != [1, 1] {
            return Err(self.err(
                name,
                format!("dilations {dilations:?} are not supported; only dilation 1"),
            ));
        }
        let stride = a.pair("strides", Some([1, 1]), 1)?;
        let pad = self.resolve_pads(&a, name, kernel, stride, (h, w))?;
        let weight = Array4::from_shape_vec((oc, ic, kh, kw), wv.to_vec())
            .map_err(|e| self.err(name, format!("weight W: {e}")))?;
        let bias = match self.optional_const_input(node, name, 2, "bias B")? {
            None => Array1::zeros(oc),
            Some(b) if b.dims == [oc] => Array1::from(self.floats(name, b, "bias B")?.to_vec()),
            Some(b) => {
                return Err(self.err(
                    name,
                    format!("bias B must have dims [{oc}], got {:?}", b.dims),
                ))
            }
        };
        let window = Window {
            kernel,
            stride,
            pad,
        };
        self.push(
            name,
            Layer::Conv2d {
                weight,
                bias,
                window,
            },
            Last::Linear { matmul: false },
        )
    }

    /// Window of a MaxPool or AveragePool node.
    fn pool_window(&self, node: &pb::NodeProto, name: &str, op: &str) -> Result<Window> {
        let a = self.attrs(node, name);
        let (_, h, w) = self.chw(name, op)?;
        let kernel = a.pair("kernel_shape", None, 1)?;
        let stride = a.pair("strides", Some([1, 1]), 1)?;
        let dilations = a.pair("dilations", Some([1, 1]), 1)?;
        if dilations != [1, 1] {
            return Err(self.err(
                name,
                format!("dilations {dilations:?} are not supported; only dilation 1"),
            ));
        }
        let pad = self.resolve_pads(&a, name, kernel, stride, (h, w))?;
        if a.int("ceil_mode", 0)? != 0 {
            let exact = |n: usize, p0: usize, p1: usize, k: usize, s: usize| {
                (n + p0 + p1).checked_sub(k).is_some_and(|d| d % s == 0)
            };
            if !exact(h, pad[0], pad[2], kernel[0], stride[0])
                || !exact(w, pad[1], pad[3], kernel[1], stride[1])
            {
                return Err(self.err(
                    name,
                    format!(
                        "ceil_mode=1 changes the output size here (input {h}x{w}, kernel \
                         {kernel:?}, strides {stride:?}, pads {pad:?}); only ceil_mode=0 is \
                         supported: export with ceil_mode=False or pad the input"
                    ),
                ));
            }
        }
        Ok(Window {
            kernel,
            stride,
            pad,
        })
    }

    /// Mul by the window size right after an AveragePool: sum pooling.
    fn sum_pool(&mut self, node: &pb::NodeProto, name: &str, data_pos: usize) -> Result<()> {
        const NOT_SUM: &str = "Mul is supported only as sum pooling: an AveragePool followed by \
                               Mul by a one-element constant equal to its window size";
        let t = self.const_input(node, name, 1 - data_pos, "factor")?;
        let (window, count_include_pad) = match (self.last, self.layers.last()) {
            (
                Last::AvgPool,
                Some(Layer::AvgPool2d {
                    window,
                    count_include_pad,
                    ..
                }),
            ) => (*window, *count_include_pad),
            _ => return Err(self.err(name, NOT_SUM)),
        };
        let v = match self.floats(name, t, "factor")? {
            [v] => *v as f64,
            _ => return Err(self.err(name, NOT_SUM)),
        };
        let size = (window.kernel[0] * window.kernel[1]) as f64;
        if (v - size).abs() > 1e-6 * size {
            return Err(self.err(
                name,
                format!(
                    "Mul by {v} after AveragePool with kernel {:?}: only the window size {size} \
                     (sum pooling) is supported",
                    window.kernel
                ),
            ));
        }
        if !count_include_pad && window.pad != [0; 4] {
            return Err(self.err(
                name,
                "AveragePool + Mul is sum pooling only with count_include_pad=1 when the window \
                 is padded",
            ));
        }
        if let Some(Layer::AvgPool2d { sum, .. }) = self.layers.last_mut() {
            *sum = true;
        }
        self.last = Last::Other;
        Ok(())
    }

    /// Flatten to (N, features): a Flatten layer, or nothing when already flat.
    fn flatten(&mut self, name: &str) -> Result<()> {
        if self.shape.len() == 1 {
            return Ok(());
        }
        self.push(name, Layer::Flatten, Last::Other)
    }

    /// Reshape to a constant shape or a shape value meaning (N, features).
    fn reshape(&mut self, node: &pb::NodeProto, name: &str) -> Result<()> {
        let a = self.attrs(node, name);
        let allow_zero = a.int("allowzero", 0)? != 0;
        let shape_input = node.input.get(1).filter(|i| !i.is_empty());
        let target: Vec<Dim> = match shape_input.and_then(|i| self.shape_values.get(i)) {
            Some(sv) => sv.v.clone(),
            None => match self.optional_const_input(node, name, 1, "shape")? {
                Some(Tensor {
                    data: Data::I64(v), ..
                }) => v.iter().map(|&x| Dim::Int(x)).collect(),
                Some(_) => return Err(self.err(name, "the shape input must be int64")),
                None => a
                    .ints("shape")?
                    .ok_or_else(|| self.err(name, "Reshape has no shape input"))?
                    .into_iter()
                    .map(Dim::Int)
                    .collect(),
            },
        };
        let features = self.shape.iter().product::<usize>() as i64;
        let copy = !allow_zero;
        let flattens = match target.as_slice() {
            [n, d] => {
                let n_ok = match *n {
                    Dim::Batch => true,
                    Dim::Int(n) => n == -1 || n >= 1 || (n == 0 && copy),
                };
                let d_ok = match *d {
                    Dim::Batch => false,
                    Dim::Int(d) => {
                        d == features
                            || (d == -1 && *n != Dim::Int(-1))
                            || (d == 0 && copy && self.shape[0] as i64 == features)
                    }
                };
                n_ok && d_ok
            }
            _ => false,
        };
        if !flattens {
            return Err(self.err(
                name,
                format!(
                    "Reshape to {} (N: the batch size) does not mean (N, {features}) for a \
                     per-sample shape {:?}; only flattening reshapes are supported",
                    show_dims(&target),
                    self.shape
                ),
            ));
        }
        self.flatten(name)
    }

    /// ReduceMean over the spatial axes: an average pool over the whole map, then a Flatten
    /// when the reduced axes are dropped.
    fn reduce_mean(&mut self, node: &pb::NodeProto, name: &str) -> Result<()> {
        let a = self.attrs(node, name);
        let keepdims = a.int("keepdims", 1)? != 0;
        let noop_empty = a.int("noop_with_empty_axes", 0)? != 0;
        let axes = match self.known_ints_input(node, name, 1, "axes")? {
            Some(v) => Some(v),
            None => a.ints("axes")?,
        };
        let axes = axes.unwrap_or_default();
        if axes.is_empty() {
            if noop_empty {
                return Ok(());
            }
            return Err(self.err(
                name,
                "ReduceMean over all axes (batch included) is not supported; only over the \
                 spatial axes [2, 3] of an (N, C, H, W) input",
            ));
        }
        let rank = self.shape.len() as i64 + 1;
        let mut norm: Vec<i64> = axes
            .iter()
            .map(|&x| if x < 0 { x.saturating_add(rank) } else { x })
            .collect();
        norm.sort_unstable();
        if rank != 4 || norm != [2, 3] {
            return Err(self.err(
                name,
                format!(
                    "ReduceMean over axes {axes:?} of an input of per-sample shape {:?} is not \
                     supported; only over the spatial axes [2, 3] of an (N, C, H, W) input \
                     (global average pooling)",
                    self.shape
                ),
            ));
        }
        let (_, h, w) = self.chw(name, "ReduceMean")?;
        let layer = Layer::AvgPool2d {
            window: Window {
                kernel: [h, w],
                stride: [1, 1],
                pad: [0; 4],
            },
            count_include_pad: false,
            sum: false,
        };
        self.push(name, layer, Last::AvgPool)?;
        if !keepdims {
            self.push(name, Layer::Flatten, Last::Other)?;
        }
        Ok(())
    }

    /// BatchNormalization folded into the Dense or Conv2d layer right before it.
    fn batch_norm(&mut self, node: &pb::NodeProto, name: &str) -> Result<()> {
        let a = self.attrs(node, name);
        let eps = a.float("epsilon", 1e-5)? as f64;
        if a.int("training_mode", 0)? != 0 {
            return Err(self.err(
                name,
                "BatchNormalization with training_mode=1; export the model in eval mode",
            ));
        }
        if a.int("spatial", 1)? != 1 {
            return Err(self.err(name, "BatchNormalization with spatial=0 is not supported"));
        }
        if !matches!(self.last, Last::Linear { .. }) {
            return Err(self.err(
                name,
                "BatchNormalization is supported only directly after Gemm, MatMul(+Add) or Conv, \
                 where it is folded into that layer",
            ));
        }
        let channels = self.shape[0];
        let mut params = vec![];
        for (pos, what) in [(1, "scale"), (2, "B"), (3, "mean"), (4, "var")] {
            let t = self.const_input(node, name, pos, what)?;
            let v = self.floats(name, t, what)?;
            if t.dims != [channels] {
                return Err(self.err(
                    name,
                    format!(
                        "{what} has dims {:?}, expected [{channels}] (one per channel)",
                        t.dims
                    ),
                ));
            }
            params.push(v.iter().map(|&x| x as f64).collect::<Vec<f64>>());
        }
        let (gamma, beta, mean, var) = (&params[0], &params[1], &params[2], &params[3]);
        let scale: Vec<f64> = (0..channels)
            .map(|c| gamma[c] / (var[c] + eps).sqrt())
            .collect();
        let fold_bias = |bias: &mut Array1<f32>| {
            for (c, b) in bias.iter_mut().enumerate() {
                *b = ((*b as f64 - mean[c]) * scale[c] + beta[c]) as f32;
            }
        };
        match self.layers.last_mut() {
            Some(Layer::Dense { weight, bias }) => {
                for (c, mut col) in weight.columns_mut().into_iter().enumerate() {
                    col.mapv_inplace(|x| (x as f64 * scale[c]) as f32);
                }
                fold_bias(bias);
            }
            Some(Layer::Conv2d { weight, bias, .. }) => {
                for (c, mut filter) in weight.outer_iter_mut().enumerate() {
                    filter.mapv_inplace(|x| (x as f64 * scale[c]) as f32);
                }
                fold_bias(bias);
            }
            // Last::Linear is set only right after pushing a Dense or Conv2d.
            _ => {}
        }
        self.last = Last::Linear { matmul: false };
        Ok(())
    }
}

// Shape values: small int64 vectors computed from tensor shapes, evaluated at load time.
impl Importer<'_> {
    /// Whether `node` (an op of [`SHAPE_OPS`]) computes a shape value rather than continuing the
    /// chain: `Shape` always; ops that never take part in the chain always (they refuse
    /// activation inputs); `Identity` and arithmetic when they read no activation and at least
    /// one shape value or int64 constant.
    fn is_shape_node(&self, node: &pb::NodeProto, op: &str) -> bool {
        if op == "Shape" || !CHAIN_OPS.contains(&op) {
            return true;
        }
        let inputs = || node.input.iter().filter(|i| !i.is_empty());
        !inputs().any(|i| self.produced.contains(i))
            && inputs().any(|i| {
                self.shape_values.contains_key(i)
                    || matches!(
                        self.consts.get(i),
                        Some(Tensor {
                            data: Data::I64(_),
                            ..
                        })
                    )
            })
    }

    /// Input `pos` of a shape node as a shape value (a shape value or an int64 constant of rank
    /// 0 or 1), or an error.
    fn shape_input(
        &self,
        node: &pb::NodeProto,
        name: &str,
        op: &str,
        pos: usize,
        what: &str,
    ) -> Result<ShapeValue> {
        let input = node
            .input
            .get(pos)
            .filter(|i| !i.is_empty())
            .ok_or_else(|| self.err(name, format!("missing input {pos} ({what})")))?;
        if let Some(sv) = self.shape_values.get(input) {
            return Ok(sv.clone());
        }
        match self.consts.get(input) {
            Some(Tensor {
                dims,
                data: Data::I64(v),
            }) if dims.len() <= 1 => Ok(ShapeValue {
                scalar: dims.is_empty(),
                v: v.iter().map(|&x| Dim::Int(x)).collect(),
            }),
            Some(Tensor {
                data: Data::I64(_),
                dims,
            }) => Err(self.err(
                name,
                format!(
                    "{what} '{input}' has dims {dims:?}; {op} on shapes supports only scalars and \
                     vectors"
                ),
            )),
            Some(_) => Err(self.err(
                name,
                format!(
                    "{what} '{input}' is a float constant; {op} is supported only on int64 shape \
                     values"
                ),
            )),
            None if self.produced.contains(input) => Err(self.err(
                name,
                format!(
                    "{what} '{input}' is an activation; {op} is supported only on tensor shapes \
                     (as in Shape -> Gather -> Unsqueeze -> Concat -> Reshape), not on data"
                ),
            )),
            None => Err(self.err(
                name,
                format!(
                    "{what} '{input}' is missing: it is no initializer, Constant output or earlier \
                     node output"
                ),
            )),
        }
    }

    /// The known integers of a shape value, or an error when the batch size is among them.
    fn known(&self, name: &str, v: &ShapeValue, what: &str) -> Result<Vec<i64>> {
        v.v.iter()
            .map(|d| match d {
                Dim::Int(i) => Ok(*i),
                Dim::Batch => Err(self.err(
                    name,
                    format!(
                        "{what} {} depends on the batch size N, which is not known at load time",
                        show_dims(&v.v)
                    ),
                )),
            })
            .collect()
    }

    /// Optional input `pos` as known integers (axes, starts, ...): `None` when absent.
    fn known_ints_input(
        &self,
        node: &pb::NodeProto,
        name: &str,
        pos: usize,
        what: &str,
    ) -> Result<Option<Vec<i64>>> {
        if node.input.get(pos).is_none_or(|i| i.is_empty()) {
            return Ok(None);
        }
        let op = node.op_type.as_deref().unwrap_or("");
        let v = self.shape_input(node, name, op, pos, what)?;
        self.known(name, &v, what).map(Some)
    }

    /// A vector (rank-1) shape value, or an error.
    fn vector(&self, name: &str, op: &str, v: ShapeValue, what: &str) -> Result<Vec<Dim>> {
        if v.scalar {
            return Err(self.err(name, format!("{op} needs a vector {what}, got a scalar")));
        }
        Ok(v.v)
    }

    /// Checks that `axes` name axis 0 of a value of rank `rank` (only rank 0 and 1 exist here).
    fn axis_zero(&self, name: &str, op: &str, axes: &[i64], rank: i64) -> Result<()> {
        if axes.len() == 1 && (axes[0] == 0 || axes[0] == -rank) {
            return Ok(());
        }
        Err(self.err(
            name,
            format!(
                "{op} on a shape value over axes {axes:?} is not supported; shape values are \
                 vectors, only axis 0 is"
            ),
        ))
    }

    /// Evaluates a shape node and records its output.
    fn shape_node(&mut self, node: &pb::NodeProto, name: &str, op: &str) -> Result<()> {
        let out = node
            .output
            .first()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| self.err(name, "the node has no output"))?
            .clone();
        let a = self.attrs(node, name);
        let value = match op {
            "Shape" => {
                let input = node
                    .input
                    .first()
                    .filter(|i| !i.is_empty())
                    .ok_or_else(|| self.err(name, "Shape has no input"))?;
                let full: Vec<Dim> = if let Some(s) = self.act_shapes.get(input) {
                    std::iter::once(Dim::Batch)
                        .chain(s.iter().map(|&d| Dim::Int(d as i64)))
                        .collect()
                } else if let Some(t) = self.consts.get(input) {
                    t.dims.iter().map(|&d| Dim::Int(d as i64)).collect()
                } else {
                    return Err(self.err(
                        name,
                        format!(
                            "input '{input}' is missing: it is no initializer, Constant output or \
                             activation"
                        ),
                    ));
                };
                let rank = full.len() as i64;
                let clamp = |x: i64| {
                    let x = if x < 0 { x.saturating_add(rank) } else { x };
                    x.clamp(0, rank) as usize
                };
                let (start, end) = (clamp(a.int("start", 0)?), clamp(a.int("end", rank)?));
                ShapeValue {
                    scalar: false,
                    v: full[start..end.max(start)].to_vec(),
                }
            }
            "Gather" => {
                let data = self.shape_input(node, name, op, 0, "data")?;
                let data = self.vector(name, op, data, "data")?;
                self.axis_zero(name, op, &[a.int("axis", 0)?], 1)?;
                let indices = self.shape_input(node, name, op, 1, "indices")?;
                let len = data.len() as i64;
                let mut v = vec![];
                for i in self.known(name, &indices, "indices")? {
                    let j = if i < 0 { i.saturating_add(len) } else { i };
                    if !(0..len).contains(&j) {
                        return Err(self.err(
                            name,
                            format!(
                                "index {i} is out of range for the shape value {}",
                                show_dims(&data)
                            ),
                        ));
                    }
                    v.push(data[j as usize]);
                }
                ShapeValue {
                    scalar: indices.scalar,
                    v,
                }
            }
            "Slice" => {
                let data = self.shape_input(node, name, op, 0, "data")?;
                let data = self.vector(name, op, data, "data")?;
                // Opset 10+: starts, ends, axes, steps as inputs; before: attributes.
                let (starts, ends, axes, steps) = if node.input.len() >= 3 {
                    (
                        self.known_ints_input(node, name, 1, "starts")?,
                        self.known_ints_input(node, name, 2, "ends")?,
                        self.known_ints_input(node, name, 3, "axes")?,
                        self.known_ints_input(node, name, 4, "steps")?,
                    )
                } else {
                    (a.ints("starts")?, a.ints("ends")?, a.ints("axes")?, None)
                };
                let (Some(starts), Some(ends)) = (starts, ends) else {
                    return Err(self.err(name, "Slice needs starts and ends"));
                };
                self.axis_zero(name, op, &axes.unwrap_or_else(|| vec![0]), 1)?;
                let step = match steps.as_deref() {
                    None => 1,
                    Some([s]) if *s != 0 => *s,
                    Some(s) => {
                        return Err(self.err(name, format!("Slice steps {s:?} are not supported")))
                    }
                };
                let (start, end) = match (starts.as_slice(), ends.as_slice()) {
                    ([s], [e]) => (*s, *e),
                    _ => {
                        return Err(self.err(
                            name,
                            format!(
                                "Slice starts {starts:?} and ends {ends:?} must have one value \
                                 each (shape values are vectors)"
                            ),
                        ))
                    }
                };
                let n = data.len() as i64;
                let fix = |x: i64, lo: i64, hi: i64| {
                    let x = if x < 0 { x.saturating_add(n) } else { x };
                    x.clamp(lo, hi)
                };
                let mut v = vec![];
                if step > 0 {
                    let (mut i, end) = (fix(start, 0, n), fix(end, 0, n));
                    while i < end {
                        v.push(data[i as usize]);
                        i = i.saturating_add(step);
                    }
                } else {
                    let (mut i, end) = (fix(start, 0, n - 1), fix(end, -1, n - 1));
                    while i > end {
                        v.push(data[i as usize]);
                        i = i.saturating_add(step);
                    }
                }
                ShapeValue { scalar: false, v }
            }
            "Unsqueeze" | "Squeeze" => {
                let data = self.shape_input(node, name, op, 0, "data")?;
                let axes = match self.known_ints_input(node, name, 1, "axes")? {
                    Some(v) => Some(v),
                    None => a.ints("axes")?,
                };
                if op == "Unsqueeze" {
                    if !data.scalar {
                        return Err(self.err(
                            name,
                            "Unsqueeze of a vector shape value (to rank 2) is not supported",
                        ));
                    }
                    self.axis_zero(name, op, &axes.unwrap_or_default(), 1)?;
                    ShapeValue {
                        scalar: false,
                        v: data.v,
                    }
                } else {
                    if data.scalar || data.v.len() != 1 {
                        return Err(self.err(
                            name,
                            format!(
                                "Squeeze of the shape value {} is not supported; only of a \
                                 one-element vector",
                                show_dims(&data.v)
                            ),
                        ));
                    }
                    if let Some(axes) = axes.filter(|x| !x.is_empty()) {
                        self.axis_zero(name, op, &axes, 1)?;
                    }
                    ShapeValue {
                        scalar: true,
                        v: data.v,
                    }
                }
            }
            "Concat" => {
                self.axis_zero(name, op, &[a.int("axis", 0)?], 1)?;
                let mut v = vec![];
                for pos in 0..node.input.len() {
                    if node.input[pos].is_empty() {
                        continue;
                    }
                    let part = self.shape_input(node, name, op, pos, "input")?;
                    v.extend(self.vector(name, op, part, "input")?);
                    if v.len() > MAX_SHAPE_VALUES {
                        break;
                    }
                }
                ShapeValue { scalar: false, v }
            }
            "Cast" => {
                let to = a.int("to", 0)?;
                let integer = [
                    DataType::Int64,
                    DataType::Int32,
                    DataType::Int16,
                    DataType::Int8,
                    DataType::Uint64,
                    DataType::Uint32,
                    DataType::Uint16,
                    DataType::Uint8,
                ]
                .iter()
                .any(|&t| t as i64 == to);
                if !integer {
                    return Err(self.err(
                        name,
                        format!(
                            "Cast of a shape value to {} is not supported; only to integer types",
                            data_type_name(to as i32)
                        ),
                    ));
                }
                self.shape_input(node, name, op, 0, "input")?
            }
            "Identity" => self.shape_input(node, name, op, 0, "input")?,
            _ => self.shape_arith(node, name, op)?,
        };
        if value.v.len() > MAX_SHAPE_VALUES {
            return Err(self.err(
                name,
                format!("shape value of over {MAX_SHAPE_VALUES} values"),
            ));
        }
        self.shape_values.insert(out, value);
        Ok(())
    }

    /// Add, Sub, Mul, Div of shape values (with broadcasting of one-element operands).
    fn shape_arith(&self, node: &pb::NodeProto, name: &str, op: &str) -> Result<ShapeValue> {
        let x = self.shape_input(node, name, op, 0, "A")?;
        let y = self.shape_input(node, name, op, 1, "B")?;
        let n = match (x.v.len(), y.v.len()) {
            (a, b) if a == b => a,
            (1, b) => b,
            (a, 1) => a,
            _ => {
                return Err(self.err(
                    name,
                    format!(
                        "{op} of shape values {} and {} of different lengths",
                        show_dims(&x.v),
                        show_dims(&y.v)
                    ),
                ))
            }
        };
        let pick = |v: &[Dim], i: usize| v[if v.len() == 1 { 0 } else { i }];
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let (p, q) = (pick(&x.v, i), pick(&y.v, i));
            let r = match (op, p, q) {
                ("Add", Dim::Int(a), Dim::Int(b)) => a.checked_add(b).map(Dim::Int),
                ("Sub", Dim::Int(a), Dim::Int(b)) => a.checked_sub(b).map(Dim::Int),
                ("Mul", Dim::Int(a), Dim::Int(b)) => a.checked_mul(b).map(Dim::Int),
                ("Div", Dim::Int(a), Dim::Int(b)) => a.checked_div(b).map(Dim::Int),
                ("Add" | "Sub", Dim::Batch, Dim::Int(0))
                | ("Add", Dim::Int(0), Dim::Batch)
                | ("Mul" | "Div", Dim::Batch, Dim::Int(1))
                | ("Mul", Dim::Int(1), Dim::Batch) => Some(Dim::Batch),
                (_, Dim::Int(_), Dim::Int(_)) => None,
                _ => {
                    return Err(self.err(
                        name,
                        format!(
                            "the shape cannot be resolved at load time: {op} of {} and {} \
                             involves the batch size N, which is not known",
                            show_dims(&[p]),
                            show_dims(&[q])
                        ),
                    ))
                }
            };
            v.push(r.ok_or_else(|| {
                self.err(
                    name,
                    format!(
                        "{op} of {} and {} overflows or divides by zero",
                        show_dims(&[p]),
                        show_dims(&[q])
                    ),
                )
            })?);
        }
        Ok(ShapeValue {
            scalar: x.scalar && y.scalar,
            v,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------------------------

/// Builds the ONNX model for `net` (see the module docs for the layout).
fn model_proto(net: &Network) -> pb::ModelProto {
    let mut graph = pb::GraphProto {
        name: Some("taylormap".into()),
        input: vec![value_info("input", &net.input_shape)],
        output: vec![value_info("logits", &[net.num_outputs()])],
        ..Default::default()
    };
    let last = net.layers.len().saturating_sub(1);
    let mut x = "input".to_string();
    for (k, (layer, name)) in net.layers.iter().zip(&net.names).enumerate() {
        let y = if k == last {
            "logits".to_string()
        } else {
            format!("l{k}.out")
        };
        let mut node = pb::NodeProto {
            name: Some(name.clone()),
            input: vec![x.clone()],
            output: vec![y.clone()],
            ..Default::default()
        };
        match layer {
            Layer::Dense { weight, bias } => {
                let (fan_in, fan_out) = weight.dim();
                let w_name = format!("l{k}.weight");
                let b_name = format!("l{k}.bias");
                // PyTorch Linear layout: B = W^T, [out, in].
                graph.initializer.push(float_tensor(
                    &w_name,
                    &[fan_out, fan_in],
                    weight.t().iter().copied(),
                ));
                graph
                    .initializer
                    .push(float_tensor(&b_name, &[fan_out], bias.iter().copied()));
                node.op_type = Some("Gemm".into());
                node.input.extend([w_name, b_name]);
                node.attribute.push(attr_int("transB", 1));
            }
            Layer::Conv2d {
                weight,
                bias,
                window,
            } => {
                let w_name = format!("l{k}.weight");
                let b_name = format!("l{k}.bias");
                graph.initializer.push(float_tensor(
                    &w_name,
                    weight.shape(),
                    weight.iter().copied(),
                ));
                graph
                    .initializer
                    .push(float_tensor(&b_name, &[bias.len()], bias.iter().copied()));
                node.op_type = Some("Conv".into());
                node.input.extend([w_name, b_name]);
                node.attribute.extend(window_attrs(window));
            }
            Layer::Relu => node.op_type = Some("Relu".into()),
            Layer::MaxPool2d { window } => {
                node.op_type = Some("MaxPool".into());
                node.attribute.extend(window_attrs(window));
            }
            Layer::AvgPool2d {
                window,
                count_include_pad,
                sum,
            } => {
                node.op_type = Some("AveragePool".into());
                node.attribute.extend(window_attrs(window));
                // Sum pooling = AveragePool(count_include_pad=1) x window size; without padding
                // the flag changes nothing, so the layer's own flag is kept.
                let include = *count_include_pad || (*sum && window.pad != [0; 4]);
                node.attribute
                    .push(attr_int("count_include_pad", include as i64));
                if *sum {
                    let avg = format!("l{k}.avg");
                    let factor = format!("l{k}.window_size");
                    node.output = vec![avg.clone()];
                    let size = (window.kernel[0] * window.kernel[1]) as f32;
                    graph
                        .initializer
                        .push(float_tensor(&factor, &[], [size].into_iter()));
                    graph.node.push(node);
                    node = pb::NodeProto {
                        name: Some(format!("{name}.sum")),
                        op_type: Some("Mul".into()),
                        input: vec![avg, factor],
                        output: vec![y.clone()],
                        ..Default::default()
                    };
                }
            }
            Layer::Flatten => {
                node.op_type = Some("Flatten".into());
                node.attribute.push(attr_int("axis", 1));
            }
        }
        graph.node.push(node);
        x = y;
    }
    pb::ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("taylormap".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        opset_import: vec![pb::OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(OPSET),
        }],
        graph: Some(graph),
        ..Default::default()
    }
}

/// A float tensor value description with a dynamic batch dimension `N`.
fn value_info(name: &str, per_sample: &[usize]) -> pb::ValueInfoProto {
    let mut dim = vec![Dimension {
        value: Some(dimension::Value::DimParam("N".into())),
        ..Default::default()
    }];
    dim.extend(per_sample.iter().map(|&d| Dimension {
        value: Some(dimension::Value::DimValue(d as i64)),
        ..Default::default()
    }));
    pb::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: Some(DataType::Float as i32),
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A float32 initializer stored as little-endian `raw_data`.
fn float_tensor(name: &str, dims: &[usize], values: impl Iterator<Item = f32>) -> pb::TensorProto {
    pb::TensorProto {
        name: Some(name.into()),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: Some(DataType::Float as i32),
        raw_data: Some(values.flat_map(f32::to_le_bytes).collect()),
        ..Default::default()
    }
}

fn attr_int(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Int as i32),
        i: Some(v),
        ..Default::default()
    }
}

fn attr_ints(name: &str, v: &[usize]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: Some(name.into()),
        r#type: Some(AttributeType::Ints as i32),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

/// kernel_shape, strides and pads (ONNX order: top, left, bottom, right, like [`Window::pad`]).
fn window_attrs(window: &Window) -> [pb::AttributeProto; 3] {
    [
        attr_ints("kernel_shape", &window.kernel),
        attr_ints("strides", &window.stride),
        attr_ints("pads", &window.pad),
    ]
}
