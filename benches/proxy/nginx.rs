//! nginx as the reference proxy for passthrough (issue 15: passthrough throughput at least
//! nginx's on the same cores): found on PATH (Debian's `nginx`), configured the way one puts it
//! in front of a streaming API, and run as a child of the fleet in the foreground.
//!
//! The configuration, and why:
//! - `master_process on; worker_processes auto;`: a worker per core, as deployed; the proxy
//!   also runs a worker thread per core.
//! - An `upstream` block with `keepalive 256` and `proxy_http_version 1.1` with an empty
//!   `Connection` header: pooled keep-alive connections to the demo, as the proxy keeps them
//!   (without these nginx opens a connection per request and the comparison is meaningless).
//! - `keepalive_requests 1000000` on both sides: nginx's default of 1,000 would close the
//!   load generator's and the demo's connections every 1,000 requests, which the proxy never
//!   does; reconnecting is not what is measured.
//! - `proxy_buffering off; proxy_request_buffering off;`: nginx passes bytes on as they
//!   arrive in both directions, like the proxy's passthrough (a streaming proxy must, or SSE
//!   tokens wait in nginx's buffers; this is the setting nginx needs in front of an OpenAI-style
//!   API). On these small 0 ms answers buffering would change little either way.
//! - `access_log off`: the proxy keeps no access log by default either.
//!
//! It is stopped with SIGTERM (`Stop::Terminate`): its master then stops the workers, which a
//! SIGKILL to the master would leave running.

use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::fleet::{free_addr, on_path, Fleet, Service, Stop};
use crate::load::Load;

/// What the bench prints, and records, when there is no nginx to compare with.
pub const SKIPPED: &str = "skipped: nginx not installed (apt-get install nginx)";

/// A running nginx: the service, its version and the configuration it runs.
pub struct Nginx {
    pub service: Service,
    pub version: String,
    pub config: String,
}

/// Starts nginx in front of `upstream` on a free loopback port; `None` when it is not on PATH.
pub fn start(fleet: &mut Fleet, load: &Load, name: &str, upstream: &Service) -> Option<Nginx> {
    let program = on_path("nginx")?;
    let prefix = fleet.config_dir().join(name);
    fs::create_dir_all(&prefix)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", prefix.display()));
    // Run as root, nginx's workers switch to `nobody`, which must reach the temp directories
    // under the prefix (the temp dir above it is created 0700).
    for dir in [fleet.config_dir(), prefix.as_path()] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("cannot open up {}: {e}", dir.display()));
    }
    let addr = free_addr();
    let config = config(&prefix, addr, upstream);
    let config_path = prefix.join("nginx.conf");
    fs::write(&config_path, &config)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", config_path.display()));
    let mut command = Command::new(&program);
    // -e: the startup error log, before the config's `error_log` applies (Debian's default
    // path is under /var/log, which the bench leaves alone).
    command
        .arg("-p")
        .arg(&prefix)
        .arg("-c")
        .arg(&config_path)
        .args(["-e", "stderr", "-g", "daemon off;"]);
    let service = fleet.start(name, command, addr, Stop::Terminate);
    fleet.wait_ready(load, &service, "/v1/models");
    let version = nginx_version(&program);
    Some(Nginx {
        service,
        version,
        config,
    })
}

/// `nginx -v` prints its version on stderr: `nginx version: nginx/1.22.1`; this says `1.22.1`.
fn nginx_version(program: &Path) -> String {
    let output = Command::new(program).arg("-v").output();
    let text = output.map_or_else(
        |e| format!("unknown ({e})"),
        |o| String::from_utf8_lossy(&o.stderr).trim().to_string(),
    );
    text.strip_prefix("nginx version: nginx/")
        .map_or(text.clone(), str::to_string)
}

/// The configuration described at the top of this module.
fn config(prefix: &Path, listen: SocketAddr, upstream: &Service) -> String {
    let p = prefix.display();
    format!(
        "# Written by benches/proxy/nginx.rs for the passthrough comparison.
master_process on;
worker_processes auto;
pid {p}/nginx.pid;
error_log stderr warn;

events {{
    # Each proxied request holds a client and an upstream connection; the load generator
    # keeps up to 2,000 requests in flight.
    worker_connections 8192;
}}

http {{
    access_log off;
    client_body_temp_path {p}/client_body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    # The proxy's own limit on a request body (server.max_body_bytes).
    client_max_body_size 32m;

    upstream demo {{
        server {upstream};
        keepalive 256;
        keepalive_requests 1000000;
        keepalive_timeout 60s;
    }}

    server {{
        listen {listen};
        location / {{
            proxy_pass http://demo;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
",
        upstream = upstream.addr
    )
}
