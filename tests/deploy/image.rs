//! The container image: `hadolint` lints `deploy/Dockerfile`, and the build context (the
//! `Dockerfile.dockerignore` allowlist) holds everything it copies, every Cargo target
//! included.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::tools::{check, deploy, read, root, text};

#[test]
fn hadolint_passes_the_dockerfile() {
    // Any finding fails, style and info included (hadolint's default threshold).
    check("hadolint", &["--no-color", "deploy/Dockerfile"]);
}

#[test]
fn the_image_build_context_holds_what_the_dockerfile_copies() {
    let dockerfile = read(&deploy("Dockerfile"));
    let ignore = read(&deploy("Dockerfile.dockerignore"));
    // The ignore file is an allowlist: `*`, then `!path` for each path let through.
    let allowed: BTreeSet<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .collect();
    assert!(
        ignore.lines().any(|l| l.trim() == "*"),
        "allowlist expected"
    );
    let mut copied = BTreeSet::new();
    for line in dockerfile.lines() {
        let Some(args) = line.trim().strip_prefix("COPY ") else {
            continue;
        };
        if args.contains("--from=") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(
                root().join(source).exists(),
                "deploy/Dockerfile copies {source}, which is not in the repository"
            );
            assert!(
                allowed.contains(source),
                "deploy/Dockerfile copies {source}, which Dockerfile.dockerignore leaves out"
            );
            copied.insert(source.to_string());
        }
    }
    // Cargo refuses a manifest whose library, binaries, benches or build script are missing,
    // even when building one binary: each must be in what the build stage copies.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--offline",
            "--format-version",
            "1",
        ])
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", text(&out));
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    for target in metadata["packages"][0]["targets"].as_array().unwrap() {
        let kinds = target["kind"].as_array().unwrap();
        if !kinds
            .iter()
            .any(|k| ["lib", "bin", "bench", "custom-build"].contains(&k.as_str().unwrap()))
        {
            continue;
        }
        let path = Path::new(target["src_path"].as_str().unwrap());
        let relative = path.strip_prefix(root()).expect("a target inside the repo");
        let top = relative.components().next().unwrap().as_os_str();
        assert!(
            copied.contains(&*top.to_string_lossy()),
            "target {} ({}) is not copied into the build stage",
            target["name"],
            relative.display()
        );
    }
    for file in ["Cargo.toml", "Cargo.lock"] {
        assert!(copied.contains(file), "{file} is not copied");
    }
    // The image listens where EXPOSE, the HEALTHCHECK and the manifests say.
    assert!(dockerfile.contains("BON_LISTEN=0.0.0.0:8080"));
    assert!(dockerfile.contains("EXPOSE 8080"));
    assert!(dockerfile.contains("http://127.0.0.1:8080/healthz"));
    assert!(dockerfile.contains("BON_CONFIG=/etc/bon-proxy/proxy.toml"));
    assert!(dockerfile.contains("cargo build --release --locked"));
}
