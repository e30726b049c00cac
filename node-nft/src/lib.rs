//! node-nft: nf_tables over netlink, without spawning `nft`.
//!
//! The generic pieces nodekit's nftables users share (node-proxy's router, node-cni's bridge
//! plugin): messages for tables, chains, sets, maps, elements and rules built with libnftnl,
//! gathered in a [`Transaction`] and sent as ONE atomic batch by a [`Socket`], with the
//! kernel's errors mapped back to the message that caused them. [`netlink`] is the netlink
//! request/answer loop every nodekit netlink user shares (nf_tables, IPVS over generic netlink,
//! route netlink batches).
//!
//! | module | what |
//! |---|---|
//! | [`expr`] | the expressions rules are made of, and small builders (`meta nfproto`, `fib`, ...) |
//! | [`set`] | set and map definitions, `NEWSET`/`NEWSETELEM`/`DELSETELEM` messages, interval keys |
//! | [`chain`] | chain and rule definitions, a table's messages, chain flushes |
//! | [`socket`] | the `NETLINK_NETFILTER` socket: atomic batches, rule dumps |
//! | [`netlink`] | a netlink socket of any protocol: requests, batches of requests, their answers |
//! | [`error`] | [`NftError`] |

pub mod chain;
pub mod error;
pub mod expr;
pub mod netlink;
pub mod set;
pub mod socket;

pub use chain::{ChainDef, Hook, RuleDef, Transaction};
pub use error::NftError;
pub use expr::{Expr, Field};
pub use netlink::NetlinkSocket;
pub use set::{
    DataTy, ELEM_INTERVAL_END, Elem, ElemData, ElemsMsg, SetDef, SetMsg, Ty, interval_elems,
};
pub use socket::Socket;

/// Re-exported from `nftnl`: how a message acts (add or delete) and netfilter hooks.
pub use nftnl::{Hook as NfHook, MsgType, NlMsg, ProtoFamily, Table};
