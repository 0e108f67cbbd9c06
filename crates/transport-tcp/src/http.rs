//! A deliberately small HTTP/1.1 server for what Taskwire processes show to people and to
//! Prometheus: the scheduler's dashboard and JSON API, and every process's `/metrics` and
//! `/health`. It lives here, beside the TCP transport, because the scheduler and the worker both
//! serve it and neither may depend on the other.
//!
//! One request per connection (the answer closes it), GET and HEAD only, request heads of at
//! most [`MAX_HEAD`] bytes read within [`HEAD_TIMEOUT`], at most [`MAX_CONNECTIONS`] served at
//! once (more wait in the listen backlog). Garbage gets a 400, a slow head a 408, another method
//! a 405; the server carries on.
//!
//! With a credential ([`Options::credential`]), every path but the open ones (`/health`) needs
//! it, as `Authorization: Bearer CREDENTIAL` (scrapers, scripts), as the cookie
//! [`COOKIE`] (browsers), or once as `?token=CREDENTIAL`, which is answered with a redirect to
//! the same page without it that sets the cookie: the link a process prints at start-up works
//! in a browser, and the credential does not stay in the address bar.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// Largest request head read; a larger one is answered 400.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request head; a slower one is answered 408.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// The cookie a browser keeps the credential in.
pub const COOKIE: &str = "taskwire_token";

/// A request's head.
#[derive(Clone, Debug)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: String,
    /// The path, still percent-encoded, without the query.
    pub path: String,
    /// What follows `?`, if anything.
    pub query: String,
    headers: Vec<(String, String)>,
}

impl Request {
    /// The value of query parameter `name` (not decoded), if present.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn cookie(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("cookie"))
            .flat_map(|(_, v)| v.split(';'))
            .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
    }
}

/// How a server answers.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Require this credential on every path but `open` ones; `None`: no check.
    pub credential: Option<String>,
    /// Paths served without the credential (e.g. `/health`).
    pub open: Vec<&'static str>,
}

/// Serve until `stop` turns true: each request whose head is well formed (and, with a
/// credential, authorized) is handed to `handler` with its connection, which writes the whole
/// answer (usually with [`respond`]).
pub async fn serve<F, Fut>(
    listener: TcpListener,
    options: Options,
    mut stop: watch::Receiver<bool>,
    handler: F,
) where
    F: Fn(Request, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let options = Arc::new(options);
    let handler = Arc::new(handler);
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut stop) => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let tcp = tokio::select! {
            _ = stopped(&mut stop) => return,
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(_) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let (options, handler) = (options.clone(), handler.clone());
        tokio::spawn(async move {
            // A failed connection is the client's business; the server goes on either way.
            let _ = handle(tcp, &options, &*handler).await;
            drop(permit);
        });
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

async fn handle<F, Fut>(
    mut stream: TcpStream,
    options: &Options,
    handler: &F,
) -> std::io::Result<()>
where
    F: Fn(Request, TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>>,
{
    let request = match tokio::time::timeout(HEAD_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            respond(&mut stream, 400, "text/plain", b"bad request\n").await?;
            return linger(stream).await;
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return respond(&mut stream, 408, "text/plain", b"request timeout\n").await,
    };
    if request.method != "GET" && request.method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", b"only GET\n").await;
    }
    if let Some(credential) = &options.credential
        && !options.open.contains(&request.path.as_str())
    {
        let bearer = request
            .header("authorization")
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = request.cookie(COOKIE);
        if bearer.or(cookie).is_some_and(|c| same(c, credential)) {
            return handler(request, stream).await;
        }
        if request
            .query_param("token")
            .is_some_and(|c| same(c, credential))
        {
            return set_cookie_and_redirect(&mut stream, &request, credential).await;
        }
        return respond_with(
            &mut stream,
            401,
            "text/plain",
            "WWW-Authenticate: Bearer realm=\"taskwire\"\r\n",
            b"this cluster has a token: open the link the process printed at start-up \
              (it ends in ?token=...), or send Authorization: Bearer with that value\n",
        )
        .await;
    }
    handler(request, stream).await
}

/// Read and drop what the client is still sending (at most 4 MiB, for at most a second)
/// before closing: closing with unread input makes the kernel reset the connection, and a
/// reset can destroy the answer before the client reads it.
async fn linger(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    let mut left: usize = 4 << 20;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
    Ok(())
}

/// Compare in time that does not depend on where the first difference is.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn set_cookie_and_redirect(
    stream: &mut TcpStream,
    request: &Request,
    credential: &str,
) -> std::io::Result<()> {
    let rest: Vec<&str> = request
        .query
        .split('&')
        .filter(|kv| !kv.is_empty() && !kv.starts_with("token="))
        .collect();
    let location = if rest.is_empty() {
        request.path.clone()
    } else {
        format!("{}?{}", request.path, rest.join("&"))
    };
    let headers = format!(
        "Location: {location}\r\nSet-Cookie: {COOKIE}={credential}; Path=/; HttpOnly; \
         SameSite=Strict\r\n"
    );
    respond_with(stream, 303, "text/plain", &headers, b"see other\n").await
}

/// The request head, once it all arrived; `None` for garbage or an oversized head.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Option<Request>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return Ok(std::str::from_utf8(&buf[..end])
                .ok()
                .filter(|h| h.is_ascii())
                .and_then(parse_head));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return None;
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .map(|l| {
            let (n, v) = l.split_once(':')?;
            Some((n.trim().to_string(), v.trim().to_string()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
    })
}

/// Write a whole answer and close the connection.
pub async fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> std::io::Result<()> {
    respond_with(stream, status, content_type, "", body).await
}

/// [`respond`] with extra header lines (each ending in `\r\n`).
pub async fn respond_with(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    extra_headers: &str,
    body: &[u8],
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        303 => "See Other",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        503 => "Service Unavailable",
        _ => "Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n{extra_headers}\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.shutdown().await
}

/// Bind `host:port`; when `port` is taken, a free one instead (as Dask does for its
/// dashboards). The flag says whether it fell back.
pub async fn bind(host: &str, port: u16) -> std::io::Result<(TcpListener, bool)> {
    match TcpListener::bind((host, port)).await {
        Ok(l) => Ok((l, false)),
        Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
            Ok((TcpListener::bind((host, 0)).await?, true))
        }
        Err(e) => Err(e),
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub fn prometheus_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse_and_garbage_does_not() {
        let r =
            parse_head("GET /a/b?x=1&token=t HTTP/1.1\r\nHost: h\r\nCookie: a=b; taskwire_token=c")
                .unwrap();
        assert_eq!((r.path.as_str(), r.query.as_str()), ("/a/b", "x=1&token=t"));
        assert_eq!(r.query_param("token"), Some("t"));
        assert_eq!(r.query_param("tok"), None);
        assert_eq!(r.header("HOST"), Some("h"));
        assert_eq!(r.cookie(COOKIE), Some("c"));
        assert!(parse_head("GET / HTTP/1.1 extra").is_none());
        assert!(parse_head("GET / SPDY/3").is_none());
        assert!(parse_head("GET noslash HTTP/1.1").is_none());
        assert!(parse_head("GET / HTTP/1.1\r\nno colon").is_none());
    }

    #[test]
    fn credentials_compare_exactly() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "ab"));
    }

    #[tokio::test]
    async fn a_credential_guards_all_but_open_paths() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let options = Options {
            credential: Some("s3cret".into()),
            open: vec!["/health"],
        };
        tokio::spawn(serve(
            listener,
            options,
            stop,
            |r: Request, mut s| async move {
                respond(&mut s, 200, "text/plain", r.path.as_bytes()).await
            },
        ));
        let ask = |req: String| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(
            ask("GET /health HTTP/1.1\r\n\r\n".into())
                .await
                .ends_with("/health")
        );
        assert!(
            ask("GET /x HTTP/1.1\r\n\r\n".into())
                .await
                .starts_with("HTTP/1.1 401")
        );
        let wrong = ask("GET /x HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n".into()).await;
        assert!(wrong.starts_with("HTTP/1.1 401"));
        let bearer = ask("GET /x HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n".into()).await;
        assert!(bearer.starts_with("HTTP/1.1 200") && bearer.ends_with("/x"));
        let cookie = ask("GET /y HTTP/1.1\r\nCookie: taskwire_token=s3cret\r\n\r\n".into()).await;
        assert!(cookie.ends_with("/y"));
        let link = ask("GET /z?a=1&token=s3cret HTTP/1.1\r\n\r\n".into()).await;
        assert!(link.starts_with("HTTP/1.1 303"), "{link}");
        assert!(link.contains("Location: /z?a=1\r\n"), "{link}");
        assert!(link.contains("Set-Cookie: taskwire_token=s3cret; Path=/; HttpOnly"));
        assert!(
            ask("POST /x HTTP/1.1\r\n\r\n".into())
                .await
                .starts_with("HTTP/1.1 405")
        );
        assert!(
            ask("\x16\x03\x01junk\r\n\r\n".into())
                .await
                .starts_with("HTTP/1.1 400")
        );
    }
}
