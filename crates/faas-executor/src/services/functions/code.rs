//! A function's code on the host: checked at deploy, unpacked once per tenant and content into
//! `<functions dir>/code/<tenant>/<key>/`, and bound read-only at `/var/task` in its sandboxes
//! (two tenants never share a directory, even for the same bytes).
//!
//! Archives are hostile input: tar(.gz) goes through the one unpacking routine
//! (`images::unpack`, untrusted policy); a zip is re-read entry by entry into a tar stream and
//! goes through the same routine, so both meet the same checks (no `..`, no absolute paths, no
//! links out, no devices, no setuid, size and entry caps).

use std::io::{Cursor, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::sandbox::images::unpack::{maybe_gunzip, unpack, Trust, UnpackPolicy};

/// Where code is bound inside a function's sandbox.
pub const GUEST_CODE_DIR: &str = "/var/task";
/// Cap on a function's unpacked code.
pub const MAX_UNPACKED_BYTES: u64 = 512 << 20;
pub const MAX_ENTRIES: u64 = 20_000;

/// The deployed bytes and how to lay them out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeForm {
    /// One file, written as `name`.
    File {
        name: String,
    },
    Archive,
}

/// A content key: the same code laid out the same way shares one directory.
pub fn key(form: &CodeForm, code: &[u8]) -> String {
    let mut h = Sha256::new();
    match form {
        CodeForm::File { name } => {
            h.update(b"file\0");
            h.update(name.as_bytes());
        }
        CodeForm::Archive => h.update(b"archive"),
    }
    h.update(b"\0");
    h.update(code);
    hex::encode(h.finalize())
}

pub fn sha256(code: &[u8]) -> String {
    hex::encode(Sha256::digest(code))
}

/// Where `tenant`'s code is unpacked under the code store `root`. Tenant ids are checked when
/// made; this refuses anything that is not one plain path component all the same.
pub fn tenant_root(root: &Path, tenant: &str) -> Result<PathBuf> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && !tenant.starts_with('.')
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(root.join(tenant))
    } else {
        Err(Error::Internal(format!(
            "tenant id {tenant:?} is not a plain name"
        )))
    }
}

/// The unpacked code of `code` under `root`, made now if it is not there yet (atomically: a
/// temp dir renamed into place).
pub fn materialize(root: &Path, form: &CodeForm, code: &[u8]) -> Result<PathBuf> {
    let dir = root.join(key(form, code));
    if dir.is_dir() {
        return Ok(dir);
    }
    std::fs::create_dir_all(root)
        .map_err(|e| Error::io(format!("create {}", root.display()), e))?;
    let tmp = tempdir_in(root)?;
    lay_out(tmp.path(), form, code)?;
    let path = tmp.keep();
    // The code is read by the sandbox's (possibly unprivileged) user.
    let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755));
    match std::fs::rename(&path, &dir) {
        Ok(()) => Ok(dir),
        // Another request made it first: same content.
        Err(_) if dir.is_dir() => {
            let _ = std::fs::remove_dir_all(&path);
            Ok(dir)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&path);
            Err(Error::io(format!("rename into {}", dir.display()), e))
        }
    }
}

fn tempdir_in(root: &Path) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(".unpack-")
        .tempdir_in(root)
        .map_err(|e| Error::io(format!("temp dir in {}", root.display()), e))
}

fn lay_out(dest: &Path, form: &CodeForm, code: &[u8]) -> Result<()> {
    match form {
        CodeForm::File { name } => {
            check_file_name(name)?;
            let path = dest.join(name);
            std::fs::write(&path, code)
                .map_err(|e| Error::io(format!("write {}", path.display()), e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| Error::io(format!("chmod {}", path.display()), e))
        }
        CodeForm::Archive => unpack_archive(dest, code),
    }
}

/// A plain file name: no directories, no `..`, nothing hidden or odd.
pub fn check_file_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRequest(format!(
            "invalid code file name {name:?}: letters, digits, '_', '-' and '.' only"
        )))
    }
}

fn policy() -> UnpackPolicy {
    UnpackPolicy {
        max_bytes: MAX_UNPACKED_BYTES,
        max_entries: MAX_ENTRIES,
        ..UnpackPolicy::new(Trust::Untrusted, false)
    }
}

fn bad_archive(e: impl std::fmt::Display) -> Error {
    Error::InvalidRequest(format!("code archive: {e}"))
}

/// Unpacks a zip or tar(.gz) archive into `dest`.
pub fn unpack_archive(dest: &Path, code: &[u8]) -> Result<()> {
    let tar_bytes;
    let reader: Box<dyn Read> =
        if code.starts_with(b"PK\x03\x04") || code.starts_with(b"PK\x05\x06") {
            tar_bytes = zip_to_tar(code)?;
            Box::new(Cursor::new(&tar_bytes[..]))
        } else {
            maybe_gunzip(Cursor::new(code)).map_err(bad_archive)?
        };
    unpack(reader, dest, &policy()).map_err(bad_archive)?;
    Ok(())
}

/// Re-reads a zip archive as a tar stream (files, directories, symlinks), so the one checked
/// unpacking routine handles both formats. Sizes are capped while reading.
fn zip_to_tar(code: &[u8]) -> Result<Vec<u8>> {
    let mut zip = zip::ZipArchive::new(Cursor::new(code)).map_err(bad_archive)?;
    if zip.len() as u64 > MAX_ENTRIES {
        return Err(bad_archive(format!(
            "{} entries, over the {MAX_ENTRIES} limit",
            zip.len()
        )));
    }
    let mut out = tar::Builder::new(Vec::new());
    let mut total: u64 = 0;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(bad_archive)?;
        // The raw name: the unpack routine decides what is safe, not the zip crate.
        let name = String::from_utf8_lossy(entry.name_raw()).to_string();
        let mode = entry.unix_mode().unwrap_or(0);
        let mut data = Vec::new();
        (&mut entry)
            .take(MAX_UNPACKED_BYTES + 1 - total)
            .read_to_end(&mut data)
            .map_err(bad_archive)?;
        total += data.len() as u64;
        if total > MAX_UNPACKED_BYTES {
            return Err(bad_archive(format!(
                "more than {MAX_UNPACKED_BYTES} bytes unpacked"
            )));
        }
        let mut h = tar::Header::new_gnu();
        let is_link = mode & 0o170000 == 0o120000;
        if entry.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
        } else if is_link {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_mode(0o777);
        } else {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 });
            h.set_size(data.len() as u64);
        }
        // Raw bytes into the header: `set_path` would refuse (or fix) hostile names before
        // the unpacker can, and a clear refusal is the unpacker's job.
        let raw = name.as_bytes();
        let gnu = h.as_gnu_mut().ok_or_else(|| bad_archive("tar header"))?;
        if raw.len() > gnu.name.len() {
            return Err(bad_archive(format!("entry name too long: {name:?}")));
        }
        gnu.name[..raw.len()].copy_from_slice(raw);
        if is_link {
            let target = String::from_utf8_lossy(&data).to_string();
            h.set_link_name(&target).map_err(bad_archive)?;
            h.set_cksum();
            out.append(&h, std::io::empty()).map_err(bad_archive)?;
        } else {
            h.set_cksum();
            out.append(&h, &data[..]).map_err(bad_archive)?;
        }
    }
    out.into_inner().map_err(bad_archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zip_of(entries: &[(&str, &[u8], Option<u32>)]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data, mode) in entries {
            let mut opts = zip::write::SimpleFileOptions::default();
            if let Some(m) = mode {
                opts = opts.unix_permissions(*m);
            }
            if mode.is_some_and(|m| m & 0o170000 == 0o120000) {
                w.add_symlink(*name, String::from_utf8_lossy(data), opts)
                    .unwrap();
            } else {
                w.start_file(*name, opts).unwrap();
                w.write_all(data).unwrap();
            }
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn zip_and_tar_archives_unpack() {
        let root = tempfile::tempdir().unwrap();
        let z = zip_of(&[
            ("main.py", b"def handler(e, c): return 1\n", None),
            ("pkg/mod.py", b"x = 1\n", None),
        ]);
        let dir = materialize(root.path(), &CodeForm::Archive, &z).unwrap();
        assert!(dir.join("pkg/mod.py").is_file());
        // Same content, same directory.
        assert_eq!(
            materialize(root.path(), &CodeForm::Archive, &z).unwrap(),
            dir
        );

        let mut t = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        t.append_data(&mut h, "index.js", &b"1;\n"[..]).unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&t.into_inner().unwrap()).unwrap();
        let dir = materialize(root.path(), &CodeForm::Archive, &gz.finish().unwrap()).unwrap();
        assert!(dir.join("index.js").is_file());
    }

    #[test]
    fn each_tenant_has_its_own_code_dirs() {
        let root = tempfile::tempdir().unwrap();
        let form = CodeForm::File {
            name: "main.py".into(),
        };
        let code = b"def handler(e, c): return 1\n";
        let a = materialize(&tenant_root(root.path(), "a").unwrap(), &form, code).unwrap();
        let b = materialize(&tenant_root(root.path(), "b").unwrap(), &form, code).unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(root.path().join("a")) && b.starts_with(root.path().join("b")));
        for bad in ["", "..", ".x", "a/b", "a\0"] {
            assert!(tenant_root(root.path(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hostile_zips_are_refused_and_write_nothing_outside() {
        let root = tempfile::tempdir().unwrap();
        let store = root.path().join("code");
        for (name, data, mode) in [
            ("../../escape.txt", &b"x"[..], None),
            ("/abs.txt", &b"x"[..], None),
            ("link", &b"../../../etc"[..], Some(0o120777)),
        ] {
            let z = zip_of(&[(name, data, mode)]);
            let err = materialize(&store, &CodeForm::Archive, &z).unwrap_err();
            assert!(matches!(err, Error::InvalidRequest(_)), "{name}: {err:?}");
        }
        assert!(!root.path().join("escape.txt").exists());
        assert!(!Path::new("/abs.txt").exists());
        // Nothing half-made is left in the store.
        let left: Vec<_> = std::fs::read_dir(&store).unwrap().collect();
        assert!(left.is_empty(), "{left:?}");
        let err = unpack_archive(root.path(), b"not an archive at all").unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err:?}");
    }

    #[test]
    fn single_files_get_plain_names() {
        let root = tempfile::tempdir().unwrap();
        for bad in ["../x", "a/b", ".hidden", ""] {
            let form = CodeForm::File { name: bad.into() };
            assert!(materialize(root.path(), &form, b"x").is_err(), "{bad}");
        }
        let form = CodeForm::File {
            name: "handler.sh".into(),
        };
        let dir = materialize(root.path(), &form, b"echo hi").unwrap();
        let meta = std::fs::metadata(dir.join("handler.sh")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    }
}
