//! Chains and rules as data ([`ChainDef`], [`RuleDef`]) and the [`Transaction`] that gathers
//! the messages of one atomic batch (tables, sets, chains, rules, elements), each with a
//! description the kernel's errors are reported with.

use std::ffi::CString;

use nftnl::{Batch, Chain, ChainType, FinalizedBatch, MsgType, NlMsg, Rule, Table};

use crate::expr::Expr;

/// A base chain's hook.
#[derive(Debug, Clone, Copy)]
pub struct Hook {
    /// Where the chain hooks in.
    pub hook: nftnl::Hook,
    /// A `nat` chain (else `filter`).
    pub nat: bool,
    /// The chain's priority.
    pub priority: i32,
}

/// A rule: its netlink expressions and its `nft` text.
#[derive(Debug, Clone)]
pub struct RuleDef {
    /// The expressions, evaluated in order.
    pub exprs: Vec<Expr>,
    /// The rule as `nft` prints it (for listings and error messages).
    pub text: String,
    /// The rule's comment (its userdata as nft reads it), if any.
    pub comment: Option<String>,
}

impl RuleDef {
    /// A rule of the expressions of `parts`, in order, without comment.
    pub fn new(text: impl Into<String>, parts: Vec<Vec<Expr>>) -> Self {
        Self {
            exprs: parts.concat(),
            text: text.into(),
            comment: None,
        }
    }
}

/// A chain with its rules.
#[derive(Debug, Clone)]
pub struct ChainDef {
    /// The chain's name.
    pub name: String,
    /// The hook of a base chain; `None` for a regular chain.
    pub hook: Option<Hook>,
    /// The rules, in order.
    pub rules: Vec<RuleDef>,
}

/// The messages of one atomic transaction, each with what it does (for error messages).
pub struct Transaction {
    batch: Batch,
    what: Vec<String>,
}

impl std::fmt::Debug for Transaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transaction")
            .field("what", &self.what)
            .finish()
    }
}

impl Default for Transaction {
    fn default() -> Self {
        Self::new()
    }
}

impl Transaction {
    /// An empty transaction.
    pub fn new() -> Self {
        Self {
            batch: Batch::new(),
            what: Vec::new(),
        }
    }

    /// Add a message; `what` describes it in the error the kernel's refusal becomes.
    pub fn add(&mut self, msg: &impl NlMsg, ty: MsgType, what: impl Into<String>) {
        self.batch.add(msg, ty);
        self.what.push(what.into());
    }

    /// How many messages the transaction holds.
    pub fn len(&self) -> usize {
        self.what.len()
    }

    /// The transaction holds no message.
    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }

    /// Add `chains` (created, or updated when they exist) and then every rule of theirs
    /// (appended); returns how many messages that is.
    pub fn add_chains(&mut self, table: &Table, chains: &[ChainDef]) -> usize {
        let mut n = 0;
        let mut built = vec![];
        for c in chains {
            let name = CString::new(c.name.as_str()).expect("no NUL");
            let mut chain = Chain::new(&name, table);
            if let Some(h) = c.hook {
                chain.set_hook(h.hook, h.priority);
                chain.set_type(if h.nat {
                    ChainType::Nat
                } else {
                    ChainType::Filter
                });
            }
            self.add(&chain, MsgType::Add, format!("add chain {}", c.name));
            n += 1;
            built.push(chain);
        }
        for (c, chain) in chains.iter().zip(&built) {
            for r in &c.rules {
                let mut rule = Rule::new(chain);
                for e in &r.exprs {
                    rule.add_expr(e);
                }
                if let Some(comment) = &r.comment {
                    let comment = CString::new(comment.as_str()).expect("no NUL");
                    rule.set_comment(comment).expect("comment under 128 bytes");
                }
                self.add(
                    &rule,
                    MsgType::Add,
                    format!("add rule to chain {}: {}", c.name, r.text),
                );
                n += 1;
            }
        }
        n
    }

    /// Delete every rule of chain `name` of `table` (`flush chain`).
    pub fn flush_chain(&mut self, table: &Table, name: &str) {
        let cname = CString::new(name).expect("no NUL");
        let chain = Chain::new(&cname, table);
        // a DELRULE without a handle deletes all the chain's rules
        let rule = Rule::new(&chain);
        self.add(&rule, MsgType::Del, format!("flush chain {name}"));
    }

    /// The batch's pages and the messages' descriptions, in order.
    pub fn finalize(self) -> (FinalizedBatch, Vec<String>) {
        (self.batch.finalize(), self.what)
    }

    /// The size of the batch in bytes (the whole userspace cost of building it).
    pub fn size(self) -> usize {
        self.batch.finalize().iter().map(|p| p.len()).sum()
    }
}
