//! Opening a JetStream key-value bucket, or creating it, on nats-server 2.9.
//!
//! async-nats' `create_key_value` first asks for the account's info in a
//! shape nats-server 2.9 does not answer, so the bucket's stream is made
//! here with the key-value conventions (stream `KV_<bucket>`, subjects
//! `$KV.<bucket>.>`, rollups allowed, deletes denied, direct gets on) and
//! then opened with `get_key_value`. Used by the engine (epoch and registry
//! buckets) and by the bridges' leader locks.

use async_nats::jetstream::kv::{Config, Store};
use async_nats::jetstream::stream::{self, DiscardPolicy};
use async_nats::jetstream::Context;
use std::time::Duration;

/// Why a bucket could not be opened or created.
#[derive(Debug, thiserror::Error)]
pub enum BucketError {
    /// Creating the bucket's stream failed (and it is not there).
    #[error("creating bucket {bucket}: {message}")]
    Create {
        /// The bucket.
        bucket: String,
        /// The server's or client's answer.
        message: String,
    },
    /// The stream is there but the bucket does not open (NATS away).
    #[error("opening bucket {bucket}: {message}")]
    Open {
        /// The bucket.
        bucket: String,
        /// The server's or client's answer.
        message: String,
    },
}

/// The stream of the bucket `config` describes, by the key-value
/// conventions.
pub fn bucket_stream(config: &Config) -> stream::Config {
    let name = &config.bucket;
    // Deduplication is not used; the server wants the window within max_age.
    let window = Duration::from_secs(120);
    let duplicate_window = if config.max_age > Duration::ZERO && config.max_age < window {
        config.max_age
    } else {
        window
    };
    stream::Config {
        name: format!("KV_{name}"),
        description: Some(config.description.clone()),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: config.history,
        max_age: config.max_age,
        storage: config.storage,
        num_replicas: config.num_replicas.max(1),
        discard: DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        duplicate_window,
        ..stream::Config::default()
    }
}

/// Opens the bucket, or creates it as `config` says. A bucket that exists
/// is used as it is (the first node's settings win); the caller compares
/// them when that matters.
pub async fn open_or_create(js: &Context, config: &Config) -> Result<Store, BucketError> {
    let name = config.bucket.as_str();
    if let Ok(store) = js.get_key_value(name).await {
        return Ok(store);
    }
    let created = js.create_stream(bucket_stream(config)).await;
    // Opened again either way: another node may have created it meanwhile.
    match js.get_key_value(name).await {
        Ok(store) => Ok(store),
        Err(open) => Err(match created {
            Err(e) => BucketError::Create {
                bucket: name.to_owned(),
                message: e.to_string(),
            },
            Ok(_) => BucketError::Open {
                bucket: name.to_owned(),
                message: open.to_string(),
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::stream::StorageType;

    #[test]
    fn a_bucket_stream_follows_the_key_value_conventions() {
        let config = Config {
            bucket: "herald-nodes".into(),
            description: "nodes".into(),
            history: 1,
            max_age: Duration::from_millis(450),
            storage: StorageType::File,
            ..Config::default()
        };
        let s = bucket_stream(&config);
        assert_eq!(s.name, "KV_herald-nodes");
        assert_eq!(s.subjects, vec!["$KV.herald-nodes.>".to_owned()]);
        assert_eq!(s.max_messages_per_subject, 1);
        assert!(s.allow_rollup && s.deny_delete && s.allow_direct);
        assert_eq!(s.duplicate_window, Duration::from_millis(450));
        assert_eq!(s.num_replicas, 1);
        let forever = bucket_stream(&Config {
            max_age: Duration::ZERO,
            ..config
        });
        assert_eq!(forever.duplicate_window, Duration::from_secs(120));
    }
}
