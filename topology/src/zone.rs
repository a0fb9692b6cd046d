//! Zone names and regions.
//!
//! A zone is written `<region>-<number>`, for example `fr-par-1`; its region
//! is the name without the number (`fr-par`). Scaleway's zones are built in;
//! any other name of the same shape is accepted (`local-1` is the default
//! zone of a development node).

/// The Scaleway availability zones known without a topology file.
pub const SCALEWAY_ZONES: &[&str] = &[
    "fr-par-1", "fr-par-2", "fr-par-3", "nl-ams-1", "nl-ams-2", "nl-ams-3", "pl-waw-1", "pl-waw-2",
    "pl-waw-3",
];

/// A zone name that does not have the `<region>-<number>` shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid zone \"{zone}\": {reason}")]
pub struct ZoneError {
    /// The name that was given.
    pub zone: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks that `zone` is a lowercase `<region>-<number>` name.
pub fn validate_zone(zone: &str) -> Result<(), ZoneError> {
    let fail = |reason| {
        Err(ZoneError {
            zone: zone.to_owned(),
            reason,
        })
    };
    let Some((region, number)) = zone.rsplit_once('-') else {
        return fail("expected <region>-<number>, such as fr-par-1");
    };
    if region.is_empty() || number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return fail("expected <region>-<number>, such as fr-par-1");
    }
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-';
    if !region.bytes().all(allowed) || region.starts_with('-') {
        return fail("only lowercase letters, digits and '-' are allowed");
    }
    Ok(())
}

/// The region of a valid zone: its name without the trailing number.
pub fn region_of(zone: &str) -> &str {
    zone.rsplit_once('-').map_or(zone, |(region, _)| region)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaleway_zones_are_valid_and_map_to_their_regions() {
        for zone in SCALEWAY_ZONES {
            validate_zone(zone).unwrap();
        }
        assert_eq!(region_of("fr-par-2"), "fr-par");
        assert_eq!(region_of("pl-waw-3"), "pl-waw");
        assert_eq!(region_of("local-1"), "local");
    }

    #[test]
    fn malformed_zones_are_refused_with_the_reason() {
        for bad in ["fr-par", "FR-PAR-1", "-1", "fr par-1", "", "fr-par-x"] {
            assert!(validate_zone(bad).is_err(), "{bad} was accepted");
        }
        let err = validate_zone("frpar").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid zone \"frpar\": expected <region>-<number>, such as fr-par-1"
        );
    }
}
