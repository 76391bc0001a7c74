//! The query parameters that make the backend misbehave.

/// The fault-driving query parameters.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Faults {
    pub(crate) status: Option<u16>,
    pub(crate) delay_ms: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) sse: Option<u64>,
    pub(crate) interval_ms: Option<u64>,
    pub(crate) reset: bool,
    pub(crate) chunked: bool,
}

impl Faults {
    pub(crate) fn parse(query: Option<&str>) -> Result<Faults, String> {
        let mut f = Faults::default();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("`{key}` needs a number, got `{value}`"))
            };
            match key {
                "status" => {
                    let n = number()?;
                    let code = u16::try_from(n).ok().filter(|c| (200..=599).contains(c));
                    f.status = Some(code.ok_or_else(|| format!("status {n} is not 200-599"))?);
                }
                "delay_ms" => f.delay_ms = Some(number()?),
                "bytes" => f.bytes = Some(number()?),
                "sse" => f.sse = Some(number()?),
                "interval_ms" => f.interval_ms = Some(number()?),
                "reset" => f.reset = value == "1" || value == "true",
                "chunked" => f.chunked = value == "1" || value == "true",
                _ => {}
            }
        }
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(Faults::parse(None).unwrap(), Faults::default());
        let f = Faults::parse(Some(
            "status=503&delay_ms=10&bytes=5&sse=2&interval_ms=3&reset=1&chunked=1&x=y",
        ))
        .unwrap();
        assert_eq!(
            f,
            Faults {
                status: Some(503),
                delay_ms: Some(10),
                bytes: Some(5),
                sse: Some(2),
                interval_ms: Some(3),
                reset: true,
                chunked: true,
            }
        );
        assert!(Faults::parse(Some("status=abc")).is_err());
        assert!(Faults::parse(Some("status=99")).is_err());
        assert!(Faults::parse(Some("delay_ms=-1")).is_err());
    }
}
