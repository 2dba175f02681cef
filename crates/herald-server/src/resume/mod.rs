//! Where a client stands in each of its rooms, written as one text both
//! transports without their own resume hand to the client: the SSE `id:`
//! (`Last-Event-ID`) and the Socket.IO recovery token (the last argument of
//! every event, sent back as the CONNECT `offset`). Stateless: the text
//! holds every position, so any node can resume from it.

pub(crate) mod last_event_id;
mod tracker;

pub(crate) use last_event_id::Positions;
pub(crate) use tracker::Tracker;
