//! Content-addressed image store on disk:
//!
//! ```text
//! <root>/layers/<sha256 hex>/   one unpacked layer, written once, never changed
//! <root>/refs/<sha256(name)>.json   an image: its name, layers (bottom first), env, workdir
//! <root>/tmp/                   work in progress; emptied on open
//! ```
//!
//! Imports unpack into `tmp/` and rename into place, so a crash leaves no half layer.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::unpack::{maybe_gunzip, unpack, Trust, UnpackPolicy};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    /// Layer digests (sha256 hex), bottom layer first.
    pub layers: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    /// Where it came from: `docker:NAME`, `archive:PATH`, `dir:PATH`.
    pub source: String,
    /// Bytes of file content in its layers, measured at import.
    pub size_bytes: u64,
    pub created_unix: u64,
}

pub struct ImageStore {
    root: PathBuf,
}

/// `busybox` → `busybox:latest`; names with a tag or digest are kept.
pub fn normalize_name(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn valid_digest(d: &str) -> Option<&str> {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// An error with its causes, for messages that carry them to the user.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn bad(msg: impl Into<String>) -> Error {
    Error::InvalidRequest(msg.into())
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::io(what.to_string(), e)
}

fn du(p: &Path) -> u64 {
    let Ok(m) = fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| du(&e.path())).sum())
            .unwrap_or(0)
    } else if m.is_file() {
        m.len()
    } else {
        0
    }
}

impl ImageStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in ["layers", "refs", "tmp"] {
            fs::create_dir_all(root.join(d))
                .map_err(io_err(format!("create {}", root.join(d).display())))?;
        }
        // Work left by processes that are gone (a CLI import may run beside a server, so
        // only dead owners' work is removed).
        if let Ok(rd) = fs::read_dir(root.join("tmp")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
                if owner.is_none_or(|p| !Path::new(&format!("/proc/{p}")).exists()) {
                    let _ = fs::remove_dir_all(e.path()).or_else(|_| fs::remove_file(e.path()));
                }
            }
        }
        Ok(ImageStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn layer_path(&self, digest: &str) -> PathBuf {
        self.root.join("layers").join(digest)
    }

    fn ref_path(&self, name: &str) -> PathBuf {
        self.root
            .join("refs")
            .join(format!("{}.json", sha256_hex(name.as_bytes())))
    }

    fn tmp(&self, what: &str) -> Result<PathBuf> {
        let p = self.root.join("tmp").join(format!(
            "{}-{what}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
        Ok(p)
    }

    pub fn get(&self, name: &str) -> Result<Option<ImageRecord>> {
        let p = self.ref_path(&normalize_name(name));
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Internal(format!("image record {}: {e}", p.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
        }
    }

    pub fn list(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("refs");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir)
            .map_err(io_err(format!("read {}", dir.display())))?
            .flatten()
        {
            if let Ok(rec) = fs::read(e.path()).map(|b| serde_json::from_slice::<ImageRecord>(&b)) {
                out.extend(rec.ok());
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The overlay lower dirs of an image, top layer first.
    pub fn lower_dirs(&self, rec: &ImageRecord) -> Vec<PathBuf> {
        rec.layers
            .iter()
            .rev()
            .map(|d| self.layer_path(d))
            .collect()
    }

    /// Writes (or replaces) an image record.
    pub fn save(&self, rec: &ImageRecord) -> Result<()> {
        let p = self.ref_path(&rec.name);
        let tmp = p.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(rec).map_err(|e| Error::Internal(e.to_string()))?;
        fs::write(&tmp, body).map_err(io_err(format!("write {}", tmp.display())))?;
        fs::rename(&tmp, &p).map_err(io_err(format!("rename {}", p.display())))
    }

    /// Moves an unpacked layer into place; a layer that is already there wins.
    fn commit_layer(&self, unpacked: &Path, digest: &str) -> Result<()> {
        let dest = self.layer_path(digest);
        if dest.exists() || fs::rename(unpacked, &dest).is_err() {
            let _ = fs::remove_dir_all(unpacked);
        }
        if dest.is_dir() {
            Ok(())
        } else {
            Err(Error::Internal(format!(
                "layer {digest} could not be stored"
            )))
        }
    }

    /// Unpacks one layer file (tar, maybe gzip) unless a layer with `digest` exists. When
    /// `digest` is unknown, it is the sha256 of the file.
    fn import_layer(&self, file: &Path, digest: Option<&str>, trust: Trust) -> Result<String> {
        if let Some(d) = digest {
            if self.layer_path(d).is_dir() {
                return Ok(d.to_string());
            }
        }
        let f = File::open(file).map_err(io_err(format!("open layer {}", file.display())))?;
        let mut hashing = HashingReader {
            inner: f,
            hasher: Sha256::new(),
        };
        let dir = self.tmp("layer")?;
        let unpacked = (|| {
            let r = maybe_gunzip(&mut hashing)
                .map_err(io_err(format!("read layer {}", file.display())))?;
            unpack(r, &dir, &UnpackPolicy::new(trust, true))
                .map_err(|e| bad(format!("layer {}: {}", file.display(), chain(&e))))?;
            io::copy(&mut hashing, &mut io::sink()).map_err(io_err("read layer"))?;
            Ok::<_, Error>(())
        })();
        if let Err(e) = unpacked {
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        let digest = digest
            .map(str::to_string)
            .unwrap_or_else(|| hex::encode(hashing.hasher.finalize()));
        self.commit_layer(&dir, &digest)?;
        Ok(digest)
    }

    /// Imports a tar file: a `docker save` archive, an OCI image layout, or a rootfs.
    pub fn import_archive(
        &self,
        file: &Path,
        name: Option<&str>,
        trust: Trust,
    ) -> Result<ImageRecord> {
        let f = File::open(file).map_err(io_err(format!("open {}", file.display())))?;
        let mut hashing = HashingReader {
            inner: f,
            hasher: Sha256::new(),
        };
        let dir = self.tmp("archive")?;
        let result = (|| {
            let r =
                maybe_gunzip(&mut hashing).map_err(io_err(format!("read {}", file.display())))?;
            unpack(r, &dir, &UnpackPolicy::new(trust, false))
                .map_err(|e| bad(format!("archive {}: {}", file.display(), chain(&e))))?;
            io::copy(&mut hashing, &mut io::sink()).map_err(io_err("read archive"))?;
            let source = format!("archive:{}", file.display());
            if is_layout(&dir) {
                self.import_layout(&dir, name, trust, source)
            } else {
                let name =
                    name.ok_or_else(|| bad("a rootfs archive needs a name for the image"))?;
                let digest = hex::encode(std::mem::take(&mut hashing.hasher).finalize());
                let size = du(&dir);
                self.commit_layer(&dir, &digest)?;
                self.finish(name, vec![digest], Vec::new(), None, source, size)
            }
        })();
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// Imports a directory: an OCI image layout, or a rootfs (copied through the safe unpacker).
    pub fn import_dir(&self, dir: &Path, name: Option<&str>) -> Result<ImageRecord> {
        let source = format!("dir:{}", dir.display());
        if is_layout(dir) {
            return self.import_layout(dir, name, Trust::Untrusted, source);
        }
        let name = name.ok_or_else(|| bad("a rootfs directory needs a name for the image"))?;
        let work = self.tmp("dir")?;
        let tarball = work.join("rootfs.tar");
        let result = (|| {
            let out = File::create(&tarball).map_err(io_err("create a temporary tar"))?;
            let mut b = tar::Builder::new(out);
            b.follow_symlinks(false);
            b.append_dir_all(".", dir)
                .map_err(io_err(format!("read {}", dir.display())))?;
            b.into_inner().map_err(io_err("write a temporary tar"))?;
            let mut rec = self.import_archive(&tarball, Some(name), Trust::Untrusted)?;
            rec.source = source;
            self.save(&rec)?;
            Ok(rec)
        })();
        let _ = fs::remove_dir_all(&work);
        result
    }

    /// Imports from the local Docker daemon (`docker save`), as a trusted source.
    pub async fn import_docker(&self, docker: &bollard::Docker, name: &str) -> Result<ImageRecord> {
        use futures::StreamExt;
        use tokio::io::AsyncWriteExt;
        let name = normalize_name(name);
        let work = self.tmp("docker")?;
        let tarball = work.join("image.tar");
        let result = async {
            let mut out = tokio::fs::File::create(&tarball)
                .await
                .map_err(io_err("create a temporary tar"))?;
            let mut stream = docker.export_image(&name);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| match e {
                    bollard::errors::Error::DockerResponseServerError {
                        status_code: 404, ..
                    } => Error::ImageNotFound(name.clone()),
                    e => e.into(),
                })?;
                out.write_all(&chunk)
                    .await
                    .map_err(io_err("write a temporary tar"))?;
            }
            out.flush().await.map_err(io_err("write a temporary tar"))?;
            let (tarball, name) = (tarball.clone(), name.clone());
            let store = ImageStore {
                root: self.root.clone(),
            };
            tokio::task::spawn_blocking(move || {
                let mut rec = store.import_archive(&tarball, Some(&name), Trust::Trusted)?;
                rec.source = format!("docker:{name}");
                store.save(&rec)?;
                Ok(rec)
            })
            .await
            .map_err(|e| Error::Internal(format!("import task: {e}")))?
        }
        .await;
        let _ = fs::remove_dir_all(&work);
        result
    }

    /// `docker save` (manifest.json) or OCI layout (index.json) unpacked at `dir`.
    fn import_layout(
        &self,
        dir: &Path,
        name: Option<&str>,
        trust: Trust,
        source: String,
    ) -> Result<ImageRecord> {
        let read_json = |rel: &str| -> Result<serde_json::Value> {
            let path = safe_rel(rel)?;
            let b =
                fs::read(dir.join(&path)).map_err(io_err(format!("read {rel} in the archive")))?;
            serde_json::from_slice(&b).map_err(|e| bad(format!("{rel} in the archive: {e}")))
        };
        let blob = |digest: &str| -> Result<String> {
            let hex = valid_digest(digest).ok_or_else(|| bad(format!("bad digest {digest:?}")))?;
            Ok(format!("blobs/sha256/{hex}"))
        };
        let (layer_files, digests, config, tag): (
            Vec<String>,
            Vec<Option<String>>,
            serde_json::Value,
            Option<String>,
        ) = if dir.join("manifest.json").is_file() {
            let m = read_json("manifest.json")?;
            let m = m
                .get(0)
                .ok_or_else(|| bad("manifest.json lists no image"))?;
            let config = read_json(
                m["Config"]
                    .as_str()
                    .ok_or_else(|| bad("manifest.json has no Config"))?,
            )?;
            let layers: Vec<String> = m["Layers"]
                .as_array()
                .ok_or_else(|| bad("manifest.json has no Layers"))?
                .iter()
                .map(|l| {
                    l.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad("bad layer path"))
                })
                .collect::<Result<_>>()?;
            let diff_ids: Vec<Option<String>> = config["rootfs"]["diff_ids"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| d.as_str().and_then(valid_digest).map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            let digests = (0..layers.len())
                .map(|i| diff_ids.get(i).cloned().flatten())
                .collect();
            let tag = m["RepoTags"]
                .get(0)
                .and_then(|t| t.as_str())
                .map(str::to_string);
            (layers, digests, config, tag)
        } else {
            let index = read_json("index.json")?;
            let mut desc = index["manifests"]
                .get(0)
                .cloned()
                .ok_or_else(|| bad("index.json lists no manifest"))?;
            let tag = desc["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .map(str::to_string);
            let mut manifest = read_json(&blob(desc["digest"].as_str().unwrap_or(""))?)?;
            // An index of indexes or manifests: take the first entry.
            for _ in 0..4 {
                match manifest["manifests"].get(0) {
                    Some(d) => {
                        desc = d.clone();
                        manifest = read_json(&blob(desc["digest"].as_str().unwrap_or(""))?)?;
                    }
                    None => break,
                }
            }
            let config = read_json(&blob(manifest["config"]["digest"].as_str().unwrap_or(""))?)?;
            let mut files = Vec::new();
            let mut digests = Vec::new();
            for l in manifest["layers"]
                .as_array()
                .ok_or_else(|| bad("manifest has no layers"))?
            {
                let d = l["digest"].as_str().unwrap_or("");
                files.push(blob(d)?);
                digests.push(valid_digest(d).map(str::to_string));
            }
            (files, digests, config, tag)
        };
        let name = name
            .map(str::to_string)
            .or(tag)
            .ok_or_else(|| bad("the archive names no image; give a name"))?;
        let mut layers = Vec::new();
        for (file, digest) in layer_files.iter().zip(digests) {
            let rel = safe_rel(file)?;
            layers.push(self.import_layer(&dir.join(rel), digest.as_deref(), trust)?);
        }
        let cfg = &config["config"];
        let env = cfg["Env"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| {
                        e.as_str()?
                            .split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let working_dir = cfg["WorkingDir"]
            .as_str()
            .filter(|w| !w.is_empty())
            .map(str::to_string);
        let size = layers.iter().map(|d| du(&self.layer_path(d))).sum();
        self.finish(&name, layers, env, working_dir, source, size)
    }

    fn finish(
        &self,
        name: &str,
        layers: Vec<String>,
        env: Vec<(String, String)>,
        working_dir: Option<String>,
        source: String,
        size_bytes: u64,
    ) -> Result<ImageRecord> {
        let name = normalize_name(name);
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad(format!("invalid image name {name:?}")));
        }
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let rec = ImageRecord {
            name,
            layers,
            env,
            working_dir,
            source,
            size_bytes,
            created_unix,
        };
        self.save(&rec)?;
        Ok(rec)
    }

    /// Removes an image, then every layer no other image refers to.
    pub fn remove(&self, name: &str) -> Result<()> {
        let name = normalize_name(name);
        let p = self.ref_path(&name);
        if !p.exists() {
            return Err(Error::ImageNotFound(name));
        }
        fs::remove_file(&p).map_err(io_err(format!("remove {}", p.display())))?;
        let mut keep: HashSet<String> = HashSet::new();
        for rec in self.list()? {
            keep.extend(rec.layers);
        }
        let dir = self.root.join("layers");
        for e in fs::read_dir(&dir)
            .map_err(io_err(format!("read {}", dir.display())))?
            .flatten()
        {
            let d = e.file_name().to_string_lossy().to_string();
            if !keep.contains(&d) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(())
    }
}

fn is_layout(dir: &Path) -> bool {
    dir.join("manifest.json").is_file()
        || (dir.join("index.json").is_file() && dir.join("oci-layout").is_file())
}

/// A path from an archive's JSON, checked to stay inside the archive.
fn safe_rel(p: &str) -> Result<PathBuf> {
    let path = Path::new(p);
    if path.is_absolute()
        || path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(bad(format!("archive refers to {p:?}, outside itself")));
    }
    Ok(path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs_tar(path: &Path, files: &[(&str, &[u8])]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o755);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.finish().unwrap();
    }

    #[test]
    fn rootfs_import_is_content_addressed_and_removable() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(tmp.path().join("store")).unwrap();
        let t = tmp.path().join("rootfs.tar");
        rootfs_tar(&t, &[("bin/hello", b"hi")]);
        let a = store
            .import_archive(&t, Some("one"), Trust::Untrusted)
            .unwrap();
        let b = store
            .import_archive(&t, Some("two:v1"), Trust::Untrusted)
            .unwrap();
        assert_eq!(a.name, "one:latest");
        assert_eq!(a.layers, b.layers, "same content, same layer");
        assert_eq!(a.size_bytes, 2);
        assert_eq!(
            fs::read(store.layer_path(&a.layers[0]).join("bin/hello")).unwrap(),
            b"hi"
        );
        assert_eq!(store.list().unwrap().len(), 2);
        store.remove("one").unwrap();
        assert!(
            store.layer_path(&a.layers[0]).is_dir(),
            "still used by two:v1"
        );
        store.remove("two:v1").unwrap();
        assert!(!store.layer_path(&a.layers[0]).exists());
        assert!(matches!(
            store.remove("two:v1"),
            Err(Error::ImageNotFound(_))
        ));
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn an_oci_layout_imports_with_its_config() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(tmp.path().join("store")).unwrap();
        let layout = tmp.path().join("layout");
        fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        let put = |data: &[u8]| {
            let d = sha256_hex(data);
            fs::write(layout.join("blobs/sha256").join(&d), data).unwrap();
            d
        };
        let layer_tar = tmp.path().join("l.tar");
        rootfs_tar(&layer_tar, &[("app/run", b"x")]);
        let layer = put(&fs::read(&layer_tar).unwrap());
        let config = put(br#"{"config":{"Env":["A=1"],"WorkingDir":"/app"}}"#);
        let manifest = put(
            format!(r#"{{"config":{{"digest":"sha256:{config}"}},"layers":[{{"digest":"sha256:{layer}"}}]}}"#)
                .as_bytes(),
        );
        fs::write(
            layout.join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        fs::write(
            layout.join("index.json"),
            format!(r#"{{"manifests":[{{"digest":"sha256:{manifest}","annotations":{{"org.opencontainers.image.ref.name":"demo:1"}}}}]}}"#),
        )
        .unwrap();
        let rec = store.import_dir(&layout, None).unwrap();
        assert_eq!(rec.name, "demo:1");
        assert_eq!(rec.layers, vec![layer.clone()]);
        assert_eq!(rec.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(rec.working_dir.as_deref(), Some("/app"));
        assert!(store.layer_path(&layer).join("app/run").is_file());
    }

    #[test]
    fn a_hostile_rootfs_archive_is_refused_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::open(tmp.path().join("store")).unwrap();
        let t = tmp.path().join("evil.tar");
        let mut b = tar::Builder::new(File::create(&t).unwrap());
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../../etc/x\0");
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).unwrap();
        b.finish().unwrap();
        drop(b);
        let err = store
            .import_archive(&t, Some("evil"), Trust::Untrusted)
            .unwrap_err();
        assert!(err.to_string().contains("../../etc/x"), "{err}");
        assert!(!tmp.path().join("etc").exists());
        assert_eq!(
            fs::read_dir(store.root().join("layers")).unwrap().count(),
            0
        );
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn names_are_normalized() {
        assert_eq!(normalize_name("busybox"), "busybox:latest");
        assert_eq!(
            normalize_name("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(normalize_name("a/b:1"), "a/b:1");
    }
}
