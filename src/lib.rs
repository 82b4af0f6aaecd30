//! bon-proxy: an OpenAI-compatible reverse proxy that answers one chat completion with the
//! best of N, chosen by a judge.
//!
//! The request path, top to bottom: [`server`] routes, [`plan`] decides, `dispatch` reads the
//! body and admits the request, `generation` asks for
//! the candidates (`diversity` writes their bodies, [`fanout`] makes parallel calls),
//! [`selection`] has the [`judge`] pick (or falls back), [`respond`] builds the [`answer`];
//! [`passthrough`] carries everything else; [`decisions`] logs what each answer was made from.
//! `main.rs` is only the command line; tests and benches use this library directly.

pub(crate) mod admission;
pub mod allocator;
pub mod answer;
pub mod auth;
pub mod best_of_n;
pub mod body;
pub mod body_deadline;
pub mod cache;
pub(crate) mod concurrently;
pub mod config;
pub(crate) mod conn;
pub(crate) mod connections;
pub(crate) mod cors;
pub mod decisions;
pub mod demo;
pub(crate) mod dispatch;
pub(crate) mod diversity;
pub mod error;
pub mod eval;
pub mod fanout;
pub mod fusion;
pub(crate) mod generation;
pub mod intake;
pub mod judge;
pub mod listener;
pub mod metrics;
pub mod openai;
pub mod passthrough;
pub mod plain_cache;
pub mod plan;
pub mod redact;
pub(crate) mod redis_link;
pub(crate) mod relay;
pub mod respond;
pub(crate) mod retry_after;
pub mod selection;
pub mod server;
pub mod sse;
pub mod state;
pub mod streaming;
pub(crate) mod target;
pub mod telemetry;
pub mod ui;
pub mod upstream;

pub use config::Config;
pub use server::Server;
pub use state::Secrets;
