//! Models exported by PyTorch itself (both the classic TorchScript exporter and the dynamo
//! exporter; see tests/fixtures/make_pytorch_fixtures.py) load and reproduce PyTorch's logits.

use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/pytorch")
        .join(name)
}

#[test]
fn pytorch_exports_load_and_reproduce_pytorch_logits() {
    for model in ["mlp", "cnn", "matmul", "gap"] {
        for exporter in ["classic", "dynamo"] {
            let name = format!("{model}_{exporter}");
            let net = taylormap::model::onnx::load(&fixture(&format!("{name}.onnx")))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut x =
                taylormap::data::load(&fixture(&format!("{name}.x.npy")), None, None).unwrap();
            let want =
                taylormap::data::load(&fixture(&format!("{name}.logits.npy")), None, None).unwrap();
            x.check_against(&net.input_shape)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let got = taylormap::cpu::logits(&net, x.x.mapv(f64::from).view()).unwrap();
            assert_eq!(got.len(), want.x.len(), "{name}");
            let scale = want.x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
            for (g, w) in got.iter().zip(want.x.iter()) {
                assert!(
                    (g - *w as f64).abs() <= 1e-5 * scale.max(1.0),
                    "{name}: logits differ: {g} vs {w}"
                );
            }
        }
    }
}
