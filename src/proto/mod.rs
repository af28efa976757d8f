//! The master <-> slave RPC: frames, messages and the version handshake, shared by both ends.
//! (Arrives with the slaves-and-builds issue; nothing here yet.)
