//! The engines this build has: each one a cargo feature of this crate
//! (forwarded by the `herald` binary), registered here by its factory.
//! `broker.kind` picks one by name; a kind not compiled in is refused by
//! config validation, naming the kinds that are.

use herald_core::Engines;
use std::sync::Arc;

/// Every engine compiled into this build. The memory engine is always
/// there (development mode and single nodes need it).
pub fn compiled() -> Engines {
    let engines = Engines::new().register(Arc::new(herald_broker_memory::MemoryEngine));
    #[cfg(feature = "redis")]
    let engines = engines.register(Arc::new(herald_broker_redis::RedisEngine));
    #[cfg(feature = "nats")]
    let engines = engines.register(Arc::new(herald_broker_nats::NatsEngine));
    engines
}
