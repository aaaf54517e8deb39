//! How a statement runs on either backend: one SQL text, turned into each
//! backend's by its [`Dialect`]; arguments in the schema's types ([`Arg`]);
//! rows read through one small trait ([`Column`]); and what a backend's
//! connection provides ([`Conn`]). The statements themselves, their decoders
//! and the [`Ledger`](super::Ledger) operations are in `ledger.rs`, written once.
//!
//! A statement's text uses `?N` placeholders (and no other `?`), and
//! PostgreSQL's row locks (`FOR UPDATE ...`) at its end.

use std::borrow::Cow;

use super::{StoreError, StoreResult};
use crate::model::AuditEntry;

/// How a backend spells what is not the same text on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A statement as this backend runs it: PostgreSQL numbers placeholders
    /// `$N`; SQLite takes no row locks (its one writer holds the database).
    pub(crate) fn render(self, sql: &str) -> Cow<'_, str> {
        match self {
            Dialect::Sqlite => Cow::Borrowed(sql.split_once(" FOR UPDATE").map_or(sql, |(statement, _)| statement)),
            Dialect::Postgres => Cow::Owned(sql.replace('?', "$")),
        }
    }

    /// `label` starts with the text bound at `?n`.
    pub(crate) fn label_starts_with(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("substr(label, 1, length(?{n})) = ?{n}"),
            Dialect::Postgres => format!("starts_with(label, ?{n})"),
        }
    }
}

/// A value bound to a statement, in the types of the schema's columns.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Int(Option<i64>),
    /// A 4-byte INTEGER on PostgreSQL (`idempotency.status`, lock classes).
    Int4(Option<i32>),
    Bool(bool),
    Text(Option<&'a str>),
    Blob(Option<&'a [u8]>),
}

macro_rules! arg_from {
    ($lt:lifetime: $($t:ty => $variant:ident($v:ident => $e:expr)),* $(,)?) => {
        $(impl<$lt> From<$t> for Arg<$lt> {
            fn from($v: $t) -> Self {
                Arg::$variant($e)
            }
        })*
    };
}

arg_from! { 'a:
    i64 => Int(v => Some(v)),
    Option<i64> => Int(v => v),
    bool => Bool(v => v),
    &'a str => Text(v => Some(v)),
    &'a String => Text(v => Some(v)),
    &'a [u8] => Blob(v => Some(v)),
}

/// The arguments of a statement, each converted by `Arg::from`.
macro_rules! args {
    ($($v:expr),* $(,)?) => {
        &[$(Arg::from($v)),*]
    };
}
pub(crate) use args;

/// A column's value as the backends store it (PostgreSQL's booleans and
/// 4-byte integers are read as integers, like SQLite's).
#[derive(Debug)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "integer",
            Value::Text(_) => "text",
            Value::Blob(_) => "blob",
        }
    }
}

/// A row as a backend returns it; the decoders read it with `get`.
pub(crate) trait Column {
    fn value(&self, i: usize) -> StoreResult<Value>;
}

/// A Rust type read from a column; `None` when the value has another type.
pub(crate) trait FromValue: Sized {
    fn from_value(value: Value) -> Option<Self>;
}

macro_rules! from_value {
    ($($t:ty: $variant:ident($v:ident) => $e:expr),* $(,)?) => {
        $(impl FromValue for $t {
            fn from_value(value: Value) -> Option<Self> {
                if let Value::$variant($v) = value { Some($e) } else { None }
            }
        })*
    };
}

from_value! {
    i64: Int(v) => v,
    bool: Int(v) => v != 0,
    String: Text(v) => v,
    Vec<u8>: Blob(v) => v,
}

impl<T: FromValue> FromValue for Option<T> {
    fn from_value(value: Value) -> Option<Self> {
        match value {
            Value::Null => Some(None),
            other => T::from_value(other).map(Some),
        }
    }
}

impl dyn Column + '_ {
    /// Column `i` as `T`; a NULL or a value of another type is corrupt.
    pub(crate) fn get<T: FromValue>(&self, i: usize) -> StoreResult<T> {
        let value = self.value(i)?;
        let kind = value.kind();
        T::from_value(value).ok_or_else(|| StoreError::Corrupt(format!("column {i} holds an unexpected {kind}")))
    }
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_owned())
}

pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(text: &str, column: &str) -> StoreResult<T> {
    serde_json::from_str(text).map_err(|_| corrupt(column))
}

/// What a backend's `query` hands each row to.
pub(crate) type EachRow<'e> = &'e mut dyn FnMut(&dyn Column) -> StoreResult<()>;

/// A backend's connection, in a transaction or read-only: runs statements
/// in its own text, and does what only this backend does.
pub(crate) trait Conn: Sized {
    const DIALECT: Dialect;

    /// Runs a statement in this backend's text; returns the rows it changed.
    fn execute(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64>;
    /// Runs a statement in this backend's text and hands `each` its rows.
    fn query(&mut self, sql: &str, args: &[Arg<'_>], each: EachRow<'_>) -> StoreResult<()>;

    /// Makes the deciders of one operation take turns until the transaction
    /// ends, whether or not its record exists yet.
    fn lock_operation(&mut self, account: &str, op_key: &str) -> StoreResult<()> {
        let _ = (account, op_key);
        Ok(())
    }
    /// See [`Ledger::append_audit`](super::Ledger::append_audit).
    fn append_audit(&mut self, entry: &AuditEntry) -> StoreResult<()>;
    /// See [`Ledger::chain_audit`](super::Ledger::chain_audit).
    fn chain_audit(&mut self, limit: usize) -> StoreResult<usize> {
        let _ = limit;
        Ok(0)
    }
    /// See [`LedgerRead::unchained_audit_rows`](super::LedgerRead::unchained_audit_rows).
    fn unchained_audit_rows(&mut self) -> StoreResult<i64> {
        Ok(0)
    }

    /// Runs a shared statement; returns the rows it changed.
    fn run(&mut self, sql: &str, args: &[Arg<'_>]) -> StoreResult<u64> {
        self.execute(&Self::DIALECT.render(sql), args)
    }
    /// Runs a shared statement and decodes every row it returns.
    fn all<T, D>(&mut self, sql: &str, args: &[Arg<'_>], decode: D) -> StoreResult<Vec<T>>
    where
        D: Fn(&dyn Column) -> StoreResult<T>,
    {
        let mut out = Vec::new();
        self.query(&Self::DIALECT.render(sql), args, &mut |row| {
            out.push(decode(row)?);
            Ok(())
        })?;
        Ok(out)
    }
    /// Runs a shared statement and decodes its first row, if any.
    fn first<T, D>(&mut self, sql: &str, args: &[Arg<'_>], decode: D) -> StoreResult<Option<T>>
    where
        D: Fn(&dyn Column) -> StoreResult<T>,
    {
        Ok(self.all(sql, args, decode)?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn one_text_becomes_each_backends() {
        let sql = "SELECT a FROM t WHERE b = ?1 AND c > ?12 LIMIT ?2 FOR UPDATE SKIP LOCKED";
        assert_eq!(Dialect::Sqlite.render(sql), "SELECT a FROM t WHERE b = ?1 AND c > ?12 LIMIT ?2");
        assert_eq!(
            Dialect::Postgres.render(sql),
            "SELECT a FROM t WHERE b = $1 AND c > $12 LIMIT $2 FOR UPDATE SKIP LOCKED"
        );
        assert_eq!(Dialect::Sqlite.render("DELETE FROM t WHERE a = ?1"), "DELETE FROM t WHERE a = ?1");
    }
}
