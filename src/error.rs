//! The library's one error type: every variant names the file, node, layer or flag at fault and
//! what was expected, so the CLI can print it as is and map it to an exit code.

use std::path::PathBuf;

/// Result alias used throughout the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong, with enough context to act on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A model file could not be read or understood; `node` names the ONNX node or tensor.
    #[error("model {path}: node '{node}': {message}")]
    Model {
        path: String,
        node: String,
        message: String,
    },
    /// An ONNX operator taylormap does not handle.
    #[error(
        "model {path}: node '{node}' has op type '{op_type}', which taylormap does not support; \
         supported: Gemm, MatMul+Add, Conv, Relu, MaxPool, AveragePool, GlobalAveragePool, \
         ReduceMean (spatial axes), Flatten, Reshape to (N, -1) (constant shape, or computed with \
         Shape/Gather/Slice/Unsqueeze/Squeeze/Concat/Cast), BatchNormalization (after Gemm/Conv), \
         Identity, Dropout, final Softmax/LogSoftmax"
    )]
    UnsupportedOp {
        path: String,
        node: String,
        op_type: String,
    },
    /// Shapes that do not fit together (layer `layer` is a name or index).
    #[error("layer {layer}: expected {expected}, got {got}")]
    Shape {
        layer: String,
        expected: String,
        got: String,
    },
    /// An input file with the wrong format, shape, type or content.
    #[error("input {path}: {message}")]
    Input { path: PathBuf, message: String },
    /// NaN or infinity in an input sample or a weight tensor.
    #[error("non-finite value (NaN or infinity) in {what}")]
    NonFinite { what: String },
    /// A rule, composite, selector, target or other command-line value that does not parse.
    #[error("{flag}: {message}")]
    Usage { flag: String, message: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No GPU adapter, or a wgpu failure.
    #[error("GPU: {0}")]
    Gpu(String),
}

impl Error {
    /// Exit code per SPEC section 6: 2 for bad usage or bad input, 1 for runtime errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Io { .. } | Error::Gpu(_) => 1,
            _ => 2,
        }
    }

    /// Shorthand for an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// Shorthand for a bad input file.
    pub fn input(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Input {
            path: path.into(),
            message: message.into(),
        }
    }

    /// A file or folder named on the command line that cannot be read (missing, a folder where a
    /// file was expected, no permission): bad input, exit code 2. Failures while writing outputs
    /// stay [`Error::Io`] (exit code 1).
    pub fn unreadable(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Input {
            path: path.into(),
            message: format!("cannot be read: {source}"),
        }
    }

    /// Shorthand for a bad command-line value.
    pub fn usage(flag: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Usage {
            flag: flag.into(),
            message: message.into(),
        }
    }
}

/// Waits for every one of `workers` (scoped threads that each return a `Result`), re-raising a
/// panic, and returns the first error in their order: the cause, where the others stopped after
/// it.
pub(crate) fn join_all<'scope>(
    workers: impl IntoIterator<Item = std::thread::ScopedJoinHandle<'scope, Result<()>>>,
) -> Result<()> {
    let mut first = Ok(());
    for worker in workers {
        let done = worker
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        if first.is_ok() {
            first = done;
        }
    }
    first
}
