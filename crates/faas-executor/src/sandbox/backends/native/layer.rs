//! Freezing an overlay upper dir into a layer: a faithful copy that overlayfs can use as a lower
//! dir (whiteouts, opaque directories, owners, modes, times and extended attributes kept).
//!
//! The copy is made while the box is frozen (its freezer cgroup), so it is consistent; it costs
//! about what the instance's changes weigh, not what its image weighs.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::AtFlags;
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{fchownat, Gid, Uid};

use crate::error::{Error, Result};

/// Copies the tree at `src` to `dst` (which must not exist); returns the bytes of file data
/// copied. Hard links inside `src` become separate files.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<u64> {
    let meta = std::fs::symlink_metadata(src).map_err(|e| io(src, e))?;
    std::fs::create_dir(dst).map_err(|e| io(dst, e))?;
    let mut bytes = 0;
    copy_dir_contents(src, dst, &mut bytes)?;
    finish(src, dst, &meta)?;
    Ok(bytes)
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::io(format!("copy {}", path.display()), e)
}

fn copy_dir_contents(src: &Path, dst: &Path, bytes: &mut u64) -> Result<()> {
    for entry in std::fs::read_dir(src).map_err(|e| io(src, e))? {
        let entry = entry.map_err(|e| io(src, e))?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let meta = std::fs::symlink_metadata(&from).map_err(|e| io(&from, e))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(|e| io(&to, e))?;
            copy_dir_contents(&from, &to, bytes)?;
        } else if ft.is_file() {
            *bytes += std::fs::copy(&from, &to).map_err(|e| io(&from, e))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(|e| io(&from, e))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|e| io(&to, e))?;
        } else if (ft.is_char_device() || ft.is_block_device()) && meta.rdev() != 0 {
            // Only overlayfs whiteouts (character devices 0/0) are device nodes a box's files
            // may hold; anything else is not carried into a layer.
            tracing::warn!(path = %from.display(), "device node left out of a snapshot");
            continue;
        } else {
            // Whiteouts, fifos, sockets.
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else if ft.is_fifo() {
                SFlag::S_IFIFO
            } else {
                SFlag::S_IFSOCK
            };
            mknod(
                &to,
                kind,
                Mode::from_bits_truncate(meta.mode() & 0o7777),
                meta.rdev(),
            )
            .map_err(|e| io(&to, e.into()))?;
        }
        // For a directory, after its contents (which would change its times).
        finish(&from, &to, &meta)?;
    }
    Ok(())
}

/// Owner, mode, extended attributes (overlayfs keeps opaque-dir marks there) and times.
fn finish(from: &Path, to: &Path, meta: &std::fs::Metadata) -> Result<()> {
    fchownat(
        None,
        to,
        Some(Uid::from_raw(meta.uid())),
        Some(Gid::from_raw(meta.gid())),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io(to, e.into()))?;
    let symlink = meta.file_type().is_symlink();
    if !symlink {
        // After chown, which clears setuid/setgid bits.
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(|e| io(to, e))?;
    }
    if let Ok(names) = xattr::list(from) {
        for name in names {
            if let Ok(Some(value)) = xattr::get(from, &name) {
                xattr::set(to, &name, &value).map_err(|e| io(to, e))?;
            }
        }
    }
    let times = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        to,
        &times(meta.atime(), meta.atime_nsec()),
        &times(meta.mtime(), meta.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io(to, e.into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_files_links_whiteouts_modes_and_xattrs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("upper");
        std::fs::create_dir_all(src.join("data/sub")).unwrap();
        std::fs::write(src.join("data/x"), vec![7u8; 10_000]).unwrap();
        std::fs::set_permissions(src.join("data/x"), std::fs::Permissions::from_mode(0o751))
            .unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("data/link")).unwrap();
        // A whiteout: character device 0/0.
        mknod(
            &src.join("data/gone"),
            SFlag::S_IFCHR,
            Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .unwrap();
        xattr::set(src.join("data/sub"), "trusted.overlay.opaque", b"y").unwrap();
        // A real device (here /dev/null's numbers) is not carried into a layer.
        mknod(
            &src.join("data/null"),
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
        let dst = t.path().join("layer");
        let bytes = copy_tree(&src, &dst).unwrap();
        assert_eq!(bytes, 10_000);
        assert_eq!(
            std::fs::read(dst.join("data/x")).unwrap(),
            vec![7u8; 10_000]
        );
        let m = std::fs::metadata(dst.join("data/x")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o751);
        assert_eq!(
            std::fs::read_link(dst.join("data/link")).unwrap(),
            Path::new("/etc/passwd")
        );
        let w = std::fs::symlink_metadata(dst.join("data/gone")).unwrap();
        assert!(w.file_type().is_char_device() && w.rdev() == 0);
        assert!(std::fs::symlink_metadata(dst.join("data/null")).is_err());
        assert_eq!(
            xattr::get(dst.join("data/sub"), "trusted.overlay.opaque").unwrap(),
            Some(b"y".to_vec())
        );
        // The destination must be new: nothing is merged into an existing tree.
        assert!(copy_tree(&src, &dst).is_err());
    }
}
