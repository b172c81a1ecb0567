//! File requests, served with the box's own view of its files (the agent runs in the box's
//! mount namespace, as root): stat, list, make, move, remove, and inotify watches.

// An error here is the request's answer, made once per request: its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use faas_agent::{
    encode_header, write_json, ErrorKind, Event, FileEntry, FileType, FrameKind, FsOp, MAX_FRAME,
};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use crate::procs::peer_alive;

/// Most entries one [`list_dir`] answers.
const MAX_ENTRIES: usize = 100_000;

fn invalid(message: impl Into<String>) -> Event {
    Event::error(ErrorKind::Invalid, message)
}

/// An io error on `path` as an [`Event::Error`] of the matching kind.
fn io_error(path: &str, e: &io::Error) -> Event {
    let kind = match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT) => ErrorKind::NotFound,
        Some(Errno::EEXIST | Errno::ENOTEMPTY) => ErrorKind::Exists,
        Some(Errno::ENOTDIR) => ErrorKind::NotDir,
        Some(Errno::EISDIR) => ErrorKind::IsDir,
        Some(Errno::EACCES | Errno::EPERM) => ErrorKind::Denied,
        Some(Errno::EINVAL | Errno::ELOOP | Errno::ENAMETOOLONG) => ErrorKind::Invalid,
        // The box refuses it in its state (the host answers 409 conflict).
        Some(Errno::EROFS | Errno::EBUSY | Errno::ENOSPC | Errno::EXDEV | Errno::ETXTBSY) => {
            ErrorKind::Denied
        }
        _ => match e.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::Exists,
            io::ErrorKind::PermissionDenied => ErrorKind::Denied,
            _ => ErrorKind::Other,
        },
    };
    Event::error(kind, format!("{path}: {e}"))
}

fn absolute(path: &str) -> Result<(), Event> {
    if path.starts_with('/') {
        Ok(())
    } else {
        Err(invalid(format!("path must be absolute: {path:?}")))
    }
}

/// User and group names, from the box's `/etc/passwd` and `/etc/group`.
struct Names {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
}

impl Names {
    fn load() -> Names {
        Names {
            users: read_names(Path::new("/etc/passwd")),
            groups: read_names(Path::new("/etc/group")),
        }
    }

    fn user(&self, uid: u32) -> String {
        self.users
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }

    fn group(&self, gid: u32) -> String {
        self.groups
            .get(&gid)
            .cloned()
            .unwrap_or_else(|| gid.to_string())
    }
}

/// Largest `/etc/passwd` or `/etc/group` read; a bigger one means no names.
const NAMES_FILE_MAX: u64 = 1024 * 1024;

/// The ids and names of a `/etc/passwd`-like file (name, then the id in the third field).
/// The box's contents are hostile: a link, a fifo, a device or a file over
/// [`NAMES_FILE_MAX`] means no names (numbers are shown), never a hang or a big read.
fn read_names(file: &Path) -> HashMap<u32, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(file)
    else {
        return HashMap::new();
    };
    match f.metadata() {
        Ok(m) if m.file_type().is_file() && m.len() <= NAMES_FILE_MAX => {}
        _ => return HashMap::new(),
    }
    let mut bytes = Vec::new();
    // The size may change meanwhile: the read is bounded all the same.
    if f.take(NAMES_FILE_MAX + 1).read_to_end(&mut bytes).is_err()
        || bytes.len() as u64 > NAMES_FILE_MAX
    {
        return HashMap::new();
    }
    String::from_utf8_lossy(&bytes)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((id, name.to_string()))
        })
        .collect()
}

/// `ls -l`'s mode column.
fn permissions(mode: u32) -> String {
    let t = match mode & 0o170000 {
        0o040000 => 'd',
        0o120000 => 'l',
        0o020000 => 'c',
        0o060000 => 'b',
        0o010000 => 'p',
        0o140000 => 's',
        _ => '-',
    };
    let mut s = String::with_capacity(10);
    s.push(t);
    for (shift, special, on, off) in [
        (6, 0o4000, 's', 'S'),
        (3, 0o2000, 's', 'S'),
        (0, 0o1000, 't', 'T'),
    ] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        let x = bits & 1 != 0;
        s.push(match (mode & special != 0, x) {
            (true, true) => on,
            (true, false) => off,
            (false, true) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn name_of(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string())
}

fn entry(path: &str, meta: &Metadata, names: &Names) -> FileEntry {
    let ft = meta.file_type();
    let file_type = if ft.is_symlink() {
        FileType::Symlink
    } else if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else {
        FileType::Other
    };
    let symlink_target = ft.is_symlink().then(|| {
        std::fs::read_link(path)
            .map(|t| t.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    FileEntry {
        name: name_of(path),
        path: path.to_string(),
        file_type,
        size: meta.len(),
        mode: meta.mode() & 0o7777,
        permissions: permissions(meta.mode()),
        uid: meta.uid(),
        gid: meta.gid(),
        owner: names.user(meta.uid()),
        group: names.group(meta.gid()),
        mtime_ms: meta.mtime() * 1000 + meta.mtime_nsec() / 1_000_000,
        symlink_target,
    }
}

fn stat_entry(path: &str) -> Result<FileEntry, Event> {
    absolute(path)?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_error(path, &e))?;
    Ok(entry(path, &meta, &Names::load()))
}

/// [`Request::Stat`](faas_agent::Request::Stat): links are described, not followed.
pub(crate) fn stat(path: &str) -> Event {
    match stat_entry(path) {
        Ok(entry) => Event::Entry { entry },
        Err(ev) => ev,
    }
}

/// `dir` joined with `name`, without doubling a trailing `/`.
fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// [`Request::ListDir`](faas_agent::Request::ListDir): `depth` levels (0 counts as 1);
/// symlinked directories are listed, not entered; unreadable subdirectories are skipped.
pub(crate) fn list_dir(path: &str, depth: u32) -> Event {
    if let Err(ev) = absolute(path) {
        return ev;
    }
    let depth = depth.max(1);
    let names = Names::load();
    let mut entries = Vec::new();
    if let Err(ev) = list_into(path, depth, &names, &mut entries, true) {
        return ev;
    }
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    let answer = Event::Entries { entries };
    // The answer is one frame.
    match serde_json::to_vec(&answer) {
        Ok(body) if body.len() > MAX_FRAME => invalid(format!(
            "{path}: too many entries for one answer ({} bytes); ask for a smaller depth",
            body.len()
        )),
        _ => answer,
    }
}

/// Walks `dir` down `depth` levels into `out`, with a stack of its own (no recursion: the
/// box's trees may be deep, and the agent's threads have small stacks).
fn list_into(
    dir: &str,
    depth: u32,
    names: &Names,
    out: &mut Vec<FileEntry>,
    top: bool,
) -> Result<(), Event> {
    let mut stack = vec![(dir.to_string(), depth, top)];
    while let Some((dir, depth, top)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if top => return Err(io_error(&dir, &e)),
            Err(_) => continue,
        };
        for de in rd {
            let Ok(de) = de else { continue };
            let path = join(&dir, &de.file_name().to_string_lossy());
            // Not followed: a symlink is listed as one.
            let Ok(meta) = de.metadata() else { continue };
            if out.len() >= MAX_ENTRIES {
                return Err(invalid(format!(
                    "{}: too many entries (over {MAX_ENTRIES}); ask for a smaller depth",
                    if top { &dir } else { &path }
                )));
            }
            let is_dir = meta.file_type().is_dir();
            out.push(entry(&path, &meta, names));
            if is_dir && depth > 1 {
                stack.push((path, depth - 1, false));
            }
        }
    }
    Ok(())
}

/// [`Request::MakeDir`](faas_agent::Request::MakeDir).
pub(crate) fn make_dir(path: &str) -> Event {
    if let Err(ev) = absolute(path) {
        return ev;
    }
    if std::fs::symlink_metadata(path).is_ok() {
        return Event::error(ErrorKind::Exists, format!("{path}: already exists"));
    }
    match std::fs::create_dir_all(path) {
        Ok(()) => Event::Done,
        Err(e) => io_error(path, &e),
    }
}

/// [`Request::Move`](faas_agent::Request::Move): a rename, or across file systems a copy
/// (modes and links kept) then a removal.
pub(crate) fn rename(from: &str, to: &str) -> Event {
    if let Err(ev) = absolute(from).and_then(|()| absolute(to)) {
        return ev;
    }
    match std::fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(Errno::EXDEV as i32) => {
            if let Err(ev) = copy_tree(from, to) {
                return ev;
            }
            if let Err(ev) = remove_tree(from) {
                return ev;
            }
        }
        Err(e) => {
            // Name the side at fault when it is clear.
            let side = if std::fs::symlink_metadata(from).is_err() {
                from
            } else {
                to
            };
            return io_error(side, &e);
        }
    }
    stat(to)
}

/// Deepest directory level a copy goes (or a recursive watch watches) below its top.
const MAX_DEPTH: usize = 256;

/// One step of [`copy_tree`]'s walk.
enum CopyStep {
    /// Copy `from` to `to`, `depth` levels below the top.
    Copy {
        from: String,
        to: String,
        depth: usize,
    },
    /// A directory's contents are copied: its modes and owner now.
    Finish { to: String, meta: Metadata },
}

/// Copies `from` to `to` (modes, owners and links kept); on failure, what it made is
/// removed. Trees deeper than [`MAX_DEPTH`] are refused.
fn copy_tree(from: &str, to: &str) -> Result<(), Event> {
    let mut made = false;
    let r = copy_walk(from, to, &mut made);
    if r.is_err() && made {
        let _ = remove_tree(to);
    }
    r
}

/// [`copy_tree`]'s walk, with a stack of its own (no recursion); `made` is set once `to`
/// exists.
fn copy_walk(from: &str, to: &str, made: &mut bool) -> Result<(), Event> {
    let mut stack = vec![CopyStep::Copy {
        from: from.to_string(),
        to: to.to_string(),
        depth: 0,
    }];
    while let Some(step) = stack.pop() {
        let (from, to, depth) = match step {
            CopyStep::Copy { from, to, depth } => (from, to, depth),
            CopyStep::Finish { to, meta } => {
                std::fs::set_permissions(
                    &to,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                )
                .map_err(|e| io_error(&to, &e))?;
                set_owner(&to, &meta);
                continue;
            }
        };
        let meta = std::fs::symlink_metadata(&from).map_err(|e| io_error(&from, &e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| io_error(&from, &e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| io_error(&to, &e))?;
        } else if ft.is_dir() {
            if depth >= MAX_DEPTH {
                return Err(invalid(format!(
                    "{from}: too deep (over {MAX_DEPTH} levels) to copy across file systems"
                )));
            }
            std::fs::create_dir(&to).map_err(|e| io_error(&to, &e))?;
            *made = true;
            let rd = std::fs::read_dir(&from).map_err(|e| io_error(&from, &e))?;
            let mut names = Vec::new();
            for de in rd {
                let de = de.map_err(|e| io_error(&from, &e))?;
                names.push(de.file_name().to_string_lossy().into_owned());
            }
            stack.push(CopyStep::Finish {
                to: to.clone(),
                meta,
            });
            for name in names.iter().rev() {
                stack.push(CopyStep::Copy {
                    from: join(&from, name),
                    to: join(&to, name),
                    depth: depth + 1,
                });
            }
            continue;
        } else if ft.is_file() {
            // Copies the permission bits too.
            std::fs::copy(&from, &to).map_err(|e| io_error(&to, &e))?;
        } else {
            return Err(Event::error(
                ErrorKind::Denied,
                format!("{from}: cannot copy a device, fifo or socket across file systems"),
            ));
        }
        *made = true;
        set_owner(&to, &meta);
    }
    Ok(())
}

/// Gives `to` the owner of `meta`, as far as allowed (the agent is root in the box).
fn set_owner(to: &str, meta: &Metadata) {
    let _ = std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()));
    if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
        // chown clears set-id bits: put them back.
        let _ = std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777));
    }
}

fn remove_tree(path: &str) -> Result<(), Event> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_error(path, &e))?;
    if meta.file_type().is_dir() {
        remove_dir_tree(path)
    } else {
        std::fs::remove_file(path).map_err(|e| io_error(path, &e))
    }
}

/// A directory being removed by [`remove_dir_tree`]: its name in its parent, its identity
/// (device, inode) and the entries still to remove (with whether each is a directory, when
/// the kernel said).
struct Doomed {
    name: std::ffi::CString,
    id: (u64, u64),
    rest: std::vec::IntoIter<(std::ffi::CString, Option<bool>)>,
}

/// Removes directory `path` and everything under it, not through links: every directory is
/// opened relative to its parent (`O_NOFOLLOW`) and left through its `..` (checked to be the
/// parent it came from), so one directory is open at a time, and the walk has a stack of its
/// own (no recursion: the box's trees may be deeper than the agent's small stacks allow).
fn remove_dir_tree(path: &str) -> Result<(), Event> {
    use std::ffi::{CStr, CString};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use nix::dir::{Dir, Type};
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstat, Mode};
    use nix::unistd::{unlinkat, UnlinkatFlags};

    const FLAGS: OFlag = OFlag::O_RDONLY
        .union(OFlag::O_DIRECTORY)
        .union(OFlag::O_NOFOLLOW)
        .union(OFlag::O_CLOEXEC);
    let open = |at: Option<&OwnedFd>, name: &CStr| -> nix::Result<OwnedFd> {
        let fd = openat(at.map(|f| f.as_raw_fd()), name, FLAGS, Mode::empty())?;
        // SAFETY: `openat` just returned this descriptor, owned by nothing else.
        #[allow(unsafe_code)]
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let id = |fd: &OwnedFd| -> nix::Result<(u64, u64)> {
        let st = fstat(fd.as_raw_fd())?;
        Ok((st.st_dev as u64, st.st_ino as u64))
    };
    let list = |fd: &OwnedFd| -> nix::Result<Vec<(CString, Option<bool>)>> {
        let mut dir = Dir::from_fd(nix::unistd::dup(fd.as_raw_fd())?)?;
        let mut out = Vec::new();
        for e in dir.iter() {
            let e = e?;
            let name = e.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match e.file_type() {
                Some(Type::Directory) => Some(true),
                Some(_) => Some(false),
                None => None,
            };
            out.push((name.to_owned(), is_dir));
        }
        Ok(out)
    };
    // For messages: the path of `child` of the directory at the top of `stack`.
    let path_of = |stack: &[Doomed], child: &CStr| -> String {
        let mut p = path.to_string();
        for d in stack.iter().skip(1) {
            p = join(&p, &d.name.to_string_lossy());
        }
        join(&p, &child.to_string_lossy())
    };
    let fail = |p: &str, e: Errno| io_error(p, &io::Error::from(e));

    let top = CString::new(path).map_err(|_| invalid(format!("{path:?}: a NUL byte")))?;
    let mut cur = open(None, &top).map_err(|e| fail(path, e))?;
    let mut stack = vec![Doomed {
        name: top,
        id: id(&cur).map_err(|e| fail(path, e))?,
        rest: list(&cur).map_err(|e| fail(path, e))?.into_iter(),
    }];
    while let Some(level) = stack.last_mut() {
        let Some((name, is_dir)) = level.rest.next() else {
            // Empty now: up to its parent, which removes it.
            let done = stack.pop().expect("a level");
            let Some(parent) = stack.last() else { break };
            let up = open(Some(&cur), c"..").map_err(|e| fail(&path_of(&stack, &done.name), e))?;
            if id(&up).ok() != Some(parent.id) {
                return Err(Event::error(
                    ErrorKind::Other,
                    format!("{}: moved while being removed", path_of(&stack, &done.name)),
                ));
            }
            cur = up;
            match unlinkat(
                Some(cur.as_raw_fd()),
                done.name.as_c_str(),
                UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(fail(&path_of(&stack, &done.name), e)),
            }
            continue;
        };
        if is_dir != Some(true) {
            match unlinkat(
                Some(cur.as_raw_fd()),
                name.as_c_str(),
                UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) | Err(Errno::ENOENT) => continue,
                // A directory after all (or the kernel did not say).
                Err(Errno::EISDIR) => {}
                Err(Errno::EPERM) if is_dir.is_none() => {}
                Err(e) => return Err(fail(&path_of(&stack, &name), e)),
            }
        }
        let sub = match open(Some(&cur), &name) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => continue,
            // Not a directory (any more): an entry like the others.
            Err(Errno::ENOTDIR | Errno::ELOOP) => {
                match unlinkat(
                    Some(cur.as_raw_fd()),
                    name.as_c_str(),
                    UnlinkatFlags::NoRemoveDir,
                ) {
                    Ok(()) | Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(fail(&path_of(&stack, &name), e)),
                }
            }
            Err(e) => return Err(fail(&path_of(&stack, &name), e)),
        };
        let doomed = (|| {
            Ok(Doomed {
                name: name.clone(),
                id: id(&sub)?,
                rest: list(&sub)?.into_iter(),
            })
        })()
        .map_err(|e| fail(&path_of(&stack, &name), e))?;
        stack.push(doomed);
        cur = sub;
    }
    drop(cur);
    std::fs::remove_dir(path).map_err(|e| io_error(path, &e))
}

/// [`Request::Remove`](faas_agent::Request::Remove): a file, a link (not what it points to)
/// or a whole directory.
pub(crate) fn remove(path: &str) -> Event {
    if let Err(ev) = absolute(path) {
        return ev;
    }
    // As `rm` does: not `.`, `..` or `/` itself.
    let trimmed = path.trim_end_matches('/');
    let last = trimmed.rsplit('/').next().unwrap_or("");
    if trimmed.is_empty() || last == "." || last == ".." {
        return invalid(format!("{path}: refusing to remove '.', '..' or '/'"));
    }
    // A trailing `/` would follow a link: the link itself goes.
    match remove_tree(trimmed) {
        Ok(()) => Event::Done,
        Err(ev) => ev,
    }
}

const WATCHED: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_MODIFY)
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ATTRIB)
    .union(AddWatchFlags::IN_DELETE_SELF)
    .union(AddWatchFlags::IN_MOVE_SELF)
    .union(AddWatchFlags::IN_ONLYDIR);

/// One watch stream's inotify instance and its directories.
struct Watcher {
    inotify: Inotify,
    recursive: bool,
    root: String,
    root_wd: WatchDescriptor,
    dirs: HashMap<WatchDescriptor, String>,
    /// Paths reported as `create` by the scan of a directory made after the watch started,
    /// so the kernel's own event for them (when they were made after the scan's watch was
    /// set) is not reported twice.
    scanned: HashSet<String>,
}

impl Watcher {
    fn add(&mut self, dir: &str) -> nix::Result<WatchDescriptor> {
        let wd = self
            .inotify
            .add_watch(dir, WATCHED | AddWatchFlags::IN_DONT_FOLLOW)?;
        self.dirs.insert(wd, dir.to_string());
        Ok(wd)
    }

    /// How many levels below the root `path` is.
    fn depth_of(&self, path: &str) -> usize {
        let rest = path.strip_prefix(self.root.as_str()).unwrap_or(path);
        rest.split('/').filter(|c| !c.is_empty()).count()
    }

    /// Watches the subdirectories of `dir` (not through links), at the start, down to
    /// [`MAX_DEPTH`] levels below the root (with a stack of its own: no recursion).
    fn add_tree(&mut self, dir: &str) -> Result<(), Event> {
        let mut stack = vec![(dir.to_string(), self.depth_of(dir))];
        while let Some((dir, depth)) = stack.pop() {
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for de in rd.flatten() {
                if de.file_type().is_ok_and(|t| t.is_dir()) {
                    let path = join(&dir, &de.file_name().to_string_lossy());
                    match self.add(&path) {
                        Ok(_) => stack.push((path, depth + 1)),
                        Err(Errno::ENOSPC) => {
                            return Err(Event::error(
                                ErrorKind::Other,
                                format!("{}: too many directories to watch", self.root),
                            ))
                        }
                        // Gone meanwhile, or unreadable.
                        Err(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// A directory appeared inside the watch: watch it (down to [`MAX_DEPTH`] levels below
    /// the root), and report what it already has (made before its watch was set), in the
    /// order of a depth-first walk (with a stack of its own: no recursion).
    fn add_new(&mut self, dir: &str, out: &mut Vec<(FsOp, String)>) {
        let mut stack: Vec<std::vec::IntoIter<(String, bool)>> = Vec::new();
        let mut next = Some(dir.to_string());
        loop {
            if let Some(dir) = next.take() {
                if self.depth_of(&dir) <= MAX_DEPTH && self.add(&dir).is_ok() {
                    if let Ok(rd) = std::fs::read_dir(&dir) {
                        let children: Vec<(String, bool)> = rd
                            .flatten()
                            .map(|de| {
                                let path = join(&dir, &de.file_name().to_string_lossy());
                                (path, de.file_type().is_ok_and(|t| t.is_dir()))
                            })
                            .collect();
                        stack.push(children.into_iter());
                    }
                }
            }
            let Some(level) = stack.last_mut() else {
                return;
            };
            let Some((path, is_dir)) = level.next() else {
                stack.pop();
                continue;
            };
            if self.scanned.len() > 4096 {
                self.scanned.clear();
            }
            self.scanned.insert(path.clone());
            out.push((FsOp::Create, path.clone()));
            if is_dir {
                next = Some(path);
            }
        }
    }

    /// A directory left the watch (moved out or away): forget it and what is under it.
    fn forget(&mut self, dir: &str) {
        let prefix = format!("{dir}/");
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(wd, p)| **wd != self.root_wd && (*p == dir || p.starts_with(&prefix)))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            self.dirs.remove(&wd);
            let _ = self.inotify.rm_watch(wd);
        }
    }

    /// Turns what the kernel reported into events; `None` when the watch ends (its root is
    /// gone, or the kernel's queue overflowed: `overflowed` is set then).
    fn events(&mut self, out: &mut Vec<(FsOp, String)>, overflowed: &mut bool) -> Option<()> {
        // Up to 64 reads of 4 KiB per batch.
        for _ in 0..64 {
            let batch = match self.inotify.read_events() {
                Ok(b) => b,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            for ev in batch {
                let m = ev.mask;
                if m.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    // Changes were lost: the stream can no longer be trusted.
                    *overflowed = true;
                    return None;
                }
                let Some(dir) = self.dirs.get(&ev.wd).cloned() else {
                    continue;
                };
                let is_root = ev.wd == self.root_wd;
                let Some(name) = ev.name else {
                    // About the watched directory itself: reported by its parent's watch,
                    // except for the root.
                    if m.contains(AddWatchFlags::IN_IGNORED) {
                        self.dirs.remove(&ev.wd);
                    }
                    if is_root {
                        if m.contains(AddWatchFlags::IN_DELETE_SELF) {
                            out.push((FsOp::Remove, dir));
                            return None;
                        }
                        if m.contains(AddWatchFlags::IN_MOVE_SELF) {
                            out.push((FsOp::Rename, dir));
                            return None;
                        }
                        if m.contains(AddWatchFlags::IN_IGNORED) {
                            return None;
                        }
                        if m.contains(AddWatchFlags::IN_ATTRIB) {
                            out.push((FsOp::Chmod, dir));
                        }
                    }
                    continue;
                };
                let path = join(&dir, &name.to_string_lossy());
                let is_dir = m.contains(AddWatchFlags::IN_ISDIR);
                if m.intersects(AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO) {
                    if m.contains(AddWatchFlags::IN_CREATE) && self.scanned.remove(&path) {
                        // Reported by the scan already.
                        continue;
                    }
                    self.scanned.remove(&path);
                    out.push((FsOp::Create, path.clone()));
                    if is_dir && self.recursive {
                        self.add_new(&path, out);
                    }
                } else if m.contains(AddWatchFlags::IN_MODIFY) {
                    // Consecutive writes of one file in a batch are one event.
                    if out.last() != Some(&(FsOp::Write, path.clone())) {
                        out.push((FsOp::Write, path));
                    }
                } else if m.contains(AddWatchFlags::IN_DELETE) {
                    self.scanned.remove(&path);
                    out.push((FsOp::Remove, path));
                } else if m.contains(AddWatchFlags::IN_MOVED_FROM) {
                    self.scanned.remove(&path);
                    if is_dir {
                        self.forget(&path);
                    }
                    out.push((FsOp::Rename, path));
                } else if m.contains(AddWatchFlags::IN_ATTRIB) {
                    out.push((FsOp::Chmod, path));
                }
            }
        }
        Some(())
    }
}

/// Writes `events` as frames, in one write.
fn send(conn: &mut UnixStream, events: &[(FsOp, String)]) -> io::Result<()> {
    let mut buf = Vec::new();
    for (op, path) in events {
        let body = serde_json::to_vec(&Event::Fs {
            op: *op,
            path: path.clone(),
        })
        .map_err(io::Error::other)?;
        buf.extend_from_slice(&encode_header(FrameKind::Json, body.len())?);
        buf.extend_from_slice(&body);
    }
    conn.write_all(&buf)
}

/// [`Request::Watch`](faas_agent::Request::Watch): `Done` once the watches are set, then
/// [`Event::Fs`] until the host closes the connection (or the watched directory goes).
pub(crate) fn watch(mut conn: UnixStream, path: &str, recursive: bool) -> io::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

    if let Err(ev) = absolute(path) {
        return write_json(&mut conn, &ev);
    }
    let root = if path.len() > 1 {
        path.trim_end_matches('/').to_string()
    } else {
        path.to_string()
    };
    let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
        Ok(i) => i,
        Err(e) => {
            let message = format!("{path}: inotify: {e}");
            return write_json(&mut conn, &Event::error(ErrorKind::Other, message));
        }
    };
    // The root itself may be reached through a link.
    let root_wd = match inotify.add_watch(root.as_str(), WATCHED) {
        Ok(wd) => wd,
        Err(e) => return write_json(&mut conn, &io_error(path, &io::Error::from(e))),
    };
    let mut w = Watcher {
        inotify,
        recursive,
        root: root.clone(),
        root_wd,
        dirs: HashMap::from([(root_wd, root.clone())]),
        scanned: HashSet::new(),
    };
    if recursive {
        if let Err(ev) = w.add_tree(&root) {
            return write_json(&mut conn, &ev);
        }
    }
    write_json(&mut conn, &Event::Done)?;
    let mut out = Vec::new();
    loop {
        let mut fds = [
            PollFd::new(w.inotify.as_fd(), PollFlags::POLLIN),
            PollFd::new(conn.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(io::Error::from(e)),
        }
        let ready = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
        let (notified, host) = (ready(&fds[0]), ready(&fds[1]));
        if host && !peer_alive(&conn) {
            return Ok(());
        }
        if notified {
            out.clear();
            let mut overflowed = false;
            let alive = w.events(&mut out, &mut overflowed);
            if !out.is_empty() {
                match send(&mut conn, &out) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            if alive.is_none() {
                if overflowed {
                    // The watch ends here (its inotify fd is closed as `w` goes).
                    let ev = Event::error(
                        ErrorKind::Other,
                        "too many changes at once: the watch ended; watch again",
                    );
                    return match write_json(&mut conn, &ev) {
                        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
                        _ => Ok(()),
                    };
                }
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_only_from_a_small_regular_file() {
        let d = tempfile::tempdir().unwrap();
        let ok = d.path().join("passwd");
        std::fs::write(
            &ok,
            "root:x:0:0:root:/root:/bin/sh\nbob:x:1000:1000::/home/bob:\n",
        )
        .unwrap();
        let names = read_names(&ok);
        assert_eq!(names.get(&0).map(String::as_str), Some("root"));
        assert_eq!(names.get(&1000).map(String::as_str), Some("bob"));

        // A fifo nobody writes to: no hang.
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(read_names(&fifo).is_empty());
        // A link (here to an endless device): not followed.
        let zero = d.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert!(read_names(&zero).is_empty());
        // A link to a good file is not followed either.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        assert!(read_names(&link).is_empty());
        // The device itself.
        assert!(read_names(Path::new("/dev/zero")).is_empty());
        // Over 1 MiB.
        let big = d.path().join("big");
        let mut text = String::from("root:x:0:0::/:\n");
        while text.len() as u64 <= NAMES_FILE_MAX {
            text.push_str("padding:x:1:1::/:\n");
        }
        std::fs::write(&big, text).unwrap();
        assert!(read_names(&big).is_empty());
        // Missing.
        assert!(read_names(&d.path().join("none")).is_empty());
    }
}
