//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5`, `2e3`): parsing and the conversions the
//! kubelet needs (CPU in millicores, memory in bytes).

/// A quantity that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {reason}")]
pub struct QuantityError {
    /// The text as written.
    pub text: String,
    /// Why it is not a quantity.
    pub reason: &'static str,
}

/// Parse a quantity into its value (`"100m"` -> 0.1, `"64Mi"` -> 67108864.0).
pub fn parse_quantity(text: &str) -> Result<f64, QuantityError> {
    let err = |reason| QuantityError {
        text: text.to_string(),
        reason,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (sign, rest) = match s.as_bytes()[0] {
        b'+' => (1.0, &s[1..]),
        b'-' => (-1.0, &s[1..]),
        _ => (1.0, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (num, suffix) = rest.split_at(num_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(err("no number"));
    }
    let value: f64 = num.parse().map_err(|_| err("no number"))?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..].parse().map_err(|_| err("bad exponent"))?;
            10f64.powi(exp)
        }
        _ => return Err(err("unknown suffix")),
    };
    Ok(sign * value * multiplier)
}

/// A CPU quantity in millicores, rounded up as Kubernetes does (`"100m"` -> 100, `"1.5"` -> 1500).
pub fn cpu_millis(text: &str) -> Result<i64, QuantityError> {
    Ok((parse_quantity(text)? * 1000.0 - 1e-9).ceil().max(0.0) as i64)
}

/// A memory (or storage) quantity in bytes, rounded up (`"64Mi"` -> 67108864).
pub fn bytes(text: &str) -> Result<i64, QuantityError> {
    Ok((parse_quantity(text)? - 1e-9).ceil().max(0.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_suffix() {
        let cases = [
            ("100m", 0.1),
            ("1", 1.0),
            ("1.5", 1.5),
            ("64Mi", 67108864.0),
            ("1Gi", 1073741824.0),
            ("2k", 2000.0),
            ("1e3", 1000.0),
            ("500u", 0.0005),
            ("+3", 3.0),
            (".5", 0.5),
        ];
        for (text, want) in cases {
            let got = parse_quantity(text).unwrap();
            assert!(
                (got - want).abs() < 1e-9 * want.max(1.0),
                "{text}: {got} != {want}"
            );
        }
    }

    #[test]
    fn rejects_garbage() {
        for text in ["", "abc", "1x", "Mi", "1.2.3", "1e", "--1", "1 Gi"] {
            assert!(parse_quantity(text).is_err(), "{text:?} should be rejected");
        }
    }

    #[test]
    fn converts_cpu_and_memory() {
        assert_eq!(cpu_millis("100m").unwrap(), 100);
        assert_eq!(cpu_millis("1.5").unwrap(), 1500);
        assert_eq!(cpu_millis("0.0001").unwrap(), 1);
        assert_eq!(bytes("128Mi").unwrap(), 134217728);
        assert_eq!(bytes("1G").unwrap(), 1_000_000_000);
    }
}
