//! ONNX import and export (placeholder)
