//! Sans-IO mail forwarding decisions.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod rng;
pub mod route;

pub use route::{MxAnswer, MxRecord, NextHop, Route, Routes, resolve_mx};
pub mod queue;

pub use queue::{MessageId, QueuedMessage, QueuedRecipient, RecipientState};
