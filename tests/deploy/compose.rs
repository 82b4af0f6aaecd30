//! The compose stack, `deploy/compose.yaml`: it matches the Compose Specification's schema
//! (`check-jsonschema`), its mounts, services, Prometheus job and Grafana provisioning refer
//! to each other correctly, and its load generator's script runs against `serve --demo`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{json, Value};

use crate::common::python::output_within;
use crate::common::served::Serve;
use crate::tools::{check, deploy, str_key, text, toml_file, yaml_one, TOOL_TIMEOUT};

fn compose() -> Value {
    yaml_one(&deploy("compose.yaml"))
}

#[test]
fn compose_file_matches_the_compose_spec() {
    let out = check(
        "check-jsonschema",
        &[
            "--builtin-schema",
            "vendor.compose-spec",
            "deploy/compose.yaml",
        ],
    );
    assert!(out.contains("ok"), "{out}");

    // What the schema cannot see: files and services that the stack's pieces refer to.
    let compose = compose();
    let services = compose["services"].as_object().expect("services");
    let mut mounts: BTreeMap<String, PathBuf> = BTreeMap::new();
    for (name, service) in services {
        for volume in service["volumes"].as_array().into_iter().flatten() {
            let volume = volume.as_str().expect("short volume syntax");
            let mut parts = volume.split(':');
            let (source, target) = (parts.next().unwrap(), parts.next().unwrap());
            if source.starts_with("./") {
                let path = deploy(source);
                assert!(path.exists(), "{name}: {source} does not exist");
                mounts.insert(target.to_string(), path);
            }
        }
        let depends: Vec<&str> = match &service["depends_on"] {
            Value::Object(map) => map.keys().map(String::as_str).collect(),
            Value::Array(list) => list.iter().filter_map(|v| v.as_str()).collect(),
            _ => Vec::new(),
        };
        for other in depends {
            assert!(services.contains_key(other), "{name} depends on {other}");
        }
    }
    let proxy = &services["proxy"];
    let context = deploy(proxy["build"]["context"].as_str().unwrap());
    assert!(context
        .join(proxy["build"]["dockerfile"].as_str().unwrap())
        .exists());
    assert_eq!(proxy["deploy"]["replicas"], 2);
    let command: Vec<&str> = proxy["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(&command[..2], ["serve", "--demo"]);
    assert!(
        mounts.contains_key("/etc/bon-proxy/proxy.toml"),
        "the proxy's config must be mounted where the image's BON_CONFIG points"
    );
    let proxy_config = toml_file(&mounts["/etc/bon-proxy/proxy.toml"]);
    let listen = str_key(&proxy_config, "server", "listen");
    assert_eq!(listen, "0.0.0.0:8080");
    assert_eq!(
        str_key(&proxy_config, "cache", "redis_url"),
        "redis://redis:6379"
    );
    assert!(services.contains_key("redis"));

    // Prometheus finds every replica of the proxy service on the proxy's port.
    let prometheus = yaml_one(&deploy("prometheus/prometheus.yml"));
    let job = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["job_name"] == "bon-proxy")
        .expect("a bon-proxy job (alerts.yml selects job=\"bon-proxy\")");
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(sd["names"], json!(["proxy"]));
    assert_eq!(sd["port"], 8080);
    let prometheus_command = services["prometheus"]["command"].to_string();
    assert!(prometheus_command.contains("--config.file=/etc/prometheus/prometheus.yml"));
    assert_eq!(mounts.get("/etc/prometheus"), Some(&deploy("./prometheus")));

    // Grafana: the provider reads the mounted dashboards, the data source is the service.
    let provider = yaml_one(&deploy("grafana/provisioning/dashboards/bon-proxy.yaml"));
    let dashboards_dir = provider["providers"][0]["options"]["path"]
        .as_str()
        .unwrap();
    assert_eq!(
        mounts.get(dashboards_dir),
        Some(&deploy("./grafana/dashboards"))
    );
    let home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
        .as_str()
        .unwrap();
    let home_file = home.strip_prefix(dashboards_dir).expect("home dashboard");
    assert!(deploy("grafana/dashboards")
        .join(home_file.trim_start_matches('/'))
        .exists());
    let datasource = yaml_one(&deploy("grafana/provisioning/datasources/prometheus.yaml"));
    assert_eq!(
        datasource["datasources"][0]["url"],
        "http://prometheus:9090"
    );
    assert_eq!(
        mounts.get("/etc/grafana/provisioning"),
        Some(&deploy("./grafana/provisioning"))
    );
}

/// The load generator's shell script, as the container's shell receives it (`$$` is Compose's
/// escape for `$`).
fn loadgen_script() -> String {
    let compose = compose();
    let command = &compose["services"]["loadgen"]["command"];
    command[0]
        .as_str()
        .expect("the loadgen script")
        .replace("$$", "$")
}

#[test]
fn compose_load_generator_runs_against_serve_demo() {
    let proxy = Serve::demo().start();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(loadgen_script())
        .env("PROXY_URL", format!("http://{}", proxy.addr))
        // Five rounds reach the every-fifth-round requests; a second each.
        .env("LOADGEN_ROUNDS", "5");
    let out = output_within(cmd, TOOL_TIMEOUT).expect("run sh (curl: run scripts/test)");
    let log = text(&out);
    assert!(out.status.success(), "loadgen failed:\n{log}");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        18,
        "3 requests a round, 3 more in the fifth:\n{log}"
    );
    for line in &lines {
        let expected = if line.contains("too-many-candidates") {
            "400 "
        } else {
            "200 "
        };
        assert!(line.starts_with(expected), "{line}\n{log}\n{}", proxy.log());
    }
    assert!(lines
        .iter()
        .any(|l| l.starts_with("200 best-of-3 ") && l.contains("x-cache=miss")));
    assert!(lines
        .iter()
        .any(|l| l.starts_with("200 best-of-3-no-cache") && l.contains("x-cache=bypass")));
}
