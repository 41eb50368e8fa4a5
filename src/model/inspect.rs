//! inspect (placeholder)
