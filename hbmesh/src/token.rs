//! `hbmesh token`: mints a bearer token signed with `HB_AUTH_SECRET`, for
//! operators, devices, gateways and report consumers (SPEC 8).

use anyhow::Context;
use hb_common::auth::{Role, TokenKey};
use hb_common::duration::{format_duration, parse_duration};
use hb_common::settings::AuthSettings;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// Role the token grants: admin, app, gateway, device, license_holder or
    /// advertiser (the last three need an id: `device:d-1`, or `--subject d-1`).
    #[arg(long)]
    pub role: String,

    /// Subject of the token; also the id of a device, license holder or
    /// advertiser role given without one. Defaults to the role's id, or the
    /// role name.
    #[arg(long)]
    pub subject: Option<String>,

    /// How long the token is valid, e.g. `30m`, `24h`, `90d`.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,

    /// The secret the services verify tokens with (`HB_AUTH_SECRET`).
    #[command(flatten)]
    pub auth: AuthSettings,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    let token = mint(&args, hb_common::time::now_ms() / 1_000)?;
    println!("{token}");
    eprintln!(
        "hbmesh: token for role {} valid for {}",
        Role::from_parts(&args.role, args.subject.as_deref())?,
        format_duration(args.ttl)
    );
    Ok(())
}

/// The token `args` ask for, expiring `args.ttl` after `now_s` (epoch seconds).
pub fn mint(args: &TokenArgs, now_s: i64) -> anyhow::Result<String> {
    let secret = args.auth.secret().context(
        "no secret: set HB_AUTH_SECRET (or pass --auth-secret) to the secret the services verify tokens with",
    )?;
    let role = Role::from_parts(&args.role, args.subject.as_deref()).with_context(|| {
        format!(
            "invalid --role {:?}: use admin, app, gateway, device:<id>, license_holder:<id> or advertiser:<id>",
            args.role
        )
    })?;
    anyhow::ensure!(!args.ttl.is_zero(), "--ttl must be longer than 0");
    let ttl_s = i64::try_from(args.ttl.as_secs()).context("--ttl is too long")?;
    let subject = match (&args.subject, &role) {
        (Some(subject), _) => subject.clone(),
        (None, Role::Device(id) | Role::LicenseHolder(id) | Role::Advertiser(id)) => id.clone(),
        (None, role) => role.to_string(),
    };
    Ok(TokenKey::new(secret).mint(&subject, &role, now_s.saturating_add(ttl_s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hb_common::settings::Secret;

    const NOW: i64 = 1_700_000_000;

    fn args(role: &str, subject: Option<&str>, ttl: &str, secret: Option<&str>) -> TokenArgs {
        TokenArgs {
            role: role.into(),
            subject: subject.map(Into::into),
            ttl: parse_duration(ttl).unwrap(),
            auth: AuthSettings {
                secret: secret.map(Secret::new),
            },
        }
    }

    #[test]
    fn a_minted_token_verifies_with_the_same_secret_and_carries_its_role() {
        let token = mint(&args("gateway", None, "24h", Some("s")), NOW).unwrap();
        let principal = TokenKey::new("s").verify(&token, NOW).unwrap();
        assert_eq!(principal.role, Role::Gateway);
        assert_eq!(principal.subject, "gateway");
        assert!(TokenKey::new("other").verify(&token, NOW).is_err());
    }

    #[test]
    fn a_role_id_can_come_from_the_subject_or_the_role() {
        let by_subject = mint(&args("device", Some("d-1"), "1h", Some("s")), NOW).unwrap();
        let by_role = mint(&args("device:d-1", None, "1h", Some("s")), NOW).unwrap();
        for token in [by_subject, by_role] {
            let principal = TokenKey::new("s").verify(&token, NOW).unwrap();
            assert_eq!(principal.role, Role::Device("d-1".into()));
            assert_eq!(principal.subject, "d-1");
        }
    }

    #[test]
    fn the_token_expires_after_its_ttl() {
        let token = mint(&args("app", None, "30m", Some("s")), NOW).unwrap();
        let key = TokenKey::new("s");
        assert!(key.verify(&token, NOW + 30 * 60 - 1).is_ok());
        assert!(key.verify(&token, NOW + 30 * 60).is_err());
    }

    #[test]
    fn without_a_secret_the_error_says_how_to_set_one() {
        for secret in [None, Some("")] {
            let err = mint(&args("admin", None, "24h", secret), NOW).unwrap_err();
            assert!(err.to_string().contains("HB_AUTH_SECRET"), "{err}");
        }
    }

    #[test]
    fn unknown_roles_and_missing_ids_are_refused() {
        for role in ["root", "device", "license_holder:"] {
            let err = mint(&args(role, None, "24h", Some("s")), NOW).unwrap_err();
            assert!(format!("{err:#}").contains("invalid --role"), "{err:#}");
        }
        assert!(mint(&args("admin", None, "0s", Some("s")), NOW).is_err());
    }

    #[test]
    fn the_secret_is_the_services_own_setting() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            token: TokenArgs,
        }
        let cli = <Cli as clap::Parser>::try_parse_from([
            "token",
            "--role",
            "admin",
            "--auth-secret",
            "s3cret",
        ])
        .unwrap();
        assert_eq!(cli.token.auth.secret(), Some("s3cret"));
    }
}
