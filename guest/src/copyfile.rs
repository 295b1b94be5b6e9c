//! CopyFile: the host streams files (image layer blobs) into guest memory in chunks.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::error::{AgentError, Result};

/// Write one chunk of `data` at `offset` of `path` (which must be below `base`).
pub fn copy_chunk(
    base: &Path,
    path: &str,
    offset: i64,
    data: &[u8],
    file_mode: u32,
    dir_mode: u32,
) -> Result<()> {
    let p = PathBuf::from(path);
    let inside = p.is_absolute()
        && p.starts_with(base)
        && p.components()
            .all(|c| !matches!(c, Component::ParentDir | Component::CurDir))
        && p != base;
    if !inside {
        return Err(AgentError::invalid(format!(
            "CopyFile: path {path:?} is not below {}",
            base.display()
        )));
    }
    if offset < 0 {
        return Err(AgentError::invalid(format!(
            "CopyFile {path}: negative offset {offset}"
        )));
    }
    let dir_mode = if dir_mode == 0 {
        0o750
    } else {
        dir_mode & 0o7777
    };
    if let Some(parent) = p.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(dir_mode)
            .create(parent)
            .map_err(|e| AgentError::io("CopyFile: creating directory", parent, e))?;
    }
    // Refuse a symlink planted at the destination (nothing but CopyFile writes here).
    if let Ok(md) = fs::symlink_metadata(&p) {
        if !md.is_file() {
            return Err(AgentError::invalid(format!(
                "CopyFile: {path} exists and is not a regular file"
            )));
        }
    }
    let mut f = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(offset == 0)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(&p)
        .map_err(|e| AgentError::io("CopyFile: opening", &p, e))?;
    f.seek(SeekFrom::Start(offset as u64))
        .map_err(|e| AgentError::io("CopyFile: seeking in", &p, e))?;
    f.write_all(data)
        .map_err(|e| AgentError::io("CopyFile: writing", &p, e))?;
    let mode = if file_mode == 0 {
        0o600
    } else {
        file_mode & 0o7777
    };
    fs::set_permissions(&p, fs::Permissions::from_mode(mode))
        .map_err(|e| AgentError::io("CopyFile: chmod", &p, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_assemble_and_paths_outside_are_refused() {
        let t = tempfile::tempdir().expect("tmp");
        let base = t.path().join("layers");
        let f = base.join("sub/abc");
        let fs_ = f.to_str().expect("utf8");
        copy_chunk(&base, fs_, 0, b"hello ", 0o644, 0o750).expect("chunk 1");
        copy_chunk(&base, fs_, 6, b"world", 0o644, 0o750).expect("chunk 2");
        assert_eq!(fs::read(&f).expect("read"), b"hello world");
        let bad = format!("{}/../x", base.display());
        let e = copy_chunk(&base, &bad, 0, b"x", 0, 0).expect_err("escape");
        assert!(e.to_string().contains("is not below"), "{e}");
        let e = copy_chunk(&base, "/etc/passwd", 0, b"x", 0, 0).expect_err("outside");
        assert!(e.to_string().contains("/etc/passwd"), "{e}");
    }
}
