//! Rows as the store holds them, for the values whose stored form is not
//! the domain's: a session's ads are one JSON text column.

/// A `sessions` row as read ([`super::columns::SESSION_COLUMNS`]).
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
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
