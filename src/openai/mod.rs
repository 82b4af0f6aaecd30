//! OpenAI wire types for the one endpoint the proxy looks inside: chat completions, plus the
//! translations that let the same chat-shaped pipeline serve the Responses API (`responses`)
//! and the legacy completions API (`completions`).
//!
//! Only the fields the proxy acts on are typed; everything else is carried in a flattened map,
//! so a field OpenAI or a vendor adds tomorrow survives the round trip untouched.

pub mod api;
pub mod chat_events;
pub mod completions;
pub mod request;
pub mod response;
pub mod responses;
pub mod usage;

pub use api::Api;
pub use request::{ChatRequest, RequestMessage};
pub use response::{ChatCompletion, Choice};
pub use usage::Usage;
