//! Durations as people read and write them: `30s`, `20m`, `1h30m` in config files, and the
//! ETA format `2m45s` in every status output. Bottom layer: config parsing, the status text,
//! the web pages and the clients all share these two functions.

use std::time::Duration;

/// Parses a duration as users write it: `30s`, `20m`, `1h30m`, `1h 30m`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if let Ok(seconds) = trimmed.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(trimmed)
        .map_err(|err| format!("bad duration \"{text}\": {err} (write it like 30s, 20m or 1h30m)"))
}

/// `2m45s`, `1h02m`, `45s`.
pub fn format_eta(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, (seconds / 60) % 60, seconds % 60);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, _) => format!("{minutes}m{seconds:02}s"),
        _ => format!("{hours}h{minutes:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_as_written_in_config() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn eta_format() {
        assert_eq!(format_eta(Duration::from_secs(165)), "2m45s");
        assert_eq!(format_eta(Duration::from_secs(45)), "45s");
        assert_eq!(format_eta(Duration::from_secs(3720)), "1h02m");
    }
}
