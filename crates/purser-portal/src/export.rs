//! The CSV export: every transaction of the account, newest first, read
//! from the store in steps and streamed.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use purser_store::EntryQuery;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::pages::handle_of;
use crate::{AppState, authenticate, problem, view};

/// Entries read from the store per step of a CSV export.
const EXPORT_STEP: usize = 1_000;
/// What a step costs in list-read turns (a list page is at most 100 items,
/// and a step is dearer to render): exports looped by one account take a
/// bounded share of the server, from buckets of their own (the engine's
/// export pacer), so they do not slow its pages.
const EXPORT_STEP_TURNS: u32 = 20;
/// Exports running at once, in all and per portal session.
const MAX_EXPORTS: usize = 32;
const MAX_EXPORTS_PER_SESSION: usize = 2;
/// How long an export waits for its client to take the next chunk.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The running exports, bounded in all and per session.
#[derive(Debug, Default)]
pub struct Exports {
    by_session: Mutex<HashMap<[u8; 16], usize>>,
}

/// One running export's place; given back when it ends.
#[derive(Debug)]
struct ExportSlot {
    state: AppState,
    nonce: [u8; 16],
}

impl Exports {
    /// Counts an export in, unless it would go over a limit.
    fn enter(&self, nonce: [u8; 16]) -> bool {
        let mut running = self.by_session.lock().unwrap_or_else(|p| p.into_inner());
        let total: usize = running.values().sum();
        let mine = running.get(&nonce).copied().unwrap_or(0);
        if total >= MAX_EXPORTS || mine >= MAX_EXPORTS_PER_SESSION {
            return false;
        }
        running.insert(nonce, mine + 1);
        true
    }

    fn leave(&self, nonce: [u8; 16]) {
        let mut running = self.by_session.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mine) = running.get_mut(&nonce) {
            *mine -= 1;
            if *mine == 0 {
                running.remove(&nonce);
            }
        }
    }
}

impl ExportSlot {
    fn take(state: &AppState, nonce: [u8; 16]) -> Option<ExportSlot> {
        state.exports.enter(nonce).then(|| ExportSlot {
            state: state.clone(),
            nonce,
        })
    }
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        self.state.exports.leave(self.nonce);
    }
}

/// Reads the journal in steps (each off the async threads, rendered there
/// too) and hands each chunk on; holds no thread while the client is slow,
/// and gives up if the client takes no chunk for `WRITE_TIMEOUT`.
async fn produce(
    engine: purser_engine::Engine,
    handle: purser_core::AccountHandle,
    account: String,
    sender: tokio::sync::mpsc::Sender<String>,
    stalled: Arc<AtomicBool>,
    _slot: ExportSlot,
) {
    let catalog = engine.catalog().clone();
    let mut before_seq = None;
    let mut header = Some(String::from(view::CSV_HEADER));
    loop {
        // Its turn, unless the client goes away meanwhile.
        tokio::select! {
            () = engine.pace_export(&account, EXPORT_STEP_TURNS) => {}
            () = sender.closed() => return,
        }
        let (account, catalog, header) = (account.clone(), catalog.clone(), header.take());
        let step = engine
            .query(move |store| {
                let entries = store.entries(&EntryQuery {
                    account: handle,
                    types: Vec::new(),
                    before_seq,
                    limit: EXPORT_STEP,
                })?;
                let mut chunk = header.unwrap_or_default();
                for entry in &entries {
                    let transaction = purser_wire::render::transaction_json(&account, entry);
                    view::csv_row(&mut chunk, &transaction, &catalog);
                }
                let next = (entries.len() == EXPORT_STEP)
                    .then(|| entries.last().map(|last| last.seq))
                    .flatten();
                Ok((chunk, next))
            })
            .await;
        let (chunk, next) = match step {
            Ok(step) => step,
            Err(error) => {
                tracing::error!(?error, "CSV export: the store could not answer");
                stalled.store(true, Ordering::Relaxed);
                return;
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, sender.send(chunk)).await {
            Ok(Ok(())) => {}
            // The client went away.
            Ok(Err(_)) => return,
            Err(_) => {
                tracing::warn!("CSV export: the client stopped reading; cut short");
                stalled.store(true, Ordering::Relaxed);
                return;
            }
        }
        match next {
            Some(seq) => before_seq = Some(seq),
            None => return,
        }
    }
}

/// All of the account's transactions, newest first, streamed in steps.
pub(crate) async fn export_csv(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    let session = match authenticate(&state, &token) {
        Ok(session) => session,
        Err(page) => return page,
    };
    let handle = match handle_of(&state, &session).await {
        Ok(handle) => handle,
        Err(page) => return page,
    };
    let Some(slot) = ExportSlot::take(&state, session.nonce) else {
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many downloads at once",
            "Wait for the downloads in progress to finish, then try again.",
        );
    };
    let (sender, receiver) = tokio::sync::mpsc::channel::<String>(2);
    let stalled = Arc::new(AtomicBool::new(false));
    tokio::spawn(produce(
        state.engine.clone(),
        handle,
        session.account.as_str().to_owned(),
        sender,
        stalled.clone(),
        slot,
    ));
    // Ends when the producer does; with an error (the connection is cut
    // instead of a CSV that looks whole) if the store failed or the client
    // stopped reading.
    let stream = futures_util::stream::unfold(Some(receiver), move |receiver| {
        let stalled = stalled.clone();
        async move {
            let mut receiver = receiver?;
            match receiver.recv().await {
                Some(chunk) => Some((Ok(chunk), Some(receiver))),
                None if stalled.load(Ordering::Relaxed) => {
                    Some((Err(std::io::Error::other("export cut short")), None))
                }
                None => None,
            }
        }
    });
    let filename = format!(
        "attachment; filename=\"{}-transactions.csv\"",
        session
            .account
            .as_str()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "-_.".contains(*c))
            .collect::<String>()
    );
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/csv; charset=utf-8")
        .header(header::CONTENT_DISPOSITION, filename)
        .body(Body::from_stream(stream))
        .expect("a CSV response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_are_bounded_per_session_and_in_all() {
        let exports = Exports::default();
        assert!(exports.enter([1; 16]) && exports.enter([1; 16]));
        assert!(!exports.enter([1; 16]), "a third for one session");
        exports.leave([1; 16]);
        assert!(exports.enter([1; 16]), "a place given back is taken again");
        let mut session = 2u8;
        while exports.enter([session; 16]) {
            session += 1;
        }
        let running: usize = exports.by_session.lock().unwrap().values().sum();
        assert_eq!(running, MAX_EXPORTS);
        exports.leave([1; 16]);
        assert!(exports.enter([200; 16]));
    }
}
