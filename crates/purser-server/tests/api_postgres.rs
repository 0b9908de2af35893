//! The whole API suite of `api.rs`, on the PostgreSQL store (see
//! `harness::on_postgres`): one database per test, created and dropped.

include!("api.rs");
