//! Files graft opens on a user's behalf.
//!
//! * Reading: [`open_regular`] / [`read_regular`] refuse FIFOs, devices, sockets and folders
//!   (a FIFO would block graft forever) and cap what a whole-file read may allocate.
//! * Run directories: [`write_atomic`] (a reader sees the old file or the new one, never half
//!   of one), [`append_nofollow`], [`create_dir_nofollow`] and [`check_run_dir`] never follow a
//!   symbolic link planted inside a run directory, so nothing graft writes there can be
//!   redirected to a file outside it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::{GraftError, Result};

fn refuse(path: &Path, reason: impl Into<String>) -> GraftError {
    GraftError::Data { path: path.to_path_buf(), reason: reason.into() }
}

/// What a file that is not a regular file is, for an error message.
fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a folder"
    } else if file_type.is_fifo() {
        "a FIFO (named pipe)"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device"
    } else if file_type.is_symlink() {
        "a symbolic link"
    } else {
        "an unknown kind of file"
    }
}

const LINK_REFUSED: &str = "is a symbolic link; graft follows no links inside its run and cache folders (remove it)";

fn open_read(path: &Path, nofollow: bool) -> Result<File> {
    graft_weights::fsio::open_regular_with(path, nofollow).map_err(|e| {
        if nofollow && e.raw_os_error() == Some(libc::ELOOP) {
            refuse(path, LINK_REFUSED)
        } else if e.raw_os_error() == Some(libc::ENXIO) && std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            refuse(path, "is a socket, not a regular file; graft reads only regular files")
        } else if e.kind() == std::io::ErrorKind::InvalidInput {
            // The weights crate's refusal of a FIFO, device or folder says what it is.
            refuse(path, format!("{e}; graft reads only regular files"))
        } else {
            GraftError::io(path, e)
        }
    })
}

/// Opens `path` for reading if it is a regular file (symbolic links followed); FIFOs, devices,
/// sockets and folders are refused with an error naming the file, without blocking.
pub fn open_regular(path: &Path) -> Result<File> {
    open_read(path, false)
}

/// [`open_regular`] for a file inside a run directory: a symbolic link is refused too.
pub fn open_regular_nofollow(path: &Path) -> Result<File> {
    open_read(path, true)
}

fn read_capped(path: &Path, mut file: File, max: u64) -> Result<Vec<u8>> {
    let len = file.metadata().map_err(|e| GraftError::io(path, e))?.len();
    let too_big = |size: String| refuse(path, format!("file is {size} bytes, over the limit of {max} bytes for this kind of file"));
    if len > max {
        return Err(too_big(len.to_string()));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // Read one byte past the limit: a file growing while read is caught too.
    (&mut file).take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(|e| GraftError::io(path, e))?;
    if bytes.len() as u64 > max {
        return Err(too_big(format!("more than {max}")));
    }
    Ok(bytes)
}

/// The whole of the regular file `path` (see [`open_regular`]), refused when over `max` bytes
/// (before anything is allocated for it).
pub fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>> {
    read_capped(path, open_regular(path)?, max)
}

/// [`read_regular`] for a file inside a run directory: a symbolic link is refused.
pub fn read_run_file(path: &Path, max: u64) -> Result<Vec<u8>> {
    read_capped(path, open_regular_nofollow(path)?, max)
}

/// [`read_run_file`] of a text file (config, JSON, metrics) of at most `max` bytes, or `None`
/// when it does not exist.
pub fn read_run_text(path: &Path, max: u64) -> Result<Option<String>> {
    match read_run_file(path, max) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(GraftError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens `path` (in a run directory) for appending, creating it if missing; a symbolic link
/// there is refused instead of followed.
pub fn append_nofollow(path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| if e.raw_os_error() == Some(libc::ELOOP) { refuse(path, LINK_REFUSED) } else { GraftError::io(path, e) })?;
    let file_type = file.metadata().map_err(|e| GraftError::io(path, e))?.file_type();
    if !file_type.is_file() {
        return Err(refuse(path, format!("is {}, not a regular file", kind_of(file_type))));
    }
    Ok(file)
}

/// Creates the folder `dir` (its parent must exist) unless it is already a real folder; a
/// symbolic link or any other file there is refused.
pub fn create_dir_nofollow(dir: &Path) -> Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.file_type().is_symlink() => Err(refuse(dir, LINK_REFUSED)),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) => Err(refuse(dir, format!("is {}, expected a folder", kind_of(m.file_type())))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match std::fs::create_dir(dir) {
            Ok(()) => Ok(()),
            // Created by someone else meanwhile: check it again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => match std::fs::symlink_metadata(dir) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(refuse(dir, "is not a folder")),
            },
            Err(e) => Err(GraftError::io(dir, e)),
        },
        Err(e) => Err(GraftError::io(dir, e)),
    }
}

/// Refuses a run directory holding a symbolic link anywhere inside it (the directory itself
/// may be one: the user chose it), naming the link: graft reads and writes a run's files by
/// name, and a planted link would send them elsewhere.
pub fn check_run_dir(run: &Path) -> Result<()> {
    fn walk(dir: &Path, depth: usize) -> Result<()> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(GraftError::io(dir, e)),
        };
        for entry in entries {
            let entry = entry.map_err(|e| GraftError::io(dir, e))?;
            let file_type = entry.file_type().map_err(|e| GraftError::io(entry.path(), e))?;
            if file_type.is_symlink() {
                return Err(refuse(&entry.path(), LINK_REFUSED));
            }
            if file_type.is_dir() && depth < 4 {
                walk(&entry.path(), depth + 1)?;
            }
        }
        Ok(())
    }
    walk(run, 0)
}

/// Prepares `run` for a new run: creates it (and its parents) if missing, else requires it to
/// be an empty folder; `setting` (`out`) names the setting in the refusal. Returns whether the
/// folder was created here, so a failed start can remove it again.
pub fn prepare_fresh_run_dir(run: &Path, setting: &str) -> Result<bool> {
    match std::fs::read_dir(run) {
        Ok(mut entries) => {
            if let Some(entry) = entries.next() {
                let entry = entry.map_err(|e| GraftError::io(run, e))?;
                if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                    return Err(refuse(&entry.path(), LINK_REFUSED));
                }
                return Err(GraftError::setting(
                    setting,
                    &run.display().to_string(),
                    format!("already holds `{}`; a new run needs an empty or new folder (choose another folder, or remove it)", entry.file_name().to_string_lossy()),
                ));
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(run).map_err(|e| GraftError::io(run, e))?;
            Ok(true)
        }
        Err(e) => Err(GraftError::io(run, e)),
    }
}

/// Before a fresh run starts in `run`: `Some(true)` when the folder does not exist yet,
/// `Some(false)` when it is empty (or holds only the `config.toml` of a start killed before
/// `model.json`), `None` when it holds anything else (the start will be refused, and what is
/// there must stay).
pub fn fresh_run_state(run: &Path) -> Option<bool> {
    match std::fs::read_dir(run) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(true),
        Err(_) => None,
        Ok(entries) => {
            let entries: Vec<_> = entries.flatten().collect();
            let config_only = entries.len() == 1 && entries[0].file_name() == "config.toml" && entries[0].file_type().is_ok_and(|t| t.is_file());
            (entries.is_empty() || config_only).then_some(false)
        }
    }
}

/// Undoes a failed start: removes `run` if [`prepare_fresh_run_dir`] created it, else empties
/// it again. Links inside are removed, never followed.
pub fn remove_failed_run(run: &Path, created: bool) {
    if created {
        let _ = std::fs::remove_dir_all(run);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(run) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

/// Creates the temporary file `path` for writing: whatever is at that name (a leftover of this
/// process, or a planted link) is removed first, then the file is created exclusively and never
/// through a symbolic link.
pub fn create_temp(path: &Path) -> std::io::Result<File> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new().write(true).create_new(true).custom_flags(libc::O_NOFOLLOW).open(path)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
/// The temporary is created exclusively and never through a link; the rename replaces a link
/// at `path` itself rather than writing through it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| GraftError::io(dir, e))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = create_temp(&tmp)?;
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

    fn fresh_dir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("graft-fsutil-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn fifos_devices_and_folders_are_refused_and_reads_are_capped() {
        let dir = fresh_dir("regular");
        let fifo = dir.join("pipe.png");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        // Returns at once (no writer will ever come).
        let err = read_regular(&fifo, 100).unwrap_err().to_string();
        assert!(err.contains("pipe.png") && err.contains("FIFO"), "{err}");
        let err = read_regular(Path::new("/dev/zero"), 100).unwrap_err().to_string();
        assert!(err.contains("/dev/zero: is a character device"), "{err}");
        assert!(read_regular(&dir, 100).unwrap_err().to_string().contains("is a directory"));
        let file = dir.join("ten.bin");
        std::fs::write(&file, [7u8; 10]).unwrap();
        assert_eq!(read_regular(&file, 10).unwrap(), vec![7u8; 10]);
        assert_eq!(read_regular(&file, u64::MAX).unwrap(), vec![7u8; 10], "no limit");
        let err = read_regular(&file, 9).unwrap_err().to_string();
        assert!(err.contains("ten.bin") && err.contains("over the limit of 9 bytes"), "{err}");
        // Links are followed by open_regular, refused by the run-directory variant.
        let link = dir.join("link.bin");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(read_regular(&link, 10).is_ok());
        let err = read_run_file(&link, 10).unwrap_err().to_string();
        assert!(err.contains("link.bin: is a symbolic link"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn links_in_a_run_directory_are_refused_and_never_written_through() {
        let dir = fresh_dir("links");
        let outside = dir.join("outside.txt");
        std::fs::write(&outside, b"outside").unwrap();
        let run = dir.join("run");
        assert!(prepare_fresh_run_dir(&run, "out").unwrap(), "created");
        assert!(!prepare_fresh_run_dir(&run, "out").unwrap(), "empty: reused");
        std::os::unix::fs::symlink(&outside, run.join("metrics.jsonl")).unwrap();
        std::os::unix::fs::symlink(&dir, run.join("tb")).unwrap();
        let err = append_nofollow(&run.join("metrics.jsonl")).unwrap_err().to_string();
        assert!(err.contains("metrics.jsonl: is a symbolic link"), "{err}");
        let err = create_dir_nofollow(&run.join("tb")).unwrap_err().to_string();
        assert!(err.contains("tb: is a symbolic link"), "{err}");
        let err = check_run_dir(&run).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        let err = prepare_fresh_run_dir(&run, "out").unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        // write_atomic replaces a link at its path; it never writes through it.
        write_atomic(&run.join("metrics.jsonl"), b"inside").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        assert!(std::fs::symlink_metadata(run.join("metrics.jsonl")).unwrap().is_file());
        // A planted temporary-name link is removed, not followed.
        let tmp = run.join(format!(".config.toml.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        write_atomic(&run.join("config.toml"), b"a = 1").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"outside");
        // Anything else in a fresh --out is refused naming it; a failed start empties only
        // a folder it found empty.
        std::fs::remove_file(run.join("tb")).unwrap();
        let err = prepare_fresh_run_dir(&run, "out").unwrap_err().to_string();
        assert!(err.starts_with("invalid out") && err.contains("already holds `"), "{err}");
        assert_eq!(fresh_run_state(&run), None);
        assert_eq!(fresh_run_state(&dir.join("nothing")), Some(true));
        remove_failed_run(&run, false);
        assert_eq!(std::fs::read_dir(&run).unwrap().count(), 0);
        assert_eq!(fresh_run_state(&run), Some(false));
        std::fs::remove_dir_all(&dir).unwrap();
    }

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

/// Reads a TOML file of type `T` (a config; its size checked before it is read), naming the file
/// in every error.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = read_regular(path, crate::limits::MAX_CONFIG_FILE_BYTES)?;
    let text = String::from_utf8(bytes).map_err(|_| GraftError::Data { path: path.into(), reason: "not UTF-8 text".into() })?;
    toml::from_str(&text).map_err(|e| GraftError::Data { path: path.into(), reason: crate::limits::shorten_message(&e.to_string()) })
}

/// The files a run directory describes itself in: `model.json`, and before run format 2 an MLP
/// run's `mlp.json` or a pretraining run's `pretrain.json`.
pub const RUN_FILES: [&str; 3] = ["model.json", "mlp.json", "pretrain.json"];

/// Whether `run` already holds a run (any of [`RUN_FILES`], even a dangling link).
pub fn holds_run(run: &Path) -> bool {
    RUN_FILES.iter().any(|f| run.join(f).symlink_metadata().is_ok())
}
