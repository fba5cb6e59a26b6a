//! Serving an [`App`] with a graceful drain, as the `serve` binary does and
//! as tests and embedders can.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use super::App;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every admitted request finished.
    Finished,
    /// The drain time ran out with requests still running (they were cut).
    TimedOut,
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting (`/readyz` says 503, new API requests are refused), lets the
/// admitted requests finish for at most `drain`, and says whether they
/// all did. An error only if the server itself fails.
pub async fn serve(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<Drained> {
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = app.clone();
    let server = axum::serve(listener, app.router()).with_graceful_shutdown(async move {
        shutdown.await;
        stopping.stop_accepting();
        let _ = stopped_tx.send(());
    });
    let mut serving = tokio::spawn(async move { server.await });
    tokio::select! {
        r = &mut serving => {
            // The server ended before any shutdown: an error of its own.
            return match r {
                Ok(Ok(())) => Ok(Drained::Finished),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(std::io::Error::other(e)),
            };
        }
        _ = stopped_rx => {}
    }
    match tokio::time::timeout(drain, &mut serving).await {
        Ok(Ok(r)) => r.map(|()| Drained::Finished),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => {
            serving.abort();
            Ok(Drained::TimedOut)
        }
    }
}
