//! The OpenAPI document, served at `/api/openapi.json` (schemathesis and client generators use it).

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{error, failed, failure_groups, probes, publish, queues, replays, request, scheduled, schemas, topology};

#[derive(OpenApi)]
#[openapi(
    info(title = "messages-broker", description = "RabbitMQ coordination for the e-commerce platform."),
    paths(
        probes::health, probes::ready, probes::metrics, topology::show, publish::publish, publish::publish_batch, request::request,
        failed::list, failed::show, failed::retry_one, failed::retry_matching, failed::delete,
        queues::list, queues::stats, queues::purge, scheduled::list, scheduled::cancel,
        replays::create, replays::list, replays::show, replays::cancel,
        failure_groups::list, failure_groups::retry, failure_groups::delete, failed::edit_retry,
        schemas::list_schemas, schemas::show_schema,
    ),
    components(schemas(
        error::ErrorBody, error::ErrorCode, probes::Health, probes::Readiness,
        queues::QueueSummary, queues::QueueStatsBody, queues::Rates, queues::PurgeBody,
    )),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
