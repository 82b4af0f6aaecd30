//! The deployment files under `deploy/`, checked the way CI can: no container engine runs
//! there, so nothing is built or started in a container. Instead every file goes through the
//! tool that reads it in production, or the closest thing that runs offline:
//!
//! - `promtool` checks the Prometheus config and the alert rules and runs their unit tests
//!   (`deploy/prometheus/alerts.test.yml`); the dashboard's queries are checked as PromQL too.
//! - `kubectl kustomize` builds `deploy/kubernetes` with kustomize v5 (the machine's kubectl)
//!   and v2.0.3 (Debian's kubectl 1.20), which must agree; `kubernetes-validate` checks the
//!   result against Kubernetes' own schemas, strictly, for 1.30 (the oldest with the preStop
//!   `sleep` action) and 1.37; the ServiceMonitor, a CRD those schemas do not know, is checked
//!   against the prometheus-operator's models (`tests/python/deploy_checks.py`).
//! - `hadolint` lints the Dockerfile; `check-jsonschema` checks `deploy/compose.yaml` against
//!   the Compose Specification's schema.
//! - Between the files, what no schema sees: ports, paths, selectors, secrets and timings that
//!   must agree with each other and with the proxy's config.
//! - The real binary, `serve --demo`, runs the compose load generator's script and must export
//!   every metric (and label) that the dashboard and the rules use.
//!
//! The tools are installed by `scripts/deploy-tools` (which `scripts/test` runs) into
//! `target/deploy-tools/bin`. A test whose tool is missing fails, saying to run `scripts/test`;
//! none is skipped. Every command runs with a time limit.
//!
//! One module a concern: `tools` (finding and running the tools, reading YAML and TOML),
//! `prometheus`, `grafana`, `kubernetes`, `image` (the Dockerfile and its build context),
//! `compose`, `metrics` (the live scrape against what deploy/ uses) and `promql` (names and
//! labels read out of queries). `serve --demo` as a process, and plain HTTP/1.0 to it, come
//! from `common::served`, shared with the other tests that run the binary.

#[path = "../common/mod.rs"]
mod common;

mod compose;
mod grafana;
mod image;
mod kubernetes;
mod metrics;
mod prometheus;
mod promql;
mod tools;
