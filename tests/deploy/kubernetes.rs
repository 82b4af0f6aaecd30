//! The Kubernetes manifests under `deploy/kubernetes`: kustomize v5 and v2.0.3 build the same
//! resources, which validate strictly against Kubernetes' schemas (the ServiceMonitor against
//! the prometheus-operator's models), and agree with each other and with the proxy's config
//! (ports, probes, paths, selectors, secrets, shutdown timings, the restricted Pod Security
//! Standard).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use crate::tools::{
    check, deploy, duration_key, read, root, run, str_key, text, toml_file, yaml, yaml_one,
};

/// `kubectl kustomize deploy/kubernetes` with the kubectl `name` (in the deploy tools).
fn kustomize(name: &str) -> String {
    check(name, &["kustomize", "deploy/kubernetes"])
}

/// A kustomize build as JSON documents, the ConfigMap's content hash replaced by `HASH`
/// (kustomize v2 and v5 hash differently).
fn build_docs(built: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("built.yaml");
    std::fs::write(&file, built).expect("write build");
    let mut docs = yaml(&file);
    let hashed: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_string))
        .collect();
    let mut text = serde_json::to_string(&docs).unwrap();
    for name in hashed {
        let base = name.rsplit_once('-').map_or(name.as_str(), |(b, _)| b);
        text = text.replace(&format!("\"{name}\""), &format!("\"{base}-HASH\""));
    }
    docs = serde_json::from_str(&text).unwrap();
    docs.sort_by_key(|d| {
        (
            d["kind"].as_str().unwrap_or("").to_string(),
            d["metadata"]["name"].as_str().unwrap_or("").to_string(),
        )
    });
    docs
}

#[test]
fn kustomize_v5_and_v2_build_the_same_manifests() {
    let v5 = build_docs(&kustomize("kubectl"));
    let v2 = build_docs(&kustomize("kubectl-1.20"));
    let kinds: Vec<&str> = v5.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceMonitor",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in the build: {kinds:?}");
    }
    assert!(
        !kinds.contains(&"Secret"),
        "the build must not carry a Secret: applying it would overwrite the real one"
    );
    for (a, b) in v5.iter().zip(&v2) {
        assert_eq!(
            a, b,
            "kustomize v5 (kubectl) and v2.0.3 (kubectl 1.20) build {} {} differently",
            a["kind"], a["metadata"]["name"]
        );
    }
    assert_eq!(
        v5.len(),
        v2.len(),
        "kustomize v5 and v2.0.3 build different resources"
    );
}

/// Validates `file` against Kubernetes `version`'s schemas, strictly (unknown fields are
/// errors). Kinds without a schema only warn in kubernetes-validate; here only ServiceMonitor
/// may lack one, and it is checked apart.
fn validate_strictly(file: &Path, version: &str) {
    let out = run(
        "kubernetes-validate",
        &[
            "--strict",
            "--quiet",
            "-k",
            version,
            &file.to_string_lossy(),
        ],
    );
    let report = text(&out);
    assert!(
        out.status.success(),
        "{} does not validate against Kubernetes {version}:\n{report}",
        file.display()
    );
    for line in report.lines() {
        assert!(
            !line.contains("Couldn't find schema") || line.contains("kind ServiceMonitor"),
            "{}: a resource without a schema in Kubernetes {version}: {line}",
            file.display()
        );
    }
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let dir = tempfile::tempdir().expect("temp dir");
    let built = dir.path().join("built.yaml");
    std::fs::write(&built, kustomize("kubectl")).expect("write build");
    let secret = deploy("kubernetes/secret.template.yaml");
    for version in ["1.30.0", "1.37.0"] {
        validate_strictly(&built, version);
        validate_strictly(&secret, version);
    }
    let out = check(
        "python",
        &[
            &root()
                .join("tests/python/deploy_checks.py")
                .to_string_lossy(),
            "servicemonitor",
            &built.to_string_lossy(),
        ],
    );
    assert!(out.contains("ServiceMonitor bon-proxy: valid"), "{out}");
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in the build"))
}

/// True when every label of `selector` (a matchLabels map) is in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let selector = selector.as_object().expect("a label selector");
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[test]
fn kubernetes_manifests_agree_with_each_other_and_the_proxy_config() {
    let docs = build_docs(&kustomize("kubectl"));
    let config_path = deploy("kubernetes/proxy.toml");
    let config = toml_file(&config_path);

    // --- the proxy's Deployment
    let deployment = find(&docs, "Deployment", "bon-proxy");
    let pod = &deployment["spec"]["template"];
    let pod_labels = &pod["metadata"]["labels"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert!(selects(
        &deployment["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    let container = &pod["spec"]["containers"][0];
    let listen = str_key(&config, "server", "listen");
    let port = listen.rsplit(':').next().unwrap().parse::<u64>().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "server.listen = {listen:?}: a pod must listen on every interface"
    );
    let http = container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "http")
        .expect("a port named http");
    assert_eq!(
        http["containerPort"], port,
        "containerPort vs server.listen"
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "http");

    // The shutdown fits in the grace period: preStop pause, then the proxy's drain and its wait
    // for requests in flight.
    let pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_u64()
        .expect("preStop sleep");
    let drain = duration_key(&config, "server", "drain_delay", "5s");
    let grace = duration_key(&config, "server", "shutdown_grace", "30s");
    let period = pod["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(period) > Duration::from_secs(pause) + drain + grace,
        "terminationGracePeriodSeconds ({period}) must exceed preStop ({pause} s) + \
         server.drain_delay ({drain:?}) + server.shutdown_grace ({grace:?})"
    );

    // The config file: the generated ConfigMap, mounted where BON_CONFIG points, holding
    // proxy.toml as it is in the repository.
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    let config_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["configMap"].is_object())
        .expect("a configMap volume");
    let map = find(
        &docs,
        "ConfigMap",
        config_volume["configMap"]["name"].as_str().unwrap(),
    );
    assert_eq!(map["data"]["proxy.toml"], read(&config_path));
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == config_volume["name"])
        .expect("the config volume mounted");
    assert_eq!(
        env["BON_CONFIG"]["value"].as_str(),
        Some(format!("{}/proxy.toml", mount["mountPath"].as_str().unwrap()).as_str())
    );

    // Secrets: the variables proxy.toml names are set, from keys the Secret template has.
    let secret = yaml_one(&deploy("kubernetes/secret.template.yaml"));
    let secret_name = secret["metadata"]["name"].as_str().unwrap();
    let secret_keys = secret["stringData"].as_object().expect("stringData");
    for (key, value) in secret_keys {
        assert!(
            value.as_str().is_some_and(|v| v.starts_with("REPLACE_")),
            "secret.template.yaml: {key} must be a REPLACE_ placeholder, not a value"
        );
    }
    for var in [
        str_key(&config, "upstream", "api_key_env"),
        str_key(&config, "cache", "redis_password_env"),
    ] {
        let from = &env
            .get(var)
            .unwrap_or_else(|| panic!("proxy.toml names {var}, the Deployment does not set it"))
            ["valueFrom"]["secretKeyRef"];
        assert_eq!(from["name"], secret_name, "{var}");
        assert!(
            secret_keys.contains_key(from["key"].as_str().unwrap()),
            "{var}: key {} is not in secret.template.yaml",
            from["key"]
        );
    }

    // The restricted Pod Security Standard, for every workload (schemas do not check it).
    for workload in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let name = &workload["metadata"]["name"];
        let spec = &workload["spec"]["template"]["spec"];
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            spec["securityContext"]["seccompProfile"]["type"], "RuntimeDefault",
            "{name}"
        );
        for c in spec["containers"].as_array().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert!(c["resources"]["requests"].is_object(), "{name}: requests");
            assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
        }
        for (key, value) in secret_refs(workload) {
            assert_eq!(value, secret_name, "{name}: secretKeyRef {key}");
            assert!(
                secret_keys.contains_key(&key),
                "{name}: {key} not in template"
            );
        }
    }

    // --- Service, ServiceMonitor, HPA, PDB select and name the right things.
    let service = find(&docs, "Service", "bon-proxy");
    assert!(selects(&service["spec"]["selector"], pod_labels));
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], "http");
    let monitor = find(&docs, "ServiceMonitor", "bon-proxy");
    assert!(
        selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &service["metadata"]["labels"]
        ),
        "the ServiceMonitor does not select the Service"
    );
    let redis_service = find(&docs, "Service", "redis");
    assert!(
        !selects(
            &monitor["spec"]["selector"]["matchLabels"],
            &redis_service["metadata"]["labels"]
        ),
        "the ServiceMonitor would scrape Redis too"
    );
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service_port["name"]);
    let metrics_path = config
        .get("metrics")
        .and_then(|m| m.get("path"))
        .and_then(|p| p.as_str())
        .unwrap_or("/metrics");
    assert_eq!(endpoint["path"], metrics_path);
    let hpa = find(&docs, "HorizontalPodAutoscaler", "bon-proxy");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "bon-proxy");
    assert!(hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2);
    let pdb = find(&docs, "PodDisruptionBudget", "bon-proxy");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));

    // --- Redis: where cache.redis_url points, reachable by the proxy pods only.
    let redis_url = str_key(&config, "cache", "redis_url");
    let redis_port = redis_service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(redis_url, format!("redis://redis:{redis_port}"));
    let redis = find(&docs, "Deployment", "redis");
    let redis_labels = &redis["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&redis_service["spec"]["selector"], redis_labels));
    let policy = find(&docs, "NetworkPolicy", "redis");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        redis_labels
    ));
    assert!(selects(
        &policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        pod_labels
    ));
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], redis_port);
}

/// (key, secret name) of every secretKeyRef in a workload.
fn secret_refs(workload: &Value) -> Vec<(String, String)> {
    let mut refs = Vec::new();
    for c in workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
    {
        for e in c["env"].as_array().into_iter().flatten() {
            let r = &e["valueFrom"]["secretKeyRef"];
            if let (Some(key), Some(name)) = (r["key"].as_str(), r["name"].as_str()) {
                refs.push((key.to_string(), name.to_string()));
            }
        }
    }
    refs
}
