//! Token refresh: an `authenticate` frame on an open connection
//! (docs/protocol.md 7.2), verified with the context the connection opened
//! with.

use crate::access::AccessCache;
use crate::error::NodeError;
use crate::metrics;
use crate::session::Session;
use herald_core::{CredentialContext, Tenant};
use herald_protocol::{ErrorCode, RequestId, ServerFrame};

impl Session {
    /// The context a token refresh (`authenticate` on the open
    /// connection) is verified with: the one the connection opened with.
    pub fn set_credential_context(&mut self, ctx: CredentialContext) {
        self.credential_context = ctx;
    }

    /// Replaces the connection's identity with the one `token` names,
    /// which must be the same user of the same tenant.
    pub(crate) async fn refresh(
        &mut self,
        id: Option<RequestId>,
        token: &str,
    ) -> Result<(), NodeError> {
        // A refresh keeps the connection's rooms: the backend's extra
        // rooms are joined at open only.
        let verified = self
            .node
            .verify_credential(token, &self.credential_context)
            .await;
        let identity = match verified {
            Ok(verified) => verified.identity,
            Err(e) if e.is_unavailable() => {
                self.reply_error(id, ErrorCode::Unavailable, e.message);
                return Ok(());
            }
            Err(e) => {
                self.reply_error(id, ErrorCode::Unauthorized, e.message);
                return Ok(());
            }
        };
        let current = self.conn.identity();
        if identity.user_id != current.user_id
            || Tenant::from_option(identity.tenant.as_deref()) != self.conn.tenant
        {
            metrics::auth_failure("subject_changed");
            return Err(NodeError::Forbidden(
                "a refreshed token must carry the same `sub` and `tenant`".into(),
            ));
        }
        self.conn.set_identity(self.node.trim_claims(identity));
        // The backend's answers were for the old roles and claims.
        self.access = AccessCache::default();
        self.reply(ServerFrame::Authenticated {
            id,
            connection_id: self.conn.id.to_string(),
            user_id: self.conn.user_id.to_string(),
            node_id: self.node.id().to_owned(),
            rooms: Vec::new(),
            heartbeat_interval_ms: self.node.limits().heartbeat_interval.as_millis() as u64,
        });
        Ok(())
    }
}
