//! Streaming the cluster's events: the ones kept after the client's last id, then, with `follow`, each
//! new one as this node applies it. Events live in the replicated state with ids that count up by one, so
//! the stream resumes on any node; a client whose next event was pruned meanwhile gets OUT_OF_RANGE
//! instead of a gap. A caller sees only the events of the namespaces its token may read.

use std::pin::Pin;

use gofer_domain::access::{Caller, Method, authorize};
use gofer_domain::events::Event;
use gofer_proto::{event_to_proto, into_status, v1};
use tokio_stream::Stream;
use tonic::Status;

use crate::api::{ApiService, shutting_down};

/// How many events one read of the state takes, so a long backlog never holds the state lock for long.
const PAGE: usize = 256;

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::ListEventsResponse, Status>> + Send>>;

/// Which events a client asked for, of those its token may see.
struct Filter {
    namespace: String,
    pipeline: String,
    caller: Caller,
}

impl Filter {
    fn keeps(&self, event: &Event) -> bool {
        let (namespace, pipeline) = event.what.pipeline();
        (self.namespace.is_empty() || self.namespace == namespace)
            && (self.pipeline.is_empty() || self.pipeline == pipeline)
            && self.caller.sees(namespace)
    }
}

fn page(api: &ApiService, after: u64) -> Result<(Vec<Event>, u64), Status> {
    api.read(|s| {
        let events = s.events.after(after, PAGE).map_err(|gap| gap.into_error("after_id"))?;
        Ok((events, s.events.newest()))
    })
}

/// The stream for one `ListEvents` call. The first page is read before the call returns, so an
/// `after_id` that is pruned or ahead fails the call itself.
pub(crate) fn stream_events(
    api: ApiService,
    request: v1::ListEventsRequest,
    caller: Caller,
) -> Result<EventStream, Status> {
    if !request.pipeline_id.is_empty() && request.namespace_id.is_empty() {
        return Err(into_status(gofer_domain::Error::invalid(
            "namespace_id",
            "a pipeline_id filter needs the namespace it is in",
        )));
    }
    if !request.namespace_id.is_empty() {
        authorize(&caller, Method::ListEvents, Some(&request.namespace_id))
            .map_err(|denied| Status::permission_denied(denied.to_string()))?;
    }
    let filter = Filter {
        namespace: request.namespace_id,
        pipeline: request.pipeline_id,
        caller,
    };
    // Subscribe before the first read, so that no event applied between the two is missed.
    let mut changes = api.state.subscribe();
    let (first, newest_at_call) = page(&api, request.after_id)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let (tracker, shutdown) = (api.tracker.clone(), api.shutdown.clone());
    tracker.spawn(async move {
        let mut cursor = request.after_id;
        let mut batch = first;
        loop {
            let full = batch.len() == PAGE;
            for event in batch {
                cursor = event.id;
                if !request.follow && cursor > newest_at_call {
                    return;
                }
                if filter.keeps(&event) {
                    let response = v1::ListEventsResponse {
                        event: Some(event_to_proto(&event)),
                    };
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            }
            if !request.follow && cursor >= newest_at_call {
                return;
            }
            if !full {
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() {
                        let _ = tx.send(Err(Status::unavailable("the node is shutting down"))).await;
                        return;
                    },
                    () = shutdown.cancelled() => return shutting_down(&tx),
                    () = tx.closed() => return,
                }
            }
            batch = match page(&api, cursor) {
                Ok((events, _)) => events,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
        }
    });
    Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
}
