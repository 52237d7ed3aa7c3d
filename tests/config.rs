//! `relay config check <file>`: the built binary, a clean environment with only the variables each
//! test sets, exit code and output.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `relay config check <file>` in `dir` with a cleared environment plus PATH and `vars`.
fn config_check(dir: &Path, file: &Path, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(["config", "check"])
        .arg(file)
        .current_dir(dir)
        .env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(vars.iter().copied());
    cmd.output().expect("run relay")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).expect("utf-8 output")
}

#[test]
fn valid_file_prints_the_masked_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.yaml");
    std::fs::write(
        &file,
        "\
server:
  listen: 127.0.0.1:9000
providers:
  - name: openai
    base_url: https://api.openai.com/v1
    api_key_env: TEST_OPENAI_KEY
redis:
  enabled: true
",
    )
    .unwrap();
    let out = config_check(
        dir.path(),
        &file,
        &[
            ("TEST_OPENAI_KEY", "sk-check-clear-value"),
            ("REDIS_PASSWORD", "redis-clear-value"),
        ],
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{}: ok", file.display())),
        "{stderr}"
    );
    assert!(stdout.contains("listen: 127.0.0.1:9000\n"), "{stdout}");
    assert!(
        stdout.contains("api_key_env: TEST_OPENAI_KEY\n"),
        "{stdout}"
    );
    assert!(stdout.contains("password: '***'\n"), "{stdout}");
    for clear in ["sk-check-clear-value", "redis-clear-value"] {
        assert!(!stdout.contains(clear), "secret on stdout: {stdout}");
        assert!(!stderr.contains(clear), "secret on stderr: {stderr}");
    }
}

#[test]
fn warnings_go_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("legacy.yaml");
    std::fs::write(
        &file,
        "server:\n  port: \":8080\"\ntransform:\n  enabled: false\n",
    )
    .unwrap();
    let out = config_check(dir.path(), &file, &[("RELAY_FOO", "1")]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert!(stdout.contains("listen: 0.0.0.0:8080\n"), "{stdout}");
    assert!(
        stderr.contains("warning: transform: a section of the original relay"),
        "{stderr}"
    );
    assert!(
        stderr.contains("warning: environment variable RELAY_FOO names no config key; ignored"),
        "{stderr}"
    );
}

#[test]
fn invalid_file_exits_1_naming_file_and_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "routes:\n  - provider: openai\n  - model: claude-*\n    provider: antropic\n",
    )
    .unwrap();
    let out = config_check(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(text(&out.stdout), "");
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: routes[1].provider: unknown provider \"antropic\" (known: openai, anthropic)\n",
            file.display()
        )
    );
}

#[test]
fn invalid_environment_value_exits_1_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relay.yaml");
    std::fs::write(&file, "server:\n  listen: 127.0.0.1:9000\n").unwrap();
    let out = config_check(dir.path(), &file, &[("RELAY_SERVER_MAX_BODY_BYTES", "big")]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: server.max_body_bytes: invalid type: string \"big\", expected u64 \
             (value from environment variable RELAY_SERVER_MAX_BODY_BYTES)\n",
            file.display()
        )
    );
}

#[test]
fn missing_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nope.yaml");
    let out = config_check(dir.path(), &file, &[]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {}: cannot read: ", file.display())),
        "{stderr}"
    );
}
