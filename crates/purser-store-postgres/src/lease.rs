//! The writer lease: one writer per database, fenced by an epoch, with a
//! session advisory lock beside it so that a dead holder is told from a
//! paused one (see ARCHITECTURE.md).

use postgres::{Client, GenericClient, NoTls};
use purser_store::StoreError;

use crate::backend;

/// How long a writer's lease lasts without renewal; renewed every half
/// second and by every commit. A standby takes over once it has run out.
pub(crate) const LEASE_SECONDS: i64 = 5;

/// How often the lease thread renews the lease.
const RENEW_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// A lease not renewed for this long, whose holder's advisory lock is free,
/// belongs to a process that is gone. (A live holder renews every half
/// second, so its lease always has more than `LEASE_SECONDS - 1` to run.)
const SILENT_SECONDS: i64 = 1;

/// A session-level advisory lock the writer holds beside its lease, on the
/// lease connection: PostgreSQL drops it the moment the holder's process is
/// gone (its connections close), so a new purser that gets it while the
/// lease row says its holder held it (`locked`) knows the holder is dead
/// and takes over at once instead of waiting for the lease to run out. A
/// holder that is merely paused keeps its connections, and so its lock: it
/// is fenced by the lease as before. A writer that took over from a paused
/// one (whose session still held the lock) takes the lock when it comes
/// free and only then marks the lease `locked`.
const WRITER_LOCK: i64 = 0x7075_7273_6572_0001;

/// Takes the lease for `holder` (bumping the epoch): when it ran out, when
/// `holder` had it, or when its holder is gone (the advisory lock, taken on
/// `lease`, was free while the row says the holder held it, and the lease
/// went unrenewed for `SILENT_SECONDS`). Returns the epoch and whether
/// `lease` holds the lock; [`StoreError::LeaseHeld`] otherwise.
pub(crate) fn take(
    writer: &mut Client,
    lease: &mut Client,
    holder: &str,
) -> Result<(i64, bool), StoreError> {
    let locked = try_writer_lock(lease);
    let epoch: Option<i64> = writer
        .query_opt(
            "UPDATE writer_lease
                SET epoch = epoch + 1, holder = $1, expires_at = now() + make_interval(secs => $2),
                    locked = $3
              WHERE id = 1 AND (expires_at < now() OR holder = $1
                    OR ($3 AND locked AND expires_at < now() + make_interval(secs => $4)))
          RETURNING epoch",
            &[
                &holder,
                &(LEASE_SECONDS as f64),
                &locked,
                &((LEASE_SECONDS - SILENT_SECONDS) as f64),
            ],
        )
        .map_err(backend)?
        .map(|row| row.get(0));
    Ok((epoch.ok_or(StoreError::LeaseHeld)?, locked))
}

/// Renews the lease of `epoch` if it is still current; `false` if it is gone
/// (the writer is fenced). Inside a commit's transaction it also locks the
/// row until the commit ends, so no takeover can slip in between.
pub(crate) fn renew(client: &mut impl GenericClient, epoch: i64) -> Result<bool, postgres::Error> {
    client
        .execute(
            "UPDATE writer_lease SET expires_at = now() + make_interval(secs => $2)
              WHERE id = 1 AND epoch = $1 AND expires_at >= now()",
            &[&epoch, &(LEASE_SECONDS as f64)],
        )
        .map(|renewed| renewed > 0)
}

/// Hands the lease of `epoch` back, so a standby takes over at once; if
/// this fails the lease runs out by itself.
pub(crate) fn hand_back(client: &mut Client, epoch: i64) {
    let _ = client.execute(
        "UPDATE writer_lease SET expires_at = now() - interval '1 second' WHERE id = 1 AND epoch = $1",
        &[&epoch],
    );
}

/// Takes the writer's advisory lock if no live session holds it.
pub(crate) fn try_writer_lock(client: &mut Client) -> bool {
    client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&WRITER_LOCK])
        .is_ok_and(|row| row.get(0))
}

/// Renews the lease every half second on a connection of its own (which also
/// holds the writer's advisory lock, taken again if it was not free at
/// start or the connection was lost); a renewal that finds another epoch
/// (or none) fences this writer for good.
pub(crate) fn spawn_renewal(
    url: &str,
    client: Client,
    locked: bool,
    epoch: i64,
    fenced: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<(), StoreError> {
    let url = url.to_owned();
    std::thread::Builder::new()
        .name("purser-lease".into())
        .spawn(move || {
            let mut client: Option<Client> = Some(client);
            let mut locked = locked;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && !fenced.load(std::sync::atomic::Ordering::Relaxed)
            {
                std::thread::sleep(RENEW_EVERY);
                if client.as_ref().is_none_or(Client::is_closed) {
                    locked = false;
                    client = Client::connect(&url, NoTls).ok();
                    // The lock went with the old connection: until it is
                    // taken again, the row must not claim it.
                    let cleared = client.as_mut().map(|fresh| {
                        fresh.execute(
                            "UPDATE writer_lease SET locked = false WHERE id = 1 AND epoch = $1",
                            &[&epoch],
                        )
                    });
                    if !matches!(cleared, Some(Ok(_))) {
                        client = None;
                        continue;
                    }
                }
                let Some(connection) = client.as_mut() else {
                    continue;
                };
                if !locked && try_writer_lock(connection) {
                    locked = connection
                        .execute(
                            "UPDATE writer_lease SET locked = true WHERE id = 1 AND epoch = $1",
                            &[&epoch],
                        )
                        .is_ok();
                }
                match renew(connection, epoch) {
                    Ok(false) => fenced.store(true, std::sync::atomic::Ordering::Relaxed),
                    Ok(true) => {}
                    // Unreachable database: try again; commits fail meanwhile,
                    // and the lease runs out if this lasts.
                    Err(_) => client = None,
                }
            }
            drop(client);
        })
        .map_err(|e| StoreError::Backend(format!("lease thread: {e}")))?;
    Ok(())
}
