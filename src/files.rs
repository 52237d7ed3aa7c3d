//! File chores the stores share: moving a damaged file aside, reading a caught panic.

use std::path::{Path, PathBuf};

/// Renames `path` to `<path>.<suffix>` (adding `-1`, `-2`... if that exists); the new path. A
/// damaged store or ledger is moved, never deleted.
pub fn move_aside(path: &Path, suffix: &str) -> std::io::Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{suffix}"));
    let mut target = PathBuf::from(&name);
    let mut n = 0;
    while target.exists() {
        n += 1;
        let mut numbered = name.clone();
        numbered.push(format!("-{n}"));
        target = PathBuf::from(numbered);
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}

/// What a caught panic said (redb asserts on some damaged files).
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_files_never_overwrite_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("usage.redb");
        for n in 0..3 {
            std::fs::write(&p, format!("{n}")).unwrap();
            let moved = move_aside(&p, "damaged-7").unwrap();
            assert_eq!(std::fs::read_to_string(&moved).unwrap(), format!("{n}"));
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "usage.redb.damaged-7",
                "usage.redb.damaged-7-1",
                "usage.redb.damaged-7-2"
            ]
        );
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_text(&*caught), "boom 1");
    }
}
