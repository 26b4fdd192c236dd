//! The CLI's side of the control API: one HTTP/1.1 request per connection
//! over the daemon's Unix socket.

use crate::api::ErrorBody;
use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub struct Client {
    socket: PathBuf,
}

/// The daemon's socket when none is given: /run/tapnet as root, the
/// user's runtime directory (or /tmp/tapnet-UID) otherwise.
pub fn default_socket() -> PathBuf {
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/tapnet/tapnet.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("tapnet/tapnet.sock"),
        None => PathBuf::from(format!("/tmp/tapnet-{}/tapnet.sock", unsafe {
            libc::getuid()
        })),
    }
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// GET `path` and hand each line of the (chunked) answer to `line` as
    /// it comes, until the daemon ends the stream or `line` returns false.
    /// An error status becomes an error carrying the daemon's message.
    pub fn stream(&self, path: &str, mut line: impl FnMut(&str) -> bool) -> Result<()> {
        let mut pending = Vec::new();
        self.stream_bytes(path, |b| {
            pending.extend_from_slice(b);
            while let Some(i) = pending.iter().position(|&c| c == b'\n') {
                let l: Vec<u8> = pending.drain(..=i).collect();
                if !line(String::from_utf8_lossy(&l).trim_end()) {
                    return false;
                }
            }
            true
        })
    }

    /// GET `path` and hand the answer's bytes to `chunk` as they come,
    /// until the daemon ends the stream or `chunk` returns false. While
    /// nothing comes, `chunk` is called with no bytes every 200 ms (so a
    /// caller can stop on a signal). An error status becomes an error
    /// carrying the daemon's message.
    pub fn stream_bytes(&self, path: &str, mut chunk: impl FnMut(&[u8]) -> bool) -> Result<()> {
        let mut s = self.connect()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: tapnet\r\nConnection: close\r\n\r\n"
        )?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut buf: Vec<u8> = Vec::new();
        let mut tmp = vec![0u8; 64 * 1024];
        // the head, then (chunked) the body's chunks, each decoded as soon
        // as it is whole
        let mut head: Option<(u16, bool)> = None;
        let mut body_err = Vec::new();
        loop {
            let n = match s.read(&mut tmp) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    if head.is_some_and(|h| (200..300).contains(&h.0)) && !chunk(&[]) {
                        return Ok(());
                    }
                    continue;
                }
                Err(e) => return Err(e).context("reading the daemon's answer"),
            };
            buf.extend_from_slice(&tmp[..n]);
            if head.is_none() {
                let mut h = [httparse::EMPTY_HEADER; 32];
                let mut r = httparse::Response::new(&mut h);
                match r.parse(&buf).context("malformed answer from the daemon")? {
                    httparse::Status::Complete(off) => {
                        let chunked = r.headers.iter().any(|h| {
                            h.name.eq_ignore_ascii_case("transfer-encoding")
                                && String::from_utf8_lossy(h.value).contains("chunked")
                        });
                        head = Some((r.code.unwrap_or(500), chunked));
                        buf.drain(..off);
                    }
                    httparse::Status::Partial if n > 0 => continue,
                    httparse::Status::Partial => {
                        bail!("the tapnet daemon closed the connection without an answer")
                    }
                }
            }
            let (code, chunked) = head.expect("parsed above");
            if !(200..300).contains(&code) || !chunked {
                // a whole answer: kept until the end
                body_err.append(&mut buf);
                if n > 0 {
                    continue;
                }
                let rest = if chunked {
                    dechunk(&body_err)?
                } else {
                    std::mem::take(&mut body_err)
                };
                if !(200..300).contains(&code) {
                    let msg = serde_json::from_slice::<ErrorBody>(&rest)
                        .map(|e| e.message)
                        .unwrap_or_else(|_| String::from_utf8_lossy(&rest).into_owned());
                    bail!("{msg}");
                }
                chunk(&rest);
                return Ok(());
            }
            // whole chunks: SIZE CRLF DATA CRLF
            loop {
                let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let size = std::str::from_utf8(&buf[..eol])
                    .ok()
                    .and_then(|l| {
                        usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok()
                    })
                    .ok_or_else(|| anyhow!("malformed chunk from the daemon"))?;
                if size == 0 {
                    return Ok(());
                }
                let end = eol
                    .checked_add(size)
                    .and_then(|e| e.checked_add(4))
                    .filter(|&e| e <= 1 << 30)
                    .ok_or_else(|| anyhow!("malformed chunk from the daemon"))?;
                if buf.len() < end {
                    break;
                }
                if &buf[end - 2..end] != b"\r\n" {
                    bail!("malformed chunk from the daemon");
                }
                let keep = chunk(&buf[eol + 2..end - 2]);
                buf.drain(..end);
                if !keep {
                    return Ok(());
                }
            }
            if n == 0 {
                // the daemon went away in the middle of the stream
                bail!(
                    "the tapnet daemon ended the stream early (did it stop or crash? see its log)"
                );
            }
        }
    }

    fn connect(&self) -> Result<UnixStream> {
        UnixStream::connect(&self.socket).map_err(|e| {
            anyhow!(
                "cannot reach the tapnet daemon at {}: {e} (is `tapnet daemon` running? use --socket or TAPNET_SOCKET for another socket)",
                self.socket.display()
            )
        })
    }

    fn request(&self, method: &str, path: &str, body: Option<Vec<u8>>) -> Result<(u16, Vec<u8>)> {
        let mut s = UnixStream::connect(&self.socket).map_err(|e| {
            anyhow!(
                "cannot reach the tapnet daemon at {}: {e} (is `tapnet daemon` running? use --socket or TAPNET_SOCKET for another socket)",
                self.socket.display()
            )
        })?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let body = body.unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: tapnet\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        const GONE: &str = "the tapnet daemon stopped answering (it closed the connection without a reply: did it stop or crash? see its log)";
        let gone = |e: &std::io::Error| {
            matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        };
        let sent = s
            .write_all(head.as_bytes())
            .and_then(|_| s.write_all(&body));
        let mut resp = Vec::new();
        let read = s.read_to_end(&mut resp);
        // a whole answer counts even if the connection ended badly after it
        let whole = {
            let mut h = [httparse::EMPTY_HEADER; 32];
            matches!(
                httparse::Response::new(&mut h).parse(&resp),
                Ok(httparse::Status::Complete(_))
            )
        };
        if !whole {
            match (sent, read) {
                (_, Err(e)) | (Err(e), Ok(_)) if gone(&e) => bail!(GONE),
                (Err(e), _) => return Err(e).context("sending the request to the daemon"),
                (_, Err(e)) => return Err(e).context("reading the daemon's answer"),
                _ => {}
            }
            if resp.is_empty() {
                bail!(GONE);
            }
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let off = match r.parse(&resp).context("malformed answer from the daemon")? {
            httparse::Status::Complete(n) => n,
            httparse::Status::Partial => bail!(
                "the tapnet daemon stopped answering in the middle of its reply (did it stop or crash? see its log)"
            ),
        };
        let code = r.code.unwrap_or(500);
        let chunked = r.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("transfer-encoding")
                && String::from_utf8_lossy(h.value).contains("chunked")
        });
        let mut b = resp[off..].to_vec();
        if chunked {
            b = dechunk(&b)?;
        }
        Ok((code, b))
    }

    /// Sends a request and decodes the JSON answer; an error status becomes
    /// an error carrying the daemon's message.
    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T> {
        let b = body.map(serde_json::to_vec).transpose()?;
        let (code, resp) = self.request(method, path, b)?;
        if !(200..300).contains(&code) {
            let msg = serde_json::from_slice::<ErrorBody>(&resp)
                .map(|e| e.message)
                .unwrap_or_else(|_| String::from_utf8_lossy(&resp).into_owned());
            bail!("{msg}");
        }
        serde_json::from_slice(&resp)
            .with_context(|| format!("decoding the daemon's answer to {method} {path}"))
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(method_get(), path, None::<&()>)
    }

    /// [`Client::get`], with None when the daemon answers 404 (no such
    /// object).
    pub fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        let (code, _) = self.request(method_get(), path, None)?;
        if code == 404 {
            return Ok(None);
        }
        self.get(path).map(Some)
    }
}

fn method_get() -> &'static str {
    "GET"
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let (len, used) =
            match httparse::parse_chunk_size(b).map_err(|_| anyhow!("bad chunked encoding"))? {
                httparse::Status::Complete(x) => (x.1 as usize, x.0),
                httparse::Status::Partial => bail!("truncated chunked answer"),
            };
        b = &b[used..];
        if len == 0 {
            return Ok(out);
        }
        if b.len() < len + 2 {
            bail!("truncated chunked answer");
        }
        out.extend_from_slice(&b[..len]);
        b = &b[len + 2..];
    }
}
