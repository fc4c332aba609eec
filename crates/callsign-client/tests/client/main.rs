//! Tests of the client against the real server (spawned in-process on port 0 with a temp data
//! dir), against tiny canned HTTP servers for retries and timeouts, and against the released
//! Python SDK's request signing. The workforce access tests against the real server are
//! ignored until the server has the `/access/entra` endpoints.

mod access;
mod credential;
mod errors;
mod helpers;
mod listing;
mod operations;
mod quickstart;
mod retries;
mod signing;
