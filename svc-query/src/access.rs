//! Who may call what (SPEC 7), and the row scope a caller's rows are limited
//! to. The scope is handed to the engine, which puts it in the query's WHERE
//! clause as a bound parameter: a license holder's request can only ever read
//! its own rows, whatever the parameters say.

use crate::error::ApiError;
use hb_common::auth::{Principal, Role};

/// Everything the query API serves; also the `report` label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Royalties,
    Impressions,
    Concurrency,
    Traffic,
    Progress,
    Sessions,
    CatalogVideos,
    CatalogAds,
    /// `DELETE /v1/users/{user_id}`: admin only.
    EraseUser,
}

impl Endpoint {
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Royalties,
        Endpoint::Impressions,
        Endpoint::Concurrency,
        Endpoint::Traffic,
        Endpoint::Progress,
        Endpoint::Sessions,
        Endpoint::CatalogVideos,
        Endpoint::CatalogAds,
        Endpoint::EraseUser,
    ];

    /// Metric label value.
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Royalties => "royalties",
            Endpoint::Impressions => "impressions",
            Endpoint::Concurrency => "concurrency",
            Endpoint::Traffic => "traffic",
            Endpoint::Progress => "progress",
            Endpoint::Sessions => "sessions",
            Endpoint::CatalogVideos => "catalog_videos",
            Endpoint::CatalogAds => "catalog_ads",
            Endpoint::EraseUser => "erase_user",
        }
    }
}

/// The rows a caller may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every row: admin, `app` on user look-ups, or open mode.
    All,
    /// Rows of this license holder only.
    LicenseHolder(String),
    /// Rows of this advertiser only.
    Advertiser(String),
}

impl Scope {
    /// The license-holder filter for royalties and traffic.
    pub fn license_holder(&self) -> Option<&str> {
        match self {
            Scope::LicenseHolder(id) => Some(id),
            _ => None,
        }
    }

    /// The advertiser filter for impressions.
    pub fn advertiser(&self) -> Option<&str> {
        match self {
            Scope::Advertiser(id) => Some(id),
            _ => None,
        }
    }
}

/// Decides whether `principal` may call `endpoint`, and on which rows.
/// `None` is open mode (no `HB_AUTH_SECRET`, loopback only): everything.
pub fn authorize(principal: Option<&Principal>, endpoint: Endpoint) -> Result<Scope, ApiError> {
    let Some(principal) = principal else {
        return Ok(Scope::All);
    };
    let denied = || {
        Err(ApiError::Forbidden(format!(
            "role {} may not call {}",
            principal.role,
            endpoint.label()
        )))
    };
    match (&principal.role, endpoint) {
        (Role::Admin, _) => Ok(Scope::All),
        (Role::LicenseHolder(id), Endpoint::Royalties | Endpoint::Traffic) => {
            Ok(Scope::LicenseHolder(id.clone()))
        }
        (Role::Advertiser(id), Endpoint::Impressions) => Ok(Scope::Advertiser(id.clone())),
        (Role::App, Endpoint::Progress | Endpoint::Sessions) => Ok(Scope::All),
        _ => denied(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(role: Role) -> Principal {
        Principal {
            subject: "s".into(),
            role,
        }
    }

    #[test]
    fn the_matrix_of_spec_7() {
        let lh = who(Role::LicenseHolder("L1".into()));
        let adv = who(Role::Advertiser("A1".into()));
        for endpoint in Endpoint::ALL {
            assert_eq!(
                authorize(Some(&who(Role::Admin)), endpoint).unwrap(),
                Scope::All
            );
            assert_eq!(authorize(None, endpoint).unwrap(), Scope::All);
            assert!(authorize(Some(&who(Role::Gateway)), endpoint).is_err());
            assert!(authorize(Some(&who(Role::Device("d".into()))), endpoint).is_err());
            let lh_allowed = matches!(endpoint, Endpoint::Royalties | Endpoint::Traffic);
            assert_eq!(
                authorize(Some(&lh), endpoint).is_ok(),
                lh_allowed,
                "{endpoint:?}"
            );
            assert_eq!(
                authorize(Some(&adv), endpoint).is_ok(),
                endpoint == Endpoint::Impressions
            );
            assert_eq!(
                authorize(Some(&who(Role::App)), endpoint).is_ok(),
                matches!(endpoint, Endpoint::Progress | Endpoint::Sessions)
            );
        }
        // Erasure and catalog writes: admin (or open mode) only.
        for endpoint in [
            Endpoint::EraseUser,
            Endpoint::CatalogVideos,
            Endpoint::CatalogAds,
        ] {
            for role in [
                Role::App,
                Role::Gateway,
                Role::LicenseHolder("L1".into()),
                Role::Advertiser("A1".into()),
            ] {
                assert!(
                    authorize(Some(&who(role)), endpoint).is_err(),
                    "{endpoint:?}"
                );
            }
        }
        assert_eq!(
            authorize(Some(&lh), Endpoint::Traffic)
                .unwrap()
                .license_holder(),
            Some("L1")
        );
        assert_eq!(
            authorize(Some(&adv), Endpoint::Impressions)
                .unwrap()
                .advertiser(),
            Some("A1")
        );
    }
}
