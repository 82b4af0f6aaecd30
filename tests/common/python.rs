//! The Python interpreter that `scripts/test` installs (a virtualenv in `target/py` with the
//! official OpenAI SDK, its path in `BON_PYTHON`), and bounded runs of scripts with it, so tests
//! can drive a proxy on loopback with the SDK real users have.
//!
//! A test that needs Python never looks for one on the machine and never skips: without
//! `BON_PYTHON`, or with one that cannot `import openai`, it fails and says to run
//! `scripts/test`.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What to do when the interpreter is missing; part of every such failure.
pub const SETUP: &str = "run scripts/test, which installs the Python SDK the tests use";

/// Longest a script may run before it is killed: far above what a request to a local proxy
/// takes, short enough that a hung script fails the test instead of stalling the suite.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The virtualenv's interpreter, checked once per test binary to import the OpenAI SDK.
pub fn python() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match CHECKED.get_or_init(find_python) {
        Ok(path) => path.clone(),
        Err(why) => panic!("{why}: {SETUP}"),
    }
}

fn find_python() -> Result<PathBuf, String> {
    let path = match std::env::var_os("BON_PYTHON") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => return Err("BON_PYTHON is not set".into()),
    };
    let mut cmd = Command::new(&path);
    cmd.args(["-c", "import openai"]);
    let out = output_within(cmd, SCRIPT_TIMEOUT)
        .map_err(|e| format!("BON_PYTHON={} cannot be run ({e})", path.display()))?;
    if !out.status.success() {
        return Err(format!(
            "BON_PYTHON={} cannot import openai ({}): {}",
            path.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(path)
}

/// Runs `script` with [`python()`] and `env`, killed after [`SCRIPT_TIMEOUT`].
///
/// The child gets none of the caller's `OPENAI_*` variables, so a script must say where it
/// connects and with which key, as a snippet a user copies has to; `env` adds variables.
pub fn run_python(script: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(script);
    without_openai_env(&mut cmd);
    // Unbuffered, so a script killed at the timeout still shows what it printed.
    cmd.env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd.envs(env.iter().copied());
    output_within(cmd, SCRIPT_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot start {}: {e}; {SETUP}", python().display()))
}

/// Removes every `OPENAI_*` variable (key, base URL, organisation…) the SDK would read.
pub fn without_openai_env(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OPENAI_") {
            cmd.env_remove(name);
        }
    }
}

/// Runs `cmd` to completion, its stdin empty, and kills it and everything it started when it
/// is still running after `limit`; its status is then the kill's, and stderr says so.
///
/// Output goes to files rather than pipes: a pipe left open by a grandchild (a shell's
/// background job) would otherwise block the read after the child itself has exited.
pub fn output_within(mut cmd: Command, limit: Duration) -> std::io::Result<Output> {
    use std::os::unix::process::CommandExt;

    let dir = tempfile::tempdir()?;
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    // Its own process group, so that a timeout can end the processes it started as well.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .process_group(0)
        .spawn()?;
    let deadline = Instant::now() + limit;
    let (status, timed_out): (ExitStatus, bool) = loop {
        if let Some(status) = child.try_wait()? {
            break (status, false);
        }
        if Instant::now() >= deadline {
            kill_group(child.id());
            let _ = child.kill();
            break (child.wait()?, true);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // Whatever the child left running in its group goes too (its own exit does not end them).
    kill_group(child.id());
    let mut stderr = std::fs::read(&err_path)?;
    if timed_out {
        stderr.extend_from_slice(format!("\n[killed after {limit:?}]\n").as_bytes());
    }
    Ok(Output {
        status,
        stdout: std::fs::read(&out_path)?,
        stderr,
    })
}

/// SIGKILL to process group `pgid`, through the shell's `kill` builtin (no `kill` binary and no
/// libc binding needed; dash's takes no `--`, hence `-9 -PGID`); a group that no longer exists
/// is no error.
fn kill_group(pgid: u32) {
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -9 -{pgid} 2>/dev/null")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
