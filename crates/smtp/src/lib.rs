//! Sans-IO SMTP (in progress).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod address;
pub mod command;
pub mod error;
pub mod reply;
