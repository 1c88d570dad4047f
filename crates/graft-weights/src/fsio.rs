//! Opening files that are meant to be regular files.
//!
//! `File::open` on a FIFO blocks until a writer appears (forever, if none does), and reading
//! a character device such as `/dev/zero` or `/dev/urandom` never ends. A path given as a
//! weights file (or an image, a text file, a config) may be either, by mistake or by design,
//! so every reader of this crate opens through [`open_regular`], which refuses anything but a
//! regular file without blocking.

use std::fs::File;
use std::io;
use std::path::Path;

/// Opens `path` for reading if it is a regular file (after following symlinks), and refuses
/// a FIFO, socket, character or block device, or directory with an
/// [`io::ErrorKind::InvalidInput`] error saying what it is, without blocking.
///
/// On Unix the file is opened with `O_NONBLOCK` (so opening a FIFO with no writer returns at
/// once), checked with `fstat` on the open descriptor (no race between the check and the
/// open), and, if regular, switched back to blocking mode. Elsewhere it is opened normally
/// and checked the same way.
pub fn open_regular(path: &Path) -> io::Result<File> {
    open_regular_with(path, false)
}

/// [`open_regular`], and with `nofollow` a symbolic link at `path` itself is refused too
/// (`O_NOFOLLOW`: the open fails with `ELOOP`), for files inside folders a program owns.
pub fn open_regular_with(path: &Path, nofollow: bool) -> io::Result<File> {
    let file = open_nonblocking(path, nofollow)?;
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("is {}, not a regular file", describe(&kind)),
        ));
    }
    set_blocking(&file)?;
    Ok(file)
}

/// Reads the whole of a regular file (see [`open_regular`]), like [`std::fs::read`].
pub fn read_regular(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut file = open_regular(path)?;
    let mut buf = Vec::new();
    // The length is a hint only: the file may change while it is read.
    if let Ok(meta) = file.metadata() {
        buf.reserve_exact(usize::try_from(meta.len()).unwrap_or(0));
    }
    file.read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path, nofollow: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = libc::O_NONBLOCK | if nofollow { libc::O_NOFOLLOW } else { 0 };
    std::fs::OpenOptions::new().read(true).custom_flags(flags).open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path, _nofollow: bool) -> io::Result<File> {
    File::open(path)
}

#[cfg(unix)]
fn set_blocking(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(unix))]
fn set_blocking(_file: &File) -> io::Result<()> {
    Ok(())
}

fn describe(kind: &std::fs::FileType) -> &'static str {
    if kind.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
    }
    "not a regular file"
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("weights.pth");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let start = std::time::Instant::now();
        let err = open_regular(&fifo).unwrap_err();
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("FIFO"), "{err}");
    }

    #[test]
    fn devices_and_directories_are_refused_and_regular_files_read_blocking() {
        let err = open_regular(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let err = open_regular(dir.path()).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        let file = dir.path().join("w.bin");
        std::fs::write(&file, b"abc").unwrap();
        let f = open_regular(&file).unwrap();
        use std::os::unix::io::AsRawFd;
        let flags = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(flags & libc::O_NONBLOCK, 0, "O_NONBLOCK must be cleared");
        assert_eq!(read_regular(&file).unwrap(), b"abc");
    }
}
