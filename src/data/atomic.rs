//! Atomic file writes: a temporary file in the target's directory, written, fsynced and renamed
//! over the target, so readers see the old file or the complete new one, never a partial one.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;

use crate::{Error, Result};

/// A file written under a temporary name beside its target and renamed over it by
/// [`AtomicFile::commit`]; dropped uncommitted, the temporary file is removed, so the target is
/// the old file or the complete new one, never a partial one. For outputs written piece by piece.
///
/// The data reaches the disk before the rename (fsync). For a large file streamed piece by
/// piece, [`AtomicFile::sync_behind`] starts that writeback in the background while writing goes
/// on, and [`AtomicFile::sync`] can take the final fsync ahead of the commit (say while other
/// outputs are still being produced), so the commit itself is only the rename.
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<BufWriter<File>>,
    /// Everything written so far is on disk.
    synced: bool,
    /// Start a background fsync after this many bytes (`None`: no background syncs).
    sync_every: Option<u64>,
    /// Bytes written since the last background fsync started.
    unsynced: u64,
    /// The background fsync in flight, if any.
    syncing: Option<JoinHandle<std::io::Result<()>>>,
    /// Background fsyncs started (for tests).
    background_syncs: usize,
}

impl AtomicFile {
    /// Creates the temporary file (`.NAME.tmp.PID.K` beside `path`). The parent must exist.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = path.file_name().ok_or_else(|| {
            Error::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "expected a file path, got a path with no file name",
                ),
            )
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let tmp = dir.join(format!(
            ".{}.tmp.{}.{}",
            name.to_string_lossy(),
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(path, e))?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            tmp,
            file: Some(BufWriter::new(file)),
            synced: false,
            sync_every: None,
            unsynced: 0,
            syncing: None,
            background_syncs: 0,
        })
    }

    /// From now on, whenever `bytes` more were written, flushes and starts an fsync of what was
    /// written on a background thread (unless the previous one is still running), so that the
    /// disk writes while the caller goes on and the final fsync has little left to do. Errors
    /// of a background fsync surface at the next [`AtomicFile::sync`] or the commit.
    pub fn sync_behind(&mut self, bytes: u64) {
        self.sync_every = Some(bytes.max(1));
    }

    /// Appends `bytes`.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("not yet committed");
        file.write_all(bytes)
            .map_err(|e| Error::io(&self.path, e))?;
        self.synced = false;
        self.unsynced += bytes.len() as u64;
        match self.sync_every {
            Some(every) if self.unsynced >= every => self.start_background_sync(),
            _ => Ok(()),
        }
    }

    /// Starts a background fsync of what was written, unless one is still running.
    fn start_background_sync(&mut self) -> Result<()> {
        if let Some(running) = self.syncing.take() {
            if !running.is_finished() {
                self.syncing = Some(running);
                return Ok(());
            }
            Self::joined(running).map_err(|e| Error::io(&self.path, e))?;
        }
        let file = self.file.as_mut().expect("not yet committed");
        let handle = file
            .flush()
            .and_then(|()| file.get_ref().try_clone())
            .map_err(|e| Error::io(&self.path, e))?;
        self.syncing = Some(std::thread::spawn(move || handle.sync_data()));
        self.unsynced = 0;
        self.background_syncs += 1;
        Ok(())
    }

    /// A file holding `bytes`, on disk under its temporary name: its [`AtomicFile::commit`] only
    /// renames.
    pub fn written(path: &Path, bytes: &[u8]) -> Result<AtomicFile> {
        let mut file = AtomicFile::create(path)?;
        file.write_all(bytes)?;
        file.sync()?;
        Ok(file)
    }

    /// How many background fsyncs [`AtomicFile::sync_behind`] started so far.
    pub fn background_syncs(&self) -> usize {
        self.background_syncs
    }

    /// The result of a finished or running background fsync, once it has ended.
    fn joined(sync: JoinHandle<std::io::Result<()>>) -> std::io::Result<()> {
        sync.join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Flushes and fsyncs what was written so far (after any background fsync has ended), so
    /// that a [`AtomicFile::commit`] with nothing written in between only renames.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(running) = self.syncing.take() {
            Self::joined(running).map_err(|e| Error::io(&self.path, e))?;
        }
        if self.synced {
            return Ok(());
        }
        let file = self.file.as_mut().expect("not yet committed");
        file.flush()
            .and_then(|()| file.get_ref().sync_all())
            .map_err(|e| Error::io(&self.path, e))?;
        self.synced = true;
        self.unsynced = 0;
        Ok(())
    }

    /// Flushes, fsyncs (unless [`AtomicFile::sync`] already did and nothing was written since)
    /// and renames the file over its target.
    pub fn commit(mut self) -> Result<()> {
        let synced = self.sync();
        let file = self.file.take().expect("committed once");
        drop(file);
        let done = synced
            .and_then(|()| fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e)));
        if let Err(e) = done {
            let _ = fs::remove_file(&self.tmp);
            return Err(e);
        }
        // Make the rename itself durable; directories cannot be opened for syncing everywhere,
        // so this is best effort.
        if let Some(d) = self.path.parent().and_then(|d| File::open(d).ok()) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Writes `bytes` to `path` atomically, replacing any existing file.
///
/// The temporary file (`.NAME.tmp.PID.K` beside the target) is removed again if anything fails.
/// The parent directory must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    AtomicFile::written(path, bytes)?.commit()
}
