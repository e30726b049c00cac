//! Kubernetes resource quantities (`100m`, `64Mi`, `1.5`, `1e3`) turned into integers, rounding
//! up as `resource.Quantity`'s `MilliValue()` and `Value()` do.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

/// A quantity that is not in Kubernetes' quantity syntax (or is out of range).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {text:?}: {reason}")]
pub struct QuantityError {
    /// The text that failed to parse.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed quantity as the exact fraction `numerator / denominator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fraction {
    numerator: i128,
    denominator: i128,
}

fn parse(text: &str) -> Result<Fraction, QuantityError> {
    let err = |reason| QuantityError {
        text: text.to_string(),
        reason,
    };
    let s = text.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    let (negative, s) = match s.as_bytes()[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(number_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(err("no number"));
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.len() > 30 {
        return Err(err("too many digits"));
    }
    let mut numerator: i128 = digits.parse().map_err(|_| err("no number"))?;
    let mut denominator: i128 = 10i128.pow(frac_part.len() as u32);
    let pow = |base: i128, exp: u32| base.checked_pow(exp).ok_or_else(|| err("out of range"));
    let mul = |n: i128, m: i128| n.checked_mul(m).ok_or_else(|| err("out of range"));
    match suffix {
        "" => {}
        "Ki" => numerator = mul(numerator, pow(2, 10)?)?,
        "Mi" => numerator = mul(numerator, pow(2, 20)?)?,
        "Gi" => numerator = mul(numerator, pow(2, 30)?)?,
        "Ti" => numerator = mul(numerator, pow(2, 40)?)?,
        "Pi" => numerator = mul(numerator, pow(2, 50)?)?,
        "Ei" => numerator = mul(numerator, pow(2, 60)?)?,
        "n" => denominator = mul(denominator, pow(10, 9)?)?,
        "u" => denominator = mul(denominator, pow(10, 6)?)?,
        "m" => denominator = mul(denominator, pow(10, 3)?)?,
        "k" => numerator = mul(numerator, pow(10, 3)?)?,
        "M" => numerator = mul(numerator, pow(10, 6)?)?,
        "G" => numerator = mul(numerator, pow(10, 9)?)?,
        "T" => numerator = mul(numerator, pow(10, 12)?)?,
        "P" => numerator = mul(numerator, pow(10, 15)?)?,
        "E" => numerator = mul(numerator, pow(10, 18)?)?,
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().map_err(|_| err("bad exponent"))?;
            if e.unsigned_abs() > 30 {
                return Err(err("out of range"));
            }
            if e >= 0 {
                numerator = mul(numerator, pow(10, e as u32)?)?;
            } else {
                denominator = mul(denominator, pow(10, e.unsigned_abs())?)?;
            }
        }
        _ => return Err(err("unknown suffix")),
    }
    if negative {
        numerator = -numerator;
    }
    Ok(Fraction {
        numerator,
        denominator,
    })
}

fn ceil_div(n: i128, d: i128) -> i128 {
    let q = n / d;
    if n % d != 0 && (n > 0) == (d > 0) {
        q + 1
    } else {
        q
    }
}

fn to_i64(v: i128, text: &str) -> Result<i64, QuantityError> {
    i64::try_from(v).map_err(|_| QuantityError {
        text: text.to_string(),
        reason: "out of range",
    })
}

/// The quantity in thousandths, rounded up (`100m` -> 100, `1` -> 1000, `0.5` -> 500).
pub fn milli_value(text: &str) -> Result<i64, QuantityError> {
    let f = parse(text)?;
    let scaled = f.numerator.checked_mul(1000).ok_or_else(|| QuantityError {
        text: text.to_string(),
        reason: "out of range",
    })?;
    to_i64(ceil_div(scaled, f.denominator), text)
}

/// The quantity as an integer, rounded up (`64Mi` -> 67108864, `100m` -> 1).
pub fn value(text: &str) -> Result<i64, QuantityError> {
    let f = parse(text)?;
    to_i64(ceil_div(f.numerator, f.denominator), text)
}

/// [`milli_value`] of a k8s-openapi [`Quantity`].
pub fn quantity_milli(q: &Quantity) -> Result<i64, QuantityError> {
    milli_value(&q.0)
}

/// [`value`] of a k8s-openapi [`Quantity`].
pub fn quantity_value(q: &Quantity) -> Result<i64, QuantityError> {
    value(&q.0)
}

/// Bytes written the way Kubernetes prints them: the largest binary suffix that divides exactly
/// (`67108864` -> `64Mi`), else a plain integer.
pub fn format_bytes(bytes: i64) -> String {
    const SUFFIXES: [(&str, i64); 6] = [
        ("Ei", 1 << 60),
        ("Pi", 1 << 50),
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    if bytes != 0 {
        for (suffix, unit) in SUFFIXES {
            if bytes % unit == 0 {
                return format!("{}{suffix}", bytes / unit);
            }
        }
    }
    bytes.to_string()
}

/// Millicores written the way Kubernetes prints them (`2000` -> `2`, `250` -> `250m`).
pub fn format_milli(milli: i64) -> String {
    if milli % 1000 == 0 {
        (milli / 1000).to_string()
    } else {
        format!("{milli}m")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kubernetes_quantities() {
        let cases: &[(&str, i64, i64)] = &[
            ("100m", 100, 1),
            ("1", 1000, 1),
            ("0.5", 500, 1),
            ("1.5", 1500, 2),
            ("2", 2000, 2),
            ("64Mi", 67_108_864_000, 67_108_864),
            ("1Gi", 1_073_741_824_000, 1_073_741_824),
            ("1k", 1_000_000, 1000),
            ("1M", 1_000_000_000, 1_000_000),
            ("1e3", 1_000_000, 1000),
            ("1E-3", 1, 1),
            ("500u", 1, 1),
            ("100n", 1, 1),
            ("0", 0, 0),
            ("1.5Gi", 1_610_612_736_000, 1_610_612_736),
            ("+2", 2000, 2),
            ("-1", -1000, -1),
        ];
        for (text, milli, val) in cases {
            assert_eq!(milli_value(text).unwrap(), *milli, "milli of {text}");
            assert_eq!(value(text).unwrap(), *val, "value of {text}");
        }
    }

    #[test]
    fn rejects_bad_quantities_by_text() {
        for bad in [
            "",
            "abc",
            "1Xi",
            "1..2",
            ".",
            "Mi",
            "1e",
            "1e99",
            "99999999999999999Ei",
        ] {
            let e = milli_value(bad).unwrap_err();
            assert_eq!(e.text, bad);
            assert!(e.to_string().contains("invalid quantity"), "{e}");
        }
    }

    #[test]
    fn formats_like_kubernetes() {
        assert_eq!(format_bytes(67_108_864), "64Mi");
        assert_eq!(format_bytes(1000), "1000");
        assert_eq!(format_bytes(0), "0");
        assert_eq!(format_milli(2000), "2");
        assert_eq!(format_milli(250), "250m");
    }
}
