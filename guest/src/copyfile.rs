//! CopyFile: with no shared filesystem the host copies files, directories and symbolic links
//! (volumes, hosts, resolv.conf, image layer blobs) into the guest, below the shared directory,
//! with Kata's semantics:
//! - `file_mode` carries the type (`S_IFREG`, `S_IFDIR`, `S_IFLNK`) and the permission bits;
//!   missing parents are made with `dir_mode` (Go's `ModeDir` bit set: only the low bits count);
//! - a regular file arrives in chunks (`offset`, `file_size`) into a temporary file in the same
//!   directory that is renamed into place when complete, so replacing a file is atomic;
//! - a directory is made (or kept) and given the mode and owner;
//! - a symbolic link (target = `data`) is made under a temporary name and renamed into place, so
//!   the kubelet's atomic `..data` swap stays atomic in the guest.
//!
//! The host is not trusted: the path must be below the shared directory without `.` or `..`;
//! every parent is opened without following symbolic links (a link planted earlier, say
//! `..data -> /etc`, cannot carry a later write outside); a link target must be relative, free
//! of `..`, and the link must sit inside a copied directory (as Kata's generated policies
//! require). Then a link can only point into its own directory's subtree.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, renameat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::error::AgentError;

pub const S_IFMT: u32 = libc::S_IFMT;
pub const S_IFREG: u32 = libc::S_IFREG;
pub const S_IFDIR: u32 = libc::S_IFDIR;
pub const S_IFLNK: u32 = libc::S_IFLNK;
/// Permission bits of the copied entry itself (setuid, setgid, sticky included).
const FILE_PERMS: u32 = 0o7777;
/// Permission bits of parents made on the way.
const DIR_PERMS: u32 = 0o777;
/// Suffix of a regular file's temporary name while its chunks arrive.
const PART_SUFFIX: &str = ".kata-cc-part";
/// Suffix of a symbolic link's temporary name.
const LINK_SUFFIX: &str = ".kata-cc-link";

/// The entry a CopyFileRequest makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Directory,
    Symlink,
}

/// The type bits of `file_mode`. No type bits at all is a regular file (what older runtimes
/// send for plain files, and what Kata's agent writes then); any other type is refused.
pub fn kind(file_mode: u32) -> Option<Kind> {
    match file_mode & S_IFMT {
        S_IFREG | 0 => Some(Kind::Regular),
        S_IFDIR => Some(Kind::Directory),
        S_IFLNK => Some(Kind::Symlink),
        _ => None,
    }
}

/// The fields of a CopyFileRequest this module acts on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub path: &'a str,
    pub file_mode: u32,
    pub dir_mode: u32,
    pub uid: i32,
    pub gid: i32,
    pub offset: i64,
    pub file_size: i64,
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn from_proto(r: &'a agent_proto::agent::CopyFileRequest) -> Request<'a> {
        Request {
            path: &r.path,
            file_mode: r.file_mode,
            dir_mode: r.dir_mode,
            uid: r.uid,
            gid: r.gid,
            offset: r.offset,
            file_size: r.file_size,
            data: &r.data,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("CopyFile {path}: not below {base}")]
    Outside { path: String, base: String },
    #[error("CopyFile {path}: '.' and '..' components are refused")]
    Traversal { path: String },
    #[error(
        "CopyFile {path}: file_mode {mode:#o} is neither a regular file, a directory nor a \
         symbolic link"
    )]
    UnknownType { path: String, mode: u32 },
    #[error("CopyFile {path}: negative offset {offset} or file_size {file_size}")]
    BadOffset {
        path: String,
        offset: i64,
        file_size: i64,
    },
    #[error(
        "CopyFile {path}: chunk at offset {offset} but no earlier chunk of this file is pending"
    )]
    NoStart { path: String, offset: i64 },
    #[error("CopyFile {path}: {size} bytes received, more than file_size {file_size}")]
    TooLong {
        path: String,
        size: i64,
        file_size: i64,
    },
    #[error(
        "CopyFile {path}: a symbolic link directly in {base} is refused: links are allowed \
         inside a copied directory only"
    )]
    TopLevelLink { path: String, base: String },
    #[error("CopyFile {path}: symbolic link target {target:?}: {why}")]
    BadTarget {
        path: String,
        target: String,
        why: &'static str,
    },
    #[error("CopyFile {path}: parent {parent} is a symbolic link or not a directory")]
    ParentNotDir { path: String, parent: String },
    #[error("CopyFile {path}: parent resolves to {resolved}, outside {base}")]
    ParentOutside {
        path: String,
        resolved: String,
        base: String,
    },
    #[error("CopyFile {path}: {op} {target}: {errno}")]
    Sys {
        path: String,
        op: &'static str,
        target: String,
        errno: Errno,
    },
}

impl From<CopyError> for AgentError {
    fn from(e: CopyError) -> Self {
        match e {
            CopyError::Sys { .. } => AgentError::Internal(e.to_string()),
            _ => AgentError::InvalidArgument(e.to_string()),
        }
    }
}

/// Performs one CopyFileRequest below `base` (the shared directory, created if missing).
pub fn copy(base: &Path, r: &Request) -> Result<(), CopyError> {
    let path = r.path.to_string();
    let kind = kind(r.file_mode).ok_or_else(|| CopyError::UnknownType {
        path: path.clone(),
        mode: r.file_mode,
    })?;
    let p = Path::new(r.path);
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return Err(CopyError::Traversal { path });
    }
    let rel = match p.strip_prefix(base) {
        Ok(rel) if p.is_absolute() && !rel.as_os_str().is_empty() => rel.to_path_buf(),
        _ => {
            return Err(CopyError::Outside {
                path,
                base: base.display().to_string(),
            })
        }
    };
    let names: Vec<&OsStr> = rel.iter().collect();
    let (name, parents) = names.split_last().ok_or_else(|| CopyError::Outside {
        path: path.clone(),
        base: base.display().to_string(),
    })?;
    let target = match kind {
        Kind::Symlink => Some(check_link(base, &path, parents, r.data)?),
        _ => None,
    };
    if r.offset < 0 || r.file_size < 0 {
        return Err(CopyError::BadOffset {
            path,
            offset: r.offset,
            file_size: r.file_size,
        });
    }

    let cx = Ctx { path: path.clone() };
    std::fs::create_dir_all(base).map_err(|e| CopyError::Sys {
        path: path.clone(),
        op: "creating",
        target: base.display().to_string(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let canonical_base = std::fs::canonicalize(base).map_err(|e| CopyError::Sys {
        path: path.clone(),
        op: "resolving",
        target: base.display().to_string(),
        errno: Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)),
    })?;
    let mut dir = open_dir(None, canonical_base.as_os_str(), false)
        .map_err(cx.sys("opening", &canonical_base))?;
    let mut walked = canonical_base.clone();
    for (i, comp) in parents.iter().enumerate() {
        walked.push(comp);
        let next = match open_dir(Some(&dir), comp, true) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => {
                let mode = Mode::from_bits_truncate(parent_mode(r.dir_mode));
                match mkdirat(&dir, *comp, mode) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(cx.sys("creating directory", &walked)(e)),
                }
                let fd = open_dir(Some(&dir), comp, true)
                    .map_err(|e| not_dir(e, &path, &walked, cx.sys("opening", &walked)))?;
                // The mode asked for, whatever the umask.
                fchmod(&fd, mode).map_err(cx.sys("chmod", &walked))?;
                fd
            }
            Err(e) => return Err(not_dir(e, &path, &walked, cx.sys("opening", &walked))),
        };
        // As Kata: the immediate parent gets the entry's owner (never the shared dir itself).
        if i + 1 == parents.len() {
            fchown(&next, uid(r.uid), gid(r.gid)).map_err(cx.sys("chown", &walked))?;
        }
        dir = next;
    }
    // Defence in depth: the directory actually opened is still below the base.
    if let Ok(resolved) = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd())) {
        if !resolved.starts_with(&canonical_base) {
            return Err(CopyError::ParentOutside {
                path,
                resolved: resolved.display().to_string(),
                base: canonical_base.display().to_string(),
            });
        }
    }
    let at = walked.join(name);
    match (kind, target) {
        (Kind::Directory, _) => make_dir(&dir, name, r, &at, &cx),
        (Kind::Symlink, Some(t)) => make_link(&dir, name, &t, r, &at, &cx),
        _ => write_chunk(&dir, name, r, &at, &path, &cx),
    }
}

/// Names the request's path in system-call errors.
struct Ctx {
    path: String,
}

impl Ctx {
    fn sys(&self, op: &'static str, target: &Path) -> impl FnOnce(Errno) -> CopyError {
        let path = self.path.clone();
        let target = target.display().to_string();
        move |errno| CopyError::Sys {
            path,
            op,
            target,
            errno,
        }
    }
}

/// The permissions of parents made on the way; a request without any (older runtimes) gets
/// 0o750, as before.
fn parent_mode(dir_mode: u32) -> u32 {
    match dir_mode & DIR_PERMS {
        0 => 0o750,
        m => m,
    }
}

fn uid(u: i32) -> Option<Uid> {
    // -1 leaves the owner as it is (chown's convention).
    (u >= 0).then(|| Uid::from_raw(u as u32))
}

fn gid(g: i32) -> Option<Gid> {
    (g >= 0).then(|| Gid::from_raw(g as u32))
}

fn not_dir(
    e: Errno,
    path: &str,
    walked: &Path,
    other: impl FnOnce(Errno) -> CopyError,
) -> CopyError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR => CopyError::ParentNotDir {
            path: path.to_string(),
            parent: walked.display().to_string(),
        },
        e => other(e),
    }
}

/// Opens a directory; with `nofollow` a symbolic link in its place fails (ELOOP).
fn open_dir(at: Option<&OwnedFd>, name: &OsStr, nofollow: bool) -> nix::Result<OwnedFd> {
    let mut flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    if nofollow {
        flags |= OFlag::O_NOFOLLOW;
    }
    match at {
        Some(d) => openat(d, name, flags, Mode::empty()),
        None => openat(nix::fcntl::AT_FDCWD, name, flags, Mode::empty()),
    }
}

/// The link target, refused unless it is relative, non-empty, UTF-8 (as Kata's policy input
/// needs) and free of `..`; and the link must be inside a copied directory.
fn check_link(
    base: &Path,
    path: &str,
    parents: &[&OsStr],
    data: &[u8],
) -> Result<PathBuf, CopyError> {
    if parents.is_empty() {
        return Err(CopyError::TopLevelLink {
            path: path.to_string(),
            base: base.display().to_string(),
        });
    }
    let text = String::from_utf8_lossy(data).into_owned();
    let bad = |why| CopyError::BadTarget {
        path: path.to_string(),
        target: text.clone(),
        why,
    };
    if std::str::from_utf8(data).is_err() {
        return Err(bad("not UTF-8"));
    }
    if data.is_empty() || data.contains(&0) {
        return Err(bad("empty or with a NUL byte"));
    }
    let t = Path::new(OsStr::from_bytes(data));
    if t.is_absolute() {
        return Err(bad("absolute (targets must be relative)"));
    }
    // Without `..` a target only reaches down from the link's directory, through links that
    // themselves only reach down: it cannot leave the copied tree.
    if t.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(bad("has a '..' component (targets must be normalized)"));
    }
    Ok(t.to_path_buf())
}

/// An existing entry of `dir`, not followed.
fn entry_type(dir: &OwnedFd, name: &OsStr) -> nix::Result<Option<SFlag>> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Removes whatever is at `name` in `dir` (a directory with its contents).
fn remove_any(dir: &OwnedFd, name: &OsStr, at: &Path) -> std::io::Result<()> {
    match entry_type(dir, name).map_err(std::io::Error::from)? {
        None => Ok(()),
        Some(SFlag::S_IFDIR) => {
            // The parent was opened without following links; its /proc path is its real one,
            // and remove_dir_all does not follow links inside.
            let real = std::fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
                .map(|d| d.join(name))
                .unwrap_or_else(|_| at.to_path_buf());
            std::fs::remove_dir_all(real)
        }
        Some(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(std::io::Error::from),
    }
}

fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// Renames `tmp` onto `name`; an existing directory there is removed first (rename cannot
/// replace a directory with a file or link).
fn rename_into_place(
    dir: &OwnedFd,
    tmp: &OsStr,
    name: &OsStr,
    at: &Path,
    cx: &Ctx,
) -> Result<(), CopyError> {
    match renameat(dir, tmp, dir, name) {
        Ok(()) => Ok(()),
        Err(Errno::EISDIR) | Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => {
            remove_any(dir, name, at).map_err(|e| cx.sys("removing", at)(io_errno(&e)))?;
            renameat(dir, tmp, dir, name).map_err(cx.sys("renaming into", at))
        }
        Err(e) => Err(cx.sys("renaming into", at)(e)),
    }
}

fn make_dir(
    dir: &OwnedFd,
    name: &OsStr,
    r: &Request,
    at: &Path,
    cx: &Ctx,
) -> Result<(), CopyError> {
    let mode = Mode::from_bits_truncate(r.file_mode & FILE_PERMS);
    match entry_type(dir, name).map_err(cx.sys("stat", at))? {
        Some(SFlag::S_IFDIR) => {}
        Some(_) => {
            // A file or link in the way is replaced (an existing directory is kept).
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(cx.sys("removing", at))?;
            mkdirat(dir, name, Mode::from_bits_truncate(r.file_mode & DIR_PERMS))
                .map_err(cx.sys("creating directory", at))?;
        }
        None => match mkdirat(dir, name, Mode::from_bits_truncate(r.file_mode & DIR_PERMS)) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(cx.sys("creating directory", at)(e)),
        },
    }
    let fd = open_dir(Some(dir), name, true).map_err(cx.sys("opening", at))?;
    fchmod(&fd, mode).map_err(cx.sys("chmod", at))?;
    fchown(&fd, uid(r.uid), gid(r.gid)).map_err(cx.sys("chown", at))?;
    Ok(())
}

fn make_link(
    dir: &OwnedFd,
    name: &OsStr,
    target: &Path,
    r: &Request,
    at: &Path,
    cx: &Ctx,
) -> Result<(), CopyError> {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(LINK_SUFFIX);
    match unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(cx.sys("removing", &at.with_file_name(&tmp))(e)),
    }
    symlinkat(target, dir, tmp.as_os_str())
        .map_err(cx.sys("creating symbolic link", &at.with_file_name(&tmp)))?;
    let done = fchownat(
        dir,
        tmp.as_os_str(),
        uid(r.uid),
        gid(r.gid),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(cx.sys("chown", at))
    .and_then(|()| rename_into_place(dir, &tmp, name, at, cx));
    if done.is_err() {
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
    }
    done
}

fn write_chunk(
    dir: &OwnedFd,
    name: &OsStr,
    r: &Request,
    at: &Path,
    path: &str,
    cx: &Ctx,
) -> Result<(), CopyError> {
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(PART_SUFFIX);
    let tmp_at = at.with_file_name(&tmp);
    let mut flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    if r.offset == 0 {
        flags |= OFlag::O_CREAT | OFlag::O_TRUNC;
    }
    let fd = match openat(dir, tmp.as_os_str(), flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => {
            return Err(CopyError::NoStart {
                path: path.to_string(),
                offset: r.offset,
            })
        }
        Err(e) => return Err(cx.sys("opening", &tmp_at)(e)),
    };
    let st = fstat(&fd).map_err(cx.sys("stat", &tmp_at))?;
    if SFlag::from_bits_truncate(st.st_mode & libc::S_IFMT) != SFlag::S_IFREG {
        return Err(cx.sys("opening", &tmp_at)(Errno::EINVAL));
    }
    let end = r.offset.saturating_add(r.data.len() as i64);
    if end > r.file_size {
        let _ = unlinkat(dir, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(CopyError::TooLong {
            path: path.to_string(),
            size: end,
            file_size: r.file_size,
        });
    }
    let mut written = 0usize;
    while written < r.data.len() {
        match nix::sys::uio::pwrite(fd.as_fd(), &r.data[written..], r.offset + written as i64) {
            Ok(n) => written += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(cx.sys("writing", &tmp_at)(e)),
        }
    }
    let size = fstat(&fd).map_err(cx.sys("stat", &tmp_at))?.st_size;
    if size < r.file_size {
        // More chunks to come.
        return Ok(());
    }
    fchmod(&fd, Mode::from_bits_truncate(r.file_mode & FILE_PERMS))
        .map_err(cx.sys("chmod", &tmp_at))?;
    fchown(&fd, uid(r.uid), gid(r.gid)).map_err(cx.sys("chown", &tmp_at))?;
    drop(fd);
    rename_into_place(dir, &tmp, name, at, cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Go's os.ModeDir, which Kata's runtime leaves in `dir_mode`.
    const GO_MODE_DIR: u32 = 0x8000_0000;

    fn req<'a>(path: &'a str, file_mode: u32, data: &'a [u8]) -> Request<'a> {
        Request {
            path,
            file_mode,
            dir_mode: GO_MODE_DIR | 0o750,
            uid: 0,
            gid: 0,
            offset: 0,
            file_size: data.len() as i64,
            data,
        }
    }

    fn s(p: &Path) -> String {
        p.display().to_string()
    }

    #[test]
    fn kinds_from_the_mode() {
        // Values from Kata's request logs.
        assert_eq!(kind(33188), Some(Kind::Regular)); // 0o100644
        assert_eq!(kind(16877), Some(Kind::Directory)); // 0o40755
        assert_eq!(kind(17407), Some(Kind::Directory)); // 0o41777
        assert_eq!(kind(41471), Some(Kind::Symlink)); // 0o120777
        assert_eq!(kind(0o644), Some(Kind::Regular));
        assert_eq!(kind(libc::S_IFSOCK | 0o755), None);
        assert_eq!(kind(libc::S_IFCHR | 0o600), None);
    }

    #[test]
    fn chunks_assemble_atomically_with_mode_and_parents() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("shared");
        let f = base.join("c1-0123456789abcdef-cm/sub/key");
        let fs_ = s(&f);
        let mut r = req(&fs_, S_IFREG | 0o640, b"hello ");
        r.file_size = 11;
        copy(&base, &r).unwrap();
        // Not there until complete.
        assert!(!f.exists());
        r.offset = 6;
        r.data = b"world";
        copy(&base, &r).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"hello world");
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        // Parents made with dir_mode's permission bits (Go's ModeDir bit masked off).
        let parent = base.join("c1-0123456789abcdef-cm");
        assert_eq!(
            std::fs::metadata(&parent).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        // An update replaces the file whole; the old content stays until the new is complete.
        let mut u = req(&fs_, S_IFREG | 0o600, b"new");
        u.file_size = 6;
        copy(&base, &u).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"hello world");
        u.offset = 3;
        copy(&base, &u).unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"newnew");
        let names: Vec<_> = std::fs::read_dir(f.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["key"], "no temporary file left");
        // Without dir_mode, parents get 0o750.
        let nested = s(&base.join("c1-0123456789abcdef-x/y/f"));
        let mut r = req(&nested, S_IFREG, b"");
        r.dir_mode = 0;
        copy(&base, &r).unwrap();
        assert_eq!(
            std::fs::metadata(base.join("c1-0123456789abcdef-x/y"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o750
        );
        // An empty file (termination-log) is complete at once.
        let empty = s(&base.join("c1-0123456789abcdef-termination-log"));
        copy(&base, &req(&empty, S_IFREG | 0o666, b"")).unwrap();
        assert_eq!(std::fs::read(&empty).unwrap(), b"");
    }

    #[test]
    fn chunk_errors() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("shared");
        let f = s(&base.join("x/f"));
        let mut r = req(&f, S_IFREG | 0o600, b"abc");
        r.offset = 3;
        r.file_size = 6;
        let e = copy(&base, &r).unwrap_err();
        assert!(matches!(e, CopyError::NoStart { .. }), "{e}");
        let mut r = req(&f, S_IFREG | 0o600, b"abcdef");
        r.file_size = 2;
        let e = copy(&base, &r).unwrap_err().to_string();
        assert!(e.contains("more than file_size 2"), "{e}");
        let mut r = req(&f, S_IFREG, b"");
        r.offset = -1;
        assert!(matches!(
            copy(&base, &r).unwrap_err(),
            CopyError::BadOffset { .. }
        ));
    }

    #[test]
    fn directories_keep_or_replace() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("shared");
        let d = base.join("c1-0123456789abcdef-sa");
        let ds = s(&d);
        copy(&base, &req(&ds, S_IFDIR | 0o1777, b"")).unwrap();
        let md = std::fs::metadata(&d).unwrap();
        assert!(md.is_dir());
        assert_eq!(md.permissions().mode() & 0o7777, 0o1777);
        // Again, with another mode: kept (with its contents), mode changed.
        std::fs::write(d.join("keep"), b"k").unwrap();
        copy(&base, &req(&ds, S_IFDIR | 0o755, b"")).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o7777,
            0o755
        );
        assert!(d.join("keep").exists());
        // A file in the way of a directory is replaced.
        let f = d.join("was-file");
        std::fs::write(&f, b"x").unwrap();
        copy(&base, &req(&s(&f), S_IFDIR | 0o700, b"")).unwrap();
        assert!(f.is_dir());
        assert_eq!(std::fs::metadata(&f).unwrap().uid(), md.uid());
    }

    #[test]
    fn symlink_swap_is_atomic_rename() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("shared");
        let top = base.join("c1-0123456789abcdef-cm");
        let ts = |p: &str| s(&top.join(p));
        copy(&base, &req(&ts(""), S_IFDIR | 0o1777, b"")).unwrap();
        copy(&base, &req(&ts("..2024_01"), S_IFDIR | 0o755, b"")).unwrap();
        copy(&base, &req(&ts("..2024_01/key"), S_IFREG | 0o644, b"v1")).unwrap();
        copy(&base, &req(&ts("..data"), S_IFLNK | 0o777, b"..2024_01")).unwrap();
        copy(&base, &req(&ts("key"), S_IFLNK | 0o777, b"..data/key")).unwrap();
        assert_eq!(std::fs::read(top.join("key")).unwrap(), b"v1");
        // The kubelet's update: a new timestamped dir, then ..data swapped.
        copy(&base, &req(&ts("..2024_02"), S_IFDIR | 0o755, b"")).unwrap();
        copy(&base, &req(&ts("..2024_02/key"), S_IFREG | 0o644, b"v2")).unwrap();
        let old = std::fs::symlink_metadata(top.join("..data")).unwrap().ino();
        copy(&base, &req(&ts("..data"), S_IFLNK | 0o777, b"..2024_02")).unwrap();
        assert_ne!(
            std::fs::symlink_metadata(top.join("..data")).unwrap().ino(),
            old,
            "a new link was renamed into place"
        );
        assert_eq!(std::fs::read(top.join("key")).unwrap(), b"v2");
        assert_eq!(
            std::fs::read_link(top.join("..data")).unwrap(),
            Path::new("..2024_02")
        );
        // A link replacing a directory.
        copy(&base, &req(&ts("..2024_01"), S_IFLNK | 0o777, b"..2024_02")).unwrap();
        assert!(std::fs::symlink_metadata(top.join("..2024_01"))
            .unwrap()
            .file_type()
            .is_symlink());
        let mut names: Vec<_> = std::fs::read_dir(&top)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["..2024_01", "..2024_02", "..data", "key"]);
    }

    #[test]
    fn escapes_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("shared");
        let top = base.join("c1-0123456789abcdef-cm");
        let ts = |p: &str| s(&top.join(p));
        copy(&base, &req(&ts(""), S_IFDIR | 0o755, b"")).unwrap();

        // Outside the base, or with '..'.
        let e = copy(&base, &req("/etc/passwd", S_IFREG, b"x")).unwrap_err();
        assert!(matches!(e, CopyError::Outside { .. }), "{e}");
        assert!(e.to_string().contains("/etc/passwd"), "{e}");
        let dotdot = format!("{}/../x", s(&base));
        let e = copy(&base, &req(&dotdot, S_IFREG, b"x")).unwrap_err();
        assert!(matches!(e, CopyError::Traversal { .. }), "{e}");
        let e = copy(&base, &req(&s(&base), S_IFDIR, b"")).unwrap_err();
        assert!(matches!(e, CopyError::Outside { .. }), "{e}");

        // Link targets: absolute, with '..', at the top level: refused.
        let e = copy(&base, &req(&ts("..data"), S_IFLNK | 0o777, b"/etc")).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = copy(&base, &req(&ts("l"), S_IFLNK | 0o777, b"../../etc")).unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
        let e = copy(&base, &req(&ts("l"), S_IFLNK | 0o777, b"a/../b")).unwrap_err();
        assert!(e.to_string().contains("'..'"), "{e}");
        let top_link = s(&base.join("c1-0123456789abcdef-x"));
        let e = copy(&base, &req(&top_link, S_IFLNK | 0o777, b"c2-secret")).unwrap_err();
        assert!(matches!(e, CopyError::TopLevelLink { .. }), "{e}");
        let e = copy(&base, &req(&ts("l"), S_IFLNK | 0o777, &[0xff, 0xfe])).unwrap_err();
        assert!(e.to_string().contains("UTF-8"), "{e}");

        // A link planted by other means (say a container writing into its copy) is never
        // followed as a parent: nothing is written outside.
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, top.join("planted")).unwrap();
        let e = copy(&base, &req(&ts("planted/passwd"), S_IFREG, b"x")).unwrap_err();
        assert!(matches!(e, CopyError::ParentNotDir { .. }), "{e}");
        let e = copy(&base, &req(&ts("planted/new/passwd"), S_IFREG, b"x")).unwrap_err();
        assert!(matches!(e, CopyError::ParentNotDir { .. }), "{e}");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // A relative link that is accepted is not followed either.
        copy(&base, &req(&ts("sub"), S_IFDIR | 0o755, b"")).unwrap();
        copy(&base, &req(&ts("ln"), S_IFLNK | 0o777, b"sub")).unwrap();
        let e = copy(&base, &req(&ts("ln/f"), S_IFREG, b"x")).unwrap_err();
        assert!(matches!(e, CopyError::ParentNotDir { .. }), "{e}");
        // A regular file over the planted link replaces the link, not its target.
        copy(&base, &req(&ts("planted"), S_IFREG | 0o644, b"mine")).unwrap();
        assert_eq!(std::fs::read(top.join("planted")).unwrap(), b"mine");
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        // Unknown types name the path and the mode.
        let sock = ts("sock");
        let e = copy(&base, &req(&sock, libc::S_IFSOCK | 0o755, b"")).unwrap_err();
        let m = e.to_string();
        assert!(m.contains(&sock) && m.contains("0o140755"), "{m}");
    }
}
