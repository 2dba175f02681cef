//! The suite's own OTLP/HTTP trace receiver: an HTTP/1.1 server on
//! `127.0.0.1:0` that accepts `POST /v1/traces` (protobuf
//! `ExportTraceServiceRequest`), answers 200 and keeps every span it
//! decoded, with its resource's attributes, for the tracing tests.
//!
//! Small on purpose: one request at a time per connection, keep-alive,
//! bodies with `Content-Length` (what the OTLP exporter sends). Anything
//! else gets 400 and the connection is closed.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use parking_lot::Mutex;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One span as received, ids in lower-case hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Its name (`publish`, `broker.publish`, `fanout`).
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, or empty for a root span.
    pub parent_span_id: String,
    /// The OTLP span kind (2 server, 4 producer, 5 consumer).
    pub kind: i32,
    /// Its attributes, values as text (integers in decimal).
    pub attributes: BTreeMap<String, String>,
    /// Its resource's attributes.
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value, or "" when absent.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// A running receiver; stops on drop.
pub struct OtlpReceiver {
    /// Its base URL, for `telemetry.otlp_endpoint`.
    pub endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl OtlpReceiver {
    /// Starts one on a fresh port.
    pub async fn start() -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let port = listener.local_addr().expect("local addr").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let s = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, s.clone()));
            }
        });
        OtlpReceiver {
            endpoint: format!("http://127.0.0.1:{port}"),
            spans,
            task,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().clone()
    }

    /// Waits (at most 15 s) for a span that `matches`; panics naming `what`
    /// and listing what did arrive.
    pub async fn wait_for(
        &self,
        what: &str,
        matches: impl Fn(&ReceivedSpan) -> bool,
    ) -> ReceivedSpan {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(span) = self.spans.lock().iter().find(|s| matches(s)) {
                return span.clone();
            }
            if Instant::now() >= deadline {
                let seen: Vec<String> = self
                    .spans()
                    .iter()
                    .map(|s| format!("{} trace={} attrs={:?}", s.name, s.trace_id, s.attributes))
                    .collect();
                panic!("no span {what} within 15 s; received: {seen:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn serve(socket: TcpStream, spans: Arc<Mutex<Vec<ReceivedSpan>>>) {
    let mut reader = BufReader::new(socket);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut length = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let ok = request_line.starts_with("POST /v1/traces ");
        let body = match length {
            Some(n) if n <= 16 << 20 => {
                let mut body = vec![0; n];
                if reader.read_exact(&mut body).await.is_err() {
                    return;
                }
                body
            }
            _ => Vec::new(),
        };
        let decoded = ok
            .then(|| ExportTraceServiceRequest::decode(body.as_slice()).ok())
            .flatten();
        let status = match decoded {
            Some(request) => {
                spans.lock().extend(flatten(request));
                "200 OK"
            }
            None => "400 Bad Request",
        };
        let answer =
            format!("HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n");
        if reader.get_mut().write_all(answer.as_bytes()).await.is_err()
            || !status.starts_with("200")
        {
            return;
        }
    }
}

fn text(attributes: &[KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| text(&r.attributes))
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for span in ss.spans {
                out.push(ReceivedSpan {
                    name: span.name.clone(),
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: text(&span.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
    out
}
