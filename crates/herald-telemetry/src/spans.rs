//! The three spans of a publication's life:
//!
//! - `publish` (kind server for the HTTP API, consumer for ingest): the
//!   request, a child of the publisher's `traceparent` when it sent one;
//! - `broker.publish` (producer): the engine call, a child of `publish`;
//!   its context is what the engine carries to every node;
//! - `fanout` (consumer): one node queueing the publication for its local
//!   recipients, a child of `broker.publish` (on every node, the
//!   publishing one included).
//!
//! A span that is not sampled is never made into one of these types: the
//! constructors return `None`, and callers skip the bookkeeping.

use crate::Telemetry;
use herald_core::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use std::time::Instant;

/// Where a publish came from (the `herald.source` attribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishSource {
    /// `POST /api/v1/publish`.
    Http,
    /// `POST /api/v1/broadcast` (one `broker.publish` per room).
    Broadcast,
    /// The Redis ingest stream (`<prefix>:ingest`).
    Ingest,
    /// An ingest bridge (`[bridge]`).
    Bridge,
}

impl PublishSource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Broadcast => "broadcast",
            Self::Ingest => "ingest",
            Self::Bridge => "bridge",
        }
    }

    fn kind(self) -> SpanKind {
        match self {
            Self::Http | Self::Broadcast => SpanKind::Server,
            Self::Ingest | Self::Bridge => SpanKind::Consumer,
        }
    }
}

/// The context of a span made elsewhere (a publisher, another node).
fn remote(parent: &TraceContext) -> Context {
    Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.span_id),
        TraceFlags::new(parent.flags),
        true,
        TraceState::NONE,
    ))
}

fn trace_context(span: &SpanContext) -> TraceContext {
    TraceContext {
        trace_id: span.trace_id().to_bytes(),
        span_id: span.span_id().to_bytes(),
        flags: span.trace_flags().to_u8(),
    }
}

/// A started span held in its context (so children can name it as their
/// parent); it ends when ended explicitly or when dropped.
struct Held {
    cx: Context,
}

impl Held {
    /// Starts `name` under `parent`; `None` unless the sampler recorded it.
    fn start(
        telemetry: &Telemetry,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        attributes: Vec<KeyValue>,
    ) -> Option<Self> {
        let tracer = telemetry.tracer();
        let span = tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(attributes)
            .start_with_context(tracer, parent);
        use opentelemetry::trace::Span as _;
        if !span.span_context().is_sampled() {
            return None;
        }
        Some(Self {
            cx: Context::new().with_span(span),
        })
    }

    fn context(&self) -> TraceContext {
        trace_context(self.cx.span().span_context())
    }

    fn end(self, attributes: Vec<KeyValue>, error: Option<&str>) {
        let span = self.cx.span();
        span.set_attributes(attributes);
        if let Some(message) = error {
            span.set_status(Status::error(message.to_owned()));
        }
        span.end();
    }
}

/// The `publish` span of one API call or ingest message.
pub struct PublishSpan {
    held: Held,
    telemetry: Telemetry,
}

impl std::fmt::Debug for PublishSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishSpan")
            .field("context", &self.held.context())
            .finish()
    }
}

impl Telemetry {
    /// Starts the `publish` span: a child of `parent` (the publisher's
    /// `traceparent`) or a new root. `None` when not sampled (an unsampled
    /// parent, or a root the ratio left out). `room` is `None` for a
    /// broadcast (its `broker.publish` spans name the rooms).
    /// `request_id` is the HTTP API call's request id, when the publish
    /// came through the API (the `herald.request_id` attribute, so a trace
    /// can be found from the id a client logged).
    pub fn publish_span(
        &self,
        parent: Option<TraceContext>,
        source: PublishSource,
        tenant: &str,
        room: Option<&str>,
        event: &str,
        request_id: Option<&str>,
    ) -> Option<PublishSpan> {
        let parent = parent.as_ref().map_or_else(Context::new, remote);
        let mut attributes = vec![
            KeyValue::new("herald.source", source.as_str()),
            KeyValue::new("herald.node_id", self.node_id()),
            KeyValue::new("herald.event", event.to_owned()),
        ];
        if !tenant.is_empty() {
            attributes.push(KeyValue::new("herald.tenant", tenant.to_owned()));
        }
        if let Some(room) = room {
            attributes.push(KeyValue::new("herald.room", room.to_owned()));
        }
        if let Some(id) = request_id {
            attributes.push(KeyValue::new("herald.request_id", id.to_owned()));
        }
        let held = Held::start(self, "publish", source.kind(), &parent, attributes)?;
        Some(PublishSpan {
            held,
            telemetry: self.clone(),
        })
    }

    /// Starts a node's `fanout` span under the publication's context (the
    /// publishing node's `broker.publish`); `None` when that context is not
    /// sampled.
    pub fn fanout_span(
        &self,
        parent: &TraceContext,
        tenant: &str,
        room: &str,
        event: &str,
    ) -> Option<FanoutSpan> {
        if !parent.is_sampled() {
            return None;
        }
        let mut attributes = vec![
            KeyValue::new("herald.node_id", self.node_id()),
            KeyValue::new("herald.room", room.to_owned()),
            KeyValue::new("herald.event", event.to_owned()),
        ];
        if !tenant.is_empty() {
            attributes.push(KeyValue::new("herald.tenant", tenant.to_owned()));
        }
        let held = Held::start(
            self,
            "fanout",
            SpanKind::Consumer,
            &remote(parent),
            attributes,
        )?;
        Some(FanoutSpan {
            held,
            started: Instant::now(),
        })
    }
}

impl PublishSpan {
    /// This span's context (e.g. for a `traceparent` answer header).
    pub fn context(&self) -> TraceContext {
        self.held.context()
    }

    /// Starts the `broker.publish` child around the engine call to `room`
    /// on the engine `broker` (`memory`, `redis`, `nats`).
    pub fn broker_span(&self, broker: &'static str, room: &str) -> BrokerSpan {
        let attributes = vec![
            KeyValue::new("herald.node_id", self.telemetry.node_id()),
            KeyValue::new("herald.room", room.to_owned()),
            KeyValue::new("messaging.system", broker),
        ];
        // The parent is sampled, so the parent-based sampler records this
        // child; should a sampler ever say no, the engine carries the
        // parent's context instead and the fan-out still joins the trace.
        let held = Held::start(
            &self.telemetry,
            "broker.publish",
            SpanKind::Producer,
            &self.held.cx,
            attributes,
        );
        BrokerSpan {
            context: held.as_ref().map_or_else(|| self.context(), Held::context),
            held,
        }
    }

    /// Ends it: `Ok(count)` with the events published, or the error.
    pub fn end(self, outcome: Result<usize, &str>) {
        match outcome {
            Ok(published) => self.held.end(
                vec![KeyValue::new("herald.published", published as i64)],
                None,
            ),
            Err(message) => self.held.end(Vec::new(), Some(message)),
        }
    }
}

/// The `broker.publish` span of one engine call.
pub struct BrokerSpan {
    held: Option<Held>,
    context: TraceContext,
}

impl std::fmt::Debug for BrokerSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerSpan")
            .field("context", &self.context)
            .finish()
    }
}

impl BrokerSpan {
    /// The context the engine carries to every node's fan-out
    /// (`PublishRequest::trace`).
    pub fn context(&self) -> TraceContext {
        self.context
    }

    /// Ends it with where the event landed (`duplicate`: an idempotent
    /// repeat, nothing new published).
    pub fn published(self, epoch: &str, offset: u64, duplicate: bool) {
        if let Some(held) = self.held {
            held.end(
                vec![
                    KeyValue::new("herald.epoch", epoch.to_owned()),
                    KeyValue::new("herald.offset", offset as i64),
                    KeyValue::new("herald.duplicate", duplicate),
                ],
                None,
            );
        }
    }

    /// Ends it with the engine's error.
    pub fn failed(self, message: &str) {
        if let Some(held) = self.held {
            held.end(Vec::new(), Some(message));
        }
    }
}

/// One node's `fanout` span for one publication.
pub struct FanoutSpan {
    held: Held,
    started: Instant,
}

impl std::fmt::Debug for FanoutSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanoutSpan")
            .field("context", &self.held.context())
            .finish()
    }
}

impl FanoutSpan {
    /// Ends it once the publication is queued for its `recipients`
    /// connections, `bytes` being the frame bytes queued over all of them.
    pub fn queued(self, recipients: usize, bytes: usize) {
        let micros = self.started.elapsed().as_micros();
        self.held.end(
            vec![
                KeyValue::new("herald.recipients", recipients as i64),
                KeyValue::new("herald.bytes", bytes as i64),
                KeyValue::new(
                    "herald.duration_us",
                    i64::try_from(micros).unwrap_or(i64::MAX),
                ),
            ],
            None,
        );
    }
}
