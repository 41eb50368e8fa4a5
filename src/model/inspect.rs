//! `taylormap inspect`: a plain-text table of a network's layers, shapes, parameter counts and
//! rule slots (the k-th Dense/Conv2d layer, the index `--rule K=...` selects).

use std::fmt::Write;

use super::{Layer, Network, Window};

/// Describes `net` as a table: index, node name, kind, output shape (per sample), parameters,
/// rule slot and layer details, then totals.
pub fn describe(net: &Network) -> String {
    let shapes = net.shapes().ok();
    let mut rows: Vec<[String; 7]> = vec![[
        "#".into(),
        "name".into(),
        "kind".into(),
        "output shape".into(),
        "params".into(),
        "rule slot".into(),
        "details".into(),
    ]];
    let mut slot = 0;
    for (k, (layer, name)) in net.layers.iter().zip(&net.names).enumerate() {
        let shape = shapes
            .as_ref()
            .map(|s| format!("{:?}", s[k + 1]))
            .unwrap_or_else(|| "?".into());
        let params = if layer.is_linear() {
            layer.param_count().to_string()
        } else {
            "-".into()
        };
        let rule_slot = if layer.is_linear() {
            slot += 1;
            (slot - 1).to_string()
        } else {
            "-".into()
        };
        rows.push([
            k.to_string(),
            name.clone(),
            layer.kind().into(),
            shape,
            params,
            rule_slot,
            details(layer),
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "input: {:?} per sample ({} values)",
        net.input_shape,
        net.input_len()
    );
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            // Numbers right-aligned, text left-aligned; the last column is not padded.
            let numeric = matches!(i, 0 | 4 | 5);
            if i == 6 {
                line.push_str(cell);
            } else if numeric {
                let _ = write!(line, "{cell:>w$}  ");
            } else {
                let _ = write!(line, "{cell:<w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(
        out,
        "total: {} layers, {} rule slots (Dense/Conv2d), {} parameters; output: {} logits",
        net.layers.len(),
        slot,
        net.param_count(),
        net.num_outputs()
    );
    out
}

/// One-line geometry of a layer.
fn details(layer: &Layer) -> String {
    let window = |w: &Window| {
        format!(
            "kernel {}x{}, stride {}x{}, pad {:?}",
            w.kernel[0], w.kernel[1], w.stride[0], w.stride[1], w.pad
        )
    };
    match layer {
        Layer::Dense { weight, .. } => format!("{} -> {}", weight.nrows(), weight.ncols()),
        Layer::Conv2d {
            weight, window: w, ..
        } => {
            format!(
                "{} -> {} channels, {}",
                weight.dim().1,
                weight.dim().0,
                window(w)
            )
        }
        Layer::MaxPool2d { window: w } => window(w),
        Layer::AvgPool2d {
            window: w,
            count_include_pad,
            sum,
        } => {
            if *sum {
                window(w)
            } else {
                format!("{}, count_include_pad {count_include_pad}", window(w))
            }
        }
        Layer::Relu | Layer::Flatten => String::new(),
    }
}
