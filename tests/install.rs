//! install.sh into a temporary prefix and home: it installs a working binary and the example
//! config, a second run replaces the binary and keeps the (edited) config, and with no cargo it
//! stops with a clear message. The script's build step is skipped by pointing it at the binary cargo
//! built for these tests (`RELAY_INSTALL_BINARY`); everything after the build is the real script.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn install(home: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/install.sh"))
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env_remove("RELAY_INSTALL_BINARY");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn installs_into_a_prefix_and_is_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let prefix = tmp.path().join("prefix");
    std::fs::create_dir_all(&home).unwrap();
    let built = env!("CARGO_BIN_EXE_relay");
    let prefix_arg = prefix.display().to_string();
    let args = ["--prefix", prefix_arg.as_str()];
    let envs = [("RELAY_INSTALL_BINARY", built)];

    let out = install(&home, &args, &envs);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let bin = prefix.join("bin").join("relay");
    let config = home.join("config").join("relay").join("relay.yaml");
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(built).unwrap());
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/configs/relay.example.yaml"
    ))
    .unwrap();
    assert_eq!(std::fs::read_to_string(&config).unwrap(), example);
    assert!(
        stdout.contains("(new, from configs/relay.example.yaml)"),
        "{stdout}"
    );
    assert!(stdout.contains("next steps:"), "{stdout}");
    assert!(stdout.contains("relay serve"), "{stdout}");
    assert!(stdout.contains("is not on your PATH"), "{stdout}");
    // The installed binary runs, and validates the installed config.
    let check = Command::new(&bin)
        .args(["config", "check"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(check.status.success(), "{}", text(&check.stderr));

    // Second run: same result, the user's config edits kept, no leftovers.
    std::fs::write(&config, "server:\n  listen: 127.0.0.1:9999\n").unwrap();
    let out = install(&home, &args, &envs);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("(kept)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "server:\n  listen: 127.0.0.1:9999\n"
    );
    assert_eq!(std::fs::read(&bin).unwrap(), std::fs::read(built).unwrap());
    let entries: Vec<_> = std::fs::read_dir(prefix.join("bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, ["relay"]);
}

#[test]
fn default_prefix_is_home_local() {
    let tmp = tempfile::tempdir().unwrap();
    let envs = [("RELAY_INSTALL_BINARY", env!("CARGO_BIN_EXE_relay"))];
    let out = install(tmp.path(), &[], &envs);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(tmp.path().join(".local/bin/relay").is_file());
}

#[test]
fn without_cargo_it_fails_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix").display().to_string();
    let out = install(
        tmp.path(),
        &["--prefix", &prefix],
        &[("CARGO", "relay-test-no-such-cargo")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("cargo not found"), "{stderr}");
    assert!(stderr.contains("https://rustup.rs"), "{stderr}");
    assert!(!tmp.path().join("prefix").exists(), "nothing installed");
}

#[test]
fn bad_arguments_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = install(tmp.path(), &["--prefx", "/tmp/x"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown argument: --prefx"));
}
