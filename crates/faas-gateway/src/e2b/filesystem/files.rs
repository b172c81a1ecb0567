//! envd's plain HTTP files: `GET /files?path=&username=` answers a file's bytes, `POST /files`
//! writes files (parents made, existing files overwritten) from `multipart/form-data` parts
//! named `file` (the part's file name is its path, unless `?path=` names it) or from one
//! `application/octet-stream` body to `?path=`; either may be `Content-Encoding: gzip`.
//!
//! Errors are envd's `{"code": <status>, "message"}`: 404 for a missing file, 400 for a
//! directory or a bad request, 413 for an upload over [`upload_cap`].

use std::io::Read;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use faas_common::FileType;
use futures::StreamExt;
use serde_json::{json, Value};

use super::resolve;
use crate::e2b::{E2bError, Envd};
use crate::AppState;

/// The least an upload may carry (the server's body limit, when larger, is the cap).
const MIN_UPLOAD_CAP: usize = 64 * 1024 * 1024;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/files", get(download).post(upload))
        // Uploads are counted against `upload_cap` here, as they stream in.
        .layer(DefaultBodyLimit::disable())
}

/// Most bytes one upload may carry, all its files together (after gzip, if any).
fn upload_cap(s: &AppState) -> usize {
    s.body_limit.max(MIN_UPLOAD_CAP)
}

fn bad(message: impl Into<String>) -> E2bError {
    E2bError::new(StatusCode::BAD_REQUEST, message)
}

fn too_large(cap: usize) -> E2bError {
    E2bError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload is over {cap} bytes, the most this server takes"),
    )
}

/// `?path=` and `?username=` (the signature parameters are the router's).
#[derive(Default)]
struct FileQuery {
    path: Option<String>,
    username: Option<String>,
}

fn query(uri: &Uri) -> FileQuery {
    let mut q = FileQuery::default();
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "path" => q.path = Some(v.into_owned()),
            "username" => q.username = Some(v.into_owned()).filter(|u| !u.is_empty()),
            _ => {}
        }
    }
    q
}

async fn download(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    uri: Uri,
) -> Result<Response, E2bError> {
    let q = query(&uri);
    let path = resolve(q.path.as_deref().unwrap_or(""), q.username.as_deref()).map_err(bad)?;
    let inst = &s.platform.instances;
    let e = inst
        .fs_stat(&envd.caller, &envd.id, &path)
        .await
        .map_err(|e| match e {
            faas_executor::Error::NotFound(_) => E2bError::new(
                StatusCode::NOT_FOUND,
                format!("path '{path}' does not exist"),
            ),
            e => e.into(),
        })?;
    if e.file_type == FileType::Dir {
        return Err(bad(format!("path '{path}' is a directory")));
    }
    let data = inst
        .instance_read_file(&envd.caller, &envd.id, &path)
        .await?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], data).into_response())
}

async fn upload(
    State(s): State<AppState>,
    Extension(envd): Extension<Envd>,
    req: Request,
) -> Result<Json<Vec<Value>>, E2bError> {
    let cap = upload_cap(&s);
    let (s, envd) = (&s, &envd);
    let written = receive(req, cap, |path, data| async move {
        s.platform
            .instances
            .instance_write_file(&envd.caller, &envd.id, &path, data)
            .await
            .map_err(E2bError::from)
    })
    .await?;
    Ok(Json(written))
}

/// Reads an upload, hands each file to `write` (its resolved path and bytes) as it comes,
/// and says what was written.
async fn receive<F, Fut>(req: Request, cap: usize, mut write: F) -> Result<Vec<Value>, E2bError>
where
    F: FnMut(String, Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E2bError>>,
{
    let q = query(req.uri());
    let user = q.username.as_deref();
    let headers = req.headers();
    if content_length(headers).is_some_and(|n| n > cap as u64) {
        return Err(too_large(cap));
    }
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let gzip = match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("" | "identity") => false,
        Some("gzip" | "x-gzip") => true,
        Some(other) => return Err(bad(format!("unsupported Content-Encoding {other:?}"))),
    };
    let req = if gzip {
        // Decompressed whole (bounded both ways), then read as if it came so.
        let (mut parts, body) = req.into_parts();
        let raw = read_capped(body, cap).await?;
        let plain = gunzip(&raw, cap)?;
        parts.headers.remove(header::CONTENT_ENCODING);
        parts.headers.remove(header::CONTENT_LENGTH);
        Request::from_parts(parts, Body::from(plain))
    } else {
        req
    };
    if mime == "application/octet-stream" {
        let path = q.path.as_deref().ok_or_else(|| {
            bad("the path query parameter is required for an octet-stream upload")
        })?;
        let path = resolve(path, user).map_err(bad)?;
        let data = read_capped(req.into_body(), cap).await?;
        write(path.clone(), data).await?;
        return Ok(vec![written(&path)]);
    }
    if !mime.starts_with("multipart/") {
        return Err(bad(format!(
            "unsupported content type {mime:?}: expected multipart/form-data or application/octet-stream"
        )));
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| bad(e.body_text()))?;
    let mut paths: Vec<String> = Vec::new();
    let mut total = 0usize;
    while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            continue;
        }
        let target = match &q.path {
            Some(p) => p.clone(),
            None => field.file_name().unwrap_or("").to_string(),
        };
        let path = resolve(&target, user).map_err(|e| bad(format!("a part's path: {e}")))?;
        if paths.contains(&path) {
            return Err(bad(format!(
                "you cannot upload multiple files to the same path '{path}' in one upload request"
            )));
        }
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
            total += chunk.len();
            if total > cap {
                return Err(too_large(cap));
            }
            data.extend_from_slice(&chunk);
        }
        write(path.clone(), data).await?;
        paths.push(path);
    }
    if paths.is_empty() {
        return Err(bad("the upload has no part named `file`"));
    }
    Ok(paths.iter().map(|p| written(p)).collect())
}

/// What envd answers for a written file.
fn written(path: &str) -> Value {
    let name = path.rsplit('/').next().unwrap_or(path);
    json!({"path": path, "name": name, "type": "file"})
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> E2bError {
    E2bError::new(e.status(), e.body_text())
}

/// A body as it arrives (chunked or not), refused past `cap` bytes.
async fn read_capped(body: Body, cap: usize) -> Result<Vec<u8>, E2bError> {
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| bad(format!("the request body: {e}")))?;
        if out.len() + chunk.len() > cap {
            return Err(too_large(cap));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A gzip body's bytes, refused past `cap` bytes.
fn gunzip(raw: &[u8], cap: usize) -> Result<Vec<u8>, E2bError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("error decompressing the request body: {e}")))?;
    if out.len() > cap {
        return Err(too_large(cap));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_gives_path_and_user() {
        let q = query(&"/files?path=%2Ftmp%2Fa%20b.txt&username=".parse().unwrap());
        assert_eq!(q.path.as_deref(), Some("/tmp/a b.txt"));
        assert_eq!(q.username, None);
        let q = query(&"/files?username=user&signature=x".parse().unwrap());
        assert_eq!(q.path, None);
        assert_eq!(q.username.as_deref(), Some("user"));
        assert_eq!(
            written("/tmp/x/a.txt"),
            json!({"path": "/tmp/x/a.txt", "name": "a.txt", "type": "file"})
        );
    }

    /// A request to `uri` with `body`, and what [`receive`] hands over and answers.
    async fn received(
        uri: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        cap: usize,
    ) -> (Vec<(String, Vec<u8>)>, Result<Vec<Value>, E2bError>) {
        let mut req = Request::builder().method("POST").uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        // Chunked, as the SDKs send it.
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
            body.chunks(7).map(|c| Ok(c.to_vec())).collect();
        let req = req
            .body(Body::from_stream(futures::stream::iter(chunks)))
            .unwrap();
        let got = std::sync::Mutex::new(Vec::new());
        let r = receive(req, cap, |p, d| {
            got.lock().unwrap().push((p, d));
            async { Ok(()) }
        })
        .await;
        (got.into_inner().unwrap(), r)
    }

    fn form(parts: &[(&str, &str, &[u8])]) -> Vec<u8> {
        let mut b = Vec::new();
        for (name, file, data) in parts {
            b.extend_from_slice(
                format!(
                    "--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            );
            b.extend_from_slice(data);
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(b"--XyZ--\r\n");
        b
    }

    const FORM: (&str, &str) = ("content-type", "multipart/form-data; boundary=XyZ");

    #[tokio::test]
    async fn multipart_uploads_write_each_part_to_its_path() {
        // Several files: each part's file name is its path (relative: under the home).
        let body = form(&[
            ("file", "/tmp/a/one.txt", b"one"),
            ("other", "ignored", b"x"),
            ("file", "two.bin", &[0, 1, 2, 255]),
        ]);
        let (got, r) = received("/files", &[FORM], body, 1 << 20).await;
        assert_eq!(
            got,
            vec![
                ("/tmp/a/one.txt".to_string(), b"one".to_vec()),
                ("/root/two.bin".to_string(), vec![0, 1, 2, 255]),
            ]
        );
        let r = r.unwrap();
        assert_eq!(
            r[1],
            json!({"path": "/root/two.bin", "name": "two.bin", "type": "file"})
        );

        // One file with `?path=`: the query names it; a second part to it is refused.
        let body = form(&[("file", "whatever", b"hi")]);
        let (got, r) = received(
            "/files?path=%2Ftmp%2Fq.txt&username=user",
            &[FORM],
            body,
            1 << 20,
        )
        .await;
        assert_eq!(got, vec![("/tmp/q.txt".to_string(), b"hi".to_vec())]);
        assert_eq!(r.unwrap().len(), 1);
        let body = form(&[("file", "a", b"1"), ("file", "b", b"2")]);
        let (_, r) = received("/files?path=/tmp/q", &[FORM], body, 1 << 20).await;
        assert_eq!(r.unwrap_err().status, StatusCode::BAD_REQUEST);

        // The user's home for relative names.
        let body = form(&[("file", "x/y.txt", b"")]);
        let (got, _) = received("/files?username=user", &[FORM], body, 1 << 20).await;
        assert_eq!(got[0].0, "/home/user/x/y.txt");

        // No `file` part, an empty name, a NUL, a broken form: 400.
        for body in [
            form(&[("other", "a", b"1")]),
            form(&[("file", "", b"1")]),
            form(&[("file", "a\0b", b"1")]),
            b"--XyZ\r\nnot a part".to_vec(),
        ] {
            let (got, r) = received("/files", &[FORM], body, 1 << 20).await;
            assert!(got.is_empty());
            assert_eq!(r.unwrap_err().status, StatusCode::BAD_REQUEST);
        }

        // Over the cap, all parts together: 413.
        let body = form(&[("file", "/a", &[1; 60]), ("file", "/b", &[2; 60])]);
        let (got, r) = received("/files", &[FORM], body, 100).await;
        assert_eq!(got.len(), 1);
        assert_eq!(r.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn octet_stream_uploads_take_the_query_path_and_gzip() {
        let oct = ("content-type", "application/octet-stream");
        let (got, r) = received("/files?path=/tmp/o.bin", &[oct], vec![9; 100], 1 << 20).await;
        assert_eq!(got, vec![("/tmp/o.bin".to_string(), vec![9; 100])]);
        assert_eq!(r.unwrap()[0]["path"], "/tmp/o.bin");

        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b"zipped").unwrap();
        let gz = enc.finish().unwrap();
        let (got, _) = received(
            "/files?path=z.txt",
            &[oct, ("content-encoding", "gzip")],
            gz,
            1 << 20,
        )
        .await;
        assert_eq!(got, vec![("/root/z.txt".to_string(), b"zipped".to_vec())]);

        // No path, another encoding, another type: 400; too long (told or not): 413.
        let (_, r) = received("/files", &[oct], vec![1], 1 << 20).await;
        assert_eq!(r.unwrap_err().status, StatusCode::BAD_REQUEST);
        let (_, r) = received(
            "/files?path=/a",
            &[oct, ("content-encoding", "br")],
            vec![1],
            1 << 20,
        )
        .await;
        assert_eq!(r.unwrap_err().status, StatusCode::BAD_REQUEST);
        let (_, r) = received(
            "/files?path=/a",
            &[("content-type", "text/plain")],
            vec![1],
            1 << 20,
        )
        .await;
        assert_eq!(r.unwrap_err().status, StatusCode::BAD_REQUEST);
        let (got, r) = received("/files?path=/a", &[oct], vec![1; 101], 100).await;
        assert!(got.is_empty());
        assert_eq!(r.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
        let (_, r) = received(
            "/files?path=/a",
            &[oct, ("content-length", "101")],
            vec![1; 101],
            100,
        )
        .await;
        assert_eq!(r.unwrap_err().status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn bodies_and_gzip_are_bounded() {
        let body = Body::from_stream(futures::stream::iter(vec![
            Ok::<_, std::io::Error>(vec![1u8; 6]),
            Ok(vec![2u8; 6]),
        ]));
        assert_eq!(read_capped(body, 12).await.unwrap().len(), 12);
        let body = Body::from(vec![0u8; 13]);
        let err = read_capped(body, 12).await.unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);

        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&[7u8; 1000]).unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(gunzip(&gz, 1000).unwrap(), vec![7u8; 1000]);
        assert_eq!(
            gunzip(&gz, 999).unwrap_err().status,
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert_eq!(
            gunzip(b"not gzip", 1000).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}
