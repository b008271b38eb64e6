//! The block endpoints of the admin listener: `GET /blocks` (list), `POST /blocks?...` (add),
//! `DELETE /blocks/<id>` (lift). Every one needs `Authorization: Bearer <token>` with the token
//! of `[metrics].admin_token_file` (compared in constant time), except `GET /blocks` when
//! `[metrics].blocks_read_open` is set. Without a token file the endpoints do not exist (404).

use std::sync::atomic::Ordering;
use std::time::Duration;

use hyper::{Method, Request, StatusCode};
use sha2::{Digest, Sha256};

use super::Control;
use super::flood::NewBlock;
use crate::config::{BlockAction, Secret, normalize_name, parse_duration};
use crate::flood::{Scope, Target};

/// Longest block an operator may add.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Status, content type and body of a `/blocks` request.
pub(crate) fn handle<B>(req: &Request<B>, ctl: &Control) -> (StatusCode, &'static str, String) {
    let snap = ctl.data.snapshot.load();
    let access = &snap.config.admin;
    let path = req.uri().path();
    let read = req.method() == Method::GET && path == "/blocks";
    let Some(token) = &access.token else {
        return if read && access.blocks_read_open {
            list(ctl)
        } else {
            text(StatusCode::NOT_FOUND, "not found\n")
        };
    };
    let open_read = read && access.blocks_read_open;
    if !open_read && !authorized(req, token) {
        ctl.flood.auth_failures.fetch_add(1, Ordering::Relaxed);
        return text(StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n");
    }
    match (req.method(), path.strip_prefix("/blocks")) {
        (&Method::GET, Some("")) => list(ctl),
        (&Method::POST, Some("")) => add(req.uri().query().unwrap_or(""), ctl),
        (&Method::DELETE, Some(id)) => match id.strip_prefix('/').and_then(|i| i.parse().ok()) {
            Some(id) if ctl.flood.remove(&ctl.data, id) => {
                json(StatusCode::OK, serde_json::json!({"removed": id}))
            }
            Some(_) => text(StatusCode::NOT_FOUND, "no such block\n"),
            None => text(StatusCode::BAD_REQUEST, "DELETE /blocks/<id>\n"),
        },
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET, POST /blocks; DELETE /blocks/<id>\n",
        ),
    }
}

/// Whether the request carries the bearer token. Both sides are hashed first so the compare
/// takes the same time for any input (no length or prefix leak), and the compare itself
/// touches every byte.
fn authorized<B>(req: &Request<B>, token: &Secret) -> bool {
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        .unwrap_or(b"");
    let (a, b) = (Sha256::digest(given), Sha256::digest(&token.0));
    let diff = a.iter().zip(b.iter()).fold(0u8, |d, (x, y)| d | (x ^ y));
    std::hint::black_box(diff) == 0 && !given.is_empty()
}

fn list(ctl: &Control) -> (StatusCode, &'static str, String) {
    json(
        StatusCode::OK,
        serde_json::json!({"blocks": ctl.flood.list(usize::MAX)}),
    )
}

/// `POST /blocks?prefix=NET|suffix=NAME&duration=D[&action=A][&scope=all|uncached][&reason=T]`.
fn add(query: &str, ctl: &Control) -> (StatusCode, &'static str, String) {
    match new_block(query) {
        Ok(n) => match ctl.flood.add(&ctl.data, n) {
            Some(id) => json(StatusCode::CREATED, serde_json::json!({"id": id})),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "the block list is full: lift some blocks first\n",
            ),
        },
        Err(m) => text(StatusCode::BAD_REQUEST, m),
    }
}

fn new_block(query: &str) -> Result<NewBlock, String> {
    let (mut target, mut duration, mut action, mut scope, mut reason) = (
        None,
        None,
        BlockAction::Refused,
        None,
        "operator".to_string(),
    );
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding\n"))?;
        match k {
            "prefix" => {
                let net = v
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| v.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("prefix: \"{v}\" is not an address or prefix\n"))?;
                target = Some(Target::Prefix(net.trunc()));
            }
            "suffix" => {
                target = Some(Target::Suffix(
                    normalize_name(&v).map_err(|e| format!("suffix: {e}\n"))?,
                ));
            }
            "duration" => {
                let d = parse_duration(&v).map_err(|e| format!("duration: {e}\n"))?;
                if d.is_zero() || d > MAX_DURATION {
                    return Err("duration: must be between 1s and 7d\n".into());
                }
                duration = Some(d);
            }
            "action" => {
                action = BlockAction::parse(&v).ok_or_else(|| {
                    format!("action: \"{v}\" is not drop, refused, truncate or cache_only\n")
                })?;
            }
            "scope" => {
                scope = Some(match v.as_str() {
                    "all" => Scope::All,
                    "uncached" => Scope::Uncached,
                    _ => return Err(format!("scope: \"{v}\" is not all or uncached\n")),
                });
            }
            "reason" => reason = v.chars().take(200).collect(),
            _ => return Err(format!("unknown parameter \"{k}\"\n")),
        }
    }
    let target = target.ok_or("one of prefix= or suffix= is required\n")?;
    if matches!(target, Target::Prefix(_)) && scope == Some(Scope::Uncached) {
        return Err("scope: uncached only applies to suffix blocks\n".into());
    }
    Ok(NewBlock {
        target,
        scope: scope.unwrap_or(Scope::All),
        action,
        duration: duration.ok_or("duration= is required\n")?,
        reason,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn text(code: StatusCode, body: impl Into<String>) -> (StatusCode, &'static str, String) {
    (code, "text/plain", body.into())
}

fn json(code: StatusCode, v: serde_json::Value) -> (StatusCode, &'static str, String) {
    let body = serde_json::to_string_pretty(&v).unwrap_or_default();
    (code, "application/json", body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>) -> Request<()> {
        let mut b = Request::builder().uri("/blocks");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn only_the_exact_bearer_token_is_accepted() {
        let t = Secret(b"0123456789abcdef-token".to_vec());
        assert!(authorized(&req(Some("Bearer 0123456789abcdef-token")), &t));
        assert!(!authorized(&req(Some("Bearer 0123456789abcdef-toke")), &t));
        assert!(!authorized(
            &req(Some("Bearer 0123456789abcdef-token1")),
            &t
        ));
        assert!(!authorized(&req(Some("0123456789abcdef-token")), &t));
        assert!(!authorized(&req(Some("Bearer ")), &t));
        assert!(!authorized(&req(None), &t));
    }

    #[test]
    fn new_blocks_are_parsed_and_checked() {
        let b = new_block("prefix=192.0.2.7%2F24&duration=10m&action=drop").unwrap();
        assert_eq!(b.target, Target::Prefix("192.0.2.0/24".parse().unwrap()));
        assert_eq!(b.action, BlockAction::Drop);
        assert_eq!(b.duration, Duration::from_secs(600));
        let b = new_block("suffix=Example.TEST&duration=1s&scope=uncached").unwrap();
        assert_eq!(b.target, Target::Suffix("example.test.".into()));
        assert_eq!(b.scope, Scope::Uncached);
        for bad in [
            "duration=10s",
            "prefix=192.0.2.0/24",
            "prefix=nope&duration=1s",
            "prefix=192.0.2.0/24&duration=1s&action=explode",
            "prefix=192.0.2.0/24&duration=1s&scope=uncached",
            "prefix=192.0.2.0/24&duration=30d",
            "prefix=192.0.2.0/24&duration=1s&color=red",
        ] {
            assert!(new_block(bad).is_err(), "{bad}");
        }
    }
}
