//! `shell` on the client side. (Implementation in progress.)
