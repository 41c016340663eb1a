//! The OpenAPI 3.1 document covers every route of the router (checked against the
//! router's source), every documented route answers, and the Swagger UI page is served
//! from built-in assets: no CDN, nothing from the network.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the failure report

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// Paths given to `.route(` in the router's source.
fn routes_in_source() -> Vec<String> {
    let src = include_str!("../../cod-server/src/lib.rs");
    let mut out = Vec::new();
    for (i, _) in src.match_indices(".route(") {
        let rest = &src[i..];
        let start = rest.find('"').unwrap() + 1;
        let end = start + rest[start..].find('"').unwrap();
        out.push(rest[start..end].to_owned());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_is_documented_and_every_documented_route_answers() {
    let st = common::jobs::state_at(65_650);
    let r = get(&st, "/api/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let routes = routes_in_source();
    assert!(routes.len() > 25, "{routes:?}");
    for route in &routes {
        assert!(
            paths.contains_key(route),
            "{route} is not in the OpenAPI document"
        );
    }
    for (path, item) in paths {
        assert!(routes.contains(path), "{path} is documented but not routed");
        for method in ["get", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let uri = path.replace("{id}", "1").replace("{token}", "x");
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let resp = call(&st, req).await;
            assert_ne!(
                resp.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}"
            );
            let no_route = resp.json["error"]
                .as_str()
                .is_some_and(|e| e.starts_with("no route"));
            assert!(!no_route, "{method} {path}: {}", resp.json);
            assert!(
                resp.status != StatusCode::INTERNAL_SERVER_ERROR,
                "{method} {path}: {}",
                resp.json
            );
        }
        for (_, op) in item.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{path}"
            );
        }
    }
    // The native types are described field by field.
    let run = &doc["components"]["schemas"]["RunResultSchema"]["properties"];
    for k in ["status", "stdout", "cpu_ms", "memory_kb", "compile"] {
        assert!(run.get(k).is_some(), "{k}");
    }
    assert!(doc["components"]["schemas"]["JobView"]["properties"]["usage"].is_object());
}

async fn fetch(
    st: &cod_server::AppState,
    path: &str,
    gzip: bool,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut b = Request::get(path);
    if gzip {
        b = b.header(header::ACCEPT_ENCODING, "gzip, deflate");
    }
    let resp = cod_server::app(st.clone())
        .oneshot(b.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn swagger_ui_is_served_without_any_cdn() {
    let st = common::jobs::state_at(65_700);
    let (status, _, page) = fetch(&st, "/api/docs", false).await;
    assert_eq!(status, StatusCode::OK);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("/api/openapi.json") && page.contains("/api/docs/swagger-ui-bundle.js"));
    assert!(
        !page.contains("https://") && !page.contains("http://"),
        "nothing from the network"
    );
    let (status, headers, gz) = fetch(&st, "/api/docs/swagger-ui-bundle.js", true).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_ENCODING], "gzip");
    assert!(gz.starts_with(&[0x1f, 0x8b]), "a gzip stream");
    let (_, headers, plain) = fetch(&st, "/api/docs/swagger-ui-bundle.js", false).await;
    assert!(!headers.contains_key(header::CONTENT_ENCODING));
    assert!(plain.len() > gz.len() * 2);
    assert!(String::from_utf8_lossy(&plain).contains("SwaggerUIBundle"));
    let (status, _, css) = fetch(&st, "/api/docs/swagger-ui.css", false).await;
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&css).contains(".swagger-ui"));
}
