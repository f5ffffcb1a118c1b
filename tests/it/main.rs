//! One integration-test binary: real server processes, real sockets, real HTTP, on 127.0.0.1.

// The harness is one binary; `pub` inside it is for sibling modules, not an API.
#![allow(unreachable_pub)]

mod auth;
mod broker_contract;
mod cli;
mod cluster;
mod deploy;
mod faults;
mod frames;
mod handshake;
mod hardening;
mod history;
mod integration;
mod jwks;
mod lifecycle;
mod limits;
mod load_tool;
mod multinode;
mod protections;
mod sessions;
mod support;
mod topology;
