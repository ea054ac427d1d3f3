//! Sans-IO mail forwarding decisions.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod rng;
pub mod route;

pub use route::{MxAnswer, MxRecord, NextHop, Route, Routes, resolve_mx};
pub mod queue;

pub use queue::{MessageId, QueuedMessage, QueuedRecipient, RecipientState};
mod config;
pub mod notice;
mod relay;

pub use config::RelayConfig;
pub use notice::{DsnAction, Notice, NoticeKind, NoticeRecipient};
pub use relay::{Action, Delivery, DeliveryId, HostFailure, Outcome, Relay, RelayError};
pub mod hops;

pub use hops::{HopCounter, MAX_HOPS, count_received, too_many_hops};
