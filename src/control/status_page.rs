//! The operator status page at `/` on the admin listener: one self-contained HTML document
//! (inline CSS, script and SVG; no external asset) embedded in the binary. It polls `/status`
//! and re-renders, so it shows only what the server already publishes there.
//!
//! The Content-Security-Policy allows exactly the page's one inline script and one inline style
//! block, by their SHA-256 hashes, plus `fetch` to this origin: an injected tag or attribute
//! (say a record name that reached the DOM unescaped) would not run.

use std::sync::LazyLock;

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use sha2::{Digest, Sha256};

pub(crate) const PAGE: &str = include_str!("status_page.html");

/// The policy, hashes computed once from the embedded page.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = |open: &str, close: &str| {
        inline_block(PAGE, open, close).map_or_else(
            || "'none'".to_string(),
            |text| {
                let digest = Sha256::digest(text.as_bytes());
                let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
                format!("'sha256-{b64}'")
            },
        )
    };
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("<script>", "</script>"),
        hash("<style>", "</style>"),
    )
});

/// The text between the first `open` tag and the following `close` tag.
fn inline_block<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let start = page.find(open)? + open.len();
    let len = page[start..].find(close)?;
    Some(&page[start..start + len])
}

/// `GET /`: the page, never cached (it is tied to the running binary's `/status` shape).
pub(crate) fn reply() -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        hyper::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if let Ok(v) = HeaderValue::from_str(&CSP) {
        h.insert(CONTENT_SECURITY_POLICY, v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hashes_the_one_script_and_style_block() {
        assert_eq!(PAGE.matches("<script").count(), 1, "one inline script");
        assert_eq!(PAGE.matches("<style").count(), 1, "one inline style");
        assert_eq!(CSP.matches("'sha256-").count(), 2, "{}", *CSP);
        assert!(!CSP.contains("unsafe-inline"));
    }

    #[test]
    fn the_page_references_nothing_outside() {
        let lower = PAGE.to_ascii_lowercase();
        for bad in [
            "http://",
            "https://",
            "src=",
            "<link rel=\"stylesheet\"",
            "@import",
        ] {
            assert!(!lower.contains(bad), "page contains {bad}");
        }
        // No style attributes: the policy would block them.
        assert!(!lower.contains(" style="));
    }

    #[test]
    fn the_reply_carries_the_headers() {
        let r = reply();
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[CACHE_CONTROL], "no-store");
        assert!(
            h[CONTENT_TYPE]
                .to_str()
                .is_ok_and(|v| v.starts_with("text/html"))
        );
        assert!(h.contains_key(CONTENT_SECURITY_POLICY));
    }
}
