//! `Backend::run_stream`, the batch stream `explain` and `bench` drive: every batch's output is
//! bit-identical to a plain run of that batch, in order (uneven batch sizes, an empty batch, a
//! batch larger than the plan, f32 and 8-bit samples, with and without targets); a sink that
//! stops ends the stream early; a bad batch ends it with an error naming its samples, after the
//! batches before it were handed over; the backend stays usable after either. For the GPU
//! backend, which keeps the next batch in flight while one is read back, and for the CPU engine
//! (the trait's default, one run per batch). The GPU splits only the last batch of a stream into
//! overlapping submissions, where the stream's size hint says it is the last. The GPU tests fail
//! rather than skip under `TAYLORMAP_REQUIRE_GPU=1`.

mod common;

use ndarray::{ArrayD, Axis, Slice};
use rand::rngs::StdRng;
use rand::Rng;

use common::{assert_same_output, random_cnn, rng};
use taylormap::explain::{select_backend, BackendChoice};
use taylormap::gpu::GpuBackend;
use taylormap::lrp::{Bounds, Composite, Method};
use taylormap::{Backend, BatchOutput, Error, Network, Samples, StreamBatch};

const BOUNDS: Bounds = Bounds {
    low: -1.0,
    high: 2.0,
};

/// Plan capacity of every backend here: the stream's batches are cut around it.
const CAPACITY: usize = 8;

/// A random CNN, its method, and 8-bit samples with the f32 values they stand for.
struct Case {
    net: Network,
    method: Method,
    bytes: ArrayD<u8>,
    lut: [f32; 256],
    x: ArrayD<f32>,
    classes: usize,
}

impl Case {
    fn new(rng: &mut StdRng, n: usize) -> Case {
        let net = random_cnn(rng, 1, 7, 9, false);
        let method = Composite::EpsilonGammaBox
            .resolve(&net, BOUNDS, &[])
            .unwrap();
        // signed values, both sides of the box's bounds' interior
        let lut: [f32; 256] = std::array::from_fn(|b| (b as f64 / 255.0 * 3.0 - 1.0) as f32);
        let bytes = ndarray::Array4::from_shape_fn((n, 1, 7, 9), |_| rng.random::<u8>()).into_dyn();
        let x = bytes.mapv(|b| lut[usize::from(b)]);
        let classes = net.num_outputs();
        Case {
            net,
            method,
            bytes,
            lut,
            x,
            classes,
        }
    }

    /// Samples `start..end`, as f32 values or as bytes.
    fn samples(&self, start: usize, end: usize, as_bytes: bool) -> Samples<'_> {
        let part = Slice::from(start..end);
        if as_bytes {
            Samples::U8(self.bytes.slice_axis(Axis(0), part), &self.lut)
        } else {
            Samples::F32(self.x.slice_axis(Axis(0), part))
        }
    }
}

/// A backend of each kind for the case: the GPU backend where there is an adapter, and the CPU
/// engine.
fn backends(case: &Case) -> Vec<(&'static str, Box<dyn Backend>)> {
    let mut all: Vec<(&'static str, Box<dyn Backend>)> = vec![];
    if let Some(ctx) = common::gpu::context() {
        let gpu = GpuBackend::new(&ctx, &case.net, &case.method, CAPACITY).unwrap();
        assert_eq!(gpu.batch_size(), CAPACITY);
        all.push(("gpu", Box::new(gpu)));
    }
    let (cpu, _) =
        select_backend(BackendChoice::Cpu, &case.net, &case.method, CAPACITY, None).unwrap();
    all.push(("cpu", cpu));
    all
}

/// A fresh backend of the same kind, for the plain runs.
fn fresh(kind: &str, case: &Case) -> Box<dyn Backend> {
    match kind {
        "gpu" => {
            let ctx = common::gpu::context().expect("a GPU backend was made before");
            Box::new(GpuBackend::new(&ctx, &case.net, &case.method, CAPACITY).unwrap())
        }
        _ => {
            select_backend(BackendChoice::Cpu, &case.net, &case.method, CAPACITY, None)
                .unwrap()
                .0
        }
    }
}

/// Streams `batches` (ranges of samples, as bytes or not, with targets or not) through
/// `backend`, the sink saying `go_on(k)` after the k-th output; returns the outputs and the
/// stream's result.
fn stream(
    backend: &mut dyn Backend,
    case: &Case,
    batches: &[(usize, usize, bool)],
    targets: &[Option<Vec<usize>>],
    go_on: impl Fn(usize) -> taylormap::Result<bool>,
) -> (Vec<BatchOutput<f32>>, taylormap::Result<()>) {
    let mut items = batches
        .iter()
        .zip(targets)
        .map(|(&(s, e, b), t)| StreamBatch {
            samples: case.samples(s, e, b),
            targets: t.as_deref(),
        });
    let mut outputs = vec![];
    let result = backend.run_stream(&mut items, &mut |out| {
        outputs.push(out);
        go_on(outputs.len())
    });
    (outputs, result)
}

#[test]
fn a_stream_hands_over_each_batch_what_a_plain_run_of_it_gives_in_order() {
    let mut rng = rng("stream_equals_runs");
    let case = Case::new(&mut rng, 37);
    // Uneven sizes: a full batch, a short one, an empty one, one larger than the plan (two
    // submissions), then full and partial ones; bytes and f32 values alternate.
    let batches = [
        (0, 8, false),
        (8, 11, true),
        (11, 11, false),
        (11, 24, true),
        (24, 32, false),
        (32, 37, true),
    ];
    let targets: Vec<Option<Vec<usize>>> = batches
        .iter()
        .enumerate()
        .map(|(k, &(s, e, _))| {
            (k % 2 == 1).then(|| (s..e).map(|_| rng.random_range(0..case.classes)).collect())
        })
        .collect();
    for (kind, mut backend) in backends(&case) {
        let (outputs, result) = stream(backend.as_mut(), &case, &batches, &targets, |_| Ok(true));
        result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(outputs.len(), batches.len(), "{kind}: one output per batch");
        let mut plain = fresh(kind, &case);
        for (k, ((&(s, e, b), t), got)) in batches.iter().zip(&targets).zip(&outputs).enumerate() {
            let want = plain
                .run_samples(case.samples(s, e, b), t.as_deref())
                .unwrap();
            assert_same_output(got, &want, &format!("{kind}: batch {k} (samples {s}..{e})"));
            if let Some(t) = t {
                assert_eq!(&got.targets, t, "{kind}: batch {k} explains its targets");
            }
        }
        // Streaming again on the same backend gives the same again.
        let (again, result) = stream(backend.as_mut(), &case, &batches, &targets, |_| Ok(true));
        result.unwrap();
        for (k, (a, b)) in again.iter().zip(&outputs).enumerate() {
            assert_same_output(a, b, &format!("{kind}: second stream, batch {k}"));
        }
    }
}

#[test]
fn a_sink_that_stops_or_fails_ends_the_stream_and_the_backend_stays_usable() {
    let mut rng = rng("stream_stops");
    let case = Case::new(&mut rng, 40);
    let batches: Vec<_> = (0..5).map(|k| (8 * k, 8 * k + 8, k % 2 == 0)).collect();
    let targets = vec![None; 5];
    for (kind, mut backend) in backends(&case) {
        // Stop after the second batch: no third output, no error.
        let (outputs, result) = stream(backend.as_mut(), &case, &batches, &targets, |k| Ok(k < 2));
        result.unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(outputs.len(), 2, "{kind}");
        // A sink error ends the stream with that error.
        let (outputs, result) = stream(backend.as_mut(), &case, &batches, &targets, |_| {
            Err(Error::usage("--sink", "refused"))
        });
        assert_eq!(outputs.len(), 1, "{kind}");
        match result {
            Err(Error::Usage { flag, .. }) => assert_eq!(flag, "--sink", "{kind}"),
            other => panic!("{kind}: expected the sink's error, got {other:?}"),
        }
        // The backend still explains, as a fresh one does: nothing of the abandoned batch in
        // flight is left over.
        let mut plain = fresh(kind, &case);
        for &(s, e, b) in &batches {
            let got = backend.run_samples(case.samples(s, e, b), None).unwrap();
            let want = plain.run_samples(case.samples(s, e, b), None).unwrap();
            assert_same_output(
                &got,
                &want,
                &format!("{kind}: after the stop, samples {s}..{e}"),
            );
        }
    }
}

#[test]
fn a_bad_batch_ends_the_stream_naming_its_samples_after_the_batches_before_it() {
    let mut rng = rng("stream_bad_batch");
    let mut case = Case::new(&mut rng, 32);
    let poisoned = rng.random_range(16..24);
    case.x
        .index_axis_mut(Axis(0), poisoned)
        .iter_mut()
        .for_each(|v| *v = f32::NAN);
    let batches: Vec<_> = (0..4).map(|k| (8 * k, 8 * k + 8, false)).collect();
    let mut targets = vec![None; 4];
    for (kind, mut backend) in backends(&case) {
        let (outputs, result) = stream(backend.as_mut(), &case, &batches, &targets, |_| Ok(true));
        match result {
            Err(Error::NonFinite { what }) => {
                let expected = format!(
                    "input sample {} of the batch of samples 16..24",
                    poisoned - 16
                );
                assert!(what.contains(&expected), "{kind}: {what}");
            }
            other => panic!("{kind}: expected a non-finite input error, got {other:?}"),
        }
        assert_eq!(outputs.len(), 2, "{kind}: the batches before the bad one");
        let mut plain = fresh(kind, &case);
        for (k, got) in outputs.iter().enumerate() {
            let want = plain
                .run_samples(case.samples(8 * k, 8 * k + 8, false), None)
                .unwrap();
            assert_same_output(got, &want, &format!("{kind}: batch {k} before the bad one"));
        }
        // Targets out of range in the last batch: a usage error, after three outputs.
        // (bytes: the poisoned values are in the f32 copy only)
        let batches: Vec<_> = [(0, 8), (8, 16), (24, 32), (24, 32)]
            .iter()
            .map(|&(s, e)| (s, e, true))
            .collect();
        targets[3] = Some(vec![case.classes; 8]);
        let (outputs, result) = stream(backend.as_mut(), &case, &batches, &targets, |_| Ok(true));
        assert!(
            matches!(result, Err(Error::Usage { .. })),
            "{kind}: {result:?}"
        );
        assert_eq!(outputs.len(), 3, "{kind}");
        targets[3] = None;
        // Still usable.
        let got = backend
            .run_samples(case.samples(24, 32, false), None)
            .unwrap();
        let want = plain
            .run_samples(case.samples(24, 32, false), None)
            .unwrap();
        assert_same_output(&got, &want, &format!("{kind}: after the error"));
    }
}

#[test]
fn the_gpu_splits_only_the_last_batch_of_a_stream_into_overlapping_submissions() {
    let Some(ctx) = common::gpu::context() else {
        return;
    };
    let mut rng = rng("stream_last_split");
    let case = Case::new(&mut rng, 1200);
    let mut backend = GpuBackend::new(&ctx, &case.net, &case.method, 600).unwrap();
    assert!(
        backend.enable_stage_timing().unwrap(),
        "llvmpipe has timestamps"
    );
    let batches = [(0, 600, true), (600, 1200, false)];
    let (outputs, result) = stream(&mut backend, &case, &batches, &[None, None], |_| Ok(true));
    result.unwrap();
    // The first batch as one submission; the last, known to be last from the iterator's size
    // hint, as two of 300 (a lone batch of at least 512 is split so).
    assert_eq!(backend.stage_times().unwrap().batches, 3);
    let mut plain = GpuBackend::new(&ctx, &case.net, &case.method, 600).unwrap();
    for (k, (&(s, e, b), got)) in batches.iter().zip(&outputs).enumerate() {
        let want = plain.run_samples(case.samples(s, e, b), None).unwrap();
        assert_same_output(got, &want, &format!("batch {k}"));
    }
    // A stream that cannot tell its last batch splits none.
    let before = backend.stage_times().unwrap().batches;
    let mut items = batches.iter().map(|&(s, e, b)| StreamBatch {
        samples: case.samples(s, e, b),
        targets: None,
    });
    let mut unhinted = std::iter::from_fn(|| items.next());
    backend
        .run_stream(&mut unhinted, &mut |_| Ok(true))
        .unwrap();
    assert_eq!(backend.stage_times().unwrap().batches - before, 2);
}
