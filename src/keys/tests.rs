use super::store::{KeyStore, RedbKeys};
use super::*;

fn spec(name: &str) -> KeySpec {
    KeySpec {
        name: name.to_string(),
        ..KeySpec::default()
    }
}

#[test]
fn issued_keys_are_random_prefixed_and_stored_as_hashes_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.redb");
    let store = RedbKeys::open(&path).unwrap();
    let (a, rec) = create(&store, &spec("ci"), 1_000).unwrap();
    let (b, _) = create(&store, &spec("dev"), 1_000).unwrap();
    assert!(a.expose().starts_with("relay-") && a.expose().len() == 6 + 48);
    assert_ne!(a.expose(), b.expose());
    assert_eq!(rec.hash, hash_hex(a.expose()));
    drop(store);
    let bytes = std::fs::read(&path).unwrap();
    let hay = String::from_utf8_lossy(&bytes);
    assert!(!hay.contains(a.expose()) && !hay.contains(&a.expose()[6..]));
    assert!(hay.contains(&rec.hash), "the hash is what is kept");
}

#[test]
fn ring_tells_missing_unknown_revoked_expired_and_rotated_apart() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbKeys::open(&dir.path().join("k.redb")).unwrap();
    let (ci, _) = create(
        &store,
        &KeySpec {
            expires_in_secs: Some(60),
            ..spec("ci")
        },
        0,
    )
    .unwrap();
    let (dev, _) = create(&store, &spec("dev"), 0).unwrap();
    let (old, _) = create(&store, &spec("bot"), 0).unwrap();
    let (new, _) = rotate(&store, "bot", 5).unwrap();
    revoke(&store, "dev", 5).unwrap();
    let ring = KeyRing::new(store.all().unwrap());
    assert_eq!(ring.check(Some(ci.expose()), 59_999).unwrap().name, "ci");
    assert_eq!(
        ring.check(Some(ci.expose()), 60_000).unwrap_err(),
        Denied::Expired("ci".into())
    );
    assert_eq!(
        ring.check(Some(dev.expose()), 1).unwrap_err(),
        Denied::Revoked("dev".into())
    );
    assert_eq!(
        ring.check(Some(old.expose()), 1).unwrap_err(),
        Denied::Rotated("bot".into())
    );
    assert_eq!(ring.check(Some(new.expose()), 1).unwrap().name, "bot");
    assert_eq!(ring.check(None, 1).unwrap_err(), Denied::Missing);
    assert_eq!(
        ring.check(Some("sk-proj-abc"), 1).unwrap_err(),
        Denied::Unknown {
            relay_shaped: false
        }
    );
    assert_eq!(
        ring.check(Some("relay-00"), 1).unwrap_err(),
        Denied::Unknown { relay_shaped: true }
    );
    let names: Vec<String> = ring.records().iter().map(|r| r.name.clone()).collect();
    assert_eq!(names, ["bot", "ci", "dev"]);
}

#[test]
fn names_are_unique_while_active_and_specs_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = RedbKeys::open(&dir.path().join("k.redb")).unwrap();
    create(&store, &spec("ci"), 0).unwrap();
    assert_eq!(
        create(&store, &spec("ci"), 0).unwrap_err(),
        KeyError::Exists("ci".into())
    );
    revoke(&store, "ci", 1).unwrap();
    create(&store, &spec("ci"), 2).expect("a revoked name can be used again");
    assert_eq!(
        rotate(&store, "nope", 0).unwrap_err(),
        KeyError::NotFound("nope".into())
    );
    for (bad, field) in [
        (spec(""), "name"),
        (spec("key-abc"), "name"),
        (spec("a b"), "name"),
        (spec("none"), "name"),
        (
            KeySpec {
                models: vec!["[".into()],
                ..spec("m")
            },
            "models",
        ),
        (
            KeySpec {
                daily_budget: Some(-1.0),
                ..spec("m")
            },
            "daily_budget",
        ),
        (
            KeySpec {
                rps: Some(0.0),
                ..spec("m")
            },
            "rps",
        ),
        (
            KeySpec {
                tpm: Some(0),
                ..spec("m")
            },
            "tpm",
        ),
    ] {
        match bad.record(String::new(), 0) {
            Err(KeyError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad:?}"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
}

#[test]
fn model_globs_and_budgets() {
    let r = KeySpec {
        models: vec!["gpt-4o*".into(), "claude-*".into()],
        daily_budget: Some(1.5),
        ..spec("m")
    }
    .record(String::new(), 0)
    .unwrap();
    assert!(r.allows(Some("gpt-4o-mini")) && r.allows(Some("claude-sonnet-4-5")));
    assert!(!r.allows(Some("o3")) && r.allows(None));
    assert_eq!(r.budget().unwrap().daily, Some(1_500_000));
    assert!(r.limits().is_none());
    assert!(spec("x")
        .record(String::new(), 0)
        .unwrap()
        .allows(Some("o3")));
}
