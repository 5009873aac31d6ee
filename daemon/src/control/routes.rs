//! The control API's route table, the router built from it, and the
//! extractors that turn every malformed request into a JSON 400.
//!
//! [`ROUTES`] is the one list of what the daemon serves: the router is
//! built from it and a unit test checks it against `docs/openapi.json`
//! (methods, paths and operation ids, both ways).

use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::routing::{MethodFilter, MethodRouter, on};
use serde::de::DeserializeOwned;

use super::handlers;
use super::{ApiError, ControlState};

/// The OpenAPI 3 document of this API, served at `/openapi.json`.
pub const OPENAPI_DOCUMENT: &str = include_str!("../../../docs/openapi.json");

/// What a route does; the name is the route's OpenAPI `operationId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    GetStatus,
    ListVolumes,
    CreateVolume,
    ShowVolume,
    DeleteVolume,
    ResizeVolume,
    FlushVolume,
    VerifyVolume,
    ReopenVolume,
    ListSnapshots,
    CreateSnapshot,
    DeleteSnapshot,
    RollbackVolume,
    CloneVolume,
    ExportPoint,
    GetTimeline,
    GetMetrics,
    GetOpenapi,
}

/// One route: method, axum/OpenAPI path template, operation.
#[derive(Clone, Copy, Debug)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub operation: Operation,
}

const fn route(method: &'static str, path: &'static str, operation: Operation) -> Route {
    Route { method, path, operation }
}

/// Every route the daemon serves.
pub const ROUTES: &[Route] = &[
    route("GET", "/v1/status", Operation::GetStatus),
    route("GET", "/v1/volumes", Operation::ListVolumes),
    route("POST", "/v1/volumes", Operation::CreateVolume),
    route("GET", "/v1/volumes/{volume}", Operation::ShowVolume),
    route("DELETE", "/v1/volumes/{volume}", Operation::DeleteVolume),
    route("POST", "/v1/volumes/{volume}/resize", Operation::ResizeVolume),
    route("POST", "/v1/volumes/{volume}/flush", Operation::FlushVolume),
    route("POST", "/v1/volumes/{volume}/verify", Operation::VerifyVolume),
    route("POST", "/v1/volumes/{volume}/reopen", Operation::ReopenVolume),
    route("GET", "/v1/volumes/{volume}/snapshots", Operation::ListSnapshots),
    route("POST", "/v1/volumes/{volume}/snapshots", Operation::CreateSnapshot),
    route("DELETE", "/v1/volumes/{volume}/snapshots/{snapshot}", Operation::DeleteSnapshot),
    route("POST", "/v1/volumes/{volume}/rollback", Operation::RollbackVolume),
    route("POST", "/v1/volumes/{volume}/clone", Operation::CloneVolume),
    route("GET", "/v1/volumes/{volume}/export", Operation::ExportPoint),
    route("GET", "/v1/volumes/{volume}/timeline", Operation::GetTimeline),
    route("GET", "/metrics", Operation::GetMetrics),
    route("GET", "/openapi.json", Operation::GetOpenapi),
];

impl Operation {
    /// The OpenAPI `operationId`: the variant name in lower camel case.
    #[cfg(test)]
    pub fn id(self) -> String {
        let name = format!("{self:?}");
        let mut chars = name.chars();
        chars.next().map(|first| first.to_ascii_lowercase().to_string() + chars.as_str()).unwrap_or_default()
    }

    fn handler(self, filter: MethodFilter) -> MethodRouter<Arc<ControlState>> {
        use handlers::*;
        match self {
            Operation::GetStatus => on(filter, status),
            Operation::ListVolumes => on(filter, list_volumes),
            Operation::CreateVolume => on(filter, create_volume),
            Operation::ShowVolume => on(filter, show_volume),
            Operation::DeleteVolume => on(filter, delete_volume),
            Operation::ResizeVolume => on(filter, resize_volume),
            Operation::FlushVolume => on(filter, flush_volume),
            Operation::VerifyVolume => on(filter, verify_volume),
            Operation::ReopenVolume => on(filter, reopen_volume),
            Operation::ListSnapshots => on(filter, list_snapshots),
            Operation::CreateSnapshot => on(filter, create_snapshot),
            Operation::DeleteSnapshot => on(filter, delete_snapshot),
            Operation::RollbackVolume => on(filter, rollback),
            Operation::CloneVolume => on(filter, clone_volume),
            Operation::ExportPoint => on(filter, export_point),
            Operation::GetTimeline => on(filter, timeline),
            Operation::GetMetrics => on(filter, metrics),
            Operation::GetOpenapi => on(filter, openapi),
        }
    }
}

/// The router for [`ROUTES`], with JSON answers for unknown routes and
/// methods.
pub fn router(state: Arc<ControlState>) -> Router {
    let mut router = Router::new();
    for route in ROUTES {
        let method = Method::from_bytes(route.method.as_bytes()).expect("route table methods are valid");
        let filter = MethodFilter::try_from(method).expect("route table methods are filterable");
        // Routes with the same path merge into one method router.
        router = router.route(route.path, route.operation.handler(filter));
    }
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONCURRENT_REQUESTS));
    router
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(permits, one_of_bounded))
}

/// Control requests served at once; more wait for a turn. Each may hold a
/// blocking-pool thread (a flush, a timeline scan): the bound keeps a
/// runaway script from taking them all from NBD.
const MAX_CONCURRENT_REQUESTS: usize = 32;

async fn one_of_bounded(
    axum::extract::State(permits): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    request: Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // The semaphore is never closed, so acquiring only waits.
    let _permit = permits.acquire().await;
    next.run(request).await
}

async fn unknown_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
        .hint("GET /openapi.json lists the routes of this API")
}

async fn wrong_method(method: Method, uri: axum::http::Uri) -> ApiError {
    let mut error = ApiError::bad_request(format!("{} does not accept {method}", uri.path()))
        .hint("GET /openapi.json lists the methods of each route");
    error.status = StatusCode::METHOD_NOT_ALLOWED;
    error
}

/// Path parameters; a malformed path is a JSON 400, not axum's text.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// Query parameters; unknown or malformed ones are a JSON 400.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| ApiError::bad_request(rejection.body_text()))
    }
}

/// A JSON body; a missing content type, bad JSON or a wrong shape is a
/// JSON 400 that names the field.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(request, state).await.map(|axum::Json(value)| ApiJson(value)).map_err(
            |rejection| {
                ApiError::bad_request(rejection.body_text())
                    .hint("send a JSON body with Content-Type: application/json (see /openapi.json)")
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn document_routes() -> BTreeSet<(String, String, String)> {
        let document: serde_json::Value =
            serde_json::from_str(OPENAPI_DOCUMENT).expect("openapi.json parses");
        assert!(document["openapi"].as_str().unwrap().starts_with("3."), "an OpenAPI 3 document");
        let mut routes = BTreeSet::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("path item") {
                if method == "parameters" {
                    continue;
                }
                let id = operation["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                routes.insert((method.to_uppercase(), path.clone(), id.to_owned()));
            }
        }
        routes
    }

    #[test]
    fn openapi_document_lists_exactly_the_served_routes() {
        // The route table the router is built from and docs/openapi.json
        // name the same methods, paths and operation ids, both ways.
        let served: BTreeSet<(String, String, String)> = ROUTES
            .iter()
            .map(|route| (route.method.to_owned(), route.path.to_owned(), route.operation.id()))
            .collect();
        let documented = document_routes();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(undocumented.is_empty(), "served but not in docs/openapi.json: {undocumented:?}");
        assert!(unserved.is_empty(), "in docs/openapi.json but not served: {unserved:?}");
    }

    #[test]
    fn every_schema_reference_resolves() {
        // A dangling $ref would make schemathesis (and any client
        // generator) reject the whole document.
        let document: serde_json::Value = serde_json::from_str(OPENAPI_DOCUMENT).unwrap();
        fn walk(value: &serde_json::Value, document: &serde_json::Value) {
            match value {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(reference)) = map.get("$ref") {
                        let pointer = reference.strip_prefix('#').expect("local reference");
                        assert!(document.pointer(pointer).is_some(), "dangling {reference}");
                    }
                    map.values().for_each(|v| walk(v, document));
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, document)),
                _ => {}
            }
        }
        walk(&document, &document);
    }

    #[test]
    fn operation_ids_are_lower_camel_case() {
        assert_eq!(Operation::GetStatus.id(), "getStatus");
        assert_eq!(Operation::RollbackVolume.id(), "rollbackVolume");
    }
}
