//! pop3 (in progress)
