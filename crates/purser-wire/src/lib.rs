//! purser-wire: the API's objects on the wire.
//!
//! Owns the JSON of every object API.md answers with (rendered by hand: the
//! core has no serde), [`JsonAnswers`] (the [`purser_engine::Render`] the
//! engine renders its answers with), debit [`memo`]s, request parsing
//! ([`request::Fields`]: every field checked, each refusal naming its
//! `param`), request fingerprints, and the error shape with its one
//! type → status map.
//!
//! It must not know the engine's threads or HTTP routing: it turns values
//! into bytes and bytes into values. (With the `axum` feature, the error
//! shape is also an axum response.)

pub mod answers;
pub mod error;
pub mod events;
pub mod fingerprint;
pub mod lists;
pub mod memo;
pub mod objects;
pub mod render;
pub mod request;

pub use answers::JsonAnswers;
#[cfg(feature = "axum")]
pub use error::json_response;
pub use error::{ApiError, outcome};
pub use fingerprint::{fingerprint, fingerprint_canonical};
pub use request::{Fields, required};
