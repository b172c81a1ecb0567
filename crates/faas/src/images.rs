//! `faas images import|list|rm`: the native backend's image store, worked on directly in the
//! data dir (a running server sees the changes on its next request).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use faas_executor::sandbox::images::{ImageStore, Trust};

#[derive(Args, Debug)]
pub struct ImagesArgs {
    #[arg(
        long,
        env = "FAAS_DATA_DIR",
        default_value = "/var/lib/faas",
        global = true
    )]
    pub data_dir: PathBuf,
    #[command(subcommand)]
    pub cmd: ImagesCmd,
}

#[derive(Subcommand, Debug)]
pub enum ImagesCmd {
    /// Import `docker:NAME` (from the local Docker daemon), a `docker save` or OCI archive, an
    /// OCI layout directory, or a rootfs tarball or directory (these need --name).
    Import {
        source: String,
        #[arg(long)]
        name: Option<String>,
    },
    /// List the images in the store.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image (layers no other image uses go too).
    Rm { name: String },
}

pub async fn run(a: ImagesArgs) -> anyhow::Result<u8> {
    let root = a.data_dir.join("images");
    let store = ImageStore::open(&root)
        .with_context(|| format!("open the image store at {}", root.display()))?;
    match a.cmd {
        ImagesCmd::Import { source, name } => {
            let rec = if let Some(image) = source.strip_prefix("docker:") {
                let docker = bollard::Docker::connect_with_local_defaults()?
                    .negotiate_version()
                    .await?;
                let mut rec = store.import_docker(&docker, image).await?;
                if let Some(n) = name {
                    rec.name = faas_executor::sandbox::images::store::normalize_name(&n);
                    store.save(&rec)?;
                }
                rec
            } else {
                let path = PathBuf::from(&source);
                let rec = if path.is_dir() {
                    store.import_dir(&path, name.as_deref())
                } else {
                    store.import_archive(&path, name.as_deref(), Trust::Untrusted)
                };
                rec.with_context(|| format!("import {source}"))?
            };
            println!(
                "{}  {} layer(s)  {} bytes",
                rec.name,
                rec.layers.len(),
                rec.size_bytes
            );
        }
        ImagesCmd::List { json } => {
            let list = store.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!("{:<48} {:>7} {:>12}  SOURCE", "NAME", "LAYERS", "BYTES");
                for r in list {
                    println!(
                        "{:<48} {:>7} {:>12}  {}",
                        r.name,
                        r.layers.len(),
                        r.size_bytes,
                        r.source
                    );
                }
            }
        }
        ImagesCmd::Rm { name } => {
            store.remove(&name)?;
            println!("removed {name}");
        }
    }
    Ok(0)
}
