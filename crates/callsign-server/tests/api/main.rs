//! Black-box tests of the server: a real instance on port 0 with a temp data dir, driven over
//! HTTPS with signed requests.

mod bad_input;
mod clock;
mod helpers;
mod limits;
mod operations;
mod tokens;
mod versions;
