//! The two stages of `request_filter`: what is checked before anything is routed
//! ([`admit`]), and which pool serves the request ([`route`]).

use pingora::http::RequestHeader;

use super::answer::Answer;
use super::context::RequestCtx;
use crate::edge::{self, Refusal};
use crate::plugin::RouteDecision;
use crate::plugin::request::RequestView;
use crate::runtime::{EdgeSettings, Runtime};
use crate::telemetry::Refused;

/// What routing made of a request.
pub(super) enum Verdict {
    Pool(usize),
    Answer(Answer),
}

/// Stage 1: header limits, the canonical request target, a declared body over the
/// limit. Gives the canonical view and, with `forward_normalized`, the normalised target.
pub(super) fn admit(
    header: &RequestHeader,
    edge: &EdgeSettings,
) -> Result<(RequestView, Option<String>), Answer> {
    if let Err(problem) = edge::header_within(header, &edge.limits) {
        return Err(Answer::refuse(
            431,
            Refused::HeaderTooLarge,
            format!("switchyard: {problem}\n"),
        ));
    }
    let view = edge::canonical_view(
        header,
        edge.paths.encoded_slash,
        edge.paths.forward_normalized,
    )
    .map_err(|e| Answer::refuse(400, Refused::BadRequest, format!("switchyard: {e}\n")))?;
    let declared_body = header
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared_body.is_some_and(|n| n > edge.limits.max_body_bytes) {
        let text = format!(
            "switchyard: the request body is larger than the {} bytes accepted\n",
            edge.limits.max_body_bytes
        );
        return Err(Answer::refuse(413, Refused::BodyTooLarge, text));
    }
    Ok(view)
}

/// Asks router `slot` about the request; a failure or an unknown pool is logged and
/// treated as `continue`, so a broken router never takes traffic down.
fn ask_router(
    runtime: &Runtime,
    slot: usize,
    header: &mut RequestHeader,
    view: &mut RequestView,
) -> Option<Verdict> {
    let slot = runtime.routers.get(slot)?;
    let instance = slot.instance.load();
    match instance.route(header, view) {
        Ok(RouteDecision::Continue) => None,
        Ok(RouteDecision::Pool(name)) => match runtime.pool_index(&name) {
            Some(i) => Some(Verdict::Pool(i)),
            None => {
                let e = instance.bad_reply(format!("chose pool {name:?}, which does not exist"));
                tracing::warn!(router = %slot.site, error = %e, "router failed; request continues to the static routes");
                None
            }
        },
        Ok(RouteDecision::Respond {
            status,
            headers,
            body,
        }) => Some(Verdict::Answer(Answer::plain(status, headers, body))),
        Err(e) => {
            tracing::warn!(router = %slot.site, error = %e, "router failed; request continues to the static routes");
            None
        }
    }
}

/// Stage 2: the listener's router, then the route matched by canonical host and path,
/// its access rules, then the route's router.
pub(super) fn route(
    runtime: &Runtime,
    header: &mut RequestHeader,
    ctx: &mut RequestCtx,
) -> Verdict {
    if let Some(slot) = runtime.listener_router
        && let Some(verdict) = ask_router(runtime, slot, header, &mut ctx.view)
    {
        return verdict;
    }
    let Some(target) = runtime.router.route(&ctx.view.host, &ctx.view.path) else {
        let text = format!(
            "switchyard: no route for host {:?} and path {:?}\n",
            ctx.view.host, ctx.view.path
        );
        return Verdict::Answer(Answer::plain(404, Vec::new(), text));
    };
    ctx.route = target.route;
    let policy = target.route.and_then(|r| runtime.policies.get(r));
    if let Some(refusal) = policy.and_then(|p| p.check(ctx.client).err()) {
        let answer = match refusal {
            Refusal::Forbidden => {
                let who = ctx
                    .client
                    .map_or("this client".to_owned(), |ip| ip.to_string());
                Answer::refuse(
                    403,
                    Refused::AccessDenied,
                    format!("switchyard: {who} may not use this route\n"),
                )
            }
            Refusal::RateLimited(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let mut answer = Answer::refuse(
                    429,
                    Refused::RateLimited,
                    "switchyard: too many requests from this client; retry later\n".to_owned(),
                );
                answer
                    .headers
                    .push(("retry-after".to_owned(), seconds.max(1).to_string()));
                answer
            }
        };
        return Verdict::Answer(answer);
    }
    if let Some(slot) = target.router
        && let Some(verdict) = ask_router(runtime, slot, header, &mut ctx.view)
    {
        return verdict;
    }
    Verdict::Pool(target.pool)
}
