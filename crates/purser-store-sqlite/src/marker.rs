//! The data directory's own files besides the databases: `purser.lock`
//! (one writing process at a time) and `purser.end`, where the journal
//! ended after the last commit, kept beside the database as a witness the
//! WAL cannot take with it.
//!
//! Written (not fsynced) after each commit returns, so it never says more
//! than was durable; a crash of the process leaves it in the page cache, so
//! a WAL lost or cut after `kill -9` (or deleted by hand) is caught: the
//! marker is ahead of the journal. After a power loss it may be behind,
//! which proves nothing and is never reported. One small `pwrite` per
//! commit.

use std::os::unix::fs::FileExt;

use super::*;

const MAGIC: &[u8; 8] = b"PURSEND1";
const LEN: usize = 8 + 8 + 32 + 8;
pub(crate) const MARKER_FILE: &str = "purser.end";

#[derive(Debug)]
pub(crate) struct EndMarker {
    file: std::fs::File,
}

impl EndMarker {
    pub(crate) fn open(data_dir: &Path) -> Result<EndMarker, StoreError> {
        let path = data_dir.join(MARKER_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        Ok(EndMarker { file })
    }

    /// Records that the journal ends at `pos` with chain hash `chain`.
    pub(crate) fn write(&self, pos: u64, chain: &purser_store::ChainHash) {
        let mut bytes = [0u8; LEN];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..16].copy_from_slice(&pos.to_le_bytes());
        bytes[16..48].copy_from_slice(chain);
        let sum = blake3::hash(&bytes[..48]);
        bytes[48..].copy_from_slice(&sum.as_bytes()[..8]);
        if let Err(error) = self.file.write_all_at(&bytes, 0) {
            tracing::warn!(%error, "could not write {MARKER_FILE}");
        }
    }
}

/// The position and chain hash `purser.end` in `data_dir` records, if it is
/// there and whole.
pub(crate) fn read_marker(data_dir: &Path) -> Option<(u64, purser_store::ChainHash)> {
    let bytes = std::fs::read(data_dir.join(MARKER_FILE)).ok()?;
    if bytes.len() < LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let sum = blake3::hash(&bytes[..48]);
    if bytes[48..LEN] != sum.as_bytes()[..8] {
        tracing::warn!("{MARKER_FILE} does not match its checksum; it is ignored");
        return None;
    }
    let mut pos = [0u8; 8];
    pos.copy_from_slice(&bytes[8..16]);
    let mut chain = [0u8; 32];
    chain.copy_from_slice(&bytes[16..48]);
    Some((u64::from_le_bytes(pos), chain))
}

/// Takes the data directory's lock (`purser.lock`): one process at a time
/// may write a data directory (a second `serve`, or a `restore` while one
/// serves, is refused). Waits up to `wait` for a holder that is going away
/// (a server shutting down, a store being dropped).
pub fn lock_data_dir(data_dir: &Path, wait: Duration) -> Result<std::fs::File, StoreError> {
    let path = data_dir.join("purser.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
    let deadline = std::time::Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Backend(format!(
                    "{} is in use by another purser process",
                    data_dir.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StoreError::Backend(format!("{}: {e}", path.display())));
            }
        }
    }
}

/// How long opening a store waits for the data directory's lock.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(10);
