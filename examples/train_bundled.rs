//! Trains the bundled model (assets/models/mnist-cnn.onnx, see assets/README.md) with the
//! library's trainer, for use until `taylormap train` is wired:
//! `cargo run --example train_bundled -- --data DIR --out M.onnx [--arch A] [--epochs N]
//! [--seed S] [--nonpositive-bias] [--batch-size B] [--learning-rate L] [--lr-decay D]
//! [--hidden H] [--limit N]`. DIR holds the four gzipped MNIST IDX files.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use taylormap::data;
use taylormap::model::onnx;
use taylormap::train::{self, Arch, Progress, TrainConfig};

fn main() -> Result<()> {
    let mut cfg = TrainConfig::new(Arch::MnistCnn);
    let mut dir: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut limit = usize::MAX;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--data" => dir = Some(value()?.into()),
            "--out" => out = Some(value()?.into()),
            "--arch" => cfg.arch = value()?.parse()?,
            "--epochs" => cfg.epochs = value()?.parse()?,
            "--seed" => cfg.seed = value()?.parse()?,
            "--batch-size" => cfg.batch_size = value()?.parse()?,
            "--learning-rate" => cfg.learning_rate = value()?.parse()?,
            "--lr-decay" => cfg.lr_decay = value()?.parse()?,
            "--hidden" => cfg.hidden = Some(value()?.parse()?),
            "--limit" => limit = value()?.parse()?,
            "--nonpositive-bias" => cfg.nonpositive_bias = true,
            _ => bail!("unknown argument {flag}"),
        }
    }
    let dir = dir.context("--data DIR is required")?;
    let out = out.context("--out M.onnx is required")?;
    let mut trainset = data::load(&dir.join("train-images.idx3-ubyte.gz"), None, None)?;
    let testset = data::load(&dir.join("t10k-images.idx3-ubyte.gz"), None, None)?;
    trainset.limit(limit);
    let labels = trainset.labels.clone().context("no training labels")?;
    let test_labels = testset.labels.clone().context("no test labels")?;

    let start = Instant::now();
    let (net, reports) = train::train(
        &cfg,
        trainset.x.view(),
        &labels,
        Some((testset.x.view(), &test_labels)),
        &mut |p| {
            match p {
            Progress::Start {
                epochs,
                batches_per_epoch,
                samples,
                parameters,
            } => eprintln!(
                "{}: {parameters} parameters, {samples} samples, {epochs} epochs of {batches_per_epoch} batches",
                cfg.arch
            ),
            Progress::Epoch(r) => eprintln!(
                "epoch {}: loss {:.4}, accuracy {:.4}, test accuracy {:.4}, {:.1} s",
                r.epoch,
                r.loss,
                r.accuracy,
                r.test_accuracy.unwrap_or(f64::NAN),
                r.seconds
            ),
            _ => {}
        }
        },
    )?;
    let seconds = start.elapsed().as_secs_f64();
    onnx::save(&net, &out)?;
    let reloaded = onnx::load(&out)?;
    let mut check = testset;
    check.check_against(&reloaded.input_shape)?;
    let accuracy = train::accuracy(&reloaded, check.x.view(), &test_labels)?;
    println!(
        "{}: wrote {} ({} parameters); {} epochs in {seconds:.0} s; test accuracy {:.2}% \
         ({} of {}, measured on the written file)",
        cfg.arch,
        out.display(),
        net.param_count(),
        reports.len(),
        100.0 * accuracy,
        (accuracy * test_labels.len() as f64).round(),
        test_labels.len()
    );
    Ok(())
}
