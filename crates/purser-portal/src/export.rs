//! The CSV export: every transaction of the account, newest first, read
//! from the store in steps and streamed.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use purser_store::EntryQuery;

use crate::pages::handle_of;
use crate::{AppState, authenticate, view};

/// Entries read from the store per step of a CSV export.
const EXPORT_STEP: usize = 1_000;

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
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let store = state.engine.store().clone();
    let account = session.account.as_str().to_owned();
    let catalog = state.engine.catalog().clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk = String::from(view::CSV_HEADER);
        let mut before_seq = None;
        loop {
            let entries = match store.entries(&EntryQuery {
                account: handle,
                types: Vec::new(),
                before_seq,
                limit: EXPORT_STEP,
            }) {
                Ok(entries) => entries,
                Err(error) => {
                    tracing::error!(%error, "CSV export: the store could not answer");
                    let _ = sender.blocking_send(Err(std::io::Error::other("store")));
                    return;
                }
            };
            for entry in &entries {
                let transaction = purser_wire::render::transaction_json(&account, entry);
                view::csv_row(&mut chunk, &transaction, &catalog);
            }
            if sender
                .blocking_send(Ok(std::mem::take(&mut chunk)))
                .is_err()
            {
                return;
            }
            match entries.last() {
                Some(last) if entries.len() == EXPORT_STEP => before_seq = Some(last.seq),
                _ => return,
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
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
