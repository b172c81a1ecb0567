//! The one routine that unpacks tar archives (image layers, rootfs tarballs, image archives).
//!
//! Archives are hostile input. Nothing is written outside `dest`:
//! - entry paths must be relative and may not contain `..` (refused);
//! - no write goes through a symlink: every parent of an entry must be a real directory
//!   (refused otherwise), and an existing final path is removed, never followed;
//! - hard links must point at a regular file inside `dest` (refused otherwise);
//! - from untrusted sources, absolute symlink targets are rewritten relative to the root
//!   (neutralised: they resolve to the same place inside the box), a relative target that
//!   climbs above the root is refused, setuid/setgid bits are stripped, and device nodes are
//!   refused (those under `dev/`, which every sandbox mounts as tmpfs, are skipped);
//! - total size and entry count are capped.
//!
//! Layer whiteouts (`.wh.NAME`, `.wh..wh..opq`) become overlayfs whiteouts when asked.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use tar::EntryType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// The operator's own images (the local Docker daemon).
    Trusted,
    /// Anything a user hands over: rootfs tarballs, image archives, directories.
    Untrusted,
}

#[derive(Debug, Clone)]
pub struct UnpackPolicy {
    pub trust: Trust,
    /// Turn `.wh.` entries into overlayfs whiteouts (for image layers).
    pub whiteouts: bool,
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl UnpackPolicy {
    pub fn new(trust: Trust, whiteouts: bool) -> Self {
        UnpackPolicy {
            trust,
            whiteouts,
            max_bytes: 16 << 30,
            max_entries: 2_000_000,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UnpackReport {
    pub entries: u64,
    pub bytes: u64,
    pub skipped_devices: u64,
    pub rewritten_links: u64,
    pub stripped_setid: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("archive entry {0:?} has an absolute path")]
    AbsolutePath(String),
    #[error("archive entry {0:?} climbs out of the target with `..`")]
    EscapingPath(String),
    #[error("archive entry {entry:?} would be written through the symlink {link:?}")]
    ThroughSymlink { entry: String, link: String },
    #[error("archive entry {entry:?} is a link to {target:?}, outside the target")]
    LinkEscapes { entry: String, target: String },
    #[error("archive entry {0:?} is a device node, which is not accepted from this source")]
    DeviceNode(String),
    #[error("archive entry {entry:?} would replace a {what} at the same path")]
    Conflict { entry: String, what: &'static str },
    #[error("archive is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("archive has more than {0} entries")]
    TooManyEntries(u64),
    #[error("archive entry {entry:?}")]
    Io {
        entry: String,
        #[source]
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, UnpackError>;

/// Reads a possibly gzip-compressed tar stream.
pub fn maybe_gunzip<'a>(mut r: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut magic = [0u8; 2];
    let mut n = 0;
    while n < 2 {
        match r.read(&mut magic[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let chained = head.chain(r);
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(chained)))
    } else {
        Ok(Box::new(chained))
    }
}

/// A relative path made of normal components only; `None` for the root itself.
fn clean(entry: &Path) -> Result<Option<PathBuf>> {
    let shown = || entry.display().to_string();
    let mut out = PathBuf::new();
    for c in entry.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err(UnpackError::EscapingPath(shown())),
            Component::RootDir | Component::Prefix(_) => {
                return Err(UnpackError::AbsolutePath(shown()))
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Checks that every proper prefix of `rel` under `dest` is a real directory, creating the
/// missing ones when `create`.
fn parents(dest: &Path, rel: &Path, create: bool, entry: &str) -> Result<()> {
    let mut cur = dest.to_path_buf();
    let Some(parent) = rel.parent() else {
        return Ok(());
    };
    for c in parent.components() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(UnpackError::ThroughSymlink {
                    entry: entry.into(),
                    link: cur.strip_prefix(dest).unwrap_or(&cur).display().to_string(),
                })
            }
            Ok(_) => {
                return Err(UnpackError::Conflict {
                    entry: entry.into(),
                    what: "file",
                })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                fs::create_dir(&cur).map_err(|source| UnpackError::Io {
                    entry: entry.into(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(UnpackError::Io {
                    entry: entry.into(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Removes whatever is at `path` (never following it), unless it is a directory that `keep_dir`.
fn clear(path: &Path, keep_dir: bool, entry: &str) -> Result<()> {
    let io = |source| UnpackError::Io {
        entry: entry.into(),
        source,
    };
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() && keep_dir => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(io),
        Ok(_) => fs::remove_file(path).map_err(io),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

/// Where a symlink at `rel` with `target` points, lexically, relative to the root; `None` when
/// it climbs above the root.
fn resolve_link(rel: &Path, target: &Path) -> Option<PathBuf> {
    let mut out: Vec<&std::ffi::OsStr> = Vec::new();
    let base: Vec<_> = if target.is_absolute() {
        Vec::new()
    } else {
        rel.parent()
            .map(|p| p.components().collect())
            .unwrap_or_default()
    };
    for c in base.into_iter().chain(target.components()) {
        match c {
            Component::Normal(p) => out.push(p),
            Component::ParentDir => {
                out.pop()?;
            }
            Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
        }
    }
    Some(out.iter().collect())
}

/// `to` (relative to the root) as seen from the directory holding `from`.
fn relative_from(from: &Path, to: &Path) -> PathBuf {
    let depth = from.parent().map(|p| p.components().count()).unwrap_or(0);
    let mut p = PathBuf::new();
    for _ in 0..depth {
        p.push("..");
    }
    p.push(to);
    if p.as_os_str().is_empty() {
        p.push(".");
    }
    p
}

/// Unpacks the tar stream `r` into `dest` (which must exist) under `policy`.
pub fn unpack(r: impl Read, dest: &Path, policy: &UnpackPolicy) -> Result<UnpackReport> {
    let mut archive = tar::Archive::new(r);
    let mut report = UnpackReport::default();
    let entries = archive.entries().map_err(|source| UnpackError::Io {
        entry: String::new(),
        source,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Io {
            entry: String::new(),
            source,
        })?;
        report.entries += 1;
        if report.entries > policy.max_entries {
            return Err(UnpackError::TooManyEntries(policy.max_entries));
        }
        let raw = entry
            .path()
            .map_err(|source| UnpackError::Io {
                entry: String::new(),
                source,
            })?
            .into_owned();
        let name = raw.display().to_string();
        let io = |source| UnpackError::Io {
            entry: name.clone(),
            source,
        };
        let Some(rel) = clean(&raw)? else { continue };
        let kind = entry.header().entry_type();
        let mut mode = entry.header().mode().map_err(io)? & 0o7777;
        if policy.trust == Trust::Untrusted && mode & 0o6000 != 0 {
            mode &= !0o6000;
            report.stripped_setid += 1;
        }
        let uid = entry
            .header()
            .uid()
            .ok()
            .and_then(|u| u32::try_from(u).ok());
        let gid = entry
            .header()
            .gid()
            .ok()
            .and_then(|g| u32::try_from(g).ok());

        let file_name = rel.file_name().and_then(|f| f.to_str()).unwrap_or("");
        if policy.whiteouts && file_name.starts_with(".wh.") {
            parents(dest, &rel, true, &name)?;
            let dir = dest.join(rel.parent().unwrap_or(Path::new("")));
            if file_name == ".wh..wh..opq" {
                xattr::set(&dir, "trusted.overlay.opaque", b"y").map_err(io)?;
            } else {
                let hidden = dir.join(&file_name[4..]);
                clear(&hidden, false, &name)?;
                mknod(&hidden, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
                    .map_err(|e| io(io::Error::from(e)))?;
            }
            continue;
        }

        let path = dest.join(&rel);
        match kind {
            EntryType::Directory => {
                parents(dest, &rel, true, &name)?;
                clear(&path, true, &name)?;
                if !path.is_dir() {
                    fs::create_dir(&path).map_err(io)?;
                }
            }
            EntryType::Regular | EntryType::Continuous => {
                parents(dest, &rel, true, &name)?;
                clear(&path, false, &name)?;
                let size = entry.header().size().map_err(io)?;
                if report.bytes + size > policy.max_bytes {
                    return Err(UnpackError::TooLarge(policy.max_bytes));
                }
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .open(&path)
                    .map_err(io)?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut f).map_err(io)?;
                report.bytes += copied;
            }
            EntryType::Symlink => {
                let target = entry.link_name().map_err(io)?.ok_or_else(|| {
                    io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "symlink without a target",
                    ))
                })?;
                let target = target.into_owned();
                parents(dest, &rel, true, &name)?;
                clear(&path, false, &name)?;
                let resolved = resolve_link(&rel, &target);
                let stored = match (policy.trust, resolved) {
                    (Trust::Trusted, _) => target,
                    (Trust::Untrusted, None) => {
                        return Err(UnpackError::LinkEscapes {
                            entry: name,
                            target: target.display().to_string(),
                        })
                    }
                    (Trust::Untrusted, Some(inside)) if target.is_absolute() => {
                        report.rewritten_links += 1;
                        relative_from(&rel, &inside)
                    }
                    (Trust::Untrusted, Some(_)) => target,
                };
                symlink(&stored, &path).map_err(io)?;
                if let (Some(u), Some(g)) = (uid, gid) {
                    std::os::unix::fs::lchown(&path, Some(u), Some(g)).map_err(io)?;
                }
                continue;
            }
            EntryType::Link => {
                let target = entry.link_name().map_err(io)?.ok_or_else(|| {
                    io(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "hard link without a target",
                    ))
                })?;
                let escapes = || UnpackError::LinkEscapes {
                    entry: name.clone(),
                    target: target.display().to_string(),
                };
                let src_rel = clean(&target).map_err(|_| escapes())?.ok_or_else(escapes)?;
                parents(dest, &src_rel, false, &name)?;
                let src = dest.join(&src_rel);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() => {}
                    _ => return Err(escapes()),
                }
                parents(dest, &rel, true, &name)?;
                clear(&path, false, &name)?;
                fs::hard_link(&src, &path).map_err(io)?;
                continue;
            }
            EntryType::Char | EntryType::Block => {
                let under_dev = rel.starts_with("dev");
                if policy.trust == Trust::Untrusted && !under_dev {
                    return Err(UnpackError::DeviceNode(name));
                }
                report.skipped_devices += 1;
                continue;
            }
            EntryType::Fifo => {
                parents(dest, &rel, true, &name)?;
                clear(&path, false, &name)?;
                nix::unistd::mkfifo(&path, Mode::from_bits_truncate(mode & 0o777))
                    .map_err(|e| io(io::Error::from(e)))?;
            }
            // pax/GNU headers are folded into the entries by the tar crate; skip the rest.
            _ => continue,
        }
        if let (Some(u), Some(g)) = (uid, gid) {
            std::os::unix::fs::lchown(&path, Some(u), Some(g)).map_err(io)?;
        }
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io)?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with raw, unchecked entries: (name, type, link target, data, mode).
    fn hostile_tar(entries: &[(&str, EntryType, &str, &[u8], u32)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, link, data, mode) in entries {
            let mut h = tar::Header::new_gnu();
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            if !link.is_empty() {
                gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            h.set_entry_type(*kind);
            h.set_mode(*mode);
            h.set_size(data.len() as u64);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    struct Dirs {
        _tmp: tempfile::TempDir,
        dest: PathBuf,
        outside: PathBuf,
    }

    fn dirs() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("store/layer");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&dest).unwrap();
        fs::create_dir_all(&outside).unwrap();
        Dirs {
            dest,
            outside,
            _tmp: tmp,
        }
    }

    fn untrusted() -> UnpackPolicy {
        UnpackPolicy::new(Trust::Untrusted, false)
    }

    fn count_files(d: &Path) -> usize {
        fs::read_dir(d).unwrap().count()
    }

    #[test]
    fn a_normal_rootfs_unpacks_exactly() {
        let d = dirs();
        let tar = hostile_tar(&[
            ("./bin/", EntryType::Directory, "", b"", 0o755),
            (
                "./bin/busybox",
                EntryType::Regular,
                "",
                b"\x7fELF...",
                0o755,
            ),
            ("./bin/sh", EntryType::Symlink, "busybox", b"", 0o777),
            ("./bin/ash", EntryType::Link, "bin/busybox", b"", 0o755),
            (
                "./etc/passwd",
                EntryType::Regular,
                "",
                b"root:x:0:0::/root:/bin/sh\n",
                0o644,
            ),
        ]);
        let r = unpack(&tar[..], &d.dest, &untrusted()).unwrap();
        assert_eq!(r.entries, 5);
        assert_eq!(fs::read(d.dest.join("bin/busybox")).unwrap(), b"\x7fELF...");
        assert_eq!(
            fs::read_link(d.dest.join("bin/sh")).unwrap(),
            Path::new("busybox")
        );
        assert_eq!(fs::read(d.dest.join("bin/ash")).unwrap(), b"\x7fELF...");
        let mode = fs::metadata(d.dest.join("bin/busybox"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn the_hostile_tarball_is_refused_and_writes_nothing_outside() {
        let d = dirs();
        let tar = hostile_tar(&[
            ("../../outside/x", EntryType::Regular, "", b"pwned", 0o644),
            ("evil", EntryType::Symlink, "/etc/passwd", b"", 0o777),
            ("null", EntryType::Char, "", b"", 0o666),
        ]);
        let err = unpack(&tar[..], &d.dest, &untrusted()).unwrap_err();
        assert!(matches!(err, UnpackError::EscapingPath(_)), "{err}");
        assert!(err.to_string().contains("../../outside/x"), "{err}");
        assert_eq!(count_files(&d.outside), 0);
        // Each hostile part alone is refused too (or neutralised, for the absolute link).
        let tar = hostile_tar(&[("/etc/x", EntryType::Regular, "", b"x", 0o644)]);
        assert!(matches!(
            unpack(&tar[..], &d.dest, &untrusted()),
            Err(UnpackError::AbsolutePath(_))
        ));
        let tar = hostile_tar(&[("null", EntryType::Char, "", b"", 0o666)]);
        assert!(matches!(
            unpack(&tar[..], &d.dest, &untrusted()),
            Err(UnpackError::DeviceNode(_))
        ));
    }

    #[test]
    fn absolute_link_targets_are_rewritten_inside_the_root() {
        let d = dirs();
        let tar = hostile_tar(&[
            (
                "usr/bin/awk",
                EntryType::Symlink,
                "/etc/alternatives/awk",
                b"",
                0o777,
            ),
            ("top", EntryType::Symlink, "/", b"", 0o777),
        ]);
        let r = unpack(&tar[..], &d.dest, &untrusted()).unwrap();
        assert_eq!(r.rewritten_links, 2);
        assert_eq!(
            fs::read_link(d.dest.join("usr/bin/awk")).unwrap(),
            Path::new("../../etc/alternatives/awk")
        );
        assert_eq!(fs::read_link(d.dest.join("top")).unwrap(), Path::new("."));
        // Trusted sources keep their links as they are (they resolve inside the box).
        let tar = hostile_tar(&[("sh", EntryType::Symlink, "/bin/busybox", b"", 0o777)]);
        unpack(&tar[..], &d.dest, &UnpackPolicy::new(Trust::Trusted, true)).unwrap();
        assert_eq!(
            fs::read_link(d.dest.join("sh")).unwrap(),
            Path::new("/bin/busybox")
        );
    }

    #[test]
    fn links_that_leave_the_root_are_refused() {
        let d = dirs();
        let tar = hostile_tar(&[("a/b", EntryType::Symlink, "../../../outside", b"", 0o777)]);
        assert!(matches!(
            unpack(&tar[..], &d.dest, &untrusted()),
            Err(UnpackError::LinkEscapes { .. })
        ));
        let tar = hostile_tar(&[("h", EntryType::Link, "../outside/x", b"", 0o644)]);
        assert!(matches!(
            unpack(&tar[..], &d.dest, &untrusted()),
            Err(UnpackError::LinkEscapes { .. })
        ));
        let tar = hostile_tar(&[("h", EntryType::Link, "/etc/passwd", b"", 0o644)]);
        assert!(matches!(
            unpack(&tar[..], &d.dest, &untrusted()),
            Err(UnpackError::LinkEscapes { .. })
        ));
    }

    #[test]
    fn writes_never_go_through_a_symlink() {
        let d = dirs();
        let outside = d.outside.display().to_string();
        // Even a trusted archive cannot use a link it planted to write elsewhere.
        let tar = hostile_tar(&[
            ("a", EntryType::Symlink, &outside, b"", 0o777),
            ("a/x", EntryType::Regular, "", b"pwned", 0o644),
        ]);
        let err = unpack(&tar[..], &d.dest, &UnpackPolicy::new(Trust::Trusted, true)).unwrap_err();
        assert!(matches!(err, UnpackError::ThroughSymlink { .. }), "{err}");
        assert_eq!(count_files(&d.outside), 0);
        // Replacing a planted link with a file removes the link instead of following it.
        fs::write(d.outside.join("victim"), b"safe").unwrap();
        let target = d.outside.join("victim").display().to_string();
        let tar = hostile_tar(&[
            ("v", EntryType::Symlink, &target, b"", 0o777),
            ("v", EntryType::Regular, "", b"pwned", 0o644),
        ]);
        unpack(&tar[..], &d.dest, &UnpackPolicy::new(Trust::Trusted, true)).unwrap();
        assert_eq!(fs::read(d.outside.join("victim")).unwrap(), b"safe");
        assert_eq!(fs::read(d.dest.join("v")).unwrap(), b"pwned");
    }

    #[test]
    fn setid_bits_are_stripped_from_untrusted_archives() {
        let d = dirs();
        let tar = hostile_tar(&[("su", EntryType::Regular, "", b"x", 0o4755)]);
        let r = unpack(&tar[..], &d.dest, &untrusted()).unwrap();
        assert_eq!(r.stripped_setid, 1);
        let mode = fs::metadata(d.dest.join("su"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn size_and_entry_limits_hold() {
        let d = dirs();
        let big = vec![0u8; 4096];
        let tar = hostile_tar(&[
            ("a", EntryType::Regular, "", &big, 0o644),
            ("b", EntryType::Regular, "", &big, 0o644),
        ]);
        let p = UnpackPolicy {
            max_bytes: 5000,
            ..untrusted()
        };
        assert!(matches!(
            unpack(&tar[..], &d.dest, &p),
            Err(UnpackError::TooLarge(5000))
        ));
        let p = UnpackPolicy {
            max_entries: 1,
            ..untrusted()
        };
        assert!(matches!(
            unpack(&tar[..], &d.dest, &p),
            Err(UnpackError::TooManyEntries(1))
        ));
    }

    #[test]
    fn device_nodes_under_dev_are_skipped_and_garbage_is_an_error() {
        let d = dirs();
        let tar = hostile_tar(&[("dev/null", EntryType::Char, "", b"", 0o666)]);
        let r = unpack(&tar[..], &d.dest, &untrusted()).unwrap();
        assert_eq!(r.skipped_devices, 1);
        assert!(!d.dest.join("dev/null").exists());
        let garbage = vec![0x42u8; 1024];
        assert!(unpack(&garbage[..], &d.dest, &untrusted()).is_err());
    }

    #[test]
    fn gzip_is_detected_and_whiteouts_become_overlay_whiteouts() {
        let d = dirs();
        let tar = hostile_tar(&[
            ("etc/.wh.gone", EntryType::Regular, "", b"", 0o644),
            ("var/.wh..wh..opq", EntryType::Regular, "", b"", 0o644),
        ]);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let gz = gz.finish().unwrap();
        let r = maybe_gunzip(&gz[..]).unwrap();
        unpack(r, &d.dest, &UnpackPolicy::new(Trust::Trusted, true)).unwrap();
        use std::os::unix::fs::FileTypeExt;
        let m = fs::symlink_metadata(d.dest.join("etc/gone")).unwrap();
        assert!(m.file_type().is_char_device());
        assert_eq!(
            xattr::get(d.dest.join("var"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
    }
}
