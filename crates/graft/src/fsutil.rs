//! Crash-safe file writing: a reader sees the old file or the new one, never half of one.

use std::io::Write;
use std::path::Path;

use crate::{GraftError, Result};

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| GraftError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        GraftError::io(path, e)
    })
}

/// Removes what a killed [`write_atomic`] left in `dir`: `.NAME.tmp-PID` files whose writer is
/// no longer running (and `.NAME.repair` copies, which only a dead process can have left).
/// Returns the names removed. Called when a run is resumed.
pub fn remove_stale_temps(dir: &Path) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(removed),
        Err(e) => return Err(GraftError::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| GraftError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') {
            continue;
        }
        // `.NAME.tmp-PID` (write_atomic) or `.NAME.tmp-PID-N` (graft-weights' safetensors writer).
        let stale = if let Some((_, suffix)) = name.rsplit_once(".tmp-") {
            match suffix.split('-').next().unwrap_or("").parse::<u32>() {
                Ok(pid) => pid != std::process::id() && !process_alive(pid),
                Err(_) => false,
            }
        } else {
            name.ends_with(".repair")
        };
        if stale {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| GraftError::io(&path, e))?;
            removed.push(name);
        }
    }
    Ok(removed)
}

fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        // No cheap portable check: assume dead (a run directory has one writer at a time).
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_temps_of_dead_writers_are_removed_and_nothing_else() {
        let dir = std::env::temp_dir().join(format!("graft-fsutil-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        // pid_max is at most 2^22 on Linux, so this writer cannot be alive.
        let dead = ".last.safetensors.tmp-4999999";
        let dead_counted = ".best.safetensors.tmp-4999998-3";
        let mine = format!(".metrics.jsonl.tmp-{}", std::process::id());
        for name in [dead, dead_counted, mine.as_str(), ".best.safetensors.repair", "last.safetensors", ".hidden"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        write_atomic(&dir.join("config.toml"), b"a = 1").unwrap();
        let mut removed = remove_stale_temps(&dir).unwrap();
        removed.sort();
        assert_eq!(removed, vec![".best.safetensors.repair".to_string(), dead_counted.to_string(), dead.to_string()]);
        let mut left: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, vec![".hidden".to_string(), mine, "config.toml".to_string(), "last.safetensors".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
