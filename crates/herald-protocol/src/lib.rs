//! Herald's wire contract (PROTOCOL.md sections 3 and 5): the JSON frames a
//! client and the server exchange, the error and close codes, and stream
//! positions, in Herald JSON and in MessagePack. No I/O and no async here: every other crate builds on this one.

#![warn(missing_docs)]

mod client;
mod codec;
mod codes;
mod msgpack;
mod msgpack_json;
mod position;
mod server;

pub use client::{
    parse_client_frame, ClientRequest, FrameError, RequestId, MAX_REQUEST_ID_BYTES,
    MAX_RPC_METHOD_BYTES,
};
pub use codec::{ClientCodec, ClientFrame, HeraldJson, CODEC_SLOTS, HERALD_JSON};
pub use codes::{CloseCode, ErrorCode};
pub use msgpack::{
    codec_of_subprotocol, HeraldMsgpack, HERALD_MSGPACK, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK,
};
pub use msgpack_json::{msgpack_to_json, MsgpackError, MAX_MSGPACK_DEPTH};
pub use position::StreamPosition;
pub use server::{
    encode, encode_publication, DirectFrame, Disconnect, DroppedRoom, JoinedRoom, MemberSummary,
    PublicationFrame, Sender, ServerFrame,
};
