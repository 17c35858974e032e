//! SQL with `$n` placeholders and the typed values they stand for, run on
//! either engine of the store ([`super::Store`]), on a rusqlite connection
//! ([`prepare_bound`]) or, for engines without a bind step (Trino,
//! PostgreSQL's `COPY`), rendered with the values printed as literals.
//! Values are never spliced from request text.

use std::fmt::Write as _;

/// A typed statement parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Int(i64),
    /// A 32-bit integer column (`stream_partition`, `partition`).
    Int4(i32),
    Bool(bool),
    Text(String),
}

/// SQL with `$n` placeholders and the values they stand for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Param>,
}

impl Statement {
    pub fn new(sql: impl Into<String>, params: Vec<Param>) -> Statement {
        Statement {
            sql: sql.into(),
            params,
        }
    }

    /// The SQL with every `$n` replaced by the literal of `params[n-1]`
    /// (integers printed, strings quoted with `'` doubled).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.sql.len() + 64);
        let mut chars = self.sql.char_indices().peekable();
        while let Some((_, c)) = chars.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            let mut index = 0usize;
            let mut digits = 0;
            while let Some((_, d)) = chars.peek().copied().filter(|(_, d)| d.is_ascii_digit()) {
                index = index * 10 + d.to_digit(10).unwrap_or(0) as usize;
                digits += 1;
                chars.next();
            }
            match (digits, self.params.get(index.wrapping_sub(1))) {
                (0, _) => out.push('$'),
                (_, Some(Param::Int(value))) => {
                    let _ = write!(out, "{value}");
                }
                (_, Some(Param::Int4(value))) => {
                    let _ = write!(out, "{value}");
                }
                (_, Some(Param::Bool(value))) => {
                    out.push_str(if *value { "TRUE" } else { "FALSE" });
                }
                (_, Some(Param::Text(value))) => {
                    out.push('\'');
                    out.push_str(&value.replace('\'', "''"));
                    out.push('\'');
                }
                // A placeholder without a value is a bug in the statement;
                // keep it visible so the engine reports a syntax error rather
                // than silently running something else.
                (_, None) => {
                    let _ = write!(out, "${index}");
                }
            }
        }
        out
    }
}

/// `statement` prepared (cached on the connection) with its values bound.
pub fn prepare_bound<'c>(
    connection: &'c rusqlite::Connection,
    statement: &Statement,
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    let mut prepared = connection.prepare_cached(&statement.sql)?;
    for (i, param) in statement.params.iter().enumerate() {
        // `$n` may appear twice; SQLite gives both the same index.
        let Some(index) = prepared.parameter_index(&format!("${}", i + 1))? else {
            continue;
        };
        match param {
            Param::Int(value) => prepared.raw_bind_parameter(index, value)?,
            Param::Int4(value) => prepared.raw_bind_parameter(index, value)?,
            Param::Bool(value) => prepared.raw_bind_parameter(index, value)?,
            Param::Text(value) => prepared.raw_bind_parameter(index, value)?,
        }
    }
    Ok(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_render_from_typed_values() {
        let statement = Statement {
            sql: "a = $1 AND b = $2 AND c = $10 AND d = $ AND e = $3 AND f = $4".into(),
            params: vec![
                Param::Int(-5),
                Param::Text("o'brien".into()),
                Param::Int4(7),
                Param::Bool(false),
            ],
        };
        assert_eq!(
            statement.render(),
            "a = -5 AND b = 'o''brien' AND c = $10 AND d = $ AND e = 7 AND f = FALSE"
        );
    }
}
