//! Secrets kept out of what relay writes or shows: credentials in query strings.
//!
//! Some APIs take their key in the query (Azure's `?api-key=`, Gemini's `?key=`). relay forwards
//! the query as it is, but wherever it stores or shows a request (cache entries and their export,
//! `relay cache ls|show`, the live feed) the values of credential parameters read `***`.

use std::borrow::Cow;

/// Query parameters whose values are credentials (compared without case).
const SECRET_PARAMS: &[&str] = &[
    "key",
    "api-key",
    "api_key",
    "apikey",
    "x-api-key",
    "access_token",
    "token",
    "auth",
    "authorization",
    "password",
    "secret",
    "client_secret",
    "sig",
    "signature",
];

/// `path_and_query` with the value of every credential parameter replaced by `***`; as it is when
/// it has none.
pub fn query(path_and_query: &str) -> Cow<'_, str> {
    let Some((path, q)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    let secret = |pair: &str| {
        let name = pair.split('=').next().unwrap_or("");
        SECRET_PARAMS.iter().any(|s| name.eq_ignore_ascii_case(s))
            || name.to_ascii_lowercase().contains("api-key")
            || name.to_ascii_lowercase().contains("api_key")
    };
    if !q.split('&').any(|p| secret(p) && p.contains('=')) {
        return Cow::Borrowed(path_and_query);
    }
    let mut out = String::with_capacity(path_and_query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in q.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if secret(pair) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_credentials_are_masked() {
        assert_eq!(query("/v1/models"), "/v1/models");
        assert_eq!(query("/v1/x?a=1&b=2"), "/v1/x?a=1&b=2");
        assert!(matches!(query("/v1/x?a=1"), Cow::Borrowed(_)));
        assert_eq!(
            query("/openai/deployments/d/chat/completions?api-version=2024-06-01&api-key=sk-123"),
            "/openai/deployments/d/chat/completions?api-version=2024-06-01&api-key=***"
        );
        assert_eq!(
            query("/v1beta/models/g:generateContent?key=AIzaSECRET&alt=sse"),
            "/v1beta/models/g:generateContent?key=***&alt=sse"
        );
        assert_eq!(query("/v1/x?KEY=s&Token=t"), "/v1/x?KEY=***&Token=***");
        assert_eq!(query("/v1/x?my_api_key=s"), "/v1/x?my_api_key=***");
        assert_eq!(query("/v1/x?key"), "/v1/x?key");
    }
}
