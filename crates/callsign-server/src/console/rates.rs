//! `GET /console/rates.json`: the node's request counters, read from its metrics registry, for
//! the rates page's script, which turns two readings into rates.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// Routes left out of the latency histogram: long-polls wait on purpose.
const WAITING_ROUTES: [&str; 1] = ["revocations"];

/// One reading of the counters.
#[derive(Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Reading {
    /// Unix milliseconds of the reading.
    at: i64,
    /// Requests answered per route, since the node started.
    routes: BTreeMap<String, RouteCounts>,
    /// Tokens issued, each once.
    tokens: u64,
    /// The latency histogram of every route but long-polls: `(upper bound in seconds,
    /// cumulative count)`, the last bound infinite (written as `null`).
    latency: Vec<(Option<f64>, u64)>,
}

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct RouteCounts {
    requests: u64,
    #[serde(rename = "4xx")]
    client_errors: u64,
    #[serde(rename = "5xx")]
    server_errors: u64,
}

pub(crate) fn snapshot(state: &AppState) -> Result<Response, ApiError> {
    let metrics = state
        .metrics
        .as_ref()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("metrics are not recorded")))?;
    let text = metrics
        .encode(false)
        .map_err(|e| ApiError::internal(anyhow::anyhow!("metrics encoding failed: {e}")))?;
    let mut reading = read(&text);
    reading.at = (state.clock.now().unix_timestamp_nanos() / 1_000_000) as i64;
    reading.tokens = metrics.tokens_issued();
    Ok(crate::http::json(StatusCode::OK, &reading))
}

/// The counters of a Prometheus text exposition of the node's own registry.
pub(crate) fn read(text: &str) -> Reading {
    let mut reading = Reading::default();
    let mut buckets: BTreeMap<String, u64> = BTreeMap::new();
    for line in text.lines() {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        match name {
            "callsign_http_requests_total" => {
                let (Some(route), Some(status)) = (label(labels, "route"), label(labels, "status"))
                else {
                    continue;
                };
                let counts = reading.routes.entry(route.to_owned()).or_default();
                let n = value as u64;
                counts.requests += n;
                match status.as_bytes().first() {
                    Some(b'4') => counts.client_errors += n,
                    Some(b'5') => counts.server_errors += n,
                    _ => {}
                }
            }
            "callsign_http_request_duration_seconds_bucket" => {
                let (Some(route), Some(le)) = (label(labels, "route"), label(labels, "le")) else {
                    continue;
                };
                if !WAITING_ROUTES.contains(&route) {
                    *buckets.entry(le.to_owned()).or_default() += value as u64;
                }
            }
            _ => {}
        }
    }
    let mut latency: Vec<(Option<f64>, u64)> = buckets
        .into_iter()
        .map(|(le, n)| (le.parse::<f64>().ok().filter(|b| b.is_finite()), n))
        .collect();
    latency.sort_by(|a, b| match (a.0, b.0) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, None) => std::cmp::Ordering::Equal,
    });
    reading.latency = latency;
    reading
}

/// `name{labels} value` of one sample line.
fn sample(line: &str) -> Option<(&str, &str, f64)> {
    if line.starts_with('#') {
        return None;
    }
    let (name, rest) = line.split_once('{')?;
    let (labels, value) = rest.rsplit_once('}')?;
    let value = value.split_whitespace().next()?.parse().ok()?;
    Some((name, labels, value))
}

/// The value of `name` in `a="x",b="y"` (the registry's own labels: no escapes in them).
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_summed_by_route_and_class() {
        let text = "\
# HELP callsign_http_requests_total API requests
callsign_http_requests_total{route=\"issue\",status=\"200\",api_version=\"2023-10-01\"} 7
callsign_http_requests_total{route=\"issue\",status=\"429\",api_version=\"2023-10-01\"} 2
callsign_http_requests_total{route=\"create\",status=\"503\",api_version=\"none\"} 1
callsign_http_request_duration_seconds_bucket{le=\"0.001\",route=\"issue\"} 5
callsign_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"issue\"} 9
callsign_http_request_duration_seconds_bucket{le=\"0.001\",route=\"revocations\"} 0
callsign_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"revocations\"} 4
";
        let r = read(text);
        let issue = &r.routes["issue"];
        assert_eq!(
            (issue.requests, issue.client_errors, issue.server_errors),
            (9, 2, 0)
        );
        assert_eq!(r.routes["create"].server_errors, 1);
        assert_eq!(r.latency, vec![(Some(0.001), 5), (None, 9)]);
    }
}
