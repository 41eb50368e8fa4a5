//! The GPU backend: the streaming orchestrator over one batch plan. Inputs of any length go
//! through in fixed-size batches (the last one partial), reusing the plan's buffers, so device
//! memory stays flat however many samples stream through; results land in input order.

use std::collections::VecDeque;
use std::time::Instant;

use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::context::GpuContext;
use super::plan::{footprint, BatchInput, BatchResult, Footprint, Pending, Plan, StageTotals};
use crate::{Backend, BatchOutput, Error, Method, Network, Result, Samples, StreamBatch};

/// Batches of at least twice this many samples run as several submissions (see `run`), none
/// smaller than this.
const OVERLAP_MIN: usize = 256;

/// Submissions a lone batch (a `run`) that fits the plan is split into by default; batches of
/// a stream overlap with each other instead, one submission each.
const DEFAULT_SUBMISSIONS: usize = 2;

/// The GPU explainer for one (network, method), planned for one batch size.
pub struct GpuBackend {
    ctx: GpuContext,
    plan: Plan,
    host: HostTimes,
    /// Submissions a batch that fits the plan is split into, when set (see `set_submissions`).
    submissions: Option<usize>,
    input_shape: Vec<usize>,
    classes: usize,
    notes: Vec<String>,
    /// Set while [`Backend::logits`] runs: submissions encode the forward pass (and the seed)
    /// only, and read back no relevance.
    forward_only: bool,
}

impl std::fmt::Debug for GpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBackend")
            .field("adapter", &self.ctx.summary())
            .field("batch_size", &self.plan.capacity())
            .finish()
    }
}

impl GpuBackend {
    /// Plans `net` with `method` for batches of `batch_size` samples, clamped to what the
    /// adapter's limits allow (see [`GpuBackend::notes`]).
    pub fn new(
        ctx: &GpuContext,
        net: &Network,
        method: &Method,
        batch_size: usize,
    ) -> Result<GpuBackend> {
        if batch_size == 0 {
            return Err(Error::usage("--batch-size", "must be at least 1, got 0"));
        }
        let fp = footprint(net, method)?;
        let (batch, notes) = clamp_batch(&fp, ctx.limits(), batch_size)?;
        let plan = Plan::new(ctx, net, method, batch)?;
        Ok(GpuBackend {
            host: HostTimes::default(),
            submissions: None,
            ctx: ctx.clone(),
            plan,
            input_shape: net.input_shape.clone(),
            classes: net.num_outputs(),
            notes,
            forward_only: false,
        })
    }

    /// The batch size in use, after clamping to the adapter's limits.
    pub fn batch_size(&self) -> usize {
        self.plan.capacity()
    }

    /// What the backend adjusted, for the user (e.g. the batch size clamped to the limits).
    pub fn notes(&self) -> Vec<String> {
        self.notes.clone()
    }

    /// The context the backend runs on.
    pub fn context(&self) -> &GpuContext {
        &self.ctx
    }

    /// Times the GPU stages of every submission from now on (for `bench`; see
    /// [`GpuBackend::stage_times`]). Returns false, changing nothing, when the adapter has no
    /// timestamp queries. Results are unchanged; the input then goes up through a mapped
    /// buffer per submission instead of a queue write.
    pub fn enable_stage_timing(&mut self) -> Result<bool> {
        self.plan.enable_timing(false)
    }

    /// Times every dispatch of every submission from now on, as well as the stages (for `bench
    /// --kernel-times`; see [`GpuBackend::kernel_times`]): each dispatch then runs in its own
    /// compute pass, whose boundaries add some GPU time. Returns false, changing nothing, when
    /// the adapter has no timestamp queries.
    pub fn enable_kernel_timing(&mut self) -> Result<bool> {
        self.plan.enable_timing(true)
    }

    /// GPU time per dispatch summed over the submissions since
    /// [`GpuBackend::enable_kernel_timing`] (None before, or without timestamp queries).
    pub fn kernel_times(&self) -> Option<KernelTimes> {
        self.plan.kernel_totals().map(|t| KernelTimes {
            kernels: t
                .kernels
                .into_iter()
                .map(|(k, ns)| (k, ns * 1e-9))
                .collect(),
            batches: t.batches,
        })
    }

    /// Splits a batch of at least 512 samples that fits the plan into up to `k` submissions of
    /// at least 256 samples (1 = one submission), so that the upload of one overlaps the GPU
    /// work of another and the read-back of each the GPU work of the next. By default a lone
    /// batch (`run`) goes as 2 and the batches of a stream (`run_stream`, which overlap with
    /// each other) as 1 each. The results are the same; only the overlap changes (for tuning,
    /// see `bench --submissions`).
    pub fn set_submissions(&mut self, k: usize) {
        self.submissions = Some(k.max(1));
    }

    /// Host time per step of `run`, summed over every run so far.
    pub fn host_times(&self) -> HostTimes {
        self.host
    }

    /// Waits for a submitted batch and fills `out`, accounting the host time.
    fn finish(&mut self, pending: Pending, out: BatchResult<'_>) -> Result<()> {
        let start = Instant::now();
        let waited = self.plan.finish(pending, out)?;
        self.host.wait_s += waited;
        self.host.copy_s += start.elapsed().as_secs_f64() - waited;
        Ok(())
    }

    /// GPU time per stage summed over the submissions since [`GpuBackend::enable_stage_timing`]
    /// (None before, or without timestamp queries).
    pub fn stage_times(&self) -> Option<StageTimes> {
        self.plan.stage_totals().map(StageTimes::from)
    }
}

/// Host (CPU) time per step of [`Backend::run`], summed over every run so far, in seconds: where
/// the wall time of a batch goes besides the GPU stages (see [`GpuBackend::host_times`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct HostTimes {
    /// Checking the input's shape and values and the targets.
    pub check_s: f64,
    /// Writing inputs and uniforms to the queue, encoding and submitting the passes.
    pub submit_s: f64,
    /// Waiting for the GPU to finish a submission (the host idles).
    pub wait_s: f64,
    /// Copying relevance, logits and targets out of the mapped staging buffer.
    pub copy_s: f64,
    /// Calls of `run`.
    pub runs: usize,
}

/// GPU time per stage, summed over `batches` submissions, in seconds (from timestamp queries;
/// see [`GpuBackend::stage_times`]). A `run` of at least 512 samples that fits one batch goes
/// as two submissions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StageTimes {
    /// Copying the inputs to the device.
    pub upload_s: f64,
    /// The forward pass, with the choice of target and the seed.
    pub forward_s: f64,
    /// The relevance (backward) pass.
    pub relevance_s: f64,
    /// Copying relevance, logits and targets to the host-visible staging buffer.
    pub readback_s: f64,
    /// Submissions timed.
    pub batches: usize,
}

impl StageTimes {
    /// The sum of the four stages.
    pub fn total_s(&self) -> f64 {
        self.upload_s + self.forward_s + self.relevance_s + self.readback_s
    }
}

impl From<StageTotals> for StageTimes {
    fn from(t: StageTotals) -> StageTimes {
        StageTimes {
            upload_s: t.ns[0] * 1e-9,
            forward_s: t.ns[1] * 1e-9,
            relevance_s: t.ns[2] * 1e-9,
            readback_s: t.ns[3] * 1e-9,
            batches: t.batches,
        }
    }
}

/// GPU time per dispatch, summed over `batches` submissions, in seconds (from timestamp
/// queries; see [`GpuBackend::kernel_times`]): the byte unpack first (idle for f32 inputs), then
/// every dispatch of the plan in order, each named by its layer and entry point (e.g.
/// `layer.0.conv1 c_partial`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelTimes {
    pub kernels: Vec<(String, f64)>,
    /// Submissions timed.
    pub batches: usize,
}

/// The largest batch size up to `requested` whose buffers fit the adapter's limits, with a note
/// for each clamp.
fn clamp_batch(
    fp: &Footprint,
    limits: &wgpu::Limits,
    requested: usize,
) -> Result<(usize, Vec<String>)> {
    let max_binding = limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size);
    let mut notes = vec![];
    let mut batch = requested as u64;
    let (what, per_sample) = fp
        .bindings()
        .into_iter()
        .max_by_key(|(_, bytes)| *bytes)
        .unwrap_or(("activations", 4));
    let fits = max_binding / per_sample.max(1);
    if fits == 0 {
        return Err(Error::Gpu(format!(
            "one sample needs {per_sample} bytes of {what}, more than the adapter's \
             {max_binding}-byte storage binding limit; use --backend cpu"
        )));
    }
    if fits < batch {
        notes.push(format!(
            "batch size clamped from {batch} to {fits} (max storage binding {max_binding} bytes; \
             the {what} buffer needs {per_sample} bytes per sample)"
        ));
        batch = fits;
    }
    let fits = (limits.max_buffer_size / fp.staging.max(1)).max(1);
    if fits < batch {
        notes.push(format!(
            "batch size clamped from {batch} to {fits} (max buffer size {} bytes; the staging \
             buffer needs {} bytes per sample)",
            limits.max_buffer_size, fp.staging
        ));
        batch = fits;
    }
    // The kernels index with u32: keep every per-batch count below 2^31.
    let values = fp.activation.max(fp.partial * 4).max(fp.s).max(1);
    let fits = ((i32::MAX as u64) / values).max(1);
    if fits < batch {
        notes.push(format!(
            "batch size clamped from {batch} to {fits} (32-bit indices in the kernels)"
        ));
        batch = fits;
    }
    Ok((batch as usize, notes))
}

impl Backend for GpuBackend {
    fn kind(&self) -> &'static str {
        "gpu"
    }

    fn adapter(&self) -> String {
        self.ctx.summary().to_string()
    }

    fn run(
        &mut self,
        x: ArrayViewD<'_, f32>,
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput<f32>> {
        self.run_input(Samples::F32(x), targets)
    }

    /// The forward dispatches alone (and the seed), without the relevance pass and its
    /// read-back.
    fn logits(&mut self, x: ArrayViewD<'_, f32>) -> Result<Array2<f64>> {
        self.forward_only = true;
        let out = self.run_input(Samples::F32(x), None);
        self.forward_only = false;
        Ok(out?.logits)
    }

    fn prefers_bytes(&self) -> bool {
        true
    }

    /// Uploads the bytes (one per value instead of four) and expands them on the device.
    fn run_pixels(
        &mut self,
        bytes: ArrayViewD<'_, u8>,
        lut: &[f32; 256],
        targets: Option<&[usize]>,
    ) -> Result<BatchOutput<f32>> {
        self.run_input(Samples::U8(bytes, lut), targets)
    }

    /// Keeps the next batch in flight while one is read back and handed over: the GPU does
    /// not idle between batches as long as the host's part (read-back copy, `sink`, queueing the
    /// next) takes less time than the GPU's. Each batch is one submission per plan capacity,
    /// but for the last one, where the iterator's size hint says it is the last, which is split
    /// like a lone batch.
    fn run_stream<'a>(
        &mut self,
        batches: &mut dyn Iterator<Item = StreamBatch<'a>>,
        sink: &mut dyn FnMut(BatchOutput<f32>) -> Result<bool>,
    ) -> Result<()> {
        self.stream(batches, sink, false, true)
    }
}

/// Samples `start..start + m` (of `per` values each) of a batch as one submission's input: in
/// place when the batch is contiguous, else copied into `f` or `u`.
fn submission_input<'b>(
    samples: &'b Samples<'_>,
    start: usize,
    m: usize,
    per: usize,
    f: &'b mut Vec<f32>,
    u: &'b mut Vec<u8>,
) -> BatchInput<'b> {
    let range = start * per..(start + m) * per;
    let part = Slice::from(start..start + m);
    match samples {
        Samples::F32(x) => BatchInput::F32(match x.as_slice() {
            Some(flat) => &flat[range],
            None => {
                f.clear();
                f.extend(x.slice_axis(Axis(0), part).iter());
                &f[..]
            }
        }),
        Samples::U8(b, lut) => BatchInput::U8(
            match b.as_slice() {
                Some(flat) => &flat[range],
                None => {
                    u.clear();
                    u.extend(b.slice_axis(Axis(0), part).iter());
                    &u[..]
                }
            },
            lut,
        ),
    }
}

/// The batch of a stream whose submissions are being queued.
struct Queuing<'a> {
    samples: Samples<'a>,
    targets: Option<Vec<u32>>,
    n: usize,
    /// Samples queued so far.
    queued: usize,
    /// Samples per submission.
    chunk: usize,
}

/// A batch of a stream being read back: its outputs so far.
struct Collecting {
    n: usize,
    /// Samples read back so far.
    done: usize,
    relevance: Vec<f32>,
    logits: Vec<f64>,
    chosen: Vec<u32>,
}

impl Collecting {
    fn new(n: usize, input_len: usize, classes: usize) -> Collecting {
        Collecting {
            n,
            done: 0,
            // filled submission by submission, straight from the mapped staging buffers
            relevance: Vec::with_capacity(n * input_len),
            logits: vec![0f64; n * classes],
            chosen: vec![0u32; n],
        }
    }

    /// Where the next `m` samples read back go.
    fn next(&mut self, m: usize, classes: usize) -> BatchResult<'_> {
        let s = self.done;
        self.done += m;
        BatchResult {
            relevance: &mut self.relevance,
            logits: &mut self.logits[s * classes..(s + m) * classes],
            targets: &mut self.chosen[s..s + m],
        }
    }

    fn into_output(self, input_shape: &[usize], classes: usize) -> Result<BatchOutput<f32>> {
        let mut rshape = vec![self.n];
        rshape.extend(input_shape);
        let relevance = ArrayD::from_shape_vec(IxDyn(&rshape), self.relevance)
            .map_err(|e| Error::Gpu(format!("relevance shape: {e}")))?;
        let logits = Array2::from_shape_vec((self.n, classes), self.logits)
            .map_err(|e| Error::Gpu(format!("logits shape: {e}")))?;
        Ok(BatchOutput {
            relevance,
            logits,
            targets: self.chosen.into_iter().map(|t| t as usize).collect(),
        })
    }
}

impl GpuBackend {
    /// Checks a batch (shape, values, targets) and plans its submissions: one per `capacity`
    /// samples, or a batch of at least 512 samples that fits the plan in up to `submissions`
    /// parts of at least 256 (by default 2 for a `lone` batch, so that it overlaps with itself,
    /// and 1 in a stream).
    fn queue_batch<'a>(&mut self, batch: StreamBatch<'a>, lone: bool) -> Result<Queuing<'a>> {
        let checking = Instant::now();
        self.host.runs += 1;
        let n = crate::lrp::check_batch(batch.samples.shape(), &self.input_shape)?;
        match &batch.samples {
            Samples::F32(v) => crate::lrp::check_finite(v.view())?,
            Samples::U8(_, lut) => {
                if let Some(b) = lut.iter().position(|v| !v.is_finite()) {
                    return Err(Error::NonFinite {
                        what: format!("the input value of byte {b} (8-bit input)"),
                    });
                }
            }
        }
        if let Some(t) = batch.targets {
            crate::lrp::check_targets(t, n, self.classes)?;
        }
        self.host.check_s += checking.elapsed().as_secs_f64();
        let targets = batch.targets.map(|t| {
            if self.classes == 1 {
                vec![0; n]
            } else {
                t.iter().map(|&c| c as u32).collect()
            }
        });
        let capacity = self.plan.capacity();
        let parts = (self.submissions).unwrap_or(if lone { DEFAULT_SUBMISSIONS } else { 1 });
        let chunk = if n <= capacity && n >= 2 * OVERLAP_MIN && parts > 1 {
            n.div_ceil(parts).max(OVERLAP_MIN)
        } else {
            capacity
        };
        Ok(Queuing {
            samples: batch.samples,
            targets,
            n,
            queued: 0,
            chunk,
        })
    }

    /// The streaming loop behind [`Backend::run`] and [`Backend::run_stream`]: submissions go
    /// to the GPU in order, alternating between the plan's two staging slots, and each is read
    /// back only once the next one is queued, so the GPU runs one while the host reads back the
    /// previous one, hands its batch over and queues the next. `lone`: see `queue_batch`;
    /// `label`: errors about an input sample name the stream's samples of its batch.
    fn stream<'a>(
        &mut self,
        batches: &mut dyn Iterator<Item = StreamBatch<'a>>,
        sink: &mut dyn FnMut(BatchOutput<f32>) -> Result<bool>,
        lone: bool,
        label: bool,
    ) -> Result<()> {
        let mut pending: Option<Pending> = None;
        let result = self.stream_into(batches, sink, lone, label, &mut pending);
        if let Some(p) = pending {
            // an error or an early stop left a submission in flight
            self.plan.abandon(p);
        }
        result
    }

    fn stream_into<'a>(
        &mut self,
        batches: &mut dyn Iterator<Item = StreamBatch<'a>>,
        sink: &mut dyn FnMut(BatchOutput<f32>) -> Result<bool>,
        lone: bool,
        label: bool,
        pending: &mut Option<Pending>,
    ) -> Result<()> {
        let input_len: usize = self.input_shape.iter().product();
        let classes = self.classes;
        // Batches pulled but not handed over yet, oldest first: at most the one being read
        // back and the one being queued (and empty ones behind them).
        let mut collecting: VecDeque<Collecting> = VecDeque::new();
        let mut queuing: Option<Queuing<'a>> = None;
        let (mut buf_f32, mut buf_u8) = (Vec::new(), Vec::new());
        let (mut pulled, mut slot) = (0, 0);
        // A batch that failed its checks: the stream ends with its error once the batches
        // before it are handed over.
        let mut failed = None;
        loop {
            // The next submission: samples left in the batch being queued, or in the next one.
            while failed.is_none() && queuing.as_ref().is_none_or(|q| q.queued == q.n) {
                queuing = None;
                let Some(batch) = batches.next() else {
                    break;
                };
                let n = batch.samples.len();
                // The last batch of a stream (where the stream says so) overlaps with itself, as
                // a lone one does: the read-back of its first part with the GPU work of the rest.
                let last = batches.size_hint().1 == Some(0);
                match self.queue_batch(batch, lone || last) {
                    Ok(q) => {
                        pulled += q.n;
                        collecting.push_back(Collecting::new(q.n, input_len, classes));
                        queuing = Some(q);
                    }
                    Err(e) if label => failed = Some(crate::lrp::in_batch(e, pulled, pulled + n)),
                    Err(e) => failed = Some(e),
                }
            }
            let submitted = match &mut queuing {
                Some(q) => {
                    let m = q.chunk.min(q.n - q.queued);
                    let input = submission_input(
                        &q.samples,
                        q.queued,
                        m,
                        input_len,
                        &mut buf_f32,
                        &mut buf_u8,
                    );
                    let targets = q.targets.as_ref().map(|t| &t[q.queued..q.queued + m]);
                    let submitting = Instant::now();
                    let p = self
                        .plan
                        .submit(input, m, targets, slot, self.forward_only)?;
                    self.host.submit_s += submitting.elapsed().as_secs_f64();
                    q.queued += m;
                    slot ^= 1;
                    Some(p)
                }
                None => None,
            };
            // Read back the previous submission while the GPU runs this one.
            let previous = std::mem::replace(pending, submitted);
            if let Some(p) = previous {
                let m = p.len();
                let oldest = collecting
                    .iter_mut()
                    .find(|c| c.done < c.n)
                    .expect("a pending submission belongs to a batch being read back");
                self.finish(p, oldest.next(m, classes))?;
            }
            // Hand over every batch that is complete, in order.
            while collecting.front().is_some_and(|c| c.done == c.n) {
                let done = collecting.pop_front().expect("checked");
                if !sink(done.into_output(&self.input_shape, classes)?)? {
                    return Ok(());
                }
            }
            if pending.is_none() {
                return failed.map_or(Ok(()), Err);
            }
        }
    }

    /// One batch, alone (split into submissions that overlap each other; see `queue_batch`).
    fn run_input<'a>(
        &mut self,
        samples: Samples<'a>,
        targets: Option<&'a [usize]>,
    ) -> Result<BatchOutput<f32>> {
        let mut out = None;
        self.stream(
            &mut std::iter::once(StreamBatch { samples, targets }),
            &mut |o| {
                out = Some(o);
                Ok(true)
            },
            true,
            false,
        )?;
        Ok(out.expect("a stream of one batch hands over one output"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(binding: u64, buffer: u64) -> wgpu::Limits {
        wgpu::Limits {
            max_storage_buffer_binding_size: binding,
            max_buffer_size: buffer,
            ..wgpu::Limits::default()
        }
    }

    #[test]
    fn batch_size_is_clamped_to_the_largest_binding() {
        let fp = Footprint {
            activation: 1000,
            s: 500,
            partial: 300,
            argmax: 0,
            staging: 40,
        };
        // partial: 300 vec4 = 4800 bytes per sample is the largest binding.
        let (b, notes) = clamp_batch(&fp, &limits(48_000, 1 << 30), 64).unwrap();
        assert_eq!(b, 10);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("from 64 to 10"), "{}", notes[0]);
        assert!(notes[0].contains("48000"), "{}", notes[0]);
        // Fits: no clamp, no note.
        let (b, notes) = clamp_batch(&fp, &limits(1 << 30, 1 << 30), 64).unwrap();
        assert_eq!((b, notes.len()), (64, 0));
        // The buffer size limit binds too.
        let (b, _) = clamp_batch(&fp, &limits(1 << 30, 9_600), 64).unwrap();
        assert_eq!(b, 2);
        // Not even one sample fits.
        assert!(matches!(
            clamp_batch(&fp, &limits(4000, 1 << 30), 8),
            Err(Error::Gpu(_))
        ));
    }
}
