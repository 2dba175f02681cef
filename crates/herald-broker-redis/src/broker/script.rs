//! The broker's Lua scripts, run with EVALSHA and sent in full (EVAL) when
//! the server does not know them yet (after a restart or a failover).
//! fred's `sha-1` feature computes the hash Redis names a script by.

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::LuaInterface;
use fred::types::scripts::Script;
use fred::types::Value;
use herald_engine_kit::telemetry::Command;

/// `publish.lua` with the shared helpers in front.
pub(super) const PUBLISH: &str = concat!(include_str!("common.lua"), include_str!("publish.lua"));
/// `read.lua` with the shared helpers in front.
pub(super) const READ: &str = concat!(include_str!("common.lua"), include_str!("read.lua"));

/// One script, its hash, and the command kind it is timed as
/// (`herald_broker_command_duration_seconds{engine="redis"}`).
pub(crate) struct LuaScript {
    lua: &'static str,
    script: Script,
    command: Command,
}

impl LuaScript {
    /// `lua`, timed as the command `command` (one of the documented names).
    pub(crate) fn new(lua: &'static str, command: &'static str) -> Self {
        let command = Command::new("redis", command);
        command.register();
        Self {
            lua,
            script: Script::from_lua(lua),
            command,
        }
    }

    /// Counts an error of the script's command refused before it was sent
    /// (no connection to Redis).
    pub(crate) fn refused(&self) {
        self.command.refused();
    }

    /// Runs the script, timed as its command. A NOSCRIPT answer means
    /// nothing ran, so sending the source is safe even with one command
    /// attempt.
    pub(crate) async fn run(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, Error> {
        self.command
            .time(self.run_untimed(client, keys, args))
            .await
    }

    async fn run_untimed(
        &self,
        client: &Client,
        keys: Vec<String>,
        args: Vec<Value>,
    ) -> Result<Value, Error> {
        match self
            .script
            .evalsha::<Value, _, _, _>(client, keys.clone(), args.clone())
            .await
        {
            Err(e) if e.details().starts_with("NOSCRIPT") => {
                client.eval::<Value, _, _, _>(self.lua, keys, args).await
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LuaScript;

    #[test]
    fn scripts_are_named_by_the_hash_redis_gives_them() {
        // The hash Redis gives this script (from fred's own docs).
        let script = LuaScript::new("return ARGV[1]", "test");
        assert_eq!(
            script.script.sha1().to_string(),
            "098e0f0d1448c0a81dafe820f66d460eb09263da"
        );
    }
}
