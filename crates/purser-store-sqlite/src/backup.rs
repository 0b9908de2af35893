//! Online backup and restore of the embedded store.
//!
//! A backup copies `purser.db` with SQLite's online backup API in one step
//! (one read transaction: a consistent state, while the server keeps
//! committing; WAL readers never block the writer), fsyncs the copy, and
//! leaves `history.db` out (derived: rebuilt from the log on start). A
//! restore copies a backup into a data directory no purser is using (it
//! takes the directory's lock), replacing `purser.db` and removing the
//! derived files and the old WAL.

use super::*;

/// Copies the store in `data_dir` into `target` (a new or empty directory).
pub fn backup(data_dir: &Path, target: &Path) -> Result<PathBuf, StoreError> {
    let io =
        |path: &Path, e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
    let source_path = data_dir.join("purser.db");
    if !source_path.exists() {
        return Err(StoreError::Backend(format!(
            "no purser store in {}",
            data_dir.display()
        )));
    }
    std::fs::create_dir_all(target).map_err(|e| io(target, e))?;
    let copy = target.join("purser.db");
    if copy.exists() {
        return Err(StoreError::Backend(format!(
            "{} already exists: back up into a new directory",
            copy.display()
        )));
    }
    let partial = target.join("purser.db.partial");
    let _ = std::fs::remove_file(&partial);
    {
        let source = open_reader(&source_path, None)?;
        let mut destination = Connection::open(&partial).map_err(backend)?;
        let backup = rusqlite::backup::Backup::new(&source, &mut destination).map_err(backend)?;
        // -1: every page in one step, so one read transaction of the source.
        match backup.step(-1).map_err(backend)? {
            rusqlite::backup::StepResult::Done => {}
            other => {
                return Err(StoreError::Backend(format!(
                    "the backup did not finish in one step: {other:?}"
                )));
            }
        }
        drop(backup);
        destination
            .execute_batch("PRAGMA journal_mode = DELETE;")
            .map_err(backend)?;
    }
    std::fs::File::open(&partial)
        .and_then(|file| file.sync_all())
        .map_err(|e| io(&partial, e))?;
    std::fs::rename(&partial, &copy).map_err(|e| io(&copy, e))?;
    std::fs::File::open(target)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io(target, e))?;
    Ok(copy)
}

/// Replaces the store in `data_dir` with the backup in `from` (which the
/// caller has verified). Refused while a purser uses `data_dir`.
pub fn restore(from: &Path, data_dir: &Path) -> Result<(), StoreError> {
    let io =
        |path: &Path, e: std::io::Error| StoreError::Backend(format!("{}: {e}", path.display()));
    let source = from.join("purser.db");
    if !source.exists() {
        return Err(StoreError::Backend(format!(
            "no backup in {} (no purser.db)",
            from.display()
        )));
    }
    std::fs::create_dir_all(data_dir).map_err(|e| io(data_dir, e))?;
    let _lock = lock_data_dir(data_dir, Duration::ZERO)?;
    let partial = data_dir.join("purser.db.restoring");
    std::fs::copy(&source, &partial).map_err(|e| io(&partial, e))?;
    std::fs::File::open(&partial)
        .and_then(|file| file.sync_all())
        .map_err(|e| io(&partial, e))?;
    // The old WAL and the derived index belong to the store being replaced.
    for file in [
        MARKER_FILE,
        "purser.db-wal",
        "purser.db-shm",
        "history.db",
        "history.db-wal",
        "history.db-shm",
    ] {
        let path = data_dir.join(file);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
        }
    }
    let target = data_dir.join("purser.db");
    std::fs::rename(&partial, &target).map_err(|e| io(&target, e))?;
    std::fs::File::open(data_dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io(data_dir, e))?;
    Ok(())
}
