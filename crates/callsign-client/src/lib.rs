//! Rust client for callsign (and ACS Identity). Work in progress.
