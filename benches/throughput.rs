//! `cargo bench`: heatmaps per second of one explained batch, per backend and batch size, on the
//! bundled model and images under `deep-taylor-bounded`, with divan's statistics (median, spread).
//! `taylormap bench` is the end-user tool (JSON lines, per-stage GPU times, any model); this is
//! the developer's view of the same work, run as Rust benchmarks. The GPU rows need an adapter
//! (on a machine without a GPU they run on Mesa's llvmpipe, or are skipped with a message).

use std::sync::OnceLock;

use divan::counter::ItemsCount;
use divan::Bencher;
use ndarray::{ArrayD, Axis};
use taylormap::cpu::{FastBackend, ReferenceBackend};
use taylormap::explain::{asset_path, DEFAULT_INPUT, DEFAULT_MODEL};
use taylormap::gpu::{GpuBackend, GpuContext};
use taylormap::{Backend, Composite, Method, Network};

fn main() {
    divan::main();
}

/// The bundled network, its deep-taylor-bounded method and the first test images.
struct Fixture {
    net: Network,
    method: Method,
    x: ArrayD<f32>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let model = asset_path(DEFAULT_MODEL);
        let net = taylormap::model::onnx::load(&model).expect("the bundled model");
        let mut data =
            taylormap::data::load_for_model(&asset_path(DEFAULT_INPUT), &model, None, None)
                .expect("the bundled images");
        data.check_against(&net.input_shape)
            .expect("images that fit the model");
        data.limit(1024);
        let method = Composite::DeepTaylorBounded
            .resolve(&net, data.bounds, &[])
            .expect("a composite for the bundled model");
        Fixture {
            net,
            method,
            x: data.x,
        }
    })
}

/// Times `backend` on the first `batch` images.
fn explain(bencher: Bencher, backend: &mut dyn Backend, batch: usize) {
    let x = fixture().x.slice_axis(Axis(0), (0..batch).into());
    backend.run(x.view(), None).expect("warm-up");
    bencher
        .counter(ItemsCount::new(batch))
        .bench_local(|| backend.run(x.view(), None).expect("explained"));
}

/// The f32 CPU engine on every core.
#[divan::bench(args = [1, 64, 256, 1024])]
fn cpu_engine(bencher: Bencher, batch: usize) {
    let f = fixture();
    let mut backend = FastBackend::new(&f.net, &f.method).expect("a plan");
    explain(bencher, &mut backend, batch);
}

/// The f64 reference backend (the oracle, one thread).
#[divan::bench(args = [1, 64], sample_count = 20)]
fn cpu_reference(bencher: Bencher, batch: usize) {
    let f = fixture();
    let mut backend = ReferenceBackend::new(f.net.clone(), f.method.clone());
    explain(bencher, &mut backend, batch);
}

/// The GPU backend on the best adapter (software ones included).
#[divan::bench(args = [1, 64, 1024], sample_count = 5)]
fn gpu(bencher: Bencher, batch: usize) {
    static CONTEXT: OnceLock<Option<GpuContext>> = OnceLock::new();
    let ctx = CONTEXT.get_or_init(|| match GpuContext::new() {
        Ok(ctx) => Some(ctx),
        Err(e) => {
            eprintln!("no GPU benchmarks: {e}");
            None
        }
    });
    let Some(ctx) = ctx else { return };
    let f = fixture();
    let mut backend = GpuBackend::new(ctx, &f.net, &f.method, batch).expect("a GPU plan");
    explain(bencher, &mut backend, batch);
}
