//! The broker's Lua scripts, run with EVALSHA and sent in full (EVAL) when
//! the server does not know them yet (after a restart or a failover).
//!
//! fred computes script hashes only with its `sha-1` feature, which this
//! crate does not enable, so the hash is computed here (SHA-1 is what Redis
//! names scripts by; nothing here relies on it for security).

use fred::clients::Client;
use fred::error::Error;
use fred::interfaces::LuaInterface;
use fred::types::scripts::Script;
use fred::types::Value;

/// `publish.lua` with the shared helpers in front.
pub(super) const PUBLISH: &str = concat!(include_str!("common.lua"), include_str!("publish.lua"));
/// `read.lua` with the shared helpers in front.
pub(super) const READ: &str = concat!(include_str!("common.lua"), include_str!("read.lua"));

/// One script and its hash.
pub(super) struct LuaScript {
    lua: &'static str,
    script: Script,
}

impl LuaScript {
    pub(super) fn new(lua: &'static str) -> Self {
        Self {
            lua,
            script: Script::from_hash(sha1_hex(lua.as_bytes())),
        }
    }

    /// Runs the script. A NOSCRIPT answer means nothing ran, so sending the
    /// source is safe even with one command attempt.
    pub(super) async fn run(
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

/// SHA-1 of `data`, lowercase hex (FIPS 180-4).
fn sha1_hex(data: &[u8]) -> String {
    let mut h: [u32; 5] = [
        0x6745_2301,
        0xEFCD_AB89,
        0x98BA_DCFE,
        0x1032_5476,
        0xC3D2_E1F0,
    ];
    let mut msg = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bits.to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 80];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..80 {
            w[i] = (w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16]).rotate_left(1);
        }
        let [mut a, mut b, mut c, mut d, mut e] = h;
        for (i, wi) in w.iter().enumerate() {
            let (f, k) = match i {
                0..=19 => ((b & c) | (!b & d), 0x5A82_7999),
                20..=39 => (b ^ c ^ d, 0x6ED9_EBA1),
                40..=59 => ((b & c) | (b & d) | (c & d), 0x8F1B_BCDC),
                _ => (b ^ c ^ d, 0xCA62_C1D6),
            };
            let t = a
                .rotate_left(5)
                .wrapping_add(f)
                .wrapping_add(e)
                .wrapping_add(k)
                .wrapping_add(*wi);
            e = d;
            d = c;
            c = b.rotate_left(30);
            b = a;
            a = t;
        }
        for (hi, v) in h.iter_mut().zip([a, b, c, d, e]) {
            *hi = hi.wrapping_add(v);
        }
    }
    h.iter().map(|x| format!("{x:08x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::sha1_hex;

    #[test]
    fn sha1_matches_known_digests() {
        assert_eq!(sha1_hex(b""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
        assert_eq!(sha1_hex(b"abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
        // The hash Redis gives this script (from fred's own docs).
        assert_eq!(
            sha1_hex(b"return ARGV[1]"),
            "098e0f0d1448c0a81dafe820f66d460eb09263da"
        );
        let long = vec![b'a'; 1000];
        assert_eq!(sha1_hex(&long), "291e9a6c66994949b57ba5e650361e98fc36b1ba");
    }
}
