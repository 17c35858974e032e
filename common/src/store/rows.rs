//! Rows as the store holds them, for the values whose stored form is not
//! the domain's: a session's ads are one JSON text column.

/// Declares a struct and implements sqlx's `FromRow` for it, each field read
/// from the column of its name, on any database. (sqlx's derive does the same
/// through a proc macro that compiles both database drivers again for the
/// host.) The calling crate depends on `sqlx`.
#[macro_export]
macro_rules! row_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$field_meta:meta])* $field_vis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* $field_vis $field: $ty,)*
        }

        impl<'r, R: ::sqlx::Row> ::sqlx::FromRow<'r, R> for $name
        where
            &'r str: ::sqlx::ColumnIndex<R>,
            $($ty: ::sqlx::Decode<'r, R::Database> + ::sqlx::Type<R::Database>,)*
        {
            fn from_row(row: &'r R) -> ::std::result::Result<Self, ::sqlx::Error> {
                Ok($name {
                    $($field: ::sqlx::Row::try_get(row, stringify!($field))?,)*
                })
            }
        }
    };
}

row_struct! {
    /// A `sessions` row as read ([`super::columns::SESSION_COLUMNS`]).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct StoredSession {
        pub user_id: String,
        pub video_id: String,
        pub start_ms: i64,
        pub end_ms: i64,
        pub heartbeats: i64,
        pub watch_ms: i64,
        pub coverage_ms: i64,
        pub last_position_ms: i64,
        pub devices: i64,
        /// The ads column as stored: see [`ads_from_column`].
        pub ads: String,
        pub is_final: bool,
    }
}

/// The `ads` column of a session: its ad ids as a JSON array of strings.
pub fn ads_to_column(ads: &[String]) -> String {
    serde_json::to_string(ads).unwrap_or_else(|_| "[]".into())
}

/// The ad ids of an `ads` column written by [`ads_to_column`].
pub fn ads_from_column(column: &str) -> Result<Vec<String>, serde_json::Error> {
    serde_json::from_str(column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ads_read_back_as_written() {
        let ads = vec!["ad-1".to_string(), "a \"quoted\" ad".to_string()];
        assert_eq!(ads_from_column(&ads_to_column(&ads)).unwrap(), ads);
        assert_eq!(ads_to_column(&[]), "[]");
        assert!(ads_from_column("not json").is_err());
    }
}
