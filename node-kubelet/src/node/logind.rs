//! Graceful node shutdown on a systemd-logind signal: the kubelet takes a "delay" inhibitor
//! lock (`org.freedesktop.login1.Manager.Inhibit("shutdown", ..., "delay")`), so logind waits
//! (up to `InhibitDelayMaxUSec`) before shutting the machine down; on
//! `PrepareForShutdown(true)` the pods are stopped by priority, then the lock is released.
//!
//! ```no_run
//! # async fn demo(node: node_kubelet::node::NodeManager) -> Result<(), Box<dyn std::error::Error>> {
//! use node_kubelet::node::logind::ShutdownInhibitor;
//!
//! let inhibitor = ShutdownInhibitor::system("nodekit", "stopping pods gracefully").await?;
//! let reports = node.shutdown_reports();
//! let node = node.shutdown_on(inhibitor.prepare_for_shutdown().await?);
//! inhibitor.release_after(reports);
//! # Ok(()) }
//! ```

use std::future::Future;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use super::shutdown::GroupReport;

/// logind's bus name.
pub const LOGIND_NAME: &str = "org.freedesktop.login1";
/// logind's object path.
pub const LOGIND_PATH: &str = "/org/freedesktop/login1";
/// logind's manager interface.
pub const MANAGER_INTERFACE: &str = "org.freedesktop.login1.Manager";

/// Talking to logind failed.
#[derive(Debug, thiserror::Error)]
#[error("logind {op}: {source}")]
pub struct LogindError {
    /// What was done (`connect`, `Inhibit`, `InhibitDelayMaxUSec`, `subscribe`).
    pub op: &'static str,
    /// The D-Bus error.
    #[source]
    pub source: zbus::Error,
}

fn err(op: &'static str) -> impl FnOnce(zbus::Error) -> LogindError {
    move |source| LogindError { op, source }
}

/// A delay inhibitor lock on shutdown, held until released (or dropped).
pub struct ShutdownInhibitor {
    connection: zbus::Connection,
    lock: Arc<Mutex<Option<OwnedFd>>>,
    who: String,
    why: String,
}

impl std::fmt::Debug for ShutdownInhibitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownInhibitor")
            .field("who", &self.who)
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl ShutdownInhibitor {
    /// Takes the lock from the system bus's logind.
    pub async fn system(who: &str, why: &str) -> Result<Self, LogindError> {
        let c = zbus::Connection::system().await.map_err(err("connect"))?;
        Self::on(c, who, why).await
    }

    /// Takes the lock from the logind on the bus at `address` (`unix:path=...`).
    pub async fn at(address: &str, who: &str, why: &str) -> Result<Self, LogindError> {
        let c = zbus::connection::Builder::address(address)
            .map_err(err("connect"))?
            .build()
            .await
            .map_err(err("connect"))?;
        Self::on(c, who, why).await
    }

    async fn proxy(connection: &zbus::Connection) -> Result<zbus::Proxy<'static>, LogindError> {
        zbus::Proxy::new(connection, LOGIND_NAME, LOGIND_PATH, MANAGER_INTERFACE)
            .await
            .map_err(err("connect"))
    }

    async fn on(connection: zbus::Connection, who: &str, why: &str) -> Result<Self, LogindError> {
        let this = Self {
            connection,
            lock: Arc::new(Mutex::new(None)),
            who: who.into(),
            why: why.into(),
        };
        this.inhibit().await?;
        Ok(this)
    }

    /// Takes (again) the delay lock.
    pub async fn inhibit(&self) -> Result<(), LogindError> {
        let proxy = Self::proxy(&self.connection).await?;
        let fd: zbus::zvariant::OwnedFd = proxy
            .call("Inhibit", &("shutdown", &self.who, &self.why, "delay"))
            .await
            .map_err(err("Inhibit"))?;
        *self.lock.lock().expect("inhibitor lock") = Some(fd.into());
        Ok(())
    }

    /// How long logind waits for a delay lock (`InhibitDelayMaxUSec`): the shutdown budget
    /// should fit in it.
    pub async fn max_delay(&self) -> Result<Duration, LogindError> {
        let proxy = Self::proxy(&self.connection).await?;
        let usec: u64 = proxy
            .get_property("InhibitDelayMaxUSec")
            .await
            .map_err(err("InhibitDelayMaxUSec"))?;
        Ok(Duration::from_micros(usec))
    }

    /// Whether the lock is held.
    pub fn is_held(&self) -> bool {
        self.lock.lock().expect("inhibitor lock").is_some()
    }

    /// Releases the lock: logind goes on with the shutdown.
    pub fn release(&self) {
        self.lock.lock().expect("inhibitor lock").take();
    }

    /// A future that completes on `PrepareForShutdown(true)` (subscribed now, so no signal is
    /// missed): give it to [`NodeManager::shutdown_on`](super::NodeManager::shutdown_on).
    pub async fn prepare_for_shutdown(
        &self,
    ) -> Result<impl Future<Output = ()> + Send + 'static, LogindError> {
        let proxy = Self::proxy(&self.connection).await?;
        let mut signals = proxy
            .receive_signal("PrepareForShutdown")
            .await
            .map_err(err("subscribe"))?;
        Ok(async move {
            let _proxy = proxy;
            while let Some(msg) = signals.next().await {
                match msg.body().deserialize::<bool>() {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "a malformed PrepareForShutdown signal"),
                }
            }
            // the bus went away: never trigger
            std::future::pending::<()>().await
        })
    }

    /// Releases the lock once the shutdown reports are in (the pods are stopped).
    pub fn release_after(&self, mut reports: watch::Receiver<Option<Vec<GroupReport>>>) {
        let lock = self.lock.clone();
        tokio::spawn(async move {
            if reports.wait_for(Option::is_some).await.is_ok() {
                tracing::info!("node shutdown done: releasing the logind inhibitor lock");
                lock.lock().expect("inhibitor lock").take();
            }
        });
    }
}
