//! Container log rotation, as kubelet's `ContainerLogManager`: every monitor interval the
//! running containers' CRI log files above `--container-log-max-size` are renamed to
//! `<log>.<YYYYMMDD-HHMMSS>` and the runtime is asked to reopen them (`ReopenContainerLog`);
//! the older rotated files are gzipped and at most `--container-log-max-files` files are kept.
//!
//! One rotation of a log (kubelet's order, so that nothing a reader or the runtime still uses
//! goes away):
//!
//! 1. leftovers of an earlier, interrupted rotation are removed: `*.tmp` files, and an
//!    uncompressed file whose `.gz` exists;
//! 2. the oldest rotated files are removed until `max_files - 2` are left (the current log and
//!    the one rotated now make `max_files`);
//! 3. each rotated file left that is not compressed yet becomes `<f>.gz` (written as
//!    `<f>.tmp`, then renamed; the original is removed after);
//! 4. the current log is renamed to `<log>.<YYYYMMDD-HHMMSS>` (local time, as kubelet) and the
//!    runtime reopens the log path: the runtime keeps writing into the renamed file until it
//!    reopens, so no line is lost. When the reopen fails the file is renamed back and the log is
//!    rotated on a later round.
//!
//! A running container whose log file is missing gets a `ReopenContainerLog` too. The newest
//! rotated file stays uncompressed until the next rotation (the runtime may still be writing
//! its last lines to it).
//!
//! ```no_run
//! # async fn demo(runtime: std::sync::Arc<dyn node_core::RuntimeBackend>) -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use node_kubelet::node::logrotate::{ContainerLogConfig, ContainerLogManager};
//!
//! let manager = Arc::new(ContainerLogManager::new(ContainerLogConfig::default(), runtime)?);
//! let token = node_kubelet::CancellationToken::new();
//! tokio::spawn(manager.run(token.clone()));
//! # Ok(()) }
//! ```

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use node_core::{RuntimeBackend, RuntimeError, cri};
use tokio_util::sync::CancellationToken;

/// The suffix of a compressed rotated log.
pub const COMPRESS_SUFFIX: &str = ".gz";
/// The suffix of a file being written (a compression under way).
pub const TMP_SUFFIX: &str = ".tmp";

/// How container logs are rotated (kubelet's `--container-log-*` flags and their defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLogConfig {
    /// The size in bytes at which a log is rotated (`--container-log-max-size`, `10Mi`); a
    /// negative size turns rotation off, as in kubelet.
    pub max_size: i64,
    /// The most log files a container keeps, the current one included
    /// (`--container-log-max-files`, 5); at least 2.
    pub max_files: usize,
    /// How many containers' logs are rotated at once (`--container-log-max-workers`, 1).
    pub max_workers: usize,
    /// How often the logs are looked at (`--container-log-monitor-interval`, 10 s).
    pub monitor_interval: Duration,
}

impl Default for ContainerLogConfig {
    fn default() -> Self {
        Self {
            max_size: 10 << 20,
            max_files: 5,
            max_workers: 1,
            monitor_interval: Duration::from_secs(10),
        }
    }
}

impl ContainerLogConfig {
    /// Checks the values as kubelet does: at least 2 files, at least 1 worker, an interval.
    pub fn validate(&self) -> Result<(), LogRotateError> {
        if self.max_files < 2 {
            return Err(LogRotateError::InvalidMaxFiles(self.max_files));
        }
        if self.max_workers == 0 {
            return Err(LogRotateError::InvalidMaxWorkers);
        }
        if self.monitor_interval.is_zero() {
            return Err(LogRotateError::InvalidMonitorInterval);
        }
        Ok(())
    }

    /// Whether logs are rotated at all (a non-negative `max_size`).
    pub fn rotates(&self) -> bool {
        self.max_size >= 0
    }
}

/// Log rotation failed, or its configuration is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogRotateError {
    /// `max_files` below 2: the current log and the one being rotated need two.
    #[error("invalid container log max files {0}: must be at least 2")]
    InvalidMaxFiles(usize),
    /// `max_workers` of 0.
    #[error("invalid container log max workers 0: must be at least 1")]
    InvalidMaxWorkers,
    /// A monitor interval of zero.
    #[error("invalid container log monitor interval 0s: must be positive")]
    InvalidMonitorInterval,
    /// A runtime call failed.
    #[error("{call} {id}: {source}")]
    Runtime {
        /// The CRI call.
        call: &'static str,
        /// The container (empty for a list).
        id: String,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// The runtime did not reopen the log: the rotated file was renamed back, nothing is lost.
    #[error("reopen the log of container {id} ({path}): {source}; the log was renamed back")]
    Reopen {
        /// The container.
        id: String,
        /// Its log file.
        path: PathBuf,
        /// The runtime's error.
        #[source]
        source: RuntimeError,
    },
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done (`remove`, `compress`, `rename`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LogRotateError {
    let path = path.to_path_buf();
    move |source| LogRotateError::Io { what, path, source }
}

/// What one look at a container's log did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RotateOutcome {
    /// The container has no log file (no absolute log path in its status).
    NoLogPath,
    /// The log is below the max size.
    BelowMaxSize {
        /// Its size in bytes.
        size: u64,
    },
    /// The log file was missing: the runtime was asked to reopen it (and it is below the max
    /// size, or not there yet).
    Reopened,
    /// The rotated name of this second is taken (a rotation in the same second): the log is
    /// rotated on a later round.
    Postponed,
    /// The log was rotated.
    Rotated(Rotation),
}

/// One rotation of a container's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// The current log's size when it was rotated.
    pub size: u64,
    /// Where the current log went (`<log>.<YYYYMMDD-HHMMSS>`).
    pub rotated: PathBuf,
    /// The rotated files compressed now (their `.gz` names).
    pub compressed: Vec<PathBuf>,
    /// The files removed: leftovers and the oldest rotated files beyond `max_files`.
    pub removed: Vec<PathBuf>,
    /// How long the rotation took (clean-up, compression, rename and reopen).
    pub elapsed: Duration,
}

/// Rotates the running containers' logs of one runtime (kubelet's `ContainerLogManager`).
pub struct ContainerLogManager {
    config: ContainerLogConfig,
    runtime: Arc<dyn RuntimeBackend>,
    /// One round at a time.
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ContainerLogManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerLogManager")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ContainerLogManager {
    /// A manager of `runtime`'s container logs; fails on a configuration kubelet refuses
    /// ([`ContainerLogConfig::validate`]).
    pub fn new(
        config: ContainerLogConfig,
        runtime: Arc<dyn RuntimeBackend>,
    ) -> Result<Self, LogRotateError> {
        config.validate()?;
        Ok(Self {
            config,
            runtime,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ContainerLogConfig {
        &self.config
    }

    /// Rotates logs every monitor interval (the first round at once) until `token` is
    /// cancelled (a round under way is finished first); failures are logged and the next round
    /// goes on. With a negative max size it returns at once.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        if !self.config.rotates() {
            tracing::info!("container log rotation is off (negative max size)");
            return;
        }
        tracing::info!(
            max_size = self.config.max_size,
            max_files = self.config.max_files,
            workers = self.config.max_workers,
            interval = ?self.config.monitor_interval,
            "container log rotation"
        );
        let mut tick = tokio::time::interval(self.config.monitor_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
            }
            // a round is not cut short: a log renamed is reopened (or renamed back) before
            // the loop looks at the token again
            if let Err(e) = self.rotate_logs().await {
                tracing::error!(error = %e, "cannot rotate container logs");
            }
        }
    }

    /// One round: lists the running containers and rotates each one's log that needs it, up
    /// to `max_workers` at once. The outcome by container id; a container's failure is logged
    /// and does not stop the others. Fails only when the containers cannot be listed.
    pub async fn rotate_logs(
        &self,
    ) -> Result<Vec<(String, Result<RotateOutcome, LogRotateError>)>, LogRotateError> {
        let _round = self.lock.lock().await;
        let running = cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        };
        let containers = self
            .runtime
            .list_containers(Some(cri::ContainerFilter {
                state: Some(running),
                ..Default::default()
            }))
            .await
            .map_err(|source| LogRotateError::Runtime {
                call: "ListContainers",
                id: String::new(),
                source,
            })?;
        // only running containers: the others write nothing more (the filter is the runtime's
        // to honour; checked here again)
        let ids: Vec<String> = containers
            .into_iter()
            .filter(|c| c.state == cri::ContainerState::ContainerRunning as i32)
            .map(|c| c.id)
            .collect();
        let results: Vec<_> = futures::stream::iter(ids)
            .map(|id| async move {
                let r = self.process(&id).await;
                match &r {
                    Ok(RotateOutcome::Rotated(rot)) => tracing::debug!(
                        container = %id, rotated = %rot.rotated.display(), size = rot.size,
                        elapsed = ?rot.elapsed, "container log rotated"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::error!(container = %id, error = %e, "cannot rotate the container log"),
                }
                (id, r)
            })
            .buffer_unordered(self.config.max_workers)
            .collect()
            .await;
        Ok(results)
    }

    /// Looks at one container's log now and rotates it if it is above the max size (whatever
    /// its state).
    pub async fn rotate_container(&self, id: &str) -> Result<RotateOutcome, LogRotateError> {
        let _round = self.lock.lock().await;
        self.process(id).await
    }

    async fn process(&self, id: &str) -> Result<RotateOutcome, LogRotateError> {
        let status = self
            .runtime
            .container_status(id, false)
            .await
            .map_err(|source| LogRotateError::Runtime {
                call: "ContainerStatus",
                id: id.to_string(),
                source,
            })?;
        let path = PathBuf::from(status.status.map(|s| s.log_path).unwrap_or_default());
        if !path.is_absolute() {
            return Ok(RotateOutcome::NoLogPath);
        }
        let mut reopened = false;
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // kubelet: a missing log is reopened (it was removed, or a rotation was cut
                // short between the rename and the reopen)
                self.reopen(id).await?;
                reopened = true;
                match std::fs::metadata(&path) {
                    Ok(m) => m.len(),
                    // a runtime that reopens asynchronously has not created it yet
                    Err(_) => return Ok(RotateOutcome::Reopened),
                }
            }
            Err(e) => return Err(io_err("stat", &path)(e)),
        };
        if self.config.max_size < 0 || size < self.config.max_size as u64 {
            return Ok(if reopened {
                RotateOutcome::Reopened
            } else {
                RotateOutcome::BelowMaxSize { size }
            });
        }
        let started = Instant::now();
        let max_files = self.config.max_files;
        let log = path.clone();
        let prepared = tokio::task::spawn_blocking(move || {
            prepare_rotation(&log, max_files, SystemTime::now())
        })
        .await
        .map_err(|e| io_err("rotate", &path)(std::io::Error::other(e)))??;
        let Some((rotated, compressed, removed)) = prepared else {
            return Ok(RotateOutcome::Postponed);
        };
        if let Err(source) = self.runtime.reopen_container_log(id).await {
            // the runtime still writes to the renamed file: renaming it back loses nothing
            if let Err(e) = std::fs::rename(&rotated, &path) {
                tracing::error!(
                    container = %id, rotated = %rotated.display(), error = %e,
                    "cannot rename the rotated log back"
                );
            }
            return Err(LogRotateError::Reopen {
                id: id.to_string(),
                path,
                source,
            });
        }
        Ok(RotateOutcome::Rotated(Rotation {
            size,
            rotated,
            compressed,
            removed,
            elapsed: started.elapsed(),
        }))
    }

    async fn reopen(&self, id: &str) -> Result<(), LogRotateError> {
        self.runtime
            .reopen_container_log(id)
            .await
            .map_err(|source| LogRotateError::Runtime {
                call: "ReopenContainerLog",
                id: id.to_string(),
                source,
            })
    }
}

/// The rotated path, the files compressed and the files removed.
type Prepared = Option<(PathBuf, Vec<PathBuf>, Vec<PathBuf>)>;

/// Steps 1-3 and the rename of step 4 (see the module docs); `None` when the rotated name of
/// `now` is taken.
fn prepare_rotation(
    log: &Path,
    max_files: usize,
    now: SystemTime,
) -> Result<Prepared, LogRotateError> {
    let mut removed = Vec::new();
    let (in_use, unused) = split_unused(rotated_files(log)?);
    for f in unused {
        remove(&f)?;
        removed.push(f);
    }
    // oldest first: the timestamps sort as their names
    let mut in_use = in_use;
    in_use.sort();
    let keep = max_files.saturating_sub(2);
    let excess = in_use.len().saturating_sub(keep);
    for f in in_use.drain(..excess) {
        remove(&f)?;
        removed.push(f);
    }
    let mut compressed = Vec::new();
    for f in in_use {
        if !f.as_os_str().to_string_lossy().ends_with(COMPRESS_SUFFIX) {
            compressed.push(compress_log(&f)?);
        }
    }
    let rotated = with_suffix(log, &format!(".{}", rotation_timestamp(now)));
    if rotated.exists() || with_suffix(&rotated, COMPRESS_SUFFIX).exists() {
        return Ok(None);
    }
    std::fs::rename(log, &rotated).map_err(io_err("rename", log))?;
    Ok(Some((rotated, compressed, removed)))
}

fn remove(f: &Path) -> Result<(), LogRotateError> {
    match std::fs::remove_file(f) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", f)(e)),
        _ => Ok(()),
    }
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The files next to `log` named `<log>.*` (rotated, compressed and temporary files).
fn rotated_files(log: &Path) -> Result<Vec<PathBuf>, LogRotateError> {
    let (Some(dir), Some(name)) = (log.parent(), log.file_name()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", dir)(e)),
    };
    Ok(entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect())
}

/// Splits rotated files into those in use and the leftovers of an interrupted rotation:
/// temporary files, and uncompressed files whose compressed copy exists.
fn split_unused(files: Vec<PathBuf>) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let names: std::collections::HashSet<PathBuf> = files.iter().cloned().collect();
    files.into_iter().partition(|f| {
        let s = f.as_os_str().to_string_lossy();
        if s.ends_with(TMP_SUFFIX) {
            false
        } else if s.ends_with(COMPRESS_SUFFIX) {
            true
        } else {
            !names.contains(&with_suffix(f, COMPRESS_SUFFIX))
        }
    })
}

/// Removes the container log `log` and every rotated, compressed or temporary file of it
/// (kubelet's `Clean`, run when a container is removed). Files already gone are not errors.
pub fn remove_all_logs(log: &Path) -> Result<(), LogRotateError> {
    for f in rotated_files(log)? {
        remove(&f)?;
    }
    remove(log)
}

/// Removes the container `id` and its log files, as kubelet removes a container: the log path
/// from the container's status first (a container already gone has none), then the container;
/// a log that cannot be removed is logged, the container is removed all the same.
pub async fn remove_container_and_logs(
    runtime: &dyn RuntimeBackend,
    id: &str,
) -> Result<(), RuntimeError> {
    let log = runtime
        .container_status(id, false)
        .await
        .ok()
        .and_then(|s| s.status)
        .map(|s| PathBuf::from(s.log_path))
        .filter(|p| p.is_absolute());
    runtime.remove_container(id).await?;
    if let Some(log) = log
        && let Err(e) = remove_all_logs(&log)
    {
        tracing::warn!(container = %id, error = %e, "cannot remove the container's logs");
    }
    Ok(())
}

/// Every log file of the container log `log` in use, oldest first: the rotated files
/// (compressed or not) and the current log last (kubelet's `GetAllLogs`).
pub fn all_logs(log: &Path) -> Result<Vec<PathBuf>, LogRotateError> {
    let (mut in_use, _) = split_unused(rotated_files(log)?);
    in_use.sort();
    in_use.push(log.to_path_buf());
    Ok(in_use)
}

/// Gzips `log` to `<log>.gz` (through `<log>.tmp`, renamed once complete and synced) and
/// removes `log`; the compressed path.
fn compress_log(log: &Path) -> Result<PathBuf, LogRotateError> {
    let tmp = with_suffix(log, TMP_SUFFIX);
    let gz = with_suffix(log, COMPRESS_SUFFIX);
    let write = || -> std::io::Result<()> {
        let mut src = std::fs::File::open(log)?;
        let mode = src.metadata()?.permissions().mode() & 0o7777;
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        let mut enc = flate2::write::GzEncoder::new(
            std::io::BufWriter::with_capacity(256 << 10, out),
            flate2::Compression::default(),
        );
        std::io::copy(&mut src, &mut enc)?;
        let mut buf = enc.finish()?;
        buf.flush()?;
        let out = buf.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("compress", log)(e));
    }
    if let Err(e) = std::fs::rename(&tmp, &gz) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err("rename", &tmp)(e));
    }
    remove(log)?;
    Ok(gz)
}

/// The suffix of a rotated log: `YYYYMMDD-HHMMSS` in local time (kubelet's `20060102-150405`).
pub fn rotation_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as libc::time_t;
    // SAFETY: a zeroed `tm` is a valid value to be written over.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is thread-safe.
    if unsafe { libc::localtime_r(&secs, &mut tm) }.is_null() {
        // SAFETY: as above.
        unsafe { libc::gmtime_r(&secs, &mut tm) };
    }
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_are_tmp_files_and_compressed_originals() {
        let p = |s: &str| PathBuf::from(s);
        let (in_use, unused) = split_unused(vec![
            p("/l/0.log.20260101-000000.gz"),
            p("/l/0.log.20260101-000001"),
            p("/l/0.log.20260101-000001.gz"),
            p("/l/0.log.20260101-000002.tmp"),
            p("/l/0.log.20260101-000003"),
        ]);
        assert_eq!(
            in_use,
            vec![
                p("/l/0.log.20260101-000000.gz"),
                p("/l/0.log.20260101-000001.gz"),
                p("/l/0.log.20260101-000003"),
            ]
        );
        assert_eq!(
            unused,
            vec![
                p("/l/0.log.20260101-000001"),
                p("/l/0.log.20260101-000002.tmp")
            ]
        );
    }

    #[test]
    fn timestamp_has_kubelet_layout() {
        let t = rotation_timestamp(SystemTime::now());
        assert_eq!(t.len(), 15, "{t}");
        assert_eq!(t.as_bytes()[8], b'-', "{t}");
        assert!(t.chars().filter(|c| *c != '-').all(|c| c.is_ascii_digit()));
    }

    #[test]
    fn max_files_below_two_is_refused() {
        let c = ContainerLogConfig {
            max_files: 1,
            ..Default::default()
        };
        assert!(matches!(
            c.validate(),
            Err(LogRotateError::InvalidMaxFiles(1))
        ));
        assert!(ContainerLogConfig::default().validate().is_ok());
    }
}
