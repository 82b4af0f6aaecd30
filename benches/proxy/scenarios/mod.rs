//! The scenarios, one module each, and the table of the proxies at start.
//!
//! Every scenario takes the load generator, the shared services and the settings, prints its
//! tables and returns its figures for the JSON file under its own name.

pub mod auth;
pub mod best_of_n;
pub mod cache;
mod closed_loop;
pub mod cpu;
pub mod fan_out;
pub mod large_bodies;
pub mod memory;
pub mod passthrough;
pub mod redis_tier;
pub mod streaming;
pub mod tls;
mod versus_nginx;

use serde_json::{json, Map, Value};

use crate::fleet::Services;
use crate::load::Load;
use crate::report::{kib_to_mib, print_table};
use crate::settings::Settings;

/// What `main` runs: one scenario, its figures as JSON.
pub type Scenario = fn(&Load, &Services, &Settings) -> Value;

/// Scenario 0: the RSS of each shared proxy before any traffic.
pub fn startup(services: &Services) -> Value {
    let rows: Vec<Vec<String>> = services
        .idle_rss_kib
        .iter()
        .map(|(name, kib)| vec![name.clone(), kib.map_or("?".into(), kib_to_mib)])
        .collect();
    print_table("0. Proxies at start (idle)", &["process", "RSS MiB"], &rows);
    let idle: Map<String, Value> = services
        .idle_rss_kib
        .iter()
        .map(|(name, kib)| (name.clone(), json!(kib)))
        .collect();
    json!({ "idle_rss_kib": idle })
}
