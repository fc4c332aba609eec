//! `/metrics` on its own listener (`--metrics-listen`): known traffic, then the exposition read
//! with an independent parser of the Prometheus text format (`prometheus-parse`) and every
//! count checked.

use std::time::Duration;

use callsign_server::ThrottleConfig;
use callsign_testkit::{Backend, SendExt, TestApp, enc, spawn_app};
use prometheus_parse::{Sample, Scrape, Value};
use reqwest::{Method, StatusCode};

const CREATE: &str = "/identities?api-version=2023-10-01";

/// A server with the metrics listener on port 0 and revokes throttled to one a minute.
async fn app_with_metrics(backend: Backend) -> TestApp {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("throttle.toml");
    std::fs::write(&file, "[revoke]\nlimit = 1\nwindow_seconds = 60\n").expect("write");
    let throttle = ThrottleConfig::parse(file.to_str().expect("utf-8")).expect("valid");
    TestApp::builder()
        .backend(backend)
        .settings(move |s| {
            s.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
            s.throttle = throttle;
        })
        .spawn()
        .await
}

/// The exposition as a scraper reads it: plain HTTP, the Prometheus text format.
async fn scrape(app: &TestApp) -> Scrape {
    let url = app.metrics_url().expect("the metrics listener");
    let resp = reqwest::get(&url).await.expect("scrape");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = resp.text().await.expect("text");
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("the exposition parses")
}

/// The one sample of `name` whose labels are exactly `labels`.
fn sample<'a>(scrape: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    let mut found = scrape.samples.iter().filter(|s| {
        s.metric == name
            && s.labels.len() == labels.len()
            && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
    });
    let one = found.next();
    assert!(found.next().is_none(), "{name} {labels:?} twice");
    one
}

/// A counter's value (declared a counter); 0 when the series does not exist yet.
fn counter(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, name, labels).map(|s| &s.value) {
        None => 0.0,
        Some(Value::Counter(v)) => *v,
        Some(other) => panic!("{name} {labels:?} is not a counter: {other:?}"),
    }
}

/// A gauge's value (declared a gauge).
fn gauge(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    match sample(scrape, name, labels).map(|s| &s.value) {
        Some(Value::Gauge(v)) => *v,
        other => panic!("{name} {labels:?} is not a gauge: {other:?}"),
    }
}

/// A histogram's observation count, checked against its buckets: cumulative, ending in `+Inf`
/// with the count, and `_count` saying the same.
fn histogram_count(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(Value::Histogram(buckets)) = sample(scrape, name, labels).map(|s| &s.value) else {
        panic!("{name} {labels:?} is not a histogram");
    };
    assert!(buckets.len() > 5, "{name}: {} buckets", buckets.len());
    let mut bounds: Vec<_> = buckets.iter().map(|b| (b.less_than, b.count)).collect();
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(bounds.windows(2).all(|w| w[0].1 <= w[1].1), "{bounds:?}");
    let (last, total) = bounds[bounds.len() - 1];
    assert_eq!(last, f64::INFINITY);
    let count = match sample(scrape, &format!("{name}_count"), labels).map(|s| &s.value) {
        Some(Value::Untyped(v) | Value::Counter(v)) => *v,
        other => panic!("{name}_count {labels:?}: {other:?}"),
    };
    assert_eq!(count, total, "{name}_count and the +Inf bucket");
    count
}

/// Known traffic: 3 creates with a chat+voip token, 2 refused signatures, 1 get in
/// 2025-03-02-preview, 2 revokes of which the throttle refuses one, an unknown api-version,
/// a missing one and an unknown path.
async fn make_known_traffic(app: &TestApp) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = r#"{"createTokenWithScopes": ["chat", "voip"]}"#;
        let r = app.send(Method::POST, CREATE, Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.push(r.body["identity"]["id"].as_str().expect("id").to_owned());
    }
    let bad = format!(
        "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature={}=",
        "A".repeat(43)
    );
    for _ in 0..2 {
        app.signed_with(
            Method::POST,
            CREATE,
            None,
            &app.primary_key,
            "application/json",
            Some(&bad),
        )
        .reply()
        .await
        .assert_error(401, "Denied");
    }
    let get = format!(
        "/identities/{}?api-version=2025-03-02-preview",
        enc(&ids[0])
    );
    assert_eq!(
        app.send(Method::GET, &get, None).await.status,
        StatusCode::OK
    );
    for (id, status) in [(&ids[1], 204), (&ids[2], 429)] {
        let revoke = format!(
            "/identities/{}/:revokeAccessTokens?api-version=2023-10-01",
            enc(id)
        );
        let r = app.send(Method::POST, &revoke, None).await;
        assert_eq!(r.status.as_u16(), status, "{}", r.body);
    }
    let r = app
        .send(Method::POST, "/identities?api-version=1999-01-01", None)
        .await;
    r.assert_error(400, "UnsupportedApiVersion");
    let r = app.send(Method::POST, "/identities", None).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.body);
    let base = app.endpoint.trim_end_matches('/');
    let r = app.client.get(format!("{base}/nowhere")).reply().await;
    r.assert_error(404, "NotFound");
}

async fn metrics_count_known_traffic_exactly(backend: Backend) {
    let app = app_with_metrics(backend).await;
    make_known_traffic(&app).await;
    let m = scrape(&app).await;

    let requests = |route, status, version| {
        let labels = [
            ("route", route),
            ("status", status),
            ("api_version", version),
        ];
        counter(&m, "callsign_http_requests_total", &labels)
    };
    assert_eq!(requests("create", "201", "2023-10-01"), 3.0);
    assert_eq!(requests("create", "401", "2023-10-01"), 2.0);
    assert_eq!(requests("get", "200", "2025-03-02-preview"), 1.0);
    assert_eq!(requests("revoke", "204", "2023-10-01"), 1.0);
    assert_eq!(requests("revoke", "429", "2023-10-01"), 1.0);
    assert_eq!(requests("create", "400", "invalid"), 1.0);
    assert_eq!(requests("create", "400", "none"), 1.0);
    assert_eq!(requests("unmatched", "404", "none"), 1.0);
    let all: f64 = m
        .samples
        .iter()
        .filter(|s| s.metric == "callsign_http_requests_total")
        .map(|s| match s.value {
            Value::Counter(v) => v,
            _ => panic!("not a counter"),
        })
        .sum();
    assert_eq!(all, 11.0, "no request counted twice, none left out");

    assert_eq!(counter(&m, "callsign_auth_failures_total", &[]), 2.0);
    assert_eq!(counter(&m, "callsign_throttled_total", &[]), 1.0);
    let tokens = |scope| counter(&m, "callsign_tokens_issued_total", &[("scope", scope)]);
    assert_eq!(tokens("chat"), 3.0);
    assert_eq!(tokens("voip"), 3.0);
    assert_eq!(tokens("chat.join"), 0.0);

    let latency = "callsign_http_request_duration_seconds";
    assert_eq!(histogram_count(&m, latency, &[("route", "create")]), 7.0);
    assert_eq!(histogram_count(&m, latency, &[("route", "get")]), 1.0);
    assert_eq!(histogram_count(&m, latency, &[("route", "unmatched")]), 1.0);
    let store = |op| {
        let name = "callsign_store_operation_duration_seconds";
        histogram_count(&m, name, &[("operation", op)])
    };
    assert_eq!(store("create_identity"), 3.0);
    assert_eq!(store("get_identity"), 1.0);
    assert_eq!(
        store("revoke_tokens"),
        1.0,
        "the throttled revoke reaches no store"
    );

    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        gauge(&m, "callsign_build_info", &[("version", version)]),
        1.0
    );
    let max = gauge(&m, "callsign_store_pool_max_connections", &[]);
    let idle = gauge(&m, "callsign_store_pool_connections", &[("state", "idle")]);
    let in_use = gauge(
        &m,
        "callsign_store_pool_connections",
        &[("state", "in_use")],
    );
    match backend {
        Backend::Sqlite => assert_eq!((max, idle + in_use), (4.0, 4.0)),
        Backend::Postgres => assert!(max == 16.0 && (1.0..=16.0).contains(&(idle + in_use))),
    }
    assert_eq!(gauge(&m, "callsign_store_pool_waiting", &[]), 0.0);
    assert_eq!(counter(&m, "callsign_connections_refused_total", &[]), 0.0);
    app.stop().await;
}

async fn open_connections_are_counted(backend: Backend) {
    let app = app_with_metrics(backend).await;
    let open = |m: &Scrape| gauge(m, "callsign_connections_open", &[]);
    // Scrapes do not count: they come to another listener.
    assert_eq!(open(&scrape(&app).await), 0.0);
    let addr = app
        .endpoint
        .trim_end_matches('/')
        .rsplit_once("//")
        .expect("url")
        .1;
    let held = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut seen = 0.0;
    for _ in 0..100 {
        seen = open(&scrape(&app).await);
        if seen >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 1.0, "the held connection is open");
    drop(held);
    for _ in 0..100 {
        seen = open(&scrape(&app).await);
        if seen == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(seen, 0.0, "a closed connection is no longer counted");
    app.stop().await;
}

async fn the_metrics_listener_serves_metrics_alone_and_stops_with_the_server(backend: Backend) {
    let app = app_with_metrics(backend).await;
    let url = app.metrics_url().expect("the metrics listener");
    let client = reqwest::Client::new();
    // OpenMetrics for a scraper that asks for it, ending as the format requires.
    let resp = client
        .get(&url)
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )
        .send()
        .await
        .expect("scrape");
    assert_eq!(
        resp.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = resp.text().await.expect("text");
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE callsign_build info\n"), "{text}");
    // Nothing else is served there.
    let other = url.replace("/metrics", "/identities");
    let resp = client.get(&other).send().await.expect("get");
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = client.post(&url).send().await.expect("post");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    // And metrics are not served on the API's listener.
    let base = app.endpoint.trim_end_matches('/');
    let r = app.client.get(format!("{base}/metrics")).reply().await;
    r.assert_error(404, "NotFound");
    let addr = app.metrics_addr.expect("addr");
    app.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the metrics listener closed with the server"
    );
}

async fn without_metrics_listen_nothing_listens_and_nothing_is_served(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(app.metrics_addr, None);
    assert_eq!(app.metrics_url(), None);
    let base = app.endpoint.trim_end_matches('/');
    let r = app.client.get(format!("{base}/metrics")).reply().await;
    r.assert_error(404, "NotFound");
    app.stop().await;
}

on_every_backend!(
    metrics_count_known_traffic_exactly,
    open_connections_are_counted,
    the_metrics_listener_serves_metrics_alone_and_stops_with_the_server,
    without_metrics_listen_nothing_listens_and_nothing_is_served,
);
