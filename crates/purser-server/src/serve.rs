//! The HTTP server loop: hyper's connections with limits a public endpoint
//! needs, which `axum::serve` does not set. At most `max_connections` are
//! served at once; at the limit, a few connections with no request in
//! flight and nothing received for a while (idle between requests, or
//! connected and silent) are closed to make room, as web servers shed idle
//! keep-alive connections, and if none is, more wait in the listen
//! backlog. A connection must
//! send each request's headers within `header_timeout` of being ready for
//! them, which also closes connections idle between requests. Bodies have
//! their own timeout where they are read (`api::JsonBody`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;

/// How long a shutdown waits for open connections to finish.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// At the limit, idle connections are asked to close at most this often
/// (each ask wakes every connection)...
const SHED_INTERVAL: Duration = Duration::from_millis(50);

/// ...and at most this many close for one ask (nginx drains 32 reusable
/// connections at a time): room for the newcomers, not a reconnect storm
/// for every pooled client.
const SHED_BATCH: usize = 32;

/// A connection that received nothing for less than this is not closed to
/// make room: a client that just connected, or is sending a request, has
/// time to send it.
const SHED_GRACE: Duration = Duration::from_millis(500);

/// Whether a connection has a request in flight (from its headers to its
/// answer's head; a streamed body after that is finished by a graceful
/// close), and since when it has not, in milliseconds from `epoch`.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    idle_since: AtomicU64,
}

impl Activity {
    fn new(epoch: Instant) -> Arc<Activity> {
        let activity = Arc::new(Activity {
            epoch,
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
        });
        activity.touch();
        activity
    }

    fn touch(&self) {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.idle_since.store(now, Ordering::Release);
    }

    /// Idle for at least [`SHED_GRACE`].
    fn is_idle(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        let grace = u64::try_from(SHED_GRACE.as_millis()).unwrap_or(u64::MAX);
        self.in_flight.load(Ordering::Acquire) == 0
            && now.saturating_sub(self.idle_since.load(Ordering::Acquire)) >= grace
    }
}

/// A request in flight, counted on its connection's [`Activity`].
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's socket, noting on its [`Activity`] when bytes arrive: a
/// client part way through a request is not idle, whatever hyper's state.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The connection limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops
/// accepting, lets every connection finish its request in flight, and
/// returns once they are closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    // Dropped at shutdown: every connection task sees it and winds down.
    let (stop_tx, stop_rx) = watch::channel(());
    // Bumped at the limit: up to `quota` idle connections close.
    let (shed_tx, shed_rx) = watch::channel(());
    let quota = Arc::new(AtomicUsize::new(0));
    let ask = |shed_tx: &watch::Sender<()>| {
        quota.store(SHED_BATCH, Ordering::Release);
        shed_tx.send_replace(());
    };
    let mut last_shed: Option<Instant> = None;
    let epoch = Instant::now();
    let mut shutdown = std::pin::pin!(shutdown);
    'serving: loop {
        // Accepted before its permit: one connection at most waits here
        // (beyond the limit by one), and its arrival is what sheds idle ones.
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a moment rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = match permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if last_shed.is_none_or(|at| at.elapsed() >= SHED_INTERVAL) {
                    ask(&shed_tx);
                    last_shed = Some(Instant::now());
                }
                // Asked again while no slot frees: the idle ones may still
                // be in their grace, or more may wait than one ask frees.
                let mut again = tokio::time::interval(SHED_INTERVAL);
                again.tick().await;
                loop {
                    tokio::select! {
                        permit = permits.clone().acquire_owned() => break permit.expect("the semaphore is never closed"),
                        _ = again.tick() => {
                            ask(&shed_tx);
                            last_shed = Some(Instant::now());
                        }
                        () = &mut shutdown => {
                            drop(stream);
                            break 'serving;
                        }
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Activity::new(epoch);
        let counted = activity.clone();
        let service = TowerToHyperService::new(
            router
                .clone()
                .map_request(|request: hyper::Request<Incoming>| request.map(Body::new))
                .map_future(move |answer| {
                    let busy = InFlight::enter(&counted);
                    async move {
                        let answer = answer.await;
                        drop(busy);
                        answer
                    }
                }),
        );
        let mut stop = stop_rx.clone();
        let mut shed = shed_rx.clone();
        shed.mark_unchanged();
        let quota = quota.clone();
        let stream = Watched {
            stream,
            activity: activity.clone(),
        };
        tokio::spawn(async move {
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout);
            let connection = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut connection = std::pin::pin!(connection);
            loop {
                tokio::select! {
                    // The connection first: what has arrived is read before
                    // the idle check below.
                    biased;
                    _ = connection.as_mut() => break,
                    Ok(()) = stop.changed() => connection.as_mut().graceful_shutdown(),
                    // At the limit: one with no request in flight that has
                    // received nothing for the grace takes a share of the
                    // quota and is shut down gracefully, which closes it
                    // now if it is idle or silent (a request in flight is
                    // never cut; one whose headers it is sending is let
                    // finish, which the header timeout bounds).
                    Ok(()) = shed.changed() => {
                        if activity.is_idle()
                            && quota
                                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| {
                                    left.checked_sub(1)
                                })
                                .is_ok()
                        {
                            connection.as_mut().graceful_shutdown();
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    drop(stop_rx);
    stop_tx.send_replace(());
    // Every permit back means every connection task has ended; a client
    // that will not take its last answer does not hold the process forever.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_LIMIT, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open {DRAIN_LIMIT:?} after shutdown began: closing them");
    }
    Ok(())
}
