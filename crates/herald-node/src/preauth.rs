//! The unauthenticated phase of a connection (PROTOCOL.md 3.1): waiting
//! for `authenticate`, verifying its token, the budgets of frames and bytes
//! that stand in for the rate limit until then, and the deadline
//! (`limits.auth_timeout`). A transport feeds [`PreAuth`] what it reads and
//! does what each [`Step`] says; once authenticated, [`PreAuth::open`]
//! turns it into a [`Session`].

use crate::conn::disconnect_frame;
use crate::metrics;
use crate::node::{Node, OpenOptions};
use crate::session::Session;
use crate::transport::Transport;
use bytes::Bytes;
use herald_core::{CredentialContext, Identity};
use herald_protocol::{
    ClientCodec, ClientRequest, CloseCode, ErrorCode, RequestId, ServerFrame, HERALD_JSON,
};
use tokio::time::{timeout_at, Instant};

/// Frames a connection may send before it authenticates, control frames
/// (WebSocket pings and pongs) included: each may ask for a reply, and no
/// rate limit applies yet.
pub const MAX_FRAMES_BEFORE_AUTH: usize = 16;

/// How a connection that has no session ends: `reply` (when given), then
/// `disconnect`, then the close with `code`.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The answer to the client's last request, if it gets one.
    pub reply: Option<Bytes>,
    /// The close code.
    pub code: CloseCode,
}

/// What the transport does after a frame of the unauthenticated phase.
#[derive(Debug)]
pub enum Step {
    /// Write `reply` (when there is one) by the deadline, then read on.
    Continue(Option<Bytes>),
    /// The token is valid: open the session with [`PreAuth::open`].
    Authenticated {
        /// Who the token names.
        identity: Identity,
        /// The `authenticate` request, answered by `authenticated`.
        reply_to: Option<RequestId>,
        /// Extra rooms the backend named for this connection.
        /// [`PreAuth::open`] joins them itself: a transport need not pass
        /// them in [`OpenOptions::rooms`].
        rooms: Vec<String>,
    },
    /// End the connection.
    Close(Refusal),
}

/// A connection before its session: every rule of the unauthenticated
/// phase, independent of the transport.
pub struct PreAuth {
    node: Node,
    codec: &'static dyn ClientCodec,
    deadline: Instant,
    frames: usize,
    /// Where an `authenticate` frame's credential comes from.
    context: CredentialContext,
    /// The backend's extra rooms from the `authenticate` frame's credential.
    rooms: Vec<String>,
}

impl std::fmt::Debug for PreAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreAuth")
            .field("codec", &self.codec.name())
            .field("deadline", &self.deadline)
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl PreAuth {
    /// Starts the phase now: it must end within `limits.auth_timeout`,
    /// whatever the transport does meanwhile (its upgrade, reads, writes).
    /// Frames are in Herald JSON until [`Self::set_codec`].
    pub fn new(node: &Node) -> Self {
        Self {
            deadline: Instant::now() + node.limits().auth_timeout,
            node: node.clone(),
            codec: &HERALD_JSON,
            frames: 0,
            context: CredentialContext::default(),
            rooms: Vec::new(),
        }
    }

    /// The context an `authenticate` frame's credential is verified with
    /// (the transport, the client's address, the forwarded headers).
    pub fn set_context(&mut self, ctx: CredentialContext) {
        self.context = ctx;
    }

    /// Uses `codec` for the client's frames (a transport that negotiated one).
    pub fn set_codec(&mut self, codec: &'static dyn ClientCodec) {
        self.codec = codec;
    }

    /// The codec of this connection.
    pub fn codec(&self) -> &'static dyn ClientCodec {
        self.codec
    }

    /// When the unauthenticated phase ends, authenticated or not.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Largest message accepted before authentication: the smaller
    /// pre-auth budget (`limits.max_pending_message_bytes`).
    pub fn max_message_bytes(&self) -> usize {
        let limits = self.node.limits();
        limits
            .max_pending_message_bytes
            .min(limits.max_message_bytes)
    }

    /// The deadline passed: close 4001 without a reply.
    pub fn timed_out(&self) -> Refusal {
        metrics::auth_failure("timeout");
        Refusal {
            reply: None,
            code: CloseCode::Unauthorized,
        }
    }

    /// A text message that was not UTF-8: `bad_request`, then close 1007
    /// (as after authentication). Not counted: the connection ends.
    pub fn invalid_utf8(&self) -> Refusal {
        let message = "text frame is not valid UTF-8";
        Refusal {
            reply: Some(self.error(None, ErrorCode::BadRequest, message)),
            code: CloseCode::InvalidPayload,
        }
    }

    /// Counts a transport control frame (a WebSocket ping or pong) against
    /// the frame budget. [`Step::Continue`] means the transport may answer
    /// it (a pong).
    pub fn control(&mut self) -> Step {
        match self.count() {
            Some(refusal) => Step::Close(refusal),
            None => Step::Continue(None),
        }
    }

    /// Handles a binary message: only binary codecs read one.
    pub async fn handle_binary(&mut self, message: &[u8]) -> Step {
        if self.codec.binary() {
            return self.handle_message(message).await;
        }
        if let Some(refusal) = self.count() {
            return Step::Close(refusal);
        }
        let message = "binary frames are not supported";
        Step::Continue(Some(self.error(None, ErrorCode::BadRequest, message)))
    }

    /// Handles a text message: binary codecs (MessagePack) refuse one.
    pub async fn handle_text(&mut self, text: &str) -> Step {
        if !self.codec.binary() {
            return self.handle_message(text.as_bytes()).await;
        }
        if let Some(refusal) = self.count() {
            return Step::Close(refusal);
        }
        Step::Continue(Some(self.error(
            None,
            ErrorCode::BadRequest,
            crate::session::TEXT_REFUSED,
        )))
    }

    /// Handles one client message: `authenticate` verifies the token (by
    /// the deadline), `ping` is answered, anything else is refused with
    /// `unauthorized` while the connection stays open.
    pub async fn handle_message(&mut self, message: &[u8]) -> Step {
        if let Some(refusal) = self.count() {
            return Step::Close(refusal);
        }
        let reply = match self.codec.decode(message) {
            Ok((id, ClientRequest::Authenticate { token })) => {
                let verify = self.node.verify_credential(&token, &self.context);
                return match timeout_at(self.deadline, verify).await {
                    Err(_) => Step::Close(self.timed_out()),
                    Ok(Ok(verified)) => {
                        self.rooms = verified.rooms.clone();
                        Step::Authenticated {
                            identity: verified.identity,
                            reply_to: id,
                            rooms: verified.rooms,
                        }
                    }
                    // Not a refusal: the client should come back (1013).
                    Ok(Err(e)) if e.is_unavailable() => Step::Close(Refusal {
                        reply: Some(self.error(id, ErrorCode::Unavailable, &e.message)),
                        code: CloseCode::TryAgainLater,
                    }),
                    Ok(Err(e)) => Step::Close(Refusal {
                        reply: Some(self.error(id, ErrorCode::Unauthorized, &e.message)),
                        code: CloseCode::Unauthorized,
                    }),
                };
            }
            Ok((id, ClientRequest::Ping)) => self.codec.encode(&ServerFrame::Pong { id }),
            Ok((id, _)) => self.error(id, ErrorCode::Unauthorized, "send `authenticate` first"),
            Err(e) => self.error(e.id, e.code, &e.message),
        };
        Step::Continue(Some(reply))
    }

    /// Opens the session of `identity` (answering `reply_to` when the token
    /// came in a frame) with this phase's codec, joining the backend's extra
    /// rooms of an `authenticate` frame's credential after `options.rooms`.
    /// A refusal (the per-user cap, a cluster registry outage) still answers
    /// the `authenticate` request.
    pub async fn open(
        mut self,
        identity: Identity,
        reply_to: Option<RequestId>,
        transport: &'static Transport,
        options: OpenOptions,
    ) -> Result<Session, Refusal> {
        let mut rooms = options.rooms;
        for room in std::mem::take(&mut self.rooms) {
            if !rooms.contains(&room) {
                rooms.push(room);
            }
        }
        let options = OpenOptions {
            reply_to: reply_to.clone(),
            codec: Some(self.codec),
            rooms,
            ..options
        };
        match self.node.open_session(identity, transport, options).await {
            Ok(mut session) => {
                let mut ctx = std::mem::take(&mut self.context);
                if ctx.transport.is_empty() {
                    ctx.transport = transport.name;
                }
                session.set_credential_context(ctx);
                Ok(session)
            }
            Err(code) => {
                let reply = reply_to.map(|id| {
                    let (error_code, message) = if code == CloseCode::TryAgainLater {
                        (
                            ErrorCode::Unavailable,
                            "the cluster registry is unreachable; retry shortly",
                        )
                    } else {
                        (
                            ErrorCode::LimitExceeded,
                            "this user is at limits.max_connections_per_user",
                        )
                    };
                    self.error(Some(id), error_code, message)
                });
                Err(Refusal { reply, code })
            }
        }
    }

    /// The `disconnect` frame for `code`.
    pub fn disconnect(&self, code: CloseCode) -> Bytes {
        disconnect_frame(self.codec, code)
    }

    /// No rate limit applies yet, so a fixed budget of frames does.
    fn count(&mut self) -> Option<Refusal> {
        self.frames += 1;
        if self.frames <= MAX_FRAMES_BEFORE_AUTH {
            return None;
        }
        metrics::auth_failure("too_many_frames");
        let message = "too many frames before `authenticate`";
        Some(Refusal {
            reply: Some(self.error(None, ErrorCode::Unauthorized, message)),
            code: CloseCode::Unauthorized,
        })
    }

    fn error(&self, id: Option<RequestId>, code: ErrorCode, message: &str) -> Bytes {
        self.codec.encode(&ServerFrame::Error {
            id,
            code,
            message: message.to_owned(),
        })
    }
}
